"""The leaderboard site's pages: index.html (every row x recall protocol by rsum), one page per dataset (every
protocol) and one per paper (its reported tables), from the report's own rows (`collect_groups`)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from harness.core.results import JobResult, ResultStore, write_text
from harness.report.columns import column_name, fold_key, metric_columns, ordered, protocol_title
from harness.report.markdown import decimals_for
from harness.report.merge import MergedStore
from harness.report.paper import row_label, table_groups
from harness.report.provenance import hardware_text, revision_text
from harness.report.runs import RunGroup, Stat, job_name, matching_reported, metric_value, stored_key
from harness.report.site.cells import VERDICTS, interval_cell, metric_cell, source_kind, stat_span, verdict
from harness.report.site.html import el, esc, file_name, filters, link, page, table
from harness.spec.registry import Registry, Reported


def dataset_page(name: str) -> str:
    return f"dataset-{file_name(name)}.html"


def paper_page(name: str) -> str:
    return f"paper-{file_name(name)}.html"


class RunFiles:
    """Copies each result's config.yaml and env.json into site/files/<folder>/<job>/ and links them, so that the
    links resolve from file:// wherever the results folders are and the site can be shared on its own."""

    NAMES = ("config.yaml", "env.json")

    def __init__(self, site: Path, store: ResultStore) -> None:
        self.site, self.store = site, store

    def folder(self, run: JobResult) -> str:
        return self.store.label_of(run) if isinstance(self.store, MergedStore) else (self.store.root.name or "results")

    def links(self, run: JobResult) -> str:
        rel = Path("files", file_name(self.folder(run)), *[file_name(p) for p in job_name(self.store, run).split("/")])
        out = []
        for fname in self.NAMES:
            src = run.path / fname
            if not src.is_file():
                continue
            dest = self.site / rel / fname
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            out.append(link((rel / fname).as_posix(), fname.split(".")[0], class_="file"))
        return " ".join(out)

    def cell(self, g: RunGroup) -> str:
        parts = []
        for run in g.runs:
            seed = run.job.seed
            what = f"seed {seed}: " if len(g.runs) > 1 and isinstance(seed, int) else ""
            parts.append(esc(what) + (self.links(run) or "—"))
        return el("td", "<br>".join(parts))


def hardware_cell(g: RunGroup) -> str:
    found = sorted({hardware_text(r.env) for r in g.runs} - {""})
    revs = sorted({revision_text(r.env) for r in g.runs} - {""})
    text = "; ".join(found) or "not recorded"
    return el("td", esc(text) + (" " + el("span", esc("code " + ", ".join(revs)), class_="source") if revs else ""))


def seed_values(g: RunGroup, protocol: str, key: str) -> list[tuple[object, float]]:
    """(seed, value) of every run of a row with more than one run."""
    if len(g.runs) < 2:
        return []
    out = []
    for run in g.runs:
        v = metric_value(run.metrics, protocol, key)
        if isinstance(v, float):
            out.append((run.job.seed if run.job.seed is not None else run.path.parent.name, v))
    return out


def seeds_cell(g: RunGroup, protocol: str, key: str, decimals: int) -> tuple[str, list[float]]:
    values = seed_values(g, protocol, key)
    if not values:
        return el("td", esc("1 run" if len(g.runs) == 1 else f"{len(g.runs)} runs")), []
    text = ", ".join(f"{s}: {v:.{decimals}f}" for s, v in values)
    return el("td", esc(text), class_="source"), [v for _, v in values]


def _row(g: RunGroup | None, cells: Sequence[str], protocol: str, method: str) -> str:
    return el("tr", "".join(cells), data_method=method, data_protocol=protocol, data_source=source_kind(g),
              data_dataset=g.dataset if g is not None else None)


def model_cells(g: RunGroup) -> list[str]:
    return [el("td", esc(g.model)), el("td", esc(g.source), class_="source")]


