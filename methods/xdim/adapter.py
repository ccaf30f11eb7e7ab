"""XDimAdapter: X-Dim (ACM MM 2023) for the harness, variant 'bert' (BUTD regions + bert-base-uncased).

X-Dim scores every image-caption pair. `encode_images` returns the region features (B, R, D),
`encode_texts` the word features (PaddedFeatures (B, L, D)); `score` computes the region attention, the
context vectors and the dependency-weighted word scores of every pair of a block, batched, with the
dependency matrix (and its QR factor) computed once per model state rather than once per caption.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from methods.common.pairwise import PairwiseAdapter
from methods.common.paper import OfficialFormat
from methods.xdim.model import XDimModel
from methods.xdim.official import read_official, write_official

DEFAULT_OPTIONS: dict[str, Any] = dict(
    embed_size=1024, img_dim=2048, bert="bert-base-uncased", no_imgnorm=False, no_txtnorm=False,
)
VARIANTS = ("bert",)


class XDimAdapter(PairwiseAdapter):
    method: ClassVar[str] = "xdim"
    official_format: ClassVar[OfficialFormat] = OfficialFormat(read_official, write_official)
    score_chunks: ClassVar[dict[str, tuple[int, int]]] = {"cpu": (1 << 20, 8), "cuda": (1 << 25, 512)}

    @classmethod
    def build(cls, variant: str, dataset: str, options: Mapping[str, Any] | None = None) -> XDimAdapter:
        """A fresh X-Dim model. Options: embed_size (1024; the official code hard-codes 1024, any size
        works here), img_dim, bert ('bert-base-uncased', 'minilm' or a BertConfig dict), bert_pretrained,
        no_imgnorm, no_txtnorm."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown X-Dim variant {variant!r}; valid: {', '.join(VARIANTS)}")
        opts = {**DEFAULT_OPTIONS, **dict(options or {})}
        opts.setdefault("bert_pretrained", opts["bert"] == "minilm")
        model = XDimModel(img_dim=int(opts["img_dim"]), embed_size=int(opts["embed_size"]), bert=opts["bert"],
                          bert_pretrained=bool(opts["bert_pretrained"]), no_imgnorm=bool(opts["no_imgnorm"]),
                          no_txtnorm=bool(opts["no_txtnorm"]))
        return cls(model, variant, dataset, opts)

    def score_elements_per_word(self, images: torch.Tensor) -> int:
        """The context vectors (D per image, caption and word) are the largest intermediate."""
        return max(int(images.shape[1]), int(images.shape[2]))
