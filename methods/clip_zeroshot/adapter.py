"""The zero-shot CLIP adapter: one evaluation of pretrained open_clip weights, no training.

Options (registry variant options, recipe keys, `--set clip_zeroshot.KEY=VALUE`):
- `model`, `pretrained`: an open_clip model name and pretrained tag (built-in variants set them);
- `clip_config`: an open_clip geometry initialised at random instead (the `tiny` variant: meaningless numbers);
- `weights`: a local state dict (.safetensors / .bin / .pt) to load instead of the open_clip cache's file;
- `cache_dir`: the open_clip cache folder to look in (default: the Hugging Face hub cache, then ~/.cache/clip);
- `quick_gelu`: override the activation (default: what open_clip uses for the tag);
- `seed`: of the random initialisation (default 0);
- `zero_shot: true`: tells the planner there is nothing to train (one evaluation job per variant).

Data: raw-image datasets in the CUSA/ALBEF json layout (and the demo's raw-image form), read as CUSA reads
them. Captions are tokenized raw with CLIP's BPE (no CUSA caption cleaning), cut at the context length with
an end-of-text token; images get open_clip's evaluation transform for the tag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.api import CheckpointError, PaddedTokens, TrainingSetup
from methods.clip_zeroshot.model import (
    VARIANTS,
    ClipSpec,
    ZeroShotCLIP,
    build_clip,
    preprocess_for,
    resolve_weights,
)
from methods.common.clip import ClipAdapter, load_clip_weights, tokenize_texts


class ClipZeroShotAdapter(ClipAdapter):
    """Pretrained CLIP as it is; the data (the CUSA/ALBEF json layout, the demo's raw-image form) and the
    scoring come from `ClipAdapter`, shared with CUSA."""

    method: ClassVar[str] = "clip_zeroshot"

    def __init__(self, model: ZeroShotCLIP, *, spec: ClipSpec, variant: str, dataset: str,
                 options: Mapping[str, Any], weights: Path | None) -> None:
        self.model = model
        self.spec = spec
        self.variant = variant
        self.dataset = dataset
        self.options = dict(options)
        self.weights = weights  # None: randomly initialised (the tiny variant)
        self.preprocess = preprocess_for(spec, model.image_size)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def weights_file(cls, variant: str, options: Mapping[str, Any] | None = None) -> Path | None:
        """The weights `build` would load (None for a random geometry); raises CheckpointError naming where it
        looked when they are not on this machine. Cheap: nothing is built or read."""
        opts = dict(options or {})
        return resolve_weights(ClipSpec.of(variant, opts), opts)

    @classmethod
    def build(cls, variant: str, dataset: str, options: Mapping[str, Any] | None = None) -> ClipZeroShotAdapter:
        """A ready model: weights from option `weights` or the open_clip cache (never downloaded)."""
        opts = dict(options or {})
        spec = ClipSpec.of(variant, opts)
        weights = resolve_weights(spec, opts)  # before building a model that may be large
        model = build_clip(spec, seed=int(opts.get("seed") or 0))
        if weights is not None:
            load_clip_weights(model, weights)
        return cls(model, spec=spec, variant=variant, dataset=dataset, options=opts, weights=weights)

    @classmethod
    def load_official(cls, path: str | Path, *, variant: str | None = None,
                      dataset: str | None = None) -> ClipZeroShotAdapter:
        """Pretrained CLIP weights from `path` (a state dict, as `weights`) in the geometry of a built-in
        variant; the weights are the same for every dataset, so `dataset` is only recorded."""
        if variant not in VARIANTS:
            raise CheckpointError(f"{path}: name the clip_zeroshot variant whose CLIP the weights are "
                                  f"({', '.join(VARIANTS)}); another open_clip model runs as a registry variant with "
                                  "options model / pretrained and `--set clip_zeroshot.weights=FILE`")
        return cls.build(variant, dataset or "any", {"weights": str(path)})

    # ---- inference ----------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> PaddedTokens:
        return tokenize_texts(list(captions), self.model.context_length)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of preprocessed pixels (B, 3, H, W)."""
        return self.model.clip_model.encode_image(images.to(self.device, torch.float32), normalize=True)

    def encode_texts(self, texts: PaddedTokens | torch.Tensor) -> torch.Tensor:
        """L2-normalised caption embeddings."""
        ids = texts.ids if isinstance(texts, PaddedTokens) else texts
        return self.model.clip_model.encode_text(ids.to(self.device), normalize=True)

    def text_embeddings(self, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """CLIP's joint-space caption embeddings (its only text space), for STS and CxC text-to-text."""
        with self._inference():
            return torch.cat([self.encode_texts(self.tokenize(captions[i:i + batch_size]))
                              for i in range(0, len(captions), batch_size)]).float()

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's joint-space image embeddings, for image retrieval."""
        with self._inference():
            return self.encode_images(images).float()

    # ---- training -------------------------------------------------------------------------------
    def configure_training(self, recipe: Mapping[str, Any]) -> TrainingSetup:
        raise ValueError("clip_zeroshot is a zero-shot baseline: it is evaluated, never trained (its variants carry "
                         "options zero_shot: true, which gives each one evaluation job and no training job)")
