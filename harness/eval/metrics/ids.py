"""COCO ids of the rows and columns of a COCO 5K (Karpathy `testall`) similarity matrix.

ECCV Caption, CxC and plausible-match ground truth name images and captions by COCO ids; the harness's
matrices are indexed by position (row i = image i, column j = caption j, caption j belongs to image j // 5).
The authoritative mapping is vse_infty's `testall_ids.txt` (one COCO image id per caption line) and
`testall_capids.txt` (one COCO caption annotation id per line). When a data folder lacks them, the order of
the eccv_caption package's `coco_test_ids.npy` is assumed (Karpathy test order, 5 consecutive captions per
image, ascending ids within an image) and a warning says so.

Everything downstream works in the package's *canonical* order; `canonical_permutation` gives the row and
column permutations that bring a matrix from the data folder's order into it.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from harness.core.errors import ItrbenchError

ID_FILE = "testall_ids.txt"
CAPID_FILE = "testall_capids.txt"
ID_SUBDIRS = (".", "cxc_annots", "precomp")
N_IMAGES, N_CAPTIONS = 5000, 25000


class IdError(ItrbenchError):
    """An id file (or an id in a ground-truth file) that does not fit the COCO 5K test set."""


@dataclass(frozen=True)
class CocoTestIds:
    """COCO ids of a matrix's rows (images) and columns (captions)."""

    image_ids: np.ndarray  # (N_images,) int64
    caption_ids: np.ndarray  # (N_captions,) int64
    source: str
    warning: str | None = None

    def to_json(self) -> dict:
        return {"source": self.source, "warning": self.warning}


def eccv_data_dir() -> Path:
    """The data folder of the installed eccv_caption package (located without importing it)."""
    spec = importlib.util.find_spec("eccv_caption")
    if spec is None or spec.origin is None:
        raise IdError("the eccv_caption package is not installed (pip install eccv_caption==0.1.0)")
    return Path(spec.origin).parent / "data"


@dataclass(frozen=True)
class IdLists:
    """A {query id: [ids]} json as flat arrays: query keys[i] lists the next sizes[i] entries of values."""

    keys: np.ndarray
    sizes: np.ndarray
    values: np.ndarray


def read_id_lists(path: str | Path) -> IdLists:
    """Read a {query id: [ids]} json file (eccv_caption's ground-truth format) into flat arrays."""
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise IdError(f"{path}: not a valid json file ({type(exc).__name__}: {str(exc)[:160]})") from None
    try:
        if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
            raise TypeError("not a mapping of lists")
        keys = np.fromiter((_int_id(k) for k in raw), dtype=np.int64, count=len(raw))
        sizes = np.fromiter((len(v) for v in raw.values()), dtype=np.int64, count=len(raw))
        values = np.fromiter((_int_id(x) for v in raw.values() for x in v), dtype=np.int64, count=int(sizes.sum()))
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise IdError(f"{path}: expected {{id: [ids, ...]}} with integer ids ({exc})") from None
    return IdLists(keys, sizes, values)


@cache
def load_id_json(name: str) -> IdLists:
    """One of the eccv_caption package's `<name>.json` ground-truth files."""
    return read_id_lists(eccv_data_dir() / f"{name}.json")


@lru_cache(maxsize=1)
def package_caption_ids() -> np.ndarray:
    ids = np.load(eccv_data_dir() / "coco_test_ids.npy").astype(np.int64)
    ids.setflags(write=False)
    return ids


@lru_cache(maxsize=1)
def _caption_image_table() -> tuple[np.ndarray, np.ndarray]:
    """(sorted caption ids, their COCO image ids) from the package's original COCO ground truth."""
    c2i = load_id_json("original_caption_to_image")
    if not (c2i.sizes == 1).all():
        raise IdError("eccv_caption original_caption_to_image.json: expected one image per caption")
    caps, imgs = c2i.keys, c2i.values
    order = np.argsort(caps)
    return caps[order], imgs[order]


