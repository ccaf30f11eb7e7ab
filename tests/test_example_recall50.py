"""The worked protocol example of docs/extending.md (examples/recall50), run as its recipe says: the example copied
to a folder outside the project, `run_all.py metrics`, `import` and `report` with its registry file. The numbers
are checked against plain numpy loops written here, and the report's recall50 p-value against a bootstrap of
per-image values computed here (and shown to differ from the `recall` section's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.eval.metrics.bootstrap import paired_bootstrap_p

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "recall50"
N, K = 1000, 5


def run_all(cwd: Path, *args: str) -> str:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("PYTHONPATH", None)  # as a user runs it: run_all.py finds the project itself
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def loop_hits(sims: np.ndarray, at: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image: its i2t hit at `at`; per caption: its t2i hit (ties counted against the query)."""
    n, m = sims.shape
    i2t = np.zeros(n)
    for i in range(n):
        own = slice(K * i, K * i + K)
        negatives = np.delete(sims[i], np.arange(K * i, K * i + K))
        i2t[i] = np.count_nonzero(negatives >= sims[i, own].max()) < at
    t2i = np.zeros(m)
    for j in range(m):
        column = sims[:, j]
        t2i[j] = np.count_nonzero(np.delete(column, j // K) >= column[j // K]) < at
    return i2t, t2i


def per_image(sims: np.ndarray, ats: tuple[int, ...]) -> np.ndarray:
    v = np.zeros(sims.shape[0])
    for at in ats:
        i2t, t2i = loop_hits(sims, at)
        v += 100 * i2t + 100 * t2i.reshape(-1, K).mean(axis=1)
    return v


def section_rows(report: str, protocol: str) -> dict[str, dict[str, str]]:
    body = report.split(f"(`{protocol}`)", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_recall50_example_metrics_import_and_report_from_outside_the_project(tmp_path):
    work = tmp_path / "mine"
    shutil.copytree(EXAMPLE, work)
    project_registry = (ROOT / "registry.yaml").read_bytes()
    rng = np.random.default_rng(0)
    truth = np.repeat(np.eye(N), K, axis=1)
    a = (1.5 * truth + rng.standard_normal((N, K * N))).astype(np.float32)
    b = (a + 0.05 * rng.standard_normal((N, K * N))).astype(np.float32)  # close: p-values strictly inside (0, 1)
    np.save(work / "A.npy", a)
    np.save(work / "B.npy", b)

    out = run_all(work, "metrics", "--registry", "registry.yaml", "--sims", "A.npy", "--protocol", "recall50",
                  "--json", "a.json")
    i2t, t2i = loop_hits(a, 50)
    want = {"i2t": 100 * i2t.mean(), "t2i": 100 * t2i.mean()}
    stored = json.loads((work / "a.json").read_text())
    assert stored["i2t"]["r50"] == pytest.approx(want["i2t"]) and stored["t2i"]["r50"] == pytest.approx(want["t2i"])
    assert stored["rsum50"] == pytest.approx(want["i2t"] + want["t2i"])
    assert "R@50" in out and "R@1" not in out
    lines = {line.split("│")[2].strip(): line for line in out.splitlines() if line.count("│") >= 4}
    assert f"{want['i2t']:.2f}" in lines["image->text"] and f"{want['t2i']:.2f}" in lines["text->image"]
    assert f"{want['i2t'] + want['t2i']:.2f}" in lines["rsum50"]

    for name, file in (("alpha", "A.npy"), ("beta", "B.npy")):
        run_all(work, "import", "--registry", "registry.yaml", "--sims", file, "--method", name, "--dataset", "f30k",
                "--captions-per-image", "5")
    metrics = json.loads((work / "results" / "f30k" / "beta-default-imported" / "eval" / "metrics.json").read_text())
    assert set(metrics["protocols"]) == {"recall", "f30k1k", "recall50"}
    run_all(work, "report", "--registry", "registry.yaml", "--dataset", "f30k")
    report = (work / "reports" / "f30k.md").read_text()

    rows = section_rows(report, "recall50")
    alpha, beta = rows["alpha/default"], rows["beta/default"]
    i2t_b, t2i_b = loop_hits(b, 50)
    for row, (x, y) in ((alpha, (i2t, t2i)), (beta, (i2t_b, t2i_b))):
        assert float(row["i2t R@50"]) == pytest.approx(100 * x.mean(), abs=0.05)
        assert float(row["t2i R@50"]) == pytest.approx(100 * y.mean(), abs=0.05)
        assert float(row["rsum50"]) == pytest.approx(100 * (x.mean() + y.mean()), abs=0.05)
        assert "—" not in (row["i2t R@50"], row["t2i R@50"], row["rsum50"])
    assert alpha["p vs best (rsum50)"] == "best"
    p50 = paired_bootstrap_p(per_image(b, (50,)), per_image(a, (50,)), n=1000, seed=0)
    p_recall = paired_bootstrap_p(per_image(b, (1, 5, 10)), per_image(a, (1, 5, 10)), n=1000, seed=0)
    assert beta["p vs best (rsum50)"] == f"{p50:.3f}"
    assert section_rows(report, "recall")["beta/default"]["p vs best (rsum)"] == f"{p_recall:.3f}"
    assert f"{p50:.3f}" != f"{p_recall:.3f}"  # recall50 prints its own test, not the full recall section's
    assert (ROOT / "registry.yaml").read_bytes() == project_registry
