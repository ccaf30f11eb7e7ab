"""The shared hinge triplet loss: brute-force checks of hardest positive / negative, sum vs max, groups."""

from __future__ import annotations

import itertools

import pytest
import torch

from methods.common.triplet import (
    SelfExpandingTripletLoss,
    TripletLoss,
    group_positives,
    hardest_negative_at,
    triplet_costs,
)


def brute_force(scores: torch.Tensor, group: int, margin: float, hardest: bool) -> tuple[float, float]:
    """Per-anchor loops over the definitions: anchor = the lowest-scoring positive of its group."""
    s = scores.tolist()
    n = len(s)
    same = [[i // group == j // group for j in range(n)] for i in range(n)]
    cost_s = cost_im = 0.0
    for i in range(n):  # image view i as query
        anchor = min(s[i][j] for j in range(n) if same[i][j])
        costs = [max(0.0, margin + s[i][j] - anchor) for j in range(n) if not same[i][j]]
        cost_s += max(costs, default=0.0) if hardest else sum(costs)
    for j in range(n):  # caption view j as query
        anchor = min(s[i][j] for i in range(n) if same[i][j])
        costs = [max(0.0, margin + s[i][j] - anchor) for i in range(n) if not same[i][j]]
        cost_im += max(costs, default=0.0) if hardest else sum(costs)
    return cost_im, cost_s


@pytest.mark.parametrize("group,hardest,seed", list(itertools.product([1, 2, 3], [True, False], [0, 1])))
def test_matches_brute_force(group, hardest, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(4 * group, 4 * group, generator=gen, dtype=torch.float64) * 2 - 1
    positives = group_positives(4 * group, group)
    cost_im, cost_s = triplet_costs(scores, positives, margin=0.2, hardest_negative=hardest)
    ref_im, ref_s = brute_force(scores, group, 0.2, hardest)
    assert cost_im.item() == pytest.approx(ref_im, abs=1e-12)
    assert cost_s.item() == pytest.approx(ref_s, abs=1e-12)
    assert ref_im > 0 and ref_s > 0


def test_module_scores_embeddings_and_uses_the_hardest_positive():
    gen = torch.Generator().manual_seed(3)
    im = torch.nn.functional.normalize(torch.randn(6, 5, generator=gen, dtype=torch.float64), dim=1)
    cap = torch.nn.functional.normalize(torch.randn(6, 5, generator=gen, dtype=torch.float64), dim=1)
    for hardest in (True, False):
        got = SelfExpandingTripletLoss(margin=0.3, hardnum=2)(im, cap, hardest_negative=hardest)
        ref = brute_force(im @ cap.t(), 2, 0.3, hardest)
        assert [g.item() for g in got] == pytest.approx(ref, abs=1e-12)
    # group 1 = the plain VSE loss with the diagonal as positives: a different value than groups of 2
    plain = TripletLoss(margin=0.3)(im, cap)
    assert [p.item() for p in plain] == pytest.approx(brute_force(im @ cap.t(), 1, 0.3, True), abs=1e-12)


def test_hand_computed_example():
    # one pair of groups (k=2): rows/cols 0,1 are group 0, rows/cols 2,3 group 1
    s = torch.tensor([[0.9, 0.5, 0.6, 0.1],
                      [0.7, 0.8, 0.2, 0.3],
                      [0.0, 0.1, 0.9, 0.9],
                      [0.4, 0.0, 0.6, 0.5]], dtype=torch.float64)
    cost_im, cost_s = triplet_costs(s, group_positives(4, 2), margin=0.2, hardest_negative=True)
    # image rows: anchors 0.5, 0.7, 0.9, 0.5 -> hardest negative costs 0.3, 0, 0, 0.1
    assert cost_s.item() == pytest.approx(0.4)
    # caption cols: anchors 0.7, 0.5, 0.6, 0.5 -> hardest negative costs 0, 0, 0.2, 0
    assert cost_im.item() == pytest.approx(0.2)


def test_warmup_sum_is_at_least_the_hardest_negative():
    gen = torch.Generator().manual_seed(7)
    scores = torch.rand(8, 8, generator=gen)
    pos = group_positives(8, 2)
    summed = sum(triplet_costs(scores, pos, hardest_negative=False))
    hardest = sum(triplet_costs(scores, pos, hardest_negative=True))
    assert summed > hardest > 0
    # with a single violating negative per query the two agree
    s = torch.eye(4) * 1.0 + torch.diag(torch.ones(3), 1) * 0.9
    a = triplet_costs(s, hardest_negative=False)
    b = triplet_costs(s, hardest_negative=True)
    assert all(torch.isclose(x, y) for x, y in zip(a, b)) and a[0] > 0


def test_schedule():
    assert [hardest_negative_at(e, 1) for e in range(3)] == [False, True, True]
    assert hardest_negative_at(0, 0)


def test_positive_mask_and_errors():
    mask = group_positives(6, 3)
    assert mask.sum() == 18 and mask[0, 2] and not mask[2, 3]
    with pytest.raises(ValueError, match="groups of 4"):
        group_positives(6, 4)
    with pytest.raises(ValueError, match="at least one positive"):
        triplet_costs(torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="rows"):
        TripletLoss()(torch.zeros(4, 2), torch.zeros(3, 2))


def test_gradients_reach_both_sides():
    im = torch.randn(4, 3, requires_grad=True)
    cap = torch.randn(4, 3, requires_grad=True)
    loss = sum(SelfExpandingTripletLoss(margin=5.0)(im, cap, hardest_negative=False))
    loss.backward()
    assert im.grad.abs().sum() > 0 and cap.grad.abs().sum() > 0
