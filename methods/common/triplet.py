"""Hinge triplet ranking loss of the VSE family, with optional groups of positives.

Scores S are image rows x caption columns. Each row and column has at least one positive
(by default the diagonal). The anchor similarity of a row is its *hardest* (lowest-scoring)
positive, and likewise for a column. The costs are

    cost_s[i, j]  = [margin + S[i, j] - p_i]_+   (image i as query, caption j a negative)
    cost_im[i, j] = [margin + S[i, j] - q_j]_+   (caption j as query, image i a negative)

with positives zeroed. VSE0 sums every negative; VSE++ (`hardest_negative=True`) keeps the largest
cost per row / column. Both are sums over the batch, not means. With one positive per row this is
vse_infty's ContrastiveLoss; with k x k diagonal blocks it is ESA's self-expanding loss.
"""

from __future__ import annotations

import torch
from torch import nn


def group_positives(n: int, group: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """(n, n) bool block-diagonal mask: rows/columns g*group .. g*group+group-1 are mutual positives."""
    if group < 1 or n % group:
        raise ValueError(f"batch of {n} rows cannot be split into groups of {group}")
    ids = torch.arange(n, device=device) // group
    return ids[:, None] == ids[None, :]


def triplet_costs(scores: torch.Tensor, positives: torch.Tensor | None = None, *, margin: float = 0.2,
                  hardest_negative: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(cost_im, cost_s): the two summed hinge terms for a score matrix (images x captions)."""
    if positives is None:
        if scores.shape[0] != scores.shape[1]:
            raise ValueError(f"a non-square score matrix {tuple(scores.shape)} needs a positive mask")
        positives = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    if positives.shape != scores.shape:
        raise ValueError(f"positive mask {tuple(positives.shape)} != scores {tuple(scores.shape)}")
    if not bool(positives.any(1).all()) or not bool(positives.any(0).all()):
        raise ValueError("every row and column of the score matrix needs at least one positive")
    inf = torch.finfo(scores.dtype).max
    pos_scores = scores.masked_fill(~positives, inf)
    anchor_row = pos_scores.min(dim=1).values  # hardest positive caption of each image row
    anchor_col = pos_scores.min(dim=0).values  # hardest positive image of each caption column
    cost_s = (margin + scores - anchor_row[:, None]).clamp(min=0).masked_fill(positives, 0)
    cost_im = (margin + scores - anchor_col[None, :]).clamp(min=0).masked_fill(positives, 0)
    if hardest_negative:
        cost_s = cost_s.max(dim=1).values
        cost_im = cost_im.max(dim=0).values
    return cost_im.sum(), cost_s.sum()


def collapse_value(n: int, *, margin: float, hardest_negative: bool, group: int = 1) -> float:
    """cost_im + cost_s of `triplet_costs` on an (n, n) batch whose scores are all equal (a collapsed
    model): every hinge is `margin`, so 2 x margin x n for VSE++ (one hardest negative per row and per
    column) and 2 x margin x n x (n - group) for VSE0 (every negative summed)."""
    return 2.0 * margin * n * (1 if hardest_negative else n - group)


def hardest_negative_at(epoch: int, warmup_epochs: int) -> bool:
    """The warm-up schedule: VSE0 (all negatives summed) for epochs < warmup_epochs, then VSE++."""
    return epoch >= warmup_epochs


class TripletLoss(nn.Module):
    """Triplet loss on embeddings: scores = images @ captions.T, positives in groups of `group` rows.

    group=1: image i pairs with caption i. group=k: rows are k views of each pair, interleaved
    ([pair0 view0, pair0 view1, pair1 view0, ...]) on both sides, and every view of a pair is a positive
    of every other (ESA's self-expanding loss).
    """

    def __init__(self, margin: float = 0.2, group: int = 1) -> None:
        super().__init__()
        self.margin = margin
        self.group = group

    def forward(self, images: torch.Tensor, captions: torch.Tensor, *,
                hardest_negative: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[0] != captions.shape[0]:
            raise ValueError(f"{images.shape[0]} image rows but {captions.shape[0]} caption rows")
        scores = images @ captions.t()
        positives = group_positives(scores.shape[0], self.group, scores.device)
        return triplet_costs(scores, positives, margin=self.margin, hardest_negative=hardest_negative)


class SelfExpandingTripletLoss(TripletLoss):
    """ESA's Self-Expanding triplet Loss: `hardnum` views per image and per caption, hardest positive."""

    def __init__(self, margin: float = 0.2, hardnum: int = 2) -> None:
        super().__init__(margin=margin, group=hardnum)
