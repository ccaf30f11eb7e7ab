"""The frozen, typed config of one job: what it computes (recipe, overrides, checkpoint, members, split), as the
planner resolved it. Its dict form is what `config.yaml` holds and what the job's identity hashes; code reads
it by attribute: jobs through `Job.config`, the report through `JobResult.job` (a stored job, read leniently)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

STORED_EXTRAS = ("key", "name", "identity")  # written beside the config in config.yaml
CORE = ("stage", "method", "variant", "dataset")  # the fields every job config has


@dataclass(frozen=True)
class JobConfig:
    stage: str  # train | evaluate | robust
    method: str
    variant: str
    dataset: str
    seed: int | None = None
    source: str | None = None  # evaluations: official | seed<k>[+set-<hash>] | imported
    split: str | None = None  # evaluations: the split scored
    recipe: Mapping[str, Any] | None = None  # train: the resolved recipe (defaults, dataset, variant, overrides)
    options: Mapping[str, Any] | None = None  # train: the variant's options
    splits: tuple[str, ...] | None = None  # train: the splits it reads
    overrides: Mapping[str, Any] | None = None  # the --set recipe overrides applied
    train_job: str | None = None  # evaluation of a retrained model
    checkpoint: str | None = None  # evaluation of an official checkpoint (path; not hashed)
    checkpoint_fingerprint: str | None = None
    members: tuple[str, ...] | None = None  # ensemble: the member evaluation jobs
    precision: str | None = None  # non-fp32 evaluations
    setting: Mapping[str, Any] | None = None  # report labels (e.g. precision)
    provenance: Mapping[str, Any] | None = None  # imported matrices: where the matrix came from
    robustness: Mapping[str, Any] | None = None  # robustness jobs: {spec: canonical --perturb, seed}
    cascade: Mapping[str, Any] | None = None  # shortlist-and-rerank: {k, shortlister, stage1_job}

    @property
    def is_ensemble(self) -> bool:
        return self.members is not None

    def as_dict(self) -> dict[str, Any]:
        """The plain form (config.yaml, identity hash): the job's core fields and every field that is set."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name not in ("seed",):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else (dict(value) if isinstance(value, Mapping)
                                                                        else value)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobConfig:
        """A config from its plain form (extra stored keys such as key / name / identity are ignored); a
        missing core field or an unknown field is a ValueError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - set(STORED_EXTRAS))
        if unknown:
            raise ValueError(f"job config: unknown field(s) {', '.join(unknown)}")
        missing = [k for k in CORE if k not in d]
        if missing:
            raise ValueError(f"job config: missing field(s) {', '.join(missing)}")
        return cls.stored(d)

    @classmethod
    def stored(cls, d: JobConfig | Mapping[str, Any]) -> JobConfig:
        """A stored job's config read leniently, as reports read results written by other versions: fields
        this version does not know are ignored, and a missing method / variant / dataset / stage reads as ''."""
        if isinstance(d, JobConfig):
            return d
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for k in CORE:
            values[k] = "" if values.get(k) is None else str(values[k])
        for k in ("splits", "members"):
            if values.get(k) is not None:
                values[k] = tuple(values[k])
        return cls(**values)

    def replace(self, **changes: Any) -> JobConfig:
        return JobConfig.from_dict({**self.as_dict(), **changes})
