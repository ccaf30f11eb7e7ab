"""Image retrieval R@1 vs CUSA's evaluation_img.py computation, and the dataset list readers."""

import json

import numpy as np
import pytest
import torch

from harness.data.image_retrieval import (
    ImageRetrievalDataError,
    check_image_retrieval,
    load_cub,
    load_image_retrieval,
    load_inaturalist,
    load_inshop,
    load_sop,
)
from harness.eval.metrics.image_retrieval import image_retrieval_protocol, nearest_neighbour_hits


def cusa_rank1(query, query_label, gallery=None, gallery_label=None):
    """evaluation_img.py get_metric: normalise, addmm Euclidean distance, topk smallest, 128 queries a time."""
    def euclidean_topk(x, y, k):
        m, n = x.size(0), y.size(0)
        dist = x.pow(2).sum(1, keepdim=True).expand(m, n) + y.pow(2).sum(1, keepdim=True).expand(n, m).t()
        dist.addmm_(mat1=x, mat2=y.t(), beta=1, alpha=-2)
        return torch.topk(dist.clamp(min=1e-12).sqrt(), k, largest=False)

    q = torch.nn.functional.normalize(torch.from_numpy(query))
    if gallery is None:
        preds = [euclidean_topk(q[i:i + 128], q, 2)[1][:, 1] for i in range(0, len(q), 128)]
        pred = torch.cat(preds).numpy()
        return 100.0 * np.mean(query_label == query_label[pred])
    g = torch.nn.functional.normalize(torch.from_numpy(gallery))
    pred = torch.cat([euclidean_topk(q[i:i + 128], g, 1)[1][:, 0] for i in range(0, len(q), 128)]).numpy()
    return 100.0 * np.mean(query_label == gallery_label[pred])


def clustered(n, classes, dim, seed, spread=0.8):
    centres = np.random.default_rng(classes * 1000 + dim).standard_normal((classes, dim))  # shared by q / g
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    return (centres[labels] + spread * rng.standard_normal((n, dim))).astype(np.float64), labels


def test_self_search_and_gallery_match_cusa():
    x, y = clustered(700, 40, 16, 0)
    pess, opt = nearest_neighbour_hits(x, y)
    assert np.array_equal(pess, opt)  # no ties
    assert 100.0 * pess.mean() == pytest.approx(cusa_rank1(x, y))
    q, qy = clustered(300, 40, 16, 1)
    g, gy = clustered(900, 40, 16, 2)
    pess, _ = nearest_neighbour_hits(q, qy, g, gy)
    assert 100.0 * pess.mean() == pytest.approx(cusa_rank1(q, qy, g, gy))
    assert 20 < 100.0 * pess.mean() < 100  # neither trivial nor impossible


def test_the_query_itself_is_excluded_and_ties_are_bounded():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])  # 0 and 1 are duplicates
    y = np.array([0, 1, 2, 2])
    pess, opt = nearest_neighbour_hits(x, y)
    assert pess.tolist() == [False, False, True, True]  # 0's nearest other item is 1 (another class)
    x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # 1 and 2 tie as 0's neighbour
    y = np.array([5, 5, 6, 6])
    pess, opt = nearest_neighbour_hits(x, y)
    assert pess.tolist() == [False, False, False, False] and opt.tolist() == [True, True, False, True]


