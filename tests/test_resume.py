"""kill -9 in the middle of training and of scoring; the same command then resumes and finishes with
the results of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_orchestrate_fixtures import campaign, one_thread, run_args, worker_env, write_official  # noqa: F401 - one_thread: autouse fixture

from harness.api import load_container
from harness.cli.app import main
from harness.core.errors import CorruptFileWarning
from harness.run.jobs import KILL_ENV
from harness.run.training import BEST, CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
TRAIN, EVAL = "demo/tiny-a-seed0/train", "demo/tiny-a-official/eval"


def _killed_run(args: list[str], kill_at: str) -> subprocess.CompletedProcess:
    env = {**worker_env(), KILL_ENV: kill_at}
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    return proc


def _metrics(tmp: Path, name: str) -> dict:
    return json.loads((tmp / "results" / name / "metrics.json").read_text())


def test_training_killed_mid_epoch_resumes_from_its_last_checkpoint(tmp_path):
    killed, reference = campaign(tmp_path / "killed"), campaign(tmp_path / "reference")
    args = ["--variants", "a", "--stage", "train", "--checkpoint-steps", "2"]
    _killed_run(run_args(killed, *args), "step:5")  # 7 steps per epoch; checkpoints after steps 2 and 4
    work = killed / "results" / TRAIN / "work"
    state = load_container(work / CHECKPOINT)["itrbench"]
    assert (state["epoch"], state["step"]) == (0, 4)
    assert not (killed / "results" / TRAIN / "metrics.json").exists()

    assert main(run_args(killed, *args)) == 0  # the same command again
    assert "resumed from" in (killed / "results" / TRAIN / "job.log").read_text()
    assert main(run_args(reference, *args)) == 0
    resumed, full = _metrics(killed, TRAIN), _metrics(reference, TRAIN)
    assert resumed["resumed_from"] == {"epoch": 0, "step": 4} and full["resumed_from"] is None
    assert resumed["efficiency"]["steps"] == full["efficiency"]["steps"] == 14  # no step lost or repeated
    for a, b in zip(resumed["history"], full["history"], strict=True):
        assert a["epoch"] == b["epoch"] and a["lr"] == b["lr"]
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        assert a["val_rsum"] == b["val_rsum"]
    curves = [np.loadtxt(t / "results" / TRAIN / "loss_curve.tsv", skiprows=1) for t in (killed, reference)]
    assert curves[0].shape == curves[1].shape == (14, 3)  # the curve was cut back to the checkpoint, not doubled
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-6)
    mine = load_container(work / BEST)["itrbench"]["model_state"]
    theirs = load_container(reference / "results" / TRAIN / "work" / BEST)["itrbench"]["model_state"]
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-6)  # thread counts differ


def test_a_truncated_step_checkpoint_is_set_aside_and_training_restarts(tmp_path):
    killed = campaign(tmp_path / "killed")
    args = ["--variants", "a", "--stage", "train", "--checkpoint-steps", "2"]
    _killed_run(run_args(killed, *args), "step:5")
    work = killed / "results" / TRAIN / "work"
    data = (work / CHECKPOINT).read_bytes()
    (work / CHECKPOINT).write_bytes(data[: len(data) // 3])  # a disk fault after the atomic write

    with pytest.warns(CorruptFileWarning, match=r"checkpoint.pth: unreadable \(not a readable torch checkpoint"):
        assert main(run_args(killed, *args)) == 0
    log = (killed / "results" / TRAIN / "job.log").read_text()
    assert "checkpoint.pth unreadable, moved aside to checkpoint.pth.corrupt-" in log
    assert "training restarts from epoch 0" in log and "resumed from" not in log
    aside = list(work.glob(f"{CHECKPOINT}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == data[: len(data) // 3]  # kept, not deleted
    done = _metrics(killed, TRAIN)
    assert done["resumed_from"] is None and done["efficiency"]["steps"] == 14


def test_evaluation_killed_mid_scoring_resumes_from_the_last_finished_tile(tmp_path):
    killed, reference = campaign(tmp_path / "killed"), campaign(tmp_path / "reference")
    for tmp in (killed, reference):
        write_official(tmp / "checkpoints" / "tiny" / "a" / "demo" / "a.pth", 5)
    args = ["--variants", "a", "--stage", "evaluate", "--tiles", "4,12"]  # 12 x 60 matrix: 3 x 5 tiles
    _killed_run(run_args(killed, *args), "tile:6")
    assert (killed / "results" / EVAL / "work" / "tiles_0.h5").is_file()
    assert not (killed / "results" / EVAL / "sims.npy").exists()

    assert main(run_args(killed, *args)) == 0
    assert "resuming scoring: 6/15 tiles" in (killed / "results" / EVAL / "job.log").read_text()
    assert main(run_args(reference, *args)) == 0
    resumed, full = _metrics(killed, EVAL), _metrics(reference, EVAL)
    assert resumed["efficiency"]["tiles_reused"] == 6 and resumed["efficiency"]["scoring_seconds_extrapolated"]
    assert "tiles_reused" not in full["efficiency"]
    assert resumed["protocols"] == full["protocols"]
    np.testing.assert_array_equal(np.load(killed / "results" / EVAL / "sims.npy"),
                                  np.load(reference / "results" / EVAL / "sims.npy"))


def test_a_tile_cache_of_other_tile_sizes_is_set_aside_and_scoring_restarts(tmp_path):
    killed, reference = campaign(tmp_path / "killed"), campaign(tmp_path / "reference")
    for tmp in (killed, reference):
        write_official(tmp / "checkpoints" / "tiny" / "a" / "demo" / "a.pth", 5)
    args = ["--variants", "a", "--stage", "evaluate"]
    _killed_run(run_args(killed, *args, "--tiles", "4,12"), "tile:6")
    work = killed / "results" / EVAL / "work"
    assert (work / "tiles_0.h5").is_file()

    assert main(run_args(killed, *args, "--tiles", "6,20")) == 0  # other tiles: the cache cannot be reused
    log = (killed / "results" / EVAL / "job.log").read_text()
    assert "tile cache not reusable" in log and "scoring from scratch" in log
    assert len(list(work.glob("tiles_0.h5.stale-*"))) == 1  # kept, not deleted
    assert main(run_args(reference, *args, "--tiles", "6,20")) == 0
    assert _metrics(killed, EVAL)["protocols"] == _metrics(reference, EVAL)["protocols"]
