"""ECCV Caption / COCO 1K-5K / CxC numbers from a matrix vs eccv_caption.Metrics on ranked lists.

eccv_caption 0.1.0 defects are tested around, not into: eccv_r{K} is asked for without eccv_map_at_r (it is
only computed in the else-branch), eccv_rprecision together with eccv_map_at_r (its own name is misspelled
in the dispatch), pmrp through `Metrics.pmrp` (compute_all_metrics drops its key), and coco1k with lists
that hold enough same-fold items (a short filtered list raises IndexError).
"""

import json
import warnings

import numpy as np
import pytest
import torch

from harness.eval.metrics.eccv import (
    PositiveSets,
    eccv_protocol,
    package_gt,
    plausible_match_source,
    pm_gt_from_files,
    pm_gt_from_instances,
    pmrp_scores,
    position_metrics,
    positions_from_top,
    top_scores,
)
from harness.eval.metrics.ids import CocoTestIds, IdError, canonical_ids, load_coco_test_ids

warnings.filterwarnings("ignore", message="failed to import `ujson`")
eccv_caption = pytest.importorskip("eccv_caption")


@pytest.fixture(scope="module")
def metric():
    import eccv_caption._metrics as em

    em.tqdm = lambda x, total=None, disable=None: x  # its eccv loop always shows a bar
    return eccv_caption.Metrics()


