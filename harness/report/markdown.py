"""reports/<dataset>.md and reports/index.md: reproduced numbers beside the reported ones.

Only `results/` and the registry are read. A number that was not reproduced shows as "—", never 0.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.registry import Registry, Reported, load_registry
from harness.results import JobResult, ResultStore, git_revision, write_text

RECALL_COLUMNS = ("i2t.r1", "i2t.r5", "i2t.r10", "t2i.r1", "t2i.r5", "t2i.r10", "rsum")
MISSING = "—"


def get_path(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def evaluation_results(store: ResultStore, dataset: str | None = None) -> list[JobResult]:
    out = [r for r in store.finished() if r.config.get("stage") == "evaluate"]
    return [r for r in out if dataset is None or r.config.get("dataset") == dataset]


def matching_reported(registry: Registry, result: JobResult, protocol: str) -> Reported | None:
    """The first registry entry for the same method, variant, dataset, protocol and setting."""
    cfg = result.config
    setting = cfg.get("setting") or {}
    for rep in registry.reported_for(cfg.get("method"), cfg.get("dataset")):
        if rep.variant != cfg.get("variant") or rep.protocol != protocol:
            continue
        if all(setting.get(k) == v for k, v in rep.setting.items()):
            return rep
    return None


def cell(value: float | None, reported: float | None) -> str:
    if value is None:
        return MISSING if reported is None else f"{MISSING} ({reported:.1f})"
    if reported is None:
        return f"{value:.1f}"
    return f"{value:.1f} ({reported:.1f}, {value - reported:+.1f})"


def row_label(result: JobResult) -> str:
    cfg = result.config
    setting = cfg.get("setting") or {}
    extra = "".join(f", {k}={v}" for k, v in setting.items())
    return f"{cfg.get('method')}/{cfg.get('variant')} ({cfg.get('source')}{extra})"


def protocol_table(registry: Registry, results: Sequence[JobResult], protocol: str) -> list[str]:
    lines = [f"| model | {' | '.join(RECALL_COLUMNS)} | tie-affected queries |",
             "|---|" + "---:|" * (len(RECALL_COLUMNS) + 1)]
    for res in results:
        metrics = get_path(res.metrics, f"protocols.{protocol}")
        if metrics is None:
            continue
        rep = matching_reported(registry, res, protocol)
        cells = [cell(get_path(metrics, c), rep.values.get(c) if rep else None) for c in RECALL_COLUMNS]
        ties = get_path(metrics, "ties")
        affected = MISSING if ties is None else str(ties["i2t_affected_queries"] + ties["t2i_affected_queries"])
        lines.append(f"| {row_label(res)} | {' | '.join(cells)} | {affected} |")
    return lines


def dataset_report(registry: Registry, store: ResultStore, dataset: str) -> str:
    results = evaluation_results(store, dataset)
    ds = registry.dataset(dataset)
    out = [f"# {dataset}: reproduced vs reported", "", ds.description, "",
           "Cells read `reproduced (reported, delta)`; recalls in percent; headline values are tie-pessimistic "
           "(see *tie-affected queries*). Numbers come from `results/` only.", ""]
    protocols = sorted({p for r in results for p in (r.metrics.get("protocols") or {})})
    if not results:
        out.append("No finished evaluation in results/ for this dataset yet.")
    for protocol in protocols:
        out += [f"## {protocol}", ""] + protocol_table(registry, results, protocol) + [""]
        if protocol == "recall" and dataset == "demo":
            from harness.data.demo import chance_rsum

            n = next((r.metrics.get("shape", [0])[0] for r in results), 0)
            if n:
                out += [f"Chance level for {n} images x {5 * n} captions: rsum {chance_rsum(n):.1f} "
                        "(a random scorer). The demo's image features are synthetic.", ""]
    eff = efficiency_table(results)
    if eff:
        out += ["## Efficiency", ""] + eff + [""]
    return "\n".join(out) + "\n"


def efficiency_table(results: Sequence[JobResult]) -> list[str]:
    rows = []
    for res in results:
        e = res.metrics.get("efficiency") or {}
        if not e:
            continue
        params = e.get("parameters")
        rows.append(f"| {row_label(res)} | {params / 1e6:.1f} M | {e.get('encode_ms_per_image', 0):.2f} | "
                    f"{e.get('encode_ms_per_caption', 0):.2f} | {e.get('scoring_seconds', 0):.2f} |"
                    if params else f"| {row_label(res)} | {MISSING} | {MISSING} | {MISSING} | {MISSING} |")
    if not rows:
        return []
    return ["| model | parameters | encode ms / image | encode ms / caption | scoring s (full matrix) |",
            "|---|---:|---:|---:|---:|", *rows]


def index_report(written: Sequence[Path], reports: Path) -> str:
    rev = git_revision()
    lines = ["# itrbench reports", "", f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} "
             f"at revision `{rev.get('revision') or 'unknown'}`{' (dirty)' if rev.get('dirty') else ''}.", ""]
    lines += [f"- [{p.stem}]({p.relative_to(reports)})" for p in written]
    return "\n".join(lines) + "\n"


def write_reports(results: str | Path, reports: str | Path, paper: str | None = None,
                  dataset: str | None = None) -> list[Path]:
    """Render the reports for every dataset with results (or the one asked for); returns the paths."""
    registry = load_registry()
    store = ResultStore(results)
    reports = Path(reports)
    if paper is not None:
        registry.method(paper)  # validate the name
    datasets = [dataset] if dataset else sorted({r.config.get("dataset") for r in evaluation_results(store)} - {None})
    written = []
    by_ds: dict[str, str] = defaultdict(str)
    for ds in datasets:
        by_ds[ds] = dataset_report(registry, store, ds)
        path = reports / f"{ds}.md"
        write_text(path, by_ds[ds])
        written.append(path)
    existing = sorted(p for p in reports.glob("*.md") if p.name != "index.md")
    write_text(reports / "index.md", index_report(existing, reports))
    return [*written, reports / "index.md"]
