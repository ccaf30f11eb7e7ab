"""Run one planned job (train or evaluate) into its result directory, resumably.

Result layout (read by harness.report): `<results>/<dataset>/<method>-<variant>-<source>/<stage>/` with

- `config.yaml`: the job's config plus `key`, `name` and `identity` ({config, data, code} hashes and the
  identity `scheme`; code is the job's stage code, harness.core.code_identity);
  train jobs: stage, method, variant, dataset, seed, recipe, options, splits; evaluations: stage, method,
  variant, dataset, seed, source ("official" | "seed<k>"), split, and checkpoint (official),
  train_job (retrained) or members (ensembles: the member evaluation jobs);
- `env.json` (versions, device, git revision), `job.log` (everything the job said), `status.json`
  (live state for the orchestrator), `work/` (training checkpoints, the scoring tile cache);
- `loss_curve.tsv` (train jobs: epoch, step, loss of every optimizer step);
- `sims.npy` (evaluations: float32 images x captions; `image_of_caption.npy` beside it when captions are
  not 5 per image in order) and `metrics.json`, written last: a job is
  finished exactly when metrics.json exists. A cascade evaluation (config `cascade`: k, shortlister,
  stage1_job; harness.run.cascade_plan) writes `cascade.npz` (candidates and their scores) instead of a matrix,
  resuming its pair tiles from work/pairs_0.h5.

metrics.json: train `{stage: "train", best_rsum, best_epoch, history: [{epoch, loss, lr, val_rsum}],
checkpoint, efficiency}`; evaluate `{stage: "evaluate", protocols: {<protocol>: recall metrics},
shape: [images, captions], efficiency, protocol_code}` (+ `protocols_recomputed: {at, previous_protocol_code, git}`
when its protocols were recomputed from sims.npy); robust (`run --perturb`, harness.run.robust_plan)
`{stage: "robust", robustness: {seed, spec, clean, perturbations, summary, clean_matrix}, efficiency}`.
Efficiency: parameters, peak_memory_mb (+ peak_memory_kind), device, processes, gpu_hours; train:
train_wall_seconds, steps, step_ms; evaluate: eval_wall_seconds,
encode_ms_per_image, encode_ms_per_caption, scoring_seconds (the full matrix; extrapolated from the
tiles scored when a run resumed, `scoring_seconds_extrapolated: true`), and for every evaluation
(harness.eval.cost) encode_ms_per_item, pairs_scored, pairs_per_second, peak_host_mb, peak_gpu_mb; a cascade's
`cascade` record holds k, source, pairs_scored, pairs_total and pairs_fraction.

A job whose directory holds a different key (changed config, data or code, or a key of an older
identity scheme) is moved aside to `_superseded/` and one that is forced is reset; both start from
scratch. Otherwise an unfinished job resumes: training from work/checkpoint.pth, scoring from
work/tiles_*.h5. A finished evaluation with the same key whose `protocol_code` is not the job's has its
protocols recomputed from its stored matrix, or is evaluated again in place when they need the model
(harness.run.protocol_refresh).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: jobs are not locked
    fcntl = None  # type: ignore[assignment]

import numpy as np
import torch

from harness.api.adapter import Adapter, parameter_count
from harness.core.checkpoints import SAFE_GLOBALS, load_container
from harness.core.jobconfig import JobConfig
from harness.core.results import ResultStore, environment, fresh_path
from harness.data.matrices import load_matrix, load_owner
from harness.eval.cascade import Stage1, evaluate_cascade
from harness.eval.cost import add_cost
from harness.eval.evaluation import (
    OWNER,
    EvaluationInterrupted,
    Hooks,
    MatrixOutput,
    combine_efficiency,
    evaluate_matrix,
    evaluate_models,
    evaluate_robustness,
    mean_matrix,
    peak_memory,
)
from harness.eval.perturb.spec import parse_perturb
from harness.eval.robustness import RobustnessRequest
from harness.eval.streaming import MATRIX_LIMIT, SummaryError
from harness.run import distributed
from harness.run.curves import open_events
from harness.run.health import run_health
from harness.run.plan import Job
from harness.run.protocol_refresh import RECOMPUTE, eval_spec, recompute_protocols, refresh_action
from harness.run.status import LOG, STATUS, StatusWriter
from harness.run.training import BEST, StepInfo, TrainingInterrupted, train
from harness.spec.registry import Registry, load_registry

CURVE = "loss_curve.tsv"
LOCK = ".lock"  # one process at a time per job folder (flock)
KILL_ENV = "ITRBENCH_KILL_AT"  # test hook: "step:N" / "tile:N" -> SIGKILL this process after N steps / tiles


class JobInterrupted(RuntimeError):
    """The job stopped on request (preemption, cancel) after saving its progress."""


class JobFailed(RuntimeError):
    """The job ran to its end without producing what it must (a training job without a model)."""


class JobLocked(RuntimeError):
    """Another process is running this job right now."""


@dataclass
class RunSettings:
    """Runtime knobs shared by the jobs of a campaign. They are not part of a job's identity."""

    results: str = "results"
    data_root: str = "data"
    registry: list[str] = field(default_factory=list)  # user registry files on top of the project's
    device: str | None = None  # None: cuda when available, else cpu
    checkpoint_minutes: float | None = 15.0  # mid-epoch training checkpoints
    checkpoint_steps: int | None = None
    image_tile: int | None = None  # scoring tiles (default: the scoring engine's per scoring kind)
    data_folders: dict[str, str] = field(default_factory=dict)  # protocol name -> its data folder (sts, ...)
    caption_tile: int | None = None
    encode_batch: int = 128
    eval_processes: int = 1  # processes per evaluation (--processes; harness.eval.sharding)
    store_matrix: str = "auto"  # auto | always | never (harness.eval.streaming)
    matrix_limit: int = MATRIX_LIMIT  # bytes up to which `auto` keeps an evaluation's matrix

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSettings:
        return cls(**d)


