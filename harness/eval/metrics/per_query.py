"""Per-query (per-unit) values whose mean is a protocol's headline: what a paired significance test resamples.

rsum = mean over images of i2t hits + mean over captions of t2i hits (hits summed over R@1/5/10, x100).
With the caption mean spread over the images its captions belong to, rsum is also the mean over images of
`v_i = i2t hits of image i + image i's share of the t2i hits`: resampling images (each with its caption
queries) and comparing two methods' `v` on the same resamples is the paired bootstrap over queries. Ranks are
the tie-pessimistic ones of the headline numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from harness.eval.metrics.recall import RECALL_KS, check_matrix, count_ranks, fold_slices, uniform_captions


def hits_per_image(sims: np.ndarray, image_of_caption: np.ndarray, ks: Sequence[int] = RECALL_KS) -> np.ndarray:
    """v per image: its i2t hits at `ks` plus its share of the t2i hits at `ks` (x100); mean(v) = sum of the
    i2t and t2i R@k over `ks`. Any number of captions per image (grouped in image order)."""
    n_img, n_cap = sims.shape
    owner = np.asarray(image_of_caption, dtype=np.int64)
    k = uniform_captions(owner, n_img)
    sims = check_matrix(np.asarray(sims), k or 1, image_of_caption=None if k else owner)
    i2t, t2i = count_ranks(sims, k or 1, image_of_caption=None if k else owner)
    a = sum((i2t.pessimistic < r).astype(np.float64) for r in ks) * 100.0
    b = sum((t2i.pessimistic < r).astype(np.float64) for r in ks) * 100.0
    if k:
        return a + b.reshape(-1, k).mean(axis=1)
    # uneven captions per image: each image carries its captions' share of the caption mean
    return a + np.bincount(owner, weights=b, minlength=n_img) * (n_img / n_cap)


def rsum_per_image(sims: np.ndarray, image_of_caption: np.ndarray) -> tuple[np.ndarray, None]:
    """(v, no strata): per-image rsum contributions over the full matrix."""
    return hits_per_image(sims, image_of_caption), None


def rsum_per_image_in_folds(folds: int) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Per-image rsum contributions inside `folds` equal image folds (COCO 1K), with the fold of each image as
    strata (the bootstrap resamples within folds); mean(v) is the mean over folds of each fold's rsum."""

    def values(sims: np.ndarray, image_of_caption: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = uniform_captions(image_of_caption, sims.shape[0])
        if k is None:
            raise ValueError(f"{folds} image folds need the same number of captions per image in image order")
        parts, strata = [], []
        for f, (rows, cols) in enumerate(fold_slices(sims.shape[0], folds, k)):
            block = np.asarray(sims[rows, cols])
            parts.append(hits_per_image(block, np.arange(block.shape[1]) // k))
            strata.append(np.full(len(parts[-1]), f))
        return np.concatenate(parts), np.concatenate(strata)

    values.folds = folds  # type: ignore[attr-defined]  # read by the rank-summary path of the report

    return values
