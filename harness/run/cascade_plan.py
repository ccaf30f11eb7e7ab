"""Cascade jobs of a plan: `run --shortlist K --shortlister METHOD[/VARIANT]` adds, beside every evaluation of a
pairwise (cross-attention) model, a shortlist-and-rerank evaluation of its own.

A cascade job (`<dataset>/<method>-<variant>-<source>-rerank<K>-<shortlister>-<variant>/eval`) reranks each
query's top-K by the shortlister's stored `sims.npy` (stage 1, loaded from results) with the model's `score`.
It depends on the model's training job (retrained) or nothing (official checkpoint: its content is in the
config) and on the shortlister's evaluation of the same source (same seed, or its official checkpoint), which the
plan adds when it is not there yet. Its identity holds K, the stage-1 job's key (as every dependency's) and the
`cascade` code stage. Ensembles (an average of member matrices) and embedding methods get no cascade.
"""

from __future__ import annotations

import re
from typing import Any

from harness.eval.shortlist import ShortlistError, check_k
from harness.spec.registry import RegistryError

SEED_SOURCE = re.compile(r"seed(\d+)(?:-member(\d+))?")


def parse_shortlister(registry: Any, text: str | None) -> tuple[str, str]:
    """(method, variant) of `--shortlister METHOD[/VARIANT]`: a registered embedding method (first variant by
    default)."""
    if not text:
        raise RegistryError("--shortlist K needs --shortlister METHOD[/VARIANT] (an embedding method, e.g. esa)")
    name, _, variant = text.partition("/")
    method = registry.method(name)
    variant = variant or next(iter(method.variants))
    method.variant(variant)
    if method.adapter_class().scoring != "embedding":
        raise RegistryError(f"--shortlister {text}: {name} scores by cross attention; stage 1 needs an embedding "
                            "method (e.g. esa)")
    return name, variant


def cascade_name(eval_name: str, k: int, shortlister: tuple[str, str]) -> str:
    """`demo/xdim-bert-seed0/eval` -> `demo/xdim-bert-seed0-rerank64-esa-bigru/eval`."""
    run, _, stage = eval_name.rpartition("/")
    return f"{run}-rerank{k}-{shortlister[0]}-{shortlister[1]}/{stage}"


def add_cascades(builder: Any, k: int, shortlister_text: str | None) -> None:
    """Add a cascade job beside every pairwise single-model evaluation of `builder`'s plan."""
    try:
        k = check_k(k)
    except ShortlistError as exc:
        raise RegistryError(str(exc)) from None
    sl = parse_shortlister(builder.registry, shortlister_text)
    for job in list(builder.plan.jobs):
        cfg = job.config
        if job.stage != "evaluate" or cfg.members is not None or cfg.cascade is not None:
            continue
        if builder.registry.method(job.method).adapter_class().scoring == "embedding":
            continue
        stage1 = _stage1_job(builder, sl, cfg.source or "")
        if stage1 is None:
            builder.note(f"{job.method}/{job.variant} ({cfg.source}): no cascade, {sl[0]}/{sl[1]} has no "
                         f"evaluation of that source to shortlist with")
            continue
        config = {**cfg.as_dict(), "cascade": {"k": k, "shortlister": f"{sl[0]}/{sl[1]}",
                                               "stage1_job": stage1.name}}
        model_deps = [builder.plan.by_name()[d] for d in job.depends]
        builder.make(cascade_name(job.name, k, sl), "evaluate", job.method, job.variant, job.seed, config,
                     [str(cfg.split)], depends=[*model_deps, stage1], code_stage="cascade")


def _stage1_job(builder: Any, sl: tuple[str, str], source: str) -> Any:
    """The shortlister's evaluation of the same source: its official checkpoint, or its run of the same seed."""
    if source == "official":
        return builder.official(sl[0], sl[1], 0, required=False)
    match = SEED_SOURCE.match(source)
    if match is None:
        return None
    return builder.trained(sl[0], sl[1], int(match.group(1)))