@dataclass
class JobContext:
    registry: Registry
    store: ResultStore
    data_root: Path
    device: str = "cpu"
    log: Callable[[str], None] = lambda msg: None  # an extra sink besides job.log
    on_progress: Callable[[str, str], None] | None = None  # (job name, progress text)
    settings: RunSettings = field(default_factory=RunSettings)
    should_stop: Callable[[], bool] | None = None  # preemption / cancel: save progress and stop
    dist: distributed.DistContext | None = None
    processes: int = 1


def registry_from(paths: str | list[str] | None) -> Registry:
    """The project's registry with the user's registry files `paths` on top."""
    files = [paths] if isinstance(paths, str) else list(paths or [])
    return load_registry(*files)


def is_cached(store: ResultStore, job: Job) -> bool:
    """Finished with the same key and, for an evaluation, with metrics of the current protocol code."""
    if not store.is_finished(job.name):
        return False
    done = store.load(job.name)
    if done.config.get("key") != job.key:
        return False
    return job.stage != "evaluate" or not job.protocols or done.metrics.get("protocol_code") == job.protocols


def reset_job(store: ResultStore, name: str, reason: str) -> None:
    """Discard a job's results and progress (keeps job.log, with a note)."""
    d = store.job_dir(name)
    if not d.exists():
        return
    for item in ("work", "metrics.json", "sims.npy", "sims.h5", "cascade.npz", STATUS, CURVE, OWNER):
        p = d / item
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    with open(d / LOG, "a", encoding="utf-8") as f:
        f.write(f"{_stamp()} previous results discarded: {reason}\n")


def supersede_job(store: ResultStore, name: str, reason: str) -> Path | None:
    """Move a job folder whose results were computed from another config, data or code aside to
    `<results>/_superseded/<name>-<time>/` (nothing is deleted without --force); returns where it went."""
    d = store.job_dir(name)
    if not d.exists():
        return None
    target = fresh_path(store.root / "_superseded" / name.replace("/", "__"))
    target.mkdir(parents=True)
    for item in d.iterdir():
        if item.name != LOCK:  # the running orchestrator holds it
            item.rename(target / item.name)
    with open(d / LOG, "a", encoding="utf-8") as f:
        f.write(f"{_stamp()} earlier results moved to {target}: {reason}\n")
    return target


