"""Expand (methods x variants x dataset x seeds x stages) into jobs with dependencies and identities.

A job's identity (`key`) is a hash of its resolved config, the data fingerprint and the code
version, so a finished job is reused only while none of those changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.registry import Registry, RegistryError

ENSEMBLE_SEED_STRIDE = 1000  # member k of an ensemble trained with seed + k * stride


@dataclass(frozen=True)
class Job:
    name: str  # also the result directory, relative to the results root
    stage: str  # "train" or "evaluate"
    method: str
    variant: str
    dataset: str
    seed: int | None
    config: Mapping[str, Any]
    depends: tuple[str, ...] = ()
    key: str = ""

    @property
    def label(self) -> str:
        return f"{self.method}/{self.variant}"


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)

    def by_name(self) -> dict[str, Job]:
        return {j.name: j for j in self.jobs}

    def order(self) -> list[Job]:
        """Jobs in an order where every job comes after its dependencies."""
        done: set[str] = set()
        out: list[Job] = []
        pending = list(self.jobs)
        while pending:
            ready = [j for j in pending if all(d in done for d in j.depends)]
            if not ready:
                raise RegistryError("cyclic or missing job dependencies: "
                                    + ", ".join(f"{j.name} <- {j.depends}" for j in pending))
            for j in ready:
                out.append(j)
                done.add(j.name)
                pending.remove(j)
        return out


def job_key(config: Mapping[str, Any], data_fingerprint: str, code_version: str) -> str:
    blob = json.dumps({"config": config, "data": data_fingerprint, "code": code_version}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_fingerprint(paths: Iterable[Path]) -> str:
    """Cheap fingerprint of data files: names, sizes and modification times."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def parse_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def build_plan(registry: Registry, methods: Sequence[str], dataset: str, *, variants: Sequence[str] | None = None,
               seeds: Sequence[int] = (0,), stage: str = "all", checkpoint_dir: Path | None = None,
               data_fp: str = "", code_version: str = "") -> Plan:
    """The jobs for a campaign. `stage` train|evaluate|all; evaluate-only uses official checkpoints."""
    ds = registry.dataset(dataset)
    plan = Plan()
    for mname in methods:
        method = registry.method(mname)
        names = list(variants) if variants else list(method.variants)
        for v in names:
            method.variant(v)  # validates the name with a suggestion
        singles = [v for v in names if not method.variants[v].is_ensemble]
        ensembles = [v for v in names if method.variants[v].is_ensemble]
        for seed in seeds:
            for v in singles:
                _add_model(plan, registry, mname, v, ds.name, seed, stage, checkpoint_dir, data_fp, code_version)
            for v in ensembles:
                spec = method.variants[v]
                members = []
                for k, member in enumerate(spec.members):
                    member_seed = seed + (k * ENSEMBLE_SEED_STRIDE if spec.members.count(member) > 1 else 0)
                    ev = _add_model(plan, registry, mname, member, ds.name, member_seed, stage, checkpoint_dir,
                                    data_fp, code_version, official_index=k if stage == "evaluate" else 0)
                    members.append(ev)
                source = "official" if stage == "evaluate" else f"seed{seed}"
                config = {"stage": "evaluate", "method": mname, "variant": v, "dataset": ds.name, "seed": seed,
                          "source": source, "members": [m.name for m in members], "split": ds.split}
                name = f"{ds.name}/{mname}-{v}-{source}/eval"
                _append(plan, Job(name, "evaluate", mname, v, ds.name, seed, config,
                                  depends=tuple(m.name for m in members),
                                  key=job_key(config, data_fp, code_version)))
    return plan


def _append(plan: Plan, job: Job) -> Job:
    existing = plan.by_name().get(job.name)
    if existing is None:
        plan.jobs.append(job)
        return job
    return existing


def _add_model(plan: Plan, registry: Registry, mname: str, variant: str, dataset: str, seed: int, stage: str,
               checkpoint_dir: Path | None, data_fp: str, code_version: str, official_index: int = 0) -> Job:
    """Train (unless evaluate-only) and evaluate one model; returns its evaluate job."""
    method = registry.method(mname)
    recipe = method.recipe(variant, dataset) if stage != "evaluate" else {}
    options = dict(method.variants[variant].options)
    if stage == "evaluate":
        ck = official_checkpoint_path(registry, mname, variant, dataset, checkpoint_dir, official_index)
        config = {"stage": "evaluate", "method": mname, "variant": variant, "dataset": dataset, "seed": None,
                  "source": "official", "checkpoint": str(ck), "split": registry.dataset(dataset).split}
        suffix = "official" if official_index == 0 else f"official{official_index + 1}"
        name = f"{dataset}/{mname}-{variant}-{suffix}/eval"
        return _append(plan, Job(name, "evaluate", mname, variant, dataset, None, config,
                                 key=job_key(config, data_fp, code_version)))
    run = f"{dataset}/{mname}-{variant}-seed{seed}"
    train_cfg = {"stage": "train", "method": mname, "variant": variant, "dataset": dataset, "seed": seed,
                 "recipe": {**recipe, "seed": seed}, "options": options}
    train = _append(plan, Job(f"{run}/train", "train", mname, variant, dataset, seed, train_cfg,
                              key=job_key(train_cfg, data_fp, code_version)))
    eval_cfg = {"stage": "evaluate", "method": mname, "variant": variant, "dataset": dataset, "seed": seed,
                "source": f"seed{seed}", "train_job": train.name, "split": registry.dataset(dataset).split}
    return _append(plan, Job(f"{run}/eval", "evaluate", mname, variant, dataset, seed, eval_cfg,
                             depends=(train.name,), key=job_key({**eval_cfg, "train_key": train.key}, data_fp,
                                                                code_version)))


def official_checkpoint_path(registry: Registry, method: str, variant: str, dataset: str,
                             checkpoint_dir: Path | None, index: int = 0) -> Path:
    """Where evaluate-only expects an official checkpoint; a clear error with the download link if absent."""
    spec = registry.method(method).variant(variant)
    ck = spec.checkpoints.get(dataset)
    if ck is None or not ck.files:
        raise RegistryError(f"{method}/{variant} has no official checkpoint for {dataset} in the registry")
    if index >= len(ck.files):
        raise RegistryError(f"{method}/{variant} on {dataset}: the registry lists {len(ck.files)} checkpoint "
                            f"file(s), an ensemble needs {index + 1}")
    base = Path(checkpoint_dir or "checkpoints")
    path = base / method / variant / dataset / ck.files[index]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: official checkpoint not found; download it from {ck.url}"
                                + (f" ({ck.note})" if ck.note else ""))
    return path
