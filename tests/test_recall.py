"""Vectorized recall vs the official per-query argsort loop, on random and tie-heavy matrices."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.eval.metrics.loop_reference import loop_i2t_ranks, loop_summary, loop_t2i_ranks
from harness.eval.metrics.recall import (
    MatrixError,
    fold_recall,
    fold_slices,
    full_recall,
    i2t_ranks,
    summarize,
    t2i_ranks,
)
from harness.eval.protocols import compute_protocol


def random_sims(n_img: int, seed: int, levels: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if levels:  # few distinct values: many exact ties
        return rng.integers(0, levels, size=(n_img, 5 * n_img)).astype(np.float32)
    sims = rng.standard_normal((n_img, 5 * n_img)).astype(np.float32)
    for i in range(n_img):
        sims[i, 5 * i:5 * i + 5] += 1.5
    return sims


@settings(max_examples=40, deadline=None)
@given(n_img=st.integers(2, 30), seed=st.integers(0, 10_000))
def test_tie_free_matrices_match_the_loop_exactly(n_img, seed):
    sims = random_sims(n_img, seed)
    assert np.array_equal(i2t_ranks(sims).optimistic, loop_i2t_ranks(sims))
    assert np.array_equal(i2t_ranks(sims).pessimistic, loop_i2t_ranks(sims))
    assert np.array_equal(t2i_ranks(sims).optimistic, loop_t2i_ranks(sims))
    ours = full_recall(sims)
    for direction, loop in (("i2t", loop_i2t_ranks), ("t2i", loop_t2i_ranks)):
        r1, r5, r10, medr, meanr = loop_summary(loop(sims))
        got = ours[direction]
        assert (got["r1"], got["r5"], got["r10"], got["medr"]) == (r1, r5, r10, medr)
        assert got["meanr"] == pytest.approx(meanr)
        assert got["tie_affected_queries"] == 0


@settings(max_examples=40, deadline=None)
@given(n_img=st.integers(2, 25), seed=st.integers(0, 10_000), levels=st.integers(2, 6))
def test_official_rank_lies_between_tie_bounds(n_img, seed, levels):
    sims = random_sims(n_img, seed, levels)
    for ranks, loop in ((i2t_ranks(sims), loop_i2t_ranks(sims)), (t2i_ranks(sims), loop_t2i_ranks(sims))):
        assert np.all(ranks.optimistic <= loop)
        assert np.all(loop <= ranks.pessimistic)
        # a query whose bounds agree has the official rank whatever the tie order
        same = ranks.optimistic == ranks.pessimistic
        assert np.array_equal(loop[same], ranks.optimistic[same])


def test_pessimistic_bound_is_attained_by_worst_tie_order():
    # image 0: its captions score 1, two negatives also score 1 -> official rank in [0, 2]
    sims = np.zeros((2, 10), np.float32)
    sims[0, :5] = 1.0
    sims[0, 5:7] = 1.0
    ranks = i2t_ranks(sims)
    assert ranks.optimistic[0] == 0 and ranks.pessimistic[0] == 2
    # worst order: negatives first; best-ranked positive after both tied negatives
    order = np.array([5, 6, 0, 1, 2, 3, 4, 7, 8, 9])
    worst = min(int(np.where(order == j)[0][0]) for j in range(5))
    assert worst == ranks.pessimistic[0]


def test_fold_recall_is_mean_of_folds_and_cuts_diagonal_blocks():
    sims = random_sims(50, 3)
    slices = fold_slices(50)
    assert slices[1] == (slice(10, 20), slice(50, 100))
    folds = [full_recall(sims[r, c]) for r, c in slices]
    got = fold_recall(sims)
    assert got["rsum"] == pytest.approx(np.mean([f["rsum"] for f in folds]))
    assert got["i2t"]["medr"] == pytest.approx(np.mean([f["i2t"]["medr"] for f in folds]))
    assert got["rsum"] == pytest.approx(sum(got[d][f"r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))


def test_summary_definitions():
    ranks = np.array([0, 0, 3, 7, 20, 1])
    s = summarize(ranks)
    assert s["r1"] == pytest.approx(100 * 2 / 6) and s["r5"] == pytest.approx(100 * 4 / 6)
    assert s["medr"] == np.floor(np.median(ranks)) + 1 == 3.0  # median 2.0 (mean of 1 and 3)
    assert s["meanr"] == pytest.approx(ranks.mean() + 1)


def test_nan_and_shape_errors():
    sims = random_sims(4, 0)
    sims[1, 3] = np.nan
    with pytest.raises(MatrixError, match="1 NaN or infinite"):
        full_recall(sims)
    for bad in (np.inf, -np.inf):  # in the last block of rows and in a COCO 1K-style fold
        big = random_sims(40, 1)
        big[39, 196] = bad
        with pytest.raises(MatrixError, match="1 NaN or infinite"):
            full_recall(big)
        with pytest.raises(MatrixError, match="fold 4 of the similarity matrix: 1 NaN"):
            fold_recall(big)
    huge = random_sims(40, 2) * np.float32(3e37)  # finite scores whose sum overflows: accepted
    assert np.isfinite(full_recall(huge)["rsum"])
    with pytest.raises(MatrixError, match="captions per image"):
        full_recall(np.zeros((4, 19), np.float32))
    with pytest.raises(MatrixError, match="COCO 5K needs 5000 images, this matrix has 4"):
        compute_protocol("coco5k", random_sims(4, 0))
    with pytest.raises(MatrixError, match="unknown protocol 'coco2k'.*Did you mean 'coco[15]k'"):
        compute_protocol("coco2k", random_sims(4, 0))


def test_float64_and_float32_give_same_ranks():
    sims = random_sims(20, 7).astype(np.float64)
    assert full_recall(sims)["rsum"] == full_recall(sims.astype(np.float32))["rsum"]


@settings(max_examples=25, deadline=None)
@given(counts=st.lists(st.integers(1, 7), min_size=2, max_size=12), seed=st.integers(0, 1000))
def test_uneven_captions_per_image_match_a_loop(counts, seed):
    owner = np.repeat(np.arange(len(counts)), counts)
    sims = np.random.default_rng(seed).standard_normal((len(counts), len(owner))).astype(np.float32)
    i2t, t2i = i2t_ranks(sims, image_of_caption=owner), t2i_ranks(sims, image_of_caption=owner)
    for i in range(len(counts)):
        order = np.argsort(sims[i])[::-1]
        assert i2t.optimistic[i] == min(int(np.where(order == j)[0][0]) for j in np.where(owner == i)[0])
    for j in range(len(owner)):
        assert t2i.optimistic[j] == int(np.where(np.argsort(sims[:, j])[::-1] == owner[j])[0][0])


def test_caption_map_must_be_grouped():
    sims = np.zeros((2, 4), np.float32)
    with pytest.raises(MatrixError, match="grouped by image"):
        full_recall(sims, image_of_caption=np.array([0, 1, 0, 1]))


def test_bootstrap_intervals_contain_the_value_and_shrink_with_more_queries():
    small = compute_protocol("recall", random_sims(40, 1), bootstrap=500)
    big = compute_protocol("recall", random_sims(400, 1), bootstrap=500)
    for res in (small, big):
        for key, (lo, hi) in res["ci"].items():
            d, _, m = key.partition(".")
            value = res["rsum"] if key == "rsum" else res[d][m]
            assert lo <= value <= hi, key
    width = {k: v[1] - v[0] for k, v in small["ci"].items()}
    assert big["ci"]["rsum"][1] - big["ci"]["rsum"][0] < width["rsum"]
    again = compute_protocol("recall", random_sims(40, 1), bootstrap=500)
    assert again["ci"] == small["ci"]  # seeded


def test_fold_intervals_use_folds_as_strata():
    res = fold_recall(random_sims(50, 2), bootstrap=300)
    lo, hi = res["ci"]["rsum"]
    assert lo <= res["rsum"] <= hi
