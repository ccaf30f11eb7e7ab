"""Image-text recall as the official code (vse_infty `i2t` / `t2i` / `evalrank`) defines it.

The similarity matrix has images as rows and captions as columns; caption j belongs to image
j // captions_per_image. Ranks are computed by counting, not sorting: for a query, the number of
gallery items scoring strictly above its best positive is the tie-optimistic rank, and adding the
negatives that tie with it gives the tie-pessimistic rank. The official `argsort(...)[::-1]` rank
breaks ties in an implementation-defined order, so it always lies between the two; queries whose
bounds differ are counted and reported.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from harness.core.errors import ItrbenchError
from harness.data.matrices import MatrixFileError, check_grouping, lossless_scores
from harness.eval.metrics.bootstrap import bootstrap_ci, rsum_ci

RECALL_KS = (1, 5, 10)


class MatrixError(ItrbenchError):
    """A similarity matrix that cannot be evaluated (NaN, wrong shape)."""


@dataclass
class QueryRanks:
    """0-based ranks of the best positive for every query of one direction."""

    optimistic: np.ndarray  # strict count of gallery items scoring above the best positive
    pessimistic: np.ndarray  # plus the negatives tied with it

    @property
    def tie_affected(self) -> int:
        return int(np.count_nonzero(self.pessimistic != self.optimistic))


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def owners(n_img: int, n_cap: int, captions_per_image: int = 5,
           image_of_caption: np.ndarray | None = None, name: str = "similarity matrix") -> np.ndarray:
    """Caption -> image index. Uniform (j // k) unless an explicit, image-grouped mapping is given (checked by
    `check_grouping`: the error names `name`, the first bad entry and its value)."""
    if image_of_caption is None:
        return np.arange(n_cap) // captions_per_image
    owner = np.asarray(image_of_caption)
    if owner.shape != (n_cap,):
        raise MatrixError(f"{name}: {n_cap} captions but the caption->image map has {owner.size} entries")
    if owner.dtype.kind not in "iu":
        raise MatrixError(f"{name}: the caption->image map holds {owner.dtype}, expected integer image rows")
    try:
        check_grouping(owner, n_img, name)
    except MatrixFileError as exc:
        raise MatrixError(str(exc)) from None
    return owner.astype(np.int64, copy=False)


def check_shape(n_img: int, n_cap: int, captions_per_image: int | None, name: str = "similarity matrix") -> None:
    """An images x captions shape: not empty, not transposed, and (`captions_per_image` k given) k * images
    columns. The error names `name`, the shape and the fix."""
    if n_img == 0 or n_cap == 0:
        raise MatrixError(f"{name}: an empty {n_img} x {n_cap} matrix; expected at least one image row and one "
                          "caption column")
    if n_img > n_cap:  # every image has at least one caption: more rows than columns is captions x images
        raise MatrixError(f"{name}: the matrix looks transposed: {n_img} x {n_cap}; rows must be images and columns "
                          "captions (save sims.T)")
    k = captions_per_image
    if k is None or n_cap == k * n_img:
        return
    if n_cap % k:
        raise MatrixError(f"{name}: {n_img} images x {n_cap} captions: {n_cap} is not a multiple of {k} captions "
                          f"per image; pass --image-of-caption M.npy (caption -> image row) for uneven captions")
    raise MatrixError(f"{name}: {n_img} images x {n_cap} captions, expected {k} captions per image "
                      f"({k * n_img} columns; {n_cap} columns are {n_cap // k} images' captions)")


def uniform_captions(image_of_caption: np.ndarray, n_img: int) -> int | None:
    """k when caption j belongs to image j // k for every caption (the SCAN precomp order), else None."""
    owner = np.asarray(image_of_caption)
    if n_img <= 0 or owner.size % n_img:
        return None
    k = owner.size // n_img
    return k if np.array_equal(owner, np.arange(owner.size) // k) else None


def check_matrix(sims: np.ndarray, captions_per_image: int = 5, name: str = "similarity matrix",
                 image_of_caption: np.ndarray | None = None, finite: bool = True) -> np.ndarray:
    """Validate shape and finiteness; returns the matrix as a float32/float64 ndarray.

    `finite=False` leaves the finiteness check to the caller (count_ranks makes it in its own pass)."""
    sims = np.asarray(sims)
    if sims.ndim != 2:
        raise MatrixError(f"{name}: expected a 2-D images x captions matrix, got shape {sims.shape}")
    n_img, n_cap = sims.shape
    check_shape(n_img, n_cap, None if image_of_caption is not None else captions_per_image, name)
    if image_of_caption is not None:
        owners(n_img, n_cap, captions_per_image, image_of_caption, name)
    if sims.dtype not in (np.float32, np.float64):
        try:
            sims = lossless_scores(sims, name)
        except MatrixFileError as exc:
            raise MatrixError(str(exc)) from None
    if finite and not np.isfinite(sims.sum()):  # one cheap pass; a NaN or inf makes the sum non-finite
        _refuse_non_finite(sims, name)
    return sims


def _refuse_non_finite(sims: np.ndarray, name: str) -> None:
    """Raise naming the number of NaN / inf scores (none: the sum merely overflowed, and all is well)."""
    bad = int(np.count_nonzero(~np.isfinite(sims)))
    if bad:
        raise MatrixError(f"{name}: {bad} NaN or infinite scores; the official ranking would place NaN first "
                          "silently. Fix the model/scores before evaluating")


def count_ranks(sims: np.ndarray, captions_per_image: int = 5, image_of_caption: np.ndarray | None = None,
                name: str = "similarity matrix") -> tuple[QueryRanks, QueryRanks]:
    """Image->text and text->image ranks in one pass over the matrix, which must be finite (checked here).

    Rows are processed in small blocks that stay in cache; each block is checked for NaN / inf and
    compared with the row thresholds (best own caption, for i2t) and with the column thresholds (the
    caption's own image, for t2i). Blocks run on a thread pool (numpy releases the GIL in these kernels).
    """
    n_img, n_cap = sims.shape
    k = captions_per_image
    if image_of_caption is not None and uniform_captions(image_of_caption, n_img) == k:
        image_of_caption = None  # the j // k order spelled out: the vectorized path applies
    if image_of_caption is None:
        own = sims[:, : n_img * k].reshape(n_img, n_img, k)[np.arange(n_img), np.arange(n_img)]  # (N, k)
        best = own.max(axis=1)
        own_ties = np.count_nonzero(own == best[:, None], axis=1)
    else:  # captions grouped by image, any number per image
        bounds = np.searchsorted(image_of_caption, np.arange(n_img + 1))
        best = np.array([sims[i, bounds[i]:bounds[i + 1]].max() for i in range(n_img)], dtype=sims.dtype)
        own_ties = np.array([np.count_nonzero(sims[i, bounds[i]:bounds[i + 1]] == best[i]) for i in range(n_img)])
    owner = owners(n_img, n_cap, k, image_of_caption)
    pos = np.ascontiguousarray(sims[owner, np.arange(n_cap)])
    gt_i = np.empty(n_img, np.int64)
    ge_i = np.empty(n_img, np.int64)
    row_dtype = np.uint16 if n_cap < 2**16 else np.uint32  # per-row counts of one block
    rows = 16  # a block of rows stays in cache; its column counts fit in uint8

    def work(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, bool]:
        a0, a1 = bounds
        buf = np.empty((rows, n_cap), dtype=bool)
        view = buf.view(np.uint8)
        gt_t = np.zeros(n_cap, np.uint16)  # a chunk has at most 256 rows
        ge_t = np.zeros(n_cap, np.uint16)
        finite = True
        for a in range(a0, a1, rows):
            b = min(a1, a + rows)
            blk, bb, u, thr = sims[a:b], buf[: b - a], view[: b - a], best[a:b, None]
            # max propagates NaN and +inf, min -inf: two cheap reductions instead of a sum
            finite = finite and bool(np.isfinite(blk.max())) and bool(np.isfinite(blk.min()))
            np.greater(blk, thr, out=bb)
            gt_i[a:b] = np.add.reduce(u, axis=1, dtype=row_dtype)
            np.greater_equal(blk, thr, out=bb)
            ge_i[a:b] = np.add.reduce(u, axis=1, dtype=row_dtype)
            np.greater(blk, pos, out=bb)
            gt_t += np.add.reduce(u, axis=0, dtype=np.uint8)
            np.greater_equal(blk, pos, out=bb)
            ge_t += np.add.reduce(u, axis=0, dtype=np.uint8)
        return gt_t, ge_t, finite

    with ThreadPoolExecutor(_threads()) as pool:
        parts = list(pool.map(work, _chunks(n_img, 256)))
    if not all(p[2] for p in parts):
        _refuse_non_finite(sims, name)
    gt_t = np.sum([p[0] for p in parts], axis=0, dtype=np.int64)
    ge_t = np.sum([p[1] for p in parts], axis=0, dtype=np.int64)
    i2t = QueryRanks(optimistic=gt_i, pessimistic=ge_i - own_ties)
    t2i = QueryRanks(optimistic=gt_t, pessimistic=ge_t - 1)  # the positive itself is counted by >=
    return i2t, t2i


def i2t_ranks(sims: np.ndarray, captions_per_image: int = 5, image_of_caption: np.ndarray | None = None) -> QueryRanks:
    """Rank of the best of each image's own captions among all captions."""
    return count_ranks(sims, captions_per_image, image_of_caption)[0]


def t2i_ranks(sims: np.ndarray, captions_per_image: int = 5, image_of_caption: np.ndarray | None = None) -> QueryRanks:
    """Rank of each caption's own image among all images."""
    return count_ranks(sims, captions_per_image, image_of_caption)[1]


def summarize(ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 in percent, medr = floor(median)+1, meanr = mean+1 (official definitions)."""
    out = {f"r{k}": float(100.0 * np.count_nonzero(ranks < k) / len(ranks)) for k in RECALL_KS}
    out["medr"] = float(np.floor(np.median(ranks)) + 1)
    out["meanr"] = float(ranks.mean() + 1)
    return out


def _direction(ranks: QueryRanks) -> dict:
    main = summarize(ranks.pessimistic)
    main["tie_optimistic"] = summarize(ranks.optimistic)
    main["tie_affected_queries"] = ranks.tie_affected
    main["queries"] = int(len(ranks.optimistic))
    return main


def full_recall(sims: np.ndarray, captions_per_image: int = 5, image_of_caption: np.ndarray | None = None,
                bootstrap: int = 0, seed: int = 0) -> dict:
    """Recall of one full matrix (COCO 5K, F30K 1K, or any images x captions matrix).

    `image_of_caption` (captions grouped by image, any number each) replaces the j // k rule.
    `bootstrap` > 0 adds 95% intervals over queries ("ci")."""
    sims = check_matrix(sims, captions_per_image, image_of_caption=image_of_caption, finite=False)
    i2t, t2i = count_ranks(sims, captions_per_image, image_of_caption)
    owner = owners(sims.shape[0], sims.shape[1], captions_per_image, image_of_caption)
    return recall_from_ranks(i2t, t2i, owner, bootstrap, seed)


def recall_from_ranks(i2t: QueryRanks, t2i: QueryRanks, image_of_caption: np.ndarray, bootstrap: int = 0,
                      seed: int = 0) -> dict:
    """`full_recall` of already counted ranks (a streamed evaluation's rank summary)."""
    out = _with_sums(_direction(i2t), _direction(t2i))
    if bootstrap:
        out["ci"] = recall_intervals(i2t.pessimistic, t2i.pessimistic, np.arange(len(i2t.optimistic)),
                                     np.asarray(image_of_caption), n=bootstrap, seed=seed)
    return out


def recall_intervals(i2t: np.ndarray, t2i: np.ndarray, i2t_units: np.ndarray, t2i_units: np.ndarray,
                     strata: np.ndarray | None = None, n: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """95% bootstrap intervals of R@K (per direction, queries resampled) and of rsum (each image resampled
    with its caption queries). `strata` (one per image) keeps resamples inside COCO 1K folds."""
    out: dict[str, list[float]] = {}
    for name, ranks, units in (("i2t", i2t, i2t_units), ("t2i", t2i, t2i_units)):
        hits = np.stack([100.0 * (ranks < k) for k in RECALL_KS], axis=1)
        q_strata = None if strata is None else strata[units]
        ci = bootstrap_ci(hits, n=n, seed=seed, strata=q_strata)
        for i, k in enumerate(RECALL_KS):
            out[f"{name}.r{k}"] = [float(ci[0, i]), float(ci[1, i])]
    per_query = [sum(100.0 * (r < k) for k in RECALL_KS) for r in (i2t, t2i)]
    lo, hi = rsum_ci(per_query[0], per_query[1], i2t_units=i2t_units, t2i_units=t2i_units,
                     n_units=len(i2t_units), strata=strata, n=n, seed=seed)
    out["rsum"] = [lo, hi]
    return out


def _with_sums(i2t: dict, t2i: dict) -> dict:
    def rsum(a: dict, b: dict) -> float:
        return sum(a[f"r{k}"] for k in RECALL_KS) + sum(b[f"r{k}"] for k in RECALL_KS)

    return {
        "i2t": i2t, "t2i": t2i,
        "rsum": rsum(i2t, t2i),
        "ties": {
            "rsum_tie_optimistic": rsum(i2t["tie_optimistic"], t2i["tie_optimistic"]),
            "i2t_affected_queries": i2t["tie_affected_queries"],
            "t2i_affected_queries": t2i["tie_affected_queries"],
        },
    }


def fold_slices(n_img: int, folds: int = 5, captions_per_image: int = 5) -> list[tuple[slice, slice]]:
    """COCO 1K folds: images [1000k, 1000k+1000) and their captions [5000k, 5000k+5000)."""
    if n_img % folds:
        raise MatrixError(f"{n_img} images cannot be cut into {folds} equal folds")
    size = n_img // folds
    return [(slice(f * size, (f + 1) * size),
             slice(f * size * captions_per_image, (f + 1) * size * captions_per_image)) for f in range(folds)]


def fold_recall(sims: np.ndarray, folds: int = 5, captions_per_image: int = 5, bootstrap: int = 0,
                seed: int = 0) -> dict:
    """COCO 1K: each metric is the mean of its per-fold values (medr may be fractional)."""
    sims = np.asarray(sims)
    if sims.ndim != 2 or sims.shape[1] != captions_per_image * sims.shape[0]:
        check_matrix(sims, captions_per_image)  # raises the shape error
    per_fold = []
    for k, (r, c) in enumerate(fold_slices(sims.shape[0], folds, captions_per_image)):
        name = f"fold {k} of the similarity matrix"
        block = check_matrix(sims[r, c], captions_per_image, name=name, finite=False)
        per_fold.append(count_ranks(block, captions_per_image, name=name))
    return fold_recall_from_ranks(per_fold, captions_per_image, bootstrap, seed)


def fold_recall_from_ranks(per_fold_ranks: list[tuple[QueryRanks, QueryRanks]], captions_per_image: int = 5,
                           bootstrap: int = 0, seed: int = 0) -> dict:
    """`fold_recall` of each fold's (i2t, t2i) ranks, ranked within the fold (a streamed rank summary's too)."""
    ranks = [(i2t.pessimistic, t2i.pessimistic) for i2t, t2i in per_fold_ranks]
    per_fold = [_with_sums(_direction(i2t), _direction(t2i)) for i2t, t2i in per_fold_ranks]
    folds = len(per_fold)
    out = _mean_tree(per_fold)
    # counts are totals over folds, not means
    for d in ("i2t", "t2i"):
        out[d]["tie_affected_queries"] = sum(f[d]["tie_affected_queries"] for f in per_fold)
        out[d]["queries"] = sum(f[d]["queries"] for f in per_fold)
    for key in ("i2t_affected_queries", "t2i_affected_queries"):
        out["ties"][key] = sum(f["ties"][key] for f in per_fold)
    out["folds"] = [{"i2t": {k: f["i2t"][k] for k in ("r1", "r5", "r10", "medr", "meanr")},
                     "t2i": {k: f["t2i"][k] for k in ("r1", "r5", "r10", "medr", "meanr")},
                     "rsum": f["rsum"]} for f in per_fold]
    if bootstrap:  # equal-sized folds: the mean over folds is the mean over all queries, folds as strata
        n_img = sum(len(a) for a, _ in ranks)
        out["ci"] = recall_intervals(np.concatenate([a for a, _ in ranks]), np.concatenate([b for _, b in ranks]),
                                     np.arange(n_img), np.arange(n_img * captions_per_image) // captions_per_image,
                                     strata=np.arange(n_img) // (n_img // folds), n=bootstrap, seed=seed)
    return out


def _mean_tree(items: list):
    first = items[0]
    if isinstance(first, dict):
        return {k: _mean_tree([it[k] for it in items]) for k in first}
    return float(np.mean(items))
