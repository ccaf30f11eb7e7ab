"""ECCV Caption metrics and the COCO 1K / 5K and CxC recalls of eccv_caption, from a similarity matrix.

eccv_caption (`Metrics.compute_all_metrics`) ranks nothing itself: callers pass top-K lists per query. Here the
same numbers come straight from the images x captions matrix (COCO 5K `testall` order, mapped to COCO ids by
`harness.eval.metrics.ids`), with ground truth read from the package's json files:

- `coco5k_r{K}` / `coco1k_r{K}`: original COCO pairs; 1K = mean over the five 1000-image folds of the
  package's `coco_test_ids` order, each query ranked only against its own fold.
- `cxc_r{K}`: CxC SITS test pairs with score >= 3 (queries without a positive are skipped: 24,972 t2i).
- `eccv_map_at_r`, `eccv_rprecision`, `eccv_r{K}`: the ECCV Caption positives (1,261 image queries,
  1,332 caption queries); R = number of positives; mAP@R = (1/R) sum_{r<=R} [item r positive] P@r.
- `pmrp`: R-Precision on plausible matches, when PM files (`extra_file_dir`) or COCO instance annotations
  (`instances_json`, the ECCV Caption rule: images whose 90-slot category vectors differ in <= 2 slots,
  the query's own image left out) are given; otherwise reported unavailable with the reason.

Ranks are exact and computed without sorting whole rows: a query's best positive is ranked by counting
gallery items above it, and the positions of all positives (mAP@R, R-Precision) come from the query's top
L scores, with L large enough that every position that can matter is exact. Ties with negatives are
bounded both ways: headline values are tie-pessimistic (negatives tied with a positive rank first), the
tie-optimistic values and the number of queries whose values differ are reported beside them. All values
are percentages. The ranking kernels here are shared with `harness.eval.metrics.cxc`.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch

from harness.eval.metrics.bootstrap import DEFAULT_RESAMPLES, QueryScores, summarize
from harness.eval.metrics.ids import (
    CocoTestIds,
    IdError,
    IdLists,
    canonical_ids,
    canonical_permutation,
    load_id_json,
    read_id_lists,
    resolve_ids,
)
from harness.eval.metrics.recall import check_matrix

KS = (1, 5, 10)
FOLDS = 5
N_FOLD_IMAGES = 1000  # images of one COCO 1K fold
PM_FILES = ("pm_image_to_caption.json", "pm_caption_to_image.json")
PM_THRESHOLD = 2  # ECCV Caption merge.py default: category vectors differing in at most 2 slots
I2T, T2I = "i2t", "t2i"
_BROADCAST_LIMIT = 1 << 14  # positives x top scores per query up to which positions use plain comparisons


# ---------------------------------------------------------------------------------------------------
# Positive sets and ranking kernels
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PositiveSets:
    """The positives of every query as CSR: query q's positives are indices[indptr[q]:indptr[q+1]]."""

    indptr: np.ndarray  # (n_queries + 1,) int64
    indices: np.ndarray  # gallery indices, sorted and unique within a query
    n_gallery: int
    missing: np.ndarray | None = None  # per query: listed positives absent from the gallery (count in R only)

    @classmethod
    def from_pairs(cls, query: np.ndarray, gallery: np.ndarray, n_queries: int, n_gallery: int,
                   missing: np.ndarray | None = None) -> PositiveSets:
        q = np.asarray(query, dtype=np.int64)
        g = np.asarray(gallery, dtype=np.int64)
        key = np.unique(q * n_gallery + g)
        q, g = key // n_gallery, key % n_gallery
        indptr = np.zeros(n_queries + 1, dtype=np.int64)
        np.cumsum(np.bincount(q, minlength=n_queries), out=indptr[1:])
        return cls(indptr, g, n_gallery, missing)

    def r_sizes(self, queries: np.ndarray) -> np.ndarray:
        """R of each query: its number of listed positives, including those absent from the gallery."""
        sizes = self.sizes[queries]
        return sizes if self.missing is None else sizes + self.missing[queries]

    @property
    def n_queries(self) -> int:
        return len(self.indptr) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def queries(self) -> np.ndarray:
        """Queries with at least one positive (the evaluated ones)."""
        return np.flatnonzero(self.sizes > 0)

    def flat(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query of each pair, gallery index of each pair, segment starts) for `queries`, concatenated."""
        sizes = self.sizes[queries]
        starts = np.cumsum(sizes) - sizes
        idx = np.arange(int(sizes.sum())) - np.repeat(starts - self.indptr[queries], sizes)
        return np.repeat(queries, sizes), self.indices[idx], starts

    def padded(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(len(queries), max size) gallery indices padded with -1, and the sizes."""
        sizes = self.sizes[queries]
        out = np.full((len(queries), int(sizes.max()) if len(sizes) else 0), -1, dtype=np.int64)
        _, g, starts = self.flat(queries)
        rows = np.repeat(np.arange(len(queries)), sizes)
        cols = np.arange(len(g)) - np.repeat(starts, sizes)
        out[rows, cols] = g
        return out, sizes


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def parallel_map(fn, items) -> None:
    items = list(items)
    if len(items) <= 1:
        for it in items:
            fn(it)
        return
    with ThreadPoolExecutor(_threads()) as pool:
        list(pool.map(fn, items))


