"""What the reports show of training: the health flag of retrained runs (dataset reports) and their loss and
validation curves (paper reports), read from the stored train jobs (metrics.json history, loss_curve.tsv)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.core.results import JobResult
from harness.report.markdown import MISSING, escape, image, table
from harness.report.plots import CurveSeries, training_curves
from harness.report.runs import RETRAINED, RunGroup

CURVE = "loss_curve.tsv"


def train_jobs_of(run: JobResult, jobs: Mapping[str, JobResult]) -> list[JobResult] | None:
    """The training job(s) behind an evaluation (one per ensemble member); None when unknown."""
    names = [run.job.train_job] if run.job.train_job else []
    for member in run.job.members or ():
        m = jobs.get(member)
        if m is None or not m.job.train_job:
            return None
        names.append(m.job.train_job)
    found = [jobs.get(n) for n in names]
    return found if found and all(found) else None


def _trains(g: RunGroup, jobs: Mapping[str, JobResult]) -> list[JobResult]:
    out: dict[Path, JobResult] = {}
    for run in g.runs:
        for t in train_jobs_of(run, jobs) or []:
            out.setdefault(t.path, t)
    return list(out.values())


def _where(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def health_section(groups: Sequence[RunGroup], jobs: Mapping[str, JobResult], root: Path) -> list[str]:
    """'## Training health': every retrained run whose training collapsed (stored `health` in its train
    job's metrics.json), with the epoch; one line when none did."""
    retrained = [g for g in groups if g.kind == RETRAINED]
    if not retrained:
        return []
    rows = []
    for g in retrained:
        for t in _trains(g, jobs):
            health = t.metrics.get("health") or {}
            if health.get("collapsed_at_epoch") is not None:
                rows.append([f"`{escape(_where(t.path, root))}`", escape(g.model), str(health["collapsed_at_epoch"]),
                             escape(health.get("reason") or MISSING)])
    out = ["## Training health", ""]
    if not rows:
        return out + ["No retrained run collapsed (a loss at the collapse value, every score equal, or a validation "
                      "rsum at chance).", ""]
    return out + ["**Collapsed trainings**: their numbers are those of a model that scores (nearly) every pair the "
                  "same; check the recipe (warm-up, learning rate) before comparing them.", ""] + \
        table(["train job", "model", "collapsed at epoch", "why"], rows, ["l", "l", "r", "l"]) + [""]


def read_curve(train: JobResult) -> tuple[list[int], list[float]]:
    """(global step, loss) of every optimizer step in the job's loss_curve.tsv ([] when absent)."""
    path = train.path / CURVE
    steps, losses = [], []
    if not path.is_file():
        return steps, losses
    for i, line in enumerate(path.read_text(errors="replace").splitlines()[1:], start=1):
        parts = line.split("\t")
        try:
            losses.append(float(parts[2]))
        except (IndexError, ValueError):
            continue
        steps.append(i)
    return steps, losses


def _series(train: JobResult, label: str) -> CurveSeries:
    steps, losses = read_curve(train)
    history = [h for h in train.metrics.get("history") or [] if isinstance(h, Mapping)]
    val = [(int(h["epoch"]), float(h["val_rsum"])) for h in history if h.get("val_rsum") is not None]
    return CurveSeries(label, steps, losses, [e for e, _ in val], [v for _, v in val],
                       (train.metrics.get("health") or {}).get("collapsed_at_epoch"))


def curves_section(method: str, groups: Sequence[RunGroup], jobs: Mapping[str, JobResult],
                   reports: Path) -> tuple[list[str], list[Path]]:
    """'## Training curves' of a paper report: one PNG per retrained row (all its seeds' runs)."""
    out: list[str] = []
    plots: list[Path] = []
    for g in groups:
        if g.method != method or g.kind != RETRAINED:
            continue
        trains = _trains(g, jobs)
        series = [_series(t, t.path.parent.name if t.path.name == "train" else t.path.name) for t in trains]
        chances = [h.get("val_chance") for t in trains for h in t.metrics.get("history") or []
                   if isinstance(h, Mapping) and h.get("val_chance")]
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{method}-{g.dataset}-{g.model}").strip("-")
        title = f"{g.dataset}: {g.model} ({g.source})"
        path = training_curves(series, title, reports / "plots" / f"{slug}-training.png",
                               chance=chances[0] if chances else None)
        if path is None:
            continue
        plots.append(path)
        flagged = [s for s in series if s.collapsed_at_epoch is not None]
        note = f" Collapsed: {', '.join(f'{s.label} at epoch {s.collapsed_at_epoch}' for s in flagged)}." \
            if flagged else ""
        out += [f"### {escape(title)}", "", image(f"{title}: training curves", f"plots/{path.name}"), "",
                f"Loss per optimizer step ({CURVE}) and validation rsum per epoch (metrics.json history).{note}", ""]
    if not out:
        return [], []
    return ["## Training curves", ""] + out, plots
