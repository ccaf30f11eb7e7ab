"""reports/<paper>.md: every table of a paper the registry holds, reproduced cell by cell."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.core.results import JobResult
from harness.report.columns import (
    column_name,
    fold_key,
    metric_columns,
    ordered,
    protocol_title,
    split_columns,
)
from harness.report.markdown import (
    DERIVED,
    FLAG,
    MISSING,
    compare_reported,
    decimals_for,
    escape,
    image,
    interval_text,
    stat_text,
    table,
)
from harness.report.plots import RepPoint, reproduced_vs_reported
from harness.report.runs import RunGroup, Stat, matching_rows
from harness.report.training import curves_section
from harness.spec.registry import Method, Registry, Reported

LEGEND = (
    "Cells read `reproduced (reported, delta)`, delta = reproduced − reported, both with the decimals the source "
    "printed; retrained rows show the mean ± sample std over seeds. A run fills a reported row only when it is the "
    "model the row describes: the same variant and the same settings (loss, batch size, objective, ensemble "
    "members, checkpoint epoch, precision), a row that names no setting describing the default recipe. Imported "
    "matrices (e.g. the official code's own output) fill cells like runs of ours and say where they came from. "
    + FLAG + " marks a reported number that lies outside the reproduced interval even after allowing half a unit "
    "of its last printed digit: the stored 95% bootstrap interval over queries for a single run, mean ± 2 std when "
    "several seeds ran (rows without a stored interval are never flagged; the *interval* column shows what was "
    "used). " + DERIVED + " marks a reported-side number the source does not print (the registry summed the "
    "printed recalls; its slack is the sum of theirs). " + MISSING + " = not reproduced (no finished result); it "
    "is never a zero. Recalls are in percent and tie-pessimistic (see the dataset reports for the tie bounds). "
    "Numbers come from `results/` only."
)


@dataclass
class Tally:
    compared: Counter = field(default_factory=Counter)
    flagged: Counter = field(default_factory=Counter)
    no_interval: Counter = field(default_factory=Counter)
    points: dict[tuple, RepPoint] = field(default_factory=dict)


def table_groups(reported: Sequence[Reported]) -> list[tuple[tuple[str, str, str], list[Reported]]]:
    """Reported entries grouped by (table, dataset, protocol), in registry order."""
    out: dict[tuple[str, str, str], list[Reported]] = {}
    for rep in reported:
        out.setdefault((rep.table or rep.source, rep.dataset, rep.protocol), []).append(rep)
    first = {}  # keep the protocols of one (table, dataset) together, in order of first appearance
    for key in out:
        first.setdefault(key[:2], len(first))
    return sorted(out.items(), key=lambda item: first[item[0][:2]])


def row_label(rep: Reported) -> str:
    if rep.label:
        return rep.label
    return rep.variant + "".join(f", {k}={v}" for k, v in rep.setting.items())


class _Cells:
    """Cells of one reported table: each (row, run group) line, compared and counted once per key."""

    def __init__(self, protocol: str, tally: Tally) -> None:
        self.protocol, self.tally = protocol, tally

    def __call__(self, rep: Reported, g: RunGroup | None, key: str) -> str:
        if g is None:
            return compare_reported(None, rep, key, rep.places(key))[0]
        stat = g.stat(self.protocol, key)
        text, flagged = compare_reported(stat, rep, key, rep.places(key))
        _count(self.tally, g, self.protocol, key, stat, rep.values.get(key), flagged)
        return text


def _reported_table(registry: Registry, key: tuple[str, str, str], entries: list[Reported],
                    groups: Sequence[RunGroup], tally: Tally) -> list[str]:
    """One row per (reported row, run group that is its model): every metric family of the row left to right;
    per-fold values in a collapsible table below."""
    _, _, protocol = key
    keys = ordered(k for rep in entries for k in rep.values)
    main = [k for k in keys if fold_key(k) is None]
    folds = [k for k in keys if fold_key(k) is not None]
    sources = ", ".join(dict.fromkeys(rep.source for rep in entries))
    out = [f"**{protocol_title(protocol, registry.protocols)}** (`{protocol}`; reported in {escape(sources)})", ""]
    lines: list[tuple[Reported, RunGroup | None]] = []
    for rep in entries:
        matched = [g for g in groups if g.matches(rep, registry)]
        lines += [(rep, g) for g in matched] or [(rep, None)]
    cell = _Cells(protocol, tally)
    with_notes = any(rep.note for rep in entries)
    shown = "rsum" if "rsum" in main else (main[-1] if main else None)
    rows = []
    for i, (rep, g) in enumerate(lines):
        first = i == 0 or lines[i - 1][0] is not rep
        cells = [cell(rep, g, c) for c in main]
        interval = MISSING
        if g is not None and shown is not None:
            st = g.stat(protocol, shown)
            if isinstance(st, Stat) and st.interval:
                interval = (interval_text(st.interval, rep.places(shown))
                            + f" ({st.basis}, {column_name(shown)})")
        row = [escape(row_label(rep)), escape(g.source) if g is not None else "not reproduced", *cells, interval]
        if with_notes:
            row.append(escape(rep.note) if first and rep.note else "")
        rows.append(row)
    header = ["row", "reproduced by", *[column_name(c) for c in main], "interval"] + (["note"] if with_notes else [])
    out += table(header, rows, ["l", "l"] + ["r"] * (len(main) + 1) + (["l"] if with_notes else [])) + [""]
    if folds:
        out += _fold_details(lines, folds, cell)
    return out


def _fold_details(lines: Sequence[tuple[Reported, RunGroup | None]], folds: Sequence[str], cell: _Cells) -> list[str]:
    """The per-fold cells of the table's rows, one line per (row, fold), in a collapsible block."""
    fold_ids = sorted({fk[0] for k in folds if (fk := fold_key(k)) is not None})
    metrics = ordered(fk[1] for k in folds if (fk := fold_key(k)) is not None)
    rows = []
    for rep, g in lines:
        for f in fold_ids:
            if not any(f"folds.{f}.{m}" in rep.values for m in metrics):
                continue
            rows.append([escape(row_label(rep)), escape(g.source) if g is not None else "not reproduced", str(f),
                         *[cell(rep, g, f"folds.{f}.{m}") for m in metrics]])
    if not rows:
        return []
    summary = f"Per-fold values of the rows above (folds {fold_ids[0]}–{fold_ids[-1]})"
    return ["<details>", f"<summary>{escape(summary)}</summary>", ""] + table(
        ["row", "reproduced by", "fold", *[column_name(m) for m in metrics]], rows,
        ["l", "l", "r"] + ["r"] * len(metrics)) + ["", "</details>", ""]


