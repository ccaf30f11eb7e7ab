"""Streamed evaluation (--store-matrix never): the rank summary gives every recall number of the dense path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from stub_method import StubAdapter, write_checkpoint, write_split

from harness.eval.evaluation import EvalSettings, MatrixOutput, SplitSpec, evaluate_models, split_data
from harness.eval.metrics.recall import fold_recall, full_recall
from harness.eval.protocols import EvalInputs, run_protocols
from harness.eval.scoring import DEFAULT_TILES, encode_images, encode_texts, score_blocks, tile_grid
from harness.eval.streaming import (
    RankSummary,
    SummaryError,
    iter_tiles,
    keeps_matrix,
    stream_ranks,
    topk_search,
)


class CoarseStub(StubAdapter):
    """Scores rounded to one decimal: many exact ties, with positives among them."""

    def score(self, image_block: torch.Tensor, text_block: torch.Tensor) -> torch.Tensor:
        return torch.round(image_block @ text_block.T * 10) / 10


def _blocks(n_img: int, owner: np.ndarray, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n_img, 4, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img[torch.from_numpy(owner)] + 0.8 * torch.randn(len(owner), 4, generator=g),
                                        dim=-1)
    return img, txt


@pytest.mark.parametrize("uneven", [False, True])
def test_summary_ranks_equal_dense_recall_with_ties(uneven):
    n_img = 40
    owner = np.repeat(np.arange(n_img), 5) if not uneven else np.repeat(np.arange(n_img), [3, 7, 5, 4] * 10)
    adapter = CoarseStub("a", "coco", 8)
    img, txt = _blocks(n_img, owner)
    tiles = {"image_tile": 7, "caption_tile": 33}  # tiles straddle images, folds and caption groups
    dense = score_blocks(adapter, img, txt, **tiles)
    folds = 1 if uneven else 5
    summary = stream_ranks(adapter, img, txt, owner, folds=folds, top_r=6, **tiles)
    expected = full_recall(dense, image_of_caption=owner, bootstrap=50)
    assert expected["ties"]["i2t_affected_queries"] > 0 and expected["ties"]["t2i_affected_queries"] > 0
    inp = EvalInputs(sims=None, image_of_caption=owner, test_split=True, bootstrap=50, ranks=summary)
    got = run_protocols(inp, ["recall"])["recall"]
    assert got == expected  # every number: recalls, medr, meanr, both tie bounds, counts, intervals
    # the top-R lists hold each query's best gallery scores, best first
    want_i = -np.sort(-dense, axis=1)[:, :6]
    np.testing.assert_array_equal(summary.i2t_top_scores, want_i)
    np.testing.assert_array_equal(np.take_along_axis(dense, summary.i2t_top, 1), want_i)
    want_t = -np.sort(-dense.T, axis=1)[:, :6]
    np.testing.assert_array_equal(summary.t2i_top_scores, want_t)
    np.testing.assert_array_equal(np.take_along_axis(dense.T, summary.t2i_top, 1), want_t)
    if not uneven:
        inp5 = EvalInputs(sims=None, image_of_caption=owner, test_split=True, bootstrap=50, ranks=summary)
        from harness.eval.summary_metrics import from_summary

        assert from_summary("coco1k", "COCO 1K", inp5) == fold_recall(dense, 5, 5, bootstrap=50)


def test_summary_round_trips_and_refuses_bad_input(tmp_path):
    owner = np.repeat(np.arange(10), 5)
    adapter = CoarseStub("a", "coco", 8)
    img, txt = _blocks(10, owner)
    summary = stream_ranks(adapter, img, txt, owner, image_tile=4, caption_tile=16)
    summary.save(tmp_path / "ranks.npz")
    back = RankSummary.load(tmp_path / "ranks.npz")
    assert back.shape == (10, 50) and back.folds == 1
    np.testing.assert_array_equal(back.t2i_ge, summary.t2i_ge)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(SummaryError, match="other.npz: not a rank summary"):
        RankSummary.load(tmp_path / "other.npz")
    with pytest.raises(SummaryError, match="grouped by image"):
        stream_ranks(adapter, img, txt, owner[::-1].copy())
    with pytest.raises(SummaryError, match="equal folds"):
        stream_ranks(adapter, img, txt, owner, folds=3)


def test_keeps_matrix_modes():
    assert keeps_matrix("auto", 1000, 5000) and keeps_matrix("always", 10**6, 5 * 10**6)
    assert not keeps_matrix("auto", 20000, 100000) and not keeps_matrix("never", 2, 10)
    assert not keeps_matrix("auto", 100, 500, limit=4 * 100 * 500 - 1) and keeps_matrix("auto", 100, 500, 200000)
    with pytest.raises(ValueError, match="--store-matrix sometimes"):
        keeps_matrix("sometimes", 1, 5)


def test_topk_search_is_exact_inner_product_top_k():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((30, 8)).astype(np.float32), rng.standard_normal((1000, 8)).astype(np.float32)
    scores, idx = topk_search(q, g, 12, backend="torch", block=64)
    full = q @ g.T
    want = np.argsort(-full, axis=1, kind="stable")[:, :12]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="k=1001"):
        topk_search(q, g, 1001)
    with pytest.raises(ValueError, match="backend 'annoy'"):
        topk_search(q, g, 3, backend="annoy")


def test_evaluation_never_stores_matrix_and_matches_dense(tmp_path, monkeypatch):
    """The one evaluation path both ways on COCO-shaped folds: the same recall / COCO 1K numbers; ranks.npz
    instead of sims.npy; protocols that need the matrix say why they are not defined."""
    root = write_split(tmp_path / "data", "testall", 50)
    adapter = StubAdapter.load_official(write_checkpoint(tmp_path / "stub.pth"))
    spec = SplitSpec(tmp_path / "data", "testall", "coco", test_split=True, protocols=("coco1k", "coco5k", "eccv"))
    results = {}
    for mode in ("always", "never"):
        out = MatrixOutput.job(tmp_path / mode)
        settings = EvalSettings(store_matrix=mode, image_tile=16, caption_tile=64, bootstrap=20)
        results[mode] = evaluate_models([adapter], spec, settings, out)
    dense, streamed = results["always"], results["never"]
    assert (tmp_path / "always" / "sims.npy").is_file() and not (tmp_path / "always" / "ranks.npz").exists()
    assert (tmp_path / "never" / "ranks.npz").is_file() and not (tmp_path / "never" / "sims.npy").exists()
    assert streamed.sims is None and streamed.shape == dense.shape == (50, 250)
    assert streamed.metrics["recall"] == dense.metrics["recall"]
    # COCO 1K / 5K need 5000 images: not defined both ways with the same reason
    assert streamed.metrics["coco1k"] == dense.metrics["coco1k"]
    assert json.dumps(streamed.metrics, sort_keys=True)  # JSON-ready
    assert root.is_dir()


def test_streamed_protocols_without_ranks_say_why():
    owner = np.repeat(np.arange(5000), 5)
    summary_less = EvalInputs(sims=None, image_of_caption=owner, test_split=True, dataset="coco")
    from harness.eval.summary_metrics import from_summary

    assert from_summary("eccv", "ECCV Caption", summary_less)["defined"] is False
    owner_small = np.repeat(np.arange(10), 5)
    adapter = CoarseStub("a", "coco", 8)
    img, txt = _blocks(10, owner_small)
    summary = stream_ranks(adapter, img, txt, owner_small)
    inp = EvalInputs(sims=None, image_of_caption=owner_small, test_split=True, ranks=summary)
    assert "needs the COCO 5K top lists" in from_summary("eccv", "ECCV Caption", inp)["reason"]
    reason = from_summary("recall50", "R@50 (a plugged protocol)", inp)["reason"]
    assert "needs the full similarity matrix" in reason and "--store-matrix always" in reason
    assert "fold counts" in from_summary("coco1k", "COCO 1K", inp)["reason"]


@pytest.mark.slow
def test_rehearsal_20000_by_100000_streamed(tmp_path):
    """A 20,000-image, 100,000-caption gallery (an 8 GB matrix) with the stub embedding adapter: --store-matrix
    auto streams it (above the 4 GB limit), writes ranks.npz and no matrix, and the ranks of sampled queries equal
    their ranks counted on their full rows and columns. Peak RSS is measured by bench/streaming.py."""
    n = 20000
    write_split(tmp_path / "data", "test", n, dim=8)
    adapter = StubAdapter.load_official(write_checkpoint(tmp_path / "stub.pth"))
    out = MatrixOutput.job(tmp_path / "job")
    spec = SplitSpec(tmp_path / "data", "test", None, protocols=())
    result = evaluate_models([adapter], spec, EvalSettings(bootstrap=0), out)
    assert result.sims is None and result.shape == (n, 5 * n)
    assert not out.matrix.exists() and out.ranks.is_file()
    summary = RankSummary.load(out.ranks)
    images, captions, owner = split_data(adapter, spec)
    img, txt = encode_images(adapter, images), encode_texts(adapter, captions)
    grid = tile_grid(n, 5 * n, *DEFAULT_TILES["embedding"])
    rows = np.concatenate([v for (a, _, _, _), v in iter_tiles(adapter, img, txt, [t for t in grid if t[0] == 0])],
                          axis=1)  # the first image tile's rows against every caption, scored as the tiles were
    cols = np.concatenate([v for (_, _, c, _), v in iter_tiles(adapter, img, txt, [t for t in grid if t[2] == 0])],
                          axis=0)  # the first caption tile's columns against every image
    rng = np.random.default_rng(0)
    for i in rng.choice(len(rows), 20, replace=False):  # an image: its best own caption against all captions
        row, own = rows[i], rows[i, 5 * i:5 * i + 5]
        assert summary.i2t_gt[i] == np.count_nonzero(row > own.max())
        assert summary.i2t_ge[i] - summary.i2t_own_ties[i] == np.count_nonzero(row >= own.max()) - \
            np.count_nonzero(own == own.max())
        np.testing.assert_array_equal(summary.i2t_top_scores[i], -np.sort(-row)[:10])
    for j in rng.choice(cols.shape[1], 20, replace=False):  # a caption: its own image against all images
        col = cols[:, j]
        assert summary.t2i_gt[j] == np.count_nonzero(col > col[owner[j]])
        assert summary.t2i_ge[j] == np.count_nonzero(col >= col[owner[j]])
        np.testing.assert_array_equal(summary.t2i_top_scores[j], -np.sort(-col)[:10])
    assert result.metrics["recall"]["i2t"]["queries"] == n and result.metrics["recall"]["t2i"]["queries"] == 5 * n


@pytest.mark.parametrize("uneven", [False, True])
def test_paired_significance_values_from_ranks_equal_the_matrix(tmp_path, uneven):
    from harness.eval.protocols import PROTOCOLS
    from harness.report.significance import per_image_rsum, per_image_rsum_from_ranks

    n_img = 40
    owner = np.repeat(np.arange(n_img), [3, 7, 5, 4] * 10) if uneven else np.repeat(np.arange(n_img), 5)
    adapter = CoarseStub("a", "coco", 8)
    img, txt = _blocks(n_img, owner, seed=3)
    dense = score_blocks(adapter, img, txt, image_tile=9, caption_tile=31)
    stream_ranks(adapter, img, txt, owner, folds=1 if uneven else 5, image_tile=9,
                 caption_tile=31).save(tmp_path / "ranks.npz")
    v, strata = per_image_rsum_from_ranks(tmp_path / "ranks.npz", PROTOCOLS["recall"].paired)
    want, _ = per_image_rsum(dense, "recall", owner=owner)
    np.testing.assert_array_equal(v, want)
    assert strata is None
    if uneven:
        assert per_image_rsum_from_ranks(tmp_path / "ranks.npz", PROTOCOLS["coco1k"].paired) is None  # no fold counts
    else:
        v, strata = per_image_rsum_from_ranks(tmp_path / "ranks.npz", PROTOCOLS["coco1k"].paired)
        want, want_strata = per_image_rsum(dense, "coco1k")
        np.testing.assert_array_equal(v, want)
        np.testing.assert_array_equal(strata, want_strata)


def test_topk_search_faiss_backend_agrees_with_torch():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    q, g = rng.standard_normal((40, 16)).astype(np.float32), rng.standard_normal((3000, 16)).astype(np.float32)
    fs, fi = topk_search(q, g, 20, backend="faiss")
    ts, ti = topk_search(q, g, 20, backend="torch", block=512)
    np.testing.assert_array_equal(fi, ti)
    np.testing.assert_allclose(fs, ts, rtol=1e-5, atol=1e-5)


class NearStub(StubAdapter):
    """Captions near their own image ("caption j of image i"), scores rounded to 1/20: recalls and ECCV mAP@R far
    from chance and many exact ties, positives among them."""

    vectors: torch.Tensor

    def encode_texts(self, texts):
        noise = super().encode_texts(texts)
        own = torch.tensor([int(t.rsplit(" ", 1)[1]) for t in texts])
        return torch.nn.functional.normalize(self.vectors[own] + 0.9 * noise, dim=-1)

    def score(self, image_block, text_block):
        return torch.round(image_block @ text_block.T * 20) / 20


def test_streamed_eccv_and_cxc_equal_the_matrix(tmp_path):
    """A COCO 5K evaluation streamed (--store-matrix never) gives ECCV Caption and CxC values equal to the dense
    path's, both tie bounds and the intervals included, with rows and columns in a data order that is not
    eccv_caption's (testall_capids.txt: images shuffled, captions reversed within each image)."""
    from harness.eval.metrics.ids import CAPID_FILE, canonical_ids

    folder = write_split(tmp_path / "data", "testall", 5000)
    canon = canonical_ids()
    perm = np.random.default_rng(1).permutation(5000)
    caps = canon.caption_ids.reshape(5000, 5)[perm][:, ::-1].ravel()
    (folder / CAPID_FILE).write_text("\n".join(map(str, caps)) + "\n")
    adapter = NearStub.load_official(write_checkpoint(tmp_path / "stub.pth"))
    adapter.vectors = adapter.encode_images(torch.from_numpy(np.load(folder / "testall_ims.npy")))
    spec = SplitSpec(tmp_path / "data", "testall", "coco", test_split=True,
                     protocols=("coco1k", "coco5k", "eccv", "cxc"))
    got = {}
    for mode in ("always", "never"):
        settings = EvalSettings(store_matrix=mode, bootstrap=30, image_tile=700, caption_tile=3000)
        got[mode] = evaluate_models([adapter], spec, settings, MatrixOutput.job(tmp_path / mode)).metrics
    dense, streamed = got["always"], got["never"]
    eccv = dense["eccv"]
    assert eccv["i2t"]["coco1k_r10"] > 40 and eccv["t2i"]["eccv_r10"] > 15 and eccv["i2t"]["eccv_map_at_r"] > 0.2
    assert eccv["ids"]["source"].endswith(CAPID_FILE)
    assert all(n > 0 for d in eccv["tie_affected_queries"].values() for n in d.values())  # ties everywhere
    for name in ("recall", "coco1k", "coco5k", "eccv", "cxc"):
        assert json.dumps(streamed[name], sort_keys=True) == json.dumps(dense[name], sort_keys=True), name
    back = RankSummary.load(tmp_path / "never" / "ranks.npz")  # the top lists travel with the summary
    inp = EvalInputs(sims=None, image_of_caption=np.arange(25000) // 5, test_split=True, dataset="coco",
                     ids_dir=folder, ranks=back, bootstrap=30)
    assert run_protocols(inp, ["eccv"])["eccv"]["i2t"] == eccv["i2t"]
    back.coco = None
    assert "COCO 5K top lists" in run_protocols(inp, ["eccv"])["eccv"]["reason"]
