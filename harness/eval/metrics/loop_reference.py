"""The official per-query ranking loops (vse_infty `i2t`/`t2i` semantics), kept as a slow reference.

Used by tests (agreement of the vectorized metrics) and by bench/metrics.py (speed ratio). Each
query sorts the whole gallery with `np.argsort(row)[::-1]`, as the official code does.
"""

from __future__ import annotations

import numpy as np


def loop_i2t_ranks(sims: np.ndarray, captions_per_image: int = 5) -> np.ndarray:
    n_img = sims.shape[0]
    ranks = np.zeros(n_img, np.int64)
    for i in range(n_img):
        order = np.argsort(sims[i])[::-1]
        ranks[i] = min(int(np.where(order == j)[0][0])
                       for j in range(captions_per_image * i, captions_per_image * (i + 1)))
    return ranks


def loop_t2i_ranks(sims: np.ndarray, captions_per_image: int = 5) -> np.ndarray:
    sims_t = sims.T
    ranks = np.zeros(sims_t.shape[0], np.int64)
    for j in range(sims_t.shape[0]):
        order = np.argsort(sims_t[j])[::-1]
        ranks[j] = int(np.where(order == j // captions_per_image)[0][0])
    return ranks


def loop_summary(ranks: np.ndarray) -> tuple[float, float, float, float, float]:
    r1, r5, r10 = (100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10))
    return r1, r5, r10, float(np.floor(np.median(ranks)) + 1), float(ranks.mean() + 1)
