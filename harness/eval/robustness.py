"""Robustness passes: recall after perturbing one side, its drop from clean, and a summary.

A pass reuses the clean evaluation's encodings and re-encodes only the perturbed side: a text perturbation
costs one caption encoding (and a re-scoring against the clean image encodings), an image corruption one
image encoding. Pairwise (cross-attention) methods re-score every tile, as their clean evaluation does.

Per perturbation the record holds recall in both directions, the drop in points from clean and the relative
drop of rsum; the summary (per modality and over all) is the mean relative drop of rsum over perturbations
and Qiu et al.'s MultiModal Impact score (MMI: the mean over perturbations of the mean relative drop of the
six R@K). A perturbation that cannot apply is `{"defined": false, "reason": ...}`, never a fake number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.api.adapter import Adapter
from harness.data.cusa_json import load_image
from harness.eval.metrics.recall import full_recall
from harness.eval.perturb.image import IMAGE_LEVELS, CorruptedImages
from harness.eval.perturb.spec import Perturbation, spec_text
from harness.eval.perturb.text import TEXT_PERTURBATIONS, PerturbationUndefined, perturb_captions
from harness.eval.protocols import not_defined
from harness.eval.scoring import DEFAULT_TILES, encode_images, encode_texts, score_blocks

RECALLS = ("i2t.r1", "i2t.r5", "i2t.r10", "t2i.r1", "t2i.r5", "t2i.r10")
PRECOMPUTED = "the features are precomputed (a region-feature method reads no pixels to corrupt)"


@dataclass(frozen=True)
class RobustnessRequest:
    """What a robustness pass runs: the perturbations (parsed --perturb) and the seed of their generators."""

    perturbations: tuple[Perturbation, ...]
    seed: int = 0

    @property
    def spec(self) -> str:
        return spec_text(self.perturbations)


def recall_summary(sims: np.ndarray, owner: np.ndarray) -> dict[str, Any]:
    """R@1/5/10 both directions and rsum of a full matrix (no intervals: a pass compares point values)."""
    r = full_recall(sims, image_of_caption=owner)
    return {"i2t": {k: r["i2t"][k] for k in ("r1", "r5", "r10")},
            "t2i": {k: r["t2i"][k] for k in ("r1", "r5", "r10")}, "rsum": r["rsum"]}


def _value(rec: dict[str, Any], key: str) -> float:
    side, _, k = key.partition(".")
    return float(rec[side][k]) if k else float(rec[side])


def compare(clean: dict[str, Any], perturbed: dict[str, Any]) -> dict[str, Any]:
    """Drops (clean - perturbed, in points), rsum's relative drop and the perturbation's MMI term."""
    drop = {k: _value(clean, k) - _value(perturbed, k) for k in (*RECALLS, "rsum")}
    rel = [drop[k] / _value(clean, k) for k in RECALLS if _value(clean, k) > 0]
    c = _value(clean, "rsum")
    return {"drop": drop, "relative_drop": drop["rsum"] / c if c > 0 else 0.0,
            "mmi": float(np.mean(rel)) if rel else 0.0}


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean relative drop and MMI per modality and over all defined perturbations."""
    out: dict[str, Any] = {}
    for group in ("text", "image", "all"):
        rows = {k: r for k, r in results.items() if r.get("defined", True) and group in ("all", r["modality"])}
        if not rows:
            continue
        worst = max(sorted(rows), key=lambda k: rows[k]["relative_drop"])
        out[group] = {"perturbations": len(rows),
                      "mean_relative_drop": float(np.mean([r["relative_drop"] for r in rows.values()])),
                      "mmi": float(np.mean([r["mmi"] for r in rows.values()])), "worst": worst}
    return out


def image_files(images: Any) -> tuple[list[Any], Callable[[Any], Any]] | None:
    """(paths, evaluation transform) of a split read from image files (`PixelImages`), else None."""
    paths, transform = getattr(images, "paths", None), getattr(images, "transform", None)
    return (list(paths), transform) if paths is not None and callable(transform) else None


def robustness_pass(adapter: Adapter, images: Any, captions: Sequence[str], owner: np.ndarray, *,
                    clean_images: Any, clean_texts: Any, clean_sims: np.ndarray, request: RobustnessRequest,
                    batch_size: int = 128, precision: str = "fp32", tiles: tuple[int, int] | None = None,
                    progress: Callable[[str, float, float, str], None] | None = None) -> dict[str, Any]:
    """Every requested perturbation of one model's evaluation, with the clean recall and a summary."""
    clean = recall_summary(clean_sims, owner)
    tiles = tiles or DEFAULT_TILES[adapter.scoring]
    files = image_files(images)
    results: dict[str, dict[str, Any]] = {}
    for n, p in enumerate(request.perturbations):
        if progress:
            progress("robustness", n, len(request.perturbations), p.key)
        head = {"name": p.name, "severity": p.severity, "modality": p.modality,
                "level": TEXT_PERTURBATIONS[p.name].level if p.modality == "text" else IMAGE_LEVELS[p.name]}
        if p.modality == "text":
            try:
                perturbed = perturb_captions(captions, p.name, p.severity, request.seed)
            except PerturbationUndefined as exc:
                results[p.key] = {**head, **not_defined(str(exc))}
                continue
            img, txt = clean_images, encode_texts(adapter, perturbed, batch_size, precision=precision)
        elif adapter.image_input != "pixels":
            results[p.key] = {**head, **not_defined(PRECOMPUTED)}
            continue
        elif files is None:
            results[p.key] = {**head, **not_defined("the split's images are not image files")}
            continue
        else:
            view = CorruptedImages(files[0], files[1], p.name, p.severity, request.seed, load_image)
            img, txt = encode_images(adapter, view, batch_size, precision=precision), clean_texts
        sims = score_blocks(adapter, img, txt, image_tile=tiles[0], caption_tile=tiles[1], precision=precision)
        rec = recall_summary(sims, owner)
        results[p.key] = {**head, **rec, **compare(clean, rec)}
    return {"seed": request.seed, "spec": request.spec, "clean": clean, "perturbations": results,
            "summary": summarise(results)}


def ensemble_robustness(request: RobustnessRequest, members: int) -> dict[str, Any]:
    """The record of a pass asked of an ensemble (a pass measures one model)."""
    return {"seed": request.seed, "spec": request.spec,
            **not_defined(f"robustness is measured on one model; this evaluation averages {members} models")}
