"""The training loop every method shares: epochs, lr schedule, clipping, validation, checkpoints, resume.

Checkpoints are written in the method's official container layout (so the official code and
`load_official` can read them), with an extra `itrbench` entry holding the optimizer, the RNG states,
the position in the epoch and the history:

- at the end of every epoch (after validation; `model_best.pth` too when validation improved);
- inside an epoch every `checkpoint_every_steps` optimizer steps and/or `checkpoint_every_seconds`
  (long COCO epochs), storing the epoch's sample order and the RNG state after the last finished step;
- when `should_stop()` turns true (preemption, Ctrl-C): at the next step boundary, then
  `TrainingInterrupted` is raised.

Resuming restores all of it, so a run killed at any point and restarted from its last checkpoint
takes exactly the steps an uninterrupted run takes (same batches, same augmentations, same weights
on a deterministic device).

Under data parallelism (`dist` given, see harness.run.distributed) every rank runs this loop on the same
global batches; rank 0 alone validates and writes checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.api.adapter import Adapter
from harness.core.checkpoints import CheckpointError, load_container
from harness.core.results import quarantine, save_torch
from harness.eval.metrics.recall import full_recall
from harness.eval.scoring import similarity_matrix
from harness.run import distributed
from harness.run.health import epoch_health, run_health, validation_chance

CHECKPOINT = "checkpoint.pth"
BEST = "model_best.pth"


class TrainingInterrupted(RuntimeError):
    """Training stopped on request after writing a checkpoint at a step boundary."""


@dataclass
class TrainSummary:
    epochs: int
    best_rsum: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0
    resumed_from_epoch: int = 0
    resumed_from_step: int = 0
    health: dict[str, Any] = field(default_factory=lambda: run_health([]))  # see harness.run.health
    steps: int = 0  # optimizer steps over the whole run (all restarts)
    step_seconds: float = 0.0  # time inside training steps (all restarts), without validation and saving


@dataclass(frozen=True)
class StepInfo:
    epoch: int
    step: int  # steps finished in this epoch
    steps: int  # steps per epoch
    epochs: int
    loss: float


@dataclass
class _Position:
    """Where the run stands: the epoch in progress, steps done in it, and its sample order."""

    epoch: int = 0
    step: int = 0
    eiters: int = 0
    order: np.ndarray | None = None
    losses: list[float] = field(default_factory=list)


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    state = rng.bit_generator.state
    return {"bit_generator": state["bit_generator"], "state": str(state["state"]["state"]),
            "inc": str(state["state"]["inc"]), "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}


def _restore_rng(rng: np.random.Generator, saved: Mapping[str, Any]) -> None:
    rng.bit_generator.state = {"bit_generator": saved["bit_generator"],
                               "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
                               "has_uint32": saved["has_uint32"], "uinteger": saved["uinteger"]}


def validation_rsum(adapter: Adapter, images: Any, captions: list[str], batch_size: int = 128,
                    image_of_caption: np.ndarray | None = None) -> float:
    sims = similarity_matrix(adapter, images, captions, batch_size=batch_size)
    return float(full_recall(sims, image_of_caption=image_of_caption)["rsum"])


def train(adapter: Adapter, train_images: Any, train_captions: list[str], recipe: Mapping[str, Any],
          work_dir: str | Path, *, val_images: Any = None, val_captions: list[str] | None = None,
          captions_per_image: int = 5, log: Callable[[str], None] = print,
          on_step: Callable[[StepInfo], None] | None = None, stop_after_steps: int | None = None,
          checkpoint_every_steps: int | None = None, checkpoint_every_seconds: float | None = None,
          should_stop: Callable[[], bool] | None = None,
          dist: distributed.DistContext | None = None, curve: str | Path | None = None,
          image_of_caption: np.ndarray | None = None,
          val_image_of_caption: np.ndarray | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          events: Any = None) -> TrainSummary:
    """Train `adapter` in place on captions paired with their images (caption j -> image j // k, or
    `image_of_caption[j]` when given; likewise `val_image_of_caption` for validation).

    Recipe keys used here: epochs, batch_size (the global batch), seed (plus whatever the adapter's
    configure_training reads). `stop_after_steps` ends the run early without a checkpoint (a simulated
    crash). Raises TrainingInterrupted after checkpointing when `should_stop()` becomes true.
    `curve`: a TSV file receiving one line per step (epoch, step, loss), kept in step with the checkpoints.
    Every epoch record gets `health` (why the epoch looks collapsed, or None; harness.run.health) and goes
    to `on_epoch`; `events` (harness.run.curves.TrainingEvents) receives step losses, lrs and val rsums.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    epochs, batch_size = int(recipe["epochs"]), int(recipe["batch_size"])
    seed = int(recipe.get("seed", 0))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    setup = adapter.configure_training(recipe)
    device = dist.device if dist else str(adapter.device)
    step_fn = distributed.DataParallelStep(adapter, dist) if dist else None
    main = dist is None or dist.is_main
    summary = TrainSummary(epochs=epochs, best_rsum=-1.0, best_epoch=-1)
    pos = _Position()
    ckpt = work_dir / CHECKPOINT
    container = _readable_checkpoint(ckpt, main, log) if ckpt.is_file() else None
    if container is not None:
        pos = _resume(adapter, setup.optimizer, rng, ckpt, container, summary, dist)
        log(f"resumed from {ckpt} at epoch {pos.epoch}" + (f" step {pos.step}" if pos.step else ""))
    n = len(train_captions)
    owner = np.arange(n) // captions_per_image if image_of_caption is None else np.asarray(image_of_caption)
    if owner.shape != (n,):
        raise ValueError(f"image_of_caption has shape {owner.shape}, expected ({n},) for {n} training captions")
    steps_per_epoch = -(-n // batch_size)
    wall_base, t0 = summary.wall_seconds, time.perf_counter()
    last_save = time.perf_counter()
    steps_here = 0
    curve_file = _open_curve(Path(curve), pos.eiters) if curve and main else None

    def save(is_best: bool = False) -> None:
        nonlocal last_save
        if curve_file:
            curve_file.flush()
        summary.wall_seconds = wall_base + time.perf_counter() - t0
        torch_rngs = distributed.all_gather_objects(torch.get_rng_state())
        if main:
            _save(adapter, setup.optimizer, rng, work_dir, pos, summary, is_best, torch_rngs)
        distributed.barrier()
        last_save = time.perf_counter()

    try:
        for epoch in range(pos.epoch, epochs):
            lrs = setup.lr_at_epoch(epoch)
            for group, lr in zip(setup.optimizer.param_groups, lrs):
                group["lr"] = lr
            if pos.order is None or pos.epoch != epoch:
                pos = _Position(epoch=epoch, step=0, eiters=pos.eiters, order=rng.permutation(n))
            adapter.model.train()
            for step in range(pos.step, steps_per_epoch):
                idx = pos.order[step * batch_size:(step + 1) * batch_size]
                images = _gather(train_images, owner[idx])
                batch = adapter.make_train_batch(images, [train_captions[i] for i in idx], rng, caption_ids=idx)
                t_step = time.perf_counter()
                out = step_fn(batch, len(idx), epoch) if step_fn else adapter.train_step(batch, epoch)
                loss = out["loss"]
                setup.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if setup.grad_clip:
                    torch.nn.utils.clip_grad_norm_(adapter.model.parameters(), setup.grad_clip)
                setup.optimizer.step()
                value = distributed.all_reduce_mean(float(loss.detach()), device)
                summary.step_seconds += time.perf_counter() - t_step
                if step_fn and step_fn.gathers == 0 and summary.steps == 0:
                    log(f"note: {type(adapter).__name__}.train_step did not call gather(): each of the "
                        f"{dist.world_size} processes computes its loss over its own shard of the batch")
                pos.step, pos.eiters = step + 1, pos.eiters + 1
                pos.losses.append(value)
                if curve_file:
                    curve_file.write(f"{epoch}\t{step + 1}\t{value:.9g}\n")
                if events is not None and main:
                    events.step(pos.eiters, value, [g["lr"] for g in setup.optimizer.param_groups])
                summary.steps += 1
                steps_here += 1
                if on_step:
                    on_step(StepInfo(epoch, step + 1, steps_per_epoch, epochs, value))
                if stop_after_steps is not None and steps_here >= stop_after_steps:
                    return summary
                if step + 1 == steps_per_epoch:
                    break  # the epoch-end checkpoint follows
                due_steps = bool(checkpoint_every_steps) and pos.eiters % int(checkpoint_every_steps) == 0
                due_time = checkpoint_every_seconds is not None and \
                    time.perf_counter() - last_save >= checkpoint_every_seconds
                stop = bool(should_stop and should_stop())
                due, stop = (bool(v) for v in distributed.all_reduce_max([float(due_steps or due_time),
                                                                           float(stop)], device))
                if due or stop:
                    save()
                if stop:
                    raise TrainingInterrupted(f"stopped at epoch {epoch} step {pos.step}; checkpoint {ckpt}")
            record: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(pos.losses)) if pos.losses else None,
                                      "lr": [g["lr"] for g in setup.optimizer.param_groups]}
            if val_images is not None and val_captions and main:
                record["val_rsum"] = validation_rsum(adapter, val_images, val_captions,
                                                     image_of_caption=val_image_of_caption)
            chance = None
            if "val_rsum" in record:
                chance = validation_chance(len(val_images) if val_image_of_caption is None
                                           else int(np.max(val_image_of_caption)) + 1, len(val_captions))
                record["val_chance"] = chance
            sizes = [min(batch_size, n - i * batch_size) for i in range(len(pos.losses))]
            record["health"] = epoch_health(epoch, pos.losses, sizes, adapter.collapse_loss(epoch, batch_size),
                                            record.get("val_rsum"), chance)
            summary.history.append(record)
            summary.health = run_health(summary.history)
            if record["health"]:
                log(f"health: epoch {epoch} looks collapsed: {record['health']}")
            if events is not None and main:
                events.epoch(record, pos.eiters)
            if on_epoch:
                on_epoch(record)
            is_best = record.get("val_rsum", -float(epoch)) >= summary.best_rsum or summary.best_epoch < 0
            if is_best:
                summary.best_rsum = float(record.get("val_rsum", summary.best_rsum))
                summary.best_epoch = epoch
            log(f"epoch {epoch}: loss {record['loss']:.4f}" + (f", val rsum {record['val_rsum']:.2f}"
                                                                if "val_rsum" in record else ""))
            pos = _Position(epoch=epoch + 1, step=0, eiters=pos.eiters)
            save(is_best)
            if should_stop and any(distributed.all_reduce_max([float(should_stop())], device)) \
                    and epoch + 1 < epochs:
                raise TrainingInterrupted(f"stopped after epoch {epoch}; checkpoint {ckpt}")
    finally:
        if step_fn:
            step_fn.close()
        if curve_file:
            curve_file.close()
    summary.wall_seconds = wall_base + time.perf_counter() - t0
    return summary


