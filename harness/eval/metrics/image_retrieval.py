"""Image-to-image retrieval Recall@1 (CUSA's `evaluation_img.py`): CUB-200, SOP, In-shop, iNaturalist.

Features are L2-normalised; the nearest neighbour by Euclidean distance is then the one with the highest
cosine similarity, which is what is computed. CUB, SOP and iNaturalist search their own test set with the
query itself excluded (CUSA takes the second-nearest neighbour, assuming the first is the query; excluding
the query by index is the same unless an exact duplicate ties with it); In-shop searches the gallery.
R@1 = share of queries whose nearest neighbour has the query's class, in percent. Ties for the nearest
neighbour are bounded both ways like every rank here: the headline is tie-pessimistic (a tied neighbour of
another class wins), `tie_optimistic` holds the other bound.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from harness.eval.metrics.bootstrap import DEFAULT_RESAMPLES, QueryScores, summarize

DATASET_KEYS = ("cub", "sop", "inshop", "inaturalist")
_BLOCK_ELEMENTS = 1 << 24  # query block x gallery size kept in memory at once


def _normalise(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (items, dim) feature array, got shape {x.shape}")
    x = x.astype(np.float32) if x.dtype not in (np.float32, np.float64) else x
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)  # torch.nn.functional.normalize's eps


def nearest_neighbour_hits(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray | None = None,
                           gallery_labels: np.ndarray | None = None,
                           normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-query Recall@1 hits (pessimistic, optimistic) as 0/1 arrays.

    Without a gallery the queries search each other, each query excluded from its own search.
    """
    q = _normalise(query, "query features") if normalize else np.asarray(query)
    q_lab = np.asarray(query_labels)
    if len(q_lab) != len(q):
        raise ValueError(f"{len(q)} query features but {len(q_lab)} labels")
    self_search = gallery is None
    g = q if self_search else (_normalise(gallery, "gallery features") if normalize else np.asarray(gallery))
    g_lab = q_lab if self_search else np.asarray(gallery_labels)
    if len(g_lab) != len(g):
        raise ValueError(f"{len(g)} gallery features but {len(g_lab)} labels")
    if self_search and len(q) < 2:
        raise ValueError("a self-search needs at least 2 items")
    pess = np.zeros(len(q), dtype=bool)
    opt = np.zeros(len(q), dtype=bool)
    block = max(1, _BLOCK_ELEMENTS // max(1, len(g)))
    for a in range(0, len(q), block):
        b = min(len(q), a + block)
        sims = q[a:b] @ g.T
        if self_search:
            sims[np.arange(b - a), np.arange(a, b)] = -np.inf
        best = sims.max(axis=1, keepdims=True)
        tied = sims == best
        same = g_lab[None, :] == q_lab[a:b, None]
        opt[a:b] = (tied & same).any(axis=1)
        pess[a:b] = ~(tied & ~same).any(axis=1)
    return pess, opt


def recall_at_1_scores(name: str, query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray | None = None,
                       gallery_labels: np.ndarray | None = None, normalize: bool = True) -> QueryScores:
    pess, opt = nearest_neighbour_hits(query, query_labels, gallery, gallery_labels, normalize)
    return QueryScores("image", name, {"r1": 100.0 * pess}, {"r1": 100.0 * opt})


def image_retrieval_protocol(features: Mapping[str, tuple], bootstrap: int = DEFAULT_RESAMPLES,
                             seed: int = 0) -> dict:
    """Recall@1 of each dataset and their mean, as a JSON-ready dict.

    `features[name]` is (features, labels) for a self-search set (cub, sop, inaturalist) or
    (query features, query labels, gallery features, gallery labels) for In-shop. Returns
    {"protocol", "r1": {name: value, "avg": mean over the datasets}, "tie_optimistic", "ci95", ...}.
    `avg` (CUSA's "mean score") is given only when all four datasets are present.
    """
    groups = []
    for name, item in features.items():
        if len(item) == 2:
            groups.append(recall_at_1_scores(name, item[0], item[1]))
        elif len(item) == 4:
            groups.append(recall_at_1_scores(name, item[0], item[1], item[2], item[3]))
        else:
            raise ValueError(f"{name}: expected (features, labels) or (query, query labels, gallery, gallery labels)")
    summary = summarize(groups, n=bootstrap, seed=seed)
    r1 = {k.removesuffix("_r1"): v for k, v in summary["image"].items()}
    out = {"protocol": "image_retrieval", "r1": r1,
           "tie_optimistic": {k.removesuffix("_r1"): v for k, v in summary["tie_optimistic"].get("image", {}).items()},
           "tie_affected_queries": summary["tie_affected_queries"]["image"],
           "queries": summary["queries"]["image"]}
    if all(k in r1 for k in DATASET_KEYS):
        out["r1"]["avg"] = float(np.mean([r1[k] for k in DATASET_KEYS]))
    if bootstrap:
        out["ci95"] = {k.removesuffix("_r1"): v for k, v in summary["ci95"]["image"].items()}
        out["bootstrap"] = summary["bootstrap"]
    return out
