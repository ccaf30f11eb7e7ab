"""ESLAdapter: ESL (TCSVT 2024) for the harness, variants 'h' (ESL-H, heuristic) and 'a' (ESL-A, adaptive).

ESL scores every image-caption pair. `encode_images` returns each region's image side of the level
interaction with the level correspondences already folded in (B, R, 1022); `encode_texts` returns each
word's levels (PaddedFeatures (B, L, 1022)); `score` is the bidirectional attention pooling of their
product, batched over all pairs of a block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from methods.common.pairwise import PairwiseAdapter
from methods.common.paper import OfficialFormat
from methods.esl.model import ESLModel
from methods.esl.official import read_official, write_official

DEFAULT_OPTIONS: dict[str, Any] = dict(
    embed_size=512, img_dim=2048, kernel_size=2, bert="bert-base-uncased", no_imgnorm=False, no_txtnorm=False,
)
VARIANTS = ("h", "a")


class ESLAdapter(PairwiseAdapter):
    method: ClassVar[str] = "esl"
    official_format: ClassVar[OfficialFormat] = OfficialFormat(read_official, write_official)

    @classmethod
    def build(cls, variant: str, dataset: str, options: Mapping[str, Any] | None = None) -> ESLAdapter:
        """A fresh ESL model. Options: embed_size (512; divisible by kernel_size^8), img_dim, kernel_size,
        bert ('bert-base-uncased', 'minilm' or a BertConfig dict), bert_pretrained, no_imgnorm, no_txtnorm."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown ESL variant {variant!r}; valid: h (ESL-H, heuristic), a (ESL-A, adaptive)")
        opts = {**DEFAULT_OPTIONS, **dict(options or {})}
        opts.setdefault("bert_pretrained", opts["bert"] == "minilm")
        model = ESLModel(img_dim=int(opts["img_dim"]), embed_size=int(opts["embed_size"]),
                         kernel_size=int(opts["kernel_size"]), heuristic=variant == "h", bert=opts["bert"],
                         bert_pretrained=bool(opts["bert_pretrained"]), no_imgnorm=bool(opts["no_imgnorm"]),
                         no_txtnorm=bool(opts["no_txtnorm"]))
        return cls(model, variant, dataset, opts)
