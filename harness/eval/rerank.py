"""Stage 2 of a cascade evaluation: the method's own `score` on exactly the candidate pairs.

The candidate pairs (CSR by image, `harness.eval.shortlist.candidate_pairs`) are cut into tiles of
`pair_tile` consecutive pairs. In a tile, the captions it needs are gathered once; each image of the tile is
then scored against its own candidate captions with one `adapter.score(1 image, its captions)` call, so no
pair outside the shortlist is ever scored. With a cache file, finished tiles go to the same resumable HDF5
tile cache as full scoring (`harness.eval.scoring.TileCache`, one row of `n_pairs` scores), fingerprinted by
the encodings and the pair list: a killed rerank resumes at its first missing tile with identical scores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.api.adapter import Adapter
from harness.eval.scoring import TileCache, block_fingerprint, eval_mode

DEFAULT_PAIR_TILE = {"embedding": 1 << 20, "pairwise": 1 << 15}


def pairs_fingerprint(indptr: np.ndarray, cols: np.ndarray) -> str:
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(indptr, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(cols, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def pair_tiles(n_pairs: int, pair_tile: int) -> list[tuple[int, int]]:
    return [(c, min(n_pairs, c + pair_tile)) for c in range(0, n_pairs, pair_tile)]


def score_pairs(adapter: Adapter, image_block: Any, text_block: Any, indptr: np.ndarray, cols: np.ndarray, *,
                pair_tile: int | None = None, cache: str | Path | None = None,
                on_tile: Callable[[int, int], None] | None = None, precision: str = "fp32") -> np.ndarray:
    """float32 `adapter.score` of every pair (image i, caption cols[indptr[i]:indptr[i+1]]), in CSR order,
    tile by tile (resuming from `cache`). `on_tile(done, total)` is called after each scored tile."""
    n_pairs = int(len(cols))
    tile = int(pair_tile or DEFAULT_PAIR_TILE[adapter.scoring])
    tiles = pair_tiles(n_pairs, tile)
    out = np.empty(n_pairs, dtype=np.float32)
    image_of_pair = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    store = None
    if cache and n_pairs:
        fingerprint = f"{block_fingerprint(image_block, text_block)}-{pairs_fingerprint(indptr, cols)}"
        store = TileCache(Path(cache), (1, n_pairs), (1, tile), fingerprint)
    device = adapter.device
    try:
        with eval_mode(adapter, precision):
            for t, (c, d) in enumerate(tiles):
                if store is not None and store.done(0, c):
                    out[c:d] = store.read(0, 1, c, d)[0]
                    continue
                out[c:d] = _score_tile(adapter, image_block, text_block, image_of_pair[c:d], cols[c:d], device)
                if store is not None:
                    store.write(0, 1, c, d, out[None, c:d])
                if on_tile:
                    on_tile(t + 1, len(tiles))
    finally:
        if store is not None:
            store.close()
    return out


def _score_tile(adapter: Adapter, image_block: Any, text_block: Any, images: np.ndarray, captions: np.ndarray,
                device: torch.device) -> np.ndarray:
    """Scores of the pairs (images[p], captions[p]) of one tile (images ascending): one score call per image."""
    needed, inverse = np.unique(captions, return_inverse=True)
    text = text_block[torch.from_numpy(needed)].to(device)
    out = np.empty(len(images), dtype=np.float32)
    starts = np.flatnonzero(np.r_[True, images[1:] != images[:-1]])
    ends = np.r_[starts[1:], len(images)]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        i = int(images[s])
        img = image_block[i:i + 1].to(device)
        sub = text[torch.from_numpy(inverse[s:e])]
        scores = adapter.score(img, sub)
        if tuple(scores.shape) != (1, e - s):
            raise ValueError(f"{type(adapter).__name__}.score returned shape {tuple(scores.shape)} for 1 image x "
                             f"{e - s} captions")
        out[s:e] = scores.detach().to("cpu", torch.float32).numpy()[0]
    return out
