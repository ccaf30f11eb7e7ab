"""Evaluation without a stored matrix: tiles are streamed and only what the ranking protocols need is kept.

`stream_ranks` scores the same tile grid as `harness.eval.scoring.score_blocks` (so every score is bit-identical
to the dense path's) in two passes:

1. the tiles holding a query's positives (the block diagonal of a caption-to-image mapping) give each image's
   best own-caption score (and how many of its captions share it) and each caption's own-image score;
2. every tile is compared with those thresholds: per query, the gallery items scoring strictly above its
   positive and those scoring at least as high (the tie-pessimistic / tie-optimistic ranks of the dense path,
   `harness.eval.metrics.recall.count_ranks`), within COCO 1K folds too, and the query's top-R gallery items.

A COCO 5K evaluation running ECCV Caption or CxC also feeds every tile to a `CocoTopsCollector`
(`harness.eval.streaming_coco`), whose top lists give those protocols' values.

The result (`RankSummary`, stored as `ranks.npz` in a job folder) is a few numbers per query: 100,000 captions
cost megabytes where their matrix costs gigabytes. `topk_search` is exact inner-product top-k for embedding
galleries of any size (FAISS when installed, else blocked torch top-k), the stage 1 of a shortlist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.api.adapter import Adapter
from harness.core.errors import ItrbenchError
from harness.eval.metrics.eccv import CocoTops, PairLookup
from harness.eval.scoring import DEFAULT_TILES, eval_mode, tile_grid

TOP_R = 10  # top gallery items kept per query by default (R@10)
MATRIX_LIMIT = 4 << 30  # --store-matrix auto keeps a float32 matrix up to this many bytes
STORE_MATRIX = ("auto", "always", "never")
COCO_LISTS = ("i2t", "t2i", "i2t_fold", "t2i_fold")  # CocoTops' top lists, as stored in ranks.npz

if TYPE_CHECKING:
    from harness.eval.streaming_coco import CocoTopsCollector


class SummaryError(ItrbenchError):
    """A rank summary that cannot be read or does not fit the evaluation."""


def keeps_matrix(mode: str, n_img: int, n_cap: int, limit: int = MATRIX_LIMIT) -> bool:
    """Whether an evaluation stores its dense matrix under --store-matrix `mode` (auto: below `limit` bytes)."""
    if mode not in STORE_MATRIX:
        raise ValueError(f"--store-matrix {mode}: expected one of {', '.join(STORE_MATRIX)}")
    if limit <= 0:
        raise ValueError(f"matrix size limit {limit}: expected a positive number of bytes")
    return mode == "always" or (mode == "auto" and 4 * n_img * n_cap <= limit)


@dataclass
class RankSummary:
    """Per query counts of gallery items above its positive (both tie bounds) and its top-R gallery items.

    i2t: image rows against their best own caption; t2i: caption columns against their own image. Fold
    counts are within `folds` equal contiguous image / caption folds (COCO 1K); with folds == 1 they are the
    full counts."""

    image_of_caption: np.ndarray
    i2t_gt: np.ndarray
    i2t_ge: np.ndarray
    i2t_own_ties: np.ndarray
    t2i_gt: np.ndarray
    t2i_ge: np.ndarray
    folds: int
    i2t_fold_gt: np.ndarray
    i2t_fold_ge: np.ndarray
    t2i_fold_gt: np.ndarray
    t2i_fold_ge: np.ndarray
    i2t_top: np.ndarray  # (images, R) caption indices, best first
    i2t_top_scores: np.ndarray
    t2i_top: np.ndarray  # (captions, R) image indices, best first
    t2i_top_scores: np.ndarray
    coco: CocoTops | None = None  # COCO 5K evaluations: what ECCV Caption and CxC need (streaming_coco)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.i2t_gt), len(self.t2i_gt)

    def ranks(self, fold: bool = False) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """((i2t optimistic, pessimistic), (t2i optimistic, pessimistic)) 0-based ranks, as count_ranks gives."""
        if fold:
            return ((self.i2t_fold_gt, self.i2t_fold_ge - self.i2t_own_ties), (self.t2i_fold_gt, self.t2i_fold_ge - 1))
        return (self.i2t_gt, self.i2t_ge - self.i2t_own_ties), (self.t2i_gt, self.t2i_ge - 1)

    def save(self, path: str | Path) -> None:
        from harness.core.results import atomic_path

        path = Path(path)
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self) if f.name != "coco"}
        if self.coco is not None:
            arrays.update({f"coco_{k}": getattr(self.coco, k) for k in COCO_LISTS},
                          coco_pair_keys=self.coco.pairs.keys, coco_pair_scores=self.coco.pairs.scores)
        with atomic_path(path, sum(a.nbytes for a in arrays.values())) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> RankSummary:
        names = [f.name for f in fields(cls) if f.name != "coco"]
        try:
            with np.load(path) as data:
                missing = [n for n in names if n not in data.files]
                if missing:
                    raise SummaryError(f"{path}: not a rank summary (missing {', '.join(missing)}); re-run the "
                                       "evaluation")
                values: dict[str, Any] = {n: data[n] for n in names}
                if "coco_pair_keys" in data.files:
                    values["coco"] = CocoTops(*(data[f"coco_{k}"] for k in COCO_LISTS),
                                              PairLookup(data["coco_pair_keys"], data["coco_pair_scores"]))
        except (OSError, ValueError) as exc:
            raise SummaryError(f"{path}: unreadable rank summary ({exc}); re-run the evaluation") from exc
        values["folds"] = int(values["folds"])
        return cls(**values)


def iter_tiles(adapter: Adapter, image_block: Any, text_block: Any, grid: list[tuple[int, int, int, int]],
               precision: str = "fp32") -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
    """((a, b, c, d), float32 scores) of each tile of `grid`, scored exactly as `score_blocks` scores it."""
    device = adapter.device
    with eval_mode(adapter, precision):
        txt_range, txt = None, None
        for a, b, c, d in grid:
            if txt_range != (c, d):
                txt_range, txt = (c, d), None
                txt = text_block[c:d].to(device)
            tile = adapter.score(image_block[a:b].to(device), txt)
            if tuple(tile.shape) != (b - a, d - c):
                raise ValueError(f"{type(adapter).__name__}.score returned shape {tuple(tile.shape)} for a "
                                 f"{b - a} x {d - c} tile")
            yield (a, b, c, d), tile.detach().to("cpu", torch.float32).numpy()


def _holds_positives(owner: np.ndarray, a: int, b: int, c: int, d: int) -> bool:
    return bool(owner[c] < b and owner[d - 1] >= a)  # captions are grouped by image in row order


def _merge_top(scores: torch.Tensor, index: torch.Tensor, new: torch.Tensor, offset: int,
               r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best r of (kept scores, kept indices) and a new block of scores along dim 1 (gallery index offset),
    best first. Which of several equal scores is kept at the cut is the top-k kernel's choice."""
    s, i = torch.topk(new, min(r, new.shape[1]), dim=1)
    cand_s, cand_i = torch.cat([scores, s], dim=1), torch.cat([index, i + offset], dim=1)
    s, j = torch.topk(cand_s, min(r, cand_s.shape[1]), dim=1)
    return s, cand_i.gather(1, j)


