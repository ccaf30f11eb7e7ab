"""The robustness section of a dataset report: the relative rsum drop of each model under each perturbation
(robustness jobs, `run ... --perturb`), the summary per model, "not defined" reasons, and a bar plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.core.results import JobResult
from harness.report.markdown import escape, image
from harness.report.plots import _figure, _save

ROBUST = "robust"


def robustness_runs(jobs: Mapping[str, JobResult], dataset: str) -> list[tuple[str, dict[str, Any]]]:
    """(row label, robustness record) of every finished robustness job on `dataset`, by job name."""
    out = []
    for name in sorted(jobs):
        res = jobs[name]
        job = res.job
        record = res.metrics.get("robustness")
        if job.stage != ROBUST or job.dataset != dataset or not isinstance(record, Mapping):
            continue
        source = job.source or ""
        out.append((f"{job.method}/{job.variant} ({source}, perturbation seed {record.get('seed', 0)})",
                    dict(record)))
    return out


def _cell(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return "–"
    if row.get("defined") is False:
        return "*not defined*"
    return f"{100 * row['relative_drop']:.1f}%"


def robustness_plot(runs: Sequence[tuple[str, dict[str, Any]]], keys: Sequence[str], title: str,
                    path: Path) -> Path | None:
    """Horizontal bars: relative rsum drop per perturbation, one bar colour per model."""
    series = [(label, [r["perturbations"].get(k) for k in keys]) for label, r in runs]
    if not any(v is not None and v.get("defined", True) for _, vals in series for v in vals):
        return None
    fig, (ax,) = _figure(9.0, max(2.5, 0.32 * len(keys) * max(1, len(series)) + 1.2))
    height = 0.8 / max(1, len(series))
    for s, (label, vals) in enumerate(series):
        ys = [i + s * height for i in range(len(keys))]
        xs = [100 * v["relative_drop"] if v is not None and v.get("defined", True) else 0.0 for v in vals]
        ax.barh(ys, xs, height=height, label=label)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(keys))], labels=list(keys), fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0.0, color="0.3", lw=0.8)
    ax.set_xlabel("relative rsum drop from clean (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return _save(fig, path)


def robustness_section(dataset: str, jobs: Mapping[str, JobResult], reports: Path) -> tuple[list[str], list[Path]]:
    """Markdown lines and plots of the section (nothing when no robustness job finished on `dataset`)."""
    runs = robustness_runs(jobs, dataset)
    if not runs:
        return [], []
    keys = list(dict.fromkeys(k for _, r in runs for k in r.get("perturbations", {})))
    out = ["## Robustness", "",
           "Relative rsum drop from the clean matrix under each perturbation (`run ... --perturb`; "
           "docs/robustness.md): severity after `@`, 1-5. Mean: the mean relative drop over the defined "
           "perturbations; MMI: Qiu et al.'s MultiModal Impact score (mean relative drop of the six R@K).", ""]
    out += ["| model | clean rsum | " + " | ".join(f"`{escape(k)}`" for k in keys) + " | mean | MMI |",
            "|---|---:|" + "---:|" * len(keys) + "---:|---:|"]
    reasons: dict[str, set[str]] = {}
    for label, r in runs:
        rows = r.get("perturbations", {})
        summary = r.get("summary", {}).get("all")
        mean = f"{100 * summary['mean_relative_drop']:.1f}%" if summary else "–"
        mmi = f"{100 * summary['mmi']:.1f}%" if summary else "–"
        clean = r.get("clean", {}).get("rsum")
        out.append(f"| {escape(label)} | {clean:.1f} | " if clean is not None else f"| {escape(label)} | – | ")
        out[-1] += " | ".join(_cell(rows.get(k)) for k in keys) + f" | {mean} | {mmi} |"
        for k, row in rows.items():
            if row.get("defined") is False:
                reasons.setdefault(str(row.get("reason", "")), set()).add(f"{label}: {k}")
    out.append("")
    for reason, where in sorted(reasons.items()):
        out.append(f"*not defined*: {escape(reason)} ({len(where)} cell(s)).")
    if reasons:
        out.append("")
    path = robustness_plot(runs, keys, f"{dataset}: relative rsum drop under perturbations",
                           reports / "plots" / f"{dataset}-robustness.png")
    if path is None:
        return out, []
    return out + [image(f"{dataset}: robustness", f"plots/{path.name}"), ""], [path]