def _count(tally: Tally, g: RunGroup, protocol: str, key: str, stat, reported: float | None, flagged: bool) -> None:
    if reported is None or not isinstance(stat, Stat):
        return
    tally.compared[g.kind] += 1
    tally.flagged[g.kind] += int(flagged)
    tally.no_interval[g.kind] += int(stat.interval is None)
    metric = "rsum" if key == "rsum" or key.endswith(".rsum") else key
    tally.points[(g.dataset, g.method, g.variant, g.setting, g.kind, g.tag, protocol, key, reported)] = RepPoint(
        metric, reported, stat.mean, stat.interval, g.kind)


def _summary(tally: Tally) -> list[str]:
    if not tally.compared:
        return ["No reported number has a reproduced counterpart yet: every cell below shows the reported value "
                f"beside {MISSING}.", ""]
    rows = [[kind, str(n), str(n - tally.flagged[kind] - tally.no_interval[kind]), str(tally.flagged[kind]),
             str(tally.no_interval[kind])] for kind, n in sorted(tally.compared.items())]
    return table(["rows from", "cells compared", "within the interval", f"outside ({FLAG})",
                  "not checked (no interval stored)"], rows) + [""]


def _other_runs(groups: Sequence[RunGroup], registry: Registry) -> list[str]:
    """Runs (per dataset and protocol) that no reported row describes: another setting, dataset or protocol than
    the paper's tables (e.g. the demo set, or a loss the paper did not report), labelled with their settings."""
    out: list[str] = []
    pairs = sorted({(g.dataset, p) for g in groups for r in g.runs for p in (r.metrics.get("protocols") or {})})
    for dataset, protocol in pairs:
        rows_groups = [g for g in groups if g.dataset == dataset and g.computed(protocol)
                       and not matching_rows(registry, g, protocol)]
        if not rows_groups:
            continue
        cols = metric_columns(rows_groups, protocol, table=registry.protocols)
        for part, pcols in split_columns(cols, protocol):
            stats = [[g.stat(protocol, c) for c in pcols] for g in rows_groups]
            decimals = [decimals_for([row[i].mean for row in stats if isinstance(row[i], Stat)])
                        for i in range(len(pcols))]
            rows = [[escape(g.model), escape(g.source), *[stat_text(s, d) for s, d in zip(row, decimals)]]
                    for g, row in zip(rows_groups, stats)]
            head = f"### {dataset}, {protocol_title(protocol, registry.protocols)}" + (f" ({part})" if part else "")
            out += [head, "", f"See [{dataset}.md]({dataset}.md) for efficiency and significance.", ""]
            out += table(["run (settings)", "reproduced by", *[column_name(c) for c in pcols]], rows,
                         ["l", "l"] + ["r"] * len(pcols)) + [""]
    if out:
        out = ["## Other runs", "",
               "Runs that no reported row describes (another dataset, protocol or setting than the paper's tables), "
               "labelled with their settings.", ""] + out
    return out