def _merge_top_full(scores: torch.Tensor, index: torch.Tensor, tile: torch.Tensor, offset: int,
                    queries_on_rows: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`_merge_top` for full kept lists (r entries per query) of a tile's rows or columns: only the tile's
    scores above a query's r-th kept score can enter its list, and after the first tiles they are few, so
    they are gathered (one comparison pass) instead of a top-k over the whole tile."""
    r = scores.shape[1]
    floor = scores[:, r - 1]
    mask = tile > (floor[:, None] if queries_on_rows else floor[None, :])
    hit = torch.nonzero(mask)
    if not len(hit):
        return scores, index
    q, g = (hit[:, 0], hit[:, 1]) if queries_on_rows else (hit[:, 1], hit[:, 0])
    values = tile[hit[:, 0], hit[:, 1]]
    order = torch.argsort(q, stable=True)
    q, g, values = q[order], g[order], values[order]
    per = torch.bincount(q, minlength=scores.shape[0])
    width = int(per.max())
    slot = torch.arange(len(q)) - torch.repeat_interleave(torch.cumsum(per, 0) - per, per)
    cand_s = torch.full((scores.shape[0], width), -torch.inf)
    cand_i = torch.full((scores.shape[0], width), -1, dtype=torch.int64)
    cand_s[q, slot], cand_i[q, slot] = values, g + offset
    both_s, both_i = torch.cat([scores, cand_s], dim=1), torch.cat([index, cand_i], dim=1)
    s, j = torch.topk(both_s, r, dim=1)
    return s, both_i.gather(1, j)


def _count_tile(values: np.ndarray, row_thr: np.ndarray, col_thr: np.ndarray, counts: dict[str, np.ndarray],
                a: int, c: int, rf: int, cf: int, folded: bool, rows: int = 16) -> None:
    """Add one tile's counts: per row, items > and >= its threshold; per column, the same against the column's
    threshold; with `folded`, also within the row's / column's fold. Rows are compared in small blocks that stay
    in cache (as `harness.eval.metrics.recall.count_ranks` does), blocks cut at fold boundaries, on threads."""
    n, w = values.shape
    cuts = sorted({0, n, *(f * rf - a for f in range(a // rf + 1, (a + n - 1) // rf + 1))})
    blocks = [(r0, min(r1, r0 + 256)) for r0, r1 in zip(cuts, cuts[1:]) for r0 in range(r0, r1, 256)]

    def work(span: tuple[int, int]) -> tuple[int, dict[str, np.ndarray]]:
        s0, s1 = span
        f = (a + s0) // rf
        f0, f1 = max(0, f * cf - c), min(w, (f + 1) * cf - c)  # this fold's columns within the tile
        buf = np.empty((rows, w), dtype=bool)
        view = buf.view(np.uint8)
        part = {k: np.zeros(w, np.int64) for k in ("gt", "ge", "fgt", "fge")}
        row_gt, row_ge = np.empty(s1 - s0, np.int64), np.empty(s1 - s0, np.int64)
        row_fgt, row_fge = np.zeros(s1 - s0, np.int64), np.zeros(s1 - s0, np.int64)
        for r0 in range(s0, s1, rows):
            r1 = min(s1, r0 + rows)
            blk, bb, u, thr = values[r0:r1], buf[:r1 - r0], view[:r1 - r0], row_thr[r0:r1, None]
            for op, full, fold in ((np.greater, row_gt, row_fgt), (np.greater_equal, row_ge, row_fge)):
                op(blk, thr, out=bb)
                full[r0 - s0:r1 - s0] = np.add.reduce(u, axis=1, dtype=np.int64)
                if folded and f0 < f1:
                    fold[r0 - s0:r1 - s0] = np.add.reduce(u[:, f0:f1], axis=1, dtype=np.int64)
            for op, key in ((np.greater, "gt"), (np.greater_equal, "ge")):
                op(blk, col_thr, out=bb)
                col = np.add.reduce(u, axis=0, dtype=np.uint8)
                part[key] += col
                if folded and f0 < f1:
                    part["f" + key][f0:f1] += col[f0:f1]
        part.update(row_gt=row_gt, row_ge=row_ge, row_fgt=row_fgt, row_fge=row_fge)
        return s0, part

    with ThreadPoolExecutor(_threads()) as pool:
        parts = list(pool.map(work, blocks))
    for s0, part in parts:
        s1 = s0 + len(part["row_gt"])
        counts["i2t_gt"][a + s0:a + s1] += part["row_gt"]
        counts["i2t_ge"][a + s0:a + s1] += part["row_ge"]
        counts["t2i_gt"][c:c + w] += part["gt"]
        counts["t2i_ge"][c:c + w] += part["ge"]
        if folded:
            counts["i2t_fold_gt"][a + s0:a + s1] += part["row_fgt"]
            counts["i2t_fold_ge"][a + s0:a + s1] += part["row_fge"]
            counts["t2i_fold_gt"][c:c + w] += part["fgt"]
            counts["t2i_fold_ge"][c:c + w] += part["fge"]


def _threads() -> int:
    return max(1, min(4, torch.get_num_threads()))


def stream_ranks(adapter: Adapter, image_block: Any, text_block: Any, image_of_caption: np.ndarray, *,
                 image_tile: int | None = None, caption_tile: int | None = None, precision: str = "fp32",
                 folds: int = 1, top_r: int = TOP_R, on_tile: Callable[[int, int], None] | None = None,
                 coco: CocoTopsCollector | None = None) -> RankSummary:
    """The rank summary of the images x captions matrix, never holding more than one tile of it; with `coco`
    (a COCO 5K evaluation), also the top lists ECCV Caption and CxC are computed from."""
    owner = np.asarray(image_of_caption, dtype=np.int64)
    n_img, n_cap = len(image_block), len(text_block)
    if owner.shape != (n_cap,) or (n_cap and (owner[0] != 0 or owner[-1] != n_img - 1
                                              or np.any(np.diff(owner) < 0) or np.any(np.diff(owner) > 1))):
        raise SummaryError("streamed evaluation needs captions grouped by image in row order, every image with a "
                           "caption")
    if folds < 1 or n_img % folds or n_cap % folds:
        raise SummaryError(f"{n_img} images x {n_cap} captions cannot be cut into {folds} equal folds")
    default = DEFAULT_TILES[adapter.scoring]
    grid = tile_grid(n_img, n_cap, image_tile or default[0], caption_tile or default[1])
    best = torch.full((n_img,), -torch.inf)
    own_ties = torch.zeros(n_img, dtype=torch.int64)
    pos = torch.empty(n_cap)
    cols = torch.arange(n_cap)
    rows_of = torch.from_numpy(owner)
    for (a, b, c, d), values in iter_tiles(adapter, image_block, text_block,
                                           [t for t in grid if _holds_positives(owner, *t)], precision):
        v = torch.from_numpy(values)
        j = cols[c:d]
        inside = (rows_of[c:d] >= a) & (rows_of[c:d] < b)
        j, i = j[inside], rows_of[c:d][inside]
        s = v[i - a, j - c]
        pos[j] = s
        cur = torch.full((n_img,), -torch.inf).scatter_reduce(0, i, s, reduce="amax")
        higher = cur > best
        own_ties[higher] = 0
        best = torch.maximum(best, cur)
        own_ties.index_add_(0, i, (s == best[i]).to(torch.int64))
    if not (torch.isfinite(best).all() and torch.isfinite(pos).all()):
        raise SummaryError(f"{type(adapter).__name__}: NaN or infinite scores on positive pairs; fix the model/scores "
                           "before evaluating")
    best_np, pos_np = best.numpy().astype(np.float32), pos.numpy().astype(np.float32)
    counts_np = {k: np.zeros(n, dtype=np.int64) for k, n in
              (("i2t_gt", n_img), ("i2t_ge", n_img), ("t2i_gt", n_cap), ("t2i_ge", n_cap),
               ("i2t_fold_gt", n_img), ("i2t_fold_ge", n_img), ("t2i_fold_gt", n_cap), ("t2i_fold_ge", n_cap))}
    r_i, r_t = min(top_r, n_cap), min(top_r, n_img)
    top_s, top_ix = torch.full((n_img, r_i), -torch.inf), torch.full((n_img, r_i), -1, dtype=torch.int64)
    seen = torch.zeros(n_img, dtype=torch.int64)  # gallery columns already merged into each row's list
    rf, cf = n_img // folds, n_cap // folds
    col_parts: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for (a, b, c, d), values in iter_tiles(adapter, image_block, text_block, grid, precision):
        v = torch.from_numpy(values)
        if not (torch.isfinite(v.max()) and torch.isfinite(v.min())):
            raise SummaryError(f"{type(adapter).__name__}: NaN or infinite scores in the tile of images {a}:{b}, "
                               f"captions {c}:{d}; fix the model/scores before evaluating")
        _count_tile(values, best_np[a:b], pos_np[c:d], counts_np, a, c, rf, cf, folds > 1)
        width = int(min(r_i, seen[a]))  # tiles are caption-tile major: all rows of a tile have seen as many
        if width == r_i:
            s, idx = _merge_top_full(top_s[a:b], top_ix[a:b], v, c, True)
        else:
            s, idx = _merge_top(top_s[a:b, :width], top_ix[a:b, :width], v, c, r_i)
        top_s[a:b, :s.shape[1]], top_ix[a:b, :s.shape[1]] = s, idx
        seen[a:b] += d - c
        prev = col_parts.get((c, d))
        if prev is not None and prev[0].shape[1] == r_t:
            col_parts[(c, d)] = _merge_top_full(prev[0], prev[1], v, a, False)
        else:
            col_parts[(c, d)] = _merge_top(prev[0] if prev else torch.empty((d - c, 0)),
                                           prev[1] if prev else torch.empty((d - c, 0), dtype=torch.int64),
                                           v.T, a, r_t)
        if coco is not None:
            coco.add(a, c, v)
        if on_tile:
            on_tile(a, c)
    t_s = torch.cat([col_parts[k][0] for k in sorted(col_parts)]) if col_parts else torch.empty((n_cap, 0))
    t_i = torch.cat([col_parts[k][1] for k in sorted(col_parts)]) if col_parts else torch.empty((n_cap, 0),
                                                                                                  dtype=torch.int64)
    if folds == 1:
        for k in ("i2t_gt", "i2t_ge", "t2i_gt", "t2i_ge"):
            counts_np[k.replace("_", "_fold_", 1)] = counts_np[k]
    out = counts_np
    return RankSummary(image_of_caption=owner, i2t_own_ties=own_ties.numpy(), folds=folds,
                       i2t_top=top_ix.numpy(), i2t_top_scores=top_s.numpy(),
                       t2i_top=t_i.numpy(), t2i_top_scores=t_s.numpy(), coco=coco.result() if coco else None,
                       **out)


# ---- exact inner-product top-k (shortlist stage 1) -------------------------------------------------------------

def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def topk_search(queries: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor, k: int,
                backend: str = "auto", block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices), each (n_queries, k), of every query's k gallery items of highest inner product,
    best first; exact. backend: "faiss" (IndexFlatIP; GPU FAISS is not used here), "torch" (blocked
    matmul and top-k, gallery blocks of `block`), or "auto" (FAISS when installed, else torch)."""
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32) if not isinstance(queries, torch.Tensor)
                        else queries.float()).cpu()
    g = torch.as_tensor(np.asarray(gallery, dtype=np.float32) if not isinstance(gallery, torch.Tensor)
                        else gallery.float()).cpu()
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"topk_search: queries {tuple(q.shape)} and gallery {tuple(g.shape)} must be (n, dim) "
                         "with the same dim")
    if not 1 <= k <= g.shape[0]:
        raise ValueError(f"topk_search: k={k} must be between 1 and the gallery size {g.shape[0]}")
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"topk_search: backend '{backend}' is not one of auto, faiss, torch")
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        import faiss

        index = faiss.IndexFlatIP(g.shape[1])
        index.add(np.ascontiguousarray(g.numpy()))
        scores, idx = index.search(np.ascontiguousarray(q.numpy()), k)
        return scores.astype(np.float32), idx.astype(np.int64)
    best_s = torch.empty((q.shape[0], 0))
    best_i = torch.empty((q.shape[0], 0), dtype=torch.int64)
    for a in range(0, g.shape[0], block):
        best_s, best_i = _merge_top(best_s, best_i, q @ g[a:a + block].T, a, k)
    return best_s.numpy(), best_i.numpy()
