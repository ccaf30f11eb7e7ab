"""Reading similarity matrices and caption-to-image mappings from .npy, .npz, HDF5 and torch tensor files.

Torch files are read with `weights_only=True` (no pickled code runs); numpy files without pickle.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from harness.data.precomp import DataError

SUFFIXES = (".npy", ".npz", ".h5", ".hdf5", ".pt", ".pth")
OWNER = "image_of_caption.npy"


def owner_path(matrix: Path) -> Path:
    """The caption-to-image mapping stored beside a matrix: `image_of_caption.npy` beside a job's `sims.npy`,
    else `<stem>.image_of_caption.npy`."""
    return matrix.with_name(OWNER) if matrix.name == "sims.npy" else matrix.with_name(f"{matrix.stem}.{OWNER}")


class MatrixFileError(DataError):
    """A matrix file that cannot be read as an images x captions matrix."""


def load_matrix(path: str | Path, key: str | None = None, *, mapped: bool = False) -> np.ndarray:
    """The 2-D array stored in `path` (`key`: the array name in an .npz, the dataset in HDF5; default the
    only one, or `sims`). `mapped`: a float .npy is memory-mapped read-only instead of copied into memory
    (for a command that only reads it once, as `metrics` does)."""
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
            _check_zip_size(path)
            with np.load(path, allow_pickle=False) as z:
                arr = z[_pick(path, list(z.files), key)]
        elif suffix in (".pt", ".pth"):
            arr = _torch(path, key)
        else:
            _check_npy_size(path)
            arr = np.load(path, allow_pickle=False, mmap_mode="r" if mapped else None)
    except MatrixFileError:
        raise
    except Exception as exc:  # numpy, zipfile, h5py and torch report a corrupt file in many ways
        raise MatrixFileError(f"{path}: not a readable matrix file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else 'truncated or corrupt'}); official "
                              "results_*.npy pickles must be converted first") from None
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise MatrixFileError(f"{path}: expected a 2-D images x captions matrix, found shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "fiu":
        raise MatrixFileError(f"{path}: expected numbers, found dtype {arr.dtype}")
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float32)


def _check_npy_size(path: Path) -> None:
    """The .npy header's shape must fit in the file (a few bytes must not make np.load allocate gigabytes)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if need > size - f.tell():
            raise MatrixFileError(f"{path}: its header declares {need:,} bytes of data but the file holds "
                                  f"{size - f.tell():,}; the file is truncated or corrupt")


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
    if len(names) == 1:
        return names[0]
    if "sims" in names:
        return "sims"
    raise MatrixFileError(f"{path}: several arrays ({', '.join(names)}); name one with its key")


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
        obj = obj[_pick(path, [str(k) for k in obj], key)]
    if not isinstance(obj, torch.Tensor):
        raise MatrixFileError(f"{path}: holds a {type(obj).__name__}, expected a tensor")
    return obj.detach().float().numpy()


def load_owner(path: str | Path, n_captions: int) -> np.ndarray:
    """A caption -> image index vector (one integer per caption column)."""
    path = Path(path)
    if not path.is_file():
        raise MatrixFileError(f"{path}: no such caption-to-image mapping file")
    try:
        owner = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MatrixFileError(f"{path}: not a readable .npy mapping ({exc})") from None
    if owner.ndim != 1 or owner.dtype.kind not in "iu" or owner.shape[0] != n_captions:
        raise MatrixFileError(f"{path}: expected {n_captions} integers (one image index per caption column), found "
                              f"{owner.dtype} of shape {tuple(owner.shape)}")
    return owner.astype(np.int64)
