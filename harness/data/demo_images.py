"""SYNTHETIC images for the CUSA demo, drawn from the words of each image's captions.

CUSA trains on raw pixels, and the demo set has real COCO captions but no photographs. Each
synthetic picture is a small drawing of what its captions say: a background for the scene ("grass",
"water", "snow", "street", "kitchen" ...), and one shape per object category the captions mention
most ("dog" is a brown ellipse, "bus" a wide yellow box, a person a stick figure ...), coloured by a
colour word that precedes the object ("a red bus"). They only let a tiny CLIP learn word-to-picture
links on a CPU in seconds; they are not photographs and no result on them says anything about CUSA.

The demo also needs a stand-in for the Unicom image teacher: `demo_teacher_features` gives each
image the multi-hot vector of the attributes it was drawn from (scene, objects, colours).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40), "blue": (40, 70, 210), "green": (40, 160, 60), "yellow": (235, 210, 40),
    "white": (245, 245, 245), "black": (20, 20, 20), "orange": (240, 140, 30), "purple": (130, 50, 170),
    "pink": (240, 130, 180), "brown": (120, 75, 35), "gray": (128, 128, 128), "grey": (128, 128, 128),
    "silver": (190, 190, 200),
}

# scene -> (trigger words, background colour)
SCENES: dict[str, tuple[tuple[str, ...], tuple[int, int, int]]] = {
    "grass": (("grass", "grassy", "field", "park", "pasture", "lawn", "yard", "tree", "trees", "forest", "zoo"),
              (95, 165, 80)),
    "water": (("water", "ocean", "lake", "river", "sea", "beach", "surf", "wave", "waves", "surfboard", "harbor"),
              (60, 125, 205)),
    "snow": (("snow", "snowy", "ski", "skis", "skiing", "skier", "slope", "snowboard", "mountain"), (236, 238, 246)),
    "street": (("street", "road", "city", "sidewalk", "parking", "intersection", "traffic", "highway", "station"),
               (110, 110, 115)),
    "indoor": (("kitchen", "room", "table", "desk", "restaurant", "bathroom", "bedroom", "counter", "sink",
                "living", "office", "toilet"), (205, 185, 145)),
    "sky": (("sky", "air", "flying", "kite", "kites", "airplane", "plane", "jet", "clouds"), (160, 205, 245)),
}
NEUTRAL = (170, 160, 150)

# object -> (trigger words, shape, default colour)
OBJECTS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "person": (("man", "men", "woman", "women", "person", "people", "boy", "girl", "child", "children", "kid",
                "kids", "player", "guy", "lady", "skier", "surfer", "skateboarder", "tennis", "baseball"),
               "figure", "orange"),
    "dog": (("dog", "dogs", "puppy"), "ellipse", "brown"),
    "cat": (("cat", "cats", "kitten"), "triangle", "gray"),
    "horse": (("horse", "horses", "pony"), "hbar", "brown"),
    "cow": (("cow", "cows", "cattle", "sheep", "livestock"), "square", "white"),
    "elephant": (("elephant", "elephants"), "dome", "gray"),
    "giraffe": (("giraffe", "giraffes", "zebra", "zebras"), "vbar", "yellow"),
    "bird": (("bird", "birds", "pigeon", "duck", "seagull"), "diamond", "black"),
    "bear": (("bear", "bears", "teddy"), "circle", "brown"),
    "car": (("car", "cars", "truck", "trucks", "van"), "hbar", "red"),
    "bus": (("bus", "buses", "train", "trains", "tram"), "wide", "yellow"),
    "bike": (("bike", "bikes", "bicycle", "motorcycle", "motorcycles", "scooter"), "rings", "black"),
    "boat": (("boat", "boats", "ship", "kayak"), "boat", "white"),
    "plane": (("airplane", "plane", "planes", "jet", "kite", "kites"), "cross", "white"),
    "pizza": (("pizza", "pizzas", "cake", "donut", "donuts", "pie"), "circle", "orange"),
    "food": (("sandwich", "food", "plate", "bowl", "broccoli", "vegetables", "fruit", "bananas", "banana",
              "meal", "dish", "salad"), "ring", "green"),
    "umbrella": (("umbrella", "umbrellas"), "dome", "purple"),
    "clock": (("clock", "clocks", "sign", "stop"), "ring", "red"),
    "board": (("skateboard", "surfboard", "snowboard", "skis", "racket", "bat", "frisbee"), "vbar", "pink"),
    "furniture": (("bed", "couch", "sofa", "chair", "chairs", "bench", "toilet", "refrigerator", "oven"),
                  "square", "blue"),
    "screen": (("tv", "television", "computer", "laptop", "phone", "keyboard", "monitor"), "screen", "black"),
}

_WORD = re.compile(r"[a-z]+")
_WORD_TO_OBJECT = {w: name for name, (words, _, _) in OBJECTS.items() for w in words}
_WORD_TO_SCENE = {w: name for name, (words, _) in SCENES.items() for w in words}
ATTRIBUTES = [f"scene:{s}" for s in SCENES] + [f"object:{o}" for o in OBJECTS] + \
    [f"color:{c}" for c in COLORS if c != "grey"]


@dataclass
class DrawnObject:
    name: str
    shape: str
    color: str


@dataclass
class ImagePlan:
    """What one synthetic image shows: a scene and up to three coloured objects."""

    scene: str | None
    objects: list[DrawnObject]

    def attributes(self) -> list[str]:
        out = [f"scene:{self.scene}"] if self.scene else []
        for o in self.objects:
            out += [f"object:{o.name}", f"color:{'gray' if o.color == 'grey' else o.color}"]
        return out


def plan_image(captions: Sequence[str], max_objects: int = 3) -> ImagePlan:
    """The scene and objects the captions of one image agree on most (counted once per caption)."""
    scene_votes: Counter[str] = Counter()
    object_votes: Counter[str] = Counter()
    colour_votes: dict[str, Counter[str]] = {}
    for caption in captions:
        words = _WORD.findall(caption.lower())
        scene_votes.update({_WORD_TO_SCENE[w] for w in words if w in _WORD_TO_SCENE})
        object_votes.update({_WORD_TO_OBJECT[w] for w in words if w in _WORD_TO_OBJECT})
        for k, w in enumerate(words):
            if w in _WORD_TO_OBJECT:
                for prev in words[max(0, k - 2):k]:
                    if prev in COLORS:
                        colour_votes.setdefault(_WORD_TO_OBJECT[w], Counter())[prev] += 1
    scene = min(scene_votes, key=lambda s: (-scene_votes[s], list(SCENES).index(s))) if scene_votes else None
    names = sorted(object_votes, key=lambda o: (-object_votes[o], list(OBJECTS).index(o)))[:max_objects]
    objects = []
    for name in names:
        _, shape, default = OBJECTS[name]
        votes = colour_votes.get(name)
        objects.append(DrawnObject(name, shape, votes.most_common(1)[0][0] if votes else default))
    return ImagePlan(scene, objects)


def _draw_shape(draw: object, shape: str, box: tuple[float, float, float, float], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    d = draw  # PIL.ImageDraw.ImageDraw
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "ellipse":
        d.ellipse((x0, cy - h / 3, x1, cy + h / 3), fill=fill)
    elif shape == "ring":
        d.ellipse(box, outline=fill, width=max(2, int(w / 6)))
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "hbar":
        d.rectangle((x0, cy - h / 5, x1, cy + h / 5), fill=fill)
    elif shape == "wide":
        d.rectangle((x0, cy - h / 3, x1, cy + h / 3), fill=fill)
        d.rectangle((x0 + w / 6, cy - h / 6, x0 + w / 3, cy), fill=(230, 240, 250))
    elif shape == "vbar":
        d.rectangle((cx - w / 6, y0, cx + w / 6, y1), fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "dome":
        d.pieslice(box, 180, 360, fill=fill)
    elif shape == "cross":
        d.rectangle((x0, cy - h / 8, x1, cy + h / 8), fill=fill)
        d.rectangle((cx - w / 8, y0, cx + w / 8, y1), fill=fill)
    elif shape == "rings":
        r = w / 4
        d.ellipse((x0, cy - r, x0 + 2 * r, cy + r), outline=fill, width=2)
        d.ellipse((x1 - 2 * r, cy - r, x1, cy + r), outline=fill, width=2)
    elif shape == "boat":
        d.polygon([(x0, cy), (x1, cy), (x1 - w / 5, y1), (x0 + w / 5, y1)], fill=fill)
        d.line((cx, y0, cx, cy), fill=fill, width=2)
    elif shape == "screen":
        d.rectangle((x0, y0 + h / 6, x1, y1 - h / 6), fill=fill)
        d.rectangle((x0 + w / 8, y0 + h / 4, x1 - w / 8, y1 - h / 4), fill=(90, 160, 230))
    else:  # figure: a head and a body
        d.ellipse((cx - w / 6, y0, cx + w / 6, y0 + w / 3), fill=fill)
        d.rectangle((cx - w / 5, y0 + w / 3, cx + w / 5, y1), fill=fill)


def render_image(plan: ImagePlan, size: int = 48, rng: np.random.Generator | None = None) -> object:
    """Draw one plan as an RGB PIL image of `size` x `size` pixels (positions jittered by `rng`)."""
    from PIL import Image, ImageDraw

    rng = rng or np.random.default_rng(0)
    bg = SCENES[plan.scene][1] if plan.scene else NEUTRAL
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    slots = [(0.05, 0.10), (0.52, 0.10), (0.28, 0.52)]
    order = rng.permutation(len(slots))
    for obj, slot in zip(plan.objects, order):
        sx, sy = slots[slot]
        s = size * rng.uniform(0.36, 0.44)
        x0 = size * sx + rng.uniform(0, size * 0.06)
        y0 = size * sy + rng.uniform(0, size * 0.06)
        _draw_shape(draw, obj.shape, (x0, y0, x0 + s, y0 + s), COLORS[obj.color])
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-8, 9, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def render_caption_images(caption_groups: Sequence[Sequence[str]], size: int = 48, seed: int = 0) -> list[object]:
    """One synthetic RGB image per caption group (the captions of one image)."""
    rng = np.random.default_rng(seed)
    return [render_image(plan_image(group), size, rng) for group in caption_groups]


def demo_teacher_features(caption_groups: Sequence[Sequence[str]]) -> np.ndarray:
    """Stand-in for the Unicom image teacher: the multi-hot attributes each image was drawn from
    (plus a constant component so no vector is zero). (N, len(ATTRIBUTES) + 1) float32."""
    index = {a: k for k, a in enumerate(ATTRIBUTES)}
    out = np.zeros((len(caption_groups), len(ATTRIBUTES) + 1), dtype=np.float32)
    out[:, -1] = 0.5
    for n, group in enumerate(caption_groups):
        for attr in plan_image(group).attributes():
            out[n, index[attr]] = 1.0
    return out


def write_demo_split(root: str | Path, split: str, caption_groups: Sequence[Sequence[str]],
                     image_ids: Sequence[str] | None = None, size: int = 48, seed: int = 0) -> Path:
    """Write a CUSA-layout split: `images/<id>.png`, `new_{split}.json` and `{split}_unicom.npz`.

    Returns the json path. Image ids default to `demo_<split>_<n>` (zero-padded, so string order is
    the given order).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    ids = list(image_ids) if image_ids is not None else [f"demo_{split}_{n:06d}" for n in range(len(caption_groups))]
    if len(ids) != len(caption_groups):
        raise ValueError(f"{len(ids)} image ids for {len(caption_groups)} caption groups")
    rows = []
    for image_id, group, image in zip(ids, caption_groups, render_caption_images(caption_groups, size, seed)):
        rel = f"images/{image_id}.png"
        image.save(root / rel)
        rows += [{"image_path": rel, "caption": c, "image_id": image_id} for c in group]
    path = root / f"new_{split}.json"
    path.write_text(json.dumps(rows, indent=0), encoding="utf8")
    # the teacher-feature file CUSA reads (methods.cusa.teacher.TeacherFeatures): ids and float32 features
    np.savez(root / f"{split}_unicom.npz", ids=np.array(ids, dtype=np.str_),
             features=demo_teacher_features(caption_groups).astype(np.float32))
    return path
