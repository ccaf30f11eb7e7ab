"""ESL's similarity head: multi-level dimension aggregation and enhanced level correspondence.

Every region / word vector x0 (embed_size d0, unit norm) is expanded into 8 coarser levels of
d_l = d0 / k^l dimensions (k = kernel_size = 2). Level l+1 is a linear map of level l:
- ESL-H (heuristic): a strided Conv1d(1 -> 4 channels, kernel k, stride k, no bias), channels summed;
- ESL-A (adaptive): a learned (d_l, d_{l-1}) matrix, rows L2-normalised and sparsified to their top-2
  entries (ties kept).
Images chain from the normalised level, captions from the raw one (as the official code does); the
output is concat[x0, l2n(x1), ..., l2n(x8)] (1022 dims for d0 = 512).

For a caption (words w) and an image (regions r) the level correspondences W_l (LayerNorm of a
learned (d_l, d_l) matrix, times the level weight alpha_l) give A[w, r] = sum_l t_l(w) W_l v_l(r)^T.
The score is a bidirectional attention pooling of A (see `esl_pair_scores`). ESL-H re-weights the
level weights by their "sparse contribution degree"; ESL-A uses them as they are.

Scoring folds W_l into the image side once per image (U = concat_l v_l W_l^T), so a pair costs one
(words x 1022) by (1022 x regions) product; the official loop recomputes t_l W_l for every image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from methods.common.pairwise import RegionWordModel
from methods.common.region_encoder import l2norm

LEVELS = 8
TOP_K = 2  # entries kept per row of an adaptive level matrix
CONV_CHANNELS = 4
EPS = 1e-8


def level_dims(embed_size: int, kernel_size: int = 2) -> list[int]:
    """[d_0, ..., d_8] with d_l = embed_size / kernel_size^l; embed_size must be divisible by k^8."""
    if kernel_size < 2 or embed_size % kernel_size ** LEVELS:
        raise ValueError(f"ESL needs embed_size divisible by kernel_size^{LEVELS} "
                         f"(got embed_size={embed_size}, kernel_size={kernel_size})")
    return [embed_size // kernel_size ** level for level in range(LEVELS + 1)]


def official_rows(table: nn.Embedding, n: int) -> torch.Tensor:
    """Rows 0..n-1 of an embedding table, i.e. the official `table(linspace index)[:n]` lookup.

    The official code indexes these tables with `torch.linspace(0, n, steps=n, dtype=int)` (or the first
    n entries of a 1024-step one). On torch 1.8, which trained the released checkpoints, the vectorised
    CPU kernel returns exactly 0..n-1 for these sizes; since torch 2.0 (pytorch PR #89048) the same call
    returns ..., n-2, n and indexes past the last row. We reproduce the torch 1.8 semantics: every row, in
    order.
    """
    if n > table.num_embeddings:
        raise ValueError(f"asked for {n} rows of a table with {table.num_embeddings}")
    return table.weight[:n]


def aggregate_levels(x: torch.Tensor, steps: list, chain_normalized: bool) -> torch.Tensor:
    """concat[x, l2n(y_1), ..., l2n(y_L)] with y_l = step_l(previous), previous = l2n(y) or raw y."""
    out = [x]
    current = x
    for step in steps:
        raw = step(current)
        normed = l2norm(raw, dim=-1)
        out.append(normed)
        current = normed if chain_normalized else raw
    return torch.cat(out, dim=-1)


class HeuristicLevels(nn.Module):
    """ESL-H aggregator: `{prefix}_{l}` = Conv1d(1, 4, k, stride=k, bias=False) per level, channels summed."""

    def __init__(self, dims: list[int], kernel_size: int, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        for level in range(1, len(dims)):
            self.add_module(f"{prefix}_{level}", nn.Conv1d(1, CONV_CHANNELS, kernel_size, stride=kernel_size,
                                                           bias=False))

    def steps(self) -> list:
        convs = [getattr(self, f"{self.prefix}_{level}") for level in range(1, LEVELS + 1)]

        def step(conv: nn.Conv1d):
            def apply(x: torch.Tensor) -> torch.Tensor:
                flat = x.reshape(-1, 1, x.shape[-1])
                return conv(flat).sum(dim=1).reshape(*x.shape[:-1], -1)
            return apply

        return [step(c) for c in convs]

    def forward(self, x: torch.Tensor, chain_normalized: bool) -> torch.Tensor:
        return aggregate_levels(x, self.steps(), chain_normalized)


class AdaptiveLevels(nn.Module):
    """ESL-A aggregator: `masks_{l}` = Embedding(d_l, d_{l-1}) used as a top-2-sparse projection."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        for level in range(1, len(dims)):
            self.add_module(f"masks_{level}", nn.Embedding(dims[level], dims[level - 1]))

    def matrices(self) -> list[torch.Tensor]:
        """The sparse (d_l, d_{l-1}) level matrices: l2-normalised rows, entries below the row's
        2nd-largest value zeroed (fewer than 2 columns: all kept)."""
        out = []
        for level in range(1, LEVELS + 1):
            table: nn.Embedding = getattr(self, f"masks_{level}")
            m = l2norm(official_rows(table, table.num_embeddings), dim=-1)
            k = min(TOP_K, m.shape[1])
            kth = m.topk(k, dim=1).values[:, k - 1:k]
            out.append((m >= kth).to(m.dtype) * m)
        return out

    def steps(self) -> list:
        return [lambda x, m=m: x @ m.t() for m in self.matrices()]

    def forward(self, x: torch.Tensor, chain_normalized: bool) -> torch.Tensor:
        return aggregate_levels(x, self.steps(), chain_normalized)


class LevelCorrespondence(nn.Module):
    """`sims.calculator_1`: level weights (sim_eval), temperatures and the (d_l, d_l) correspondences."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = list(dims)
        self.sim_eval = nn.Linear(len(dims), 1, bias=False)  # level weights w
        self.temp_scale = nn.Linear(1, 1, bias=False)  # tau: softmax temperature exp(tau)
        self.temp_scale_1 = nn.Linear(1, 1, bias=False)  # sigma: threshold position (ESL-H)
        self.temp_scale_2 = nn.Linear(1, 1, bias=False)  # rho: sharpness exp(rho) (ESL-H)
        for level, d in enumerate(dims):
            self.add_module(f"masks_{level}", nn.Embedding(d, d))
        for level, d in enumerate(dims):
            self.add_module(f"lynorm_{level}", nn.LayerNorm([d, d], eps=EPS))
        with torch.no_grad():
            self.temp_scale.weight.fill_(math.log(1 / 0.07))
            self.sim_eval.weight.fill_(0.1)
            self.temp_scale_1.weight.fill_(0.0)
            self.temp_scale_2.weight.fill_(3.0)

    def smooth(self) -> torch.Tensor:
        return torch.exp(self.temp_scale.weight).reshape(())

    def level_weights(self, heuristic: bool) -> torch.Tensor:
        """alpha_l = exp(lambda (|w_l| - t)) w_l with t = min|w| + sigma (max|w| - min|w|).

        ESL-H: lambda = exp(rho). ESL-A: lambda = 0, so alpha = w (sigma and rho get zero gradients,
        as in the official code)."""
        w = self.sim_eval.weight[0]
        a = w.abs()
        threshold = (a.max() - a.min()) * self.temp_scale_1.weight[0, 0] + a.min()
        lam = torch.exp(self.temp_scale_2.weight[0, 0]) if heuristic else 0.0
        return torch.exp((a - threshold) * lam) * w

    def matrices(self, heuristic: bool) -> list[torch.Tensor]:
        """W_l = LayerNorm_l(P_l) * alpha_l for l = 0..8."""
        alpha = self.level_weights(heuristic)
        out = []
        for level, d in enumerate(self.dims):
            table: nn.Embedding = getattr(self, f"masks_{level}")
            norm: nn.LayerNorm = getattr(self, f"lynorm_{level}")
            out.append(norm(official_rows(table, d)) * alpha[level])
        return out

    def fold(self, image_levels: torch.Tensor, heuristic: bool) -> torch.Tensor:
        """U = concat_l v_l W_l^T, so that A = T U^T for caption levels T."""
        parts = torch.split(image_levels, self.dims, dim=-1)
        return torch.cat([v @ w.t() for v, w in zip(parts, self.matrices(heuristic))], dim=-1)


class ESLHead(nn.Module):
    """The official `sim_vec` module, with its key names:
    plus_encoder.encoders_1.{text_levels, image_levels}.* and sims.calculator_1.*."""

    def __init__(self, embed_size: int = 512, kernel_size: int = 2, heuristic: bool = False) -> None:
        super().__init__()
        self.heuristic = heuristic
        self.dims = level_dims(embed_size, kernel_size)
        if heuristic:
            text = HeuristicLevels(self.dims, kernel_size, "kernel_txt")
            image = HeuristicLevels(self.dims, kernel_size, "kernel_img")
        else:
            text, image = AdaptiveLevels(self.dims), AdaptiveLevels(self.dims)
        self.plus_encoder = nn.ModuleDict({"encoders_1": nn.ModuleDict({"text_levels": text,
                                                                         "image_levels": image})})
        self.sims = nn.ModuleDict({"calculator_1": LevelCorrespondence(self.dims)})

    @property
    def text_levels(self) -> nn.Module:
        return self.plus_encoder["encoders_1"]["text_levels"]

    @property
    def image_levels(self) -> nn.Module:
        return self.plus_encoder["encoders_1"]["image_levels"]

    @property
    def calculator(self) -> LevelCorrespondence:
        return self.sims["calculator_1"]

    def image_side(self, regions: torch.Tensor) -> torch.Tensor:
        """Region features (..., d0) -> the image side U (..., sum d_l) of the bilinear form."""
        levels = self.image_levels(regions, chain_normalized=True)
        return self.calculator.fold(levels, self.heuristic)

    def text_side(self, words: torch.Tensor) -> torch.Tensor:
        """Word features (..., d0) -> their levels T (..., sum d_l)."""
        return self.text_levels(words, chain_normalized=False)

    def smooth(self) -> torch.Tensor:
        return self.calculator.smooth()


def esl_pair_scores(image_side: torch.Tensor, text_side: torch.Tensor, lengths: torch.Tensor,
                    smooth: torch.Tensor) -> torch.Tensor:
    """(n_img, n_cap) scores of every pair: image_side U (i, R, F), caption levels T (c, L, F) with
    true lengths (c,). With A = T U^T, G = LeakyReLU_0.1(tanh(A)) and s = exp(tau):
    t2i = mean_w sum_r A * softmax_r(s G / ||G[:, r]||_words),
    i2t = mean_r sum_w A * softmax_w(s G / ||G[w, :]||_regions).
    """
    n_img, n_reg, dim = image_side.shape
    n_cap, width, _ = text_side.shape
    words = torch.arange(width, device=text_side.device)[None, :] < lengths.to(text_side.device)[:, None]
    text = text_side.masked_fill(~words[..., None], 0.0)  # padded words contribute exact zeros
    attn = (image_side.reshape(n_img * n_reg, dim) @ text.reshape(n_cap * width, dim).t())
    attn = attn.view(n_img, n_reg, n_cap, width)
    gated = F.leaky_relu(torch.tanh(attn), 0.1)
    squared = gated * gated
    # text -> image: per word, a softmax over regions of G normalised over the words of each region
    logits = smooth * gated / (squared.sum(dim=3, keepdim=True).sqrt() + EPS)
    t2i = (attn * torch.softmax(logits, dim=1)).sum(dim=1)  # (i, c, L)
    t2i = t2i.sum(dim=2) / lengths.to(t2i)[None, :]
    # image -> text: per region, a softmax over words of G normalised over the regions of each word
    # (padded words get a dummy norm: sqrt(0) would put NaN into the gradients)
    norms = squared.sum(dim=1, keepdim=True).masked_fill(~words[None, None], 1.0).sqrt()
    logits = (smooth * gated / (norms + EPS)).masked_fill(~words[None, None], float("-inf"))
    i2t = (attn * torch.softmax(logits, dim=3)).sum(dim=3).mean(dim=1)  # (i, c)
    return t2i + i2t


class ESLModel(RegionWordModel):
    """The three official parts: `img_enc` (regions), `txt_enc` (BERT words), `sim_vec` (ESLHead)."""

    def __init__(self, img_dim: int = 2048, embed_size: int = 512, kernel_size: int = 2, heuristic: bool = False,
                 bert: str | dict = "bert-base-uncased", bert_pretrained: bool = False, no_imgnorm: bool = False,
                 no_txtnorm: bool = False) -> None:
        super().__init__(img_dim, embed_size, bert, bert_pretrained, no_imgnorm, no_txtnorm)
        self.sim_vec = ESLHead(embed_size, kernel_size, heuristic)

    def image_side(self, regions: torch.Tensor) -> torch.Tensor:
        return self.sim_vec.image_side(self.region_features(regions))

    def text_side(self, ids: torch.Tensor) -> torch.Tensor:
        return self.sim_vec.text_side(self.word_features(ids))

    def pair_scores(self, image_side: torch.Tensor, text_side: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return esl_pair_scores(image_side, text_side, lengths, self.sim_vec.smooth())

    def train_scores(self, regions: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The in-batch (B images x B captions) score matrix with gradients (training forward)."""
        return self.pair_scores(self.image_side(regions), self.text_side(ids), lengths)
