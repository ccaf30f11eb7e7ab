"""Markdown building blocks that render on GitHub: plain pipe tables, escaped text, number cells.

A number that was not reproduced renders as MISSING ("—"), never as 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from harness.eval.cascade_metrics import BEYOND
from harness.report.columns import RECALL_COLUMNS
from harness.report.runs import Stat, Undefined, half_unit, outside
from harness.spec.registry import Reported

MISSING = "—"
FLAG = "⚠"
NOT_DEFINED = "not defined"
DERIVED = "†"  # a reported-side number the source does not print (e.g. an rsum summed from printed recalls)


def escape(text: object) -> str:
    """Text safe inside a table cell: no pipes, no stray emphasis, no HTML tags."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;")
            .replace(">", "&gt;").replace("\n", " "))


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: Sequence[str] | None = None) -> list[str]:
    """A GitHub table; `align` per column is "l" or "r" (default: first column left, the rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells, header has {len(header)}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def decimals_for(values: Iterable[float]) -> int:
    """Decimals for a column: 1 for percent-scale numbers, more for small ones (correlations, seconds)."""
    peak = max((abs(v) for v in values), default=100.0)
    return 1 if peak >= 10 else (2 if peak >= 1 else 3)


def number(value: float | None, decimals: int = 1) -> str:
    return MISSING if value is None else f"{value:.{decimals}f}"


def reported_text(value: float, decimals: int = 1, derived: bool = False) -> str:
    """A reported number with the decimals its source printed, marked when the source does not print it."""
    return f"{value:.{decimals}f}" + (DERIVED if derived else "")


def stat_text(stat: Stat | Undefined | None, decimals: int = 1) -> str:
    if stat is None:
        return MISSING
    if isinstance(stat, Undefined):
        return f"{NOT_DEFINED}: {BEYOND}" if stat.reason.startswith(BEYOND) else NOT_DEFINED
    text = f"{stat.mean:.{decimals}f}"
    return text if stat.std is None else f"{text} ± {stat.std:.{decimals}f}"


def compare_cell(stat: Stat | Undefined | None, reported: float | None, decimals: int = 1, *,
                 derived: bool = False, terms: int = 1) -> tuple[str, bool]:
    """"reproduced (reported, delta)" with FLAG when the reported number lies outside the reproduced interval.

    Both numbers are printed with `decimals`, the source's. The reported number stands for every value that
    rounds to it: half a unit of its last digit, times `terms` for a sum of printed numbers (`derived`).
    Returns the cell text and whether it was flagged.
    """
    text = stat_text(stat, decimals)
    if reported is None:
        return text, False
    shown = reported_text(reported, decimals, derived)
    if not isinstance(stat, Stat):
        return f"{text} ({shown})", False
    flagged = outside(reported, stat.interval, half_unit(decimals) * max(1, terms))
    delta = stat.mean - reported
    flag = f" {FLAG}" if flagged else ""
    return f"{text} ({shown}, {delta:+.{decimals}f}){flag}", flagged


def derived_terms(rep: Reported, key: str) -> int:
    """How many printed numbers a derived reported value sums (rsum: the row's printed recalls), else 1."""
    if key not in rep.derived:
        return 1
    if key == "rsum" or key.endswith(".rsum"):
        prefix = key[: -len("rsum")]
        return max(1, sum(1 for k in RECALL_COLUMNS if k != "rsum" and f"{prefix}{k}" in rep.values))
    return 1


def compare_reported(stat: Stat | Undefined | None, rep: Reported | None, key: str,
                     decimals: int = 1) -> tuple[str, bool]:
    """compare_cell against a registry row's number at `key`, with the decimals its source printed (or
    `decimals` where the row has no such number)."""
    if rep is None or rep.values.get(key) is None:
        return compare_cell(stat, None, decimals)
    return compare_cell(stat, rep.values[key], rep.places(key), derived=key in rep.derived,
                        terms=derived_terms(rep, key))


def interval_text(interval: tuple[float, float] | None, decimals: int = 1) -> str:
    if interval is None:
        return MISSING
    return f"[{interval[0]:.{decimals}f}, {interval[1]:.{decimals}f}]"


def p_value_text(p: float | None, resamples: int) -> str:
    if p is None:
        return MISSING
    floor = 1.0 / (resamples + 1)
    return f"≤{floor:.3f}" if p <= floor * 1.0000001 else f"{p:.3f}"


def image(alt: str, path: str) -> str:
    return f"![{escape(alt)}]({path})"
