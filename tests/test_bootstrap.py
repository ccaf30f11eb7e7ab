"""Bootstrap intervals and paired tests: the count-matrix resampling vs explicit resampling loops."""

import numpy as np
import pytest

from harness.eval.metrics import bootstrap as bs
from harness.eval.metrics.bootstrap import (
    QueryScores,
    bootstrap_ci,
    compare,
    paired_bootstrap,
    paired_bootstrap_p,
    resample_weights,
    rsum_ci,
    summarize,
)


def _draws(n_units, n, seed):
    """The index draws resample_weights makes (same generator, same chunking)."""
    rng = np.random.default_rng(seed)
    out, done = [], 0
    while done < n:
        c = min(bs._CHUNK, n - done)
        out.append(rng.integers(0, n_units, size=(c, n_units)))
        done += c
    return np.concatenate(out)


def test_weights_are_the_resampled_index_counts():
    n_units, n = 37, 450  # more than one chunk
    draws = _draws(n_units, n, seed=3)
    weights = np.concatenate(list(resample_weights(n_units, n, seed=3)))
    assert weights.shape == (n, n_units) and (weights.sum(axis=1) == n_units).all()
    for b in (0, 199, 200, 449):
        assert np.array_equal(weights[b], np.bincount(draws[b], minlength=n_units))


def test_interval_matches_an_explicit_loop_and_is_seeded():
    rng = np.random.default_rng(0)
    scores = rng.random(800) * 100.0  # all distinct: the units themselves are resampled
    draws = _draws(800, 1000, seed=5)
    means = np.array([scores[d].mean() for d in draws])
    lo, hi = bootstrap_ci(scores, n=1000, seed=5)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert bootstrap_ci(scores, n=1000, seed=5) == (lo, hi)
    assert bootstrap_ci(scores, n=1000, seed=6) != (lo, hi)


def test_hit_indicators_are_resampled_by_category_with_the_same_distribution():
    """0/100 hits take two values: the draws are made per category (a multinomial), which is the query
    bootstrap in distribution: the resampled mean is 100/Q times a Binomial(Q, p) count."""
    rng = np.random.default_rng(0)
    q, p = 800, 0.4
    hits = 100.0 * (rng.random(q) < p)
    p_hat = hits.mean() / 100.0
    (means,) = bs.resampled_means([(hits, None)], q, n=20000, seed=5)
    counts = means * q / 100.0
    assert np.allclose(counts, np.round(counts))  # whole numbers of hits drawn
    assert counts.mean() == pytest.approx(q * p_hat, rel=0.005)
    assert counts.var() == pytest.approx(q * p_hat * (1 - p_hat), rel=0.05)
    explicit = np.array([hits[d].mean() for d in _draws(q, 4000, seed=9)])
    lo, hi = bootstrap_ci(hits, n=4000, seed=5)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(explicit, [2.5, 97.5])), abs=0.75)
    half = 1.96 * np.sqrt(100 * 100 * p_hat * (1 - p_hat) / q)  # normal approximation of a proportion in percent
    assert hi - lo == pytest.approx(2 * half, rel=0.08)
    assert bootstrap_ci(hits, n=1000, seed=5) == bootstrap_ci(hits, n=1000, seed=5)


def test_category_draws_keep_strata_and_joint_units():
    """Per-image rsum contributions (few distinct values) with COCO 1K-like strata: category draws give the
    same interval as explicit per-stratum draws of images with their captions, up to Monte Carlo error."""
    rng = np.random.default_rng(4)
    n_img = 500
    i2t = rng.integers(0, 4, n_img) * 100.0
    t2i = rng.integers(0, 4, 5 * n_img) * 100.0
    units, strata = np.arange(5 * n_img) // 5, np.arange(n_img) // 100
    lo, hi = rsum_ci(i2t, t2i, i2t_units=np.arange(n_img), t2i_units=units, strata=strata, n=4000, seed=1)
    draw_rng, ref = np.random.default_rng(2), []
    for _ in range(4000):
        d = np.concatenate([s * 100 + draw_rng.integers(0, 100, 100) for s in range(5)])
        ref.append(i2t[d].mean() + t2i[(d[:, None] * 5 + np.arange(5)).ravel()].mean())
    assert (lo, hi) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])), abs=1.5)
    assert hi - lo == pytest.approx(np.subtract(*np.percentile(ref, [97.5, 2.5])), rel=0.06)


