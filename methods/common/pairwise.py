"""What ESL and X-Dim share: both come from the same vse_infty-derived code base (BUTD regions + BERT
words, no pooling) and score every image-caption pair with a cross-attention head (`sim_vec`).

- `PairwiseAdapter`: tokenisation, encoding, blockwise batched scoring, and the training pieces
  (AdamW with four parameter groups, region dropping, word masking, hinge triplet loss with hardest
  negatives after the warm-up epochs).
- `RegionWordModel`: the two encoders both models share (BUTD regions, BERT words, optional l2 norm).
The official container helpers live in `methods.common.three_part`.

A model class used here provides `image_side(regions)`, `text_side(ids)`, `pair_scores(image_side,
text_side, lengths)` and `train_scores(regions, ids, lengths)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from harness.api import PaddedFeatures, PaddedTokens, TrainingSetup
from methods.common.augment import augment_word_pieces
from methods.common.optim import adamw_step_decay, bert_text_groups
from methods.common.paper import PaperAdapter, as_regions
from methods.common.region_encoder import PrecompRegionEncoder, l2norm
from methods.common.text_bert import BertWordEncoder, bert_tokenize, bert_tokenizer, bert_word_pieces, pad_ids
from methods.common.triplet import collapse_value, hardest_negative_at, triplet_costs

DEFAULT_RECIPE: dict[str, Any] = dict(
    lr=5e-4, lr_decay_epochs=[15], lr_decay=0.1, margin=0.2, warmup_epochs=1, grad_clip=2.0,
    region_keep=0.8, word_aug_prob=0.2, weight_decay=1e-4, bert_lr_factor=0.1,
)
# Scoring chunks per device type: (elements of the largest intermediate, captions per chunk). On CPU
# small chunks keep the intermediates in cache (measured fastest); on GPUs large ones fill the device.
SCORE_CHUNKS = {"cpu": (1 << 19, 32), "cuda": (1 << 25, 512)}


@dataclass
class PairwiseTrainBatch:
    """B images (regions dropped and zero-padded, the padding is not masked) and B augmented captions."""

    images: torch.Tensor  # (B, R', D) float32
    image_lengths: torch.Tensor  # (B,) kept regions (unused by the models, as in the official code)
    tokens: PaddedTokens

    def to(self, device: torch.device | str) -> PairwiseTrainBatch:
        return PairwiseTrainBatch(self.images.to(device), self.image_lengths.to(device), self.tokens.to(device))


def drop_regions(images: torch.Tensor, keep_prob: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each region iff a uniform draw is > 1 - keep_prob (official: rand > 0.2); kept regions are
    moved to the front in order and the batch is zero-padded to its longest image (at least 1 row)."""
    n, regions, dim = images.shape
    keep = rng.random((n, regions)) > 1.0 - keep_prob
    lengths = keep.sum(axis=1)
    out = images.new_zeros((n, max(1, int(lengths.max(initial=0))), dim))
    for i in range(n):
        idx = torch.from_numpy(np.flatnonzero(keep[i]))
        out[i, : len(idx)] = images[i, idx]
    return out, torch.from_numpy(lengths.astype(np.int64))


class RegionWordModel(nn.Module):
    """The official `img_enc` (regions) and `txt_enc` (BERT words) with the optional l2 normalisation;
    subclasses add the similarity head `sim_vec`."""

    def __init__(self, img_dim: int, embed_size: int, bert: str | dict = "bert-base-uncased",
                 bert_pretrained: bool = False, no_imgnorm: bool = False, no_txtnorm: bool = False) -> None:
        super().__init__()
        self.img_enc = PrecompRegionEncoder(img_dim, embed_size)
        self.txt_enc = BertWordEncoder(embed_size, backbone=bert, pretrained=bert_pretrained)
        self.no_imgnorm = no_imgnorm
        self.no_txtnorm = no_txtnorm

    def region_features(self, regions: torch.Tensor) -> torch.Tensor:
        feats = self.img_enc(regions)
        return feats if self.no_imgnorm else l2norm(feats, dim=-1)

    def word_features(self, ids: torch.Tensor) -> torch.Tensor:
        feats = self.txt_enc.word_features(ids)
        return feats if self.no_txtnorm else l2norm(feats, dim=-1)


