"""CUSA data: the ALBEF-style json splits, CUSA's caption cleaning, CLIP preprocessing, and the
Unicom teacher image features in a safe format.

Json layout (`<root>/new_{split}.json`): a list of rows `{"image_path", "caption", "image_id"}`, one
row per caption; `image_path` is relative to the json's folder (an absolute path stays absolute).
The evaluation order follows the official test dataset: images grouped by `image_id`, ids sorted
(they are strings in CUSA's files, so string order), each image's captions in json order, any number
of captions per image.

Teacher image features: the official `<split>_unicom.npy` files are pickled `{image_id: feature}`
dicts. Unpickling runs arbitrary code, so they are read once by `convert_unicom` with an unpickler
that admits only numpy arrays, dtypes and plain containers, and written as an `.npz` of `ids` and a
float32 `features` matrix, which `TeacherFeatures` reads without pickle:

    python -m methods.cusa.data convert-unicom data/coco/train_unicom.npy data/coco/train_unicom.npz
"""

from __future__ import annotations

import argparse
import importlib
import json
import pickle
import re
import sys
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_WORDS = 64

_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


class CusaDataError(ValueError):
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
    except OSError as exc:
        raise CusaDataError(f"{path}: not a readable image ({exc})") from exc


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
        rows = json.loads(path.read_text(encoding="utf8"))
    except json.JSONDecodeError as exc:
        raise CusaDataError(f"{path}: not valid json ({exc})") from exc
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


def check_cusa_json(root: str | Path, split: str, dataset: str | None = None) -> list[str]:
    """Problems of `new_{split}.json` (in one of `split_folders`) and its images ([] when usable), for
    `check-data`."""
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
    for n, caption in enumerate(data.captions):
        try:
            pre_caption(caption)
        except ValueError as exc:
            problems.append(f"{data.path}: caption {n}: {exc}")
    return problems


# ---- teacher image features ---------------------------------------------------------------------

def _numpy_attr(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; pickles from either era name one of them.
    real = module.replace("numpy.core", "numpy._core") if module.startswith("numpy.core") else module
    try:
        return getattr(importlib.import_module(real), name)
    except (ImportError, AttributeError):
        return getattr(importlib.import_module(module), name)


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays, dtypes and scalars inside plain dicts/lists/str; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed (only numpy arrays, "
                                         "dicts and strings may appear in a teacher feature file)")
        if module == "collections":
            import collections

            return collections.OrderedDict
        return _numpy_attr(module, name)


def read_unicom_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """An official `*_unicom.npy` (a pickled {image_id: feature} dict) read without running code.

    Each feature is the official `value[0]` (its first row) for 2-D values, or the value itself
    when it is already 1-D. Keys become strings.
    """
    path = Path(path)
    if not path.is_file():
        raise CusaDataError(f"{path}: no such teacher feature file")
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                _, _, dtype = np.lib.format.read_array_header_2_0(f)
            if not dtype.hasobject:
                raise CusaDataError(f"{path}: a plain {dtype} array, not the official pickled {{image_id: feature}} "
                                    "dict")
            obj = _NumpyOnlyUnpickler(f).load()
    except CusaDataError:
        raise
    except pickle.UnpicklingError as exc:
        raise CusaDataError(f"{path}: refused to unpickle: {exc}") from exc
    except (ValueError, EOFError, OSError) as exc:
        raise CusaDataError(f"{path}: not a readable .npy file ({exc})") from exc
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise CusaDataError(f"{path}: expected a pickled dict of image_id -> feature, found {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, (str, int)):
            raise CusaDataError(f"{path}: key {key!r} is not an image id (string or integer)")
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu" or value.ndim not in (1, 2):
            raise CusaDataError(f"{path}: feature of {key!r} is not a 1-D or 2-D numeric array "
                                f"({type(value).__name__} {getattr(value, 'shape', '')})")
        out[str(key)] = np.asarray(value[0] if value.ndim == 2 else value, dtype=np.float32)
    dims = {v.shape for v in out.values()}
    if len(dims) > 1:
        raise CusaDataError(f"{path}: features have different shapes {sorted(dims)}")
    return out


class TeacherFeatures:
    """Teacher image features by image id, from the safe `.npz` (`ids`, `features`)."""

    def __init__(self, ids: Sequence[str], features: np.ndarray, path: str | Path = "<memory>"):
        self.path = Path(path)
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != len(ids):
            raise CusaDataError(f"{self.path}: {len(ids)} ids but features of shape {features.shape}")
        self.features = features
        self.index = {str(k): n for n, k in enumerate(ids)}
        if len(self.index) != len(ids):
            raise CusaDataError(f"{self.path}: duplicate image ids")

    @classmethod
    def from_file(cls, path: str | Path) -> TeacherFeatures:
        path = Path(path)
        if path.suffix == ".npy":
            raise CusaDataError(f"{path}: an official pickled feature dict; convert it once with "
                                f"`python -m methods.cusa.data convert-unicom {path} {path.with_suffix('.npz')}`")
        if not path.is_file():
            raise CusaDataError(f"{path}: no such teacher feature file")
        try:
            with np.load(path, allow_pickle=False) as z:
                ids, feats = z["ids"], z["features"]
        except (KeyError, ValueError, OSError) as exc:
            raise CusaDataError(f"{path}: not a teacher feature .npz with 'ids' and 'features' ({exc})") from exc
        return cls([str(i) for i in ids.tolist()], feats, path)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, image_id: object) -> bool:
        return str(image_id) in self.index

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def lookup(self, image_ids: Sequence[Hashable]) -> np.ndarray:
        """(B, D) features of `image_ids`; a missing id is an error (never a uniform soft label)."""
        missing = [i for i in image_ids if str(i) not in self.index]
        if missing:
            raise CusaDataError(f"{self.path}: no teacher feature for {len(missing)} image id(s), e.g. "
                                f"{missing[:3]!r}; the feature file must cover every training image")
        return self.features[[self.index[str(i)] for i in image_ids]]

    def save(self, path: str | Path) -> None:
        ids = np.array(sorted(self.index, key=self.index.__getitem__), dtype=np.str_)
        np.savez(path, ids=ids, features=self.features)


def convert_unicom(src: str | Path, dst: str | Path) -> TeacherFeatures:
    """Convert an official `*_unicom.npy` pickle into the safe `.npz`; returns the features."""
    if Path(dst).suffix != ".npz":
        raise CusaDataError(f"{dst}: the converted teacher features must be written to a .npz file")
    table = read_unicom_pickle(src)
    if not table:
        raise CusaDataError(f"{src}: the feature dict is empty")
    ids = list(table)
    feats = TeacherFeatures(ids, np.stack([table[i] for i in ids]), dst)
    feats.save(dst)
    return feats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m methods.cusa.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert-unicom", help="official *_unicom.npy pickle -> safe .npz (ids, features)")
    conv.add_argument("src")
    conv.add_argument("dst")
    args = parser.parse_args(argv)
    try:
        feats = convert_unicom(args.src, args.dst)
    except CusaDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.dst}: {len(feats)} image features of dimension {feats.dim}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
