"""CUSA's Unicom teacher image features in a safe format.

The official `<split>_unicom.npy` files are pickled `{image_id: feature}` dicts. Unpickling runs
arbitrary code, so they are read once by `convert_unicom` with an unpickler that admits only numpy
arrays, dtypes and plain containers, and written as an `.npz` of `ids` and a float32 `features`
matrix, which `TeacherFeatures` reads without pickle:

    python -m methods.cusa.teacher convert-unicom data/coco/train_unicom.npy data/coco/train_unicom.npz
"""

from __future__ import annotations

import argparse
import importlib
import pickle
import sys
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.api import CusaDataError


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
            return OrderedDict
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
                                f"`python -m methods.cusa.teacher convert-unicom {path} {path.with_suffix('.npz')}`")
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
    parser = argparse.ArgumentParser(prog="python -m methods.cusa.teacher", description=__doc__.split("\n\n")[0])
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
