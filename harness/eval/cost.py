"""What an evaluation costs, measured and projected to larger galleries.

Measured (`add_cost`, added to every evaluation's efficiency record): encode time per item (images and
captions together), pairs scored per second, peak host memory (the process's max RSS) and peak GPU memory
(torch's max allocated; None on the CPU).

Projected (`project`), from one measured evaluation of `n_img` images x `n_cap` captions to a gallery of N
images with the same captions per image (N_cap = N * n_cap / n_img):

- encoding is linear in items: ms/image * N + ms/caption * N_cap;
- exact scoring is quadratic: N * N_cap pairs at the measured pairs/s; its dense float32 matrix takes
  4 * N * N_cap bytes;
- a cascade scores K * (N + N_cap) pairs (linear in K and in the gallery) at its measured pairs/s, plus
  stage 1's top-K, a dot-product pass scaled quadratically from its measured time; it keeps K * (N + N_cap)
  candidates (int32 index + float32 score: 8 bytes each), never the dense matrix. The shortlister's own
  encoding is its own row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

GALLERIES = (100_000, 1_000_000)  # images in the report's projections
CANDIDATE_BYTES = 8  # int32 caption/image index + float32 stage-2 score


def peak_host_mb() -> float | None:
    """Peak resident memory of this process (MiB), or None where the platform does not say."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_gpu_mb(device: str) -> float | None:
    """Peak GPU memory torch allocated (MiB) on a CUDA device; None on the CPU."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def add_cost(eff: dict[str, Any], shape: Sequence[int], pairs_scored: int | None = None) -> dict[str, Any]:
    """`eff` with encode ms per item, pairs per second and peak host / GPU memory (kept where already set)."""
    n_img, n_cap = int(shape[0]), int(shape[1])
    out = dict(eff)
    if "encode_ms_per_item" not in out:
        if isinstance(out.get("encode_seconds"), (int, float)):
            total_ms = 1000.0 * float(out["encode_seconds"])
        else:
            total_ms = float(out.get("encode_ms_per_image") or 0.0) * n_img + \
                float(out.get("encode_ms_per_caption") or 0.0) * n_cap
        out["encode_ms_per_item"] = total_ms / max(1, n_img + n_cap)
    pairs = n_img * n_cap if pairs_scored is None else int(pairs_scored)
    out.setdefault("pairs_scored", pairs)
    secs = out.get("scoring_seconds")
    if "pairs_per_second" not in out and isinstance(secs, (int, float)) and secs > 0:
        out["pairs_per_second"] = pairs / float(secs)
    out.setdefault("peak_host_mb", peak_host_mb())
    out.setdefault("peak_gpu_mb", peak_gpu_mb(str(out.get("device", "cpu"))))
    return out


@dataclass(frozen=True)
class Projection:
    images: int
    captions: int
    seconds: float  # encode + scoring (+ stage 1 for a cascade)
    memory_bytes: float  # the dense matrix (exact) or the candidates (cascade)


def project(eff: Mapping[str, Any], shape: Sequence[int], images: int, k: int | None = None) -> Projection | None:
    """Time and result memory of the same evaluation at `images` images (exact, or a cascade of top-`k`);
    None when the record lacks the measurements."""
    n_img, n_cap = int(shape[0]), int(shape[1])
    rate = eff.get("pairs_per_second")
    if not n_img or not isinstance(rate, (int, float)) or rate <= 0:
        return None
    captions = int(round(images * n_cap / n_img))
    if isinstance(eff.get("encode_ms_per_image"), (int, float)) and isinstance(eff.get("encode_ms_per_caption"),
                                                                                (int, float)):
        encode = (float(eff["encode_ms_per_image"]) * images + float(eff["encode_ms_per_caption"]) * captions) / 1e3
    else:
        encode = float(eff.get("encode_ms_per_item") or 0.0) * (images + captions) / 1e3
    quadratic = images * captions / max(1, n_img * n_cap)
    if k is None:
        return Projection(images, captions, encode + images * captions / rate, 4.0 * images * captions)
    pairs = k * (images + captions)
    stage1 = float(eff.get("stage1_seconds") or 0.0) * quadratic
    return Projection(images, captions, encode + stage1 + pairs / rate, float(CANDIDATE_BYTES * pairs))


def size_text(n_bytes: float) -> str:
    """1.5e11 -> '150 GB' (decimal units)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes:.0f} B"


def time_text(seconds: float) -> str:
    """Seconds in the largest unit that keeps the number readable (s, min, h, days)."""
    for unit, scale in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.3g} s"