def spans(n: int, size: int, boundaries: int | None = None) -> list[tuple[int, int]]:
    """[a, b) chunks of at most `size` that never cross a multiple of `boundaries`."""
    step = boundaries or n
    out = []
    for start in range(0, n, step):
        stop = min(n, start + step)
        out += [(a, min(stop, a + size)) for a in range(start, stop, size)]
    return out


def row_counts(mask: np.ndarray) -> np.ndarray:
    """True entries per row of a 2-D bool array (per-row count_nonzero is much faster than axis=1)."""
    return np.fromiter((np.count_nonzero(r) for r in mask), dtype=np.int64, count=mask.shape[0])


def col_counts(mask: np.ndarray) -> np.ndarray:
    """True entries per column of a 2-D bool array with at most 255 rows (a uint8 sum, vectorized)."""
    if mask.shape[0] > 255:
        raise ValueError("col_counts needs at most 255 rows per block")
    return mask.view(np.uint8).sum(axis=0, dtype=np.uint8)


def pair_scores(sims: np.ndarray, direction: str, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return sims[query, gallery] if direction == I2T else sims[gallery, query]


def best_positive(sims: np.ndarray, pos: PositiveSets, direction: str,
                  queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score of each query's best positive and how many of its positives share that score."""
    q, g, starts = pos.flat(queries)
    s = pair_scores(sims, direction, q, g)
    best = np.maximum.reduceat(s, starts)
    tied = np.add.reduceat((s == np.repeat(best, pos.sizes[queries])).astype(np.int64), starts)
    return best, tied


def count_above(sims: np.ndarray, direction: str, thr: np.ndarray,
                queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the gallery items scoring > and >= its threshold `thr` (queries=None: all, in order)."""
    n_rows, n_cols = sims.shape
    n_q = (n_rows if direction == I2T else n_cols) if queries is None else len(queries)
    thr = np.asarray(thr)
    gt = np.zeros(n_q, np.int64)
    ge = np.zeros(n_q, np.int64)

    def work(span: tuple[int, int]) -> None:
        a, b = span
        if direction == I2T:
            block = sims[a:b] if queries is None else np.take(sims, queries[a:b], axis=0)
            t = thr[a:b, None]
            gt[a:b] = row_counts(block > t)
            ge[a:b] = row_counts(block >= t)
        else:
            sub = sims[:, a:b] if queries is None else np.take(sims, queries[a:b], axis=1)
            t = thr[None, a:b]
            for r0, r1 in spans(n_rows, 255):
                gt[a:b] += col_counts(sub[r0:r1] > t)
                ge[a:b] += col_counts(sub[r0:r1] >= t)

    parallel_map(work, spans(n_q, 128 if direction == I2T else 1024))
    return gt, ge


@dataclass
class SweepResult:
    """Counts of one pass over the matrix; see `sweep`."""

    i2t: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # gt, ge, fold gt, fold ge per row
    t2i: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # the same per column
    cols: np.ndarray  # (len(keep_cols), n_rows) copies of the requested columns


def sweep(sims: np.ndarray, row_thr: np.ndarray, col_thr: np.ndarray, folds: int,
          keep_cols: np.ndarray, block: int = 40) -> SweepResult:
    """One pass over the matrix, block of rows by block of rows, while each block is in cache:

    - per row i: items > and >= row_thr[i] in the row, and within the row's fold (i2t counts);
    - per column j: items > and >= col_thr[j] in the column, and within the column's fold (t2i counts);
    - copies of the columns `keep_cols` (gathering columns is cheap while their rows are in cache).

    Rows and columns are cut into `folds` equal contiguous folds (the COCO 1K folds).
    """
    n_rows, n_cols = sims.shape
    row_fold, col_fold = n_rows // folds, n_cols // folds
    i2t = tuple(np.zeros(n_rows, np.int64) for _ in range(4))
    kept_cols = np.empty((len(keep_cols), n_rows), sims.dtype)
    blocks = spans(n_rows, block, row_fold)
    parts = np.array_split(np.arange(len(blocks)), min(_threads(), len(blocks)))
    col_acc = [tuple(np.zeros(n_cols, np.int64) for _ in range(4)) for _ in parts]
    row_thr = np.asarray(row_thr)[:, None]
    col_thr = np.asarray(col_thr)[None, :]

    def work(part: int) -> None:
        c_gt, c_ge, cf_gt, cf_ge = col_acc[part]
        for s in parts[part]:
            a, b = blocks[s]
            blk = sims[a:b]
            fs = slice((a // row_fold) * col_fold, (a // row_fold + 1) * col_fold)
            above, at_least = blk > row_thr[a:b], blk >= row_thr[a:b]
            i2t[0][a:b] = row_counts(above)
            i2t[1][a:b] = row_counts(at_least)
            if folds > 1:
                i2t[2][a:b] = row_counts(above[:, fs])
                i2t[3][a:b] = row_counts(at_least[:, fs])
            np.greater(blk, col_thr, out=above)
            np.greater_equal(blk, col_thr, out=at_least)
            gt_c, ge_c = col_counts(above), col_counts(at_least)
            c_gt += gt_c
            c_ge += ge_c
            if folds > 1:
                cf_gt[fs] += gt_c[fs]
                cf_ge[fs] += ge_c[fs]
            if len(keep_cols):
                kept_cols[:, a:b] = np.take(blk, keep_cols, axis=1).T

    parallel_map(work, range(len(parts)))
    t2i = tuple(np.sum([acc[i] for acc in col_acc], axis=0) for i in range(4))
    if folds == 1:  # a single fold is the whole matrix
        i2t, t2i = (i2t[0], i2t[1], i2t[0], i2t[1]), (t2i[0], t2i[1], t2i[0], t2i[1])
    return SweepResult(i2t, t2i, kept_cols)


def query_score_rows(sims: np.ndarray, direction: str, queries: np.ndarray) -> np.ndarray:
    """(len(queries), gallery) scores of the given queries, one query per row."""
    return np.take(sims, queries, axis=0) if direction == I2T else np.take(sims, queries, axis=1).T


def _group_count(n_gallery: int, L: int, target: int = 16) -> int | None:
    """A divisor g of the row length near `target` leaving at least 2L groups, or None."""
    fits = [g for g in range(4, 65) if n_gallery % g == 0 and n_gallery // g >= 2 * L]
    return min(fits, key=lambda g: abs(g - target)) if fits else None


def top_scores(rows: np.ndarray, L: int) -> np.ndarray:
    """The L largest scores of every row, in no particular order (all of them when L >= row length).

    Exact, with a cheap prefilter: a row of G scores is viewed as g interleaved slices of G/g; the
    elementwise maximum over the slices gives G/g group maxima. The L-th largest group maximum is at most
    the row's L-th largest score, so only groups whose maximum reaches it can hold a top-L score; the
    selection runs on those few candidates.
    """
    n, G = rows.shape
    if L >= G:
        return rows
    g = _group_count(G, L)
    if g is None:
        return torch.topk(torch.from_numpy(np.ascontiguousarray(rows)), L, dim=1, sorted=False).values.numpy()
    ng = G // g
    view = np.ascontiguousarray(rows).reshape(n, g, ng)  # group j = {j, j + ng, j + 2 ng, ...}
    gmax = view.max(axis=1)
    tau = np.partition(gmax, ng - L, axis=1)[:, ng - L:ng - L + 1]
    chosen = gmax >= tau
    counts = chosen.sum(axis=1)
    width = int(counts.max())
    r, grp = np.nonzero(chosen)
    slot = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    idx = np.zeros((n, width), np.int64)
    idx[r, slot] = grp
    cand = np.take_along_axis(view, np.broadcast_to(idx[:, None, :], (n, g, width)), axis=2)
    unused = np.arange(width)[None, :] >= counts[:, None]
    cand = np.where(unused[:, None, :], -np.inf, cand).astype(rows.dtype).reshape(n, g * width)
    return np.partition(cand, g * width - L, axis=1)[:, g * width - L:]


def query_top_scores(sims: np.ndarray, direction: str, queries: np.ndarray, L: int) -> np.ndarray:
    """`top_scores` of the given queries' rows (i2t) or columns (t2i), in parallel chunks."""
    n_gallery = sims.shape[1] if direction == I2T else sims.shape[0]
    out = np.empty((len(queries), min(L, n_gallery)), sims.dtype)
    chunk = 128 if direction == I2T else 1024  # columns are gathered in wide blocks: far fewer strided reads

    def work(span: tuple[int, int]) -> None:
        a, b = span
        out[a:b] = top_scores(query_score_rows(sims, direction, queries[a:b]), L)

    parallel_map(work, spans(len(queries), chunk))
    return out


def positions_from_top(top: np.ndarray, p: np.ndarray, sizes: np.ndarray,
                       n_gallery: int) -> tuple[np.ndarray, np.ndarray]:
    """0-based positions of each query's positives, best first: (tie-pessimistic, tie-optimistic).

    `top` holds the L largest gallery scores of each query (any order), `p` the positives' scores sorted
    best first and padded with -inf, `sizes` the number of real positives. A position that would need
    more than the top L scores is +inf; that is safe for any cutoff c (R@c, R-Precision or mAP@R with
    R = c) with c <= L - max size. Padding slots are +inf too.
    """
    L, width = top.shape[1], p.shape[1]
    exact = L >= n_gallery
    if width * L <= _BROADCAST_LIMIT:  # small: compare every positive with every top score
        gt_all = np.count_nonzero(top[:, None, :] > p[:, :, None], axis=2)
        ge_all = np.count_nonzero(top[:, None, :] >= p[:, :, None], axis=2)
        gt_pos = np.count_nonzero(p[:, None, :] > p[:, :, None], axis=2)
        ge_pos = np.count_nonzero(p[:, None, :] >= p[:, :, None], axis=2)
    else:  # large (PMRP): binary search in the sorted top scores
        asc = torch.sort(torch.from_numpy(np.ascontiguousarray(top)), dim=1).values
        tp = torch.from_numpy(np.ascontiguousarray(p)).to(asc.dtype)
        gt_all = L - torch.searchsorted(asc, tp, right=True).numpy()
        ge_all = L - torch.searchsorted(asc, tp, right=False).numpy()
        pa = torch.from_numpy(np.ascontiguousarray(p[:, ::-1])).to(asc.dtype)
        gt_pos = width - torch.searchsorted(pa, tp, right=True).numpy()
        ge_pos = width - torch.searchsorted(pa, tp, right=False).numpy()
    k = np.arange(width)[None, :]
    opt = (k + gt_all - gt_pos).astype(np.float64)
    pess = (k + ge_all - ge_pos).astype(np.float64)
    if not exact:
        opt[gt_all >= L] = np.inf
        pess[ge_all >= L] = np.inf
    invalid = k >= sizes[:, None]
    opt[invalid] = np.inf
    pess[invalid] = np.inf
    return pess, opt


def sorted_positive_scores(sims: np.ndarray, direction: str, queries: np.ndarray,
                           padded: np.ndarray) -> np.ndarray:
    """Scores of each query's positives (padded indices, -1 = none), best first, padding -inf."""
    valid = padded >= 0
    safe = np.where(valid, padded, 0)
    q = np.broadcast_to(queries[:, None], safe.shape)
    p = pair_scores(sims, direction, q, safe)
    p = np.where(valid, p, -np.inf).astype(sims.dtype)
    return -np.sort(-p, axis=1)


def position_metrics(positions: np.ndarray, r_sizes: np.ndarray, ks=KS, ranked: bool = True) -> dict[str, np.ndarray]:
    """Per-query R@K, and with `ranked` R-Precision and mAP@R, in percent, from `positions_from_top`.

    `r_sizes` is R per query (listed positives, including any that are not in the gallery).
    """
    out = {f"r{k}": 100.0 * (positions[:, 0] < k) for k in ks}
    if ranked:
        R = r_sizes.astype(np.float64)[:, None]
        inside = positions < R
        out["rprecision"] = 100.0 * inside.sum(axis=1) / R[:, 0]
        prec = np.where(inside, (np.arange(positions.shape[1])[None, :] + 1.0) / (positions + 1.0), 0.0)
        out["map_at_r"] = 100.0 * prec.sum(axis=1) / R[:, 0]
    return out


def ranking_depth(pos: PositiveSets, queries: np.ndarray, ks=KS) -> int:
    """How many top scores per query `ranked_from_top` needs: max R + max(max R, max K)."""
    r = int(pos.r_sizes(queries).max()) if len(queries) else 1
    return r + max(r, max(ks))


def ranked_from_top(top: np.ndarray, sims: np.ndarray, direction: str, pos: PositiveSets,
                    queries: np.ndarray, ks=KS, chunk: int = 512, *, n_gallery: int | None = None,
                    ranked: bool = True) -> tuple[dict, dict]:
    """(pessimistic, optimistic) per-query R@K (with `ranked`, R-Precision and mAP@R too) from the queries'
    top scores; `sims` gives the positives' scores (a matrix or a `PairLookup`), `n_gallery` the items each
    query is ranked among (default: the matrix's other side).

    `top` must hold at least `ranking_depth(pos, queries, ks)` top scores per query (or all of them).
    """
    if n_gallery is None:
        n_gallery = sims.shape[1] if direction == I2T else sims.shape[0]
    pess_parts: list[dict] = []
    opt_parts: list[dict] = []
    for a in range(0, len(queries), chunk):
        qs = queries[a:a + chunk]
        padded, sizes = pos.padded(qs)
        p = sorted_positive_scores(sims, direction, qs, padded)
        if np.isnan(p).any():
            raise ValueError("a positive pair's score is NaN or was not kept (a streamed evaluation's top lists)")
        pess, opt = positions_from_top(top[a:a + chunk], p, sizes, n_gallery)
        pess_parts.append(position_metrics(pess, pos.r_sizes(qs), ks, ranked=ranked))
        opt_parts.append(position_metrics(opt, pos.r_sizes(qs), ks, ranked=ranked))

    def cat(parts: list[dict]) -> dict:
        return {m: np.concatenate([p[m] for p in parts]) for m in parts[0]} if parts else {}

    return cat(pess_parts), cat(opt_parts)


def ranked_scores(sims: np.ndarray, pos: PositiveSets, direction: str, ks=KS,
                  queries: np.ndarray | None = None, chunk: int = 4096) -> tuple[np.ndarray, dict, dict]:
    """(queries, pessimistic, optimistic) per-query R@K, R-Precision and mAP@R for one positive set."""
    queries = pos.queries() if queries is None else queries
    depth = ranking_depth(pos, queries, ks)
    parts = []
    for a in range(0, len(queries), chunk):
        qs = queries[a:a + chunk]
        parts.append(ranked_from_top(query_top_scores(sims, direction, qs, depth), sims, direction, pos, qs, ks))
    pess = {m: np.concatenate([p[0][m] for p in parts]) for m in parts[0][0]} if parts else {}
    opt = {m: np.concatenate([p[1][m] for p in parts]) for m in parts[0][1]} if parts else {}
    return queries, pess, opt


def recall_from_counts(gt: np.ndarray, ge: np.ndarray, tied_pos: np.ndarray, ks=KS) -> tuple[dict, dict]:
    """Per-query R@K (pessimistic, optimistic) in percent from best-positive counts."""
    pess_rank = ge - tied_pos
    return ({f"r{k}": 100.0 * (pess_rank < k) for k in ks}, {f"r{k}": 100.0 * (gt < k) for k in ks})


# ---------------------------------------------------------------------------------------------------
# Ground truth in canonical (eccv_caption coco_test_ids) index space
# ---------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _id_index() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    canon = canonical_ids()
    img_sort = np.argsort(canon.image_ids)
    cap_sort = np.argsort(canon.caption_ids)
    return canon.image_ids[img_sort], img_sort, canon.caption_ids[cap_sort], cap_sort


def index_of(ids: np.ndarray, kind: str, where: str, allow_missing: bool = False) -> np.ndarray:
    """Canonical row (kind='image') or column (kind='caption') of COCO ids.

    An id outside the COCO 5K test set is an error, or -1 with `allow_missing`.
    """
    img_keys, img_pos, cap_keys, cap_pos = _id_index()
    keys, pos = (img_keys, img_pos) if kind == "image" else (cap_keys, cap_pos)
    ids = np.asarray(ids, dtype=np.int64)
    at = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    bad = keys[at] != ids
    if bad.any() and not allow_missing:
        raise IdError(f"{where}: {int(bad.sum())} {kind} ids are not in the COCO 5K test set "
                      f"(first: {int(ids[bad][0])})")
    return np.where(bad, -1, pos[at])


def positives_from_id_lists(lists: IdLists, query_kind: str, where: str) -> PositiveSets:
    """{query COCO id: positive COCO ids} -> PositiveSets in canonical index space.

    Query ids must be COCO 5K test ids. Positive ids outside the test set (ECCV Caption lists two COCO
    captions that are not among the Karpathy 5 of their image) cannot be retrieved but still count in R,
    as in eccv_caption; they are kept in `missing`. Repeated ids count once.
    """
    gallery_kind = "caption" if query_kind == "image" else "image"
    n_q, n_g = (5000, 25000) if query_kind == "image" else (25000, 5000)
    q = np.repeat(index_of(lists.keys, query_kind, where), lists.sizes)
    g = index_of(lists.values, gallery_kind, where, allow_missing=True)
    found = g >= 0
    lost = np.unique(np.stack([q[~found], lists.values[~found]]), axis=1)[0]
    missing = np.bincount(lost, minlength=n_q).astype(np.int64)
    return PositiveSets.from_pairs(q[found], g[found], n_q, n_g, missing)


@dataclass(frozen=True)
class GroundTruth:
    i2t: PositiveSets
    t2i: PositiveSets


@cache
def package_gt(name: str) -> GroundTruth:
    """eccv_caption's `original`, `cxc` or `eccv` ground truth in canonical index space."""
    return GroundTruth(
        positives_from_id_lists(load_id_json(f"{name}_image_to_caption"), "image", f"{name}_image_to_caption.json"),
        positives_from_id_lists(load_id_json(f"{name}_caption_to_image"), "caption", f"{name}_caption_to_image.json"),
    )


def pm_gt_from_files(extra_file_dir: str | Path) -> GroundTruth:
    """Plausible-match ground truth from eccv_caption's PM files (`pm_image_to_caption.json`, ...)."""
    d = Path(extra_file_dir)
    i2t_path, t2i_path = d / PM_FILES[0], d / PM_FILES[1]
    return GroundTruth(positives_from_id_lists(read_id_lists(i2t_path), "image", str(i2t_path)),
                       positives_from_id_lists(read_id_lists(t2i_path), "caption", str(t2i_path)))


def pm_gt_from_instances(instances_json: str | Path, threshold: int = PM_THRESHOLD) -> GroundTruth:
    """Plausible matches from COCO instance annotations (ECCV Caption's rule, own image excluded).

    Image j is a plausible match of image i (i != j) when their 90-slot category indicator vectors differ
    in at most `threshold` slots; images without any instance annotation take no part. An image query's
    positives are the captions of its plausible images; a caption query's are the plausible images of
    the caption's own image.
    """
    path = Path(instances_json)
    with open(path) as f:
        data = json.load(f)
    if "annotations" not in data:
        raise IdError(f"{path}: no 'annotations' list; expected COCO instances_val2014.json")
    canon = canonical_ids()
    img_keys, img_pos, _, _ = _id_index()
    iid = np.asarray([int(a["image_id"]) for a in data["annotations"]], dtype=np.int64)
    cat = np.asarray([int(a["category_id"]) for a in data["annotations"]], dtype=np.int64)
    at = np.minimum(np.searchsorted(img_keys, iid), len(img_keys) - 1)
    keep = img_keys[at] == iid
    if ((cat < 1) | (cat > 90)).any():
        raise IdError(f"{path}: category ids must be COCO's 1..90, found {int(cat[(cat < 1) | (cat > 90)][0])}")
    codes = np.zeros((len(canon.image_ids), 90), dtype=np.float32)
    codes[img_pos[at[keep]], cat[keep] - 1] = 1.0
    has = codes.any(axis=1)
    if not has.any():
        raise IdError(f"{path}: no instance annotation of any COCO 5K test image")
    ones = codes.sum(axis=1)
    hamming = ones[:, None] + ones[None, :] - 2.0 * (codes @ codes.T)
    adj = (hamming <= threshold) & has[:, None] & has[None, :]
    np.fill_diagonal(adj, False)
    qi, gj = np.nonzero(adj)
    n_img, n_cap = len(canon.image_ids), len(canon.caption_ids)
    five = np.arange(5)
    i2t = PositiveSets.from_pairs(np.repeat(qi, 5), (gj[:, None] * 5 + five).ravel(), n_img, n_cap)
    t2i = PositiveSets.from_pairs((qi[:, None] * 5 + five).ravel(), np.repeat(gj, 5), n_cap, n_img)
    return GroundTruth(i2t, t2i)


# ---------------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------------
def to_canonical(sims: np.ndarray, ids: CocoTestIds) -> np.ndarray:
    """The matrix with rows/columns reordered to eccv_caption's canonical order (no copy if already)."""
    rows, cols = canonical_permutation(ids)
    if rows is None and cols is None:
        return sims
    out = np.empty_like(sims)

    def work(span: tuple[int, int]) -> None:  # row blocks: column gathers stay inside cached rows
        a, b = span
        block = sims[a:b] if rows is None else np.take(sims, rows[a:b], axis=0)
        out[a:b] = block if cols is None else np.take(block, cols, axis=1)

    parallel_map(work, spans(sims.shape[0], 128))
    return out


def _family_scores(direction: str, family: str, queries: np.ndarray, pess: dict, opt: dict,
                   fold_size: int | None = None) -> QueryScores:
    units = queries if direction == I2T else queries // 5
    strata = (units // fold_size) if fold_size else None
    return QueryScores(direction, family, pess, opt, units=units, n_units=5000, strata=strata)


def matrix_scores(sims: np.ndarray, ks=KS) -> list[QueryScores]:
    """Per-query COCO 5K, COCO 1K, CxC and ECCV values of a canonical-order 5000 x 25000 matrix.

    One sweep over the matrix counts, for every image row and caption column, the items above its best
    COCO positive (whole gallery and own fold) and copies out the ECCV query columns; CxC reuses those
    counts wherever its best positive scores the same and counts the rest separately; ECCV ranks its
    positives within each query's top scores.
    """
    coco, cxc, eccv = package_gt("original"), package_gt("cxc"), package_gt("eccv")
    fold_img = sims.shape[0] // FOLDS
    best = {}
    for direction, pos in ((I2T, coco.i2t), (T2I, coco.t2i)):
        all_q = np.arange(pos.n_queries)
        if not np.array_equal(pos.queries(), all_q):
            raise IdError("eccv_caption original ground truth does not cover every COCO 5K query")
        best[direction] = best_positive(sims, pos, direction, all_q)
    eq = {I2T: eccv.i2t.queries(), T2I: eccv.t2i.queries()}
    depth = {d: ranking_depth(pos, eq[d], ks) for d, pos in ((I2T, eccv.i2t), (T2I, eccv.t2i))}
    swept = sweep(sims, best[I2T][0], best[T2I][0], FOLDS, eq[T2I])
    groups: list[QueryScores] = []
    for direction, counts, cpos in ((I2T, swept.i2t, cxc.i2t), (T2I, swept.t2i, cxc.t2i)):
        thr, tied = best[direction]
        gt, ge, fgt, fge = counts
        all_q = np.arange(len(thr))
        groups.append(_family_scores(direction, "coco5k", all_q, *recall_from_counts(gt, ge, tied, ks)))
        groups.append(_family_scores(direction, "coco1k", all_q, *recall_from_counts(fgt, fge, tied, ks),
                                     fold_size=fold_img))
        cq = cpos.queries()
        c_thr, c_tied = best_positive(sims, cpos, direction, cq)
        c_gt, c_ge = gt[cq].copy(), ge[cq].copy()
        redo = np.flatnonzero(c_thr != thr[cq])
        if len(redo):
            c_gt[redo], c_ge[redo] = count_above(sims, direction, c_thr[redo], queries=cq[redo])
        groups.append(_family_scores(direction, "cxc", cq, *recall_from_counts(c_gt, c_ge, c_tied, ks)))
    tops = {I2T: query_top_scores(sims, I2T, eq[I2T], depth[I2T]), T2I: top_scores(swept.cols, depth[T2I])}
    for direction, pos in ((I2T, eccv.i2t), (T2I, eccv.t2i)):
        pess, opt = ranked_from_top(tops[direction], sims, direction, pos, eq[direction], ks)
        groups.append(_family_scores(direction, "eccv", eq[direction], pess, opt))
    return groups


@dataclass(frozen=True)
class PairLookup:
    """A canonical-order COCO 5K matrix known only at some pairs (a streamed evaluation's positives):
    `lookup[rows, cols]` gives their scores, NaN for a pair that was not kept. Padding slots of positive
    lists look up pair (q, 0) and are masked by the caller; every real positive is kept by construction."""

    keys: np.ndarray  # sorted row * n_cols + col
    scores: np.ndarray  # float32, aligned with keys
    shape: tuple[int, int] = (5000, 25000)

    @property
    def dtype(self) -> np.dtype:
        return self.scores.dtype

    def __getitem__(self, index: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        rows, cols = (np.asarray(x, dtype=np.int64) for x in index)
        key = rows * self.shape[1] + cols
        if not len(self.keys):
            return np.full(key.shape, np.nan, self.scores.dtype)
        at = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        return np.where(self.keys[at] == key, self.scores[at], np.nan).astype(self.scores.dtype)


@dataclass(frozen=True)
class CocoTops:
    """What the COCO 5K families (coco5k, coco1k, cxc, eccv) need from a matrix that was never held whole,
    in canonical order: every query's largest scores over the whole gallery and over its own COCO 1K fold
    (any order, -inf where a query saw fewer items), and the scores of every positive pair."""

    i2t: np.ndarray  # (5000, Li)
    t2i: np.ndarray  # (25000, Lt)
    i2t_fold: np.ndarray  # (5000, Lfi) within the image's fold
    t2i_fold: np.ndarray  # (25000, Lft)
    pairs: PairLookup


def _coco_ground_truths() -> tuple:
    """Every positive set a COCO 5K family ranks: original, eccv_caption's cxc and eccv, and the CxC CSVs'."""
    from harness.eval.metrics.cxc import cxc_ground_truth

    return package_gt("original"), package_gt("cxc"), package_gt("eccv"), cxc_ground_truth()


def tops_depths(ks=KS) -> tuple[int, int, int, int]:
    """(whole-gallery i2t, t2i, fold i2t, t2i) top-list lengths that make every COCO 5K family exact:
    each family's `ranking_depth` (largest positive set plus the largest cutoff), the largest of them."""
    gts = _coco_ground_truths()
    i2t = max(ranking_depth(g.i2t, g.i2t.queries(), ks) for g in gts)
    t2i = max(ranking_depth(g.t2i, g.t2i.queries(), ks) for g in gts)
    coco = gts[0]
    return i2t, t2i, ranking_depth(coco.i2t, coco.i2t.queries(), ks), ranking_depth(coco.t2i, coco.t2i.queries(), ks)


def coco_positive_keys() -> np.ndarray:
    """Sorted unique canonical keys (image row * 25000 + caption column) of every pair a COCO 5K family ranks."""
    keys = []
    for gt in _coco_ground_truths():
        q, g, _ = gt.i2t.flat(gt.i2t.queries())
        keys.append(q * gt.i2t.n_gallery + g)
        q, g, _ = gt.t2i.flat(gt.t2i.queries())
        keys.append(g * gt.t2i.n_queries + q)
    return np.unique(np.concatenate(keys))


def tops_family(tops: CocoTops, pos: PositiveSets, direction: str, ks=KS, *, fold: bool = False,
                ranked: bool = False) -> tuple[np.ndarray, dict, dict]:
    """(queries, pessimistic, optimistic) per-query R@K (with `ranked`, R-Precision and mAP@R too) of one
    positive set from the top lists: the same values the matrix gives (`recall_from_counts`,
    `ranked_from_top`), as long as the lists are `tops_depths` long."""
    queries = pos.queries()
    top = (tops.i2t_fold if fold else tops.i2t) if direction == I2T else (tops.t2i_fold if fold else tops.t2i)
    n_gallery = (pos.n_gallery // FOLDS) if fold else pos.n_gallery
    need = ranking_depth(pos, queries, ks)
    if top.shape[1] < min(need, n_gallery):
        raise ValueError(f"top lists of {top.shape[1]} scores cannot rank a positive set that needs {need}")
    pess, opt = ranked_from_top(top[queries], tops.pairs, direction, pos, queries, ks,  # type: ignore[arg-type]
                                chunk=4096, n_gallery=n_gallery, ranked=ranked)
    return queries, pess, opt


def tops_query_scores(tops: CocoTops, ks=KS) -> list[QueryScores]:
    """`matrix_scores` of a streamed COCO 5K evaluation: the same families and per-query values."""
    coco, cxc_, eccv = package_gt("original"), package_gt("cxc"), package_gt("eccv")
    groups: list[QueryScores] = []
    for direction, cpos, xpos in ((I2T, coco.i2t, cxc_.i2t), (T2I, coco.t2i, cxc_.t2i)):
        groups.append(_family_scores(direction, "coco5k", *tops_family(tops, cpos, direction, ks)))
        groups.append(_family_scores(direction, "coco1k", *tops_family(tops, cpos, direction, ks, fold=True),
                                     fold_size=N_FOLD_IMAGES))
        groups.append(_family_scores(direction, "cxc", *tops_family(tops, xpos, direction, ks)))
    for direction, pos in ((I2T, eccv.i2t), (T2I, eccv.t2i)):
        groups.append(_family_scores(direction, "eccv", *tops_family(tops, pos, direction, ks, ranked=True)))
    return groups


def pmrp_scores(sims: np.ndarray, pm: GroundTruth) -> list[QueryScores]:
    """Plausible-match R-Precision per query (R = number of plausible matches; exact, full ranking)."""
    groups = []
    for direction, pos in ((I2T, pm.i2t), (T2I, pm.t2i)):
        queries, pess, opt = ranked_scores(sims, pos, direction, ks=(1,), chunk=256)
        groups.append(_family_scores(direction, "pmrp", queries, {"pmrp": pess["rprecision"]},
                                     {"pmrp": opt["rprecision"]}))
    return groups


def plausible_match_source(extra_file_dir: str | Path | None, instances_json: str | Path | None,
               threshold: int) -> tuple[GroundTruth | None, dict]:
    if extra_file_dir is not None:
        d = Path(extra_file_dir)
        missing = [f for f in PM_FILES if not (d / f).is_file()]
        if not missing:
            return pm_gt_from_files(d), {"available": True, "source": str(d)}
        if instances_json is None:
            return None, {"available": False, "reason": f"{', '.join(missing)} not found in {d}"}
    if instances_json is not None:
        p = Path(instances_json)
        if not p.is_file():
            return None, {"available": False, "reason": f"{p} not found"}
        return pm_gt_from_instances(p, threshold), {"available": True, "source": str(p), "threshold": threshold}
    return None, {"available": False,
                  "reason": "PMRP needs plausible-match ground truth: eccv_caption's PM files "
                            f"({', '.join(PM_FILES)}, via extra_file_dir) or COCO instances_val2014.json "
                            "(instances_json); neither was given"}


def eccv_query_scores(sims: np.ndarray | None, ids: CocoTestIds | str | Path | None = None, *, ks=KS,
                      extra_file_dir: str | Path | None = None, instances_json: str | Path | None = None,
                      pm_threshold: int = PM_THRESHOLD, tops: CocoTops | None = None
                      ) -> tuple[list[QueryScores], dict, CocoTestIds]:
    """Per-query values of every metric of the ECCV protocol, the PMRP status and the ids used; from the
    matrix, or from a streamed evaluation's `tops` (then PMRP, which ranks thousands of plausible matches per
    query, is unavailable)."""
    ids = resolve_ids(ids)
    if tops is not None:
        _, pm_status = plausible_match_source(extra_file_dir, instances_json, pm_threshold)
        if pm_status.get("available"):
            pm_status = {"available": False, "reason": "PMRP ranks every plausible match of a query; a streamed "
                         "evaluation keeps only each query's top scores (use --store-matrix always)"}
        return tops_query_scores(tops, ks), pm_status, ids
    if sims is None:
        raise ValueError("ECCV Caption needs the similarity matrix or a streamed evaluation's top lists")
    sims = check_matrix(sims, 5, "ECCV Caption similarity matrix")
    if sims.shape != (5000, 25000):
        raise IdError(f"ECCV Caption needs the COCO 5K 5000 x 25000 matrix, got {sims.shape[0]} x {sims.shape[1]}")
    sims = to_canonical(sims, ids)
    groups = matrix_scores(sims, ks)
    pm, pm_status = plausible_match_source(extra_file_dir, instances_json, pm_threshold)
    if pm is not None:
        groups += pmrp_scores(sims, pm)
    return groups, pm_status, ids


def eccv_protocol(sims: np.ndarray | None, ids: CocoTestIds | str | Path | None = None, *, ks=KS,
                  extra_file_dir: str | Path | None = None, instances_json: str | Path | None = None,
                  pm_threshold: int = PM_THRESHOLD, bootstrap: int = DEFAULT_RESAMPLES, seed: int = 0,
                  tops: CocoTops | None = None) -> dict:
    """The ECCV Caption protocol of a COCO 5K images x captions matrix, as a JSON-ready dict.

    `ids`: a CocoTestIds, a data folder holding testall_ids.txt / testall_capids.txt, or None (package
    order, with a warning). Keys under "i2t" / "t2i" follow eccv_caption's metric names (eccv_map_at_r,
    eccv_rprecision, eccv_r1, eccv_r5, eccv_r10, coco1k_r1, ..., coco5k_r1, ..., cxc_r1, ..., pmrp) and
    are in percent; "rsum" holds the coco1k / coco5k / cxc sums; "ci95" the bootstrap intervals;
    "pmrp_status" says whether PMRP could be computed and from what (or why not). With `tops` (a streamed
    evaluation, `sims` None) every value but PMRP is the same as the matrix's.
    """
    groups, pm_status, ids = eccv_query_scores(sims, ids, ks=ks, extra_file_dir=extra_file_dir,
                                               instances_json=instances_json, pm_threshold=pm_threshold, tops=tops)
    out = {"protocol": "eccv", **summarize(groups, n=bootstrap, seed=seed)}
    out["pmrp_status"] = pm_status
    out["ids"] = ids.to_json()
    out["tie_rule"] = ("headline values are tie-pessimistic (negatives tied with a positive ranked first); "
                       "tie_optimistic holds the other bound")
    return out
