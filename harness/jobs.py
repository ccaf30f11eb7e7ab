"""Run one planned job (train or evaluate) into its result directory, resumably.

Result layout (read by harness.report): `<results>/<dataset>/<method>-<variant>-<source>/<stage>/` with

- `config.yaml`: the job's config plus `key`, `name` and `identity` ({config, data, code} hashes);
  train jobs: stage, method, variant, dataset, seed, recipe, options, splits; evaluations: stage, method,
  variant, dataset, seed, source ("official" | "seed<k>"), split, and checkpoint (official),
  train_job (retrained) or members (ensembles: the member evaluation jobs);
- `env.json` (versions, device, git revision), `job.log` (everything the job said), `status.json`
  (live state for the orchestrator), `work/` (training checkpoints, the scoring tile cache);
- `loss_curve.tsv` (train jobs: epoch, step, loss of every optimizer step);
- `sims.npy` (evaluations: float32 images x captions; `image_of_caption.npy` beside it when captions are
  not 5 per image in order) and `metrics.json`, written last: a job is
  finished exactly when metrics.json exists.

metrics.json: train `{stage: "train", best_rsum, best_epoch, history: [{epoch, loss, lr, val_rsum}],
checkpoint, efficiency}`; evaluate `{stage: "evaluate", protocols: {<protocol>: recall metrics},
shape: [images, captions], efficiency}`. Efficiency: parameters, peak_memory_mb (+ peak_memory_kind),
device, processes, gpu_hours; train: train_wall_seconds, steps, step_ms; evaluate: eval_wall_seconds,
encode_ms_per_image, encode_ms_per_caption, scoring_seconds (the full matrix; extrapolated from the
tiles scored when a run resumed, `scoring_seconds_extrapolated: true`).

A job whose directory holds a different key (changed config, data or code) or that is forced starts
from scratch; otherwise an unfinished job resumes: training from work/checkpoint.pth, scoring from
work/tiles_*.h5.
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

import numpy as np
import torch

from harness import distributed
from harness.adapter import Adapter, parameter_count
from harness.checkpoints import load_container
from harness.evaluate import _ids_dir, compute_metrics, extra_protocols, image_retrieval_metrics, protocols_for
from harness.executors.status import LOG, STATUS, StatusWriter
from harness.plan import Job
from harness.precision import check_precision
from harness.registry import Registry, load_registry
from harness.results import ResultStore, environment, save_npy
from harness.scoring import DEFAULT_TILES, CacheError, encode_images, encode_texts, score_blocks, tile_grid
from harness.training import BEST, StepInfo, TrainingInterrupted, train

CURVE = "loss_curve.tsv"
OWNER = "image_of_caption.npy"  # evaluations whose captions are not 5 per image in order (CUSA json)
KILL_ENV = "ITRBENCH_KILL_AT"  # test hook: "step:N" / "tile:N" -> SIGKILL this process after N steps / tiles


class JobInterrupted(RuntimeError):
    """The job stopped on request (preemption, cancel) after saving its progress."""


class JobLocked(RuntimeError):
    """Another process is running this job right now."""


@dataclass
class RunSettings:
    """Runtime knobs shared by the jobs of a campaign. They are not part of a job's identity."""

    results: str = "results"
    data_root: str = "data"
    registry: str | None = None  # registry file (default: the project's)
    device: str | None = None  # None: cuda when available, else cpu
    checkpoint_minutes: float | None = 15.0  # mid-epoch training checkpoints
    checkpoint_steps: int | None = None
    image_tile: int | None = None  # scoring tiles (default: the scoring engine's per scoring kind)
    sts_root: str | None = None  # SentEval data for the STS protocol (evaluations of COCO models)
    image_retrieval_root: str | None = None  # CUB/SOP/In-shop/iNaturalist (image retrieval; COCO models)
    caption_tile: int | None = None
    encode_batch: int = 128

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


def registry_from(path: str | None) -> Registry:
    """The project's registry with the user's registry file `path` (if any) on top."""
    return load_registry(*([path] if path else []))