def test_protocol_shape_average_and_intervals():
    feats = {}
    for k, name in enumerate(("cub", "sop", "inaturalist")):
        feats[name] = clustered(400, 30, 8, k)
    q, qy = clustered(200, 30, 8, 10)
    g, gy = clustered(500, 30, 8, 11)
    feats["inshop"] = (q, qy, g, gy)
    got = image_retrieval_protocol(feats, bootstrap=1000, seed=0)
    assert set(got["r1"]) == {"cub", "sop", "inaturalist", "inshop", "avg"}
    assert got["r1"]["avg"] == pytest.approx(np.mean([got["r1"][k] for k in ("cub", "sop", "inshop", "inaturalist")]))
    assert got["r1"]["inshop"] == pytest.approx(cusa_rank1(q, qy, g, gy))
    lo, hi = got["ci95"]["cub"]
    assert lo < got["r1"]["cub"] < hi and hi - lo < 15
    assert got["queries"]["inshop"] == 200
    json.dumps(got)
    with pytest.raises(ValueError, match="labels"):
        image_retrieval_protocol({"cub": (q, qy[:-1])})


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_readers(tmp_path):
    cub = tmp_path / "cub" / "CUB_200_2011" / "images"
    for c in range(200):
        _touch(cub / f"{c + 1:03d}.Bird_{c}" / f"img_{c}_a.jpg")
    _touch(cub / "150.Bird_149" / "img_149_b.JPG")
    _touch(cub / "150.Bird_149" / "._img_149_b.jpg")  # macOS resource fork: skipped
    _touch(cub / "150.Bird_149" / "notes.txt")  # not an image
    ds = load_cub(tmp_path)
    assert len(ds.paths) == 101 and ds.labels.min() == 100 and ds.labels.max() == 199
    assert not any("._" in p for p in ds.paths)

    sop = tmp_path / "sop" / "Stanford_Online_Products"
    sop.mkdir(parents=True)
    (sop / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n"
                                       "1 11318 1 bicycle_final/a.JPG\n2 11319 1 bicycle_final/b.JPG\n"
                                       "3 11319 1 bicycle_final/c.JPG\n4 22634 2 chair_final/d.JPG\n")
    ds = load_sop(tmp_path)
    assert ds.labels.tolist() == [11318, 11318, 22633]  # class_id - 1; class 11318 (label 11317) is training
    assert ds.paths[0].endswith("Stanford_Online_Products/bicycle_final/b.JPG")

    inshop = tmp_path / "inshop" / "Eval"
    inshop.mkdir(parents=True)
    (inshop / "list_eval_partition.txt").write_text(
        "5\nimage_name item_id evaluation_status\n"
        "img/WOMEN/a/id_00000002/01_1_front.jpg id_00000002 train\n"
        "img/WOMEN/b/id_00000009/01_1_front.jpg id_00000009 query\n"
        "img/WOMEN/b/id_00000009/02_1_side.jpg  id_00000009 gallery\n"
        "img/MEN/c/id_00000004/01_1_front.jpg   id_00000004 gallery\n"
        "img/MEN/c/id_00000004/02_1_side.jpg    id_00000004 query\n")
    ds = load_inshop(tmp_path)
    assert ds.has_gallery and ds.labels.tolist() == [1, 0] and ds.gallery_labels.tolist() == [1, 0]
    assert ds.paths[0].endswith("inshop/Img/img/WOMEN/b/id_00000009/01_1_front.jpg")

    inat = tmp_path / "inaturalist" / "Inat_dataset_splits"
    inat.mkdir(parents=True)
    (inat / "Inaturalist_test_set1.txt").write_text(
        "train_val2018/Plantae/7477/a.jpg\ntrain_val2018/Aves/3100/b.jpg\ntrain_val2018/Plantae/7477/c.jpg\n")
    ds = load_inaturalist(tmp_path)
    assert ds.labels.tolist() == [1, 0, 1]

    problems = check_image_retrieval(tmp_path)
    assert any(p.startswith("sop: 3 of 3 listed images are missing") for p in problems)
    assert not any(p.startswith("cub") for p in problems)
    decoded = check_image_retrieval(tmp_path, decode_images=True)
    assert any(p.startswith("cub: 101 of 101 listed images do not decode") for p in decoded)  # empty files
    with pytest.raises(ImageRetrievalDataError, match="unknown image retrieval set 'cars'"):
        load_image_retrieval(tmp_path, "cars")
    assert check_image_retrieval(tmp_path / "none", ("sop",))[0].startswith("sop: ")
