"""Recall of a cascade (shortlist-and-rerank) result, defined exactly where the shortlist allows.

A query's rank is known when a positive is among its candidates: it is counted among the candidates'
stage-2 scores exactly as `harness.eval.metrics.recall.count_ranks` counts it over a full row (tie-optimistic
and tie-pessimistic). Otherwise only a lower bound is known: the positive ranks below every candidate, so
its rank is at least the number of candidates. R@k is exact when every unknown rank's bound is >= k, and
"not defined: beyond the shortlist" otherwise; medr needs the middle ranks, meanr every rank.

The stage-1 ceiling is the share of queries whose positive is inside their shortlist, per direction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.eval.metrics.recall import RECALL_KS, MatrixError, fold_slices, owners, recall_intervals
from harness.eval.shortlist import CascadeResult

BEYOND = "beyond the shortlist"


def direction_ranks(scores: np.ndarray, positive: np.ndarray, valid: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(optimistic, pessimistic, known) ranks of each query's best positive among its valid candidates; an
    unknown rank holds its lower bound (the number of valid candidates) in both arrays."""
    if valid is None:
        valid = np.ones(scores.shape, dtype=bool)
    if not np.isfinite(scores[valid]).all():
        raise MatrixError("stage-2 scores hold NaN or infinite values; fix the model/scores before evaluating")
    pos = positive & valid
    known = pos.any(axis=1)
    masked = np.where(pos, scores, -np.inf)
    best = masked.max(axis=1, keepdims=True)
    gt = np.count_nonzero(valid & (scores > best), axis=1)
    ge = np.count_nonzero(valid & (scores >= best), axis=1)
    own_ties = np.count_nonzero(pos & (scores == best), axis=1)
    bound = np.count_nonzero(valid, axis=1)
    optimistic = np.where(known, gt, bound).astype(np.int64)
    pessimistic = np.where(known, ge - own_ties, bound).astype(np.int64)
    return optimistic, pessimistic, known


