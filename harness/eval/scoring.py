"""Blockwise, resumable computation of the images x captions similarity matrix for any adapter.

Images and captions are encoded once each. The matrix is then tiled into (image block x caption
block) tiles; each tile is one `adapter.score` call. With a cache file, finished tiles are written to
HDF5 as they complete, so a killed run resumes at the first missing tile and the final matrix is
identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import mmap
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from harness.api.adapter import Adapter
from harness.core.errors import ItrbenchError
from harness.core.features import PackedFeatures, PaddedFeatures, concat_blocks
from harness.core.results import SPACE_ERRNOS, quarantine, storage_error
from harness.eval.precision import autocast

DEFAULT_TILES = {"embedding": (2048, 8192), "pairwise": (128, 512)}
TEXT_MEMORY_LIMIT = 64 << 20  # bytes of packed caption features kept in memory; the rest is spilled to disk


class CacheError(ItrbenchError):
    """A tile cache that belongs to another computation."""


@contextlib.contextmanager
def eval_mode(adapter: Adapter, precision: str = "fp32"):
    """Eval mode, inference mode, and autocast to `precision` (harness.eval.precision) on the adapter's device."""
    was_training = adapter.model.training
    adapter.model.eval()
    try:
        with torch.inference_mode(), autocast(adapter.device, precision):
            yield
    finally:
        adapter.model.train(was_training)


def _cpu(block: Any) -> Any:
    """An encoded block on the CPU, floating tensors stored as float32 (also after autocast)."""
    if isinstance(block, torch.Tensor):
        return block.to("cpu", torch.float32) if block.is_floating_point() else block.to("cpu")
    if isinstance(block, PaddedFeatures):
        return PaddedFeatures(block.feats.to("cpu", torch.float32), block.lengths.to("cpu"))
    return block.to("cpu") if hasattr(block, "to") else block


def _release_mapped_pages(array: Any) -> None:
    """Drop this process's mapping of a memory-mapped array's pages (they stay in the page cache).

    Reading a memmap sequentially would otherwise leave every page it touched resident in this
    process (e.g. 1.5 GB of COCO 5K regions counted in the peak RSS) although each chunk is copied and
    never read again.
    """
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is not None and hasattr(base, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc keeps the encoders' freed batch buffers otherwise,
    and the matrix and tiles are allocated after them). No-op where malloc_trim does not exist."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def encode_images(adapter: Adapter, images: np.ndarray | Sequence[Any], batch_size: int = 128,
                  on_batch: Callable[[int], None] | None = None, precision: str = "fp32") -> Any:
    """Encode every image once (eval mode, autocast to `precision`; stored as float32). `images` is an
    array (N, R, D) or a sequence of tensors.

    Tensor outputs are written into one preallocated (N, ...) tensor (no list of blocks plus a
    concatenated copy); memory-mapped inputs are read chunk by chunk without staying resident.
    """
    blocks: list[Any] = []
    out: torch.Tensor | None = None
    n = len(images)
    device = adapter.device
    with eval_mode(adapter, precision):
        for a in range(0, n, batch_size):
            chunk = images[a:a + batch_size]
            if isinstance(chunk, np.ndarray):
                x = torch.from_numpy(np.array(chunk, dtype=np.float32))  # a copy: memmaps are read-only
                if isinstance(images, np.memmap):
                    _release_mapped_pages(images)
            elif isinstance(chunk, torch.Tensor):
                x = chunk
            else:
                x = torch.stack(list(chunk))
            encoded = _cpu(adapter.encode_images(x.to(device)))
            del x
            if isinstance(encoded, torch.Tensor):
                if len(encoded) != len(chunk):
                    raise ValueError(f"{type(adapter).__name__}.encode_images returned {len(encoded)} rows for "
                                     f"{len(chunk)} images")
                if out is None:
                    out = torch.empty((n, *encoded.shape[1:]), dtype=encoded.dtype)
                out[a:a + len(encoded)] = encoded
            else:
                blocks.append(encoded)
            if on_batch:
                on_batch(len(chunk))
    _trim_heap()
    if out is not None:
        return out
    return concat_blocks(blocks)


