"""Paired significance of a protocol's headline differences, from the stored similarity matrices.

What is compared is what the protocol declares (`Protocol.paired`, a `PairedTest`): one value per resampled
unit (for recall: per image, its i2t hits plus its captions' share of the t2i hits, whose mean is rsum;
`harness.eval.metrics.per_query`), computed from each run's stored matrix and caption-to-image mapping.
Resampling the same units for two rows (within strata, e.g. the COCO 1K folds) is the paired bootstrap over
queries. A protocol without a declared test has no p-values; one protocol never borrows another's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.core.results import JobResult
from harness.eval.metrics.bootstrap import paired_bootstrap_p
from harness.eval.protocols import PROTOCOLS, PairedTest

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


def per_image_rsum(sims: np.ndarray, protocol: str, captions_per_image: int = 5,
                   owner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(v, strata) of a built-in protocol's paired test: per-image rsum contributions whose mean is its rsum."""
    test = PROTOCOLS[protocol].paired if protocol in PROTOCOLS else None
    if test is None:
        raise ValueError(f"protocol '{protocol}' declares no paired test")
    owner = np.arange(sims.shape[1]) // captions_per_image if owner is None else np.asarray(owner)
    return test.values(sims, owner)


def group_values(runs: Sequence[JobResult], test: PairedTest) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The test's per-unit values averaged over a row's runs; None when a run has no stored matrix."""
    total, strata = None, None
    for run in runs:
        sims = load_sims(run.path)
        if sims is None:
            return None
        owner_file = run.path / "image_of_caption.npy"
        owner = np.load(owner_file) if owner_file.is_file() else np.arange(sims.shape[1]) // 5
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
