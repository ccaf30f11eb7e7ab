"""Training health: flag a run whose loss sits at the collapse value or whose validation falls to chance.

A collapsed model scores every pair the same. Its loss is then a known constant of the method's loss
(`Adapter.collapse_loss`: 2 x margin x batch for a summed hardest-negative triplet loss), and its
validation rsum is that of a random scorer (`harness.data.demo.chance_rsum` for the split's shape).
`epoch_health` checks one epoch; the first flagged epoch becomes the run's `health` in metrics.json:
`{"collapsed_at_epoch": 1, "reason": "..."}` (both None for a healthy run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.data.demo import chance_rsum

LOSS_TOLERANCE = 0.02  # relative: step losses (10th to 90th percentile) within 2% of the collapse value
CHANCE_FACTOR = 1.25  # a validation rsum at most 1.25 x the chance rsum is "at chance"


def validation_chance(n_images: int, n_captions: int) -> float | None:
    """The rsum of a random scorer on a validation split of that shape (None when it has no images)."""
    if n_images <= 0 or n_captions <= 0:
        return None
    return chance_rsum(n_images, max(1, round(n_captions / n_images)))


def epoch_health(epoch: int, losses: Sequence[float], batch_sizes: Sequence[int], collapse: float | None,
                 val_rsum: float | None, chance: float | None) -> str | None:
    """Why `epoch` looks collapsed, or None. `losses` / `batch_sizes`: its steps (a short last batch is
    ignored for the loss check); `collapse`: the loss of a full batch with every score equal."""
    reasons = []
    full = [loss for loss, b in zip(losses, batch_sizes) if b == max(batch_sizes)] if losses else []
    if collapse and full:
        # collapsed: (nearly) every step sits at the value, not just the middle (a healthy VSE++ epoch can
        # average close to 2 x margin x batch: the demo's ESL-A epoch 2 had 14.6 vs 12.8 at val rsum 381.8)
        median = float(np.median(full))
        low, high = (float(v) for v in np.percentile(full, [10, 90]))
        if max(abs(low - collapse), abs(high - collapse)) <= LOSS_TOLERANCE * abs(collapse):
            reasons.append(f"loss {median:.4g} at the collapse value {collapse:.4g} (every score equal)")
    if val_rsum is not None and chance is not None and val_rsum <= CHANCE_FACTOR * chance:
        reasons.append(f"validation rsum {val_rsum:.1f} at chance level ({chance:.1f})")
    return "; ".join(reasons) or None


def run_health(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The run's health from its per-epoch records (each may hold `health`: a reason string)."""
    for record in history:
        if record.get("health"):
            return {"collapsed_at_epoch": int(record["epoch"]), "reason": str(record["health"])}
    return {"collapsed_at_epoch": None, "reason": None}


def health_text(health: Mapping[str, Any] | None) -> str | None:
    """'collapsed at epoch 1: <reason>' for a flagged run's stored health, else None."""
    if not health or health.get("collapsed_at_epoch") is None:
        return None
    return f"collapsed at epoch {health['collapsed_at_epoch']}: {health.get('reason')}"
