"""Dataset-report sections for shortlist-and-rerank rows and for what each evaluation costs at scale.

`cascade_section`: every cascade row beside its exact row (same model, same checkpoint or seeds), with K, the
stage-1 source, the share of pairs scored, the stage-1 ceiling and the rsum delta where both rows have one.
`cost_section`: the measured cost of every row projected to 100K and 1M-image galleries (harness.eval.cost
states the model), and a log-log plot of time against gallery size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.eval.cost import GALLERIES, project, size_text, time_text
from harness.report.markdown import MISSING, escape, image, stat_text, table
from harness.report.plots import GallerySeries, time_vs_gallery
from harness.report.runs import RETRAINED, RunGroup, Stat, get_path

RERANK_TAG = re.compile(r"-rerank\d+-.*$")
PLOT_POINTS = 13  # gallery sizes on the plot, log-spaced from the measured size to 1M images


def exact_row(cascade: RunGroup, groups: Sequence[RunGroup]) -> RunGroup | None:
    """The exact row of the same model (method, variant, setting, source) as a cascade row."""
    tag = "" if cascade.kind == RETRAINED else RERANK_TAG.sub("", cascade.tag)
    for g in groups:
        if not g.cascade and (g.dataset, g.method, g.variant, g.setting, g.kind, g.tag) == \
                (cascade.dataset, cascade.method, cascade.variant, cascade.setting, cascade.kind, tag):
            return g
    return None


def _record(g: RunGroup, key: str) -> float | None:
    values = [get_path(r.metrics, f"cascade.{key}") for r in g.runs]
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return float(np.mean(nums)) if nums else None


def _ceiling(g: RunGroup, protocol: str) -> str:
    parts = []
    for d in ("i2t", "t2i"):
        s = g.stat(protocol, f"ceiling.{d}")
        parts.append(f"{d} {s.mean:.1f}%" if isinstance(s, Stat) else f"{d} {MISSING}")
    return ", ".join(parts)


def cascade_section(groups: Sequence[RunGroup], protocols: Sequence[str]) -> list[str]:
    """'## Shortlist and rerank': one line per cascade row and recall protocol it computed."""
    cascades = [g for g in groups if g.cascade]
    if not cascades:
        return []
    rows = []
    for g in cascades:
        exact = exact_row(g, groups)
        for protocol in protocols:
            if not g.computed(protocol):
                continue
            mine = g.stat(protocol, "rsum")
            ref = exact.stat(protocol, "rsum") if exact is not None else None
            delta = f"{mine.mean - ref.mean:+.1f}" if isinstance(mine, Stat) and isinstance(ref, Stat) else MISSING
            fraction = _record(g, "pairs_fraction")
            rows.append([escape(g.model), escape(g.source), f"`{protocol}`",
                         f"{100 * fraction:.2f}%" if fraction is not None else MISSING, _ceiling(g, protocol),
                         stat_text(mine), stat_text(ref), delta])
    return ["## Shortlist and rerank", "",
            "Cascade rows rerank each query's top-K candidates by a stage-1 (embedding) model's stored matrix with "
            "the row's own score; every other pair ranks below the candidates. *Ceiling*: queries whose positive "
            "is inside their shortlist. A value that needs ranks beyond the shortlist is *not defined: beyond the "
            "shortlist*. Delta: cascade rsum minus the exact row's (same model and checkpoint or seeds).", ""] + \
        table(["model", "reproduced by", "protocol", "pairs scored", "stage-1 ceiling", "rsum", "exact rsum",
               "delta rsum"], rows, ["l", "l", "l", "r", "l", "r", "r", "r"]) + [""]


def _measured(g: RunGroup) -> tuple[dict, list[int], int | None] | None:
    """(efficiency record, shape, K) of the row's first run with the measurements projections need."""
    for run in g.runs:
        eff, shape = run.metrics.get("efficiency") or {}, run.metrics.get("shape") or []
        if isinstance(eff.get("pairs_per_second"), (int, float)) and len(shape) == 2:
            k = get_path(run.metrics, "cascade.k")
            return eff, [int(shape[0]), int(shape[1])], int(k) if isinstance(k, int) else None
    return None


def cost_section(dataset: str, groups: Sequence[RunGroup], reports: Path) -> tuple[list[str], list[Path]]:
    """'## Cost at scale': measured cost, the projection to 100K / 1M images, and the time plot."""
    rows, series = [], []
    for g in groups:
        found = _measured(g)
        if found is None:
            continue
        eff, shape, k = found
        cells = [escape(g.model), escape(g.source), f"{eff.get('encode_ms_per_item', 0.0):.3f}",
                 f"{eff['pairs_per_second']:.3g}", _mb(eff.get("peak_host_mb")), _mb(eff.get("peak_gpu_mb"))]
        for n in GALLERIES:
            p = project(eff, shape, n, k)
            cells += [time_text(p.seconds), size_text(p.memory_bytes)] if p else [MISSING, MISSING]
        rows.append(cells)
        sizes = np.unique(np.geomspace(shape[0], GALLERIES[-1], PLOT_POINTS).astype(int))
        points = [(int(n), p.seconds) for n in sizes if (p := project(eff, shape, int(n), k)) is not None]
        series.append(GallerySeries(f"{g.model} ({g.source.split(' (')[0]})", points, cascade=k is not None,
                                    measured=(shape[0], project(eff, shape, shape[0], k).seconds)))
    if not rows:
        return [], []
    header = ["model", "reproduced by", "encode ms / item", "pairs / s", "peak host MB", "peak GPU MB"]
    for n in GALLERIES:
        header += [f"time at {_count(n)} images", f"result memory at {_count(n)}"]
    out = ["## Cost at scale", "",
           "Measured on this dataset's evaluation, projected to larger galleries with the same captions per image: "
           "encoding is linear in items; exact scoring is quadratic (every image x caption pair at the measured "
           "pairs/s) and keeps the dense float32 matrix (4 bytes a pair); a cascade scores K x (images + captions) "
           "pairs (linear in K and the gallery) plus stage 1's top-K scaled quadratically from its measured time, "
           "and keeps only its candidates (8 bytes each: index and score). The shortlister's own encoding is its "
           "own row. Projections are extrapolations of one measurement, not runs.", ""]
    out += table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2)) + [""]
    path = time_vs_gallery(series, f"{dataset}: evaluation time vs gallery size (projected)",
                           reports / "plots" / f"{dataset}-time-vs-gallery.png")
    if path is None:
        return out, []
    return out + [image(f"{dataset}: evaluation time vs gallery size", f"plots/{path.name}"), ""], [path]


def _count(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}K"


def _mb(value: object) -> str:
    return f"{float(value):.0f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING
