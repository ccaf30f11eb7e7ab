"""The whole `run_all.py metrics --protocol coco5k` process vs an official-style script, same matrix, same run.

    python bench/metrics_process.py [--images 5000] [--bootstrap 1000] [--repeat 3]

Both sides are timed as a user meets them: a fresh interpreter that reads the .npy matrix and prints
R@K. The reference is the official evaluation's habit: one `np.argsort` over the gallery per query
(harness.eval.metrics.loop_reference). Ours runs with the command's default 95% bootstrap intervals unless
`--bootstrap` says otherwise. Prints both wall times, the ratio, and checks the rsums agree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from metrics import synthetic  # bench/metrics.py, beside this script: the same tie-free matrix

ROOT = Path(__file__).resolve().parents[1]

OFFICIAL_STYLE = """
import sys
import numpy as np
from harness.eval.metrics.loop_reference import loop_i2t_ranks, loop_summary, loop_t2i_ranks
sims = np.load(sys.argv[1])
i2t, t2i = loop_summary(loop_i2t_ranks(sims)), loop_summary(loop_t2i_ranks(sims))
print(sum(i2t[:3]) + sum(t2i[:3]))
"""


def wall(cmd: list[str], repeat: int) -> tuple[float, str]:
    """Best wall time of `repeat` runs of a whole process, and its stdout."""
    best, out = float("inf"), ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--bootstrap", type=int, default=None, help="resamples (default: the command's default)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    protocol = "coco5k" if args.images == 5000 else "recall"
    with tempfile.TemporaryDirectory() as tmp:
        path, report = Path(tmp) / "sims.npy", Path(tmp) / "metrics.json"
        np.save(path, synthetic(args.images, "float32"))
        ours_cmd = [sys.executable, "run_all.py", "metrics", "--sims", str(path), "--protocol", protocol,
                    "--json", str(report)]
        if args.bootstrap is not None:
            ours_cmd += ["--bootstrap", str(args.bootstrap)]
        t_ours, _ = wall(ours_cmd, args.repeat)
        rsum = json.loads(report.read_text())["rsum"]
        t_ref, out = wall([sys.executable, "-c", OFFICIAL_STYLE, str(path)], 1)
    assert abs(rsum - float(out)) < 1e-6, (rsum, out)
    print(f"{args.images} x {5 * args.images} float32, protocol {protocol}, "
          f"bootstrap {'default' if args.bootstrap is None else args.bootstrap}")
    print(f"  run_all.py metrics process   {t_ours:8.2f} s")
    print(f"  official-style loop process  {t_ref:8.2f} s")
    print(f"  ratio                        {t_ref / t_ours:8.1f}x  (rsum {rsum:.2f} on both)")


if __name__ == "__main__":
    main()
