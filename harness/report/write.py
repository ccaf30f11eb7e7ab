"""`write_reports`: render every report from results/ and the registry (never re-running a model)."""

from __future__ import annotations

from pathlib import Path

from harness.core.results import ResultStore, write_text
from harness.report.dataset import dataset_report
from harness.report.index import index_report
from harness.report.paper import paper_report
from harness.report.runs import collect_groups, job_name
from harness.spec.registry import Registry, load_registry


def write_reports(results: str | Path, reports: str | Path, paper: str | None = None, dataset: str | None = None,
                  registry: Registry | None = None) -> list[Path]:
    """Write reports/<dataset>.md, reports/<paper>.md, their plots and reports/index.md; returns the paths.

    With neither filter every dataset and paper with results is rendered. `dataset` limits the dataset
    reports to that one (and the paper reports to papers with results on it); `paper` renders that paper's
    report (even without results) and, unless `dataset` is given too, no dataset report.
    """
    registry = registry or load_registry()
    store = ResultStore(results)
    reports = Path(reports)
    if paper is not None:
        registry.method(paper)  # an unknown name is an error listing the valid ones
    if dataset is not None:
        registry.dataset(dataset)
    finished = store.finished()
    jobs = {job_name(store, r): r for r in finished}
    groups = collect_groups(registry, store)
    written: list[Path] = []

    if paper is None or dataset is not None:
        datasets = [dataset] if dataset else sorted({g.dataset for g in groups})
        for ds in datasets:
            text, plots = dataset_report(registry, ds, groups, jobs, reports, store.root)
            written += _write(reports / f"{ds}.md", text, plots)
    if paper is not None:
        papers = [paper]
    else:
        papers = [m for m in registry.methods if any(g.method == m and (dataset is None or g.dataset == dataset)
                                                     for g in groups)]
    for name in papers:
        text, plots = paper_report(registry, name, groups, reports, jobs)
        written += _write(reports / f"{name}.md", text, plots)
    write_text(reports / "index.md", index_report(registry, reports, finished, store.root))
    return [*written, reports / "index.md"]


def _write(path: Path, text: str, plots: list[Path]) -> list[Path]:
    write_text(path, text)
    return [path, *plots]
