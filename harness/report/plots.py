"""PNG plots for the reports (matplotlib, Agg, no pyplot state): effectiveness vs efficiency, and
reproduced vs reported numbers, training curves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.results import atomic_path


@dataclass(frozen=True)
class EffPoint:
    label: str
    seconds: float
    rsum: float
    rsum_std: float | None = None


@dataclass(frozen=True)
class RepPoint:
    metric: str  # "rsum" goes to its own panel (its scale is ~5x the recalls')
    reported: float
    reproduced: float
    interval: tuple[float, float] | None
    kind: str  # official / retrained


KIND_STYLE = {"official": ("tab:blue", "o"), "retrained": ("tab:orange", "s")}


def _figure(width: float, height: float, panels: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, list(axes)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def effectiveness_vs_efficiency(points: Sequence[EffPoint], protocol: str, title: str, path: Path) -> Path | None:
    """rsum against full-matrix scoring time (log x); one labelled point per model row."""
    points = [p for p in points if p.seconds > 0]
    if not points:
        return None
    fig, (ax,) = _figure(9.0, 4.6)
    markers = "osD^v<>ph*"
    for i, p in enumerate(points):
        ax.errorbar([p.seconds], [p.rsum], yerr=None if p.rsum_std is None else [p.rsum_std], fmt=markers[i % 10],
                    capsize=3, ms=6, label=p.label)
    ax.set_xscale("log")
    lo, hi = min(p.seconds for p in points), max(p.seconds for p in points)
    ax.set_xlim(lo / 2.0, hi * 2.0)
    ax.set_xlabel("scoring time for the full matrix (s, log scale)")
    ax.set_ylabel(f"{protocol} rsum")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return _save(fig, path)


def reproduced_vs_reported(points: Sequence[RepPoint], title: str, path: Path) -> Path | None:
    """Reproduced against reported numbers with the line y = x; error bars are the reproduced intervals."""
    if not points:
        return None
    panels = [("recall and other metrics", [p for p in points if p.metric != "rsum"]),
              ("rsum", [p for p in points if p.metric == "rsum"])]
    panels = [pn for pn in panels if pn[1]]
    fig, axes = _figure(5.2 * len(panels), 4.8, len(panels))
    for ax, (name, pts) in zip(axes, panels):
        lo = min(min(p.reported, p.reproduced) for p in pts)
        hi = max(max(p.reported, p.reproduced) for p in pts)
        pad = max(1.0, 0.05 * (hi - lo))
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="y = x")
        for kind in sorted({p.kind for p in pts}):
            color, marker = KIND_STYLE.get(kind, ("tab:green", "^"))
            sel = [p for p in pts if p.kind == kind]
            yerr = [[max(0.0, p.reproduced - p.interval[0]) if p.interval else 0.0 for p in sel],
                    [max(0.0, p.interval[1] - p.reproduced) if p.interval else 0.0 for p in sel]]
            ax.errorbar([p.reported for p in sel], [p.reproduced for p in sel], yerr=yerr, fmt=marker, color=color,
                        ms=4, capsize=2, lw=0.8, label=kind)
        ax.set_xlabel("reported")
        ax.set_ylabel("reproduced")
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


@dataclass(frozen=True)
class CurveSeries:
    """One training run: loss per optimizer step and validation rsum per epoch (from stored results)."""

    label: str
    steps: Sequence[int]  # global optimizer step of each loss
    losses: Sequence[float]
    epochs: Sequence[int]
    val_rsums: Sequence[float]
    collapsed_at_epoch: int | None = None


def training_curves(series: Sequence[CurveSeries], title: str, path: Path, chance: float | None = None) -> Path | None:
    """Two panels: training loss per step (log y) and validation rsum per epoch, one line per run; a
    collapsed run's epoch is marked with a red x, the chance rsum is a dashed line."""
    series = [s for s in series if s.losses or s.val_rsums]
    if not series:
        return None
    fig, (loss_ax, val_ax) = _figure(10.0, 3.8, 2)
    for s in series:
        if s.losses:
            loss_ax.plot(list(s.steps), list(s.losses), lw=0.8, label=s.label)
        if s.val_rsums:
            val_ax.plot(list(s.epochs), list(s.val_rsums), marker="o", ms=3, label=s.label)
            if s.collapsed_at_epoch is not None and s.collapsed_at_epoch in s.epochs:
                y = s.val_rsums[list(s.epochs).index(s.collapsed_at_epoch)]
                val_ax.plot([s.collapsed_at_epoch], [y], "x", color="red", ms=9, mew=2)
    if any(v > 0 for s in series for v in s.losses):
        loss_ax.set_yscale("log")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("training loss")
    if chance is not None:
        val_ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.1f})")
    val_ax.set_xlabel("epoch")
    val_ax.set_ylabel("validation rsum")
    for ax in (loss_ax, val_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


@dataclass(frozen=True)
class GallerySeries:
    label: str
    points: Sequence[tuple[int, float]]  # (images in the gallery, projected seconds)
    cascade: bool = False
    measured: tuple[int, float] | None = None  # the measured evaluation's (images, seconds)


def time_vs_gallery(series: Sequence[GallerySeries], title: str, path: Path) -> Path | None:
    """Projected evaluation time against gallery size, log-log; exact rows solid, cascades dashed, the measured
    size marked."""
    series = [s for s in series if any(t > 0 for _, t in s.points)]
    if not series:
        return None
    fig, (ax,) = _figure(9.0, 4.8)
    for s in series:
        pts = [(n, t) for n, t in s.points if t > 0]
        line, = ax.plot([n for n, _ in pts], [t for _, t in pts], ls="--" if s.cascade else "-", lw=1.4,
                        label=s.label)
        if s.measured is not None and s.measured[1] > 0:
            ax.plot([s.measured[0]], [s.measured[1]], "o", color=line.get_color(), ms=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("images in the gallery (log scale; captions per image as measured)")
    ax.set_ylabel("evaluation time (s, log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return _save(fig, path)
