"""Stage 1 of a cascade evaluation: each query's top-K gallery items, and the sparse result of stage 2.

A shortlist holds, for every image, the indices of its top-K captions by a stage-1 score (`i2t`), and for
every caption its top-K images (`t2i`). Selection is deterministic: higher score first, ties broken by the
lower gallery index, so a shortlist depends only on the stage-1 scores. Stage-1 scores come from a
`BlockScores` callable (a stored matrix, an embedding model's `score` over its encodings, or pooled
vectors), computed block by block so no dense matrix is ever held.

`candidate_pairs` is the union of both directions' (image, caption) pairs in CSR form (by image), the pairs
stage 2 scores; `CascadeResult` is what a cascade evaluation stores (`cascade.npz`): candidate indices and
stage-2 scores per query and direction, K, the stage-1 source and the pairs scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.core.errors import ItrbenchError
from harness.core.results import atomic_path

# (image rows [a, b), caption columns [c, d)) -> their (b - a, d - c) stage-1 scores
BlockScores = Callable[[int, int, int, int], torch.Tensor]
STAGE1_BLOCK = 1 << 24  # stage-1 scores held at a time (64 MB of float32)


class ShortlistError(ItrbenchError):
    """A shortlist that cannot be built or used (bad K, a stage-1 matrix of another split)."""


@dataclass(frozen=True)
class Shortlist:
    """Top-K candidates per query, best first: `i2t` (n_img, K_i) caption indices, `t2i` (n_cap, K_t) image
    indices (K clipped to each direction's gallery size)."""

    k: int
    source: str
    i2t: np.ndarray
    t2i: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.i2t.shape[0]), int(self.t2i.shape[0])


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ShortlistError(f"--shortlist {k}: expected a positive number of candidates per query (e.g. 64)")
    return int(k)


def top_k_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(rows, k) column indices of each row's k largest scores, best first; equal scores by lower index."""
    n = scores.shape[1]
    k = min(k, n)
    if k == n:
        return torch.sort(-scores, dim=1, stable=True).indices  # ascending -s, stable: ties by index
    vals, idx = torch.topk(scores, min(n, k + 1), dim=1)
    out = _best_first(scores, idx[:, :k])
    ambiguous = (vals[:, k - 1] == vals[:, k]).nonzero()[:, 0] if k < vals.shape[1] else idx.new_empty(0)
    if len(ambiguous):  # the k-th score ties with the next: the tied items of lowest index are taken
        sub = scores[ambiguous]
        kth = vals[ambiguous, k - 1:k]
        above, tied = sub > kth, sub == kth
        need = k - above.sum(dim=1, keepdim=True)
        chosen = above | (tied & (torch.cumsum(tied, dim=1) <= need))
        out[ambiguous] = _best_first(sub, chosen.nonzero()[:, 1].reshape(-1, k))
    return out