def run_job(job: Job, ctx: JobContext, force: bool = False) -> dict[str, Any]:
    """Run `job` unless it already finished with the same key; returns its metrics.

    Under data parallelism every rank calls this; rank 0 alone writes the result folder.
    """
    store = ctx.store
    if not force and is_cached(store, job):
        return store.load(job.name).metrics
    main = ctx.dist is None or ctx.dist.is_main
    d = store.job_dir(job.name)
    with job_lock(d, main):
        action = refresh_action(store, job) if main and not force else None
        if action == RECOMPUTE:
            return _recompute(job, ctx)
        if main:
            old = store.load(job.name).config.get("key") if (d / "config.yaml").is_file() else None
            if force:
                reset_job(store, job.name, "rerun forced")
            elif old is not None and old != job.key:
                supersede_job(store, job.name, f"key changed {old} -> {job.key} ({_changed(store, job)})")
            elif old is None and (d / "work").exists():  # issue 14: config.yaml unreadable (moved aside) or keyless
                supersede_job(store, job.name, "config.yaml unreadable or without a key: earlier progress cannot be "
                              "matched to this job")
            config = {**job.config.as_dict(), "key": job.key, "name": job.name, "identity": dict(job.identity)}
            store.start(job.name, config, environment(seed=job.seed, device=ctx.device))
        distributed.barrier()
        status = StatusWriter(d, enabled=main)
        log = _Logger(d / LOG if main else None, ctx.log, job.name)
        status.state("running", stage=job.stage, processes=ctx.processes)
        log(f"start {job.name} (key {job.key}) on {ctx.device}, {ctx.processes} process(es), "
            f"pid {os.getpid()} on {socket.gethostname()}")
        if action is not None:
            log(f"{action}: the stored metrics hold protocols computed from the model, under other protocol code")
        if ctx.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            runner = _Runner(job, ctx, status, log)
            metrics = runner.train() if job.stage == "train" else runner.evaluate()
        except (JobInterrupted, TrainingInterrupted, EvaluationInterrupted) as exc:
            log(f"interrupted: {exc}")
            status.state("interrupted", error=str(exc))
            raise JobInterrupted(str(exc)) from exc
        except KeyboardInterrupt:
            log("interrupted: KeyboardInterrupt (progress since the last checkpoint is lost)")
            status.state("interrupted", error="KeyboardInterrupt")
            raise
        except BaseException:
            tb = traceback.format_exc().rstrip()
            log(tb)
            status.state("failed", error="\n".join(tb.splitlines()[-8:]))
            raise
        if main:
            store.finish(job.name, metrics)
        log("done")
        status.state("done", progress="done")
        return metrics


def _recompute(job: Job, ctx: JobContext) -> dict[str, Any]:
    """The protocols of a finished evaluation from its stored matrix (harness.run.protocol_refresh)."""
    d = ctx.store.job_dir(job.name)
    log = _Logger(d / LOG, ctx.log, job.name)
    old = ctx.store.load(job.name).metrics.get("protocol_code")
    log(f"{RECOMPUTE} from sims.npy (protocol code {old} -> {job.protocols}; matrix key {job.key} unchanged)")
    t0 = time.perf_counter()
    metrics = recompute_protocols(ctx.store, job, ctx.registry, ctx.data_root, ctx.settings)
    log(f"{RECOMPUTE} in {time.perf_counter() - t0:.2f}s")
    StatusWriter(d).state("done", progress=RECOMPUTE)
    return metrics


def checkpoint_epoch(path: str | Path) -> int | None:
    """The `epoch` field of an official checkpoint container, read through a memory map (no tensor is loaded);
    None when the container has none or is in the legacy (non-zip) format."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            box = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - optional metadata; the strict loader already accepted the file
        return None
    epoch = box.get("epoch") if isinstance(box, dict) else None
    return int(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def _changed(store: ResultStore, job: Job) -> str:
    return changed_parts(store.load(job.name).config.get("identity") or {}, job)


def changed_parts(old: dict[str, Any], job: Job) -> str:
    """What differs between a stored identity and `job`'s, in words ("code changed", ...)."""
    if old.get("scheme") != job.identity.get("scheme"):
        return "identity of an older itrbench (code hashed as whole files into every job), not comparable"
    parts = [k for k in ("config", "data", "code") if old.get(k) != job.identity.get(k)]
    return ", ".join(f"{p} changed" for p in parts) or "changed"


def _stamp() -> str:
    return time.strftime("[%Y-%m-%d %H:%M:%S]")


class _Logger:
    def __init__(self, path: Path | None, sink: Callable[[str], None], name: str) -> None:
        self.path, self.sink, self.name = path, sink, name

    def __call__(self, msg: str) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{_stamp()} {msg}\n")
        self.sink(f"{self.name}: {msg}")