def image_of_captions(caption_ids: np.ndarray, where: str = "caption ids") -> np.ndarray:
    """COCO image id of each caption id; an id outside the COCO 5K test set is an error naming `where`."""
    caps, imgs = _caption_image_table()
    pos = np.searchsorted(caps, caption_ids)
    pos_c = np.minimum(pos, len(caps) - 1)
    bad = caps[pos_c] != caption_ids
    if bad.any():
        raise IdError(f"{where}: {int(bad.sum())} caption ids are not COCO 5K test captions "
                      f"(first: {int(np.asarray(caption_ids)[bad][0])})")
    return imgs[pos_c]


@lru_cache(maxsize=1)
def canonical_ids() -> CocoTestIds:
    """The eccv_caption package order: `coco_test_ids.npy`, images by first appearance."""
    caps = package_caption_ids()
    imgs = image_of_captions(caps, "coco_test_ids.npy")
    return CocoTestIds(imgs[::5].copy(), caps, source="eccv_caption coco_test_ids.npy")


def _int_id(x: object) -> int:
    """A COCO id: an int (not a bool or float), or a string of ASCII digits; ValueError otherwise."""
    if isinstance(x, int) and not isinstance(x, bool):
        return x
    if isinstance(x, str) and x.isascii() and x.isdigit():
        return int(x)
    raise ValueError(f"{x!r:.40} is not an integer id")


def _read_int_lines(path: Path) -> np.ndarray:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IdError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise IdError(f"{path}: cannot read ({exc.strerror or exc})") from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    try:
        return np.asarray([_int_id(ln) for ln in lines], dtype=np.int64)
    except (ValueError, OverflowError) as exc:
        raise IdError(f"{path}: expected one integer COCO id per line ({exc})") from None


def find_id_files(data_dir: str | Path) -> tuple[Path | None, Path | None]:
    """(`testall_ids.txt`, `testall_capids.txt`) in `data_dir` or its cxc_annots/ or precomp/ subfolder."""
    root = Path(data_dir)
    found: dict[str, Path | None] = {ID_FILE: None, CAPID_FILE: None}
    for name in found:
        for sub in ID_SUBDIRS:
            cand = root / sub / name
            if cand.is_file():
                found[name] = cand
                break
    return found[ID_FILE], found[CAPID_FILE]


def _image_ids_from_file(path: Path) -> np.ndarray:
    per_caption = _read_int_lines(path)
    if per_caption.size != N_CAPTIONS:
        raise IdError(f"{path}: {per_caption.size} lines, expected {N_CAPTIONS} (one image id per caption)")
    blocks = per_caption.reshape(N_IMAGES, 5)
    if not (blocks == blocks[:, :1]).all():
        row = int(np.nonzero(~(blocks == blocks[:, :1]).all(1))[0][0])
        raise IdError(f"{path}: lines {5 * row + 1}-{5 * row + 5} name different images; expected 5 consecutive "
                      "lines per image")
    images = blocks[:, 0].copy()
    expected = np.sort(canonical_ids().image_ids)
    if not np.array_equal(np.sort(images), expected):
        raise IdError(f"{path}: the image ids are not the 5000 COCO 5K (Karpathy test) images")
    return images


def _caption_ids_from_file(path: Path) -> np.ndarray:
    caps = _read_int_lines(path)
    if caps.size != N_CAPTIONS:
        raise IdError(f"{path}: {caps.size} lines, expected {N_CAPTIONS} caption ids")
    if np.unique(caps).size != caps.size:
        raise IdError(f"{path}: caption ids repeat; expected {N_CAPTIONS} distinct ids")
    owners = image_of_captions(caps, str(path)).reshape(N_IMAGES, 5)
    if not (owners == owners[:, :1]).all():
        row = int(np.nonzero(~(owners == owners[:, :1]).all(1))[0][0])
        raise IdError(f"{path}: lines {5 * row + 1}-{5 * row + 5} are captions of different images")
    return caps


