"""A cascade evaluation: shortlist each query's top-K by a stage-1 source, rerank exactly those pairs with the
evaluated method's `score`, and compute the protocols the shortlist allows.

Stage-1 sources (`Stage1`): a stored matrix of the same split (`--shortlist-from`), another (embedding)
model (`--shortlister METHOD[/VARIANT]`), or `self`: the evaluated model's own pooled embeddings
(`Adapter.shortlist_embeddings`; an embedding method's own encodings). The result is sparse
(`cascade.npz`: candidates and stage-2 scores per query), never a dense matrix. Protocols: recall, COCO 5K,
Flickr30K 1K and COCO 1K from the candidates (R@k exact where defined, `harness.eval.cascade_metrics`);
the others (ECCV, CxC, STS, image retrieval) need full rankings or a uni-modal space and are "not defined".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.api.adapter import Adapter
from harness.eval.cascade_metrics import BEYOND, cascade_fold_recall, cascade_recall
from harness.eval.evaluation import EvalSettings, EvaluationInterrupted, Hooks, SplitSpec, peak_memory, split_data
from harness.eval.protocols import PROTOCOLS, EvalInputs, not_defined, wanted
from harness.eval.rerank import DEFAULT_PAIR_TILE, score_pairs
from harness.eval.scoring import encode_images, encode_texts, eval_mode
from harness.eval.shortlist import (
    CascadeResult,
    Shortlist,
    ShortlistError,
    build_shortlist,
    candidate_pairs,
    check_k,
    shortlist_from_matrix,
    vector_blocks,
)

RECALL_PROTOCOLS = ("recall", "coco5k", "f30k1k")


@dataclass(frozen=True)
class Stage1:
    """Where a cascade's shortlist comes from: `kind` matrix | model | self, with the matrix path or model."""

    kind: str
    label: str  # how reports name it: "ESA", "matrix esa.npy", "self"
    matrix: Path | None = None
    model: Adapter | None = None


@dataclass
class CascadeEvaluation:
    result: CascadeResult
    image_of_caption: np.ndarray
    metrics: dict[str, Any]
    efficiency: dict[str, Any]


def model_blocks(adapter: Adapter, images: Any, captions: Sequence[str], settings: EvalSettings):
    """Stage-1 blocks of an embedding model's `score` over its encodings (encoded once)."""
    img = encode_images(adapter, images, batch_size=settings.batch_size, precision=settings.precision)
    txt = encode_texts(adapter, captions, batch_size=settings.batch_size, precision=settings.precision)

    def block(a: int, b: int, c: int, d: int) -> torch.Tensor:
        with eval_mode(adapter, settings.precision):
            return adapter.score(img[a:b].to(adapter.device), txt[c:d].to(adapter.device)).to("cpu", torch.float32)
    return block


def own_blocks(adapter: Adapter, img: Any, txt: Any, settings: EvalSettings):
    """Stage-1 blocks of the evaluated model itself: its pooled embeddings, or its encodings for an embedding
    method. A method with neither is refused, naming the other stage-1 sources."""
    with eval_mode(adapter, settings.precision):
        pooled = adapter.shortlist_embeddings(img, txt)
    if pooled is not None:
        return vector_blocks(pooled[0].to("cpu"), pooled[1].to("cpu"))
    if adapter.scoring == "embedding":
        def block(a: int, b: int, c: int, d: int) -> torch.Tensor:
            with eval_mode(adapter, settings.precision):
                return adapter.score(img[a:b].to(adapter.device), txt[c:d].to(adapter.device)).to("cpu",
                                                                                                  torch.float32)
        return block
    raise ShortlistError(f"--shortlister self: {adapter.method} has no pooled embeddings of its own (it scores by "
                         "cross attention); use --shortlister esa (an embedding method) or --shortlist-from SIMS.npy")


def shortlist_for(stage1: Stage1, k: int, images: Any, captions: Sequence[str], settings: EvalSettings,
                  own: tuple[Adapter, Any, Any] | None = None) -> Shortlist:
    shape = (len(images), len(captions))
    if stage1.kind == "matrix":
        assert stage1.matrix is not None
        return shortlist_from_matrix(stage1.matrix, shape, k, stage1.label)
    if stage1.kind == "model":
        assert stage1.model is not None
        return build_shortlist(model_blocks(stage1.model, images, captions, settings), *shape, k, stage1.label)
    assert own is not None
    return build_shortlist(own_blocks(*own, settings), *shape, k, stage1.label)