def _notes(method: Method) -> list[str]:
    out = ["## Notes", ""]
    if method.notes:
        out += ["Known issues of the official code and its reporting (from the registry; notes on single reported "
                "rows sit beside them in the tables):", ""]
        out += [f"- {escape(n)}" for n in method.notes] + [""]
    else:
        out += ["The registry records no known issue for this paper.", ""]
    return out


def paper_report(registry: Registry, method_name: str, groups: Sequence[RunGroup],
                 reports: Path, jobs: Mapping[str, JobResult] | None = None) -> tuple[str, list[Path]]:
    """The markdown of reports/<paper>.md and the plots it references (written under reports/plots/);
    with `jobs` (finished jobs by name) also the training curves of its retrained rows."""
    method = registry.method(method_name)
    mine = [g for g in groups if g.method == method_name]
    reported = registry.reported_for(method_name)
    tally = Tally()
    body: list[str] = []
    heading = None
    groups_by_table = table_groups(reported)
    for key, entries in groups_by_table:
        if key[:2] != heading:  # one heading per (table, dataset); one sub-table per protocol below it
            heading = key[:2]
            body += [f"### {escape(key[0])} — {key[1]}", ""]
            same_heading = [r for k, rows in groups_by_table if k[:2] == heading for r in rows]
            for note in dict.fromkeys(r.table_note for r in same_heading if r.table_note):
                body += [f"> **About this heading:** {escape(note)}", ""]
        body += _reported_table(registry, key, entries, mine, tally)
    out = [f"# {escape(method.title)}", "", f"{escape(method.venue)} · official code: {escape(method.code)}", "",
           LEGEND, ""]
    if mine:
        out += ["Reproduced rows:", ""]
        out += [f"- {g.dataset}: {escape(g.model)} · {escape(g.source)}" for g in mine] + [""]
    else:
        out += ["Nothing of this paper has been reproduced yet (no finished evaluation in results/).", ""]
    out += ["## Summary", ""] + _summary(tally)
    plots: list[Path] = []
    plot = reproduced_vs_reported(list(tally.points.values()), f"{method_name}: reproduced vs reported",
                                  reports / "plots" / f"{method_name}-reproduced-vs-reported.png")
    if plot is not None:
        plots.append(plot)
        out += [image(f"{method_name}: reproduced vs reported", f"plots/{plot.name}"), ""]
    out += ["## Reported tables", ""] + (body or ["The registry holds no reported number for this paper.", ""])
    out += _other_runs(mine, registry)
    curves, curve_plots = curves_section(method_name, mine, jobs or {}, reports)
    out += curves
    plots += curve_plots
    out += _notes(method)
    return "\n".join(out).rstrip() + "\n", plots