def _plot(site: Path, reports: Path, name: str, alt: str) -> str:
    src = reports / "plots" / name
    if not src.is_file():
        return ""
    dest = site / "plots" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return el("p", f'<img class="plot" src="plots/{esc(name)}" alt="{esc(alt)}">')


class Site:
    """Builds the pages; `write` returns the paths written."""

    def __init__(self, registry: Registry, groups: Sequence[RunGroup], store: ResultStore, reports: Path,
                 notes: Sequence[str] = ()) -> None:
        self.registry, self.groups, self.store, self.reports = registry, list(groups), store, reports
        self.site = reports / "site"
        self.files = RunFiles(self.site, store)
        self.notes = list(notes)
        self.datasets = sorted({g.dataset for g in self.groups})
        self.papers = [m for m in registry.methods if any(g.method == m for g in self.groups)]
        self.linked_datasets, self.linked_papers = self.datasets, self.papers  # the pages the site holds

    def nav(self) -> str:
        return (link("index.html", "leaderboard") + "".join(link(dataset_page(d), d) for d in self.linked_datasets)
                + "".join(link(paper_page(p), p) for p in self.linked_papers))

    def write(self, datasets: Sequence[str] | None = None, papers: Sequence[str] | None = None) -> list[Path]:
        """Write index.html and the pages of `datasets` and `papers` (default: all with results); pages written
        before for other names stay and are linked."""
        self.site.mkdir(parents=True, exist_ok=True)
        if datasets is not None:
            self.linked_datasets = [d for d in self.datasets if d in datasets
                                    or (self.site / dataset_page(d)).is_file()]
        if papers is not None:
            self.linked_papers = [p for p in self.papers if p in papers or (self.site / paper_page(p)).is_file()]
        for asset in ("site.css", "site.js"):
            shutil.copyfile(Path(__file__).with_name(asset), self.site / asset)
        out = [self._write("index.html", page("itrbench leaderboard", self.nav(), self.index_body()))]
        for ds in self.datasets if datasets is None else datasets:
            out.append(self._write(dataset_page(ds), page(f"{ds}: all methods, all protocols", self.nav(),
                                                          self.dataset_body(ds))))
        for name in self.papers if papers is None else papers:
            out.append(self._write(paper_page(name), page(self.registry.method(name).title, self.nav(),
                                                          self.paper_body(name))))
        return out

    def _write(self, name: str, text: str) -> Path:
        write_text(self.site / name, text)
        return self.site / name

    # ---- index -------------------------------------------------------------------------------------------------

    def index_body(self) -> str:
        rows, stats, keys = [], [], []
        with_rsum = [n for n, p in self.registry.protocols.items() if any(f.path == "rsum" for f in p.fields)]
        for g in self.groups:
            for protocol in with_rsum:
                if g.computed(protocol):
                    keys.append((g, protocol))
                    stats.append(g.stat(protocol, "rsum"))
        reps = [matching_reported(self.registry, g, p) for g, p in keys]
        span = stat_span(stats, [r.values.get("rsum") if r else None for r in reps])
        for (g, protocol), st, rep in zip(keys, stats, reps):
            seeds, points = seeds_cell(g, protocol, "rsum", 1)
            reported = rep.values.get("rsum") if rep is not None else None
            rows.append(_row(g, [el("td", esc(g.dataset)), el("td", esc(protocol)), *model_cells(g),
                                 metric_cell(st, rep, "rsum", 1),
                                 interval_cell(st, span, points, reported, verdict(st, rep, "rsum") == "outside"),
                                 seeds, hardware_cell(g), self.files.cell(g)], protocol, g.method))
        header = [("dataset", True), ("protocol", True), ("model", True), ("reproduced by", True), ("rsum", True),
                  ("interval", True), ("seeds", False), ("hardware", True), ("config · env", False)]
        bar = filters("leaderboard", [("dataset", "dataset", [g.dataset for g, _ in keys]),
                                      ("method", "method", [g.method for g, _ in keys]),
                                      ("protocol", "protocol", [p for _, p in keys]),
                                      ("source", "source", [source_kind(g) for g, _ in keys])])
        body = [el("p", esc("Every report row on every recall protocol it computed, by rsum (tie-pessimistic). "
                            "Click a header to sort; the selects and the text box filter the rows. Numbers come "
                            "from stored results only, exactly as in the markdown reports."))]
        body += [el("h2", "Leaderboard"), bar, table("leaderboard", header, rows) if rows
                 else el("p", "No finished evaluation yet.")]
        body += [el("h2", "Pages"), el("ul", "".join(el("li", link(dataset_page(d), d) + " — dataset")
                                                   for d in self.linked_datasets)
                                      + "".join(el("li", link(paper_page(p), p) + " — "
                                                   + esc(self.registry.methods[p].title))
                                                for p in self.linked_papers))]
        if self.notes:
            body += [el("h2", "Merged results folders"),
                     el("ul", "".join(el("li", esc(n)) for n in self.notes))]
        return "".join(body)

    # ---- dataset -----------------------------------------------------------------------------------------------

    def dataset_body(self, dataset: str) -> str:
        groups = [g for g in self.groups if g.dataset == dataset]
        ds = self.registry.datasets.get(dataset)
        body = [el("p", esc(ds.description))] if ds is not None and ds.description else []
        listed = list(ds.protocols) if ds is not None else []
        seen = [p for g in groups for r in g.runs for p in (r.metrics.get("protocols") or {})]
        for i, protocol in enumerate(dict.fromkeys(listed + seen)):
            rows_groups = [g for g in groups if g.has_protocol(protocol)]
            body.append(el("h2", esc(f"{protocol_title(protocol)} ({protocol})")))
            if not rows_groups:
                body.append(el("p", esc(f"No result has computed {protocol} yet.")))
                continue
            body += self._protocol_table(f"p{i}", protocol, rows_groups)
        body.append(_plot(self.site, self.reports, f"{dataset}-rsum-vs-scoring-time.png",
                          f"{dataset}: rsum vs scoring time"))
        return "".join(body)

    def _protocol_table(self, table_id: str, protocol: str, rows_groups: Sequence[RunGroup]) -> list[str]:
        reps = [matching_reported(self.registry, g, protocol) for g in rows_groups]
        aliases: list[dict[str, str]] = [{stored_key(protocol, k): k for k in rep.values} if rep else {}
                                         for rep in reps]
        cols = metric_columns(rows_groups, protocol, [c for a in aliases for c in a])
        if not cols:
            return [el("p", esc(f"{protocol}: no numeric result stored."))]
        head = "rsum" if "rsum" in cols else cols[0]
        stats = [{c: g.stat(protocol, c) for c in cols} for g in rows_groups]
        decimals = {c: decimals_for([s.mean for st in stats if isinstance(s := st[c], Stat)]) for c in cols}
        span = stat_span([st[head] for st in stats],
                         [r.values.get(a.get(head, head)) if r else None for r, a in zip(reps, aliases)])
        rows = []
        for g, rep, alias, st in zip(rows_groups, reps, aliases, stats):
            seeds, points = seeds_cell(g, protocol, head, decimals[head])
            rk = alias.get(head, head)
            reported = rep.values.get(rk) if rep is not None else None
            cells = [*model_cells(g), *[metric_cell(st[c], rep, c, decimals[c], alias.get(c, c)) for c in cols],
                     interval_cell(st[head], span, points, reported, verdict(st[head], rep, rk) == "outside",
                                   decimals[head]),
                     seeds, hardware_cell(g), self.files.cell(g)]
            rows.append(_row(g, cells, protocol, g.method))
        header = [("model", True), ("reproduced by", True), *[(column_name(c), True) for c in cols],
                  (f"{column_name(head)} interval", True), ("seeds", False), ("hardware", True),
                  ("config · env", False)]
        bar = filters(table_id, [("method", "method", [g.method for g in rows_groups]),
                                 ("source", "source", [source_kind(g) for g in rows_groups])])
        return [bar, table(table_id, header, rows)]

    # ---- paper -------------------------------------------------------------------------------------------------

    def paper_body(self, name: str) -> str:
        method = self.registry.method(name)
        mine = [g for g in self.groups if g.method == name]
        body = [el("p", esc(f"{method.venue} · official code: {method.code}"))]
        body.append(el("p", esc("Each reported number beside the reproduced one with the markdown report's verdict: "
                                "within the reproduced interval (95% bootstrap CI of one run, mean ± 2 std over "
                                "seeds, allowing half a unit of the last printed digit), outside it, no interval "
                                "stored, or not reproduced. Per-fold cells are in the markdown report.")))
        counts: dict[str, int] = {}
        tables = []
        for i, (key, entries) in enumerate(table_groups(self.registry.reported_for(name))):
            tables += self._reported_table(f"r{i}", key, entries, mine, counts)
        summary = ", ".join(f"{n} {VERDICTS[kind]}" for kind, n in sorted(counts.items())) or "none"
        body.append(el("p", esc(f"Reported numbers: {summary}."), id="verdicts"))
        body.append(_plot(self.site, self.reports, f"{name}-reproduced-vs-reported.png",
                          f"{name}: reproduced vs reported"))
        body += tables or [el("p", "The registry holds no reported number for this paper.")]
        if method.notes:
            body += [el("h2", "Notes"), el("ul", "".join(el("li", esc(n)) for n in method.notes))]
        return "".join(body)

    def _reported_table(self, table_id: str, key: tuple[str, str, str], entries: Sequence[Reported],
                        groups: Sequence[RunGroup], counts: dict[str, int]) -> list[str]:
        table_name, dataset, protocol = key
        main = [k for k in ordered(k for rep in entries for k in rep.values) if fold_key(k) is None]
        lines: list[tuple[Reported, RunGroup | None]] = []
        for rep in entries:
            lines += [(rep, g) for g in groups if g.matches(rep, self.registry)] or [(rep, None)]
        head = "rsum" if "rsum" in main else (main[-1] if main else None)
        stats = [g.stat(protocol, head) if g is not None and head else None for _, g in lines]
        span = stat_span(stats, [rep.values.get(head) for rep, _ in lines] if head else [])
        rows = []
        for (rep, g), st in zip(lines, stats):
            cells = [el("td", esc(row_label(rep))), el("td", esc(g.source if g else "not reproduced"),
                                                       class_="source")]
            for c in main:
                stat = g.stat(protocol, c) if g is not None else None
                if (v := verdict(stat, rep, c)) is not None:
                    counts[v] = counts.get(v, 0) + 1
                cells.append(metric_cell(stat, rep, c, rep.places(c)))
            if head:
                cells.append(interval_cell(st, span, (), rep.values.get(head), verdict(st, rep, head) == "outside",
                                           rep.places(head)))
            cells.append(hardware_cell(g) if g else el("td", ""))
            cells.append(self.files.cell(g) if g else el("td", ""))
            rows.append(_row(g, cells, protocol, rep.method))
        header = [("row", True), ("reproduced by", True), *[(column_name(c), True) for c in main]]
        header += [(f"{column_name(head)} interval", True)] if head else []
        header += [("hardware", True), ("config · env", False)]
        sources = [source_kind(g) for _, g in lines]
        return [el("h2", esc(f"{table_name} — {dataset}")),
                el("h3", esc(f"{protocol_title(protocol)} ({protocol}); reported in "
                             + ", ".join(dict.fromkeys(rep.source for rep in entries)))),
                filters(table_id, [("source", "source", sources)]), table(table_id, header, rows)]


def write_site(registry: Registry, groups: Sequence[RunGroup], store: ResultStore, reports: Path,
               notes: Sequence[str] = (), datasets: Sequence[str] | None = None,
               papers: Sequence[str] | None = None) -> list[Path]:
    """Write reports/site/: index.html, the dataset and paper pages (all with results, or those named), the
    stylesheet and script, copies of the plots and of every shown result's config.yaml and env.json."""
    return Site(registry, groups, store, reports, notes).write(datasets, papers)


