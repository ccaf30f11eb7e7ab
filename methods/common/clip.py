"""What CUSA and the zero-shot CLIP baselines share: an OpenAI-layout CLIP read from raw images.

- geometry: `TINY_CLIP` (the tests' and demo's random CLIP) and `validate_clip_config` (OpenAI's head rule);
- text: `clip_tokenizer` / `tokenize_texts` (CLIP's BPE, cut at the context length with an end-of-text token);
- weights: `load_clip_weights` (a local OpenAI-key state dict into a model's `clip_model`, strictly, never
  downloaded);
- `ClipAdapter`: the adapter base of both: raw-image datasets in the CUSA/ALBEF json layout (and the demo's
  raw-image form), read and ordered as CUSA reads them, and dot-product scoring of L2-normalised vectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from harness.api import (
    Adapter,
    CheckpointError,
    CusaSplit,
    PaddedTokens,
    build_demo_images,
    find_split_folder,
    load_container,
    load_cusa_split,
    load_strict,
    strip_prefix,
)

# A tiny CLIP for tests and the CPU demo: width 64 keeps OpenAI's rule heads = width // 64.
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}



def validate_clip_config(cfg: Mapping[str, Any]) -> None:
    """A CLIP geometry the official `build_model` could rebuild from shapes (ViT, heads = width // 64)."""
    try:
        vision, text = cfg["vision_cfg"], cfg["text_cfg"]
        widths = {"vision": int(vision["width"]), "text": int(text["width"])}
        int(cfg["embed_dim"]), int(vision["layers"]), int(vision["patch_size"]), int(vision["image_size"])
        int(text["layers"]), int(text["context_length"]), int(text["vocab_size"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"CLIP config needs embed_dim, vision_cfg{{image_size, layers, width, patch_size}} and "
                         f"text_cfg{{context_length, vocab_size, width, heads, layers}}; got {dict(cfg)}") from exc
    for tower, width in widths.items():
        if width % 64:
            raise ValueError(f"CLIP {tower} width {width} is not a multiple of 64 (OpenAI CLIP uses width // 64 heads)")
    if int(text.get("heads", widths["text"] // 64)) != widths["text"] // 64:
        raise ValueError(f"CLIP text heads {text['heads']} != width // 64 = {widths['text'] // 64}")
    if int(vision.get("head_width", 64)) != 64:
        raise ValueError("CLIP vision head_width must be 64 (OpenAI CLIP uses width // 64 heads)")


# Keys a plain OpenAI / open_clip CLIP state dict may carry that a model's `clip_model` does not have.
CLIP_EXTRA_KEYS = ("logit_scale", "input_resolution", "context_length", "vocab_size")


@lru_cache(maxsize=4)
def clip_tokenizer(context_length: int = 77) -> Any:
    """open_clip's copy of OpenAI's BPE tokenizer (same ids as `clip.tokenize`, truncating at the context)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def tokenize_texts(texts: Sequence[str], context_length: int = 77) -> PaddedTokens:
    """BPE ids (N, context) with SOT/EOT; `lengths` = position of EOT + 1."""
    ids = clip_tokenizer(context_length)(list(texts)).long()
    return PaddedTokens(ids, ids.argmax(dim=1) + 1)


def load_clip_weights(model: nn.Module, path: str | Path) -> None:
    """Initialise `model.clip_model` from a local state dict with OpenAI key names (strict; never downloads)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise CheckpointError(f"{path}: no such CLIP weights file")
        state: Mapping[str, torch.Tensor] = load_file(str(path))
    else:
        try:
            state = load_container(path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}. OpenAI's TorchScript .pt files are not read: save "
                                  "torch.jit.load(f).state_dict() with torch.save, or use open_clip's "
                                  "ViT-*-quickgelu 'openai' weights file") from exc
        state = state.get("state_dict", state)
    state = {k: v for k, v in strip_prefix(state).items() if k not in CLIP_EXTRA_KEYS}
    load_strict(model.clip_model, state, path=path, part="CLIP weights")


class ClipAdapter(Adapter):
    """Adapter base of the CLIP methods: pixels from the CUSA/ALBEF json layout, scored by a matrix product.

    A subclass sets `self.preprocess` (the evaluation transform of one image) before reading data."""

    scoring: ClassVar[Literal["embedding", "pairwise"]] = "embedding"
    image_input: ClassVar[Literal["regions", "pixels"]] = "pixels"

    # ---- data ------------------------------------------------------------------------------------
    def eval_split(self, data_root: str | Path, split: str, dataset: str | None = None) -> CusaSplit:
        """The CUSA json split `new_{split}.json` in evaluation order (images must exist), found in
        `data_root`, `data_root/<dataset>` or `data_root/<dataset>/cusa` (the demo's
        raw-image form, generated there on first use)."""
        root = Path(data_root)
        folder = find_split_folder(root, split, dataset)
        if folder is not None:
            return load_cusa_split(folder, split)
        if dataset == "demo":  # the demo is generated, never downloaded: write its raw-image form (idempotent)
            return load_cusa_split(build_demo_images(root), split)
        return load_cusa_split(root, split)  # raises the not-found error naming the expected file

    def eval_data(self, data_root: str | Path, split: str, dataset: str | None = None) -> tuple[Any, list[str]]:
        """(lazy preprocessed pixel batches, raw captions) in the official test order.

        Captions are grouped by image but an image may have any number of them: the caption -> image
        map is `eval_split(...).image_of_caption`, not j // 5.
        """
        data = self.eval_split(data_root, split, dataset)
        return data.pixel_images(self.preprocess), data.captions

    def image_of_caption(self, data_root: str | Path, split: str, dataset: str | None = None) -> np.ndarray:
        return np.asarray(self.eval_split(data_root, split, dataset).image_of_caption)

    # ---- inference ----------------------------------------------------------------------------
    def score(self, image_block: torch.Tensor, text_block: torch.Tensor) -> torch.Tensor:
        """Dot products of L2-normalised image and caption embeddings."""
        return image_block.to(text_block.device) @ text_block.t()