def is_cached(store: ResultStore, job: Job) -> bool:
    return store.is_finished(job.name) and store.load(job.name).config.get("key") == job.key


def reset_job(store: ResultStore, name: str, reason: str) -> None:
    """Discard a job's results and progress (keeps job.log, with a note)."""
    d = store.job_dir(name)
    if not d.exists():
        return
    for item in ("work", "metrics.json", "sims.npy", "sims.h5", STATUS, CURVE, OWNER):
        p = d / item
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    with open(d / LOG, "a", encoding="utf-8") as f:
        f.write(f"{_stamp()} previous results discarded: {reason}\n")


def run_job(job: Job, ctx: JobContext, force: bool = False) -> dict[str, Any]:
    """Run `job` unless it already finished with the same key; returns its metrics.

    Under data parallelism every rank calls this; rank 0 alone writes the result folder.
    """
    store = ctx.store
    if not force and is_cached(store, job):
        return store.load(job.name).metrics
    main = ctx.dist is None or ctx.dist.is_main
    d = store.job_dir(job.name)
    with _lock(d, main):
        if main:
            old = store.load(job.name).config.get("key") if (d / "config.yaml").is_file() else None
            if force:
                reset_job(store, job.name, "rerun forced")
            elif old is not None and old != job.key:
                reset_job(store, job.name, f"key changed {old} -> {job.key} ({_changed(store, job)})")
            config = {**job.config, "key": job.key, "name": job.name, "identity": dict(job.identity)}
            store.start(job.name, config, environment(seed=job.seed, device=ctx.device))
        distributed.barrier()
        status = StatusWriter(d, enabled=main)
        log = _Logger(d / LOG if main else None, ctx.log, job.name)
        status.state("running", stage=job.stage, processes=ctx.processes)
        log(f"start {job.name} (key {job.key}) on {ctx.device}, {ctx.processes} process(es), "
            f"pid {os.getpid()} on {socket.gethostname()}")
        if ctx.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            runner = _Runner(job, ctx, status, log)
            metrics = runner.train() if job.stage == "train" else runner.evaluate()
        except (JobInterrupted, TrainingInterrupted) as exc:
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


def _changed(store: ResultStore, job: Job) -> str:
    old = store.load(job.name).config.get("identity") or {}
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


@contextlib.contextmanager
def _lock(job_dir: Path, main: bool) -> Iterator[None]:
    """One process at a time per job (a second orchestrator, or a requeued Slurm job while the old one
    still runs, fails fast instead of writing into the same folder)."""
    if not main:
        yield
        return
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = job_dir / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.seek(0)
            raise JobLocked(f"{job_dir}: already running ({f.read().strip() or 'another process'})") from exc
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


