"""One evaluation over several processes (torchrun, Slurm tasks via submitit, or gloo CPU processes in tests).

The tile grid of `harness.eval.scoring.tile_grid` is dealt round-robin over the ranks (tile i to rank
i mod W). Every rank encodes the split, scores only its own tiles into its own tile cache
(`tiles_0.rank1of2.h5` beside the single-process `tiles_0.h5`), so each rank resumes its own tiles after a
kill. After a barrier, rank 0 reads every rank's cache and assembles the matrix, checking that every tile is
present exactly once, in a cache of the same computation (shape, tiling, encodings' fingerprint). The
matrix is bit-identical to one process's: the same tiles scored by the same code on the same encodings.
The cache folder must be shared by the ranks (one node, or a cluster's shared filesystem).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch.distributed as dist

from harness.core.errors import ItrbenchError


class ShardError(ItrbenchError):
    """Tiles of a several-process evaluation that are missing, duplicated or of another computation."""


def world() -> int:
    """Processes in this evaluation (1 outside an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def owner_of_tile(index: int, n_ranks: int) -> int:
    """The rank that scores the index-th tile of the grid."""
    return index % n_ranks


def selector(this_rank: int, n_ranks: int) -> Callable[[int], bool]:
    return lambda index: owner_of_tile(index, n_ranks) == this_rank


def rank_cache(cache: Path, this_rank: int, n_ranks: int) -> Path:
    """The tile cache file of one rank: `<stem>.rank<r>of<W>.h5` beside the single-process cache."""
    return cache.with_name(f"{cache.stem}.rank{this_rank}of{n_ranks}{cache.suffix}")


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def merge_tiles(cache: Path, n_ranks: int, grid: list[tuple[int, int, int, int]], shape: tuple[int, int],
                tiles: tuple[int, int], fingerprint: str | None = None) -> np.ndarray:
    """The matrix assembled from every rank's tile cache; a tile missing, present in two caches, or a cache of
    another computation is a ShardError naming the files."""
    import h5py

    files = [rank_cache(cache, r, n_ranks) for r in range(n_ranks)]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise ShardError(f"tile caches of rank(s) missing: {', '.join(absent)} (a rank failed, or the ranks do not "
                         "share the cache folder); re-run to resume")
    out = np.empty(shape, dtype=np.float32)
    seen = np.zeros((-(-shape[0] // tiles[0]), -(-shape[1] // tiles[1])), dtype=np.int64)
    handles = []
    try:
        for f in files:
            h = h5py.File(f, "r")
            handles.append(h)
            stored = (tuple(h["sims"].shape), tuple(int(t) for t in np.ravel(h.attrs["tiles"])))
            if stored != (tuple(shape), tuple(tiles)) or (fingerprint is not None
                                                          and h.attrs["fingerprint"] != fingerprint):
                raise ShardError(f"{f}: tile cache of another computation than rank 0's (shape, tiling or encodings "
                                 "differ); delete the rank caches and re-run")
            seen += np.asarray(h["done"][...], dtype=np.int64)
        twice = np.argwhere(seen > 1)
        missing = np.argwhere(seen == 0)
        if len(twice) or len(missing):
            what = [f"{len(missing)} tile(s) in no rank's cache" if len(missing) else "",
                    f"{len(twice)} tile(s) in several ranks' caches" if len(twice) else ""]
            first = (missing if len(missing) else twice)[0]
            raise ShardError(f"{cache.parent}: " + " and ".join(w for w in what if w) + f" (first: image tile "
                             f"{int(first[0])}, caption tile {int(first[1])}) among {', '.join(f.name for f in files)}")
        for a, b, c, d in grid:
            for h in handles:
                if h["done"][a // tiles[0], c // tiles[1]]:
                    out[a:b, c:d] = h["sims"][a:b, c:d]
                    break
    except (OSError, KeyError) as exc:
        raise ShardError(f"{cache.parent}: cannot read a rank's tile cache ({str(exc).splitlines()[0]}); re-run to "
                         "resume") from exc
    finally:
        for h in handles:
            h.close()
    return out