def test_strata_keep_group_sizes():
    strata = np.repeat(np.arange(5), [10, 20, 30, 40, 50])
    w = np.concatenate(list(resample_weights(150, 300, seed=0, strata=strata)))
    for s, size in enumerate([10, 20, 30, 40, 50]):
        assert (w[:, strata == s].sum(axis=1) == size).all()
    values = np.where(strata == 0, 100.0, 0.0)  # all the signal in one fixed-size stratum
    lo, hi = bootstrap_ci(values, n=200, seed=0, strata=strata)
    assert lo == hi == pytest.approx(100.0 * 10 / 150)


def test_joint_rsum_resamples_images_with_their_captions():
    rng = np.random.default_rng(1)
    i2t = rng.integers(0, 4, 300) * 100.0  # per image: hits at 1, 5, 10 summed
    t2i = rng.integers(0, 4, 1500) * 100.0
    units = np.arange(1500) // 5
    lo, hi = rsum_ci(i2t, t2i, i2t_units=np.arange(300), t2i_units=units, n=500, seed=2)
    draws = _draws(300, 500, seed=2)
    ref = [i2t[d].mean() + t2i[(d[:, None] * 5 + np.arange(5)).ravel()].mean() for d in draws]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])))
    ind = rsum_ci(i2t, t2i, n=500, seed=2)  # independent directions: a different (valid) interval
    assert ind[0] < i2t.mean() + t2i.mean() < ind[1]


def test_paired_test():
    rng = np.random.default_rng(0)
    a = 100.0 * (rng.random(2000) < 0.5)
    assert paired_bootstrap_p(a, a.copy(), n=1000) == 1.0
    better = np.where(rng.random(2000) < 0.3, 100.0, a)  # B fixes 30% of A's misses
    res = paired_bootstrap(better, a, n=1000, seed=0)
    assert res["diff"] > 10 and res["p_value"] == pytest.approx(1 / 1001)
    assert res["ci95"][0] > 0
    noise_b = np.where(rng.random(2000) < 0.02, 100.0 - a, a)  # 2% of queries flipped either way
    p = paired_bootstrap_p(noise_b, a, n=1000, seed=0)
    assert p == paired_bootstrap_p(a, noise_b, n=1000, seed=0)  # two-sided: symmetric
    assert p > 0.05
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap(a, a[:-1])


def _group(direction, family, values, units=None, strata=None):
    return QueryScores(direction, family, {f"r{k}": values[:, i] for i, k in enumerate((1, 5, 10))},
                       {f"r{k}": values[:, i] for i, k in enumerate((1, 5, 10))}, units=units, n_units=100,
                       strata=strata)


def test_summarize_and_compare_shapes():
    rng = np.random.default_rng(0)
    i2t = 100.0 * (rng.random((100, 3)) < [0.3, 0.6, 0.8])
    t2i = 100.0 * (rng.random((500, 3)) < [0.2, 0.5, 0.7])
    groups = [_group("i2t", "coco5k", i2t, np.arange(100)), _group("t2i", "coco5k", t2i, np.arange(500) // 5)]
    out = summarize(groups, n=300, seed=0)
    assert out["i2t"]["coco5k_r1"] == pytest.approx(i2t[:, 0].mean())
    assert out["rsum"]["coco5k"] == pytest.approx(i2t.mean(0).sum() + t2i.mean(0).sum())
    lo, hi = out["ci95"]["rsum"]["coco5k"]
    assert lo < out["rsum"]["coco5k"] < hi
    assert out["queries"] == {"i2t": {"coco5k": 100}, "t2i": {"coco5k": 500}}
    assert out["tie_affected_queries"]["i2t"]["coco5k"] == 0
    # resampled jointly with the other metrics of its units; alone: the same bootstrap up to Monte Carlo error
    lo5, hi5 = out["ci95"]["i2t"]["coco5k_r5"]
    assert lo5 < i2t[:, 1].mean() < hi5
    assert [lo5, hi5] == pytest.approx(list(bootstrap_ci(i2t[:, 1], n=300, seed=0)), abs=3.0)
    assert "ci95" not in summarize(groups, n=0)
    worse = [_group("i2t", "coco5k", np.where(rng.random((100, 3)) < 0.5, 0.0, i2t), np.arange(100))]
    cmp = compare(groups, worse, n=300, seed=0)
    assert set(cmp) == {"i2t"} and cmp["i2t"]["coco5k_r1"]["diff"] > 0
    assert 0 < cmp["i2t"]["coco5k_r1"]["p_value"] <= 1
