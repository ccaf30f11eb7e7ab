"""`run_all.py import`: store a similarity matrix computed elsewhere (the official code's own output, another
lab's model) as a result, evaluated by the same protocols and compared by the same report as our runs.

The matrix is validated (2-D, finite, its shape against the split and the caption-to-image mapping), stored
with where it came from under `<results>/<dataset>/<method>-<variant>-imported[-<label>]/eval/`, and every
protocol its dataset declares is computed. A method or variant that is not registered is fine: the report
lists it beside the papers under its own name.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import ItrbenchError
from harness.core.results import ResultStore, environment
from harness.data.layouts import LAYOUTS, layout_for
from harness.data.matrices import MatrixFileError, load_matrix, load_owner
from harness.eval.evaluation import EvalSettings, MatrixOutput, SplitSpec, evaluate_matrix
from harness.eval.metrics.recall import MatrixError, check_shape
from harness.run.jobs import JobLocked, job_lock
from harness.spec.registry import Registry, RegistryError, load_registry

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Imported:
    folder: Path
    metrics: dict[str, Any]


def _split_size(data_root: Path | None, dataset: str, split: str, layout: str) -> int | None:
    """Images in the split's data files, when a data folder is given (the matrix must have as many rows)."""
    if data_root is None:
        return None
    try:
        return LAYOUTS[layout].read(data_root, split, dataset).n_images
    except ItrbenchError:  # the layout's reader names what is missing; the import then skips this check
        return None


def import_matrix(registry: Registry, *, sims: Path, method: str, dataset: str, split: str | None = None,
                  results: Path = Path("results"), image_of_caption: Path | None = None,
                  captions_per_image: int | None = None, key: str | None = None, data_root: Path | None = None,
                  reported: Path | None = None, label: str | None = None, force: bool = False) -> Imported:
    """Validate `sims`, store it as the result of method[/variant] on `dataset`, compute its protocols."""
    if reported is not None:  # the user's reported rows must load cleanly with the registry they extend
        if not reported.is_file():
            raise RegistryError(f"--reported {reported}: no such registry file")
        load_registry(reported)
    name, _, variant = method.partition("/")
    variant = variant or "default"
    for part, what in ((name, "method"), (variant, "variant"), (label or "x", "label")):
        if not NAME.match(part):
            raise ValueError(f"--{what} {part!r}: use letters, digits, '.', '_' and '-' only")
    if name in registry.methods:
        registry.method(name).variant(variant) if variant != "default" else None
    ds = registry.dataset(dataset)
    split = split or ds.split
    matrix = load_matrix(sims, key)  # float32 / float64 as stored, integers exactly (or refused)
    n_img, n_cap = matrix.shape
    if captions_per_image is not None and captions_per_image < 1:
        raise ValueError(f"--captions-per-image {captions_per_image}: expected a positive integer")
    if image_of_caption is not None:
        check_shape(n_img, n_cap, None, str(sims))
        owner = load_owner(image_of_caption, n_cap, n_img)
    else:
        k = captions_per_image or ds.captions_per_image
        check_shape(n_img, n_cap, k, str(sims))
        owner = np.arange(n_cap) // k
    bad = int(np.count_nonzero(~np.isfinite(matrix)))
    if bad:
        raise MatrixError(f"{sims}: {bad} NaN or infinite scores; fix the matrix before importing")
    scoring, layout = "embedding", ds.layout
    if name in registry.methods:
        cls = registry.method(name).adapter_class()
        scoring, layout = cls.scoring, layout_for(ds.layout, cls.image_input).name
    expected = _split_size(data_root, ds.name, split, layout)
    if expected is not None and expected != n_img:
        raise MatrixError(f"{sims}: {n_img} image rows, but split '{split}' in {data_root} has {expected} images")
    source = "imported" + (f"-{label}" if label else "")
    other_split = f"-{split}" if split not in (ds.split, "test") else ""  # never in the test split's folder
    job = f"{ds.name}/{name}-{variant}-{source}{other_split}/eval"
    store = ResultStore(results)
    digest = hashlib.sha256(sims.read_bytes()).hexdigest()
    config = {"stage": "evaluate", "method": name, "variant": variant, "dataset": ds.name, "seed": None,
              "source": "imported", "split": split,
              "provenance": {"file": str(sims.resolve()), "sha256": digest, "key": key, "label": label,
                             "imported_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "reported": str(reported.resolve()) if reported else None}}
    spec = SplitSpec(data_root or Path("."), split, ds.name, test_split=split == ds.split, protocols=ds.protocols,
                     layout=layout, table=registry.protocols)
    try:
        lock = job_lock(store.job_dir(job), True)
        lock.__enter__()
    except JobLocked:
        raise ValueError(f"{store.job_dir(job)}: another import of this name is running; wait for it, or pass "
                         "--label to keep both") from None
    try:  # the check and the write are one step under the job's lock: two imports of one name never both store
        if store.is_finished(job) and not force:
            raise ValueError(f"{store.job_dir(job)}: an imported result of this name exists; pass --force to "
                             "replace it or --label to keep both")
        folder = store.start(job, {**config, "key": f"imported-{digest[:16]}", "name": job}, environment(seed=None))
        result = evaluate_matrix(matrix, owner, spec, EvalSettings(), MatrixOutput.job(folder),
                                 method=name, scoring=scoring, members=1)
        store.finish(job, {"stage": "evaluate", "protocols": result.metrics, "efficiency": {},
                           "shape": [n_img, n_cap]})
    finally:
        lock.__exit__(None, None, None)
    return Imported(folder, result.metrics)


__all__ = ["Imported", "MatrixFileError", "import_matrix"]