def evaluate_cascade(members: Sequence[Adapter], spec: SplitSpec, settings: EvalSettings, stage1: Stage1, k: int,
                     folder: Path | None = None, hooks: Hooks | None = None, pair_tile: int | None = None
                     ) -> CascadeEvaluation:
    """Shortlist, rerank with every member (an ensemble's stage-2 score is the members' mean), save
    `cascade.npz` (and the mapping) in `folder`, and compute the protocols the shortlist allows."""
    hooks = hooks or Hooks()
    k = check_k(k)
    t_start = time.perf_counter()
    images, captions, owner = split_data(members[0], spec)
    encoded: list[tuple[Any, Any]] = []
    t0 = time.perf_counter()
    for adapter in members:
        encoded.append((encode_images(adapter, images, batch_size=settings.batch_size, precision=settings.precision),
                        encode_texts(adapter, captions, batch_size=settings.batch_size, precision=settings.precision)))
    t1 = time.perf_counter()
    hooks.progress("shortlist", 0, 1, f"stage 1: top-{k} of {stage1.label}")
    shortlist = shortlist_for(stage1, k, images, captions, settings, (members[0], *encoded[0]))
    indptr, cols = candidate_pairs(shortlist)
    t2 = time.perf_counter()
    total = 0.0
    for m, (adapter, (img, txt)) in enumerate(zip(members, encoded, strict=True)):
        def on_tile(done: int, n: int) -> None:
            hooks.progress("reranking", done, n, f"pair tiles {done}/{n}")
            hooks.on_tile()
            if hooks.should_stop and hooks.should_stop() and done < n:
                raise EvaluationInterrupted(f"reranking stopped after {done}/{n} pair tiles (kept in {folder})")

        cache = folder / "work" / f"pairs_{m}.h5" if folder is not None else None
        total = total + score_pairs(adapter, img, txt, indptr, cols, pair_tile=pair_tile, cache=cache,
                                    on_tile=on_tile, precision=settings.precision).astype(np.float64)
    scores = (total / len(members)).astype(np.float32)
    t3 = time.perf_counter()
    result = CascadeResult.of(shortlist, indptr, cols, scores)
    if folder is not None:
        from harness.core.results import save_npy
        from harness.data.matrices import OWNER

        result.save(folder / "cascade.npz")
        save_npy(folder / OWNER, owner)
    metrics = cascade_protocols(result, owner, spec, settings)
    device = str(members[0].device)
    peak, kind = peak_memory(device)
    wall = time.perf_counter() - t_start
    eff = {"variant": members[0].variant, "encode_seconds": t1 - t0, "stage1_seconds": t2 - t1,
           "scoring_seconds": t3 - t2, "pairs_scored": result.pairs_scored, "pairs_total": result.pairs_total,
           "pairs_per_second": result.pairs_scored * len(members) / max(t3 - t2, 1e-9),
           "pair_tile": int(pair_tile or DEFAULT_PAIR_TILE[members[0].scoring]),
           "eval_wall_seconds": wall, "peak_memory_mb": peak, "peak_memory_kind": kind, "device": device,
           "processes": 1, "precision": settings.precision,
           "gpu_hours": wall / 3600.0 if device.startswith("cuda") else 0.0}
    return CascadeEvaluation(result, owner, metrics, eff)


def cascade_protocols(result: CascadeResult, owner: np.ndarray, spec: SplitSpec,
                      settings: EvalSettings) -> dict[str, Any]:
    """{protocol: result or not defined} of a cascade; applicability is the protocol table's own rule."""
    shape_only = np.broadcast_to(np.float32(0), result.shape)  # the rules read the shape, never the scores
    inputs = EvalInputs(sims=shape_only, image_of_caption=owner, dataset=spec.dataset, split=spec.split,
                        test_split=spec.test_split, data_root=spec.data_root, bootstrap=settings.bootstrap)
    out: dict[str, Any] = {}
    for name in wanted(spec.protocols):
        proto = PROTOCOLS[name]
        if name not in (*RECALL_PROTOCOLS, "coco1k"):
            out[name] = not_defined(f"{proto.title} needs full rankings or a uni-modal space; a cascade ranks only "
                                    f"its top-{result.k} shortlist ({BEYOND})")
            continue
        reason = proto.applies(inputs)
        if reason is not None:
            out[name] = not_defined(reason)
        elif name == "coco1k":
            out[name] = cascade_fold_recall(result, bootstrap=settings.bootstrap)
        else:
            out[name] = cascade_recall(result, owner, bootstrap=settings.bootstrap)
    return out
