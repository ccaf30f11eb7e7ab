"""Paired significance of rsum differences, from the stored similarity matrices.

rsum = mean over images of i2t hits + mean over captions of t2i hits (hits summed over R@1/5/10, x100).
Every image has the same number of captions, so rsum is also the mean over images of
`v_i = i2t hits of image i + mean t2i hits of image i's captions`. Resampling images (each with its caption
queries) and comparing two methods' `v` on the same resamples is the paired bootstrap over queries; COCO 1K
resamples inside each fold. Ranks are the tie-pessimistic ones of the headline numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.core.errors import CorruptFileWarning, ItrbenchError
from harness.core.results import JobResult, move_aside
from harness.data.matrices import OWNER, MatrixFileError, load_matrix, load_owner
from harness.eval.metrics.bootstrap import paired_bootstrap_p
from harness.eval.metrics.recall import RECALL_KS, check_matrix, count_ranks, fold_slices, uniform_captions
from harness.eval.protocols import PROTOCOLS, names_of_family

RECALL_PROTOCOLS = names_of_family("recall")
RESAMPLES = 1000
SIMS_FILES = ("sims.npy", "sims.h5")


class StoredMatrixError(ItrbenchError):
    """A run's stored matrix (or its caption-to-image mapping) that cannot be used: unreadable, truncated, not
    2-D, or holding NaN / inf. The file has been moved aside; the message names the job folder."""


def sims_file(result_dir: Path) -> Path | None:
    """The stored images x captions matrix of a result (`sims.npy`, or `sims.h5` with dataset 'sims')."""
    return next((result_dir / n for n in SIMS_FILES if (result_dir / n).is_file()), None)


def load_sims(result_dir: Path) -> np.ndarray | None:
    """The stored matrix of a result, read losslessly (float64 stays float64); None when there is none.
    A file that cannot be read as a matrix is a MatrixFileError naming it."""
    path = sims_file(result_dir)
    if path is None:
        return None
    return load_matrix(path, "sims" if path.suffix == ".h5" else None)


def _set_aside(result_dir: Path, path: Path, problem: str) -> StoredMatrixError:
    """Move an unusable matrix file aside (kept, with a warning naming the job); the error for its row."""
    aside = move_aside(path, "corrupt")
    text = f"{result_dir}: {path.name} is unusable ({problem}); moved aside to {aside.name}"
    warnings.warn(f"{text}; its row is left out of the significance tests", CorruptFileWarning, stacklevel=3)
    return StoredMatrixError(text)


def _problem(exc: Exception, path: Path) -> str:
    text = str(exc)
    return text[len(str(path)) + 2:] if text.startswith(f"{path}: ") else text


def stored_matrix(result_dir: Path) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(sims, caption -> image mapping or None) of a result; None when it stored no matrix. A matrix or
    mapping that cannot be used is moved aside and raised as a StoredMatrixError naming the job folder."""
    path = sims_file(result_dir)
    if path is None:
        return None
    try:
        sims = load_sims(result_dir)
        assert sims is not None
        bad = 0 if np.isfinite(sims.sum(dtype=np.float64)) else int(np.count_nonzero(~np.isfinite(sims)))
        if bad:
            raise MatrixFileError(f"{path}: {bad} NaN or infinite scores")
    except MatrixFileError as exc:
        raise _set_aside(result_dir, path, _problem(exc, path)) from None
    owner_file = result_dir / OWNER
    if not owner_file.is_file():
        return sims, None
    try:
        return sims, load_owner(owner_file, sims.shape[1], sims.shape[0])
    except MatrixFileError as exc:
        raise _set_aside(result_dir, owner_file, _problem(exc, owner_file)) from None


def _block_values(block: np.ndarray, captions_per_image: int, owner: np.ndarray | None = None) -> np.ndarray:
    i2t, t2i = count_ranks(block, captions_per_image, image_of_caption=owner)
    a = sum((i2t.pessimistic < k).astype(np.float64) for k in RECALL_KS) * 100.0
    b = sum((t2i.pessimistic < k).astype(np.float64) for k in RECALL_KS) * 100.0
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


def group_values(runs: Sequence[JobResult], protocol: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Per-image rsum contributions averaged over a row's runs; None when a run has no stored matrix. A run
    whose stored matrix is unusable raises StoredMatrixError (the file moved aside); one whose matrix does not
    fit the protocol (shape) a MatrixError."""
    total, strata = None, None
    for run in runs:
        stored = stored_matrix(run.path)  # a StoredMatrixError names the run whose matrix was set aside
        if stored is None:
            return None
        sims, owner = stored
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
