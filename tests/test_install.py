"""A non-editable install (`pip install .`) carries the registry and runs from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


TOP_LEVEL_OUTSIDE = {".git", ".venv", "venv", "build", "dist", "results", "checkpoints", "data", "tests",
                     ".hypothesis", "reports"}  # a user's data and outputs, and what the wheel does not ship


def _not_sources(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == ROOT
    return {n for n in names if (top and n in TOP_LEVEL_OUTSIDE) or n == "__pycache__" or n.endswith(".egg-info")}


@pytest.mark.slow
def test_the_wheel_ships_the_registry_and_the_cli_runs_from_another_folder(tmp_path):
    wheels, site, elsewhere = tmp_path / "whl", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, source, symlinks=True, ignore=_not_sources)
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(wheels)], check=True,
                   cwd=tmp_path, capture_output=True)
    wheel = next(wheels.glob("itrbench-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    shipped = site / "harness" / "registry.yaml"
    assert shipped.is_file() and not shipped.is_symlink()
    assert shipped.read_text() == (ROOT / "registry.yaml").read_text()
    for asset in ("site.js", "site.css"):  # the leaderboard site's script and stylesheet
        assert (site / "harness" / "report" / "site" / asset).read_text() == \
            (ROOT / "harness" / "report" / "site" / asset).read_text()

    env = {**os.environ, "PYTHONPATH": str(site)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness.cli.app", *args], cwd=elsewhere, env=env, text=True,
                              capture_output=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import harness, methods.esa; print(harness.__file__)"],
                           cwd=elsewhere, env=env, text=True, capture_output=True, check=True).stdout
    assert where.startswith(str(site))  # the installed copy, not the checkout
    np.save(elsewhere / "s.npy", np.random.default_rng(0).standard_normal((4, 20)).astype(np.float32))
    assert cli("metrics", "--sims", "s.npy", "--protocol", "recall", "--bootstrap", "0").returncode == 0
    check = cli("check-data", "--dataset", "coco", "--data-root", str(elsewhere))
    assert check.returncode == 1 and "registry file not found" not in check.stdout + check.stderr
    assert "testall" in check.stdout  # the registry's COCO test split, named in the problem
    report = cli("report", "--results", str(elsewhere / "none"))
    assert report.returncode == 2 and "no such results folder" in report.stderr
