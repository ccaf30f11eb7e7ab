"""Protocols recomputed, not re-run: an evaluation whose matrix is still valid but whose protocol code changed.

An evaluation's key covers what its matrix depends on; its metrics.json records the protocol code identity
(`protocol_code`, harness.core.code_identity) its values were computed with. When only that changed (an edited
metric, a new protocol for its dataset) the values are recomputed from the job folder's `sims.npy` and
`image_of_caption.npy` (seconds, no model), metrics.json is rewritten atomically with the original scoring's
efficiency record, the new `protocol_code` and a `protocols_recomputed` marker (when, the previous protocol
code, the git revision that recomputed them; env.json keeps the scoring's).

Protocols that need the model's own embeddings (STS, image retrieval, CxC's t2t / i2i) cannot be had from a
matrix. Rule: when the stored metrics hold a *defined* result of such a protocol, the evaluation runs again in
place (not superseded: its scoring resumes from the tile cache in `work/`, so only the encoders run again);
otherwise such protocols keep their stored "not defined" record and the rest is recomputed from the matrix.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.results import ResultStore, git_revision
from harness.eval.evaluation import OWNER, EvalSettings, MatrixOutput, SplitSpec, evaluate_matrix
from harness.eval.protocols import PROTOCOLS, is_defined
from harness.run.plan import Job, data_layout
from harness.spec.registry import Registry

RECOMPUTE = "protocols recomputed"  # what the log, the plan table and the orchestrator say
REEVALUATE = "rerun: protocols need the model (scoring reuses the tile cache)"
MODEL_TASKS = {"cxc": ("t2t", "i2i")}  # protocols of which only these parts need the model's uni-modal spaces


def needs_model(name: str, result: Any) -> bool:
    """Whether the stored `result` of protocol `name` was computed from the model, not the matrix alone."""
    if not is_defined(result):
        return False
    proto = PROTOCOLS.get(name)
    if proto is not None and not proto.uses_matrix:
        return True
    return any(is_defined(result.get(task)) for task in MODEL_TASKS.get(name, ()) if isinstance(result, Mapping)
               and isinstance(result.get(task), Mapping))


def refresh_action(store: ResultStore, job: Job) -> str | None:
    """RECOMPUTE or REEVALUATE for a finished evaluation whose key matches but whose protocol code is not the
    job's; None otherwise (cached, or not this case)."""
    if job.stage != "evaluate" or not job.protocols or not store.is_finished(job.name):
        return None
    done = store.load(job.name)
    if done.config.get("key") != job.key or done.metrics.get("protocol_code") == job.protocols:
        return None
    if any(needs_model(n, r) for n, r in (done.metrics.get("protocols") or {}).items()):
        return REEVALUATE
    d = store.job_dir(job.name)
    if not (d / "sims.npy").is_file() or not (d / OWNER).is_file():
        return REEVALUATE
    return RECOMPUTE


def eval_spec(job: Job, registry: Registry, data_root: Path, settings: Any) -> tuple[SplitSpec, EvalSettings]:
    """The split and the evaluation settings of an evaluation job (`settings`: the campaign's RunSettings)."""
    cfg = job.config
    ds = registry.dataset(job.dataset)
    spec = SplitSpec(data_root, str(cfg.split), job.dataset, test_split=cfg.split == ds.split,
                     protocols=ds.protocols, layout=data_layout(registry, job.method, job.dataset),
                     table=registry.protocols)
    s = settings
    return spec, EvalSettings(batch_size=s.encode_batch, precision=cfg.precision or "fp32",
                              image_tile=s.image_tile, caption_tile=s.caption_tile,
                              store_matrix=getattr(s, "store_matrix", "auto"),
                              matrix_limit=getattr(s, "matrix_limit", 4 << 30),
                              data_folders={k: Path(v) for k, v in (s.data_folders or {}).items()})


def recompute_protocols(store: ResultStore, job: Job, registry: Registry, data_root: Path,
                        settings: Any) -> dict[str, Any]:
    """New protocol values of a finished evaluation from its stored matrix; rewrites metrics.json atomically
    (sims.npy and the mapping are only read) and returns the new metrics."""
    d = store.job_dir(job.name)
    old = store.load(job.name).metrics
    sims = np.load(d / "sims.npy", mmap_mode="r")
    owner = np.load(d / OWNER)
    spec, eval_settings = eval_spec(job, registry, data_root, settings)
    cls = registry.method(job.method).adapter_class()
    members = len(job.config.members) if job.config.members is not None else 1
    result = evaluate_matrix(np.asarray(sims), owner, spec, eval_settings, MatrixOutput(), method=cls.method,
                             scoring=cls.scoring, members=members)
    stored = old.get("protocols") or {}
    protocols = {n: stored[n] if n in stored and _model_only(n) else r for n, r in result.metrics.items()}
    metrics = {**old, "protocols": protocols, "protocol_code": job.protocols,
               "protocols_recomputed": {"at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                        "previous_protocol_code": old.get("protocol_code"),
                                        "git": git_revision()}}  # env.json keeps the scoring's revision
    store.finish(job.name, metrics)
    return metrics


def _model_only(name: str) -> bool:
    """Protocols computed from the model alone (their stored not-defined record is kept as it is)."""
    proto = PROTOCOLS.get(name)
    return proto is not None and not proto.uses_matrix
