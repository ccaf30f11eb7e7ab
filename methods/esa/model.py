"""ESA's encoders: region / word features pooled by per-channel softmax attention (external space attention).

For features V (B, L, D), ESA computes logits Z = linear1(V) and, separately for each of the D
channels, a softmax over the L positions; the pooled vector is sum_l A[:, l] * V[:, l], then
L2-normalised. Positions outside a keep mask (padding, or regions dropped for a training view) get
logit -10000 and their weight is zeroed after the softmax (no renormalisation), as in the official code.
"""

from __future__ import annotations

import torch
from torch import nn

from methods.common.region_encoder import PrecompRegionEncoder, l2norm
from methods.common.text_bert import BertWordEncoder
from methods.common.text_bigru import BiGRUWordEncoder, length_mask

MASKED_LOGIT = -10000.0


def xavier_(linear: nn.Linear) -> None:
    """Xavier uniform weight (r = sqrt(6 / (in + out))), zero bias: the official init_weights."""
    r = (6.0 / (linear.in_features + linear.out_features)) ** 0.5
    with torch.no_grad():
        linear.weight.uniform_(-r, r)
        linear.bias.zero_()


def esa_pool(features: torch.Tensor, logits: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel softmax pooling over dim 1. features, logits: (B, L, D); keep: (B, L) bool or None."""
    if keep is not None:
        logits = logits.masked_fill(~keep[..., None], MASKED_LOGIT)
    attn = torch.softmax(logits - logits.max(dim=1, keepdim=True).values, dim=1)
    if keep is not None:
        attn = attn.masked_fill(~keep[..., None], 0.0)
    return (attn * features).sum(dim=1)


class ESAImageEncoder(PrecompRegionEncoder):
    """Regions (B, R, img_dim) -> (B, embed): fc + mlp region features, ESA pooling (`linear1`), L2 norm."""

    def __init__(self, img_dim: int = 2048, embed_size: int = 1024, normalize: bool = True) -> None:
        super().__init__(img_dim, embed_size)
        self.linear1 = nn.Linear(embed_size, embed_size)
        xavier_(self.linear1)
        self.normalize = normalize

    def pool(self, regions: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.region_features(regions)
        return self._norm(esa_pool(feats, self.linear1(feats), keep))

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        """All regions (the evaluation path)."""
        return self.pool(regions)

    def views(self, regions: torch.Tensor, keeps: torch.Tensor) -> torch.Tensor:
        """Self-expanding training views. keeps: (K, B, R) bool region masks, one per view.

        Returns (B * K, embed) with the K views of each image on consecutive rows.
        """
        feats = self.region_features(regions)
        logits = self.linear1(feats)
        pooled = torch.stack([esa_pool(feats, logits, keep) for keep in keeps], dim=1)  # (B, K, D)
        return self._norm(pooled.reshape(-1, pooled.shape[-1]))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return l2norm(x, dim=-1) if self.normalize else x


class ESABiGRUTextEncoder(BiGRUWordEncoder):
    """Word ids -> (B, embed): BiGRU (directions averaged) with word dropout 0.1, ESA pooling, L2 norm.

    Keys: embed.weight, rnn.*, linear1.* (the GRU and linear1 keep PyTorch's default init).
    """

    def __init__(self, vocab_size: int, word_dim: int = 300, embed_size: int = 1024, num_layers: int = 1,
                 normalize: bool = True) -> None:
        super().__init__(vocab_size, word_dim, embed_size, num_layers, word_dropout=0.1)
        self.linear1 = nn.Linear(embed_size, embed_size)
        self.normalize = normalize

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.to(torch.long).clamp(min=1)
        feats = self.word_features(ids, lengths)
        pooled = esa_pool(feats, self.linear1(feats), length_mask(lengths, feats.shape[1]))
        return l2norm(pooled, dim=-1) if self.normalize else pooled


class ESABertTextEncoder(BertWordEncoder):
    """WordPiece ids -> (B, embed): BERT, `linear` per token, dropout 0.1, ESA pooling, L2 norm.

    Keys: bert.*, linear.*, linear1.* (linear and linear1 Xavier-initialised).
    """

    def __init__(self, embed_size: int = 1024, backbone: str | dict = "bert-base-uncased",
                 pretrained: bool = False, normalize: bool = True) -> None:
        super().__init__(embed_size, backbone=backbone, pretrained=pretrained)
        self.linear1 = nn.Linear(embed_size, embed_size)
        self.dropout = nn.Dropout(0.1)
        xavier_(self.linear)
        xavier_(self.linear1)
        self.normalize = normalize

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        width = int(lengths.max())
        feats = self.dropout(self.word_features(ids[:, :width]))
        pooled = esa_pool(feats, self.linear1(feats), length_mask(lengths, width))
        return l2norm(pooled, dim=-1) if self.normalize else pooled


class ESAModel(nn.Module):
    """The two ESA encoders; `img_enc` and `txt_enc` are the two official state dicts."""

    def __init__(self, img_enc: ESAImageEncoder, txt_enc: nn.Module) -> None:
        super().__init__()
        self.img_enc = img_enc
        self.txt_enc = txt_enc
