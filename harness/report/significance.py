"""Paired significance of rsum differences, from the stored similarity matrices.

rsum = mean over images of i2t hits + mean over captions of t2i hits (hits summed over R@1/5/10, x100).
Every image has the same number of captions, so rsum is also the mean over images of
`v_i = i2t hits of image i + mean t2i hits of image i's captions`. Resampling images (each with its caption
queries) and comparing two methods' `v` on the same resamples is the paired bootstrap over queries; COCO 1K
resamples inside each fold. Ranks are the tie-pessimistic ones of the headline numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.core.results import JobResult
from harness.eval.metrics.bootstrap import paired_bootstrap_p
from harness.eval.metrics.recall import RECALL_KS, check_matrix, count_ranks, fold_slices, uniform_captions
from harness.eval.protocols import PROTOCOLS, names_of_family

RECALL_PROTOCOLS = names_of_family("recall")
RESAMPLES = 1000
SIMS_FILES = ("sims.npy", "sims.h5")


def load_sims(result_dir: Path) -> np.ndarray | None:
    """The stored images x captions matrix of a result (memory-mapped .npy, or .h5 dataset 'sims')."""
    for name in SIMS_FILES:
        path = result_dir / name
        if not path.is_file():
            continue
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        import h5py

        with h5py.File(path, "r") as f:
            if "sims" not in f:
                raise ValueError(f"{path}: HDF5 file has no 'sims' dataset (has {list(f)})")
            return f["sims"][...]
    return None


def _block_values(block: np.ndarray, captions_per_image: int, owner: np.ndarray | None = None) -> np.ndarray:
    i2t, t2i = count_ranks(block, captions_per_image, image_of_caption=owner)
    return _rank_values(i2t.pessimistic, t2i.pessimistic, captions_per_image, owner)


def _rank_values(i2t: np.ndarray, t2i: np.ndarray, captions_per_image: int,
                 owner: np.ndarray | None = None) -> np.ndarray:
    """Per-image rsum contributions from tie-pessimistic ranks (of a matrix, or of a streamed rank summary)."""
    a = sum((i2t < k).astype(np.float64) for k in RECALL_KS) * 100.0
    b = sum((t2i < k).astype(np.float64) for k in RECALL_KS) * 100.0
    if owner is None:
        return a + b.reshape(-1, captions_per_image).mean(axis=1)
    # uneven captions per image: each image carries its captions' share of the caption mean, so that the
    # mean of v over images is still exactly the rsum
    return a + np.bincount(owner, weights=b, minlength=len(a)) * (len(a) / len(b))


def per_image_rsum(sims: np.ndarray, protocol: str, captions_per_image: int = 5,
                   owner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(v, strata): per-image rsum contributions whose mean is the protocol's rsum; strata = COCO 1K folds.
    `owner` (caption -> image) allows any number of captions per image (not for the COCO 1K folds)."""
    if protocol not in RECALL_PROTOCOLS:
        raise ValueError(f"per-image rsum is defined for {', '.join(RECALL_PROTOCOLS)}, not '{protocol}'")
    if owner is not None and uniform_captions(owner, sims.shape[0]) == captions_per_image:
        owner = None
    folds = PROTOCOLS[protocol].folds
    if folds:
        parts, strata = [], []
        for k, (rows, cols) in enumerate(fold_slices(sims.shape[0], folds, captions_per_image)):
            block = check_matrix(np.asarray(sims[rows, cols]), captions_per_image, name=f"fold {k}")
            parts.append(_block_values(block, captions_per_image))
            strata.append(np.full(len(parts[-1]), k))
        return np.concatenate(parts), np.concatenate(strata)
    sims = check_matrix(np.asarray(sims), captions_per_image, image_of_caption=owner)
    return _block_values(sims, captions_per_image, owner), None


def per_image_rsum_from_ranks(path: Path, protocol: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """`per_image_rsum` from a streamed evaluation's rank summary (`ranks.npz`): the same values as from its
    matrix; None where the summary lacks what the protocol needs (COCO 1K without fold counts)."""
    from harness.eval.streaming import RankSummary

    if protocol not in RECALL_PROTOCOLS:
        raise ValueError(f"per-image rsum is defined for {', '.join(RECALL_PROTOCOLS)}, not '{protocol}'")
    summary = RankSummary.load(path)
    owner = summary.image_of_caption
    k = uniform_captions(owner, summary.shape[0])
    folds = PROTOCOLS[protocol].folds
    if folds:
        if summary.folds != folds or k is None:
            return None
        (_, i2t), (_, t2i) = summary.ranks(fold=True)
        return _rank_values(i2t, t2i, k), np.repeat(np.arange(folds), summary.shape[0] // folds)
    (_, i2t), (_, t2i) = summary.ranks()
    return _rank_values(i2t, t2i, k or 1, None if k else owner), None


RANKS_FILE = "ranks.npz"


def group_values(runs: Sequence[JobResult], protocol: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Per-image rsum contributions averaged over a row's runs (from each run's stored matrix, or its rank
    summary when the evaluation was streamed); None when a run has neither."""
    total, strata = None, None
    for run in runs:
        sims = load_sims(run.path)
        if sims is None:
            if not (run.path / RANKS_FILE).is_file():
                return None
            found = per_image_rsum_from_ranks(run.path / RANKS_FILE, protocol)
            if found is None:
                return None
            v, strata = found
            total = v if total is None else (total + v if total.shape == v.shape else None)
            if total is None:
                return None
            continue
        owner_file = run.path / "image_of_caption.npy"
        owner = np.load(owner_file) if owner_file.is_file() else None
        v, strata = per_image_rsum(sims, protocol, owner=owner)
        if total is not None and total.shape != v.shape:
            return None
        total = v if total is None else total + v
    if total is None:
        return None
    return total / len(runs), strata


def paired_p(a: np.ndarray, b: np.ndarray, strata: np.ndarray | None, resamples: int = RESAMPLES) -> float:
    """Two-sided paired bootstrap p-value for mean(a) != mean(b) over the same images."""
    return float(paired_bootstrap_p(a, b, n=resamples, seed=0, strata=strata))