def _open_curve(path: Path, keep: int) -> Any:
    """The loss-curve file for appending, cut back to the `keep` steps the checkpoint holds."""
    lines = path.read_text().splitlines(keepends=True)[:keep + 1] if keep and path.is_file() else []  # + header
    path.write_text("".join(lines) if lines else "epoch\tstep\tloss\n")
    return open(path, "a", encoding="utf-8")


def _gather(images: Any, idx: np.ndarray) -> Any:
    if isinstance(images, np.ndarray):
        order = np.argsort(idx, kind="stable")
        picked = np.empty((len(idx),) + images.shape[1:], dtype=np.float32)
        picked[order] = images[idx[order]]  # sorted reads are faster on a memmap
        return picked
    return [images[int(i)] for i in idx]


def _save(adapter: Adapter, optimizer: torch.optim.Optimizer, rng: np.random.Generator, work_dir: Path,
          pos: _Position, summary: TrainSummary, is_best: bool, torch_rngs: list[torch.Tensor]) -> None:
    container = dict(adapter.official_checkpoint(epoch=pos.epoch, best_rsum=summary.best_rsum, Eiters=pos.eiters))
    # model_state shares storage with the official parts, so torch.save writes the weights once
    model_state = adapter.model.state_dict()
    if is_best:
        save_torch(work_dir / BEST, {**container, "itrbench": {"model_state": model_state, "epoch": pos.epoch}})
    container["itrbench"] = {
        "model_state": model_state,
        "optimizer": optimizer.state_dict(), "numpy_rng": _rng_state(rng),
        "torch_rng": torch_rngs[0], "torch_rng_ranks": torch_rngs,
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None,
        "epoch": pos.epoch, "step": pos.step, "eiters": pos.eiters,
        "order": torch.from_numpy(pos.order.astype(np.int64)) if pos.step and pos.order is not None else None,
        "epoch_losses": list(pos.losses) if pos.step else [],
        "best_rsum": summary.best_rsum, "best_epoch": summary.best_epoch, "history": summary.history,
        "wall_seconds": summary.wall_seconds, "steps": summary.steps, "step_seconds": summary.step_seconds,
    }
    save_torch(work_dir / CHECKPOINT, container)


