"""Terminal output: one console, escaped messages (paths and errors may hold rich markup characters), and the
tables `evaluate` / `metrics` print for each protocol family."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.eval.protocols import PROTOCOLS, is_defined

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


def recall_table(metrics: Mapping[str, Any], title: str) -> Table:
    table = Table(title=escape(title))
    for col in ("protocol", "direction", "R@1", "R@5", "R@10", "medr", "meanr", "tie-affected"):
        table.add_column(col, justify="right" if col not in ("protocol", "direction") else "left")
    for name, m in metrics.items():
        if not isinstance(m, Mapping) or "r1" not in (m.get("i2t") or {}):
            continue
        for d, label in (("i2t", "image->text"), ("t2i", "text->image")):
            x = m[d]
            table.add_row(escape(name), label, _cell(x, "r1"), _cell(x, "r5"), _cell(x, "r10"), _cell(x, "medr", 1),
                          _cell(x, "meanr", 1), str(x.get("tie_affected_queries", "")))
        table.add_row(escape(name), "rsum", _cell(m, "rsum"), "", "", "", "", "", end_section=True)
        ceiling = m.get("ceiling")
        if isinstance(ceiling, Mapping):  # a cascade: queries whose positive is inside their shortlist
            table.add_row(escape(name), "stage-1 ceiling", f"i2t {_fmt(ceiling.get('i2t'))}%",
                          f"t2i {_fmt(ceiling.get('t2i'))}%", "", "", "", "", end_section=True)
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


def show_protocols(metrics: Mapping[str, Any], title: str) -> None:
    """Every protocol of an evaluation: recall tables, the other families' summaries, "not defined" lines."""
    recall = {n: m for n, m in metrics.items() if is_defined(m) and n in PROTOCOLS
              and PROTOCOLS[n].family == "recall"}
    if recall:
        console.print(recall_table(recall, title))
    for name, result in metrics.items():
        if not is_defined(result):
            say(f"{name}: not defined: {result.get('reason', '')}", "yellow")
        elif name not in recall:
            console.print(protocol_summary(result, PROTOCOLS[name].title if name in PROTOCOLS else name))
