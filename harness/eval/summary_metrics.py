"""Protocols of a streamed evaluation: computed from its rank summary (`harness.eval.streaming.RankSummary`)
where the summary holds what they need, else "not defined" with the reason.

Full-split recall (and COCO 5K / Flickr30K 1K, which are full-split recall at their shape) and COCO 1K come from
the per-query counts and equal the dense path's values exactly, tie bounds and bootstrap intervals included.
ECCV Caption and CxC (i2t / t2i) come from the COCO 5K top lists a streamed COCO 5K evaluation keeps
(`harness.eval.streaming_coco`), with the same values; only PMRP, which ranks thousands of items per query, is not
available without the matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from harness.eval.metrics.recall import QueryRanks, fold_recall_from_ranks, recall_from_ranks

FULL = ("recall", "coco5k", "f30k1k")
FOLDED = ("coco1k",)
COCO_LISTS = ("eccv", "cxc")  # from the COCO 5K top lists a streamed COCO 5K evaluation keeps


def _query_ranks(pair: tuple[Any, Any]) -> QueryRanks:
    return QueryRanks(optimistic=pair[0], pessimistic=pair[1])


def from_summary(name: str, title: str, inputs: Any,
                 compute: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The protocol `name` of an evaluation without a stored matrix (`inputs.ranks` holds its summary);
    `compute` is the protocol's own computation, which ECCV Caption and CxC run on the summary's top lists."""
    from harness.eval.protocols import not_defined

    summary = inputs.ranks
    if summary is None:
        return not_defined(f"{title} needs the similarity matrix or its rank summary; neither was kept")
    if name in FULL:
        i2t, t2i = summary.ranks()
        return recall_from_ranks(_query_ranks(i2t), _query_ranks(t2i), summary.image_of_caption, inputs.bootstrap)
    if name in FOLDED:
        if summary.folds != 5:
            return not_defined(f"{title} needs fold counts; this rank summary was streamed with "
                               f"{summary.folds} fold(s)")
        (i_opt, i_pes), (t_opt, t_pes) = summary.ranks(fold=True)
        rf, cf = len(i_opt) // 5, len(t_opt) // 5
        per_fold = [(QueryRanks(i_opt[k * rf:(k + 1) * rf], i_pes[k * rf:(k + 1) * rf]),
                     QueryRanks(t_opt[k * cf:(k + 1) * cf], t_pes[k * cf:(k + 1) * cf])) for k in range(5)]
        return fold_recall_from_ranks(per_fold, 5, inputs.bootstrap)
    if name in COCO_LISTS:
        if summary.coco is None:
            return not_defined(f"{title} needs the COCO 5K top lists, which this rank summary does not hold (it "
                               "was streamed without ECCV Caption / CxC); re-run the evaluation")
        if compute is None:
            raise ValueError(f"{title}: from_summary needs the protocol's computation")
        return compute(inputs)
    return not_defined(f"{title} needs the full similarity matrix (every positive's rank among all items), which "
                       "this streamed evaluation did not store; re-run with --store-matrix always")


def coco_collector(inputs: Any, names: Iterable[str], n_img: int, n_cap: int, table: Any = None) -> Any:
    """The collector of ECCV Caption / CxC top lists (`harness.eval.streaming_coco`) for a streamed evaluation
    that runs either of them where it applies (`table`: the protocol table); None otherwise."""
    from harness.eval.protocols import coco_ids_of, protocol
    from harness.eval.streaming_coco import CocoTopsCollector

    if not any(n in COCO_LISTS and protocol(n, table).applies(inputs) is None for n in names):
        return None
    return CocoTopsCollector(n_img, n_cap, coco_ids_of(inputs), inputs.coco_columns)