@pytest.fixture(scope="module")
def sims():
    """A model-like 5000 x 25000 matrix in eccv_caption order (seeded: no ties at any positive)."""
    rng = np.random.default_rng(3)
    s = rng.standard_normal((5000, 25000), dtype=np.float32)
    cols = np.arange(25000)
    s[cols // 5, cols] += 2.0
    eccv = package_gt("eccv").i2t
    q, g, _ = eccv.flat(eccv.queries())
    s[q, g] += 1.0
    return s


def _lists(sims: np.ndarray, k: int, fold_first: bool = False):
    """Ranked id lists as CUSA builds them (torch.topk per image row / caption column)."""
    ids = canonical_ids()
    t = torch.from_numpy(sims)
    if fold_first:  # for coco1k: the top-k of the query's own fold (what eccv_caption keeps after filtering)
        i2t_idx = np.concatenate([torch.topk(t[f * 1000:(f + 1) * 1000, f * 5000:(f + 1) * 5000], k, dim=1)
                                  .indices.numpy() + f * 5000 for f in range(5)])
        t2i_idx = np.concatenate([torch.topk(t[f * 1000:(f + 1) * 1000, f * 5000:(f + 1) * 5000].T.contiguous(),
                                             k, dim=1).indices.numpy() + f * 1000 for f in range(5)])
    else:
        i2t_idx = torch.topk(t, k, dim=1).indices.numpy()
        t2i_idx = torch.topk(t.T.contiguous(), k, dim=1).indices.numpy()
    i2t = {int(i): ids.caption_ids[row].tolist() for i, row in zip(ids.image_ids, i2t_idx)}
    t2i = {int(c): ids.image_ids[row].tolist() for c, row in zip(ids.caption_ids, t2i_idx)}
    return i2t, t2i


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    return _instances(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def ours(sims, instances):
    return eccv_protocol(sims, canonical_ids(), instances_json=instances[0], bootstrap=0)


def test_every_number_matches_eccv_caption(sims, ours, metric):
    for direction in ("i2t", "t2i"):
        assert all(v == 0 for v in ours["tie_affected_queries"][direction].values()), "test matrix must be tie-free"
    i2t, t2i = _lists(sims, 50)
    ref = metric.compute_all_metrics(i2t, t2i, target_metrics=(
        "eccv_map_at_r", "eccv_rprecision", "eccv_r1", "coco_5k_recalls", "cxc_recalls"), Ks=(1, 5, 10))
    ref.update(metric.compute_all_metrics(i2t, t2i, target_metrics=("eccv_recalls",), Ks=(1, 5, 10)))
    f_i2t, f_t2i = _lists(sims, 20, fold_first=True)
    ref.update(metric.compute_all_metrics(f_i2t, f_t2i, target_metrics=("coco_1k_recalls",), Ks=(1, 5, 10)))
    expected = {"eccv_map_at_r", "eccv_rprecision", "eccv_r1", "eccv_r5", "eccv_r10"} | {
        f"{fam}_r{k}" for fam in ("coco_1k", "coco_5k", "cxc") for k in (1, 5, 10)}
    assert set(ref) == expected
    for key, val in ref.items():
        mine = key.replace("coco_1k", "coco1k").replace("coco_5k", "coco5k")  # our protocol names, no underscore
        for direction in ("i2t", "t2i"):
            assert ours[direction][mine] == pytest.approx(100.0 * val[direction], abs=1e-9), (key, direction)
    assert ours["queries"]["i2t"] == {"coco5k": 5000, "coco1k": 5000, "cxc": 5000, "eccv": 1261, "pmrp": 2450}
    assert ours["queries"]["t2i"] == {"coco5k": 25000, "coco1k": 25000, "cxc": 24972, "eccv": 1332,
                                      "pmrp": 12250}
    assert ours["rsum"]["coco5k"] == pytest.approx(sum(ours[d][f"coco5k_r{k}"] for d in ("i2t", "t2i")
                                                        for k in (1, 5, 10)))
    assert ours["pmrp_status"]["available"] is True and ours["pmrp_status"]["threshold"] == 2
    json.dumps(ours)  # JSON-serialisable
    gt, status = plausible_match_source("/nonexistent", None, 2)
    assert gt is None and status["available"] is False and "pm_image_to_caption.json" in status["reason"]
    gt, status = plausible_match_source(None, None, 2)
    assert gt is None and "instances_val2014.json" in status["reason"]


def test_coco1k_differs_from_5k_and_needs_fold_restriction(ours):
    assert ours["i2t"]["coco1k_r1"] > ours["i2t"]["coco5k_r1"] + 5  # 1000-image gallery is easier


def test_data_folder_order_is_mapped_to_coco_ids(sims, ours, tmp_path):
    """A matrix in another row / caption order, with id files saying so, gives the same numbers."""
    canon = canonical_ids()
    rng = np.random.default_rng(0)
    img_perm = rng.permutation(5000)
    within = np.stack([rng.permutation(5) for _ in range(5000)])
    col_perm = (img_perm[:, None] * 5 + within).ravel()
    user = np.take(sims, img_perm, axis=0)
    for a in range(0, 5000, 500):  # blocked: a whole-matrix column gather is very slow
        user[a:a + 500] = np.take(user[a:a + 500], col_perm, axis=1)
    (tmp_path / "cxc_annots").mkdir()
    np.savetxt(tmp_path / "cxc_annots" / "testall_ids.txt", np.repeat(canon.image_ids[img_perm], 5), fmt="%d")
    np.savetxt(tmp_path / "cxc_annots" / "testall_capids.txt", canon.caption_ids[col_perm], fmt="%d")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both files present: no assumption, no warning
        ids = load_coco_test_ids(tmp_path)
    assert ids.warning is None
    got = eccv_protocol(user, tmp_path, bootstrap=0)
    for direction in ("i2t", "t2i"):
        assert got[direction] == pytest.approx({k: v for k, v in ours[direction].items() if k != "pmrp"}, abs=1e-9)
    shuffled = eccv_protocol(np.take(sims, img_perm, axis=0), canon, bootstrap=0)  # ids not moved with rows
    assert shuffled["i2t"]["coco5k_r1"] < 1.0


def test_id_files_warnings_and_errors(tmp_path):
    canon = canonical_ids()
    with pytest.warns(UserWarning, match="testall_ids.txt / testall_capids.txt not found"):
        ids = load_coco_test_ids(tmp_path)
    assert ids.source.startswith("eccv_caption") and "assumed" in ids.warning
    np.savetxt(tmp_path / "testall_ids.txt", np.repeat(canon.image_ids, 5), fmt="%d")
    with pytest.warns(UserWarning, match="testall_capids.txt not found"):
        ids = load_coco_test_ids(tmp_path)
    assert np.array_equal(ids.caption_ids, canon.caption_ids)
    bad = np.repeat(canon.image_ids, 5)
    bad[7] = bad[0]
    np.savetxt(tmp_path / "testall_ids.txt", bad, fmt="%d")
    with pytest.raises(IdError, match=r"testall_ids.txt: lines 6-10 name different images"):
        load_coco_test_ids(tmp_path)
    np.savetxt(tmp_path / "testall_ids.txt", np.repeat(canon.image_ids, 5)[:-5], fmt="%d")
    with pytest.raises(IdError, match=r"testall_ids.txt: 24995 lines, expected 25000"):
        load_coco_test_ids(tmp_path)
    (tmp_path / "testall_ids.txt").unlink()
    caps = canon.caption_ids.copy()
    caps[[4, 5]] = caps[[5, 4]]  # caption 5 of image 0 swapped with caption 1 of image 1
    np.savetxt(tmp_path / "testall_capids.txt", caps, fmt="%d")
    with pytest.raises(IdError, match=r"testall_capids.txt: lines 1-5 are captions of different images"):
        load_coco_test_ids(tmp_path)
    caps = canon.caption_ids.copy()
    caps[0] = 1  # not a COCO 5K caption
    np.savetxt(tmp_path / "testall_capids.txt", caps, fmt="%d")
    with pytest.raises(IdError, match="not COCO 5K test captions"):
        load_coco_test_ids(tmp_path)


def test_ties_are_bounded_both_ways(sims, ours):
    """A negative tied with a row's best positive: R@1 pessimistic misses, optimistic hits."""
    s = sims.copy()
    coco = package_gt("original").i2t
    hits = [i for i in range(5000) if s[i, 5 * i:5 * i + 5].max() >= s[i].max()][:7]
    for i in hits:
        neg = (5 * i + 100) % 25000
        s[i, neg] = s[i, 5 * i:5 * i + 5].max()
    got = eccv_protocol(s, canonical_ids(), bootstrap=0)
    assert got["tie_affected_queries"]["i2t"]["coco5k"] == 7
    assert got["tie_optimistic"]["i2t"]["coco5k_r1"] == pytest.approx(ours["i2t"]["coco5k_r1"])
    assert got["i2t"]["coco5k_r1"] == pytest.approx(ours["i2t"]["coco5k_r1"] - 100 * 7 / 5000)
    assert got["i2t"]["coco5k_r5"] == pytest.approx(ours["i2t"]["coco5k_r5"])  # rank 1 still < 5
    assert coco.n_queries == 5000


def _loop_positions(row: np.ndarray, positives: set[int], pessimistic: bool) -> list[int]:
    """Positions of the positives in a full ranking where ties put negatives first (or last)."""
    key = [(-row[j], (j in positives) == pessimistic, j) for j in range(len(row))]
    order = [j for *_, j in sorted(key)]
    return [p for p, j in enumerate(order) if j in positives]


@pytest.mark.parametrize("depth", [None, 12])
def test_positions_match_a_sorted_loop_with_ties(depth, metric):
    from eccv_caption._metrics import compute_eccv_metrics

    rng = np.random.default_rng(5)
    n_q, n_g = 60, 40
    rows = rng.integers(0, 8, size=(n_q, n_g)).astype(np.float64)  # many exact ties
    sizes = rng.integers(1, 6, size=n_q)
    padded = np.full((n_q, sizes.max()), -1)
    for q in range(n_q):
        padded[q, :sizes[q]] = np.sort(rng.choice(n_g, sizes[q], replace=False))
    p = np.where(padded >= 0, np.take_along_axis(rows, np.maximum(padded, 0), 1), -np.inf)
    p = -np.sort(-p, axis=1)
    L = n_g if depth is None else depth  # depth 12 >= max R (5) + max(max R, max K=5)
    pess, opt = positions_from_top(top_scores(rows, L), p, sizes, n_g)
    m_pess, m_opt = position_metrics(pess, sizes, ks=(1, 5)), position_metrics(opt, sizes, ks=(1, 5))
    for q in range(n_q):
        pos = set(padded[q, :sizes[q]].tolist())
        for got, metrics, pessimistic in ((pess, m_pess, True), (opt, m_opt, False)):
            ref = _loop_positions(rows[q], pos, pessimistic)
            R = sizes[q]
            if depth is None:
                assert got[q, :R].tolist() == ref
            else:  # positions past the depth may be inf; those that matter are exact
                assert [x for x in got[q, :R] if x < R + 5] == [x for x in ref if x < R + 5]
            ranked = [j for *_, j in sorted((-rows[q, j], (j in pos) == pessimistic, j) for j in range(n_g))]
            # eccv_caption's own per-query formulas on the explicit list
            ref_m = compute_eccv_metrics({0: ranked}, {0: sorted(pos)})
            assert metrics["map_at_r"][q] == pytest.approx(100 * ref_m["eccv_map_at_r"])
            assert metrics["rprecision"][q] == pytest.approx(100 * ref_m["eccv_rprecision"])
            assert metrics["r1"][q] == pytest.approx(100 * ref_m["eccv_r1"])


def test_top_scores_prefilter_is_exact():
    rng = np.random.default_rng(2)
    for shape, L in (((7, 25000), 96), ((5, 5000), 38), ((3, 997), 20), ((4, 300), 300)):
        rows = rng.standard_normal(shape).astype(np.float32)
        rows[0, :50] = rows[0, 0]  # heavy ties in one row
        got = np.sort(top_scores(rows, L), axis=1)
        want = np.sort(rows, axis=1)[:, -L:]
        assert np.array_equal(got, want)


def _instances(tmp_path, seed=0):
    """A synthetic COCO instances json: each test image gets random categories; a few share theirs."""
    canon = canonical_ids()
    rng = np.random.default_rng(seed)
    anns = []
    codes = {}
    for n, iid in enumerate(canon.image_ids.tolist()):
        if n % 97 == 0:
            continue  # some images have no instance annotation
        cats = list(rng.choice(np.arange(1, 91), size=rng.integers(6, 12), replace=False))
        base = canon.image_ids[n - n % 10]
        if 1 <= n % 10 <= 4 and base in codes:  # variants of a base image, one category dropped each:
            cats = [c for k, c in enumerate(codes[base]) if k != n % 10 - 1]  # plausible matches
        codes[iid] = cats
        anns += [{"image_id": iid, "category_id": int(c)} for c in cats]
    anns.append({"image_id": 1, "category_id": 3})  # an image outside the test set is ignored
    path = tmp_path / "instances_val2014.json"
    path.write_text(json.dumps({"annotations": anns}))
    return path, codes


def test_pmrp_from_instances_and_pm_files(sims, metric, ours, instances, tmp_path):
    path, codes = instances
    pm = pm_gt_from_instances(path)
    canon = canonical_ids()
    # ECCV Caption's rule, written as loops: hamming distance of the 90-slot vectors <= 2, own image excluded
    annotated = [i for i in canon.image_ids.tolist() if i in codes]
    onehot = np.stack([np.isin(np.arange(1, 91), codes[i]) for i in annotated])
    index = {int(i): n for n, i in enumerate(canon.image_ids)}
    for row, iid in enumerate(annotated[:80]):
        hamming = np.count_nonzero(onehot != onehot[row], axis=1)
        want = sorted(index[annotated[j]] for j in np.flatnonzero(hamming <= 2) if j != row)
        q = index[iid]
        got_imgs = sorted(set((pm.i2t.indices[pm.i2t.indptr[q]:pm.i2t.indptr[q + 1]] // 5).tolist()))
        assert got_imgs == want
    assert pm.i2t.sizes.max() >= 20 and pm.t2i.sizes.max() >= 4 and len(pm.i2t.queries()) > 1000
    # the same ground truth as eccv_caption PM files, then eccv_caption's own R-Precision on long lists
    pm_dir = tmp_path / "pm"
    pm_dir.mkdir()
    i2t_map = {int(canon.image_ids[q]): canon.caption_ids[pm.i2t.indices[pm.i2t.indptr[q]:pm.i2t.indptr[q + 1]]]
               .tolist() for q in pm.i2t.queries()}
    t2i_map = {int(canon.caption_ids[q]): canon.image_ids[pm.t2i.indices[pm.t2i.indptr[q]:pm.t2i.indptr[q + 1]]]
               .tolist() for q in pm.t2i.queries()}
    (pm_dir / "pm_image_to_caption.json").write_text(json.dumps(i2t_map))
    (pm_dir / "pm_caption_to_image.json").write_text(json.dumps(t2i_map))
    from_files = pmrp_scores(sims, pm_gt_from_files(pm_dir))
    for g in from_files:
        assert g.values["pmrp"].mean() == pytest.approx(ours[g.direction]["pmrp"])
    longest = max(max(len(v) for v in i2t_map.values()), max(len(v) for v in t2i_map.values()))
    i2t, t2i = _lists(sims, min(5000, longest + 5))
    ref = eccv_caption.Metrics(extra_file_dir=str(pm_dir)).pmrp({"i2t": i2t, "t2i": t2i}, "all")
    for d in ("i2t", "t2i"):
        assert ours[d]["pmrp"] == pytest.approx(100 * ref[d], abs=1e-9)
        assert ours["queries"][d]["pmrp"] == len(i2t_map if d == "i2t" else t2i_map)


def test_package_ground_truth_shapes():
    eccv = package_gt("eccv")
    assert len(eccv.i2t.queries()) == 1261 and len(eccv.t2i.queries()) == 1332
    # two ECCV positives are COCO captions outside the Karpathy 5 of their image: they count in R only
    assert int(eccv.i2t.missing.sum()) == 2
    assert int(eccv.i2t.r_sizes(eccv.i2t.queries()).sum()) == 22550
    coco = package_gt("original")
    assert np.array_equal(coco.i2t.indices, np.arange(25000))  # caption j belongs to image j // 5


def test_wrong_inputs_are_rejected(sims):
    with pytest.raises(ValueError, match="5000 x 25000"):
        eccv_protocol(np.zeros((1000, 5000), np.float32), canonical_ids())
    bad = np.zeros((10, 50), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        eccv_protocol(bad, canonical_ids())
    ids = canonical_ids()
    wrong = CocoTestIds(ids.image_ids[::-1].copy() + 1, ids.caption_ids, "test")
    with pytest.raises(IdError, match="not the 5000 COCO 5K test images"):
        eccv_protocol(sims, wrong)


def test_positive_sets_from_pairs_dedupes():
    ps = PositiveSets.from_pairs(np.array([2, 0, 2, 2]), np.array([5, 1, 5, 3]), 3, 6)
    assert ps.sizes.tolist() == [1, 0, 2] and ps.indices.tolist() == [1, 3, 5]
    assert ps.queries().tolist() == [0, 2]
