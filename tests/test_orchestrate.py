"""The `run` command end to end (inline executor): caching, reruns, dry-run table, failures, bad input."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from plan_helpers import plan_of
from rich.console import Console
from test_orchestrate_fixtures import (  # noqa: F401 - one_thread: autouse fixture
    campaign,
    one_thread,
    run_args,
    worker_env,
    write_official,
)

from harness.cli.app import main
from harness.core.results import ResultStore
from harness.run import display, orchestrate
from harness.run.executors.base import StopFlag
from harness.run.executors.inline import InlineExecutor
from harness.run.jobs import RunSettings
from harness.run.status import StatusWriter
from harness.spec.registry import load_registry


@pytest.fixture
def out(monkeypatch):
    """The orchestrator's console, captured (wide, no colours)."""
    console = Console(record=True, width=200, force_terminal=False, color_system=None)
    monkeypatch.setattr(orchestrate, "console", console)
    monkeypatch.setattr(display, "console", console)
    monkeypatch.setattr(display, "errors", console)  # where main() prints input errors
    return console


def _starts(tmp, name):
    """Starts of job `name`, counting the logs of its earlier results moved aside to results/_superseded/."""
    logs = [tmp / "results" / name / "job.log",
            *(tmp / "results" / "_superseded").glob(f"{name.replace('/', '__')}-*/job.log")]
    return sum(log.read_text().count(" start ") for log in logs if log.is_file())


def test_run_reuses_finished_jobs_and_reruns_changed_ones(tmp_path, out):
    campaign(tmp_path)
    args = run_args(tmp_path, "--variants", "a")
    assert main(args) == 0
    train, evaluate = "demo/tiny-a-seed0/train", "demo/tiny-a-seed0/eval"
    metrics = json.loads((tmp_path / "results" / evaluate / "metrics.json").read_text())
    assert metrics["stage"] == "evaluate" and metrics["shape"] == [12, 60]
    eff = metrics["efficiency"]
    assert eff["parameters"] > 0 and eff["encode_ms_per_image"] > 0 and eff["encode_ms_per_caption"] > 0
    assert eff["scoring_seconds"] > 0 and eff["peak_memory_mb"] > 0 and eff["gpu_hours"] == 0.0
    train_eff = json.loads((tmp_path / "results" / train / "metrics.json").read_text())["efficiency"]
    assert train_eff["train_wall_seconds"] > 0 and train_eff["steps"] == 14 and train_eff["processes"] == 1
    assert (tmp_path / "reports" / "demo.md").is_file()

    out.export_text()
    assert main([*args, "--dry-run"]) == 0
    table = out.export_text()
    assert f"{train}" in table and table.count("cached") == 2

    # the test split changes: the evaluation reruns, the training is reused
    caps = tmp_path / "data" / "demo" / "precomp" / "test_caps.txt"
    caps.write_text(caps.read_text().replace("a ", "one ", 3))
    assert main([*args, "--dry-run"]) == 0
    table = out.export_text()
    assert "rerun: data changed" in table and table.count("cached") == 1
    assert main(args) == 0
    assert (_starts(tmp_path, train), _starts(tmp_path, evaluate)) == (1, 2)
    log = (tmp_path / "results" / evaluate / "job.log").read_text()
    assert "key changed" in log and "earlier results moved to" in log  # kept, not deleted
    kept = list((tmp_path / "results" / "_superseded").glob("demo__tiny-a-seed0__eval-*/metrics.json"))
    assert len(kept) == 1

    # a recipe change reruns both; --force reruns even unchanged jobs
    doc = yaml.safe_load((tmp_path / "registry.yaml").read_text())
    doc["methods"]["tiny"]["recipes"]["demo"]["epochs"] = 1
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(doc))
    assert main([*args, "--dry-run"]) == 0
    assert out.export_text().count("rerun: config changed") == 2
    assert main(args) == 0
    assert (_starts(tmp_path, train), _starts(tmp_path, evaluate)) == (2, 3)
    history = json.loads((tmp_path / "results" / train / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0]  # trained from scratch, not resumed from the 2-epoch run
    assert main([*args, "--force", "--stage", "train"]) == 0
    assert (_starts(tmp_path, train), _starts(tmp_path, evaluate)) == (3, 3)


def test_failed_job_shows_its_error_and_does_not_stop_independent_jobs(tmp_path, out):
    campaign(tmp_path)
    ck = tmp_path / "checkpoints" / "tiny" / "a" / "demo"
    ck.mkdir(parents=True)
    (ck / "a.pth").write_bytes(b"not a checkpoint")
    write_official(ck / "a2.pth", 2)
    args = run_args(tmp_path, "--stage", "evaluate")
    assert main(args) == 1
    text = out.export_text()
    results = tmp_path / "results" / "demo"
    assert "failed demo/tiny-a-official/eval" in text and "CheckpointError" in text and "a.pth" in text
    assert "skip demo/tiny-pair-official/eval (needs demo/tiny-a-official/eval)" in text
    assert (results / "tiny-a-official2" / "eval" / "metrics.json").is_file()  # independent: it ran
    status = json.loads((results / "tiny-a-official" / "eval" / "status.json").read_text())
    assert status["state"] == "failed" and "CheckpointError" in status["error"]
    assert "Traceback" in (results / "tiny-a-official" / "eval" / "job.log").read_text()
    assert not (results / "tiny-pair-official").exists()
    # the checkpoint is fixed: the failed job and the ensemble run, the finished member is reused
    write_official(ck / "a.pth", 1)
    assert main(args) == 0
    assert "cached" in out.export_text()
    assert (results / "tiny-a-official2" / "eval" / "job.log").read_text().count(" start ") == 1
    sims = [np.load(results / name / "eval" / "sims.npy") for name in ("tiny-a-official", "tiny-a-official2")]
    np.testing.assert_allclose(np.load(results / "tiny-pair-official" / "eval" / "sims.npy"), (sims[0] + sims[1]) / 2,
                               rtol=1e-6)
    assert not np.allclose(sims[0], sims[1])


def test_a_job_locked_by_another_process_shows_running_elsewhere(tmp_path, out):
    campaign(tmp_path)
    ck = tmp_path / "checkpoints" / "tiny" / "a" / "demo"
    ck.mkdir(parents=True)
    write_official(ck / "a.pth", 1)
    write_official(ck / "a2.pth", 2)
    held = tmp_path / "results" / "demo" / "tiny-a-official" / "eval"
    held.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(held)], stdout=subprocess.PIPE, text=True,
                              env=worker_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(run_args(tmp_path, "--stage", "evaluate")) == 1
    finally:
        holder.kill()
        holder.wait()
    text = " ".join(out.export_text().split())
    assert f"demo/tiny-a-official/eval: running elsewhere (host {socket.gethostname()}, pid {holder.pid}, since" in text
    assert "failed demo/tiny-a-official/eval" not in text
    assert "skip demo/tiny-pair-official/eval (needs demo/tiny-a-official/eval)" in text
    assert (tmp_path / "results" / "demo" / "tiny-a-official2" / "eval" / "metrics.json").is_file()
    assert not (held / "metrics.json").exists() and not (held / "config.yaml").exists()  # nothing written into it
    assert main(run_args(tmp_path, "--stage", "evaluate")) == 0  # the other process is gone: the job runs here


