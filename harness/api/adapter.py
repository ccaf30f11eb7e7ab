"""The adapter protocol every paper implements, and the small containers it passes around.

An adapter wraps one model of one method/variant. The harness never looks inside it: it asks the
adapter to tokenize captions, encode images and captions, and score blocks of encoded images
against blocks of encoded captions. Training goes through `configure_training` and `train_step`;
the loop itself lives in `harness.run.training` so every method gets checkpointing and resume.
"""


from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from harness.core.checkpoints import CheckpointError
from harness.core.features import slice_samples
from harness.data.precomp import load_precomp

__all__ = ["Adapter", "CheckpointError", "TrainData", "TrainingSetup", "parameter_count"]


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
    # Pixel methods: the evaluation transform of one image file (PIL image -> (3, H, W) tensor); the harness
    # runs the image retrieval protocol on image files with it. None: the method reads no image files.
    preprocess: Callable[[Any], torch.Tensor] | None = None

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

    @classmethod
    def weights_file(cls, variant: str, options: Mapping[str, Any] | None = None) -> Path | None:
        """The pretrained weights file `build(variant, ..., options)` would load (None: none). The planner calls it
        for zero-shot variants, before any job runs, to put the file's fingerprint in the job's identity; it
        raises CheckpointError naming where it looked when the file is not on this machine."""
        return None

    def official_checkpoint(self, **extra: Any) -> dict[str, Any]:
        """This model in the official container layout (extra fields such as epoch are merged in)."""
        raise NotImplementedError(f"{type(self).__name__} cannot write the official layout")

    # ---- data ---------------------------------------------------------------------------------
    def eval_data(self, data_root: str | Path, split: str, dataset: str | None = None) -> tuple[Any, list[str]]:
        """(images, captions) of an evaluation split in canonical order (caption j -> image j // 5).

        Default: a SCAN precomp folder (memory-mapped regions), whose feature width must be the model's
        `img_dim` option when it has one (else a DataError naming the file). Pixel methods override this.
        """
        img_dim = (getattr(self, "options", None) or {}).get("img_dim")
        split_data = load_precomp(data_root, split, dataset,
                                  feature_dim=int(img_dim) if isinstance(img_dim, int) and img_dim > 0 else None)
        return split_data.images, split_data.captions

    def image_of_caption(self, data_root: str | Path, split: str, dataset: str | None = None) -> np.ndarray | None:
        """Caption -> image index of `eval_data`'s order when it is not j // 5 (None: the uniform rule)."""
        return None

    def train_data(self, data_root: str | Path, dataset: str | None = None) -> TrainData:
        """The training split for `harness.run.training.train`. Adapters whose loss needs split-wide state
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

    def shortlist_embeddings(self, image_block: Any, text_block: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Pooled (n_img, D) and (n_cap, D) vectors of encoded blocks whose inner products rank candidates for
        a cascade's `--shortlister self` (harness.eval.cascade), or None (default) when the method has no
        pooled embeddings of its own. Embedding methods need not override it: their own `score` shortlists.
        None of ESL, X-Dim, VSL has such vectors (their encoders keep regions and words unpooled)."""
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

    def collapse_loss(self, epoch: int, batch_size: int) -> float | None:
        """The loss of one full batch of `epoch` when every score is equal (a collapsed model), for the
        training health check (harness.run.health); None when the method's loss has no such value."""
        return None

    # ---- data-parallel training (harness.run.distributed) -------------------------------------------
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


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
