"""The training loop every method shares: epochs, lr schedule, clipping, validation, checkpoints, resume.

Checkpoints are written every epoch in the method's official container layout (so the official
code and `load_official` can read them), with an extra `itrbench` entry holding the optimizer,
the RNG states and the history. Resuming restores all of it, so a run killed at any point and
restarted gives the same final weights as an uninterrupted run (on a deterministic device).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.metrics.recall import full_recall
from harness.results import save_torch
from harness.scoring import similarity_matrix
from methods.base import Adapter
from methods.common.checkpoint import load_container

CHECKPOINT = "checkpoint.pth"
BEST = "model_best.pth"


@dataclass
class TrainSummary:
    epochs: int
    best_rsum: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0
    resumed_from_epoch: int = 0


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    state = rng.bit_generator.state
    return {"bit_generator": state["bit_generator"], "state": str(state["state"]["state"]),
            "inc": str(state["state"]["inc"]), "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}


def _restore_rng(rng: np.random.Generator, saved: Mapping[str, Any]) -> None:
    rng.bit_generator.state = {"bit_generator": saved["bit_generator"],
                               "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
                               "has_uint32": saved["has_uint32"], "uinteger": saved["uinteger"]}


def validation_rsum(adapter: Adapter, images: Any, captions: list[str], batch_size: int = 128) -> float:
    sims = similarity_matrix(adapter, images, captions, batch_size=batch_size)
    return float(full_recall(sims)["rsum"])


def train(adapter: Adapter, train_images: Any, train_captions: list[str], recipe: Mapping[str, Any],
          work_dir: str | Path, *, val_images: Any = None, val_captions: list[str] | None = None,
          captions_per_image: int = 5, log: Callable[[str], None] = print,
          on_step: Callable[[int, int, int], None] | None = None,
          stop_after_steps: int | None = None) -> TrainSummary:
    """Train `adapter` in place on captions paired with their images (caption j -> image j // k).

    Recipe keys used here: epochs, batch_size, seed (plus whatever the adapter's configure_training reads).
    `stop_after_steps` ends the run early without a checkpoint (used to simulate a kill in tests).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    epochs, batch_size = int(recipe["epochs"]), int(recipe["batch_size"])
    seed = int(recipe.get("seed", 0))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    setup = adapter.configure_training(recipe)
    summary = TrainSummary(epochs=epochs, best_rsum=-1.0, best_epoch=-1)
    start_epoch, eiters = 0, 0
    ckpt = work_dir / CHECKPOINT
    if ckpt.is_file():
        start_epoch, eiters = _resume(adapter, setup.optimizer, rng, ckpt, summary)
        log(f"resumed from {ckpt} at epoch {start_epoch}")
    n = len(train_captions)
    t0 = time.perf_counter()
    steps = 0
    for epoch in range(start_epoch, epochs):
        for group, lr in zip(setup.optimizer.param_groups, setup.lr_at_epoch(epoch)):
            group["lr"] = lr
        order = rng.permutation(n)
        adapter.model.train()
        losses = []
        for a in range(0, n, batch_size):
            idx = order[a:a + batch_size]
            image_idx = idx // captions_per_image
            batch = adapter.make_train_batch(_gather(train_images, image_idx), [train_captions[i] for i in idx], rng)
            out = adapter.train_step(batch, epoch)
            loss = out["loss"]
            setup.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if setup.grad_clip:
                torch.nn.utils.clip_grad_norm_(adapter.model.parameters(), setup.grad_clip)
            setup.optimizer.step()
            losses.append(float(loss.detach()))
            eiters += 1
            steps += 1
            if on_step:
                on_step(epoch, a // batch_size, -(-n // batch_size))
            if stop_after_steps is not None and steps >= stop_after_steps:
                return summary
        record: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else None,
                                  "lr": [g["lr"] for g in setup.optimizer.param_groups]}
        if val_images is not None and val_captions:
            record["val_rsum"] = validation_rsum(adapter, val_images, val_captions)
        summary.history.append(record)
        is_best = record.get("val_rsum", -float(epoch)) >= summary.best_rsum or summary.best_epoch < 0
        if is_best:
            summary.best_rsum = float(record.get("val_rsum", summary.best_rsum))
            summary.best_epoch = epoch
        log(f"epoch {epoch}: loss {record['loss']:.4f}" + (f", val rsum {record['val_rsum']:.2f}"
                                                            if "val_rsum" in record else ""))
        _save(adapter, setup.optimizer, rng, work_dir, epoch + 1, eiters, summary, is_best)
    summary.wall_seconds += time.perf_counter() - t0
    return summary


def _gather(images: Any, idx: np.ndarray) -> Any:
    if isinstance(images, np.ndarray):
        order = np.argsort(idx, kind="stable")
        picked = np.empty((len(idx),) + images.shape[1:], dtype=np.float32)
        picked[order] = images[idx[order]]  # sorted reads are faster on a memmap
        return picked
    return [images[int(i)] for i in idx]


def _save(adapter: Adapter, optimizer: torch.optim.Optimizer, rng: np.random.Generator, work_dir: Path,
          epoch: int, eiters: int, summary: TrainSummary, is_best: bool) -> None:
    container = dict(adapter.official_checkpoint(epoch=epoch, best_rsum=summary.best_rsum, Eiters=eiters))
    # model_state shares storage with the official parts, so torch.save writes the weights once
    model_state = adapter.model.state_dict()
    if is_best:
        save_torch(work_dir / BEST, {**container, "itrbench": {"model_state": model_state, "epoch": epoch}})
    container["itrbench"] = {
        "model_state": model_state,
        "optimizer": optimizer.state_dict(), "numpy_rng": _rng_state(rng),
        "torch_rng": torch.get_rng_state(), "epoch": epoch, "eiters": eiters,
        "best_rsum": summary.best_rsum, "best_epoch": summary.best_epoch, "history": summary.history,
        "wall_seconds": summary.wall_seconds,
    }
    save_torch(work_dir / CHECKPOINT, container)


def _resume(adapter: Adapter, optimizer: torch.optim.Optimizer, rng: np.random.Generator, path: Path,
            summary: TrainSummary) -> tuple[int, int]:
    container = load_container(path)
    state = container.get("itrbench")
    if state is None:
        raise ValueError(f"{path}: not an itrbench training checkpoint (no optimizer/RNG state); move it away "
                         "to restart training")
    adapter.model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer"])
    _restore_rng(rng, state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    summary.best_rsum = float(state["best_rsum"])
    summary.best_epoch = int(state["best_epoch"])
    summary.history = list(state["history"])
    summary.wall_seconds = float(state.get("wall_seconds", 0.0))
    summary.resumed_from_epoch = int(state["epoch"])
    return int(state["epoch"]), int(state["eiters"])