def _peak_memory(device: str) -> tuple[float | None, str]:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "process_max_rss"
    except ImportError:  # pragma: no cover - Windows
        return None, "unknown"


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
        recipe = dict(job.config["recipe"])
        torch.manual_seed(int(recipe.get("seed", 0)))  # the same initial weights on every rank and rerun
        adapter = self.build({**job.config["options"], **recipe}).to(ctx.device)
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

        minutes = ctx.settings.checkpoint_minutes
        summary = train(adapter, data.images, data.captions, recipe, self.dir / "work", val_images=val_images,
                        val_captions=val_caps, image_of_caption=data.image_of_caption,
                        val_image_of_caption=val_owner, log=self.log, on_step=on_step,
                        checkpoint_every_steps=ctx.settings.checkpoint_steps,
                        checkpoint_every_seconds=minutes * 60 if minutes else None,
                        should_stop=ctx.should_stop, dist=ctx.dist, curve=self.dir / CURVE)
        peaks = distributed.all_gather_objects(_peak_memory(ctx.device))
        known = [p for p, _ in peaks if p is not None]
        gpus = ctx.processes if ctx.device.startswith("cuda") else 0
        return {"stage": "train", "best_rsum": summary.best_rsum, "best_epoch": summary.best_epoch,
                "history": summary.history, "checkpoint": str(self.dir / "work" / BEST),
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
        train_cfg = store.load(train_job_name).config
        adapter = self.build({**train_cfg["options"], **train_cfg["recipe"]})
        container = load_container(store.job_dir(train_job_name) / "work" / BEST)
        adapter.model.load_state_dict(container["itrbench"]["model_state"])
        return adapter.to(self.ctx.device)

    def evaluate(self) -> dict[str, Any]:
        job, ctx = self.job, self.ctx
        cfg = job.config
        split = cfg["split"]
        t_start = time.perf_counter()
        method = ctx.registry.method(job.method)
        if "members" in cfg:  # ensemble: average the members' stored matrices
            sims, eff = self.ensemble(cfg["members"])
            owner_file = ctx.store.job_dir(cfg["members"][0]) / OWNER
            owner = np.load(owner_file) if owner_file.is_file() else None
            members: list[Any] = [method.adapter_class()] * len(cfg["members"])  # scoring kind and name only
            images, captions = None, None
        else:
            if cfg.get("source") == "official":
                adapter = method.adapter_class().load_official(cfg["checkpoint"], variant=job.variant,
                                                               dataset=job.dataset).to(ctx.device)
            else:
                adapter = self.load_trained(cfg["train_job"])
            images, captions = adapter.eval_data(ctx.data_root, split, job.dataset)
            sims, eff = self.similarity(adapter, images, captions)
            owner = adapter.image_of_caption(ctx.data_root, split, job.dataset)
            if owner is not None:
                save_npy(self.dir / OWNER, np.asarray(owner))
            members = [adapter]
        save_npy(self.dir / "sims.npy", sims)
        metrics = compute_metrics(sims, protocols_for(job.dataset, split, sims.shape[0]), owner)
        wanted = ctx.registry.dataset(job.dataset).protocols
        # STS and image retrieval use the uni-modal heads, not the matrix: run for COCO models (as the
        # paper) whatever the test set's caption count (CUSA's json has 25,010 captions)
        sts = Path(ctx.settings.sts_root) if ctx.settings.sts_root and job.dataset == "coco" else None
        if (sims.shape == (5000, 25000) or sts is not None) and (images is not None or "members" in cfg):
            self.progress("metrics", 0, 1, "ECCV / CxC" + (" / STS" if sts is not None else ""))
            metrics.update(extra_protocols(sims, members, images, captions, wanted,
                                           _ids_dir(ctx.data_root, split, job.dataset), sts,
                                           ctx.settings.encode_batch))
        if ctx.settings.image_retrieval_root and job.dataset == "coco":
            self.progress("metrics", 0, 1, "image retrieval")
            metrics["image_retrieval"] = image_retrieval_metrics(members, Path(ctx.settings.image_retrieval_root),
                                                                 ctx.settings.encode_batch)
        if "members" not in cfg:
            wall = time.perf_counter() - t_start
            peak, kind = _peak_memory(ctx.device)
            eff.update(eval_wall_seconds=wall, peak_memory_mb=peak, peak_memory_kind=kind, device=ctx.device,
                       processes=1, gpu_hours=wall / 3600.0 if ctx.device.startswith("cuda") else 0.0)
        return {"stage": "evaluate", "protocols": metrics, "efficiency": eff, "shape": list(sims.shape)}

    def ensemble(self, members: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
        store = self.ctx.store
        self.progress("averaging", 0, len(members), f"averaging {len(members)} member matrices")
        mats = [np.load(store.job_dir(m) / "sims.npy") for m in members]
        sims = np.mean(np.stack(mats).astype(np.float64), axis=0).astype(np.float32)
        effs = [store.load(m).metrics.get("efficiency", {}) for m in members]
        eff: dict[str, Any] = {k: sum(float(e.get(k) or 0.0) for e in effs)
                               for k in ("parameters", "scoring_seconds", "encode_ms_per_image",
                                         "encode_ms_per_caption", "gpu_hours", "eval_wall_seconds")}
        eff["parameters"] = int(eff["parameters"])
        peaks = [e.get("peak_memory_mb") for e in effs if e.get("peak_memory_mb") is not None]
        eff["peak_memory_mb"] = max(peaks) if peaks else None
        eff["members"] = members
        return sims, eff

    def similarity(self, adapter: Adapter, images: Any, captions: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
        """Encode once, score tile by tile into work/tiles_0.h5 (resumable), with timings."""
        settings = self.ctx.settings
        precision = str(self.job.config.get("precision", "fp32"))
        check_precision(precision, self.ctx.device)
        n_img, n_cap = len(images), len(captions)
        batch = settings.encode_batch
        done_img = [0]

        def on_images(k: int) -> None:
            done_img[0] += k
            self.progress("encoding", done_img[0], n_img, f"encoding images {done_img[0]}/{n_img}")

        done_cap = [0]

        def on_captions(k: int) -> None:
            done_cap[0] += k
            self.progress("encoding", done_cap[0], n_cap, f"encoding captions {done_cap[0]}/{n_cap}")

        t0 = time.perf_counter()
        img = encode_images(adapter, images, batch_size=batch, on_batch=on_images, precision=precision)
        t1 = time.perf_counter()
        txt = encode_texts(adapter, captions, batch_size=batch, on_batch=on_captions, precision=precision)
        t2 = time.perf_counter()
        default = DEFAULT_TILES[adapter.scoring]
        tiles = (settings.image_tile or default[0], settings.caption_tile or default[1])
        total = len(tile_grid(n_img, n_cap, *tiles))
        cache = self.dir / "work" / "tiles_0.h5"
        reused = _cached_tiles(cache, tiles)
        if reused:
            self.log(f"resuming scoring: {reused}/{total} tiles already in {cache}")
        scored = [0]
        kill = _kill_hook("tile")
        stop = self.ctx.should_stop

        def on_tile(a: int, c: int) -> None:
            scored[0] += 1
            self.progress("scoring", reused + scored[0], total, f"tiles {reused + scored[0]}/{total}")
            kill()
            if stop and stop() and reused + scored[0] < total:
                raise JobInterrupted(f"scoring stopped after {reused + scored[0]}/{total} tiles (kept in {cache})")

        t3 = time.perf_counter()
        try:
            sims = score_blocks(adapter, img, txt, image_tile=tiles[0], caption_tile=tiles[1], cache=cache,
                                on_tile=on_tile, precision=precision)
        except CacheError as exc:  # e.g. tile sizes changed, or encodings differ on a nondeterministic GPU
            self.log(f"tile cache not reusable, scoring from scratch: {exc}")
            cache.unlink()
            reused, scored[0] = 0, 0
            t3 = time.perf_counter()
            sims = score_blocks(adapter, img, txt, image_tile=tiles[0], caption_tile=tiles[1], cache=cache,
                                on_tile=on_tile, precision=precision)
        t4 = time.perf_counter()
        measured = t4 - t3
        eff: dict[str, Any] = {
            "parameters": parameter_count(adapter.model),
            "encode_ms_per_image": 1000 * (t1 - t0) / max(1, n_img),
            "encode_ms_per_caption": 1000 * (t2 - t1) / max(1, n_cap),
            "scoring_seconds": measured, "tiles": total, "tile_size": list(tiles), "precision": precision}
        if reused:
            eff["scoring_seconds"] = measured * total / max(1, scored[0])
            eff["scoring_seconds_extrapolated"] = True
            eff["tiles_reused"] = reused
        return sims, eff


def _cached_tiles(cache: Path, tiles: tuple[int, int]) -> int:
    """Finished tiles in a tile cache of the same tiling (0 when absent or of another tiling)."""
    if not cache.is_file():
        return 0
    import h5py

    try:
        with h5py.File(cache, "r") as f:
            if tuple(int(t) for t in f.attrs["tiles"]) != tuple(tiles):
                return 0
            return int(np.asarray(f["done"][...]).sum())
    except (OSError, KeyError):
        return 0
