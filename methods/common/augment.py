"""Word-level caption augmentation used in training (ESA and its vse_infty-style relatives).

Each word is chosen with probability `prob` (0.2). A chosen word is masked 50% of the time,
replaced by a uniformly random vocabulary id 10% of the time, and deleted 40% of the time. One
uniform draw per word decides both whether it is chosen and what happens to it, as the official
loaders do. All randomness comes from the numpy Generator passed in, so batches are reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MASK_SHARE = 0.5  # of chosen words: masked
RANDOM_SHARE = 0.1  # of chosen words: random id (the remaining 0.4: deleted)


def _action(rng: np.random.Generator, prob: float) -> str:
    u = rng.random()
    if u >= prob:
        return "keep"
    u /= prob
    if u < MASK_SHARE:
        return "mask"
    if u < MASK_SHARE + RANDOM_SHARE:
        return "random"
    return "delete"


def augment_word_ids(ids: Sequence[int], rng: np.random.Generator, *, mask_id: int, vocab_size: int,
                     prob: float = 0.2) -> list[int]:
    """Augment one caption given as word ids (BiGRU; <start>/<end> included, as in ESA)."""
    out = []
    for token in ids:
        action = _action(rng, prob)
        if action == "keep":
            out.append(int(token))
        elif action == "mask":
            out.append(mask_id)
        elif action == "random":
            out.append(int(rng.integers(vocab_size)))
    return out


def augment_word_pieces(words: Sequence[Sequence[int]], rng: np.random.Generator, *, mask_id: int,
                        vocab_size: int, prob: float = 0.2) -> list[int]:
    """Augment one caption given as basic words, each a list of WordPiece ids (BERT).

    A masked word has all its pieces turned into `mask_id`; a randomised word has each piece replaced
    by its own random id; a deleted word loses all its pieces. Returns the flat piece ids, without
    [CLS]/[SEP] (the caller adds them after augmentation).
    """
    out: list[int] = []
    for pieces in words:
        action = _action(rng, prob)
        if action == "keep":
            out.extend(int(p) for p in pieces)
        elif action == "mask":
            out.extend(mask_id for _ in pieces)
        elif action == "random":
            out.extend(int(rng.integers(vocab_size)) for _ in pieces)
    return out
