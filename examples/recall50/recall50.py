"""Recall@50: a protocol of one's own, plugged in by a registry file (registry.yaml beside this file).

It declares its result: the fields it stores (`i2t.r50`, `t2i.r50`, `rsum50`, higher is better), its headline
and the columns tables show, and the per-query values behind its paired significance test: per image, its
i2t hit at 50 plus its captions' share of the t2i hits at 50 (x100), whose mean over images is `rsum50`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.eval.metrics.per_query import hits_per_image
from harness.eval.metrics.recall import check_matrix, count_ranks
from harness.eval.protocols import EvalInputs, Field, PairedTest, Protocol

K = 50


def applies(inp: EvalInputs) -> str | None:
    """R@50 means something only when both galleries hold more than 50 items."""
    n_img, n_cap = inp.shape
    if min(n_img, n_cap) <= K:
        return f"R@{K} needs more than {K} images and captions, this matrix is {n_img} x {n_cap}"
    return None


def compute(inp: EvalInputs) -> dict[str, Any]:
    """i2t / t2i R@50 in percent (tie-pessimistic ranks, like every recall of the harness) and their sum."""
    k = inp.captions_per_image
    owner = None if k else inp.image_of_caption
    sims = check_matrix(inp.sims, k or 1, image_of_caption=owner)
    i2t, t2i = count_ranks(sims, k or 1, image_of_caption=owner)
    r_i2t = float(np.mean(i2t.pessimistic < K) * 100.0)
    r_t2i = float(np.mean(t2i.pessimistic < K) * 100.0)
    return {"i2t": {"r50": r_i2t}, "t2i": {"r50": r_t2i}, "rsum50": r_i2t + r_t2i}


def per_image(sims: np.ndarray, image_of_caption: np.ndarray) -> tuple[np.ndarray, None]:
    """One value per image whose mean is rsum50 (no strata): what the paired bootstrap resamples."""
    return hits_per_image(sims, image_of_caption, ks=(K,)), None


RECALL50 = Protocol(
    "recall50", "Recall@50 over the full matrix", "any images x captions matrix with more than 50 of each",
    applies, compute, headline=("i2t.r50", "t2i.r50", "rsum50"),
    fields=(Field("i2t.r50"), Field("t2i.r50"), Field("rsum50")),
    columns=("i2t.r50", "t2i.r50", "rsum50"),
    paired=PairedTest("rsum50", per_image))
