"""Numeric precision of encoding and scoring: float32 (exact, the default) or autocast to bf16 / fp16.

Mixed precision changes the matrix (slightly), so it is part of an evaluation's identity: the planner puts
a non-default precision into the job config, and results record it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise ValueError for an unknown precision or one the device cannot run."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; valid: {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "fp16" and kind == "cpu":
        raise ValueError("precision fp16 needs a CUDA device (CPU autocast supports bf16 only)")


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str = "fp32") -> Iterator[None]:
    """Autocast on `device` to `precision`; a no-op for fp32."""
    check_precision(precision, device)
    if precision == "fp32":
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=_DTYPES[precision]):
        yield
