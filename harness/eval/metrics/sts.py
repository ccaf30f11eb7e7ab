"""Semantic textual similarity (STS12-16, STS-B, SICK-R) with a method's text embeddings.

What CUSA's `evaluation_sts.py` reports through SimCSE's SentEval, computed directly:

- the similarity of a pair is the cosine of the two sentence embeddings (SentEval's default
  `nan_to_num(cosine(nan_to_num(u), nan_to_num(v)))`), in float64;
- STS12-16: SentEval's "all" aggregate, one Spearman / Pearson correlation over the concatenated pairs of
  every subset of the year (the per-subset values and the "mean" / "wmean" aggregates are kept too);
- STS-B and SICK-R: the correlation on the test split (unsupervised: cosine, no regressor);
- values are correlation x 100; `avg` is CUSA's: the mean of the 7 Spearman values each formatted with
  "%.2f", itself formatted with "%.2f" (reported only when all 7 tasks were evaluated).

`embed` is any callable from a list of sentences to an (n, dim) array; each distinct sentence is embedded
once, in batches of similar length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from harness.data.senteval import TASK_KEYS, TASKS, StsPairs, load_task

Embed = Callable[[list[str]], np.ndarray]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity as SentEval computes it (NaN-safe), in float64."""
    a = np.nan_to_num(np.asarray(a, dtype=np.float64))
    b = np.nan_to_num(np.asarray(b, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("ij,ij->i", a, b) / np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    return np.nan_to_num(cos)


def embed_unique(embed: Embed, sentences: Sequence[str], batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Embed each distinct sentence once; batches group sentences of similar length."""
    unique = sorted(set(sentences), key=lambda s: (len(s.split()), s))
    size = batch_size or max(1, len(unique))
    out: dict[str, np.ndarray] = {}
    for a in range(0, len(unique), size):
        chunk = unique[a:a + size]
        vecs = np.asarray(embed(list(chunk)))
        if vecs.ndim != 2 or vecs.shape[0] != len(chunk):
            raise ValueError(f"the embedding function returned shape {vecs.shape} for {len(chunk)} sentences; "
                             "expected (sentences, dim)")
        out.update(zip(chunk, vecs))
    return out


def _correlations(sys_scores: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    return {"spearman": float(spearmanr(sys_scores, gold)[0]), "pearson": float(pearsonr(sys_scores, gold)[0])}


def score_pairs(pairs: StsPairs, vectors: dict[str, np.ndarray]) -> np.ndarray:
    left = np.stack([vectors[s] for s in pairs.left])
    right = np.stack([vectors[s] for s in pairs.right])
    return cosine_rows(left, right)


def evaluate_task(task: str, subsets: list[StsPairs], vectors: dict[str, np.ndarray]) -> dict:
    """Correlations of one task: per subset, and for STS12-16 the all / mean / wmean aggregates."""
    per = {}
    sys_all, gold_all = [], []
    for pairs in subsets:
        sys_scores = score_pairs(pairs, vectors)
        per[pairs.name] = {**_correlations(sys_scores, pairs.gold), "n": len(pairs)}
        sys_all.append(sys_scores)
        gold_all.append(pairs.gold)
    if task in ("STSBenchmark", "SICKRelatedness"):
        only = per["test"]
        return {"spearman": only["spearman"], "pearson": only["pearson"], "n": only["n"], "subsets": per}
    weights = np.asarray([p["n"] for p in per.values()], dtype=np.float64)
    agg = {}
    for kind in ("spearman", "pearson"):
        vals = np.asarray([p[kind] for p in per.values()])
        agg[kind] = {"all": _correlations(np.concatenate(sys_all), np.concatenate(gold_all))[kind],
                     "mean": float(vals.mean()), "wmean": float(np.average(vals, weights=weights))}
    return {"spearman": agg["spearman"]["all"], "pearson": agg["pearson"]["all"], "n": int(weights.sum()),
            "subsets": per, "aggregates": agg}


def cusa_average(values: Sequence[float]) -> float:
    """CUSA's Avg.: each value formatted "%.2f", averaged, the mean formatted "%.2f" again."""
    rounded = [float(f"{v:.2f}") for v in values]
    return float(f"{sum(rounded) / len(rounded):.2f}")


def sts_evaluate(embed: Embed, root: str | Path, tasks: Sequence[str] = TASKS,
                 batch_size: int | None = None) -> dict:
    """STS protocol of a text embedding function on SentEval data under `root`, as a JSON-ready dict.

    Returns {"protocol": "sts", "spearman": {sts12, ..., stsb, sickr, avg}, "pearson": {...}, "n_pairs",
    "details": {key: per-subset and aggregate correlations}}; correlations x 100.
    `batch_size=None` hands all distinct sentences to `embed` in one call.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown STS task(s) {unknown}; valid: {', '.join(TASKS)}")
    data = {t: load_task(root, t) for t in tasks}
    sentences = [s for subsets in data.values() for p in subsets for s in (*p.left, *p.right)]
    vectors = embed_unique(embed, sentences, batch_size)
    out: dict = {"protocol": "sts", "spearman": {}, "pearson": {}, "n_pairs": {}, "details": {}}
    for task, subsets in data.items():
        res = evaluate_task(task, subsets, vectors)
        key = TASK_KEYS[task]
        out["spearman"][key] = 100.0 * res["spearman"]
        out["pearson"][key] = 100.0 * res["pearson"]
        out["n_pairs"][key] = res["n"]
        out["details"][key] = _percent(res)
    if all(t in data for t in TASKS):
        for kind in ("spearman", "pearson"):
            out[kind]["avg"] = cusa_average([out[kind][TASK_KEYS[t]] for t in TASKS])
    out["aggregation"] = ("STS12-16: SentEval 'all' (one correlation over all subsets); STS-B, SICK-R: test "
                          "split; x100; avg = CUSA's mean of the seven '%.2f'-formatted values")
    return out


def _percent(res: dict) -> dict:
    out = {"subsets": {name: {"spearman": 100.0 * v["spearman"], "pearson": 100.0 * v["pearson"], "n": v["n"]}
                       for name, v in res["subsets"].items()}}
    if "aggregates" in res:
        out["aggregates"] = {kind: {k: 100.0 * v for k, v in agg.items()} for kind, agg in res["aggregates"].items()}
    return out
