"""The terminal table of a robustness pass: recall and drop per perturbation, the summary, "not defined" lines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.markup import escape
from rich.table import Table

from harness.run.display import console, say


def show_robustness(record: Mapping[str, Any] | None, title: str) -> None:
    if not record:
        return
    if record.get("defined") is False:
        say(f"robustness: not defined: {record.get('reason', '')}", "yellow")
        return
    clean = record["clean"]
    table = Table(title=escape(f"robustness of {title} (seed {record['seed']}; clean rsum {clean['rsum']:.1f})"))
    for col in ("perturbation", "level", "i2t R@1", "t2i R@1", "rsum", "drop", "rel. drop", "MMI"):
        table.add_column(col, justify="left" if col in ("perturbation", "level") else "right")
    undefined = []
    for key, r in record["perturbations"].items():
        if r.get("defined") is False:
            undefined.append(f"{key}: not defined: {r['reason']}")
            continue
        table.add_row(escape(key), r["level"], f"{r['i2t']['r1']:.1f}", f"{r['t2i']['r1']:.1f}", f"{r['rsum']:.1f}",
                      f"{r['drop']['rsum']:.1f}", f"{100 * r['relative_drop']:.1f}%", f"{100 * r['mmi']:.1f}%")
    if table.row_count:
        console.print(table)
    for group, s in record.get("summary", {}).items():
        say(f"robustness ({group}, {s['perturbations']} perturbations): mean relative rsum drop "
            f"{100 * s['mean_relative_drop']:.1f}%, MMI {100 * s['mmi']:.1f}%, worst {s['worst']}")
    for line in undefined:
        say(line, "yellow")
