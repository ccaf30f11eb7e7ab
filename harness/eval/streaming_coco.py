"""What ECCV Caption and CxC keep from a streamed COCO 5K evaluation (`--store-matrix never`).

Their families (COCO 5K / 1K recall, CxC recall, ECCV mAP@R, R-Precision and R@K) rank a query's positives
among its best-scoring gallery items; a position beyond the largest positive set plus the largest cutoff never
changes a value (`harness.eval.metrics.eccv.positions_from_top`). So a streamed evaluation keeps, in eccv_caption's
canonical order, every query's largest scores over the whole gallery and over its own COCO 1K fold (lengths from
`tops_depths`: 96 per image, 38 per caption) and the scores of every positive pair, and every value equals the
dense path's, tie bounds included. The lists cost 5000 x 96 + 25000 x 38 floats; the matrix costs 125M.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.eval.metrics.eccv import FOLDS, CocoTops, PairLookup, coco_positive_keys, tops_depths
from harness.eval.metrics.ids import N_CAPTIONS, N_IMAGES, CocoTestIds, canonical_permutation


def _merge(kept: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """The largest kept.shape[1] values of each row of kept and new together (any order)."""
    r = kept.shape[1]
    if new.shape[1] > r:
        new = torch.topk(new, r, dim=1, sorted=False).values
    return torch.topk(torch.cat([kept, new], dim=1), r, dim=1, sorted=False).values


class CocoTopsCollector:
    """Fed every tile of a streamed COCO 5K evaluation (data-folder order), gives its `CocoTops`.

    `ids` name the matrix's rows and the columns `columns` (data columns in the ids' caption order; None: all
    columns in order); other columns (captions outside the COCO 5K test set) take no part."""

    def __init__(self, n_img: int, n_cap: int, ids: CocoTestIds, columns: np.ndarray | None = None) -> None:
        rows, cols = canonical_permutation(ids)
        data_row = np.arange(N_IMAGES) if rows is None else np.asarray(rows)
        sub_col = np.arange(N_CAPTIONS) if cols is None else np.asarray(cols)
        data_col = sub_col if columns is None else np.asarray(columns, dtype=np.int64)[sub_col]
        if n_img != N_IMAGES or (data_col >= n_cap).any():
            raise ValueError(f"COCO top lists need the COCO 5K images and captions; got {n_img} x {n_cap}")
        self.canon_row = np.empty(n_img, np.int64)
        self.canon_row[data_row] = np.arange(N_IMAGES)
        self.canon_col = np.full(n_cap, -1, np.int64)
        self.canon_col[data_col] = np.arange(N_CAPTIONS)
        li, lt, fi, ft = tops_depths()
        self.i2t = torch.full((N_IMAGES, li), -torch.inf)
        self.t2i = torch.full((N_CAPTIONS, lt), -torch.inf)
        self.i2t_fold = torch.full((N_IMAGES, fi), -torch.inf)
        self.t2i_fold = torch.full((N_CAPTIONS, ft), -torch.inf)
        keys = coco_positive_keys()  # canonical row * 25000 + col
        rows_d, cols_d = data_row[keys // N_CAPTIONS], data_col[keys % N_CAPTIONS]
        order = np.lexsort((cols_d, rows_d))
        self.keys, self.pair_row, self.pair_col = keys[order], rows_d[order], cols_d[order]
        self.pair_scores = np.full(len(keys), np.nan, np.float32)

    def add(self, a: int, c: int, values: torch.Tensor) -> None:
        """One tile: data rows a.., data columns c.. (float32 scores)."""
        n, w = values.shape
        cc = self.canon_col[c:c + w]
        keep = np.flatnonzero(cc >= 0)
        lo, hi = np.searchsorted(self.pair_row, [a, a + n])
        pr, pc = self.pair_row[lo:hi], self.pair_col[lo:hi]
        inside = np.flatnonzero((pc >= c) & (pc < c + w))
        if len(inside):
            self.pair_scores[lo + inside] = values[pr[inside] - a, pc[inside] - c].numpy()
        if not len(keep):
            return
        v = values if len(keep) == w else values[:, torch.from_numpy(keep)]
        rows = torch.from_numpy(self.canon_row[a:a + n])
        cols = torch.from_numpy(cc[keep])
        self.i2t[rows] = _merge(self.i2t[rows], v)
        self.t2i[cols] = _merge(self.t2i[cols], v.T)
        same = (rows[:, None] // (N_IMAGES // FOLDS)) == (cols[None, :] // (N_CAPTIONS // FOLDS))
        if bool(same.any()):
            masked = torch.where(same, v, torch.tensor(-torch.inf))
            self.i2t_fold[rows] = _merge(self.i2t_fold[rows], masked)
            self.t2i_fold[cols] = _merge(self.t2i_fold[cols], masked.T)

    def result(self) -> CocoTops:
        if np.isnan(self.pair_scores).any():
            raise ValueError("streamed COCO top lists: some positive pairs were never scored (not every tile "
                             "was streamed)")
        lists = [-np.sort(-t.numpy(), axis=1) for t in (self.i2t, self.t2i, self.i2t_fold, self.t2i_fold)]
        order = np.argsort(self.keys)  # the lookup is by canonical key
        return CocoTops(*lists, PairLookup(self.keys[order], self.pair_scores[order]))  # lists best first