def load_coco_test_ids(data_dir: str | Path | None = None, *, warn: bool = True) -> CocoTestIds:
    """Row/column COCO ids for a COCO 5K matrix built from the data folder `data_dir`.

    Uses `testall_capids.txt` (and `testall_ids.txt`, cross-checked) when present; with only
    `testall_ids.txt` the image order is read and the caption order within each image is assumed; with
    neither, the package order is assumed. Assumptions come with a warning (also kept in `.warning`).
    """
    canon = canonical_ids()
    ids_path, capids_path = find_id_files(data_dir) if data_dir is not None else (None, None)
    where = f"in {data_dir}" if data_dir is not None else "(no data folder given)"
    if capids_path is not None:
        caps = _caption_ids_from_file(capids_path)
        images = image_of_captions(caps[::5], str(capids_path))
        if ids_path is not None:
            listed = _image_ids_from_file(ids_path)
            if not np.array_equal(listed, images):
                row = int(np.nonzero(listed != images)[0][0])
                raise IdError(f"{ids_path} and {capids_path} disagree: row {row} is image {int(listed[row])} in "
                              f"the first and image {int(images[row])} in the second")
        return CocoTestIds(images, caps, source=f"{capids_path}")
    if ids_path is not None:
        images = _image_ids_from_file(ids_path)
        by_image = dict(zip(canon.image_ids.tolist(), canon.caption_ids.reshape(N_IMAGES, 5)))
        caps = np.concatenate([by_image[int(i)] for i in images])
        msg = (f"{CAPID_FILE} not found {where}: image order read from {ids_path}; the order of the 5 captions "
               "within each image is assumed to be eccv_caption's (ascending COCO caption id). Caption-level "
               "queries (t2i, t2t) depend on it.")
        if warn:
            warnings.warn(msg, stacklevel=2)
        return CocoTestIds(images, caps, source=f"{ids_path} + eccv_caption caption order", warning=msg)
    msg = (f"{ID_FILE} / {CAPID_FILE} not found {where}: rows and columns are assumed to follow eccv_caption's "
           "coco_test_ids order (Karpathy test order). Put vse_infty's cxc_annots files in the data folder to "
           "use the authoritative mapping.")
    if warn:
        warnings.warn(msg, stacklevel=2)
    return CocoTestIds(canon.image_ids, canon.caption_ids, source=canon.source, warning=msg)


def _positions(order: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index in `order` of every id in `ids` (both permutations of the same id set)."""
    sorter = np.argsort(order)
    pos = np.minimum(np.searchsorted(order, ids, sorter=sorter), len(order) - 1)
    return sorter[pos]


def canonical_permutation(ids: CocoTestIds) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(rows, cols) such that `sims[rows][:, cols]` is in canonical order; None where already canonical."""
    canon = canonical_ids()
    if ids.image_ids.shape != canon.image_ids.shape or ids.caption_ids.shape != canon.caption_ids.shape:
        raise IdError(f"ids describe {ids.image_ids.size} images x {ids.caption_ids.size} captions, expected "
                      f"{N_IMAGES} x {N_CAPTIONS}")
    rows = None if np.array_equal(ids.image_ids, canon.image_ids) else _positions(ids.image_ids, canon.image_ids)
    cols = (None if np.array_equal(ids.caption_ids, canon.caption_ids)
            else _positions(ids.caption_ids, canon.caption_ids))
    if rows is not None and not np.array_equal(ids.image_ids[rows], canon.image_ids):
        raise IdError(f"ids from {ids.source}: the image ids are not the 5000 COCO 5K test images")
    if cols is not None and not np.array_equal(ids.caption_ids[cols], canon.caption_ids):
        raise IdError(f"ids from {ids.source}: the caption ids are not the 25000 COCO 5K test captions")
    return rows, cols


def resolve_ids(ids: CocoTestIds | str | Path | None) -> CocoTestIds:
    """Accept ready ids, a data folder, or None (package order, with a warning)."""
    if isinstance(ids, CocoTestIds):
        return ids
    return load_coco_test_ids(ids, warn=True)
