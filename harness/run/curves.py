"""TensorBoard event files of a training job (`<job dir>/tb/`): loss per step, the learning rate of every
parameter group per step, and the validation rsum per epoch.

Written through `torch.utils.tensorboard.SummaryWriter` when the optional `tensorboard` package is installed
(`pip install -e ".[tensorboard]"`); without it `open_events` notes so once in the job log and returns None,
and training goes on (loss_curve.tsv and metrics.json's history are written either way).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

TB_DIR = "tb"


class TrainingEvents:
    """A SummaryWriter with the scalar names itrbench uses: train/loss, train/lr/group<k>, val/rsum,
    train/epoch_loss (steps are optimizer steps over the whole run, so curves of resumed runs line up)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def step(self, global_step: int, loss: float, lrs: Sequence[float]) -> None:
        self.writer.add_scalar("train/loss", loss, global_step)
        for k, lr in enumerate(lrs):
            self.writer.add_scalar(f"train/lr/group{k}", lr, global_step)

    def epoch(self, record: Mapping[str, Any], global_step: int) -> None:
        if record.get("loss") is not None:
            self.writer.add_scalar("train/epoch_loss", record["loss"], int(record["epoch"]))
        if record.get("val_rsum") is not None:
            self.writer.add_scalar("val/rsum", record["val_rsum"], int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_events(job_dir: str | Path, log: Callable[[str], None]) -> TrainingEvents | None:
    """Events into `<job_dir>/tb/`, or None (logged once) when tensorboard is not installed."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("note: tensorboard is not installed, so no TensorBoard events are written (pip install -e "
            "\".[tensorboard]\"); loss_curve.tsv and metrics.json keep the curves")
        return None
    return TrainingEvents(SummaryWriter(log_dir=str(Path(job_dir) / TB_DIR)))
