"""reports/<paper>.md: every table of a paper the registry holds, reproduced cell by cell."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.registry import Method, Registry, Reported
from harness.report.columns import column_name, metric_columns, ordered, protocol_title, split_columns
from harness.report.markdown import (
    FLAG,
    MISSING,
    compare_cell,
    decimals_for,
    escape,
    image,
    interval_text,
    stat_text,
    table,
)
from harness.report.plots import RepPoint, reproduced_vs_reported
from harness.report.runs import RunGroup, Stat, matching_reported

LEGEND = (
    "Cells read `reproduced (reported, delta)`, delta = reproduced − reported; retrained rows show the mean ± "
    "sample std over seeds. " + FLAG + " marks a reported number that lies outside the reproduced interval even "
    "after allowing half a unit of its last printed digit: the stored 95% bootstrap interval over queries for "
    "a single run, mean ± 2 std when several seeds ran (rows without a stored interval are never flagged; the "
    "*interval* column shows what was used). " + MISSING + " = not reproduced (no finished result); it is "
    "never a zero. Recalls are in percent and tie-pessimistic (see the dataset reports for the tie bounds). "
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


def _reported_table(key: tuple[str, str, str], entries: list[Reported], groups: Sequence[RunGroup],
                    tally: Tally) -> list[str]:
    _, _, protocol = key
    columns = ordered(k for rep in entries for k in rep.values)
    sources = ", ".join(dict.fromkeys(rep.source for rep in entries))
    out = [f"**{protocol_title(protocol)}** (`{protocol}`; reported in {escape(sources)})", ""]
    for part, cols in split_columns(columns, protocol):
        pending = []  # (rep, group or None, stats) first, so that decimals can be chosen per column
        for rep in entries:
            matched = [g for g in groups if g.matches(rep)]
            pending += [(rep, g, {c: g.stat(protocol, c) for c in cols}) for g in matched] or [(rep, None, {})]
        decimals = {c: decimals_for([s.mean for _, _, st in pending if isinstance(s := st.get(c), Stat)]
                                    + [v for rep in entries if (v := rep.values.get(c)) is not None]) for c in cols}
        rows = []
        for rep, g, stats in pending:
            if g is None:
                cells = [compare_cell(None, rep.values.get(c), decimals[c])[0] for c in cols]
                rows.append([escape(row_label(rep)), "not reproduced", *cells, MISSING])
                continue
            cells = []
            for c in cols:
                text, flagged = compare_cell(stats[c], rep.values.get(c), decimals[c])
                cells.append(text)
                _count(tally, g, protocol, c, stats[c], rep.values.get(c), flagged)
            shown = "rsum" if "rsum" in cols else cols[-1]
            st = stats[shown]
            interval = interval_text(st.interval, decimals[shown]) if isinstance(st, Stat) else MISSING
            basis = f" ({st.basis}, {column_name(shown)})" if isinstance(st, Stat) and st.interval else ""
            rows.append([escape(row_label(rep)), escape(g.source), *cells, interval + basis])
        title = [f"*{part}*", ""] if part else []
        out += title + table(["row", "reproduced by", *[column_name(c) for c in cols], "interval"], rows,
                             ["l", "l"] + ["r"] * (len(cols) + 1)) + [""]
    return out


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


def _unmatched(method: Method, groups: Sequence[RunGroup], registry: Registry) -> list[str]:
    """Reproduced numbers the paper has no table for (e.g. the demo set, or protocols it did not report)."""
    out: list[str] = []
    pairs = sorted({(g.dataset, p) for g in groups for r in g.runs for p in (r.metrics.get("protocols") or {})})
    for dataset, protocol in pairs:
        rows_groups = [g for g in groups if g.dataset == dataset and g.has_protocol(protocol)
                       and matching_reported(registry, g, protocol) is None]
        if not rows_groups:
            continue
        cols = metric_columns(rows_groups, protocol)
        for part, pcols in split_columns(cols, protocol):
            stats = [[g.stat(protocol, c) for c in pcols] for g in rows_groups]
            decimals = [decimals_for([row[i].mean for row in stats if isinstance(row[i], Stat)])
                        for i in range(len(pcols))]
            rows = [[escape(g.model), escape(g.source), *[stat_text(s, d) for s, d in zip(row, decimals)]]
                    for g, row in zip(rows_groups, stats)]
            head = f"### {dataset}, {protocol_title(protocol)}" + (f" ({part})" if part else "")
            out += [head, "", f"See [{dataset}.md]({dataset}.md) for efficiency and significance.", ""]
            out += table(["model", "reproduced by", *[column_name(c) for c in pcols]], rows,
                         ["l", "l"] + ["r"] * len(pcols)) + [""]
    if out:
        out = ["## Results without a reported counterpart", ""] + out
    return out


def _notes(method: Method, reported: Sequence[Reported]) -> list[str]:
    out = ["## Notes", ""]
    if method.notes:
        out += ["Known issues of the official code and its reporting (from the registry):", ""]
        out += [f"- {escape(n)}" for n in method.notes] + [""]
    rep_notes = list(dict.fromkeys(f"{rep.table or rep.source}, {row_label(rep)} ({rep.dataset}, {rep.protocol}): "
                                   f"{rep.note}" for rep in reported if rep.note))
    if rep_notes:
        out += ["On individual reported numbers:", ""] + [f"- {escape(n)}" for n in rep_notes] + [""]
    if len(out) == 2:
        out += ["The registry records no known issue for this paper.", ""]
    return out


def paper_report(registry: Registry, method_name: str, groups: Sequence[RunGroup],
                 reports: Path) -> tuple[str, list[Path]]:
    """The markdown of reports/<paper>.md and the plots it references (written under reports/plots/)."""
    method = registry.method(method_name)
    mine = [g for g in groups if g.method == method_name]
    reported = registry.reported_for(method_name)
    tally = Tally()
    body: list[str] = []
    heading = None
    for key, entries in table_groups(reported):
        if key[:2] != heading:  # one heading per (table, dataset); one sub-table per protocol below it
            heading = key[:2]
            body += [f"### {escape(key[0])} — {key[1]}", ""]
        body += _reported_table(key, entries, mine, tally)
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
    out += _unmatched(method, mine, registry)
    out += _notes(method, reported)
    return "\n".join(out).rstrip() + "\n", plots