def encode_texts(adapter: Adapter, captions: Sequence[str], batch_size: int = 128,
                 on_batch: Callable[[int], None] | None = None,
                 memory_limit: int | None = TEXT_MEMORY_LIMIT, precision: str = "fp32") -> Any:
    """Tokenize and encode every caption once (eval mode, autocast to `precision`; stored as float32).

    Variable-length encodings (PaddedFeatures) are packed batch by batch into a PackedFeatures store
    (no padding to the longest caption of the split); its tiles are padded to their own longest caption.
    Rows beyond `memory_limit` bytes go to a temporary file and are read back per caption tile (COCO 5K
    word features are ~1.5 GB in float32; score_blocks reads each caption tile once).
    """
    blocks: list[Any] = []
    packed: PackedFeatures | None = None
    device = adapter.device
    with eval_mode(adapter, precision):
        for a in range(0, len(captions), batch_size):
            chunk = list(captions[a:a + batch_size])
            tokens = adapter.tokenize(chunk)
            encoded = _cpu(adapter.encode_texts(tokens.to(device) if hasattr(tokens, "to") else tokens))
            if isinstance(encoded, PaddedFeatures):
                if blocks:
                    raise TypeError(f"{type(adapter).__name__}.encode_texts mixes block types")
                packed = packed if packed is not None else PackedFeatures(memory_limit)
                packed.append(encoded)
            else:
                if packed is not None:
                    raise TypeError(f"{type(adapter).__name__}.encode_texts mixes block types")
                blocks.append(encoded)
            del encoded
            if on_batch:
                on_batch(len(chunk))
    _trim_heap()
    if packed is not None:
        return packed
    return concat_blocks(blocks)


def tile_grid(n_img: int, n_cap: int, image_tile: int, caption_tile: int) -> list[tuple[int, int, int, int]]:
    """(a, b, c, d) tiles, caption-tile major: every image tile against one caption tile, then the next
    (a caption tile is prepared once)."""
    return [(a, min(n_img, a + image_tile), c, min(n_cap, c + caption_tile))
            for c in range(0, n_cap, caption_tile) for a in range(0, n_img, image_tile)]


