"""Terminal output: one console, escaped messages (paths and errors may hold rich markup characters), and the
tables `evaluate` / `metrics` print, laid out by each protocol's declared columns."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.eval.protocols import PROTOCOLS, Protocol, is_defined

console = Console(width=None if sys.stdout.isatty() else 160)  # logs and CI: do not squeeze job names
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def say(message: str, style: str | None = None) -> None:
    """Print plain text (escaped: "[0, 1]" and "[/" in paths survive), optionally in one style."""
    text = escape(str(message))
    console.print(f"[{style}]{text}[/]" if style else text, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    """One error line on stderr: `error: <message>` (escaped)."""
    errors.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


UNDEFINED = "—"  # a value that is not defined (never "None")
BEYOND_CELL = "beyond the shortlist"  # a cascade's value that needs ranks beyond its shortlist


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return UNDEFINED
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _cell(block: Mapping[str, Any], key: str, digits: int = 2) -> str:
    """A recall value, or why a cascade leaves it undefined."""
    if block.get(key) is None and key in (block.get("not_defined") or {}):
        return BEYOND_CELL
    return _fmt(block.get(key), digits)


DIRECTIONS = {"i2t": "image->text", "t2i": "text->image", "t2t": "text->text", "i2i": "image->image"}


def _metric_label(metric: str) -> str:
    return f"R@{metric[1:]}" if metric.startswith("r") and metric[1:].isdigit() else metric


def _layout(columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(row keys, metric columns) of a declared column list: 'i2t.r1' is row i2t, column r1; 'rsum' a row."""
    rows: list[str] = []
    metrics: list[str] = []
    for c in columns:
        row, _, metric = c.partition(".")
        rows.append(row) if row not in rows else None
        if metric and metric not in metrics:
            metrics.append(metric)
    return rows, metrics


def declared_table(metrics: Mapping[str, Any], columns: Sequence[str], title: str) -> Table:
    """One table for protocols sharing the declared `columns`: a row per direction (its metrics as columns),
    a row per single number (rsum), and the tie-affected queries where a result counts them."""
    rows, cols = _layout(columns)
    ties = any(isinstance(m.get(r), Mapping) and "tie_affected_queries" in m[r] for m in metrics.values() for r in rows)
    table = Table(title=escape(title))
    for col in ("protocol", "direction", *map(_metric_label, cols), *(("tie-affected",) if ties else ())):
        table.add_column(col, justify="right" if col not in ("protocol", "direction") else "left")
    wanted = set(columns)
    for name, m in metrics.items():
        for i, row in enumerate(rows):
            block = m.get(row)
            end = i == len(rows) - 1
            if isinstance(block, Mapping):
                cells = [_cell(block, c, 1 if c in ("medr", "meanr") else 2)
                         if f"{row}.{c}" in wanted and (c in block or c in (block.get("not_defined") or {}))
                         else "" for c in cols]
                extra = [str(block.get("tie_affected_queries", ""))] if ties else []
                table.add_row(escape(name), DIRECTIONS.get(row, row), *cells, *extra, end_section=end)
            elif row in wanted:
                table.add_row(escape(name), row, _cell(m, row) if row in m else "",
                              *[""] * (len(cols) - 1 + ties), end_section=end)
        ceiling = m.get("ceiling")
        if isinstance(ceiling, Mapping):  # a cascade: queries whose positive is inside their shortlist
            table.add_row(escape(name), "stage-1 ceiling", f"i2t {_fmt(ceiling.get('i2t'))}%",
                          f"t2i {_fmt(ceiling.get('t2i'))}%", *[""] * (len(cols) - 2 + ties), end_section=True)
    return table


def protocol_summary(result: Mapping[str, Any], title: str) -> Table:
    """A two-column table of the per-direction numbers of an ECCV / CxC / STS / image retrieval result."""
    table = Table(title=escape(title))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for direction in ("i2t", "t2i", "t2t", "i2i"):
        block = result.get(direction)
        if not isinstance(block, Mapping):
            continue
        if block.get("defined") is False:
            table.add_row(direction, escape(f"not defined: {block.get('reason', '')}"))
            continue
        for key, value in block.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                table.add_row(f"{direction} {escape(str(key))}", f"{value:.2f}")
    for key in ("r1", "avg"):
        value = result.get(key)
        if isinstance(value, Mapping):
            for name, v in value.items():
                table.add_row(f"{key} {escape(str(name))}", _fmt(v))
        elif isinstance(value, (int, float)):
            table.add_row(key, _fmt(value))
    for name, why in (result.get("missing") or {}).items():
        table.add_row(escape(str(name)), escape(f"not evaluated: {why}"))
    return table


def show_protocols(metrics: Mapping[str, Any], title: str, table: Mapping[str, Protocol] | None = None) -> None:
    """Every protocol of an evaluation: a table of each declared column layout (`Protocol.table_columns`),
    summaries of the results that declare none, "not defined" lines. `table`: the registry's protocols."""
    table = PROTOCOLS if table is None else table
    by_layout: dict[tuple[str, ...], dict[str, Any]] = {}
    for name, m in metrics.items():
        cols = table[name].table_columns if name in table else None
        if is_defined(m) and cols:
            by_layout.setdefault(tuple(cols), {})[name] = m
    for cols, group in by_layout.items():
        console.print(declared_table(group, cols, title))
    shown = {n for group in by_layout.values() for n in group}
    for name, result in metrics.items():
        if not is_defined(result):
            say(f"{name}: not defined: {result.get('reason', '')}", "yellow")
        elif name not in shown:
            console.print(protocol_summary(result, table[name].title if name in table else name))
