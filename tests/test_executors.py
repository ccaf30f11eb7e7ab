"""Executors: the local pool's GPU slots, ranks on CPU (gloo, harness.run.launch), and Slurm via submitit's local
cluster with a preemption that checkpoints, requeues and resumes."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from plan_helpers import plan_of
from test_orchestrate_fixtures import campaign, one_thread, run_args, worker_env  # noqa: F401 - one_thread: autouse fixture

from harness.api import load_container
from harness.cli.app import main
from harness.core.jobconfig import JobConfig
from harness.run.executors import make_executor
from harness.run.executors.base import INTERRUPTED_EXIT, Task
from harness.run.executors.local import LocalExecutor
from harness.run.jobs import RunSettings
from harness.run.plan import Job
from harness.run.status import read_status
from harness.run.training import BEST
from harness.spec.registry import load_registry

TRAIN = "demo/tiny-a-seed0/train"

FAKE_PYTHON = """#!/bin/sh
# stands in for python: records how it was launched, then exits with the code the test asked for
for last; do :; done
dir=$(dirname "$last")
echo "$CUDA_VISIBLE_DEVICES|$*" > "$dir/launch.txt"
sleep 0.3
if [ -f "$dir/exit_code" ]; then echo "boom: something broke" >> "$dir/job.log"; exit $(cat "$dir/exit_code"); fi
exit 0
"""


def _task(tmp: Path, name: str, processes: int) -> Task:
    job = Job(name=name, stage="train", method="tiny", variant="a", dataset="demo", seed=0,
              config=JobConfig("train", "tiny", "a", "demo", 0), gpus=processes)
    return Task(job, RunSettings(results=str(tmp)), processes=processes)


def _launch(tmp: Path, name: str) -> tuple[str, str]:
    gpus, _, cmd = (tmp / name / "launch.txt").read_text().strip().partition("|")
    return gpus, cmd


def _drain(ex, n: int, timeout: float = 30.0) -> list:
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += ex.wait(0.2)
    return out


def test_local_pool_gives_each_worker_its_gpus(tmp_path):
    script = tmp_path / "fake-python"
    script.write_text(FAKE_PYTHON)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    ex = LocalExecutor(gpus=["3", "5"], python=str(script))
    one, two, pair, four = (_task(tmp_path, n, p) for n, p in (("one", 1), ("two", 1), ("pair", 2), ("four", 4)))
    assert [t.name for t in ex.start([one, two, pair, four])] == ["one", "two"]  # pair must wait: no overtaking
    assert ex.start([pair, four]) == []
    assert {o.name for o in _drain(ex, 2) if o.ok} == {"one", "two"}
    assert sorted(_launch(tmp_path, n)[0] for n in ("one", "two")) == ["3", "5"]
    assert "-m harness.run.executors.worker" in _launch(tmp_path, "one")[1]
    assert [t.name for t in ex.start([pair, four])] == ["pair"]
    assert _drain(ex, 1)[0].ok
    assert _launch(tmp_path, "pair") == ("3,5", f"-m harness.run.launch 2 -- {script} -m "
                                                f"harness.run.executors.worker {tmp_path / 'pair' / 'task.json'}")
    (tmp_path / "four").mkdir(exist_ok=True)
    (tmp_path / "four" / "exit_code").write_text("3")
    assert [t.name for t in ex.start([four])] == ["four"]  # clamped to the 2 GPUs there are
    failed = _drain(ex, 1)[0]
    assert not failed.ok and not failed.interrupted and "boom: something broke" in failed.error
    assert "exit code 3" in failed.error
    assert "-m harness.run.launch 2 --" in _launch(tmp_path, "four")[1]
    assert "asks for 4 GPUs, this machine gives 2" in (tmp_path / "four" / "job.log").read_text()
    (tmp_path / "one" / "exit_code").write_text(str(INTERRUPTED_EXIT))
    ex.start([one])
    assert _drain(ex, 1)[0].interrupted
    assert Task.from_json((tmp_path / "pair" / "task.json").read_text()) == pair


def test_local_pool_without_gpus_runs_one_cpu_worker(tmp_path):
    ex = make_executor("local", {}, device="cpu")
    assert ex.describe() == "local pool, 1 CPU worker(s)"
    assert make_executor("local", {"workers": "3"}, device="cpu").describe() == "local pool, 3 CPU worker(s)"
    assert ex.command(_task(tmp_path, "x", 2), 2)[1:5] == ["-m", "harness.run.launch", "2", "--"]
    with pytest.raises(ValueError, match="unknown local executor option"):
        make_executor("local", {"partition": "gpu"})


def _weights(tmp: Path) -> dict[str, torch.Tensor]:
    return load_container(tmp / "results" / TRAIN / "work" / BEST)["itrbench"]["model_state"]


def _history(tmp: Path) -> list[dict]:
    return json.loads((tmp / "results" / TRAIN / "metrics.json").read_text())["history"]


def test_slurm_job_is_preempted_checkpointed_requeued_and_resumed(tmp_path, monkeypatch):
    for key, value in worker_env().items():
        monkeypatch.setenv(key, value)
    recipe = {"epochs": 4, "step_sleep": 0.1}
    tmp = campaign(tmp_path / "slurm", recipe=recipe)
    registry = load_registry(tmp / "registry.yaml")
    job = plan_of(registry, ["tiny"], "demo", variants=["a"], stage="train", data_root=tmp / "data").jobs[0]
    settings = RunSettings(results=str(tmp / "results"), data_root=str(tmp / "data"),
                           registry=str(tmp / "registry.yaml"), device="cpu", checkpoint_minutes=None)
    ex = make_executor("slurm", {"cluster": "local", "timeout_min": "30"}, results=settings.results, device="cpu")
    assert ex.parameters(2)["tasks_per_node"] == 2 and ex.parameters(2)["gpus_per_node"] == 0
    ex.start([Task(job, settings, processes=1)])
    submitted = ex._jobs[0][1]
    job_dir = tmp / "results" / TRAIN
    deadline = time.monotonic() + 90
    while (read_status(job_dir).get("done") or 0) < 3:  # a few steps into epoch 0 (7 steps per epoch)
        assert time.monotonic() < deadline and not submitted.done(), (job_dir / "job.log").read_text()
        time.sleep(0.1)
    os.kill(read_status(job_dir)["pid"], signal.SIGUSR2)  # what Slurm sends the job's tasks before preempting
    outcomes = _drain(ex, 1, timeout=120)
    assert outcomes and outcomes[0].ok, outcomes
    log = (job_dir / "job.log").read_text()
    assert "interrupted: stopped" in log and "resumed from" in log and log.count(" start ") == 2
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert metrics["resumed_from"] is not None and metrics["efficiency"]["steps"] == 28  # none lost or repeated
    reference = campaign(tmp_path / "reference", recipe={**recipe, "step_sleep": 0})
    assert main(run_args(reference, "--variants", "a", "--stage", "train")) == 0
    for a, b in zip(metrics["history"], _history(reference), strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    mine, theirs = _weights(tmp), _weights(reference)
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-6)
    assert os.listdir(tmp / "results" / "_slurm")  # submitit's own logs live beside the results