# a second process holding a job's lock: the lock a running job takes (harness.run.jobs), held until killed
HOLD_LOCK = """
import sys, time
from pathlib import Path
from harness.run.jobs import job_lock
with job_lock(Path(sys.argv[1]), main=True):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("change, expected", [
    (("--methods", "tinny"), "Did you mean 'tiny'"),
    (("--dataset", "demoo"), "Did you mean 'demo'"),
    (("--variants", "b"), "unknown variant 'b'"),
    (("--stage", "evaluate"), "official checkpoint not found; get it with `run_all.py fetch"),
    (("--seeds", "0,x"), "--seeds '0,x'"),
])
def test_bad_input_is_refused_before_any_job(tmp_path, out, change, expected):
    campaign(tmp_path)
    args = run_args(tmp_path)
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main(args) == 2
    assert expected in out.export_text().replace("\n", " ")
    assert not (tmp_path / "results").exists()


def test_data_that_fails_check_data_is_refused(tmp_path, out):
    campaign(tmp_path)
    caps = tmp_path / "data" / "demo" / "precomp" / "dev_caps.txt"
    caps.write_text("\n".join(caps.read_text().splitlines()[:-1]) + "\n")  # 49 captions for 10 images
    assert main(run_args(tmp_path)) == 2
    text = out.export_text()
    assert "fails check-data" in text and "dev_caps.txt" in text
    assert not (tmp_path / "results").exists()


def test_live_table_shows_progress_and_eta(tmp_path):
    campaign(tmp_path)
    registry = load_registry(tmp_path / "registry.yaml")
    plan = plan_of(registry, ["tiny"], "demo", variants=["a"], stage="train", data_root=tmp_path / "data")
    store = ResultStore(tmp_path / "results")
    scheduler = orchestrate.Scheduler(plan, store, InlineExecutor(), RunSettings(), StopFlag(),
                                      out=Console(width=200, force_terminal=False))
    job = plan.jobs[0]
    row = scheduler.rows[job.name]
    row.state, row.submitted = "running", time.time()
    status = StatusWriter(store.job_dir(job.name), interval=0.0)
    status.state("running")
    status.progress("training", 2, 14, "epoch 1/2 step 2/7 loss 1.0")
    status.record["started"] -= 10
    status._phase = ("training", time.time() - 10, 0)
    status.progress("training", 4, 14, "epoch 1/2 step 4/7 loss 0.9")
    console = Console(record=True, width=200, force_terminal=False, color_system=None)
    console.print(scheduler.render())
    text = console.export_text()
    assert "epoch 1/2 step 4/7" in text and "running" in text
    eta = json.loads((store.job_dir(job.name) / "status.json").read_text())["eta_seconds"]
    assert 20 < eta < 30  # 10 remaining steps at 4 steps per ~10 s
    assert orchestrate.format_seconds(eta) in text
