"""Run one planned job (train or evaluate) into its result directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.evaluate import compute_metrics, protocols_for, similarity_for
from harness.plan import Job
from harness.registry import Registry
from harness.results import ResultStore, environment, save_npy
from harness.training import BEST, train
from methods.base import Adapter, parameter_count
from methods.common.checkpoint import load_container


@dataclass
class JobContext:
    registry: Registry
    store: ResultStore
    data_root: Path
    device: str = "cpu"
    log: Callable[[str], None] = print
    on_progress: Callable[[str, str], None] | None = None  # (job name, progress text)


def run_job(job: Job, ctx: JobContext, force: bool = False) -> dict[str, Any]:
    """Run `job` unless it already finished with the same key; returns its metrics."""
    if ctx.store.is_finished(job.name) and not force:
        done = ctx.store.load(job.name)
        if done.config.get("key") == job.key:
            return done.metrics
        force = True  # the config, data or code changed: rerun
    config = {**job.config, "key": job.key, "name": job.name}
    ctx.store.start(job.name, config, environment(seed=job.seed, device=ctx.device), force=force)
    if job.stage == "train":
        metrics = _train(job, ctx)
    else:
        metrics = _evaluate(job, ctx)
    ctx.store.finish(job.name, metrics)
    return metrics


def _build(job: Job, ctx: JobContext, options: dict[str, Any]) -> Adapter:
    method = ctx.registry.method(job.method)
    return method.adapter_class().build(job.variant, job.dataset, options)


def _train(job: Job, ctx: JobContext) -> dict[str, Any]:
    recipe = dict(job.config["recipe"])
    adapter = _build(job, ctx, {**job.config["options"], **recipe}).to(ctx.device)
    train_images, train_caps = adapter.eval_data(ctx.data_root, "train", job.dataset)
    val_split = ctx.registry.dataset(job.dataset).validation_split
    val_images, val_caps = adapter.eval_data(ctx.data_root, val_split, job.dataset)
    work = ctx.store.job_dir(job.name) / "work"

    def progress(epoch: int, step: int, steps: int) -> None:
        if ctx.on_progress:
            ctx.on_progress(job.name, f"epoch {epoch + 1}/{recipe['epochs']} step {step + 1}/{steps}")

    t0 = time.perf_counter()
    summary = train(adapter, train_images, train_caps, recipe, work, val_images=val_images, val_captions=val_caps,
                    log=lambda msg: _log(ctx, job, msg), on_step=progress)
    wall = time.perf_counter() - t0
    gpus = 1 if str(ctx.device).startswith("cuda") else 0
    return {"stage": "train", "best_rsum": summary.best_rsum, "best_epoch": summary.best_epoch,
            "history": summary.history, "efficiency": {
                "parameters": parameter_count(adapter.model), "train_wall_seconds": summary.wall_seconds or wall,
                "gpu_hours": gpus * (summary.wall_seconds or wall) / 3600.0,
                "peak_memory_mb": _peak_memory_mb(ctx.device)},
            "checkpoint": str(work / BEST)}


def _log(ctx: JobContext, job: Job, msg: str) -> None:
    path = ctx.store.job_dir(job.name) / "job.log"
    with open(path, "a", encoding="utf-8") as f:
        f.write(msg + "\n")
    ctx.log(f"{job.name}: {msg}")


def _peak_memory_mb(device: str) -> float | None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except ImportError:  # pragma: no cover - Windows
        return None


def _load_trained(job: Job, ctx: JobContext, train_job_name: str) -> Adapter:
    train_cfg = ctx.store.load(train_job_name).config
    adapter = _build(job, ctx, {**train_cfg["options"], **train_cfg["recipe"]})
    container = load_container(ctx.store.job_dir(train_job_name) / "work" / BEST)
    adapter.model.load_state_dict(container["itrbench"]["model_state"])
    return adapter.to(ctx.device)


def _evaluate(job: Job, ctx: JobContext) -> dict[str, Any]:
    cfg = job.config
    job_dir = ctx.store.job_dir(job.name)
    split = cfg["split"]
    if "members" in cfg:  # ensemble: average the members' stored matrices
        mats = [np.load(ctx.store.job_dir(m) / "sims.npy") for m in cfg["members"]]
        sims = np.mean(np.stack(mats).astype(np.float64), axis=0).astype(np.float32)
        member_metrics = [ctx.store.load(m).metrics.get("efficiency", {}) for m in cfg["members"]]
        eff = {"parameters": sum(m.get("parameters", 0) for m in member_metrics),
               "scoring_seconds": sum(m.get("scoring_seconds", 0.0) for m in member_metrics),
               "encode_ms_per_image": sum(m.get("encode_ms_per_image", 0.0) for m in member_metrics),
               "encode_ms_per_caption": sum(m.get("encode_ms_per_caption", 0.0) for m in member_metrics)}
    else:
        if cfg.get("source") == "official":
            method = ctx.registry.method(job.method)
            adapter = method.adapter_class().load_official(cfg["checkpoint"], variant=job.variant,
                                                           dataset=job.dataset).to(ctx.device)
        else:
            adapter = _load_trained(job, ctx, cfg["train_job"])
        images, captions = adapter.eval_data(ctx.data_root, split, job.dataset)
        sims, eff = similarity_for([adapter], images, captions, cache_dir=job_dir / "work", progress=False)
        eff.pop("members", None)
    save_npy(job_dir / "sims.npy", sims)
    metrics = compute_metrics(sims, protocols_for(job.dataset, split, sims.shape[0]))
    return {"stage": "evaluate", "protocols": metrics, "efficiency": eff, "shape": list(sims.shape)}