def _readable_checkpoint(path: Path, main: bool, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The step checkpoint's content; a truncated or corrupt one is moved aside (never deleted) and
    training restarts from the beginning (every process reads the file; the main one moves it)."""
    try:
        container, problem = load_container(path), None
    except CheckpointError as exc:  # "<path>: not a readable torch checkpoint (...); <hint>": keep the middle
        container, problem = None, str(exc).removeprefix(f"{path}: ").split("; ")[0]
    distributed.barrier()
    if problem is not None and main:
        aside = quarantine(path, problem)
        log(f"{path.name} unreadable, moved aside to {aside.name}; training restarts from epoch 0")
    return container


def _resume(adapter: Adapter, optimizer: torch.optim.Optimizer, rng: np.random.Generator, path: Path,
            container: Mapping[str, Any], summary: TrainSummary, dist: distributed.DistContext | None) -> _Position:
    state = container.get("itrbench")
    if state is None:
        raise ValueError(f"{path}: not an itrbench training checkpoint (no optimizer/RNG state); move it away "
                         "to restart training")
    adapter.model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer"])
    _restore_rng(rng, state["numpy_rng"])
    ranks = state.get("torch_rng_ranks") or [state["torch_rng"]]
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    torch.set_rng_state(ranks[rank] if len(ranks) == world else state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available() and world == 1:
        torch.cuda.set_rng_state(state["cuda_rng"])
    summary.best_rsum = float(state["best_rsum"])
    summary.best_epoch = int(state["best_epoch"])
    summary.history = list(state["history"])
    summary.health = run_health(summary.history)
    summary.wall_seconds = float(state.get("wall_seconds", 0.0))
    summary.steps = int(state.get("steps", 0))
    summary.step_seconds = float(state.get("step_seconds", 0.0))
    summary.resumed_from_epoch = int(state["epoch"])
    step = int(state.get("step", 0))
    summary.resumed_from_step = step
    order = state.get("order")
    return _Position(epoch=int(state["epoch"]), step=step, eiters=int(state["eiters"]),
                     order=order.numpy() if step and order is not None else None,
                     losses=[float(x) for x in state.get("epoch_losses") or []])
