"""Two processes on two cores against one process with two threads: one evaluation's wall time.

The same `evaluate` command (tests/stub_method.py, an official-format checkpoint, a SCAN-precomp split) runs
as one process with OMP_NUM_THREADS=2 (with and without a tile cache: a several-process evaluation always
writes one per rank, rank 0 merges them) and as `--processes 2` (two ranks, gloo, one thread each); one
process with one thread is the reference. On a machine shared with other work, two threads in one process can
lose far more to OpenMP spin-waiting than two processes do. The stub's `score` is made heavier (`--work`:
repeated matmuls per tile, like a cross-attention scorer whose time is in `score`), so scoring, not start-up,
dominates. A rank's `scoring_seconds` is its own share of the tiles. Matrices are compared bit for bit.

    python bench/processes.py [--images 2000] [--work 8] [--tiles 256,1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

HEAVY = '''
import torch
from stub_method import StubAdapter


class HeavyStub(StubAdapter):
    """The stub with a per-pair cost: WORK matmul rounds per tile (results unchanged)."""

    def score(self, image_block, text_block):
        out = image_block @ text_block.T
        for _ in range(WORK):
            out = out + 0.0 * torch.tanh(image_block @ text_block.T)
        return out
'''


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--work", type=int, default=8)
    p.add_argument("--tiles", default="256,1024")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from stub_method import write_checkpoint, write_split

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "heavy_stub.py").write_text(HEAVY.replace("WORK", str(args.work)))
        write_split(tmp / "data" / "big" / "precomp", "test", args.images)
        ck = write_checkpoint(tmp / "stub.pth")
        registry = (ROOT / "bench" / "streaming.py").read_text().split('REGISTRY = """')[1].split('"""')[0]
        (tmp / "reg.yaml").write_text(registry.replace("stub_method:StubAdapter", "heavy_stub:HeavyStub"))
        path = os.pathsep.join([str(tmp), str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])

        def run(name: str, threads: int, *extra: str) -> dict:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=path)
            cmd = [sys.executable, str(ROOT / "run_all.py"), "evaluate", "--registry", str(tmp / "reg.yaml"),
                   "--method", "stub", "--variant", "a", "--checkpoint", str(ck), "--data-root", str(tmp / "data"),
                   "--dataset", "big", "--save-sims", str(tmp / name / "sims.npy"), "--json",
                   str(tmp / name / "m.json"), "--tiles", args.tiles, "--store-matrix", "always", *extra]
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            eff = json.loads((tmp / name / "m.json").read_text())["efficiency"]
            return {"wall_seconds": round(wall, 2), "scoring_seconds": round(eff["scoring_seconds"], 2),
                    "processes": eff["processes"], "threads_per_process": threads}

        rows = {"one_process_one_thread": run("single", 1),
                "one_process_two_threads": run("one", 2),
                "one_process_two_threads_cached": run("cached", 2, "--cache-dir", str(tmp / "c1")),
                "two_processes_one_thread": run("two", 1, "--processes", "2", "--cache-dir", str(tmp / "c2"))}
        same = bool(np.array_equal(np.load(tmp / "one" / "sims.npy"), np.load(tmp / "two" / "sims.npy")))
        out = {"images": args.images, "captions": 5 * args.images, "tiles": args.tiles, "work": args.work,
               "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], **rows,
               "matrices_identical_bitwise": same,
               "note": "bitwise identity needs the same thread count per process; 2 threads vs 1 may round "
                       "differently in BLAS"}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
