"""The containers an adapter's encoders pass around: padded token and feature batches, the packed
(unpadded) caption store of pairwise scorers, and helpers to concatenate and shard them."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class PaddedTokens:
    """A batch of token id sequences, right-padded with `pad_id`, and their true lengths."""

    ids: torch.Tensor  # (N, L) int64
    lengths: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, index: slice | Sequence[int] | torch.Tensor) -> PaddedTokens:
        lengths = self.lengths[index]
        width = int(lengths.max()) if len(lengths) else 0
        return PaddedTokens(self.ids[index][:, :width], lengths)

    def to(self, device: torch.device | str) -> PaddedTokens:
        return PaddedTokens(self.ids.to(device), self.lengths.to(device))


@dataclass
class PaddedFeatures:
    """Per-token (or per-region) features with true lengths: (N, L, D) and (N,)."""

    feats: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return int(self.feats.shape[0])

    def __getitem__(self, index: slice | Sequence[int] | torch.Tensor) -> PaddedFeatures:
        lengths = self.lengths[index]
        width = int(lengths.max()) if len(lengths) else 0
        return PaddedFeatures(self.feats[index][:, :width], lengths)

    def to(self, device: torch.device | str) -> PaddedFeatures:
        return PaddedFeatures(self.feats.to(device), self.lengths.to(device))


class PackedFeatures:
    """Variable-length feature rows stored without padding: the row-major concatenation of each item's
    first `lengths[i]` rows, kept in the chunks they were appended in (no copy of the whole store).

    Indexing returns a PaddedFeatures padded only to the longest item of that selection (zeros after
    each item's length), so a store of 25,000 COCO captions costs their true token count, not 25,000 x
    the longest caption. With `memory_limit` (bytes), chunks appended once the in-memory rows reach
    the limit go to an anonymous temporary file instead and are read back (positioned reads, not a
    memory map) when sliced: the store then costs only what a slice needs.
    """

    def __init__(self, memory_limit: int | None = None) -> None:
        self.memory_limit = memory_limit
        self._chunks: list[torch.Tensor | tuple[int, int]] = []  # a tensor, or (byte offset, rows) in the file
        self._file: Any = None
        self._file_bytes = 0
        self._memory_bytes = 0
        self._row_shape: tuple[int, ...] | None = None
        self._dtype: torch.dtype | None = None
        self._lengths: list[torch.Tensor] = []
        self._chunk_rows: list[int] = [0]  # first global row of each chunk, then the total
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None  # (lengths, row offsets)

    @classmethod
    def from_blocks(cls, blocks: Sequence[PaddedFeatures], memory_limit: int | None = None) -> PackedFeatures:
        store = cls(memory_limit)
        for block in blocks:
            store.append(block)
        return store

    def append(self, block: PaddedFeatures) -> None:
        """Add the items of `block` (its padding is dropped; the block itself can be freed afterwards)."""
        feats, lengths = block.feats, block.lengths.to(torch.long).cpu()
        if feats.ndim < 2 or feats.shape[0] != len(lengths):
            raise ValueError(f"PackedFeatures.append: feats {tuple(feats.shape)} do not match {len(lengths)} lengths")
        if len(lengths) and (int(lengths.max()) > feats.shape[1] or int(lengths.min()) < 0):
            raise ValueError(f"PackedFeatures.append: lengths outside 0..{feats.shape[1]} (feats width)")
        if self._row_shape is None:
            self._row_shape, self._dtype = tuple(feats.shape[2:]), feats.dtype
        elif tuple(feats.shape[2:]) != self._row_shape or feats.dtype != self._dtype:
            raise ValueError(f"PackedFeatures.append: block of {tuple(feats.shape[2:])} {feats.dtype} rows after "
                             f"{self._row_shape} {self._dtype} rows")
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths.to(feats.device)[:, None]
        rows = feats[mask].cpu()
        size = rows.numel() * rows.element_size()
        if size and self.memory_limit is not None and self._memory_bytes + size > self.memory_limit:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="itrbench-packed-")
            data = rows.contiguous().numpy()
            os.pwrite(self._file.fileno(), memoryview(data).cast("B"), self._file_bytes)
            self._chunks.append((self._file_bytes, len(rows)))
            self._file_bytes += size
        else:
            self._chunks.append(rows)
            self._memory_bytes += size
        self._lengths.append(lengths)
        self._chunk_rows.append(self._chunk_rows[-1] + len(rows))
        self._cache = None

    def _index(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None:
            lengths = torch.cat(self._lengths) if self._lengths else torch.zeros(0, dtype=torch.long)
            offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
            torch.cumsum(lengths, 0, out=offsets[1:])
            self._cache = (lengths, offsets)
        return self._cache

    @property
    def lengths(self) -> torch.Tensor:
        return self._index()[0]

    @property
    def nbytes(self) -> int:
        """Bytes of all stored rows (in memory and in the file)."""
        return self._memory_bytes + self._file_bytes

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    def __len__(self) -> int:
        return int(sum(len(lengths) for lengths in self._lengths))

    def _empty(self, rows: int) -> torch.Tensor:
        return torch.empty((rows, *(self._row_shape or ())), dtype=self._dtype or torch.float32)

    def _read(self, chunk: torch.Tensor | tuple[int, int], lo: int, hi: int) -> torch.Tensor:
        """Rows [lo, hi) of one chunk."""
        if isinstance(chunk, torch.Tensor):
            return chunk[lo:hi]
        out = self._empty(hi - lo)
        if out.numel() == 0:
            return out
        row_bytes = out[0].numel() * out.element_size() if len(out) else 0
        view = memoryview(out.numpy()).cast("B")
        done, offset = 0, chunk[0] + lo * row_bytes
        while done < len(view):
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"PackedFeatures: short read from its temporary file at byte {offset + done}")
            done += got
        return out

    def chunks(self) -> Iterator[torch.Tensor]:
        """Every chunk's rows in order (file-backed chunks are read one at a time)."""
        for k, chunk in enumerate(self._chunks):
            yield self._read(chunk, 0, self._chunk_rows[k + 1] - self._chunk_rows[k])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Global rows [start, stop) (items' rows back to back), copied only when they span chunks."""
        pieces = []
        for k, chunk in enumerate(self._chunks):
            lo, hi = self._chunk_rows[k], self._chunk_rows[k + 1]
            if hi <= start or lo >= stop:
                continue
            pieces.append(self._read(chunk, max(start, lo) - lo, min(stop, hi) - lo))
        if not pieces:
            return self._empty(0)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def __getitem__(self, index: slice | Sequence[int] | torch.Tensor) -> PaddedFeatures:
        lengths, offsets = self._index()
        if isinstance(index, slice) and index.step in (None, 1):
            a, b, _ = index.indices(len(self))
            b = max(a, b)
            sel = lengths[a:b]
            flat = self.rows(int(offsets[a]), int(offsets[b]))
        else:
            items = torch.arange(len(self))[index]
            sel = lengths[items]
            parts = [self.rows(int(offsets[i]), int(offsets[i + 1])) for i in items.tolist()]
            flat = torch.cat(parts) if parts else self.rows(0, 0)
        width = int(sel.max()) if len(sel) else 0
        out = flat.new_zeros((len(sel), width, *(self._row_shape or ())))
        out[torch.arange(width)[None, :] < sel[:, None]] = flat
        return PaddedFeatures(out, sel.clone())

    def close(self) -> None:
        """Delete the temporary file (also done when the store is garbage-collected)."""
        if self._file is not None:
            self._file.close()


def concat_blocks(blocks: Sequence[Any]) -> Any:
    """Concatenate encoded blocks (tensors or Padded* containers) along the first axis."""
    first = blocks[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(blocks))
    if isinstance(first, (PaddedFeatures, PaddedTokens)):
        field = "feats" if isinstance(first, PaddedFeatures) else "ids"
        width = max(getattr(b, field).shape[1] for b in blocks)
        padded = []
        for b in blocks:
            t = getattr(b, field)
            pad = width - t.shape[1]
            if pad:
                shape = list(t.shape)
                shape[1] = pad
                t = torch.cat([t, t.new_zeros(shape)], dim=1)
            padded.append(t)
        return type(first)(torch.cat(padded), torch.cat([b.lengths for b in blocks]))
    raise TypeError(f"cannot concatenate blocks of type {type(first).__name__}")


def slice_samples(batch: Any, start: int, stop: int, size: int) -> Any:
    """`batch` restricted to samples [start, stop) of `size` (see Adapter.shard_batch)."""
    if isinstance(batch, (torch.Tensor, np.ndarray, PaddedTokens, PaddedFeatures)):
        rows = len(batch)
        if rows % size:
            raise ValueError(f"cannot shard a batch field of {rows} rows by sample ({size} samples): "
                             "override Adapter.shard_batch")
        k = rows // size
        return batch[start * k:stop * k]
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: slice_samples(getattr(batch, f.name), start, stop, size)
                                             for f in dataclasses.fields(batch) if f.init})
    if isinstance(batch, Mapping):
        return type(batch)({k: slice_samples(v, start, stop, size) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)) and len(batch) == size:
        return type(batch)(batch[start:stop])
    if isinstance(batch, tuple):
        return tuple(slice_samples(v, start, stop, size) for v in batch)
    return batch  # scalars, flags, settings: the same for every shard
