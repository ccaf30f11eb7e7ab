"""CxC: CSV ground truth vs eccv_caption's packaged cxc jsons, and every task vs vse_infty-style loops."""

import json
import shutil
import warnings

import numpy as np
import pytest

from harness.eval.metrics.cxc import (
    ASSET_DIR,
    CxcError,
    cxc_ground_truth,
    cxc_protocol,
    intra_counts,
    read_cxc_csv,
    unimodal_reason,
)
from harness.eval.metrics.eccv import package_gt
from harness.eval.metrics.ids import canonical_ids

warnings.filterwarnings("ignore", message="failed to import `ujson`")


def _pairs(pos):
    q, g, _ = pos.flat(pos.queries())
    return set(zip(q.tolist(), g.tolist()))


def test_csv_ground_truth_is_eccv_captions_cxc():
    gt, pkg = cxc_ground_truth(), package_gt("cxc")
    assert _pairs(gt.i2t) == _pairs(pkg.i2t)
    assert _pairs(gt.t2i) == _pairs(pkg.t2i)
    assert len(_pairs(gt.i2t)) == 35585
    assert len(gt.i2t.queries()) == 5000 and len(gt.t2i.queries()) == 24972


def test_intra_modal_ground_truth_follows_the_rules():
    gt = cxc_ground_truth()
    cap, img, score = read_cxc_csv(ASSET_DIR / "sts_test.csv", "sts")
    assert len(score) == 44045
    t2t = _pairs(gt.t2t)
    assert all((j, j) not in t2t for j in range(0, 25000, 97))  # never the query itself
    assert {(10, 11), (10, 14), (14, 10)} <= t2t  # the other captions of the same image
    canon = canonical_ids()
    pos_of = {int(c): n for n, c in enumerate(canon.caption_ids)}
    strong = [(pos_of[a], pos_of[b]) for a, b, s in zip(cap, img, score) if s >= 3.0]
    weak = [(pos_of[a], pos_of[b]) for a, b, s in zip(cap, img, score) if s < 3.0]
    assert all(p in t2t and p[::-1] in t2t for p in strong)  # a rating counts for both members
    assert all(p not in t2t for p in weak if p[0] // 5 != p[1] // 5)  # (no STS pair is rated twice)
    assert len(gt.t2t.queries()) == 25000
    i1, i2, s = read_cxc_csv(ASSET_DIR / "sis_test.csv", "sis")
    img_pos = {int(i): n for n, i in enumerate(canon.image_ids)}
    queries = {img_pos[a] for a, sc in zip(i1, s) if sc >= 2.5} | {img_pos[b] for b, sc in zip(i2, s) if sc >= 2.5}
    assert set(gt.i2i.queries().tolist()) == queries


def _loop_intra_rank(emb: np.ndarray, idx: int, positives: list[int]) -> int:
    """vse_infty's cxc_intra for one query: self-similarity 0, argsort[::-1], best positive position."""
    sims = emb[idx] @ emb.T
    sims[idx] = 0
    inds = np.argsort(sims)[::-1]
    return min(int(np.where(inds == p)[0][0]) for p in positives)


def test_intra_ranks_match_the_official_loop():
    gt = cxc_ground_truth()
    rng = np.random.default_rng(0)
    text = rng.standard_normal((25000, 6))  # float64: no ties
    images = rng.standard_normal((5000, 6))
    for emb, pos in ((text, gt.t2t), (images, gt.i2i)):
        queries = rng.choice(pos.queries(), 150, replace=False)
        gt_c, ge_c, tied = intra_counts(emb, pos, queries)
        for k, q in enumerate(queries):
            positives = pos.indices[pos.indptr[q]:pos.indptr[q + 1]].tolist()
            assert gt_c[k] == _loop_intra_rank(emb, q, positives) == ge_c[k] - tied[k]


def test_self_similarity_is_zero_not_excluded():
    """vse_infty keeps the query (score 0) in the gallery: it outranks positives with negative scores."""
    gt = cxc_ground_truth()
    emb = np.zeros((5000, 2))
    emb[:, 0] = 1.0
    q = int(gt.i2i.queries()[0])
    emb[q] = [-1.0, 0.0]  # every other image scores -1 with it, the query itself 0 after the rule
    gt_c, ge_c, tied = intra_counts(emb, gt.i2i, np.array([q]))
    n_pos = gt.i2i.sizes[q]
    assert tied[0] == n_pos
    assert gt_c[0] == 1  # only the self item (0 > -1)
    assert ge_c[0] - tied[0] == 5000 - n_pos  # the self item and every tied negative, pessimistically


@pytest.fixture(scope="module")
def sims():
    rng = np.random.default_rng(7)
    s = rng.standard_normal((5000, 25000), dtype=np.float32)
    cols = np.arange(25000)
    s[cols // 5, cols] += 2.0
    return s


def _loop_inter_rank(scores: np.ndarray, positives: list[int]) -> int:
    """vse_infty's cxc_inter for one query: argsort[::-1], best positive position."""
    inds = np.argsort(scores)[::-1]
    return min(int(np.where(inds == p)[0][0]) for p in positives)


def test_protocol_matches_the_official_loops(sims):
    from harness.eval.metrics.cxc import cxc_query_scores

    rng = np.random.default_rng(1)
    images = rng.standard_normal((5000, 8))
    text = np.repeat(images, 5, axis=0) + 0.3 * rng.standard_normal((25000, 8))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    canon = canonical_ids()
    got = cxc_protocol(sims, canon, image_emb=images, bootstrap=0)
    assert got["t2t"] == {"defined": False, "reason": "no uni-modal text embeddings were given for this method"}
    gt = cxc_ground_truth()
    groups = {g.direction: g for g in cxc_query_scores(sims, canon, text, images)}
    for d in ("i2t", "t2i", "i2i"):
        for k in (1, 5, 10):
            assert got[d][f"cxc_r{k}"] == pytest.approx(groups[d].values[f"r{k}"].mean())
    assert groups["t2t"].values["r1"].mean() > 30  # the embeddings carry real signal
    checks = (("i2t", lambda q: sims[q], gt.i2t), ("t2i", lambda q: sims[:, q], gt.t2i),
              ("t2t", None, gt.t2t), ("i2i", None, gt.i2i))
    for task, row, pos in checks:
        g = groups[task]
        assert g.n_queries == len(pos.queries())
        for k in rng.choice(g.n_queries, 60, replace=False):
            q = pos.queries()[k]
            positives = pos.indices[pos.indptr[q]:pos.indptr[q + 1]].tolist()
            if row is None:
                rank = _loop_intra_rank(text if task == "t2t" else images, q, positives)
            else:
                rank = _loop_inter_rank(row(q), positives)
            assert [g.values[f"r{c}"][k] for c in (1, 5, 10)] == [100.0 * (rank < c) for c in (1, 5, 10)]
    assert got["queries"]["i2i"]["cxc"] == len(gt.i2i.queries())
    assert got["queries"]["t2i"]["cxc"] == 24972
    json.dumps(got)


def test_not_defined_for_cross_attention(sims):
    got = cxc_protocol(sims, canonical_ids(), scoring="pairwise", method="ESL", bootstrap=0)
    for task in ("t2t", "i2i"):
        assert got[task]["defined"] is False
        assert "cross attention" in got[task]["reason"] and "ESL" in got[task]["reason"]
        assert not any(isinstance(v, float) for v in got[task].values())
    assert "cxc_r1" in got["i2t"] and "ci95" not in got
    with pytest.raises(CxcError, match="cross-attention"):
        cxc_protocol(sims, canonical_ids(), text_emb=np.zeros((25000, 2)), scoring="pairwise", bootstrap=0)
    assert unimodal_reason("embedding") is None


def test_embeddings_follow_the_data_folder_order(tmp_path):
    """Image embeddings given in the data folder's image order are mapped like the matrix rows."""
    canon = canonical_ids()
    rng = np.random.default_rng(4)
    images = rng.standard_normal((5000, 3))
    base = cxc_protocol(None, canon, image_emb=images, bootstrap=0)
    perm = rng.permutation(5000)
    np.savetxt(tmp_path / "testall_ids.txt", np.repeat(canon.image_ids[perm], 5), fmt="%d")
    with pytest.warns(UserWarning, match="testall_capids.txt not found"):
        moved = cxc_protocol(None, tmp_path, image_emb=images[perm], bootstrap=0)
    assert moved["i2i"] == pytest.approx(base["i2i"])
    assert "testall_ids.txt" in moved["ids"]["source"] and moved["ids"]["warning"]
    unmapped = cxc_protocol(None, canon, image_emb=images[perm], bootstrap=0)
    assert unmapped["i2i"] != base["i2i"]


def test_bad_csv_names_file_and_line(tmp_path):
    for name in ("sits_test.csv", "sts_test.csv", "sis_test.csv"):
        shutil.copy(ASSET_DIR / name, tmp_path / name)
    lines = (tmp_path / "sis_test.csv").read_text().splitlines()
    lines[3] = lines[3].replace("COCO_val2014_", "COCO_train2014_")
    (tmp_path / "sis_test.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(CxcError, match=r"sis_test.csv:4: expected 'COCO_val2014_<id>.jpg'"):
        cxc_ground_truth(str(tmp_path))
    (tmp_path / "sts_test.csv").write_text("a,b,c\n")
    with pytest.raises(CxcError, match="sts_test.csv: header"):
        read_cxc_csv(tmp_path / "sts_test.csv", "sts")
    (tmp_path / "sits_test.csv").unlink()
    with pytest.raises(CxcError, match="sits_test.csv"):
        cxc_ground_truth(str(tmp_path))


def test_bundled_csvs_are_the_released_files():
    import hashlib

    want = {"sits_test.csv": "f92fd6d36329fb52fd5429eb5c2211f0ab3ad86bb737323f415375a144697ce6",
            "sis_test.csv": "01f2ceb349414aff84065c0548837d1630408283601a5c97d86c2f6681cc1571",
            "sts_test.csv": "33eea25bf41061c513ef4b39282aaf64bdf9b17ff233e343a6d6ae44d73e0272"}
    for name, digest in want.items():
        assert hashlib.sha256((ASSET_DIR / name).read_bytes()).hexdigest() == digest
    assert "Google" in (ASSET_DIR / "LICENSE").read_text()
