"""The worked example of docs/extending.md (examples/meanpool): a method from outside the project, registered by
its own registry file, trained and evaluated on the demo by `run_all.py`, evaluated again from its checkpoint,
and reported with its user's own reported row beside the reproduced one. Run as a user runs it: from the
example's folder, in subprocesses, with the project's files untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.cli.app import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "meanpool"


def run_all(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ".", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args, "--registry", "registry.yaml"], cwd=EXAMPLE,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_example_trains_evaluates_and_reports_from_its_own_registry_file(tmp_path, monkeypatch, one_thread):
    project_registry = (ROOT / "registry.yaml").read_bytes()
    results, reports = tmp_path / "results", tmp_path / "reports"
    run_all("--methods", "meanpool", "--dataset", "demo", "--results", str(results), "--reports", str(reports))

    demo = (reports / "demo.md").read_text()
    row = next(line for line in demo.splitlines() if line.startswith("| meanpool/base |") and "(365.5," in line)
    assert "examples/meanpool/README.md (the example author's own demo run)" in row  # the user's reported row
    paper = (reports / "meanpool.md").read_text()
    assert "MeanPool: mean-pooled regions" in paper and "the example author's own demo run" in paper

    metrics = json.loads((results / "demo" / "meanpool-base-seed0" / "eval" / "metrics.json").read_text())
    rsum = metrics["protocols"]["recall"]["rsum"]
    assert rsum > 150  # it learns: chance is about 16 on the demo's 200 x 1000 test matrix

    # the same registry file in this process: `evaluate` reads the trained checkpoint back through load_official
    monkeypatch.chdir(EXAMPLE)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    best = results / "demo" / "meanpool-base-seed0" / "train" / "work" / "model_best.pth"
    assert cli_main(["evaluate", "--method", "meanpool", "--variant", "base", "--dataset", "demo", "--data-root",
                     str(results / "_data"), "--checkpoint", str(best), "--save-sims", str(tmp_path / "sims.npy"),
                     "--json", str(tmp_path / "evaluate.json"), "--registry", "registry.yaml"]) == 0
    again = json.loads((tmp_path / "evaluate.json").read_text())["metrics"]["recall"]["rsum"]
    assert abs(again - rsum) < 1e-6
    assert cli_main(["report", "--dataset", "demo", "--results", str(results), "--reports", str(tmp_path / "again"),
                     "--registry", "registry.yaml"]) == 0
    assert "| meanpool/base |" in (tmp_path / "again" / "demo.md").read_text()
    assert (ROOT / "registry.yaml").read_bytes() == project_registry
    assert not (EXAMPLE / "results").exists() and not (EXAMPLE / "reports").exists()
    sys.modules.pop("meanpool", None)
