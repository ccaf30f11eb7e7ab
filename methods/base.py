"""The adapter protocol every paper implements, and the small containers it passes around.

An adapter wraps one model of one method/variant. The harness never looks inside it: it asks the
adapter to tokenize captions, encode images and captions, and score blocks of encoded images
against blocks of encoded captions. Training goes through `configure_training` and `train_step`;
the loop itself lives in `harness.training` so every method gets checkpointing and resume.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked (wrong method, variant, dataset, keys or file)."""


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


@dataclass
class TrainData:
    """A training split as the training loop reads it: images, captions, and which image each caption
    belongs to (None: caption j -> image j // captions_per_image)."""

    images: Any
    captions: list[str]
    image_of_caption: np.ndarray | None = None


@dataclass
class TrainingSetup:
    """What the training loop needs from an adapter: the optimizer and a per-epoch lr rule."""

    optimizer: torch.optim.Optimizer
    grad_clip: float | None
    lr_at_epoch: Any  # Callable[[int], list[float]]: one lr per param group


class Adapter(abc.ABC):
    """One model of one paper's method and variant.

    Class attributes describe the method to the harness:
    - `method`: registry name of the paper (``esa``, ``esl`` ...).
    - `scoring`: ``embedding`` (score is a matrix product of vectors) or ``pairwise`` (cross attention).
    - `image_input`: ``regions`` (precomputed BUTD features) or ``pixels`` (raw images).
    """

    method: ClassVar[str]
    scoring: ClassVar[Literal["embedding", "pairwise"]]
    image_input: ClassVar[Literal["regions", "pixels"]] = "regions"

    variant: str
    dataset: str
    model: nn.Module
    options: dict[str, Any]

    # ---- construction -------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def build(cls, variant: str, dataset: str, options: Mapping[str, Any] | None = None) -> Adapter:
        """A freshly initialised model for `variant` trained on `dataset` with registry `options`."""

    @classmethod
    @abc.abstractmethod
    def load_official(cls, path: str | Path, *, variant: str | None = None,
                      dataset: str | None = None) -> Adapter:
        """Load an official checkpoint strictly and safely (no pickled code is executed).

        `variant` / `dataset`, when given, are checked against what the checkpoint says it is.
        Raises CheckpointError naming the file and the problem.
        """

    def official_checkpoint(self, **extra: Any) -> dict[str, Any]:
        """This model in the official container layout (extra fields such as epoch are merged in)."""
        raise NotImplementedError(f"{type(self).__name__} cannot write the official layout")

    # ---- data ---------------------------------------------------------------------------------
    def eval_data(self, data_root: str | Path, split: str, dataset: str | None = None) -> tuple[Any, list[str]]:
        """(images, captions) of an evaluation split in canonical order (caption j -> image j // 5).

        Default: a SCAN precomp folder (memory-mapped regions). Pixel methods override this.
        """
        from harness.data.precomp import load_precomp

        split_data = load_precomp(data_root, split, dataset)
        return split_data.images, split_data.captions

    def image_of_caption(self, data_root: str | Path, split: str, dataset: str | None = None) -> np.ndarray | None:
        """Caption -> image index of `eval_data`'s order when it is not j // 5 (None: the uniform rule)."""
        return None

    def train_data(self, data_root: str | Path, dataset: str | None = None) -> TrainData:
        """The training split for `harness.training.train`. Adapters whose loss needs split-wide state
        (VSL's TF-IDF, CUSA's image ids and teacher features) prepare it here.

        Default: `eval_data(..., "train")` with `image_of_caption`.
        """
        images, captions = self.eval_data(data_root, "train", dataset)
        return TrainData(images, captions, self.image_of_caption(data_root, "train", dataset))

    # ---- inference --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Adapter:
        self.model.to(device)
        return self

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """Eval mode and no grad; every submodule's train/eval flag is restored afterwards."""
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for m, mode in modes:
                m.training = mode

    @abc.abstractmethod
    def tokenize(self, captions: Sequence[str]) -> Any:
        """Captions (raw text, as in the data files) to the model's text input (e.g. PaddedTokens)."""

    @abc.abstractmethod
    def encode_images(self, images: torch.Tensor) -> Any:
        """Evaluation-mode encoding of a batch of images (regions (B, R, D) or pixels (B, 3, H, W))."""

    @abc.abstractmethod
    def encode_texts(self, texts: Any) -> Any:
        """Evaluation-mode encoding of a tokenized caption batch."""

    @abc.abstractmethod
    def score(self, image_block: Any, text_block: Any) -> torch.Tensor:
        """(images, captions) similarity of two encoded blocks; higher is more similar."""

    def text_embeddings(self, captions: Sequence[str]) -> torch.Tensor | None:
        """One L2-normalised vector per caption in a uni-modal text space, or None if the method has
        none (cross-attention scorers). Used by STS and CxC text->text."""
        return None

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor | None:
        """One L2-normalised vector per image in a uni-modal image space, or None."""
        return None

    # ---- training -----------------------------------------------------------------------------
    def configure_training(self, recipe: Mapping[str, Any]) -> TrainingSetup:
        raise NotImplementedError(f"{type(self).__name__} does not support training")

    def make_train_batch(self, images: np.ndarray | torch.Tensor, captions: Sequence[str],
                         rng: np.random.Generator, caption_ids: np.ndarray | None = None) -> Any:
        """Collate one training batch (images already matched to captions); augmentation goes here.

        `caption_ids`: the captions' indices in the training split (`train_data` order), for adapters
        that look up split-wide state; the others ignore it."""
        raise NotImplementedError

    def train_step(self, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        """Forward pass and loss on one batch in training mode; returns at least {'loss': scalar}."""
        raise NotImplementedError

    # ---- data-parallel training (harness.distributed) -------------------------------------------
    _gather_fn: Any = None  # set by the harness while training over several processes

    def gather(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Rows of the whole global batch, in global order, for a batch-coupled loss.

        Identity in a single process. Under data parallelism each process encodes its shard; a loss
        over all pairs of the batch (hardest negatives, InfoNCE) must pass its embeddings through here
        (differentiable all-gather) so it equals the single-process loss.
        """
        return embeddings if self._gather_fn is None else self._gather_fn(embeddings)

    def shard_batch(self, batch: Any, start: int, stop: int, size: int) -> Any:
        """Samples [start, stop) of a training batch of `size` samples (this process's shard).

        Default: every tensor / array / Padded* field whose first axis holds a whole number of rows per
        sample is sliced on that axis (so k rows per sample, stored sample by sample, also work).
        Override when a batch keeps samples on another axis.
        """
        return slice_samples(batch, start, stop, size)


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


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
