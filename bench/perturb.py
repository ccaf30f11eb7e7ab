"""Time every caption perturbation on the 25,000 COCO 5K test captions at one severity (one core).

    python bench/perturb.py [--severity 3] [--seed 0]

The budget (issue 25) is 10 s per perturbation; the script exits 1 when one exceeds it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from harness.eval.perturb.text import TEXT_PERTURBATIONS, perturb_captions  # noqa: E402

CAPTIONS = Path(__file__).resolve().parents[1] / "harness" / "assets" / "coco5k" / "testall_caps.txt"
BUDGET_S = 10.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    captions = CAPTIONS.read_text().splitlines()
    slow = []
    for name, p in TEXT_PERTURBATIONS.items():
        reason = p.unavailable()
        if reason:
            print(f"{name:20s} not defined: {reason}")
            continue
        t = time.perf_counter()
        perturb_captions(captions, name, args.severity, args.seed)
        dt = time.perf_counter() - t
        print(f"{name:20s} {dt:6.2f} s for {len(captions)} captions ({1e6 * dt / len(captions):.0f} us each)")
        if dt > BUDGET_S:
            slow.append(name)
    if slow:
        print(f"over the {BUDGET_S:.0f} s budget: {', '.join(slow)}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
