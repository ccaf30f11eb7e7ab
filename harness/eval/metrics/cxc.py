"""CxC (Crisscrossed Captions) retrieval on the COCO 5K test set: i2t, t2i, t2t and i2i R@K.

Ground truth comes from the CxC test CSVs shipped in `harness/assets/cxc` (google-research-datasets/
Crisscrossed-Captions @7d6634b, CC BY 4.0):

- i2t / t2i (`sits_test.csv`): an image-caption pair is positive when its agg_score >= 3 (the CxC paper's
  threshold; the rated original COCO pairs included). Queries without any positive are skipped, as
  eccv_caption does (all 5,000 images; 24,972 of the 25,000 captions). This is eccv_caption's `cxc` ground
  truth (35,585 pairs), rebuilt from the CSV.
- t2t (`sts_test.csv`): positives are the other 4 COCO captions of the query's image plus every caption
  rated >= 3 with it; every caption is a query. vse_infty's `cxc_intra` is followed for the rest: the
  query's similarity to itself is set to 0 and the query stays in the gallery as a distractor.
- i2i (`sis_test.csv`): positives are images rated >= 2.5 with the query; queries without one are
  skipped; the same self-similarity rule.
- A rating counts for both members of a pair (as CxC's own merge script files it under both ids); a pair
  rated twice is positive if either rating reaches the threshold.

Intra-modal tasks need one vector per caption / image in a uni-modal space. Cross-attention scorers have
none, so for them t2t and i2i are reported as not defined, with the reason, never as a number.
Ranks are exact with tie bounds as in `harness.eval.metrics.eccv` (headline tie-pessimistic), in percent.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.core.errors import ItrbenchError
from harness.core.paths import ASSETS_DIR
from harness.eval.metrics.bootstrap import DEFAULT_RESAMPLES, QueryScores, summarize
from harness.eval.metrics.eccv import (
    I2T,
    KS,
    T2I,
    CocoTops,
    PositiveSets,
    best_positive,
    index_of,
    parallel_map,
    recall_from_counts,
    row_counts,
    spans,
    sweep,
    to_canonical,
    tops_family,
)
from harness.eval.metrics.ids import CocoTestIds, canonical_permutation, resolve_ids
from harness.eval.metrics.recall import check_matrix

ASSET_DIR = ASSETS_DIR / "cxc"
CSV_FILES = {"sits": "sits_test.csv", "sts": "sts_test.csv", "sis": "sis_test.csv"}
HEADERS = {"sits": ("caption", "image"), "sts": ("caption1", "caption2"), "sis": ("image1", "image2")}
THRESHOLDS = {"sits": 3.0, "sts": 3.0, "sis": 2.5}
N_IMAGES, N_CAPTIONS = 5000, 25000


class CxcError(ItrbenchError):
    """A CxC annotation file that cannot be read as expected."""


PREFIXES = {"caption": ("COCO_val2014:sentid:", ""), "image": ("COCO_val2014_", ".jpg")}


def _parse_ids(path: Path, column: list[str], kind: str) -> np.ndarray:
    """COCO ids from a CxC id column ('COCO_val2014:sentid:<id>' or 'COCO_val2014_<12 digits>.jpg')."""
    head, tail = PREFIXES[kind]
    lo, cut = len(head), -len(tail) if tail else None

    def ok(x: str) -> bool:
        digits = x[lo:cut]
        return x.startswith(head) and x.endswith(tail) and digits.isascii() and digits.isdigit() and len(digits) < 19

    for row, x in enumerate(column):
        if not ok(x):
            raise CxcError(f"{path}:{row + 2}: expected '{head}<id>{tail}', got '{x[:80]}'")
    return np.asarray([int(x[lo:cut]) for x in column], dtype=np.int64)


def read_cxc_csv(path: str | Path, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first ids, second ids, agg_score) of a CxC `<kind>_test.csv` (kind: sits, sts or sis)."""
    import pandas as pd

    path = Path(path)
    first, second = HEADERS[kind]
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CxcError(f"{path}: not a readable CSV file ({type(exc).__name__}: {str(exc).strip()[:160]})") from None
    if tuple(df.columns[:3]) != (first, second, "agg_score") or len(set(df.columns[:3])) != 3:
        raise CxcError(f"{path}: header {list(df.columns)}, expected '{first},{second},agg_score,...'")
    a = _parse_ids(path, df[first].tolist(), "image" if first.startswith("image") else "caption")
    b = _parse_ids(path, df[second].tolist(), "image" if second.startswith("image") else "caption")
    score = pd.to_numeric(df["agg_score"], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(score).any():
        row = int(np.flatnonzero(np.isnan(score))[0])
        raise CxcError(f"{path}:{row + 2}: agg_score '{df['agg_score'].iloc[row]}' is not a number")
    return a, b, score


@dataclass(frozen=True)
class CxcGroundTruth:
    """CxC positives in canonical (eccv_caption) index space."""

    i2t: PositiveSets  # image row -> caption columns
    t2i: PositiveSets  # caption column -> image rows
    t2t: PositiveSets  # caption -> captions (siblings + STS >= 3)
    i2i: PositiveSets  # image -> images (SIS >= 2.5)


def _symmetric(a: np.ndarray, b: np.ndarray, n: int) -> PositiveSets:
    return PositiveSets.from_pairs(np.concatenate([a, b]), np.concatenate([b, a]), n, n)


@lru_cache(maxsize=4)
def cxc_ground_truth(csv_dir: str | None = None) -> CxcGroundTruth:
    """Build the CxC positives from the three test CSVs in `csv_dir` (default: the bundled copies)."""
    d = Path(csv_dir) if csv_dir is not None else ASSET_DIR
    files = {k: d / v for k, v in CSV_FILES.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise CxcError(f"CxC annotation files not found: {', '.join(missing)}")
    cap, img, score = read_cxc_csv(files["sits"], "sits")
    keep = score >= THRESHOLDS["sits"]
    ci = index_of(cap[keep], "caption", str(files["sits"]))
    ii = index_of(img[keep], "image", str(files["sits"]))
    i2t = PositiveSets.from_pairs(ii, ci, N_IMAGES, N_CAPTIONS)
    t2i = PositiveSets.from_pairs(ci, ii, N_CAPTIONS, N_IMAGES)

    c1, c2, score = read_cxc_csv(files["sts"], "sts")
    keep = score >= THRESHOLDS["sts"]
    a = index_of(c1[keep], "caption", str(files["sts"]))
    b = index_of(c2[keep], "caption", str(files["sts"]))
    own = np.arange(N_CAPTIONS)
    sib_q = np.repeat(own, 5)
    sib_g = (own // 5 * 5)[:, None].repeat(5, 1).ravel() + np.tile(np.arange(5), N_CAPTIONS)
    not_self = sib_q != sib_g
    t2t = PositiveSets.from_pairs(np.concatenate([a, b, sib_q[not_self]]),
                                  np.concatenate([b, a, sib_g[not_self]]), N_CAPTIONS, N_CAPTIONS)

    i1, i2, score = read_cxc_csv(files["sis"], "sis")
    keep = score >= THRESHOLDS["sis"]
    i2i = _symmetric(index_of(i1[keep], "image", str(files["sis"])),
                     index_of(i2[keep], "image", str(files["sis"])), N_IMAGES)
    return CxcGroundTruth(i2t, t2i, t2t, i2i)


# ---------------------------------------------------------------------------------------------------
def intra_counts(emb: np.ndarray, pos: PositiveSets, queries: np.ndarray,
                 block: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For uni-modal retrieval with `emb @ emb.T` (self-similarity set to 0, as vse_infty does):
    per query, the items scoring > and >= its best positive, and how many positives tie at the best.

    The similarity matrix is never held whole: it is built and counted `block` rows at a time.
    """
    gt = np.zeros(len(queries), np.int64)
    ge = np.zeros(len(queries), np.int64)
    tied = np.zeros(len(queries), np.int64)

    def work(span: tuple[int, int]) -> None:
        a, b = span
        qs = queries[a:b]
        sims = emb[qs] @ emb.T
        sims[np.arange(len(qs)), qs] = 0
        _, g, starts = pos.flat(qs)
        local = np.repeat(np.arange(len(qs)), pos.sizes[qs])
        s = sims[local, g]
        best = np.maximum.reduceat(s, starts)
        tied[a:b] = np.add.reduceat((s == np.repeat(best, pos.sizes[qs])).astype(np.int64), starts)
        gt[a:b] = row_counts(sims > best[:, None])
        ge[a:b] = row_counts(sims >= best[:, None])

    parallel_map(work, spans(len(queries), block))
    return gt, ge, tied


def _check_embeddings(emb: np.ndarray, n: int, what: str) -> np.ndarray:
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise CxcError(f"CxC {what} embeddings: expected ({n}, dim), got shape {emb.shape}")
    if emb.dtype not in (np.float32, np.float64):
        emb = emb.astype(np.float32)
    if not np.isfinite(emb).all():
        raise CxcError(f"CxC {what} embeddings contain NaN or infinite values")
    return emb


def unimodal_reason(scoring: str, method: str = "this method") -> str | None:
    """Why CxC t2t / i2i is not defined for a method, or None when it is (embedding scorers)."""
    if scoring == "pairwise":
        return (f"{method} scores image-caption pairs by cross attention and has no single-vector uni-modal "
                "embedding space, so text-to-text and image-to-image retrieval are not defined for it")
    return None


def _family(direction: str, queries: np.ndarray, pess: dict, opt: dict) -> QueryScores:
    units = queries // 5 if direction in (T2I, "t2t") else queries
    return QueryScores(direction, "cxc", pess, opt, units=units, n_units=N_IMAGES)


def cxc_query_scores(sims: np.ndarray | None, ids: CocoTestIds, text_emb: np.ndarray | None = None,
                     image_emb: np.ndarray | None = None, *, ks=KS, gt: CxcGroundTruth | None = None,
                     tops: CocoTops | None = None) -> list[QueryScores]:
    """Per-query CxC R@K (percent) for the tasks whose inputs are given (matrix or a streamed evaluation's
    top lists / embeddings)."""
    gt = gt or cxc_ground_truth()
    rows, cols = canonical_permutation(ids)
    groups: list[QueryScores] = []
    if tops is not None:
        for direction, pos in ((I2T, gt.i2t), (T2I, gt.t2i)):
            groups.append(_family(direction, *tops_family(tops, pos, direction, ks)))
    if sims is not None:
        sims = to_canonical(check_matrix(sims, 5, "CxC similarity matrix"), ids)
        if sims.shape != (N_IMAGES, N_CAPTIONS):
            raise CxcError(f"CxC needs the COCO 5K 5000 x 25000 matrix, got {sims.shape}")
        thr = {}
        for direction, pos in ((I2T, gt.i2t), (T2I, gt.t2i)):
            q = pos.queries()
            full = np.full(pos.n_queries, np.inf, dtype=np.float64)
            best, tied = best_positive(sims, pos, direction, q)
            full[q] = best
            thr[direction] = (q, full, tied)
        swept = sweep(sims, thr[I2T][1].astype(sims.dtype), thr[T2I][1].astype(sims.dtype), 1,
                      np.zeros(0, np.int64))
        for direction, counts in ((I2T, swept.i2t), (T2I, swept.t2i)):
            q, _, tied = thr[direction]
            groups.append(_family(direction, q, *recall_from_counts(counts[0][q], counts[1][q], tied, ks)))
    for task, emb, n, perm, pos in (("t2t", text_emb, N_CAPTIONS, cols, gt.t2t),
                                    ("i2i", image_emb, N_IMAGES, rows, gt.i2i)):
        if emb is None:
            continue
        emb = _check_embeddings(emb, n, "text" if task == "t2t" else "image")
        if perm is not None:
            emb = emb[perm]
        q = pos.queries()
        c_gt, c_ge, tied = intra_counts(emb, pos, q)
        groups.append(_family(task, q, *recall_from_counts(c_gt, c_ge, tied, ks)))
    return groups


def cxc_protocol(sims: np.ndarray | None, ids: CocoTestIds | str | Path | None = None,
                 text_emb: np.ndarray | None = None, image_emb: np.ndarray | None = None, *,
                 scoring: str = "embedding", method: str = "this method", ks=KS,
                 bootstrap: int = DEFAULT_RESAMPLES, seed: int = 0, tops: CocoTops | None = None) -> dict:
    """CxC i2t / t2i from the COCO 5K matrix (or `tops`, a streamed evaluation's top lists, `sims` None), t2t /
    i2i from uni-modal embeddings, as a JSON-ready dict.

    `text_emb` (25000, D) and `image_emb` (5000, D) are in the data folder's caption / image order (like
    the matrix's columns / rows). With `scoring="pairwise"` (cross attention) or without embeddings, t2t
    and i2i are {"defined": false, "reason": ...}. Keys: "cxc_r1", "cxc_r5", "cxc_r10" per task, percent.
    """
    ids = resolve_ids(ids)
    reason = unimodal_reason(scoring, method)
    if reason is not None and (text_emb is not None or image_emb is not None):
        raise CxcError(f"{method} is a cross-attention scorer; it has no uni-modal embeddings to evaluate")
    groups = cxc_query_scores(sims, ids, text_emb, image_emb, ks=ks, tops=tops)
    out = {"protocol": "cxc", **summarize(groups, n=bootstrap, seed=seed)}
    for task, emb, what in (("t2t", text_emb, "text"), ("i2i", image_emb, "image")):
        if emb is None:
            out[task] = {"defined": False,
                         "reason": reason or f"no uni-modal {what} embeddings were given for {method}"}
    out["ids"] = ids.to_json()
    out["ground_truth"] = {
        "source": "Crisscrossed-Captions @7d6634b test CSVs (CC BY 4.0)",
        "i2t_t2i": "SITS agg_score >= 3; queries without a positive skipped",
        "t2t": "4 sibling COCO captions + STS agg_score >= 3; self-similarity set to 0 (vse_infty)",
        "i2i": "SIS agg_score >= 2.5; queries without a positive skipped; self-similarity set to 0",
    }
    return out

