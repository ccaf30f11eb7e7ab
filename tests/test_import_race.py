"""Two imports of one name at once: the check and the write are one step under the job's lock, so exactly one
stores its matrix and the other is refused in one line; nothing is lost."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_concurrent_imports_of_one_name_store_exactly_one(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(4):
        np.save(tmp_path / f"m{k}.npy", rng.standard_normal((20, 100)).astype(np.float32))

    def run(k: int) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(ROOT / "run_all.py"), "import", "--sims", str(tmp_path / f"m{k}.npy"),
               "--method", "mine", "--dataset", "f30k", "--results", str(tmp_path / "results")]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(4) as pool:
        procs = list(pool.map(run, range(4)))
    ok = [k for k, p in enumerate(procs) if p.returncode == 0]
    assert len(ok) == 1, [p.stdout + p.stderr for p in procs]
    for k, p in enumerate(procs):
        if k not in ok:
            assert "Traceback" not in p.stderr and ("exists" in p.stderr or "is running" in p.stderr), p.stderr
    stored = np.load(tmp_path / "results" / "f30k" / "mine-default-imported" / "eval" / "sims.npy")
    assert np.array_equal(stored, np.load(tmp_path / f"m{ok[0]}.npy"))