def summarize_partial(ranks: np.ndarray, known: np.ndarray) -> dict[str, Any]:
    """R@1/5/10, medr, meanr where they are exact given the unknown ranks' lower bounds (None otherwise)."""
    n = len(ranks)
    unknown_bound = int(ranks[~known].min()) if (~known).any() else None
    out: dict[str, Any] = {}
    undefined: dict[str, str] = {}
    for k in RECALL_KS:
        if unknown_bound is not None and unknown_bound < k:
            out[f"r{k}"] = None
            undefined[f"r{k}"] = f"{BEYOND}: a query misses its positive among {unknown_bound} candidates"
        else:
            out[f"r{k}"] = float(100.0 * np.count_nonzero(known & (ranks < k)) / n)
    order = np.sort(np.where(known, ranks, np.iinfo(np.int64).max))
    middle = order[[(n - 1) // 2, n // 2]]
    if n and (middle < np.iinfo(np.int64).max).all():  # the unknown ranks sort after every known one
        out["medr"] = float(np.floor(middle.mean()) + 1)  # np.median of an even count: mean of the middle two
    else:
        out["medr"] = None
        undefined["medr"] = f"{BEYOND}: the median query's positive is outside its shortlist"
    if known.all():
        out["meanr"] = float(ranks.mean() + 1)
    else:
        out["meanr"] = None
        undefined["meanr"] = f"{BEYOND}: {int(np.count_nonzero(~known))} queries' positives are outside their shortlist"
    if undefined:
        out["not_defined"] = undefined
    return out


def _direction(opt: np.ndarray, pess: np.ndarray, known: np.ndarray) -> dict[str, Any]:
    main = summarize_partial(pess, known)
    main["tie_optimistic"] = summarize_partial(opt, known)
    main["tie_affected_queries"] = int(np.count_nonzero(known & (pess != opt)))
    main["queries"] = int(len(opt))
    main["ceiling"] = float(100.0 * np.count_nonzero(known) / max(1, len(known)))
    return main


def _rsum(i2t: dict[str, Any], t2i: dict[str, Any]) -> float | None:
    values = [d[f"r{k}"] for d in (i2t, t2i) for k in RECALL_KS]
    return None if any(v is None for v in values) else float(sum(values))


def _recall(i2t_ranks: tuple, t2i_ranks: tuple, i2t_units: np.ndarray, t2i_units: np.ndarray,
            strata: np.ndarray | None, bootstrap: int) -> dict[str, Any]:
    i2t, t2i = _direction(*i2t_ranks), _direction(*t2i_ranks)
    out: dict[str, Any] = {"i2t": i2t, "t2i": t2i, "rsum": _rsum(i2t, t2i), "ties": {
        "rsum_tie_optimistic": _rsum(i2t["tie_optimistic"], t2i["tie_optimistic"]),
        "i2t_affected_queries": i2t["tie_affected_queries"], "t2i_affected_queries": t2i["tie_affected_queries"]},
        "ceiling": {"i2t": i2t["ceiling"], "t2i": t2i["ceiling"]}}
    if out["rsum"] is None:
        out["not_defined"] = {"rsum": f"{BEYOND}: R@10 needs every query's positive within its top-10 candidates"}
    elif bootstrap:  # unknown ranks are >= 10: as misses at every k they give exact intervals
        out["ci"] = recall_intervals(i2t_ranks[1], t2i_ranks[1], i2t_units, t2i_units, strata=strata, n=bootstrap)
    return out


def cascade_recall(result: CascadeResult, image_of_caption: np.ndarray, bootstrap: int = 0) -> dict[str, Any]:
    """Recall of a cascade over the full split (the `recall`, `coco5k` and `f30k1k` protocols)."""
    n_img, n_cap = result.shape
    owner = owners(n_img, n_cap, image_of_caption=image_of_caption, name="cascade result")
    i2t = direction_ranks(result.i2t_scores, owner[result.i2t_index] == np.arange(n_img)[:, None])
    t2i = direction_ranks(result.t2i_scores, result.t2i_index == owner[:, None])
    out = _recall(i2t, t2i, np.arange(n_img), owner, None, bootstrap)
    return {**out, "cascade": result.record()}


def cascade_fold_recall(result: CascadeResult, folds: int = 5, captions_per_image: int = 5,
                        bootstrap: int = 0) -> dict[str, Any]:
    """COCO 1K of a cascade: each fold ranks the candidates inside the fold (the metrics pooled over folds'
    queries equal the mean over equal folds); a missed positive's bound is its in-fold candidate count."""
    n_img, n_cap = result.shape
    size = n_img // folds
    owner = np.arange(n_cap) // captions_per_image
    fold_of_image = np.arange(n_img) // size
    fold_slices(n_img, folds, captions_per_image)  # refuses uneven folds
    i2t_valid = fold_of_image[owner[result.i2t_index]] == fold_of_image[:, None]
    t2i_valid = fold_of_image[result.t2i_index] == fold_of_image[owner][:, None]
    i2t = direction_ranks(result.i2t_scores, owner[result.i2t_index] == np.arange(n_img)[:, None], i2t_valid)
    t2i = direction_ranks(result.t2i_scores, result.t2i_index == owner[:, None], t2i_valid)
    out = _recall(i2t, t2i, np.arange(n_img), owner, fold_of_image, bootstrap)
    for name, ranks, fold in (("i2t", i2t, fold_of_image), ("t2i", t2i, fold_of_image[owner])):
        for arr, target in ((ranks[1], out[name]), (ranks[0], out[name]["tie_optimistic"])):
            per_fold = [summarize_partial(arr[fold == f], ranks[2][fold == f])["medr"] for f in range(folds)]
            target["medr"] = None if None in per_fold else float(np.mean(per_fold))  # COCO 1K: mean of folds
            if target["medr"] is not None:
                target.get("not_defined", {}).pop("medr", None)
    return {**out, "cascade": result.record()}
