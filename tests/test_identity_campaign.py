"""A result is invalidated only by what can change it, on a copy of the project run as a user runs it.

The copy holds harness/, methods/, registry.yaml, pyproject.toml, run_all.py and two tiny methods (`tiny` and
`tiny2`: the same adapter in two modules). After each edit of the copy a run (a dry run for the metric edit)
goes in a subprocess and the plan table it prints is read: a comment reruns nothing; a metric edit keeps
every checkpoint and matrix and recomputes the protocols from sims.npy; a change in one method's model
forward reruns that method's jobs only; a result of the previous identity scheme is superseded with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from test_orchestrate_fixtures import HERE, tiny_data, tiny_registry

ROOT = HERE.parent
TRAIN, EVAL = "demo/{m}-a-seed0/train", "demo/{m}-a-seed0/eval"


def _copy_project(dest: Path) -> Path:
    for name in ("harness", "methods"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("registry.yaml", "pyproject.toml", "run_all.py"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copy(HERE / "test_orchestrate_fixtures.py", dest / "tiny_method.py")
    shutil.copy(HERE / "test_orchestrate_fixtures.py", dest / "tiny2_method.py")
    tiny_data(dest / "data", (("train", 20), ("dev", 6), ("test", 8)))
    doc = yaml.safe_load(tiny_registry(dest / "registry-tiny.yaml", {"epochs": 1, "batch_size": 10}).read_text())
    tiny = doc["methods"]["tiny"]
    tiny["adapter"] = "tiny_method:TinyAdapter"
    doc["methods"]["tiny2"] = {**tiny, "adapter": "tiny2_method:TinyAdapter", "title": "Tiny 2"}
    (dest / "registry-tiny.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def _run(proj: Path, *extra: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(proj), "OMP_NUM_THREADS": "1", "COLUMNS": "250"}
    proc = subprocess.run([sys.executable, "run_all.py", "run", "--methods", "tiny,tiny2", "--variants", "a",
                           "--dataset", "demo", "--data-root", "data", "--registry", "registry-tiny.yaml",
                           "--results", "results", "--reports", "reports", "--device", "cpu", *extra],
                          cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _states(table: str) -> dict[str, str]:
    """{job name: state} from the plan table a run prints first (the live jobs table comes after it)."""
    out: dict[str, str] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) >= 5 and cells[0].startswith("demo/"):
            out.setdefault(cells[0], cells[4])
    return out


def _starts(proj: Path, name: str) -> int:
    logs = [proj / "results" / name / "job.log",
            *(proj / "results" / "_superseded").glob(f"{name.replace('/', '__')}-*/job.log")]
    return sum(log.read_text().count(" start ") for log in logs if log.is_file())


def _snapshot(proj: Path) -> dict[str, tuple[int, str]]:
    """(mtime, content hash) of every checkpoint and matrix file of the campaign."""
    files = [*proj.glob("results/demo/*/train/work/*.pth"), *proj.glob("results/demo/*/eval/*.npy")]
    return {str(p.relative_to(proj)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(files)}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_only_what_can_change_a_result_invalidates_it(tmp_path):
    proj = _copy_project(tmp_path / "proj")
    jobs = [f.format(m=m) for m in ("tiny", "tiny2") for f in (TRAIN, EVAL)]
    _run(proj)
    starts = {j: _starts(proj, j) for j in jobs}
    assert set(starts.values()) == {1}
    files = _snapshot(proj)
    assert len(files) >= 4 and any(k.endswith("model_best.pth") for k in files)

    # a comment in the training loop, a docstring and formatting in the scoring engine: nothing reruns
    _edit(proj / "harness/run/training.py", "\ndef ", "\n# a comment that changes nothing\ndef ")
    _edit(proj / "harness/eval/scoring.py", '"""', '"""Reworded. ')
    _edit(proj / "harness/eval/scoring.py", "def tile_grid(", "def   tile_grid(")
    assert set(_states(_run(proj)).values()) == {"cached"}  # the plan table a run prints first
    assert {j: _starts(proj, j) for j in jobs} == starts and _snapshot(proj) == files

    # a metric edit and a new line in the protocol table: protocols recomputed from sims.npy, nothing re-run
    before = {m: json.loads((proj / "results" / EVAL.format(m=m) / "metrics.json").read_text()) for m in ("tiny",
                                                                                                       "tiny2")}
    _edit(proj / "harness/eval/metrics/bootstrap.py", "\ndef ", "\nMETRIC_EDIT = 1\n\n\ndef ")
    _edit(proj / "harness/eval/protocols.py", "ALWAYS = (", "NEW_LINE = 1\nALWAYS = (")
    states = _states(_run(proj, "--dry-run"))
    assert {states[TRAIN.format(m=m)] for m in ("tiny", "tiny2")} == {"cached"}
    assert {states[EVAL.format(m=m)] for m in ("tiny", "tiny2")} == {"protocols recomputed"}
    out = _run(proj)
    assert out.count("protocols recomputed from sims.npy") == 2
    assert {j: _starts(proj, j) for j in jobs} == starts and _snapshot(proj) == files
    for m in ("tiny", "tiny2"):
        d = proj / "results" / EVAL.format(m=m)
        after = json.loads((d / "metrics.json").read_text())
        assert after["protocol_code"] != before[m]["protocol_code"]
        assert after["protocols_recomputed"]["previous_protocol_code"] == before[m]["protocol_code"]
        assert "git" in after["protocols_recomputed"]
        assert after["efficiency"] == before[m]["efficiency"]  # the original scoring's record
        assert after["protocols"]["recall"]["rsum"] == before[m]["protocols"]["recall"]["rsum"]
        assert "protocols recomputed" in (d / "job.log").read_text()
    assert "protocols recomputed from the stored matrix" in (proj / "reports" / "demo.md").read_text()

    # a change in tiny2's model forward: tiny2's jobs rerun, tiny's are kept
    _edit(proj / "tiny2_method.py", "pooled = regions.mean(1)", "pooled = regions.mean(1) * 2")
    states = _states(_run(proj))
    assert states[TRAIN.format(m="tiny2")] == "rerun: code changed"
    assert states[EVAL.format(m="tiny2")] == "rerun: config changed, code changed"  # the training's key is config
    assert {states[TRAIN.format(m="tiny")], states[EVAL.format(m="tiny")]} == {"cached"}  # recomputed: cached
    assert {j: _starts(proj, j) - starts[j] for j in jobs} == {TRAIN.format(m="tiny"): 0, EVAL.format(m="tiny"): 0,
                                                                TRAIN.format(m="tiny2"): 1, EVAL.format(m="tiny2"): 1}
    kept = _snapshot(proj)
    assert {k: v for k, v in kept.items() if "/tiny-a" in k} == {k: v for k, v in files.items() if "/tiny-a" in k}

    # a result written by the previous version (no identity scheme, another key) is superseded, not reused
    train = proj / "results" / TRAIN.format(m="tiny")
    config = yaml.safe_load((train / "config.yaml").read_text())
    config["key"], config["identity"] = "0123456789abcdef", {k: config["identity"][k] for k in ("config", "data",
                                                                                                "code")}
    (train / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert "older itrbench" in _states(_run(proj))[TRAIN.format(m="tiny")]
    assert "older itrbench" in (train / "job.log").read_text()
    assert len(list((proj / "results" / "_superseded").glob("demo__tiny-a-seed0__train-*/metrics.json"))) == 1
