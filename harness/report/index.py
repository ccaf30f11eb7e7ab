"""reports/index.md: links to every report and plot, the date, the code revision and the environments."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from harness.core.hardware import hardware_summary
from harness.core.results import JobResult, git_revision
from harness.report.markdown import MISSING, escape, table
from harness.spec.registry import Registry

ENV_PACKAGES = ("torch", "numpy", "transformers", "open_clip_torch")


def _revision_text(git: dict) -> str:
    rev = git.get("revision")
    if not rev:
        return "unknown"
    return f"`{rev[:12]}`" + (" (uncommitted changes)" if git.get("dirty") else "")


def _environments(results: Sequence[JobResult]) -> list[str]:
    counts: Counter = Counter()
    for r in results:
        env = r.env or {}
        pk = env.get("packages") or {}
        key = (_revision_text(env.get("git") or {}), env.get("device") or MISSING, hardware_summary(env),
               env.get("python") or MISSING, *(pk.get(p) or MISSING for p in ENV_PACKAGES),
               env.get("platform") or MISSING)
        counts[key] += 1
    if not counts:
        return ["No finished result yet.", ""]
    header = ["code revision", "device", "hardware", "python", *ENV_PACKAGES, "platform", "results"]
    rows = [[escape(k) if i else k for i, k in enumerate(key)] + [str(n)] for key, n in counts.items()]
    return table(header, rows, ["l"] * (len(header) - 1) + ["r"]) + [""]


def index_report(registry: Registry, reports: Path, results: Sequence[JobResult], results_root: Path,
                 folders: Sequence[Path] = (), merge_notes: Sequence[str] = ()) -> str:
    """reports/index.md; `folders` are all the results folders merged (default: `results_root` alone) and
    `merge_notes` what merging them did (markdown lines)."""
    now = dt.datetime.now(dt.timezone.utc)
    folders = list(folders) or [results_root]
    revision = git_revision(outputs=(reports, *folders))  # the reports being written are not code changes
    where = ", ".join(f"`{escape(f)}`" for f in folders)
    out = ["# itrbench reports", "",
           f"Generated {now:%Y-%m-%d %H:%M} UTC from {where} at code revision "
           f"{_revision_text(revision)}. Reports read stored results only; no model was run to make them.",
           ""]
    if (reports / "site" / "index.html").is_file():
        out += ["Browse, sort and filter every table in the [leaderboard site](site/index.html) (static HTML, opens "
                "from disk).", ""]
    if merge_notes:
        out += ["## Merged results folders", "",
                "A job found in several folders is one row when its numbers agree (the newest copy is kept); "
                "copies with different numbers are all shown, flagged as conflicting.", ""]
        out += [f"- {n}" for n in merge_notes] + [""]
    pages = sorted(p for p in reports.glob("*.md") if p.name != "index.md")
    datasets = [p for p in pages if p.stem in registry.datasets]
    papers = [p for p in pages if p.stem in registry.methods]
    other = [p for p in pages if p not in datasets and p not in papers]
    if datasets:
        out += ["## Datasets: all methods x all protocols", ""]
        out += [f"- [{p.stem}]({p.name}) — {escape(registry.datasets[p.stem].description.split('.')[0])}"
                for p in datasets] + [""]
    if papers:
        out += ["## Papers: reported tables reproduced", ""]
        out += [f"- [{p.stem}]({p.name}) — {escape(registry.methods[p.stem].title)}" for p in papers] + [""]
    if other:
        out += ["## Other pages", ""] + [f"- [{p.stem}]({p.name})" for p in other] + [""]
    plots = sorted((reports / "plots").glob("*.png")) if (reports / "plots").is_dir() else []
    if plots:
        out += ["## Plots", ""] + [f"- [{p.stem}](plots/{p.name})" for p in plots] + [""]
    out += ["## Environments of the results", "",
            "Each row is one distinct combination of code revision, hardware and package versions found in the "
            "results' env.json files.", ""]
    out += _environments(results)
    return "\n".join(out).rstrip() + "\n"
