"""Which metric columns a table shows, in what order, and under which names."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from harness.eval.protocols import PROTOCOLS, RECALL_HEADLINE, Protocol
from harness.report.runs import RunGroup, Undefined, get_path, not_defined

RECALL_COLUMNS = RECALL_HEADLINE
# bookkeeping entries of a protocol's metrics, never shown as metric columns
SKIP_KEYS = frozenset({"protocol", "ties", "tie_optimistic", "tie_affected_queries", "queries", "folds", "ci", "ci95",
                       "bootstrap", "defined", "available", "reason", "shape", "ids", "warning", "source", "resamples",
                       "threshold", "medr", "meanr"})
MAX_COLUMNS = 10  # wider tables are split by their first key segment (direction)


def declared(protocol: str, table: Mapping[str, Protocol] | None = None) -> Protocol | None:
    """The declaration of `protocol` in `table` (the registry's; default the built-ins), None if unknown."""
    return (PROTOCOLS if table is None else table).get(protocol)


def protocol_title(protocol: str, table: Mapping[str, Protocol] | None = None) -> str:
    proto = declared(protocol, table)
    return proto.title if proto is not None else protocol


SPECIAL_NAMES = {"rsum_printed": "printed rsum"}  # the official 5-fold summary's "rsum" line (6 x mean i2t)


def fold_key(key: str) -> tuple[int, str] | None:
    """(fold, metric) of a per-fold key ('folds.3.i2t.r1' -> (3, 'i2t.r1')), None for other keys."""
    parts = key.split(".", 2)
    if len(parts) == 3 and parts[0] == "folds" and parts[1].isdigit():
        return int(parts[1]), parts[2]
    return None


def column_name(key: str) -> str:
    """'i2t.r1' -> 'i2t R@1', 't2i.eccv_map_at_r' -> 't2i eccv map@R', 'rsum' -> 'rsum', 'i2t.medr' -> 'i2t medr'."""
    if key in SPECIAL_NAMES:
        return SPECIAL_NAMES[key]
    if (fk := fold_key(key)) is not None:
        return f"fold {fk[0]} {column_name(fk[1])}"
    parts = key.split(".")

    def pretty(p: str) -> str:
        if p.startswith("r") and p[1:].isdigit():
            return f"R@{p[1:]}"
        return p.replace("_r1", " R@1").replace("_r5", " R@5").replace("_r10", " R@10") \
            .replace("map_at_r", "mAP@R").replace("rprecision", "R-P").replace("_", " ")

    return " ".join(pretty(p) for p in parts)


def _leaves(node: Any, prefix: str = "") -> Iterable[str]:
    if not isinstance(node, Mapping) or not_defined(node) is not None:
        return
    for key, value in node.items():
        if key in SKIP_KEYS or key.endswith("_queries") or key.startswith("n_"):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _leaves(value, path + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield path


def ordered(keys: Iterable[str]) -> list[str]:
    """Recall columns first in their usual order, then the rest in first-seen order."""
    seen = list(dict.fromkeys(keys))
    head = [k for k in RECALL_COLUMNS if k in seen]
    return head + [k for k in seen if k not in head]


def metric_columns(groups: Sequence[RunGroup], protocol: str, reported_keys: Iterable[str] = (),
                   table: Mapping[str, Protocol] | None = None) -> list[str]:
    """Columns for a protocol table: the ones the protocol declares, or (none declared) every metric any run
    (or reported row) has."""
    proto = declared(protocol, table)
    if proto is not None and proto.columns is not None:
        return list(proto.columns)
    keys: list[str] = []
    for g in groups:
        for run in g.runs:
            node = get_path(run.metrics, f"protocols.{protocol}")
            if isinstance(node, Mapping):
                keys.extend(_leaves(node))
    keys.extend(reported_keys)
    return ordered(keys)


_METRIC_SUFFIX = re.compile(r"(_r\d+|_map_at_r|_rprecision)$")


def family(key: str) -> str:
    """The metric family of a column: 'i2t.coco1k_r5' -> 'coco1k', 'rsum.cxc' -> 'cxc', 'i2t.r1' -> ''."""
    parts = key.split(".")
    if parts[0] == "rsum" and len(parts) > 1:
        return parts[1]
    return _METRIC_SUFFIX.sub("", parts[-1]) if _METRIC_SUFFIX.search(parts[-1]) else parts[-1]


def _bucket(columns: Sequence[str], key) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in columns:
        out.setdefault(key(c), []).append(c)
    return out


def split_columns(columns: Sequence[str], lead: str = "") -> list[tuple[str, list[str]]]:
    """Narrow tables stay whole; wide ones are cut into tables of at most MAX_COLUMNS columns.

    Columns are grouped by metric family (eccv, coco1k, cxc, ...) when that groups them, else by direction
    (the first key segment); a group still too wide is cut by direction; consecutive small groups share a table.
    The family named `lead` (the protocol's own, e.g. eccv) comes first.
    """
    if len(columns) <= MAX_COLUMNS:
        return [("", list(columns))]
    families = _bucket(columns, family)
    if any(len(v) > 1 for v in families.values()) and len(families) <= len(columns) / 2:
        groups = sorted(families.items(), key=lambda item: item[0] != lead)
    else:
        groups = [("", list(columns))]
    pieces: list[tuple[tuple[str, str], list[str]]] = []  # ((family, direction), columns)
    for name, cols in groups:
        if len(cols) <= MAX_COLUMNS:
            pieces.append(((name, ""), cols))
            continue
        for direction, sub in _bucket(cols, lambda c: c.split(".")[0] if "." in c else c).items():
            pieces.append(((name, direction), sub))
    tables: list[tuple[list[tuple[str, str]], list[str]]] = []
    for name, cols in pieces:  # pack consecutive pieces into shared tables
        if tables and len(tables[-1][1]) + len(cols) <= MAX_COLUMNS:
            tables[-1][0].append(name)
            tables[-1][1].extend(cols)
        else:
            tables.append(([name], list(cols)))
    return [(_title(names), cols) for names, cols in tables]


def _title(names: Sequence[tuple[str, str]]) -> str:
    """[("cxc", "i2t"), ("cxc", "t2i")] -> "cxc: i2t, t2i"; [("eccv", ""), ("pmrp", "")] -> "eccv, pmrp"."""
    by_family: dict[str, list[str]] = {}
    for fam, direction in names:
        by_family.setdefault(fam, []).extend([direction] if direction else [])
    parts = [f"{fam}: {', '.join(dirs)}" if fam and dirs else (fam or ", ".join(dirs))
             for fam, dirs in by_family.items()]
    return "; ".join(p for p in parts if p)


def undefined_notes(groups: Sequence[RunGroup], protocol: str) -> list[tuple[RunGroup, str, str]]:
    """(row, what, reason) for every part of the protocol a row's runs declare not defined."""
    out: list[tuple[RunGroup, str, str]] = []
    for g in groups:
        seen: set[tuple[str, str]] = set()
        for run in g.runs:
            node = get_path(run.metrics, f"protocols.{protocol}")
            for what, reason in _undefined(node, protocol):
                if (what, reason) not in seen:
                    seen.add((what, reason))
                    out.append((g, what, reason))
    return out


def _undefined(node: Any, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(node, Undefined):
        yield path, node.reason
    elif isinstance(node, Mapping):
        for key, value in node.items():
            if (reason := not_defined(value)) is not None:
                yield f"{path} {key}", reason
            elif isinstance(value, Mapping) and key not in SKIP_KEYS:
                yield from _undefined(value, f"{path} {key}")
