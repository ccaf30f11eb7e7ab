"""Shortlist and rerank (issue 23 item 1): stage-1 selection, stage-2 scoring of exactly the candidate pairs,
recall defined where the shortlist allows, and the cascade equal to the exact evaluation at K = gallery size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stub_method import write_split

from harness.eval.cascade import Stage1, evaluate_cascade
from harness.eval.cascade_metrics import cascade_recall
from harness.eval.evaluation import EvalSettings, MatrixOutput, SplitSpec, evaluate_models
from harness.eval.rerank import score_pairs
from harness.eval.shortlist import (
    CascadeResult,
    ShortlistError,
    build_shortlist,
    candidate_pairs,
    matrix_blocks,
    top_k_rows,
)
from methods.esl import ESLAdapter

TINY_BERT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


class PairCounter:
    """Wraps an adapter's score and counts the pairs it is asked for."""

    def __init__(self, adapter):
        self.adapter, self.pairs = adapter, 0
        self.inner = adapter.score

    def __call__(self, img, txt):
        self.pairs += len(img) * len(txt)
        return self.inner(img, txt)


def test_top_k_breaks_ties_by_lower_index():
    s = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 5.0]])
    assert top_k_rows(s, 2).tolist() == [[1, 2], [4, 0]]
    assert top_k_rows(s, 5).tolist() == [[1, 2, 4, 3, 0], [4, 0, 1, 2, 3]]


def test_candidate_pairs_are_the_union_of_both_directions():
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((6, 30)).astype(np.float32)
    sl = build_shortlist(matrix_blocks(sims), 6, 30, 3, "m", block_elements=40)  # several bands each way
    assert sl.i2t.tolist() == np.argsort(-sims, axis=1, kind="stable")[:, :3].tolist()
    assert sl.t2i.tolist() == np.argsort(-sims.T, axis=1, kind="stable")[:, :3].tolist()
    indptr, cols = candidate_pairs(sl)
    got = {(i, int(c)) for i in range(6) for c in cols[indptr[i]:indptr[i + 1]]}
    want = {(i, int(c)) for i in range(6) for c in sl.i2t[i]} | {(int(i), j) for j in range(30) for i in sl.t2i[j]}
    assert got == want and len(cols) == len(want)


def test_beyond_the_shortlist_is_not_defined():
    # 2 images x 10 captions; image 1's positives (5..9) are all outside its top-2 shortlist
    sims = np.zeros((2, 10), np.float32)
    sims[0, :5] = [5, 4, 3, 2, 1]
    sims[1, :2] = [9, 8]
    sl = build_shortlist(matrix_blocks(sims), 2, 10, 2, "m")
    indptr, cols = candidate_pairs(sl)
    res = CascadeResult.of(sl, indptr, cols, sims[np.repeat(np.arange(2), np.diff(indptr)), cols])
    out = cascade_recall(res, np.arange(10) // 5)
    assert out["i2t"]["r1"] == 50.0 and out["i2t"]["ceiling"] == 50.0
    assert out["i2t"]["r5"] is None and "beyond the shortlist" in out["i2t"]["not_defined"]["r5"]
    assert out["rsum"] is None and out["i2t"]["meanr"] is None
    assert out["cascade"]["pairs_scored"] == len(cols) == 20  # t2i top-2 of 2 images is every pair


@pytest.fixture
def esl(tmp_path: Path):
    torch.manual_seed(0)
    adapter = ESLAdapter.build("h", "coco", dict(embed_size=256, img_dim=8, bert=TINY_BERT))
    with torch.no_grad():
        for p in adapter.model.sim_vec.parameters():
            p.add_(0.05 * torch.randn_like(p))
    root = write_split(tmp_path / "data", "test", 8, dim=8)
    return adapter, SplitSpec(root, "test", protocols=("recall",))


def test_cascade_at_gallery_size_equals_exact(esl, tmp_path: Path):
    adapter, spec = esl
    settings = EvalSettings(batch_size=16, bootstrap=50)
    exact = evaluate_models([adapter], spec, settings, MatrixOutput.beside(tmp_path / "exact.npy"))
    rng = np.random.default_rng(1)
    np.save(tmp_path / "stage1.npy", rng.standard_normal(exact.sims.shape).astype(np.float32))
    counter = PairCounter(adapter)
    adapter.score = counter
    casc = evaluate_cascade([adapter], spec, settings, Stage1("matrix", "random", tmp_path / "stage1.npy"),
                            k=40, folder=tmp_path / "casc", pair_tile=50)
    assert counter.pairs == 8 * 40 == casc.result.pairs_scored
    want, got = exact.metrics["recall"], casc.metrics["recall"]
    for d in ("i2t", "t2i"):
        for key in ("r1", "r5", "r10", "medr", "meanr"):
            assert got[d][key] == want[d][key], (d, key)
            assert got[d]["tie_optimistic"][key] == want[d]["tie_optimistic"][key]
    assert got["rsum"] == want["rsum"] and got["ci"] == want["ci"]
    assert got["ceiling"] == {"i2t": 100.0, "t2i": 100.0}
    stored = CascadeResult.load(tmp_path / "casc" / "cascade.npz")
    np.testing.assert_allclose(stored.i2t_scores, np.take_along_axis(exact.sims, stored.i2t_index, 1), atol=1e-5)


def test_rerank_resumes_from_its_tile_cache(esl, tmp_path: Path):
    adapter, spec = esl
    img = adapter.encode_images(torch.randn(4, 3, 8))
    txt = adapter.encode_texts(adapter.tokenize(["a cat", "two dogs on grass", "a red car", "x", "the sea"]))
    indptr = np.array([0, 2, 3, 3, 5])
    cols = np.array([0, 4, 2, 1, 3])
    cache = tmp_path / "pairs.h5"
    calls = []
    with pytest.raises(KeyboardInterrupt):
        score_pairs(adapter, img, txt, indptr, cols, pair_tile=2, cache=cache,
                    on_tile=lambda done, n: calls.append(done) or (done == 2 and (_ for _ in ()).throw(
                        KeyboardInterrupt)))
    counter = PairCounter(adapter)
    adapter.score = counter
    resumed = score_pairs(adapter, img, txt, indptr, cols, pair_tile=2, cache=cache)
    assert counter.pairs == 1  # only the last tile (pair 4) is scored again
    full = counter.inner(img, txt).numpy()
    np.testing.assert_allclose(resumed, full[np.repeat(np.arange(4), np.diff(indptr)), cols], atol=1e-6)


def test_self_shortlist_of_a_cross_attention_method_is_refused(esl, tmp_path: Path):
    adapter, spec = esl
    with pytest.raises(ShortlistError, match="no pooled embeddings.*--shortlister esa"):
        evaluate_cascade([adapter], spec, EvalSettings(bootstrap=0), Stage1("self", "self"), k=4)


def test_shortlist_matrix_of_another_split_is_refused(esl, tmp_path: Path):
    adapter, spec = esl
    np.save(tmp_path / "other.npy", np.zeros((3, 15), np.float32))
    with pytest.raises(ShortlistError, match="3 x 15 matrix.*8 images x 40 captions"):
        evaluate_cascade([adapter], spec, EvalSettings(bootstrap=0), Stage1("matrix", "m", tmp_path / "other.npy"),
                         k=4)
