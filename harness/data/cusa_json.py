"""The CUSA/ALBEF json layout of raw-image datasets: json splits, CUSA's caption cleaning and CLIP
preprocessing (read by CUSA, the zero-shot CLIP baselines and any pixel method).

Json layout (`<root>/new_{split}.json`): a list of rows `{"image_path", "caption", "image_id"}`, one
row per caption; `image_path` is relative to the json's folder (an absolute path stays absolute).
The evaluation order follows the official test dataset: images grouped by `image_id`, ids sorted
(they are strings in CUSA's files, so string order), each image's captions in json order, any number
of captions per image.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.core.errors import ItrbenchError
from harness.data.images import image_problems_summary

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_WORDS = 64

_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


class CusaDataError(ItrbenchError):
    """A CUSA data file that cannot be used as asked (missing, malformed, unsafe, incomplete)."""


# ---- captions ------------------------------------------------------------------------------------

def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """CUSA's caption cleaning: lower-case, punctuation and '-' '/' to spaces, '<person>' to 'person',
    whitespace collapsed, at most `max_words` words. An empty result is an error (as officially)."""
    text = _PUNCT.sub(" ", caption.lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _SPACES.sub(" ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    if not text:
        raise ValueError(f"caption {caption!r} is empty after CUSA's caption cleaning")
    return text


# ---- images --------------------------------------------------------------------------------------

def _to_rgb(image: Any) -> Any:
    return image.convert("RGB")


def clip_preprocess(image_size: int) -> Callable[[Any], torch.Tensor]:
    """CLIP's evaluation transform: bicubic resize of the short side, centre crop, RGB, CLIP mean/std."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        _to_rgb,
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def load_image(path: str | Path) -> Any:
    """An image file as an RGB PIL image (as the official dataset opens it)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError as exc:
        raise CusaDataError(f"{path}: image file not found") from exc
    except Exception as exc:  # PIL: OSError for most bad files, also SyntaxError, ValueError, DecompressionBombError
        raise CusaDataError(f"{path}: not a readable image ({type(exc).__name__}: {str(exc)[:200]})") from exc


class PixelImages(Sequence):
    """The images of a split as preprocessed pixel batches: `view[i:j]` is a (B, 3, H, W) tensor."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Any], torch.Tensor]):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int | slice) -> torch.Tensor:  # type: ignore[override]
        if isinstance(index, slice):
            return torch.stack([self.transform(load_image(p)) for p in self.paths[index]])
        return self.transform(load_image(self.paths[index]))


# ---- json splits -----------------------------------------------------------------------------------

@dataclass
class CusaSplit:
    """One split in evaluation order (images sorted by id, captions grouped by image)."""

    path: Path  # the json file
    image_ids: list[Hashable]
    image_paths: list[Path]
    captions: list[str]  # raw text as in the json; the adapter applies `pre_caption`
    image_of_caption: np.ndarray  # (n_captions,) int64: caption j belongs to image image_of_caption[j]

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    @property
    def captions_of_image(self) -> list[list[int]]:
        groups: list[list[int]] = [[] for _ in range(self.n_images)]
        for j, i in enumerate(self.image_of_caption.tolist()):
            groups[i].append(j)
        return groups

    def pixel_images(self, transform: Callable[[Any], torch.Tensor]) -> PixelImages:
        return PixelImages(self.image_paths, transform)

    def missing_images(self) -> list[Path]:
        return [p for p in self.image_paths if not p.is_file()]


def split_json(root: str | Path, split: str) -> Path:
    return Path(root) / f"new_{split}.json"


def split_folders(root: str | Path, dataset: str | None = None) -> list[Path]:
    """Where a split's json may live: `root`, `root/<dataset>`, `root/<dataset>/cusa` (the demo's image form)."""
    root = Path(root)
    return [root] + ([root / dataset, root / dataset / "cusa"] if dataset else [])


def find_split_folder(root: str | Path, split: str, dataset: str | None = None) -> Path | None:
    """The first of `split_folders` holding `new_{split}.json`, or None."""
    return next((d for d in split_folders(root, dataset) if split_json(d, split).is_file()), None)