def _take_lock(f: Any) -> str | None:
    """Take the exclusive lock on the open lock file `f`; None when taken, else who holds it."""
    if fcntl is None:  # pragma: no cover - Windows: no locking
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        return f.read().strip() or "another process"
    return None


@contextlib.contextmanager
def job_lock(job_dir: Path, main: bool) -> Iterator[None]:
    """One process at a time per job (a second orchestrator, or a requeued Slurm job while the old one
    still runs, fails fast instead of writing into the same folder)."""
    if not main:
        yield
        return
    job_dir.mkdir(parents=True, exist_ok=True)
    with open(job_dir / LOCK, "a+") as f:
        holder = _take_lock(f)
        if holder is not None:
            raise JobLocked(f"{job_dir}: running elsewhere ({holder})")
        f.seek(0)
        f.truncate()
        f.write(f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        try:
            yield
        finally:  # explicit: a child process that inherited the file must not keep the job locked
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def lock_holder(job_dir: str | Path) -> str | None:
    """Who runs this job right now ("host H, pid P, since T"), when another process holds its lock; else None."""
    path = Path(job_dir) / LOCK
    if not path.is_file():
        return None
    with open(path, "a+") as f:
        return _take_lock(f)  # taken here: nobody else holds it; released when the file closes


def _kill_hook(kind: str) -> Callable[[], None]:
    """Test-only: SIGKILL this very process after N events of `kind` (a real, uncatchable crash)."""
    spec = os.environ.get(KILL_ENV, "")
    if not spec.startswith(kind + ":"):
        return lambda: None
    limit, count = int(spec.split(":", 1)[1]), [0]

    def tick() -> None:
        count[0] += 1
        if count[0] >= limit:
            os.kill(os.getpid(), signal.SIGKILL)

    return tick


class _Runner:
    """The work of one job, with progress reporting."""

    def __init__(self, job: Job, ctx: JobContext, status: StatusWriter, log: _Logger) -> None:
        self.job, self.ctx, self.status, self.log = job, ctx, status, log
        self.dir = ctx.store.job_dir(job.name)

    def progress(self, phase: str, done: float, total: float, text: str) -> None:
        self.status.progress(phase, done, total, text)
        if self.ctx.on_progress:
            self.ctx.on_progress(self.job.name, text)

    def build(self, options: dict[str, Any]) -> Adapter:
        method = self.ctx.registry.method(self.job.method)
        return method.adapter_class().build(self.job.variant, self.job.dataset, options)

    # ---- training -------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        job, ctx = self.job, self.ctx
        recipe = dict(job.config.recipe or {})
        torch.manual_seed(int(recipe.get("seed", 0)))  # the same initial weights on every rank and rerun
        adapter = self.build({**(job.config.options or {}), **recipe}).to(ctx.device)
        data = adapter.train_data(ctx.data_root, job.dataset)
        val_split = ctx.registry.dataset(job.dataset).validation_split
        val_images, val_caps = adapter.eval_data(ctx.data_root, val_split, job.dataset)
        val_owner = adapter.image_of_caption(ctx.data_root, val_split, job.dataset)
        kill = _kill_hook("step")

        def on_step(info: StepInfo) -> None:
            self.progress("training", info.epoch * info.steps + info.step, info.epochs * info.steps,
                          f"epoch {info.epoch + 1}/{info.epochs} step {info.step}/{info.steps} "
                          f"loss {info.loss:.4f}")
            kill()

        def on_epoch(record: dict[str, Any]) -> None:
            if record.get("health") and not self.status.record.get("health"):  # the first flagged epoch
                self.status.state("running", health=run_health([record]))

        events = open_events(self.dir, self.log) if ctx.dist is None or ctx.dist.is_main else None
        minutes = ctx.settings.checkpoint_minutes
        try:
            summary = self._train(adapter, data, recipe, val_images, val_caps, val_owner, on_step, on_epoch,
                                  events, minutes)
        finally:
            if events is not None:
                events.close()
        return self._train_metrics(adapter, summary)

    def _train(self, adapter: Adapter, data: Any, recipe: dict[str, Any], val_images: Any, val_caps: Any,
               val_owner: Any, on_step: Any, on_epoch: Any, events: Any, minutes: float | None) -> Any:
        job, ctx = self.job, self.ctx
        summary = train(adapter, data.images, data.captions, recipe, self.dir / "work", val_images=val_images,
                        val_captions=val_caps, image_of_caption=data.image_of_caption,
                        val_image_of_caption=val_owner, log=self.log, on_step=on_step,
                        checkpoint_every_steps=ctx.settings.checkpoint_steps,
                        checkpoint_every_seconds=minutes * 60 if minutes else None,
                        should_stop=ctx.should_stop, dist=ctx.dist, curve=self.dir / CURVE,
                        on_epoch=on_epoch, events=events)
        if not (self.dir / "work" / BEST).is_file():  # a job that produced no model is failed, never finished
            raise JobFailed(f"{job.name}: training ended without a model ({BEST} was not written after "
                            f"{summary.steps} steps); check the recipe's epochs and the training data")
        return summary

    def _train_metrics(self, adapter: Adapter, summary: Any) -> dict[str, Any]:
        ctx = self.ctx
        peaks = distributed.all_gather_objects(peak_memory(ctx.device))
        known = [p for p, _ in peaks if p is not None]
        gpus = ctx.processes if ctx.device.startswith("cuda") else 0
        return {"stage": "train", "best_rsum": summary.best_rsum, "best_epoch": summary.best_epoch,
                "history": summary.history, "health": summary.health,
                "checkpoint": str(self.dir / "work" / BEST),
                "resumed_from": {"epoch": summary.resumed_from_epoch, "step": summary.resumed_from_step}
                if summary.resumed_from_epoch or summary.resumed_from_step else None,
                "efficiency": {
                    "parameters": parameter_count(adapter.model), "device": ctx.device,
                    "processes": ctx.processes, "train_wall_seconds": summary.wall_seconds,
                    "gpu_hours": gpus * summary.wall_seconds / 3600.0, "steps": summary.steps,
                    "step_ms": 1000 * summary.step_seconds / max(1, summary.steps),
                    "peak_memory_mb": max(known) if known else None, "peak_memory_kind": peaks[0][1]}}

    # ---- evaluation ------------------------------------------------------------------------------
    def load_trained(self, train_job_name: str) -> Adapter:
        store = self.ctx.store
        train_cfg = JobConfig.from_dict(store.load(train_job_name).config)
        adapter = self.build({**(train_cfg.options or {}), **(train_cfg.recipe or {})})
        container = load_container(store.job_dir(train_job_name) / "work" / BEST)
        adapter.model.load_state_dict(container["itrbench"]["model_state"])
        return adapter.to(self.ctx.device)

    def evaluate(self) -> dict[str, Any]:
        """The one evaluation path (harness.eval.evaluation): the matrix and its mapping are written to the job
        folder before any protocol runs; an inapplicable protocol is recorded as not defined."""
        job, ctx = self.job, self.ctx
        cfg = job.config
        spec, settings = eval_spec(job, ctx.registry, ctx.data_root, ctx.settings)
        output = MatrixOutput.job(self.dir)
        method = ctx.registry.method(job.method)
        if cfg.members is not None:  # ensemble: average the members' stored matrices
            store = ctx.store
            members = list(cfg.members)
            self.progress("averaging", 0, len(members), f"averaging {len(members)} member matrices")
            streamed = [m for m in members if not (store.job_dir(m) / "sims.npy").is_file()
                        and (store.job_dir(m) / "ranks.npz").is_file()]
            if streamed:
                raise SummaryError(f"ensemble {job.name}: member {streamed[0]} was streamed (ranks.npz, no sims.npy); "
                                   "an ensemble averages its members' matrices: re-run them with --store-matrix always")
            sims = mean_matrix([load_matrix(store.job_dir(m) / "sims.npy") for m in members])
            owner = load_owner(store.job_dir(members[0]) / OWNER, sims.shape[1], sims.shape[0])
            eff = combine_efficiency([store.load(m).metrics.get("efficiency", {}) for m in members])
            eff["members"] = members
            cls = method.adapter_class()
            result = evaluate_matrix(sims, owner, spec, settings, output, method=cls.method, scoring=cls.scoring,
                                     members=len(members), efficiency=eff, hooks=self.hooks())
        elif cfg.cascade is not None:  # shortlist and rerank: stage 1 is the shortlister job's stored matrix
            return self.evaluate_cascade(self.load_model(), spec, settings)
        else:
            adapter = self.load_model()
            if cfg.robustness:  # a robustness job: the clean matrix is its evaluation's, then the perturbations
                return self.robustness(adapter, spec, settings)
            result = evaluate_models([adapter], spec, settings, output, self.hooks())
        shape = result.shape if result.sims is not None or result.ranks is not None else None
        out = {"stage": "evaluate", "protocols": result.metrics,
               "efficiency": add_cost(result.efficiency, shape) if shape is not None else result.efficiency,
               "shape": list(shape) if shape is not None else None, "protocol_code": job.protocols}
        if result.sims is None and result.ranks is not None:
            out["matrix"] = "streamed: ranks.npz holds the rank summary, no sims.npy (--store-matrix)"
        if cfg.source == "official" and cfg.members is None:
            epoch = checkpoint_epoch(str(cfg.checkpoint))
            if epoch is not None:  # which of a paper's per-epoch log rows this checkpoint can fill
                out["checkpoint_epoch"] = epoch
        return out

    def robustness(self, adapter: Adapter, spec: Any, settings: Any) -> dict[str, Any]:
        """metrics.json of a robustness job: the pass (harness.eval.robustness) against the clean matrix its
        evaluation job stored (scored again only when that matrix is absent or of another shape)."""
        cfg, store = self.job.config, self.ctx.store
        robust = dict(cfg.robustness or {})
        request = RobustnessRequest(parse_perturb(str(robust["spec"])), int(robust.get("seed", 0)))
        clean = clean_owner = None
        evaluation = robust.get("evaluation")
        if evaluation and (store.job_dir(evaluation) / "sims.npy").is_file():
            clean = np.load(store.job_dir(evaluation) / "sims.npy", mmap_mode="r")
            owner_file = store.job_dir(evaluation) / OWNER
            clean_owner = np.load(owner_file) if owner_file.is_file() else None
        t0 = time.perf_counter()
        record = evaluate_robustness(adapter, spec, settings, request, clean, clean_owner, self.hooks())
        wall = time.perf_counter() - t0
        peak, kind = peak_memory(str(adapter.device))
        return {"stage": self.job.stage, "robustness": record, "clean_matrix": record.get("clean_matrix"),
                "efficiency": {"robustness_seconds": wall, "device": str(adapter.device), "peak_memory_mb": peak,
                               "peak_memory_kind": kind, "processes": 1, "parameters": parameter_count(adapter.model),
                               "gpu_hours": wall / 3600.0 if str(adapter.device).startswith("cuda") else 0.0}}

    def load_model(self) -> Adapter:
        """The evaluated model: a pretrained one from its options, an official checkpoint, or a trained job's."""
        job, cfg = self.job, self.job.config
        if cfg.source == "zeroshot":  # a pretrained model as it is: built from its options
            return self.build(dict(cfg.options or {})).to(self.ctx.device)
        if cfg.source == "official":
            return self.ctx.registry.method(job.method).adapter_class().load_official(
                str(cfg.checkpoint), variant=job.variant, dataset=job.dataset).to(self.ctx.device)
        return self.load_trained(str(cfg.train_job))

    def evaluate_cascade(self, adapter: Adapter, spec: Any, settings: Any) -> dict[str, Any]:
        """Rerank the shortlister job's top-K with `adapter` (resumes from work/pairs_0.h5)."""
        cascade = dict(self.job.config.cascade or {})
        matrix = self.ctx.store.job_dir(str(cascade["stage1_job"])) / "sims.npy"
        stage1 = Stage1("matrix", str(cascade["shortlister"]), matrix=matrix)
        s = self.ctx.settings  # --tiles I,C: pair tiles of I x C pairs
        pair_tile = s.image_tile * s.caption_tile if s.image_tile and s.caption_tile else None
        result = evaluate_cascade([adapter], spec, settings, stage1, int(cascade["k"]), self.dir, self.hooks(),
                                  pair_tile=pair_tile)
        return {"stage": "evaluate", "protocols": result.metrics, "cascade": result.result.record(),
                "efficiency": add_cost(result.efficiency, result.result.shape, result.result.pairs_scored),
                "shape": list(result.result.shape), "protocol_code": self.job.protocols}

    def hooks(self) -> Hooks:
        kill = _kill_hook("tile")
        return Hooks(progress=self.progress, log=self.log, on_tile=kill, should_stop=self.ctx.should_stop)


