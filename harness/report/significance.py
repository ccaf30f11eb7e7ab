"""Paired significance of a protocol's headline differences, from the stored similarity matrices.

What is compared is what the protocol declares (`Protocol.paired`, a `PairedTest`): one value per resampled
unit (for recall: per image, its i2t hits plus its captions' share of the t2i hits, whose mean is rsum;
`harness.eval.metrics.per_query`), computed from each run's stored matrix and caption-to-image mapping.
Resampling the same units for two rows (within strata, e.g. the COCO 1K folds) is the paired bootstrap over
queries. A protocol without a declared test has no p-values; one protocol never borrows another's.
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
from harness.eval.metrics.per_query import rsum_per_image
from harness.eval.metrics.recall import RECALL_KS, uniform_captions
from harness.eval.protocols import PROTOCOLS, PairedTest

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


def _rank_values(i2t: np.ndarray, t2i: np.ndarray, captions_per_image: int,
                 owner: np.ndarray | None = None) -> np.ndarray:
    """Per-image rsum contributions from tie-pessimistic ranks of a streamed rank summary (the values
    `harness.eval.metrics.per_query` computes from a matrix)."""
    a = sum((i2t < k).astype(np.float64) for k in RECALL_KS) * 100.0
    b = sum((t2i < k).astype(np.float64) for k in RECALL_KS) * 100.0
    if owner is None:
        return a + b.reshape(-1, captions_per_image).mean(axis=1)
    # uneven captions per image: each image carries its captions' share of the caption mean, so that the
    # mean of v over images is still exactly the rsum
    return a + np.bincount(owner, weights=b, minlength=len(a)) * (len(a) / len(b))


def per_image_rsum(sims: np.ndarray, protocol: str, captions_per_image: int = 5,
                   owner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(v, strata) of a built-in protocol's paired test: per-image rsum contributions whose mean is its rsum."""
    test = PROTOCOLS[protocol].paired if protocol in PROTOCOLS else None
    if test is None:
        raise ValueError(f"protocol '{protocol}' declares no paired test")
    owner = np.arange(sims.shape[1]) // captions_per_image if owner is None else np.asarray(owner)
    return test.values(sims, owner)


def per_image_rsum_from_ranks(path: Path, test: PairedTest) -> tuple[np.ndarray, np.ndarray | None] | None:
    """A recall protocol's paired-test values from a streamed evaluation's rank summary (`ranks.npz`): the same
    values as from its matrix; None where the summary cannot give them (another test, COCO 1K without folds)."""
    from harness.eval.streaming import RankSummary

    folds = getattr(test.values, "folds", None)
    if test.values is not rsum_per_image and folds is None:
        return None
    summary = RankSummary.load(path)
    owner = summary.image_of_caption
    k = uniform_captions(owner, summary.shape[0])
    if folds:
        if summary.folds != folds or k is None:
            return None
        (_, i2t), (_, t2i) = summary.ranks(fold=True)
        return _rank_values(i2t, t2i, k), np.repeat(np.arange(folds), summary.shape[0] // folds)
    (_, i2t), (_, t2i) = summary.ranks()
    return _rank_values(i2t, t2i, k or 1, None if k else owner), None


RANKS_FILE = "ranks.npz"


def group_values(runs: Sequence[JobResult], test: PairedTest) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The test's per-unit values averaged over a row's runs (from each run's stored matrix, or its rank
    summary when the evaluation was streamed); None when a run has neither. A run whose stored matrix is
    unusable raises StoredMatrixError (the file moved aside); one whose matrix does not fit the protocol
    (shape) a MatrixError."""
    total, strata = None, None
    for run in runs:
        stored = stored_matrix(run.path)  # a StoredMatrixError names the run whose matrix was set aside
        if stored is None:
            if not (run.path / RANKS_FILE).is_file():
                return None
            found = per_image_rsum_from_ranks(run.path / RANKS_FILE, test)
            if found is None:
                return None
            v, strata = found
            total = v if total is None else (total + v if total.shape == v.shape else None)
            if total is None:
                return None
            continue
        sims, owner = stored
        if owner is None:  # no mapping stored beside the matrix: 5 captions per image, in order
            owner = np.arange(sims.shape[1]) // 5
        v, strata = test.values(sims, owner)
        if total is not None and total.shape != v.shape:
            return None
        total = v if total is None else total + v
    if total is None:
        return None
    return total / len(runs), strata


def paired_p(a: np.ndarray, b: np.ndarray, strata: np.ndarray | None, resamples: int = RESAMPLES) -> float:
    """Two-sided paired bootstrap p-value for mean(a) != mean(b) over the same images."""
    return float(paired_bootstrap_p(a, b, n=resamples, seed=0, strata=strata))