def load_cusa_split(root: str | Path, split: str, *, check_images: bool = True) -> CusaSplit:
    """Read `<root>/new_{split}.json` into evaluation order; with `check_images`, every image must exist."""
    path = split_json(root, split)
    if not path.is_file():
        raise CusaDataError(f"{path}: no such file (expected the CUSA/ALBEF json layout new_{split}.json)")
    try:
        rows = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CusaDataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise CusaDataError(f"{path}: not valid json ({exc})") from None
    except RecursionError:
        raise CusaDataError(f"{path}: json nested too deeply; expected a list of rows") from None
    if not isinstance(rows, list) or not rows:
        raise CusaDataError(f"{path}: expected a non-empty list of {{image_path, caption, image_id}} rows")
    image_path: dict[Hashable, str] = {}
    caps: dict[Hashable, list[str]] = {}
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or any(k not in row for k in ("image_path", "caption", "image_id")):
            raise CusaDataError(f"{path}: row {n} is not an {{image_path, caption, image_id}} object: {row!r:.120}")
        img, cap, file = row["image_id"], row["caption"], row["image_path"]
        if not isinstance(img, (str, int)) or isinstance(img, bool):
            raise CusaDataError(f"{path}: row {n} has image_id {img!r}; expected a string or integer")
        if not isinstance(cap, str) or not isinstance(file, str):
            raise CusaDataError(f"{path}: row {n}: caption and image_path must be strings")
        if not file or "\x00" in file:
            raise CusaDataError(f"{path}: row {n}: image_path {file!r:.80} is not a file name")
        if img in image_path and image_path[img] != file:
            raise CusaDataError(f"{path}: image_id {img!r} names two files: {image_path[img]!r} and {file!r} "
                                f"(row {n})")
        image_path.setdefault(img, file)
        caps.setdefault(img, []).append(cap)
    kinds = {type(k) for k in caps}
    if len(kinds) > 1:
        raise CusaDataError(f"{path}: image ids mix strings and integers; they cannot be sorted as the official "
                            "test set sorts them")
    ids = sorted(caps)
    captions: list[str] = []
    owner: list[int] = []
    for i, img in enumerate(ids):
        captions.extend(caps[img])
        owner.extend([i] * len(caps[img]))
    split_obj = CusaSplit(path=path, image_ids=ids, image_paths=[path.parent / image_path[i] for i in ids],
                          captions=captions, image_of_caption=np.asarray(owner, dtype=np.int64))
    if check_images:
        missing = split_obj.missing_images()
        if missing:
            shown = ", ".join(str(p) for p in missing[:3])
            raise CusaDataError(f"{path}: {len(missing)} of {split_obj.n_images} images are missing "
                                f"(e.g. {shown}); image_path is relative to the json's folder")
    return split_obj


def check_cusa_json(root: str | Path, split: str, dataset: str | None = None,
                    decode_images: bool = False) -> list[str]:
    """Problems of `new_{split}.json` (in one of `split_folders`) and its images ([] when usable), for
    `check-data`; `decode_images` decodes every image file (else only missing ones are reported)."""
    folder = find_split_folder(root, split, dataset)
    if folder is None:
        tried = ", ".join(str(split_json(d, split)) for d in split_folders(root, dataset))
        return [f"{tried}: no such file (expected the CUSA/ALBEF json layout new_{split}.json)"]
    try:
        data = load_cusa_split(folder, split, check_images=False)
    except CusaDataError as exc:
        return [str(exc)]
    problems = []
    missing = data.missing_images()
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        problems.append(f"{data.path}: {len(missing)} of {data.n_images} images are missing (e.g. {shown})")
    if decode_images:
        gone = set(missing)
        problems += image_problems_summary(data.path, [p for p in data.image_paths if p not in gone])
    for n, caption in enumerate(data.captions):
        try:
            pre_caption(caption)
        except ValueError as exc:
            problems.append(f"{data.path}: caption {n}: {exc}")
    for name, bad in (("a byte-order mark (U+FEFF)", lambda c: "\ufeff" in c),
                      ("NUL bytes", lambda c: "\x00" in c)):
        rows = [n for n, c in enumerate(data.captions) if bad(c)]
        if rows:
            problems.append(f"{data.path}: {len(rows)} caption(s) hold {name} (first: caption {rows[0]}: "
                            f"{data.captions[rows[0]][:60]!r}); remove them")
    return problems