def _best_first(scores: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """`idx` reordered by descending score, equal scores by ascending index."""
    idx = torch.sort(idx, dim=1).values
    order = torch.sort(-torch.gather(scores, 1, idx), dim=1, stable=True).indices
    return torch.gather(idx, 1, order)


def build_shortlist(block: BlockScores, n_img: int, n_cap: int, k: int, source: str,
                    block_elements: int = STAGE1_BLOCK) -> Shortlist:
    """Each image's top-K captions and each caption's top-K images by the stage-1 `block` scores, in row
    bands (i2t) and column bands (t2i) of about `block_elements` scores each."""
    k = check_k(k)
    rows = max(1, block_elements // max(1, n_cap))
    i2t = np.empty((n_img, min(k, n_cap)), dtype=np.int64)
    for a in range(0, n_img, rows):
        b = min(n_img, a + rows)
        i2t[a:b] = top_k_rows(_finite(block(a, b, 0, n_cap).float(), source), k).numpy()
    cols = max(1, block_elements // max(1, n_img))
    t2i = np.empty((n_cap, min(k, n_img)), dtype=np.int64)
    for c in range(0, n_cap, cols):
        d = min(n_cap, c + cols)
        t2i[c:d] = top_k_rows(_finite(block(0, n_img, c, d).float(), source).T, k).numpy()
    return Shortlist(k, source, i2t, t2i)


def _finite(scores: torch.Tensor, source: str) -> torch.Tensor:
    if not bool(torch.isfinite(scores).all()):
        raise ShortlistError(f"stage-1 scores of {source} hold NaN or infinite values; fix the shortlister")
    return scores


def matrix_blocks(sims: np.ndarray) -> BlockScores:
    """Stage-1 blocks of a stored (memory-mapped) images x captions matrix."""
    return lambda a, b, c, d: torch.from_numpy(np.array(sims[a:b, c:d], dtype=np.float32))


def vector_blocks(images: torch.Tensor, texts: torch.Tensor) -> BlockScores:
    """Stage-1 blocks of inner products of pooled vectors (n_img, D) and (n_cap, D)."""
    images, texts = images.float(), texts.float()
    return lambda a, b, c, d: images[a:b] @ texts[c:d].T


def shortlist_from_matrix(path: str | Path, shape: tuple[int, int], k: int, label: str | None = None) -> Shortlist:
    """The shortlist of a stored matrix (`--shortlist-from`), which must be of the evaluated split's shape;
    `label` names its source (default "matrix <file name>")."""
    path = Path(path)
    try:
        sims = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ShortlistError(f"--shortlist-from {path}: not a readable .npy matrix ({exc})") from exc
    if sims.ndim != 2 or tuple(sims.shape) != tuple(shape):
        raise ShortlistError(f"--shortlist-from {path}: a {' x '.join(map(str, sims.shape))} matrix, but the split "
                             f"has {shape[0]} images x {shape[1]} captions; give a matrix of the same split")
    return build_shortlist(matrix_blocks(sims), shape[0], shape[1], k, label or f"matrix {path.name}")


def candidate_pairs(shortlist: Shortlist) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr (n_img + 1,), captions) of the union of both directions' candidate pairs, captions
    ascending within each image."""
    n_img, n_cap = shortlist.shape
    rows = np.concatenate([np.repeat(np.arange(n_img), shortlist.i2t.shape[1]), shortlist.t2i.ravel()])
    cols = np.concatenate([shortlist.i2t.ravel(), np.repeat(np.arange(n_cap), shortlist.t2i.shape[1])])
    keys = np.unique(rows.astype(np.int64) * n_cap + cols)
    img, cap = np.divmod(keys, n_cap)
    indptr = np.searchsorted(img, np.arange(n_img + 1))
    return indptr.astype(np.int64), cap.astype(np.int64)


def lookup(indptr: np.ndarray, cols: np.ndarray, values: np.ndarray, img: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """The CSR values of pairs (img[i], cap[i]), which must all be stored."""
    n_cap = int(cols.max()) + 1 if len(cols) else 1
    row_of = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    keys = row_of * n_cap + cols  # ascending: rows ascending, captions ascending within each
    pos = np.searchsorted(keys, np.asarray(img) * n_cap + np.asarray(cap))
    return values[pos]


@dataclass
class CascadeResult:
    """A cascade's stage-2 result: for every query its candidates (best stage-1 first) and their stage-2
    scores; every other pair ranks below all candidates."""

    k: int
    source: str
    i2t_index: np.ndarray  # (n_img, K_i) caption indices
    i2t_scores: np.ndarray  # (n_img, K_i) float32
    t2i_index: np.ndarray  # (n_cap, K_t) image indices
    t2i_scores: np.ndarray  # (n_cap, K_t) float32
    pairs_scored: int

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.i2t_index.shape[0]), int(self.t2i_index.shape[0])

    @property
    def pairs_total(self) -> int:
        return self.shape[0] * self.shape[1]

    @classmethod
    def of(cls, shortlist: Shortlist, indptr: np.ndarray, cols: np.ndarray, scores: np.ndarray) -> CascadeResult:
        n_img, n_cap = shortlist.shape
        i2t_img = np.repeat(np.arange(n_img), shortlist.i2t.shape[1])
        t2i_cap = np.repeat(np.arange(n_cap), shortlist.t2i.shape[1])
        i2t = lookup(indptr, cols, scores, i2t_img, shortlist.i2t.ravel()).reshape(shortlist.i2t.shape)
        t2i = lookup(indptr, cols, scores, shortlist.t2i.ravel(), t2i_cap).reshape(shortlist.t2i.shape)
        return cls(shortlist.k, shortlist.source, shortlist.i2t, i2t.astype(np.float32), shortlist.t2i,
                   t2i.astype(np.float32), int(len(cols)))

    def save(self, path: str | Path) -> None:
        """One .npz (written atomically): candidate indices (int32) and stage-2 scores per query."""
        arrays = dict(k=self.k, source=np.array(self.source), i2t_index=self.i2t_index.astype(np.int32),
                      i2t_scores=self.i2t_scores, t2i_index=self.t2i_index.astype(np.int32),
                      t2i_scores=self.t2i_scores, pairs_scored=self.pairs_scored)
        size = sum(np.asarray(v).nbytes for v in arrays.values()) + 4096
        with atomic_path(path, size) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> CascadeResult:
        try:
            with np.load(path) as z:
                return cls(int(z["k"]), str(z["source"]), z["i2t_index"].astype(np.int64), z["i2t_scores"],
                           z["t2i_index"].astype(np.int64), z["t2i_scores"], int(z["pairs_scored"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ShortlistError(f"{path}: not a cascade result ({exc}); evaluate the cascade again") from exc

    def record(self) -> dict[str, Any]:
        """What the result's metrics file says about the cascade."""
        return {"k": self.k, "source": self.source, "pairs_scored": self.pairs_scored,
                "pairs_total": self.pairs_total, "pairs_fraction": self.pairs_scored / max(1, self.pairs_total)}
