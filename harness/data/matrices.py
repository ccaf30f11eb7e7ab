"""Reading similarity matrices and caption-to-image mappings from .npy, .npz, HDF5 and torch tensor files.

Torch files are read with `weights_only=True` (no pickled code runs); numpy files without pickle.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from harness.data.npy import read_npy, read_npy_stream
from harness.data.precomp import DataError

SUFFIXES = (".npy", ".npz", ".h5", ".hdf5", ".pt", ".pth")
OWNER = "image_of_caption.npy"


def owner_path(matrix: Path) -> Path:
    """The caption-to-image mapping stored beside a matrix: `image_of_caption.npy` beside a job's `sims.npy`,
    else `<stem>.image_of_caption.npy`."""
    return matrix.with_name(OWNER) if matrix.name == "sims.npy" else matrix.with_name(f"{matrix.stem}.{OWNER}")


class MatrixFileError(DataError):
    """A matrix file that cannot be read as an images x captions matrix."""


EXACT_INT = 2**53  # integers of smaller magnitude are exact in float64


def load_matrix(path: str | Path, key: str | None = None) -> np.ndarray:
    """The 2-D array stored in `path` (`key`: the array name in an .npz, the dataset in HDF5, the entry of a
    torch dict; default the only one, or `sims`), as scores ranked without loss (`lossless_scores`).

    Every reader checks the sizes a file declares against the bytes it holds before allocating; .npy data is
    read, not memory-mapped (a file truncated meanwhile is an error, not a SIGBUS)."""
    path = Path(path)
    if path.is_dir():
        raise MatrixFileError(f"{path}: is a folder, expected a matrix file ({', '.join(SUFFIXES)})")
    if not path.is_file():
        raise MatrixFileError(f"{path}: no such matrix file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".h5", ".hdf5"):
            arr = _hdf5(path, key)
        elif suffix == ".npz":
            arr = _npz(path, key)
        elif suffix in (".pt", ".pth"):
            arr = _torch(path, key)
        else:
            arr = read_npy(path)
    except DataError as exc:
        raise MatrixFileError(str(exc)) from None
    except Exception as exc:  # zipfile, h5py and torch report a corrupt file in many ways
        raise MatrixFileError(f"{path}: not a readable matrix file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else 'truncated or corrupt'}); official "
                              "results_*.npy pickles must be converted first") from None
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise MatrixFileError(f"{path}: expected a 2-D images x captions matrix, found shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise MatrixFileError(f"{path}: an empty {arr.shape[0]} x {arr.shape[1]} matrix; expected at least one "
                              "image row and one caption column")
    return lossless_scores(arr, str(path))


def lossless_scores(arr: np.ndarray, name: str) -> np.ndarray:
    """`arr` as float32 or float64 scores holding exactly its values: float32 / float64 as they are, float16
    and 8- / 16-bit integers as float32, 32-bit integers as float64, 64-bit integers as float64 when every
    |value| < 2**53, wider floats as float64 when exact. What cannot be held exactly is a MatrixFileError
    naming `name`, the first such entry and its value."""
    dtype = arr.dtype
    if dtype.kind not in "fiu":
        raise MatrixFileError(f"{name}: expected numbers, found dtype {dtype}")
    small = dtype.itemsize <= 2 or (dtype.kind == "f" and dtype.itemsize == 4)
    target = np.dtype(np.float32) if small else np.dtype(np.float64)
    if dtype.kind in "iu" and dtype.itemsize == 8 and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if max(-lo, hi) >= EXACT_INT:
            bad = np.unravel_index(int(np.argmax((arr >= EXACT_INT) | (arr <= -EXACT_INT))), arr.shape)
            raise MatrixFileError(f"{name}: integer score {int(arr[bad])} at {tuple(int(i) for i in bad)} is beyond "
                                  "2**53, where float64 ranks distinct integers as ties; rescale the scores or save "
                                  "them as float64")
    if dtype.kind == "f" and dtype.itemsize > 8:  # long double: exact in float64 or refused
        out = arr.astype(np.float64)
        lost = (out.astype(dtype) != arr) & np.isfinite(arr)
        if np.any(lost):
            bad = np.unravel_index(int(np.argmax(lost)), arr.shape)
            raise MatrixFileError(f"{name}: score {arr[bad]!r} at {tuple(int(i) for i in bad)} cannot be held "
                                  f"exactly in float64 ({dtype}); save the matrix as float64")
        return out
    return arr if dtype == target else arr.astype(target)


def _npz(path: Path, key: str | None) -> np.ndarray:
    """One array of an .npz, its member's header checked against the member's size before reading."""
    _check_zip_size(path)
    with zipfile.ZipFile(path) as z:
        names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        name = _pick(path, names, key)
        info = z.getinfo(f"{name}.npy")
        with z.open(info) as f:
            return read_npy_stream(f, f"{path} (array '{name}')", info.file_size)


def _check_zip_size(path: Path) -> None:
    size = path.stat().st_size
    with zipfile.ZipFile(path) as z:
        declared = sum(i.file_size for i in z.infolist())
    if declared > 2 * size + (1 << 20):
        raise MatrixFileError(f"{path}: its arrays declare {declared:,} bytes unpacked in a {size:,}-byte file; "
                              "refused (corrupt or crafted)")


def _pick(path: Path, names: list[str], key: str | None) -> str:
    if key is not None:
        if key not in names:
            raise MatrixFileError(f"{path}: no array '{key}' (has {', '.join(names) or 'none'})")
        return key
    if not names:
        raise MatrixFileError(f"{path}: holds no arrays")
    if len(names) == 1:
        return names[0]
    if "sims" in names:
        return "sims"
    raise MatrixFileError(f"{path}: several arrays ({', '.join(names)}); choose one with --key NAME "
                          f"(e.g. --key {names[0]})")


def _hdf5(path: Path, key: str | None) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        names = [n for n in f if isinstance(f[n], h5py.Dataset)]
        dataset = f[_pick(path, names, key)]
        size = path.stat().st_size
        if dataset.nbytes > 4 * size + (1 << 20):  # a compressed matrix of floats shrinks far less than 4x
            raise MatrixFileError(f"{path}: dataset '{dataset.name.lstrip('/')}' declares {dataset.nbytes:,} bytes "
                                  f"in a {size:,}-byte file; refused (corrupt or crafted)")
        return dataset[...]


def _torch(path: Path, key: str | None) -> np.ndarray:
    # torch (and the checkpoint helpers built on it) only for torch files: `metrics` on .npy stays numpy-only
    import torch

    from harness.core.checkpoints import CheckpointError, load_weights_only

    try:
        obj = load_weights_only(path)  # sizes checked before anything is allocated; no code runs
    except CheckpointError as exc:
        raise MatrixFileError(str(exc)) from None
    if isinstance(obj, dict):
        keys = {str(k): k for k in obj}
        obj = obj[keys[_pick(path, list(keys), key)]]
    if not isinstance(obj, torch.Tensor):
        raise MatrixFileError(f"{path}: holds a {type(obj).__name__}, expected a tensor")
    if obj.dtype in (torch.float16, torch.bfloat16):
        obj = obj.float()  # exact in float32
    elif obj.dtype.is_complex or obj.dtype == torch.bool or not (obj.dtype.is_floating_point or _is_int(obj)):
        raise MatrixFileError(f"{path}: expected numbers, found a {obj.dtype} tensor")
    return obj.detach().cpu().numpy()


def _is_int(tensor: object) -> bool:
    import torch

    return tensor.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)  # type: ignore[attr-defined]


def load_owner(path: str | Path, n_captions: int, n_images: int | None = None) -> np.ndarray:
    """A caption -> image index vector (one integer per caption column); with `n_images`, its entries are
    checked too (`check_grouping`)."""
    path = Path(path)
    if not path.is_file():
        raise MatrixFileError(f"{path}: no such caption-to-image mapping file")
    try:
        owner = read_npy(path)
    except DataError as exc:
        raise MatrixFileError(str(exc)) from None
    if owner.ndim != 1 or owner.dtype.kind not in "iu" or owner.shape[0] != n_captions:
        raise MatrixFileError(f"{path}: expected {n_captions} integers (one image index per caption column), found "
                              f"{owner.dtype} of shape {tuple(owner.shape)}")
    if n_images is not None:
        check_grouping(owner, n_images, str(path))
    return owner.astype(np.int64)


def check_grouping(owner: np.ndarray, n_images: int, name: str) -> None:
    """Caption -> image entries must be image rows 0 <= row < n_images, grouped by image in row order, every
    image with at least one caption. Raises MatrixFileError naming `name`, the first bad entry and its value."""
    owner = np.asarray(owner)
    if owner.size == 0:
        raise MatrixFileError(f"{name}: the caption-to-image mapping is empty; expected one image row per caption")
    out = np.flatnonzero((owner < 0) | (owner >= n_images))
    if out.size:
        j = int(out[0])
        raise MatrixFileError(f"{name}: entry {j} is {int(owner[j])}, but image rows are 0 <= row < {n_images} "
                              f"(the matrix has {n_images} rows)")
    step = np.diff(owner.astype(np.int64))
    down = np.flatnonzero(step < 0)
    if down.size:
        j = int(down[0]) + 1
        raise MatrixFileError(f"{name}: entry {j} is image {int(owner[j])} after image {int(owner[j - 1])}: captions "
                              "must be grouped by image in row order (image 0's captions first); sort the columns "
                              "by image")
    if owner[0] != 0:
        raise MatrixFileError(f"{name}: image 0 has no caption (entry 0 is {int(owner[0])}); every image row needs "
                              "at least one caption")
    gap = np.flatnonzero(step > 1)
    if gap.size:
        j = int(gap[0]) + 1
        a, b = int(owner[j - 1]) + 1, int(owner[j]) - 1
        raise MatrixFileError(f"{name}: image{'s' if b > a else ''} {a}{f'..{b}' if b > a else ''} ha"
                              f"{'ve' if b > a else 's'} no caption (entry {j} jumps from image {a - 1} to {b + 1}); "
                              "every image row needs at least one caption")
    last = int(owner[-1])
    if last != n_images - 1:
        which = f"image {last + 1} has" if last + 2 == n_images else f"images {last + 1}..{n_images - 1} have"
        raise MatrixFileError(f"{name}: {which} no caption (the last entry is {last}, the matrix has {n_images} "
                              "image rows); every image row needs at least one caption")
