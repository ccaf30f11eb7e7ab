"""Recall protocols: vectorized counting vs the official per-query argsort loop, same run.

    python bench/metrics.py [--images 5000] [--dtype float32]

Prints seconds for each protocol (COCO 5K both directions, COCO 1K 5-fold, F30K 1K) and the ratio;
checks that both give identical numbers on the tie-free synthetic matrix.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from harness.eval.metrics.loop_reference import loop_i2t_ranks, loop_summary, loop_t2i_ranks
from harness.eval.metrics.recall import fold_slices, full_recall
from harness.eval.protocols import compute_protocol


def synthetic(n_img: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sims = rng.standard_normal((n_img, 5 * n_img), dtype=np.float32)
    sims[np.arange(5 * n_img) // 5, np.arange(5 * n_img)] += 2.0
    return sims.astype(dtype)


def loop_protocol(sims: np.ndarray) -> float:
    i2t, t2i = loop_summary(loop_i2t_ranks(sims)), loop_summary(loop_t2i_ranks(sims))
    return sum(i2t[:3]) + sum(t2i[:3])


def timed(fn, *args, repeat: int = 1):
    """Result and best wall time of `repeat` runs (the machine may be shared)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = ap.parse_args()
    big = synthetic(args.images, args.dtype)
    small = synthetic(1000, args.dtype, seed=1)
    rows = []
    ours, t_ours = timed(lambda m: compute_protocol("recall", m, bootstrap=0), big, repeat=3)
    ref, t_ref = timed(loop_protocol, big)
    assert abs(ours["rsum"] - ref) < 1e-9, (ours["rsum"], ref)
    rows.append((f"COCO 5K ({args.images} x {5 * args.images})", t_ours, t_ref))
    if args.images % 5 == 0:
        def ours_folds(m):
            if args.images == 5000:
                return compute_protocol("coco1k", m, bootstrap=0)
            return {"rsum": np.mean([full_recall(m[r, c])["rsum"] for r, c in fold_slices(len(m))])}

        folds, t_ours = timed(ours_folds, big, repeat=3)
        ref, t_ref = timed(lambda s: np.mean([loop_protocol(s[r, c]) for r, c in fold_slices(len(s))]), big)
        assert abs(folds["rsum"] - ref) < 1e-9
        rows.append(("COCO 1K (5 folds)", t_ours, t_ref))
    ours, t_ours = timed(lambda m: compute_protocol("f30k1k", m, bootstrap=0), small, repeat=5)
    ref, t_ref = timed(loop_protocol, small)
    assert abs(ours["rsum"] - ref) < 1e-9
    rows.append(("F30K 1K (1000 x 5000)", t_ours, t_ref))
    print(f"{'protocol':28s} {'ours s':>9s} {'loop s':>9s} {'ratio':>8s}")
    for name, a, b in rows:
        print(f"{name:28s} {a:9.3f} {b:9.3f} {b / a:7.1f}x")


if __name__ == "__main__":
    main()
