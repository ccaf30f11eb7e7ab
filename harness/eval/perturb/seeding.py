"""One random generator per perturbed item, derived from a stable hash (never Python's `hash()`)."""

from __future__ import annotations

import hashlib

import numpy as np


def item_rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
    """The generator perturbing item `index` with `name` at `severity` under `seed`: the same under any
    PYTHONHASHSEED, on any machine, whatever else is perturbed in the same pass."""
    key = f"{int(seed)}/{name}/{int(severity)}/{int(index)}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))
