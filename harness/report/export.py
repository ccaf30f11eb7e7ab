"""`report --export FILE.csv|FILE.parquet`: every stored number as one tidy row (pandas).

One row per result x protocol x number: the number's key ("i2t.r1"), its direction and metric, the value, the
stored 95% interval and the tie bounds (tie-pessimistic = the headline value, tie-optimistic beside it), with
the row's method, variant, dataset, split, source, seed, recipe settings, the job's identity (key), code
revision and hardware (env.json). Counts (queries, tie-affected queries), parameters and the interval / tie
subtrees are not numbers of their own; median and mean ranks and per-fold numbers are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.core.errors import ItrbenchError
from harness.core.results import atomic_path
from harness.report.columns import SKIP_KEYS
from harness.report.merge import MergedStore
from harness.report.provenance import hardware_text, revision_text
from harness.report.runs import RunGroup, get_path, job_name, stored_interval
from harness.report.site.cells import source_kind

FORMATS = (".csv", ".parquet")
DIRECTIONS = ("i2t", "t2i", "i2i", "t2t")
# bookkeeping of a protocol's metrics (intervals, tie bounds, counts, parameters); ranks and folds are numbers
BOOKKEEPING = SKIP_KEYS - {"medr", "meanr", "folds"}
COLUMNS = ("dataset", "split", "method", "variant", "model", "source", "source_detail", "seed", "settings",
           "protocol", "key", "direction", "metric", "value", "ci_low", "ci_high", "tie_pessimistic",
           "tie_optimistic", "job", "results_folder", "identity", "conflict", "code_revision", "hardware",
           "device", "torch")


class ExportError(ItrbenchError):
    """An --export file the report cannot write."""


def number_keys(node: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted key, value) of every number of a protocol's metrics node, lists indexed ("folds.0.i2t.r1")."""
    items: Any
    if isinstance(node, Mapping):
        if node.get("defined") is False or node.get("available") is False:
            return
        items = node.items()
    elif isinstance(node, list):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        return
    for key, value in items:
        key = str(key)
        if key in BOOKKEEPING or key.endswith("_queries") or key.startswith("n_"):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            yield path, float(value)
        else:
            yield from number_keys(value, f"{path}.")


def tie_optimistic(node: Mapping[str, Any], key: str) -> float | None:
    """The tie-optimistic bound of `key`: ties.rsum_tie_optimistic, or <direction>.tie_optimistic.<metric>."""
    parts = key.split(".")
    if parts[-1] == "rsum":
        found = get_path(node, ".".join([*parts[:-1], "ties", "rsum_tie_optimistic"]))
    else:
        found = get_path(node, ".".join([*parts[:-1], "tie_optimistic", parts[-1]]))
    return float(found) if isinstance(found, (int, float)) and not isinstance(found, bool) else None


def _folder(store: Any, run: Any) -> str:
    return store.label_of(run) if isinstance(store, MergedStore) else str(store.root)


def tidy_rows(groups: Sequence[RunGroup], store: Any) -> list[dict[str, Any]]:
    """The export's rows, from the report's rows (`collect_groups`), in report order."""
    rows = []
    for g in groups:
        settings = json.dumps({k: v for k, v in g.setting}, sort_keys=True, default=str)
        for run in g.runs:
            env, job = run.env or {}, run.job
            common = {"dataset": g.dataset, "split": job.split, "method": g.method, "variant": g.variant,
                      "model": g.model, "source": source_kind(g), "source_detail": job.source,
                      "seed": job.seed if isinstance(job.seed, int) else None, "settings": settings,
                      "job": job_name(store, run), "results_folder": _folder(store, run),
                      "identity": str(run.config.get("key") or job_name(store, run)), "conflict": bool(g.conflict),
                      "code_revision": revision_text(env), "hardware": hardware_text(env),
                      "device": env.get("device"), "torch": (env.get("packages") or {}).get("torch")}
            for protocol, node in (run.metrics.get("protocols") or {}).items():
                for key, value in number_keys(node):
                    parts = key.split(".")
                    ci = stored_interval(run.metrics, protocol, key)
                    rows.append({**common, "protocol": protocol, "key": key,
                                 "direction": next((p for p in parts if p in DIRECTIONS), ""), "metric": parts[-1],
                                 "value": value, "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None,
                                 "tie_pessimistic": value, "tie_optimistic": tie_optimistic(node, key)})
    return rows


def check_export_path(path: str | Path) -> Path:
    """The export file, refused (one line) when its suffix is not .csv / .parquet or parquet has no engine."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ExportError(f"--export {path}: unknown format '{path.suffix}'; name a .csv or .parquet file")
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise ExportError(f"--export {path}: parquet needs pyarrow (pip install pyarrow), or export to "
                              f"{path.with_suffix('.csv').name}") from exc
    return path


def write_export(groups: Sequence[RunGroup], store: Any, path: str | Path) -> Path:
    import pandas as pd

    path = check_export_path(path)
    frame = pd.DataFrame(tidy_rows(groups, store), columns=list(COLUMNS))
    frame["seed"] = frame["seed"].astype("Int64")
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path