class TileCache:
    """HDF5 file holding the matrix being built and a done-flag per tile.

    A cache that cannot be opened or lacks its datasets (a truncated or garbled file) is moved aside with a
    CorruptFileWarning and scoring starts again; one of another computation is a CacheError. A tile that
    cannot be read back, or written (a full disk), is a CacheError / StorageError naming the file."""

    def __init__(self, path: Path, shape: tuple[int, int], tiles: tuple[int, int], fingerprint: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        n_ti = -(-shape[0] // tiles[0])
        n_tc = -(-shape[1] // tiles[1])
        opened = self._open_existing((n_ti, n_tc)) if self.path.exists() else None
        self.file: h5py.File | None = None
        if opened is not None:
            self.file, (stored_shape, stored_tiles, stored_fp, flags) = opened
            if stored_shape != shape or stored_tiles != tuple(tiles) or stored_fp != fingerprint:
                self.file.close()
                raise CacheError(f"{self.path}: tile cache of another computation (shape/tiles/model fingerprint "
                                 "differ); delete it or choose another cache path")
            if flags != (n_ti, n_tc):  # same tiling, yet the flags do not fit it
                self.file.close()
                self.file = None
                quarantine(self.path, f"done flags of shape {flags}, not the {n_ti} x {n_tc} tile grid")
        if self.file is None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            try:
                with h5py.File(tmp, "w") as f:
                    f.create_dataset("sims", shape=shape, dtype="f4", chunks=(min(shape[0], tiles[0]),
                                                                              min(shape[1], tiles[1])))
                    f.create_dataset("done", shape=(n_ti, n_tc), dtype="bool")
                    f.attrs["tiles"] = tiles
                    f.attrs["fingerprint"] = fingerprint
                os.replace(tmp, self.path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise self._os_error(exc, "create", 4 * shape[0] * shape[1]) from exc
            self.file = h5py.File(self.path, "r+")
        self.tiles = tiles

    def _open_existing(self, grid: tuple[int, int]) -> tuple[h5py.File, tuple[Any, ...]] | None:
        """The existing cache opened for update with (sims shape, tiles, fingerprint, flag shape), or None after
        moving an unreadable one (truncated, garbled, datasets or attributes missing) aside."""
        try:
            f = h5py.File(self.path, "r+")
        except OSError as exc:  # truncated, garbage, not HDF5 (or not ours to write: then say so)
            if not os.access(self.path, os.W_OK):
                raise CacheError(f"{self.path}: tile cache not writable ({str(exc).splitlines()[0]})") from exc
            quarantine(self.path, f"not a readable HDF5 tile cache: {str(exc).splitlines()[0]}")
            return None
        try:
            sims, done = f["sims"], f["done"]
            if not (isinstance(sims, h5py.Dataset) and isinstance(done, h5py.Dataset) and sims.ndim == 2
                    and sims.dtype == np.float32 and done.ndim == 2 and done.dtype == np.bool_):
                raise TypeError("datasets 'sims' / 'done' of the wrong kind")
            tiles = tuple(int(t) for t in np.ravel(f.attrs["tiles"]))
            fingerprint = f.attrs["fingerprint"]
            if len(tiles) != 2 or not isinstance(fingerprint, str):
                raise TypeError("attributes 'tiles' / 'fingerprint' of the wrong kind")
            if tuple(done.shape) == grid:
                np.asarray(done[...])  # the flags are read for every tile: they must be readable
            meta = (tuple(sims.shape), tiles, fingerprint, tuple(done.shape))
        except (KeyError, OSError, RuntimeError, TypeError, ValueError, OverflowError) as exc:
            with contextlib.suppress(Exception):
                f.close()
            why = str(exc).splitlines()[0] if str(exc) else ""
            quarantine(self.path, f"incomplete tile cache ({type(exc).__name__}: {why})")
            return None
        return f, meta

    def _os_error(self, exc: Exception, what: str, size: int) -> Exception:
        code = getattr(exc, "errno", None)
        if code is None:  # HDF5 puts the system errno in its message
            found = re.search(r"errno = (\d+)", str(exc))
            code = int(found.group(1)) if found else None
        if code in SPACE_ERRNOS:
            return storage_error(self.path, OSError(code, os.strerror(code)), size)
        return CacheError(f"{self.path}: cannot {what} the tile cache ({str(exc).splitlines()[0]}); delete it to "
                          "score from scratch")

    def done(self, a: int, c: int) -> bool:
        try:
            return bool(self.file["done"][a // self.tiles[0], c // self.tiles[1]])
        except (OSError, RuntimeError) as exc:
            raise self._os_error(exc, "read", 0) from exc

    def read(self, a: int, b: int, c: int, d: int) -> np.ndarray:
        try:
            return self.file["sims"][a:b, c:d]
        except (OSError, RuntimeError) as exc:
            raise self._os_error(exc, "read", 0) from exc

    def write(self, a: int, b: int, c: int, d: int, values: np.ndarray) -> None:
        try:
            self.file["sims"][a:b, c:d] = values
            self.file.flush()  # the data first, then the flag: a kill between them only redoes the tile
            self.file["done"][a // self.tiles[0], c // self.tiles[1]] = True
            self.file.flush()
        except (OSError, RuntimeError) as exc:
            raise self._os_error(exc, "write", int(np.asarray(values).nbytes)) from exc

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.file.close()


def block_fingerprint(*blocks: Any) -> str:
    """A short content hash of encoded blocks (so a cache from another model is refused)."""
    h = hashlib.sha1()
    for block in blocks:
        if isinstance(block, torch.Tensor):
            tensors: Any = [block]
        elif isinstance(block, PackedFeatures):
            tensors = itertools.chain([block.lengths], block.chunks())  # one chunk in memory at a time
        else:
            tensors = [t for t in vars(block).values() if isinstance(t, torch.Tensor)]
        for t in tensors:
            t = t.detach().to("cpu").contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            flat = t.reshape(-1)
            step = max(1, flat.numel() // 4096)
            h.update(flat[::step].to(torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


def score_blocks(adapter: Adapter, image_block: Any, text_block: Any, *, image_tile: int | None = None,
                 caption_tile: int | None = None, cache: str | Path | None = None, progress: bool = False,
                 on_tile: Callable[[int, int], None] | None = None, precision: str = "fp32",
                 select: Callable[[int], bool] | None = None) -> np.ndarray:
    """The (N_img, N_cap) float32 matrix of `adapter.score` over all tiles (resuming from `cache`), each tile
    scored under autocast to `precision`. `select(i)` False skips the i-th tile of the grid (left unset: another
    process scores it, harness.eval.sharding)."""
    n_img, n_cap = len(image_block), len(text_block)
    default = DEFAULT_TILES[adapter.scoring]
    tiles = (image_tile or default[0], caption_tile or default[1])
    grid = tile_grid(n_img, n_cap, *tiles)
    out = np.empty((n_img, n_cap), dtype=np.float32)
    store = TileCache(Path(cache), (n_img, n_cap), tiles, block_fingerprint(image_block, text_block)) if cache else None
    device = adapter.device
    bar = _progress(progress, len(grid), n_img * n_cap)
    try:
        with eval_mode(adapter, precision), bar as (advance,):
            txt_range, txt = None, None
            for index, (a, b, c, d) in enumerate(grid):
                if select is not None and not select(index):
                    continue
                if store is not None and store.done(a, c):
                    out[a:b, c:d] = store.read(a, b, c, d)
                    advance(0, skipped=True)
                    continue
                if txt_range != (c, d):  # each caption tile is sliced (and padded) once per column
                    txt_range, txt = (c, d), None
                    txt = text_block[c:d].to(device)
                img = image_block[a:b]
                tile = adapter.score(img.to(device), txt)
                if tuple(tile.shape) != (b - a, d - c):
                    raise ValueError(f"{type(adapter).__name__}.score returned shape {tuple(tile.shape)} for a "
                                     f"{b - a} x {d - c} tile")
                values = tile.detach().to("cpu", torch.float32).numpy()
                out[a:b, c:d] = values
                if store is not None:
                    store.write(a, b, c, d, values)
                advance((b - a) * (d - c))
                if on_tile:
                    on_tile(a, c)
    finally:
        if store is not None:
            store.close()
    return out


@contextlib.contextmanager
def _progress(enabled: bool, n_tiles: int, n_pairs: int):
    if not enabled:
        yield (lambda pairs, skipped=False: None,)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    start = time.perf_counter()
    counted = [0]
    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("tiles"),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=True) as prog:
        task = prog.add_task("tiles", total=n_tiles, rate="")

        def advance(pairs: int, skipped: bool = False) -> None:
            counted[0] += pairs
            elapsed = max(time.perf_counter() - start, 1e-9)
            prog.update(task, advance=1, rate=f"{counted[0] / elapsed:,.0f} pairs/s")

        yield (advance,)


def similarity_matrix(adapter: Adapter, images: Any, captions: Sequence[str], *, batch_size: int = 128,
                      cache: str | Path | None = None, progress: bool = False, precision: str = "fp32",
                      **tiles: int) -> np.ndarray:
    """Encode each image and caption once, then score all pairs blockwise."""
    img = encode_images(adapter, images, batch_size=batch_size, precision=precision)
    txt = encode_texts(adapter, captions, batch_size=batch_size, precision=precision)
    return score_blocks(adapter, img, txt, cache=cache, progress=progress, precision=precision, **tiles)
