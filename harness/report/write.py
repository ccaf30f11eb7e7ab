"""`write_reports`: render every report from results/ and the registry (never re-running a model)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.core.results import write_text
from harness.report.dataset import dataset_report
from harness.report.export import check_export_path, write_export
from harness.report.index import index_report
from harness.report.merge import open_results
from harness.report.paper import paper_report
from harness.report.problems import non_finite_results
from harness.report.runs import collect_groups, job_name
from harness.report.site import write_site
from harness.spec.registry import Registry, load_registry


def write_reports(results: str | Path | Sequence[str | Path], reports: str | Path, paper: str | None = None,
                  dataset: str | None = None, registry: Registry | None = None,
                  export: str | Path | None = None) -> list[Path]:
    """Write reports/<dataset>.md, reports/<paper>.md, their plots, the site (reports/site/) and
    reports/index.md, and the tidy `export` file when given; returns the paths.

    `results` is one results folder or several (merged: `harness.report.merge`). With neither filter every
    dataset and paper with results is rendered. `dataset` limits the dataset reports to that one (and the paper
    reports to papers with results on it); `paper` renders that paper's report (even without results) and,
    unless `dataset` is given too, no dataset report. The site's pages follow the same filters.
    """
    registry = registry or load_registry()
    reports = Path(reports)
    if paper is not None:
        registry.method(paper)  # an unknown name is an error listing the valid ones
    if dataset is not None:
        registry.dataset(dataset)
    store = open_results(results)
    if export is not None:
        check_export_path(export)  # a bad name fails before anything is written
    finished = store.finished()
    jobs = {job_name(store, r): r for r in finished}
    groups = collect_groups(registry, store)
    non_finite_results([r for g in groups for r in g.runs])  # a warning line naming each such job
    written: list[Path] = []
    notes = [n.text for n in store.notes]

    datasets: list[str] = []
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
    site_papers = [p for p in papers if any(g.method == p for g in groups)]
    written += write_site(registry, groups, store, reports, notes, [d for d in datasets if any(
        g.dataset == d for g in groups)], site_papers)
    if export is not None:
        written.append(write_export(groups, store, export))
    write_text(reports / "index.md", index_report(registry, reports, finished, store.root, store.roots, notes))
    return [*written, reports / "index.md"]


def _write(path: Path, text: str, plots: list[Path]) -> list[Path]:
    write_text(path, text)
    return [path, *plots]
