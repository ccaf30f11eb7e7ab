"""Which stored results had their protocols recomputed, or hold protocol values from older protocol code.

Reports read stored results only: an evaluation's metrics.json records the protocol code identity its
values were computed with (`protocol_code`, harness.core.code_identity) and, when `run` recomputed them from
the stored matrix, a `protocols_recomputed` marker. Results without `protocol_code` predate it and are not
listed (their job identity is of the older scheme: `run` supersedes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.core.code_identity import protocol_code
from harness.report.markdown import escape, table
from harness.report.runs import RunGroup

OLDER = "protocols computed by older code; `run` recomputes them"


def protocol_notes(groups: Sequence[RunGroup], root: Path, current: str | None = None) -> list[str]:
    """A "Protocol code" section listing recomputed and out-of-date results; [] when there is none."""
    current = current if current is not None else protocol_code()
    rows = []
    for g in groups:
        for run in g.runs:
            stored = run.metrics.get("protocol_code")
            if not stored:
                continue
            marker = run.metrics.get("protocols_recomputed")
            if stored != current:
                note = OLDER
            elif isinstance(marker, dict):
                note = f"protocols recomputed from the stored matrix ({marker.get('at') or 'time unknown'})"
            else:
                continue
            try:
                where = run.path.relative_to(root).as_posix()
            except ValueError:
                where = run.path.as_posix()
            rows.append([f"`{escape(where)}`", escape(g.model), escape(note)])
    if not rows:
        return []
    return ["## Protocol code", "", f"Protocol / metric code now: `{current}`.", ""] + \
        table(["result folder", "model", "protocols"], rows, ["l", "l", "l"]) + [""]
