"""Reading one `.npy` array (a file, or a member of an `.npz`) with its header checked before anything is allocated.

The header's dtype must be numbers (no pickled objects) and the bytes its shape declares must be in the file:
a truncated file or a crafted header declaring terabytes is a one-line error, never a MemoryError. The data is
read into memory, not memory-mapped: a file truncated while it is read is a short read (a one-line error), where
a mapping would kill the process with SIGBUS.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np

from harness.data.precomp import DataError

MAX_HEADER = 1 << 16  # numpy writes headers of a few hundred bytes
CHUNK = 1 << 24  # bytes per read: large enough to stream at disk speed, small enough to stay interruptible


class NpyError(DataError):
    """A .npy file (or .npz member) whose header or data cannot be read as a numeric array."""


def npy_header(f: BinaryIO, where: str, available: int) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream `f` of `available` bytes, positioned at the start of
    its data. The header's own length is checked before it is read (a garbled one must not allocate)."""
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown format version {version[0]}.{version[1]}")
        raw = f.read(2 if version == (1, 0) else 4)
        length = int.from_bytes(raw, "little")
        if len(raw) < (2 if version == (1, 0) else 4) or length > min(available, MAX_HEADER):
            raise ValueError(f"a header of {length:,} bytes in a {available:,}-byte file")
        header = f.read(length)
        if len(header) < length:
            raise ValueError(f"the header ends after {len(header)} of {length} bytes")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(io.BytesIO(raw + header))
    except Exception as exc:  # numpy parses the header dict in Python: ValueError, SyntaxError, TokenError ...
        text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise NpyError(f"{where}: not a readable .npy file ({text}); the file is truncated or not a numpy "
                       "array") from None
    if dtype.hasobject:
        raise NpyError(f"{where}: holds Python objects (a pickle), which are never loaded; save a numeric array "
                       "with np.save (official results_*.npy pickles must be converted first)")
    return tuple(int(s) for s in shape), bool(fortran), dtype


def read_npy_stream(f: BinaryIO, where: str, available: int) -> np.ndarray:
    """The array of the .npy stream `f` holding `available` bytes in all; `where` names it in errors."""
    start = f.tell()
    shape, fortran, dtype = npy_header(f, where, available)
    if dtype.kind not in "biuf":
        raise NpyError(f"{where}: expected numbers, found dtype {dtype}")
    count = 1
    for s in shape:
        count *= s
    need, left = count * dtype.itemsize, available - (f.tell() - start)
    if need > left:
        raise NpyError(f"{where}: its header declares shape {shape} of {dtype} ({need:,} bytes) but the file holds "
                       f"{max(left, 0):,} bytes of data; the file is truncated or corrupt: write it again")
    arr = np.empty(count, dtype=dtype)
    buf = memoryview(arr.view(np.uint8))
    done = 0
    while done < need:
        got = f.readinto(buf[done:min(need, done + CHUNK)])
        if not got:
            raise NpyError(f"{where}: ended after {done:,} of {need:,} data bytes (the file shrank while it was "
                           "read); read it again once it is complete")
        done += got
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def read_npy(path: str | Path) -> np.ndarray:
    """The numeric array stored in the .npy file `path` (checked header, read into memory)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return read_npy_stream(f, str(path), size)
    except OSError as exc:
        raise NpyError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
