"""The table of on-disk dataset layouts: one row per way a split is stored.

Each row says what the layout holds (`image_input`: precomputed region features or raw pixels), how to read a
split (`read`), how `check-data` finds every problem of a data folder (`check`), and which files a job reading a
split depends on (`split_files`, hashed into the data fingerprint). A dataset in the registry names its layout;
a method whose adapter wants another image input reads the dataset in that input's default layout (a pixel
method reads coco in `cusa_json`). A new layout is one reader and one row here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

IMAGE_INPUTS = ("regions", "pixels")


@dataclass(frozen=True)
class DataShape:
    """What a dataset's registry entry declares about its files (what `check` compares the folder against)."""

    name: str
    images: Mapping[str, int] = field(default_factory=dict)  # images per split, where declared
    captions_per_image: int = 5
    feature_dim: int | None = 2048  # region feature size (None: any)


class SplitData(Protocol):
    @property
    def n_images(self) -> int: ...


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    image_input: str  # one of IMAGE_INPUTS
    read: Callable[[Path, str, str | None], SplitData]  # (root, split, dataset) -> the split
    check: Callable[[Path, DataShape, Sequence[str], bool], list[str]]  # (root, shape, splits, decode_images)
    split_files: Callable[[Path, str, str | None], list[Path]]  # (root, split, dataset) -> files a job reads
    caption_ids: bool = False  # the split's own files name each caption's COCO id (json layouts)


# ---- precomp: SCAN's {split}_ims.npy + {split}_caps.txt ------------------------------------------------------

def _precomp_read(root: Path, split: str, dataset: str | None) -> Any:
    from harness.data.precomp import load_precomp

    return load_precomp(root, split, dataset)


def _precomp_check(root: Path, shape: DataShape, splits: Sequence[str], decode_images: bool) -> list[str]:
    from harness.data.precomp import check_precomp

    return check_precomp(root, shape.name, list(splits), feature_dim=shape.feature_dim,
                         expected_images=dict(shape.images), captions_per_image=shape.captions_per_image)


def _precomp_files(root: Path, split: str, dataset: str | None) -> list[Path]:
    from harness.data.precomp import DataError, resolve_precomp_dir

    try:
        folder = resolve_precomp_dir(root, split, dataset)
    except DataError:
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(f"{split}_"))


# ---- cusa_json: CUSA/ALBEF new_{split}.json naming raw images (+ teacher features) -------------------------------

def _cusa_read(root: Path, split: str, dataset: str | None) -> Any:
    from harness.data.cusa_json import CusaDataError, find_split_folder, load_cusa_split

    folder = find_split_folder(root, split, dataset)
    if folder is None:
        raise CusaDataError(f"{root}: no new_{split}.json (expected the CUSA/ALBEF json layout)")
    return load_cusa_split(folder, split, check_images=False)


def _cusa_check(root: Path, shape: DataShape, splits: Sequence[str], decode_images: bool) -> list[str]:
    from harness.data.cusa_json import check_cusa_json

    return [p for s in splits for p in check_cusa_json(root, s, shape.name, decode_images=decode_images)]


def _cusa_files(root: Path, split: str, dataset: str | None) -> list[Path]:
    from harness.data.cusa_json import find_split_folder

    folder = find_split_folder(root, split, dataset)  # the json and the teacher features (images are named by it)
    return [] if folder is None else [p for p in (folder / f"new_{split}.json", folder / f"{split}_unicom.npz")
                                      if p.is_file()]


LAYOUTS: dict[str, Layout] = {row.name: row for row in (
    Layout("precomp", "SCAN precomp: {split}_ims.npy region features and {split}_caps.txt", "regions",
           _precomp_read, _precomp_check, _precomp_files),
    Layout("cusa_json", "CUSA/ALBEF json: new_{split}.json naming raw image files", "pixels",
           _cusa_read, _cusa_check, _cusa_files, caption_ids=True),
)}
# the layout a method with this image input reads a dataset in when the dataset's own layout holds the other input
DEFAULT_FOR_INPUT = {"regions": "precomp", "pixels": "cusa_json"}


def layout(name: str) -> Layout:
    """The layout `name`; an unknown name is a DataLayoutError listing the valid ones."""
    if name not in LAYOUTS:
        import difflib

        from harness.core.errors import ItrbenchError

        near = difflib.get_close_matches(name, LAYOUTS, n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ItrbenchError(f"unknown data layout '{name}'; valid: {', '.join(LAYOUTS)}{hint}")
    return LAYOUTS[name]


def layout_for(dataset_layout: str, image_input: str) -> Layout:
    """The layout a method taking `image_input` reads a dataset stored as `dataset_layout` in."""
    own = layout(dataset_layout)
    return own if own.image_input == image_input else LAYOUTS[DEFAULT_FOR_INPUT[image_input]]