class PairwiseAdapter(PaperAdapter):
    """Adapter base for the region + BERT cross-attention methods (ESL, X-Dim)."""

    scoring: ClassVar[Literal["embedding", "pairwise"]] = "pairwise"
    image_input: ClassVar[Literal["regions", "pixels"]] = "regions"
    default_recipe: ClassVar[Mapping[str, Any]] = DEFAULT_RECIPE
    score_chunks: ClassVar[dict[str, tuple[int, int]]] = SCORE_CHUNKS
    score_budget: int | None = None  # overrides score_chunks[device][0]
    score_captions: int | None = None  # overrides score_chunks[device][1]

    # ---- inference --------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> PaddedTokens:
        """[CLS] WordPieces [SEP], padded with 0, no truncation (the official BertTokenizer pipeline)."""
        return bert_tokenize(captions)

    def encode_images(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Regions (B, R, img_dim) -> the image side of the pair interaction (B, R, F)."""
        with self._inference():
            regions = as_regions(images, self.device)
            if regions.ndim != 3:
                raise ValueError(f"expected region features (B, R, D), got shape {tuple(regions.shape)}")
            return self.model.image_side(regions)

    def encode_texts(self, texts: PaddedTokens) -> PaddedFeatures:
        """Token ids -> per-word features (B, L, F), zero beyond each caption's length."""
        with self._inference():
            texts = texts.to(self.device)
            width = int(texts.lengths.max()) if len(texts) else 0
            feats = self.model.text_side(texts.ids[:, :width])
            keep = torch.arange(width, device=feats.device)[None, :] < texts.lengths[:, None]
            return PaddedFeatures(feats.masked_fill(~keep[..., None], 0.0), texts.lengths)

    def score_elements_per_word(self, images: torch.Tensor) -> int:
        """Size of the largest scoring intermediate per (image, caption, word): regions by default."""
        return int(images.shape[1])

    def score(self, image_block: torch.Tensor, text_block: PaddedFeatures) -> torch.Tensor:
        """(images, captions) scores of every pair of the blocks, batched over chunks of up to
        `score_captions` captions and as many images as keep the largest intermediate (images x
        captions x words x `score_elements_per_word`) within `score_budget` elements (defaults by device)."""
        images = image_block.to(self.device)
        text = text_block.to(self.device)
        n_img, n_cap = images.shape[0], len(text)
        default = self.score_chunks.get(images.device.type, self.score_chunks["cuda"])
        budget = self.score_budget or default[0]
        max_captions = self.score_captions or default[1]
        per_caption = self.score_elements_per_word(images) * max(1, text.feats.shape[1])
        cap_chunk = max(1, min(n_cap, max_captions, budget // per_caption))
        img_chunk = max(1, min(n_img, budget // (cap_chunk * per_caption)))
        out = torch.empty(n_img, n_cap, dtype=images.dtype, device=images.device)
        with self._inference():
            for c in range(0, n_cap, cap_chunk):
                sub = text[c:c + cap_chunk]
                for a in range(0, n_img, img_chunk):
                    out[a:a + img_chunk, c:c + cap_chunk] = self.model.pair_scores(
                        images[a:a + img_chunk], sub.feats, sub.lengths)
        return out

    # ---- training -----------------------------------------------------------------------------
    def configure_training(self, recipe: Mapping[str, Any]) -> TrainingSetup:
        """AdamW (weight decay 1e-4) with the official four groups: text without BERT (lr), BERT
        (lr x bert_lr_factor), image encoder (lr), sim_vec (lr); all x lr_decay from each decay epoch."""
        r = self.use_recipe(recipe)
        lr = float(r["lr"])
        groups = [*bert_text_groups(self.model.txt_enc, lr, float(r["bert_lr_factor"])),
                  {"params": list(self.model.img_enc.parameters()), "lr": lr},
                  {"params": list(self.model.sim_vec.parameters()), "lr": lr}]
        return adamw_step_decay(groups, r, float(r["weight_decay"]))

    def _augmented_ids(self, caption: str, rng: np.random.Generator) -> list[int]:
        tok = bert_tokenizer()
        pieces = augment_word_pieces(bert_word_pieces(caption), rng, mask_id=tok.token_to_id("[MASK]"),
                                     vocab_size=tok.get_vocab_size(), prob=float(self.recipe["word_aug_prob"]))
        return [tok.token_to_id("[CLS]"), *pieces, tok.token_to_id("[SEP]")]

    def make_train_batch(self, images: np.ndarray | torch.Tensor, captions: Sequence[str],
                         rng: np.random.Generator, caption_ids: np.ndarray | None = None) -> PairwiseTrainBatch:
        """Images (B, R, D) matched to B captions: region dropping (keep `region_keep`) and word masking
        (`word_aug_prob`: 50% [MASK], 10% random ids, 40% deleted), all randomness from `rng`."""
        regions = as_regions(images)
        if regions.ndim != 3 or regions.shape[0] != len(captions):
            raise ValueError(f"expected images (B, R, D) for {len(captions)} captions, got {tuple(regions.shape)}")
        dropped, lengths = drop_regions(regions, float(self.recipe["region_keep"]), rng)
        tokens = pad_ids([self._augmented_ids(c, rng) for c in captions], pad=0)
        return PairwiseTrainBatch(dropped, lengths, tokens)

    def train_step(self, batch: PairwiseTrainBatch, epoch: int) -> dict[str, torch.Tensor]:
        """Hinge triplet loss (margin, sums over the batch) on the B x B pair scores: every negative
        before recipe['warmup_epochs'], the hardest negative per row/column afterwards."""
        batch = batch.to(self.device)
        scores = self.model.train_scores(batch.images, batch.tokens.ids, batch.tokens.lengths)
        hardest = hardest_negative_at(epoch, int(self.recipe["warmup_epochs"]))
        cost_im, cost_s = triplet_costs(scores, margin=float(self.recipe["margin"]), hardest_negative=hardest)
        return {"loss": cost_im + cost_s, "loss_im": cost_im.detach(), "loss_s": cost_s.detach()}

    def collapse_loss(self, epoch: int, batch_size: int) -> float:
        """The summed hinge loss of a batch with every score equal (2 x margin x B under hardest negatives)."""
        return collapse_value(batch_size, margin=float(self.recipe["margin"]),
                              hardest_negative=hardest_negative_at(epoch, int(self.recipe["warmup_epochs"])))
