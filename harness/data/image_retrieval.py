"""Image retrieval test sets as CUSA's `dataset_evalimg/` reads them (CUB-200, SOP, In-shop, iNaturalist).

The data is downloaded by users; `root` is the folder CUSA's loaders take:

- CUB-200-2011: `root/cub/CUB_200_2011/images/<class folder>/<image>`, read with torchvision's ImageFolder
  rules (classes = sorted folder names, numbered from 0; files sorted); evaluation classes 100-199; files
  starting with `._` are skipped.
- Stanford Online Products: `root/sop/Stanford_Online_Products/Ebay_test.txt` (header, then image_id
  class_id super_class_id path); label = class_id - 1, kept when in 11318-22633.
- In-shop: `root/inshop/Eval/list_eval_partition.txt` (a count line, a header line, then image_name
  item_id evaluation_status); query and gallery rows, labels numbered over their item ids together; image
  paths `root/inshop/Img/<image_name>`.
- iNaturalist 2018: `root/inaturalist/Inat_dataset_splits/Inaturalist_test_set1.txt` (one relative path a
  line); label = the path's class folder (second to last component), numbered in sorted order.

Only the lists are read here (paths and labels); images are loaded by the caller with the model's own
preprocessing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import ItrbenchError
from harness.data.images import image_problems_summary

DATASETS = ("cub", "sop", "inshop", "inaturalist")
CUB_EVAL_CLASSES = range(100, 200)
SOP_EVAL_CLASSES = range(11318, 22634)


class ImageRetrievalDataError(ItrbenchError):
    """A retrieval list file that is missing or malformed."""


@dataclass(frozen=True)
class RetrievalSet:
    """Image paths and class labels of one test set; In-shop also has a separate gallery."""

    name: str
    paths: list[str]
    labels: np.ndarray
    gallery_paths: list[str] | None = None
    gallery_labels: np.ndarray | None = None

    @property
    def has_gallery(self) -> bool:
        return self.gallery_paths is not None


def _need(path: Path) -> Path:
    if not path.exists():
        raise ImageRetrievalDataError(f"{path}: not found")
    return path


def _lines(path: Path) -> list[str]:
    """The lines of a list file (universal newlines); errors name the file."""
    try:
        return path.read_bytes().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    except UnicodeDecodeError as exc:
        raise ImageRetrievalDataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ImageRetrievalDataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _int(text: str, path: Path, line: int, what: str) -> int:
    if re.fullmatch(r"-?[0-9]+", text) is None:
        raise ImageRetrievalDataError(f"{path}:{line}: {what} '{text[:40]}' is not an integer")
    return int(text)


def load_cub(root: str | Path) -> RetrievalSet:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    images = _need(Path(root) / "cub" / "CUB_200_2011" / "images")
    try:
        _, class_to_idx = find_classes(str(images))
        items = make_dataset(str(images), class_to_idx, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImageRetrievalDataError(f"{images}: {exc} (expected 200 class folders of images)") from None
    keep = [(p, y) for p, y in items if y in CUB_EVAL_CLASSES and not Path(p).name.startswith("._")]
    if not keep:
        raise ImageRetrievalDataError(f"{images}: no images in classes 100-199 (expected 200 class folders)")
    return RetrievalSet("cub", [p for p, _ in keep], np.asarray([y for _, y in keep], dtype=np.int64))


def load_sop(root: str | Path) -> RetrievalSet:
    base = Path(root) / "sop" / "Stanford_Online_Products"
    listing = _need(base / "Ebay_test.txt")
    paths, labels = [], []
    lines = _lines(listing)
    if lines and lines[-1] == "":
        lines = lines[:-1]
    for i, line in enumerate(lines):
        if i == 0:
            continue
        fields = line.split()
        if len(fields) != 4:
            raise ImageRetrievalDataError(f"{listing}:{i + 1}: expected image_id class_id super_class_id path")
        label = _int(fields[1], listing, i + 1, "class_id") - 1
        if label in SOP_EVAL_CLASSES:
            labels.append(label)
            paths.append(str(base / fields[3]))
    return RetrievalSet("sop", paths, np.asarray(labels, dtype=np.int64))


def load_inshop(root: str | Path) -> RetrievalSet:
    base = Path(root) / "inshop"
    listing = _need(base / "Eval" / "list_eval_partition.txt")
    rows = {"query": [], "gallery": []}
    lines = _lines(listing)
    if len(lines) < 2 or lines[1].split()[:3] != ["image_name", "item_id", "evaluation_status"]:
        raise ImageRetrievalDataError(f"{listing}: expected a count line, then 'image_name item_id "
                                      "evaluation_status'")
    for i, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise ImageRetrievalDataError(f"{listing}:{i}: expected image_name item_id evaluation_status")
        if fields[2] in rows:
            rows[fields[2]].append((fields[0], _int(fields[1].split("_")[-1], listing, i, "item_id")))
    items = sorted({item for part in rows.values() for _, item in part})
    index = {item: k for k, item in enumerate(items)}

    def split(part: str) -> tuple[list[str], np.ndarray]:
        return ([str(base / "Img" / name) for name, _ in rows[part]],
                np.asarray([index[item] for _, item in rows[part]], dtype=np.int64))

    q_paths, q_labels = split("query")
    g_paths, g_labels = split("gallery")
    if not q_paths or not g_paths:
        raise ImageRetrievalDataError(f"{listing}: no query or no gallery rows")
    return RetrievalSet("inshop", q_paths, q_labels, g_paths, g_labels)


def load_inaturalist(root: str | Path) -> RetrievalSet:
    base = Path(root) / "inaturalist"
    listing = _need(base / "Inat_dataset_splits" / "Inaturalist_test_set1.txt")
    rel = [p for p in _lines(listing) if p != ""]
    parts = [p.split("/") for p in rel]
    bad = next((n for n, q in enumerate(parts) if len(q) < 2 or not q[-2].isascii() or not q[-2].isdigit()), None)
    if bad is not None:
        raise ImageRetrievalDataError(f"{listing}:{bad + 1}: expected paths like <group>/<class id>/<file>.jpg, "
                                      f"found '{rel[bad][:80]}'")
    names = [int(q[-2]) for q in parts]
    index = {c: k for k, c in enumerate(sorted(set(names)))}
    return RetrievalSet("inaturalist", [str(base / p) for p in rel],
                        np.asarray([index[c] for c in names], dtype=np.int64))


LOADERS = {"cub": load_cub, "sop": load_sop, "inshop": load_inshop, "inaturalist": load_inaturalist}


def load_image_retrieval(root: str | Path, name: str) -> RetrievalSet:
    if name not in LOADERS:
        raise ImageRetrievalDataError(f"unknown image retrieval set '{name}'; valid: {', '.join(DATASETS)}")
    return LOADERS[name](root)


def check_image_retrieval(root: str | Path, names: tuple[str, ...] = DATASETS, check_images: bool = True,
                          decode_images: bool = False) -> list[str]:
    """Problems with the listed datasets under `root`, each naming its file; [] when valid. `check_images`
    reports missing image files, `decode_images` also the ones that do not decode."""
    problems = []
    for name in names:
        try:
            ds = load_image_retrieval(root, name)
        except (ImageRetrievalDataError, FileNotFoundError, OSError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        paths = ds.paths + (ds.gallery_paths or [])
        if not paths:
            problems.append(f"{name}: no images listed for evaluation")
            continue
        if check_images:
            missing = [p for p in paths if "\x00" in p or not Path(p).is_file()]
            if missing:
                problems.append(f"{name}: {len(missing)} of {len(paths)} listed images are missing "
                                f"(first: {missing[0]})")
            if decode_images:
                gone = set(missing)
                problems += image_problems_summary(name, [p for p in paths if p not in gone], "listed images")
    return problems


class ImageFiles:
    """Image files as preprocessed pixel batches: `view[i:j]` is a (B, 3, H, W) tensor made by `transform`
    from each file opened as RGB (as CUSA's `dataset_evalimg` loaders do)."""

    def __init__(self, paths: list[str], transform: Callable[[Any], Any]):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: slice) -> Any:
        import torch
        from PIL import Image

        out = []
        for p in self.paths[index]:
            try:
                with Image.open(p) as im:
                    out.append(self.transform(im.convert("RGB")))
            except FileNotFoundError as exc:
                raise ImageRetrievalDataError(f"{p}: image file not found") from exc
            except OSError as exc:
                raise ImageRetrievalDataError(f"{p}: not a readable image ({exc})") from exc
        return torch.stack(out)


def present_sets(root: str | Path, names: tuple[str, ...] = DATASETS) -> tuple[list[str], dict[str, str]]:
    """The sets whose list file (or CUB image folder) exists under `root`, and why each other one is absent."""
    markers = {"cub": Path("cub") / "CUB_200_2011" / "images",
               "sop": Path("sop") / "Stanford_Online_Products" / "Ebay_test.txt",
               "inshop": Path("inshop") / "Eval" / "list_eval_partition.txt",
               "inaturalist": Path("inaturalist") / "Inat_dataset_splits" / "Inaturalist_test_set1.txt"}
    present, absent = [], {}
    for name in names:
        marker = Path(root) / markers[name]
        if marker.exists():
            present.append(name)
        else:
            absent[name] = f"{marker}: not found"
    return present, absent
