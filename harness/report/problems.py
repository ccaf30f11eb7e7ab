"""Stored results a report cannot use as they are, named by job folder: metrics.json files holding NaN / inf
numbers, and similarity matrices set aside by the significance tests (`harness.report.significance`).

A metrics.json with non-finite numbers stays in place (it is the job's done flag; moving it would make `run`
redo a job whose rerun gives the same numbers): its row is shown, never ranked best, and named here and in a
warning. An unusable matrix is moved aside (kept) when the report first reads it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.core.errors import CorruptFileWarning
from harness.core.results import JobResult
from harness.report.markdown import escape

SHOWN = 4  # keys named per job in a warning or a report line


def non_finite_keys(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the NaN / inf numbers in a metrics tree ("protocols.recall.rsum = inf")."""
    if isinstance(tree, Mapping):
        return [k for key, v in tree.items() for k in non_finite_keys(v, f"{prefix}{key}.")]
    if isinstance(tree, (list, tuple)):
        return [k for i, v in enumerate(tree) for k in non_finite_keys(v, f"{prefix}{i}.")]
    if isinstance(tree, float) and not math.isfinite(tree):
        return [f"{prefix[:-1]} = {tree}"]
    return []


def _listed(keys: Sequence[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def non_finite_results(results: Sequence[JobResult], warn: bool = True) -> dict[Path, str]:
    """Job folder -> what is not finite in its metrics.json; one warning line per such job (`warn`)."""
    found: dict[Path, str] = {}
    for res in results:
        keys = non_finite_keys(res.metrics)
        if keys:
            found[res.path] = f"metrics.json holds non-finite numbers ({_listed(keys)})"
            if warn:
                warnings.warn(f"{res.path}: {found[res.path]}; its row is shown but never ranked",
                              CorruptFileWarning, stacklevel=2)
    return found


def problems_section(problems: Mapping[Path, str], root: Path) -> list[str]:
    """`## Stored results with problems`: one line per job folder (relative to the results root)."""
    if not problems:
        return []
    lines = []
    for path in sorted(problems):
        try:
            where = path.relative_to(root).as_posix()
        except ValueError:
            where = path.as_posix()
        text = problems[path]
        text = text[len(str(path)) + 2:] if text.startswith(f"{path}: ") else text
        lines.append(f"- `{where}`: {escape(text)}")
    return ["## Stored results with problems", "",
            "These results are shown as far as they can be; what is wrong with each, by job folder (unusable "
            "matrices were moved aside, not deleted):", "", *lines, ""]
