"""X-Dim's similarity head: a sparse cross-dimensional dependency matrix and per-pair word scores.

Input-independent part (one D x D matrix, D = embed_size): P = sigmoid(W) from a learned table W;
per-row threshold t_i = mean_j P_ij + alpha_i std_j P_ij (unbiased std, alpha = sim_map.weight);
mask M = tanh(exp(exp(lambda) (P - t))) (lambda = temp_learnable); A = row-l2n(M * P); g = column
sums of A.

Per caption (words u_l) and image (regions v_r), all unit vectors:
a = LeakyReLU_0.1(tanh(u diag(g) v^T)), l2-normalised over the words of each region;
beta = softmax over regions of exp(tau) a; c_l = l2n(sum_r beta_lr v_r); s_l = c_l * u_l;
word score = sum_k l2n(A s_l)_k; pair score = mean over the caption's words (incl. [CLS]/[SEP]).

Fast scoring. The diagonal product is elementwise (the official code multiplies by a dense
diag(g)). And since sum_k (A s)_k = g . s, the word score is (g . s) / (||A s|| + eps): only the norm of
A s is needed, and ||A s|| = ||R s|| for the QR factorisation A = QR. R is triangular, so the D x D
projection costs about half the multiply-adds; it is applied in column blocks, to the real words of
a chunk only (not its padding). Per image and word that is D^2/2 + 2RD multiply-adds against the official
2D^2 + 2RD (dense diag(g), then s @ A^T): at D = 1024, R = 36 at most about 3.6x fewer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from methods.common.pairwise import RegionWordModel
from methods.common.region_encoder import l2norm

EPS = 1e-8
TRIANGULAR_BLOCKS = 8


def official_rows(table: nn.Embedding) -> torch.Tensor:
    """All rows of the table in order: the official `table(torch.linspace(0, D, steps=D, dtype=int))`.

    On torch 1.8 (which trained the released checkpoints) that integer linspace returns exactly 0..D-1 on
    CPU (vectorised kernel); since torch 2.0 (pytorch PR #89048) it returns ..., D-2, D and indexes past
    the last row. We reproduce the torch 1.8 semantics: indices 0..D-1, i.e. the whole table.
    """
    return table.weight


class XDimHead(nn.Module):
    """The official `sim_vec` module: weights (W), sim_eval (unused), temp_scale (tau), sim_map (alpha),
    temp_learnable (lambda)."""

    def __init__(self, embed_size: int = 1024) -> None:
        super().__init__()
        self.embed_size = embed_size
        self.weights = nn.Embedding(embed_size, embed_size)
        self.sim_eval = nn.Linear(embed_size, 1, bias=False)  # stored in checkpoints, never used
        self.temp_scale = nn.Linear(1, 1, bias=False)
        self.sim_map = nn.Linear(embed_size, 1, bias=False)
        self.temp_learnable = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.temp_scale.weight.fill_(math.log(1 / 0.07))
            self.temp_learnable.weight.fill_(4.0)
            nn.init.normal_(self.sim_map.weight, mean=2.5, std=0.1)
        self._factor_cache: tuple | None = None

    def smooth(self) -> torch.Tensor:
        return torch.exp(self.temp_scale.weight).reshape(())

    def dependency(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, g): the row-normalised masked dependency matrix (D, D) and its column sums (D,)."""
        probs = torch.sigmoid(official_rows(self.weights))
        threshold = probs.mean(dim=1) + self.sim_map.weight[0] * probs.std(dim=1)
        values = torch.exp(self.temp_learnable.weight[0, 0]) * (probs - threshold[:, None])
        agg = l2norm(torch.tanh(torch.exp(values)) * probs, dim=1)
        return agg, agg.sum(dim=0)

    def projection_factors(self, blocks: int = TRIANGULAR_BLOCKS) -> tuple[torch.Tensor, list]:
        """(g, [(start, R[block, start:]^T), ...]) with A = QR (QR in float64), cached until a parameter
        of the head changes. ||A s||^2 = sum over blocks of ||s[start:] @ R[block, start:]^T||^2."""
        key = tuple((p.data_ptr(), p._version, p.device) for p in self.parameters()) + (blocks,)
        if self._factor_cache is not None and self._factor_cache[0] == key:
            return self._factor_cache[1]
        with torch.no_grad():
            agg, g = self.dependency()
            r = torch.linalg.qr(agg.double(), mode="r").R.to(agg.dtype)
            size = -(-self.embed_size // blocks)
            parts = [(a, r[a:a + size, a:].t().contiguous()) for a in range(0, self.embed_size, size)]
        factors = (g.detach(), parts)
        self._factor_cache = (key, factors)
        return factors


def _region_attention(regions: torch.Tensor, words: torch.Tensor, g: torch.Tensor, smooth: torch.Tensor,
                      columns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, numerator): unnormalised context vectors sum_r beta_lr v_r (i, c*L, D) of every image,
    caption and word, and sum_r beta_lr (u_l g) . v_r = (u_l * context_l) . g (i, c, L). With `columns`
    (indices into the c*L caption words) the context is computed for those words only: (i, len(columns), D)."""
    n_img, n_reg, dim = regions.shape
    n_cap, width, _ = words.shape
    raw = (regions.reshape(n_img * n_reg, dim) @ (words * g).reshape(n_cap * width, dim).t())
    raw = raw.view(n_img, n_reg, n_cap, width)
    aff = F.leaky_relu(torch.tanh(raw), 0.1)
    aff = aff / (torch.linalg.vector_norm(aff, dim=3, keepdim=True) + EPS)  # over the words of each region
    beta = torch.softmax(aff * smooth, dim=1)  # over regions
    weights = beta.view(n_img, n_reg, n_cap * width)
    if columns is not None:
        weights = weights.index_select(2, columns)
    ctx = torch.bmm(weights.transpose(1, 2), regions)
    return ctx, (beta * raw).sum(dim=1)


def _mask_words(words: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.arange(words.shape[1], device=words.device)[None, :] < lengths.to(words.device)[:, None]
    return words.masked_fill(~keep[..., None], 0.0), keep


def xdim_pair_scores(regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor, agg: torch.Tensor,
                     g: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
    """(n_img, n_cap) scores, the direct form (s @ A^T then l2n and sum), differentiable: training."""
    words, keep = _mask_words(words, lengths)
    n_img, n_cap, width = regions.shape[0], words.shape[0], words.shape[1]
    ctx = l2norm(_region_attention(regions, words, g, smooth)[0], dim=-1).view(n_img, n_cap, width, -1)
    proj = (ctx * words) @ agg.t()
    # padded words (all-zero projections) get a dummy norm: sqrt(0) would put NaN into the gradients
    norms = proj.pow(2).sum(dim=-1, keepdim=True).masked_fill(~keep[None, ..., None], 1.0).sqrt()
    word_scores = (proj / (norms + EPS)).sum(dim=-1).masked_fill(~keep[None], 0.0)  # (i, c, L)
    return word_scores.sum(dim=2) / lengths.to(word_scores)[None, :]


def xdim_pair_scores_fast(regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor, g: torch.Tensor,
                          r_blocks: list, smooth: torch.Tensor) -> torch.Tensor:
    """The same scores via (g . s) / (||R s|| + eps ||c||), g . s from the affinities: evaluation. The
    context and the projection (most of the work) are computed for the caption's real words only."""
    words, keep = _mask_words(words, lengths)
    n_img, n_cap, width = regions.shape[0], words.shape[0], words.shape[1]
    columns = keep.reshape(-1).nonzero().squeeze(1)  # the real words among the c*L padded positions
    ctx, numer = _region_attention(regions, words, g, smooth, columns)  # (i, w, D) unnormalised; (i, c, L)
    ctx_norm = torch.linalg.vector_norm(ctx, dim=-1) + EPS  # the official l2n denominator of the context
    real_words = words.reshape(n_cap * width, -1).index_select(0, columns)
    s = ctx.mul_(real_words).view(n_img * len(columns), -1)  # = s_l * ||c||
    squares = torch.zeros(s.shape[0], dtype=s.dtype, device=s.device)
    for start, block in r_blocks:
        squares += torch.linalg.vector_norm(s[:, start:] @ block, dim=1).square()
    denom = squares.sqrt().view(n_img, -1) + EPS * ctx_norm
    word_scores = numer.new_zeros(n_img, n_cap * width)
    word_scores[:, columns] = numer.view(n_img, n_cap * width).index_select(1, columns) / denom
    return word_scores.view(n_img, n_cap, width).sum(dim=2) / lengths.to(word_scores)[None, :]


class XDimModel(RegionWordModel):
    """The three official parts: `img_enc` (regions), `txt_enc` (BERT words), `sim_vec` (XDimHead)."""

    def __init__(self, img_dim: int = 2048, embed_size: int = 1024, bert: str | dict = "bert-base-uncased",
                 bert_pretrained: bool = False, no_imgnorm: bool = False, no_txtnorm: bool = False) -> None:
        super().__init__(img_dim, embed_size, bert, bert_pretrained, no_imgnorm, no_txtnorm)
        self.sim_vec = XDimHead(embed_size)

    def image_side(self, regions: torch.Tensor) -> torch.Tensor:
        return self.region_features(regions)

    def text_side(self, ids: torch.Tensor) -> torch.Tensor:
        return self.word_features(ids)

    def pair_scores(self, image_side: torch.Tensor, text_side: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        g, blocks = self.sim_vec.projection_factors()
        return xdim_pair_scores_fast(image_side, text_side, lengths, g, blocks, self.sim_vec.smooth())

    def train_scores(self, regions: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The in-batch (B images x B captions) score matrix with gradients (training forward)."""
        agg, g = self.sim_vec.dependency()
        return xdim_pair_scores(self.region_features(regions), self.word_features(ids), lengths, agg, g,
                                self.sim_vec.smooth())
