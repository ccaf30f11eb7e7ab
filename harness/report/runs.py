"""Finished evaluation results grouped into report rows, and the statistics of one metric over a row.

A row (`RunGroup`) is one model configuration on one dataset: (method, variant, resolved setting) evaluated
from one official checkpoint, from one imported matrix (e.g. the official code's own output, with where it
came from), or retrained from scratch, in which case every seed that ran is one run of the row. Which
reported rows a row fills is decided by `harness.report.matching`. A metric over a row is a `Stat`: the value
of a single run with its stored 95% bootstrap interval, or the mean and sample std over seeds with the
interval mean +- 2 std. Any reported key is looked up in whatever shape the protocol stored it: nested
("i2t.r1"), flat, per fold ("folds.3.t2i.r5", a list), under the paper's statistic ("sts.stsb" is the stored
Spearman), or derived from the stored numbers ("rsum_printed", the official 5-fold summary's rsum line).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.jobconfig import JobConfig
from harness.core.results import JobResult, ResultStore
from harness.eval.protocols import PROTOCOLS
from harness.report.matching import DEFAULT_PRECISION, PRECISION, fact_keys, resolve_run, row_matches, same
from harness.report.merge import MergedStore
from harness.spec.registry import Registry, Reported

OFFICIAL, RETRAINED, IMPORTED = "official", "retrained", "imported"
MEMBER = "ensemble member"  # the 2nd.. model of an ensemble repeating one variant: never one of the variant's seeds
MEMBER_SOURCE = re.compile(r"seed\d+-member\d+")
CONFLICT = "(⚠ conflict: the same job has other numbers in another results folder)"
CI_KEYS = ("ci", "ci95")  # where a protocol's bootstrap intervals may be stored


@dataclass(frozen=True)
class Undefined:
    """A metric that does not apply to a method (e.g. CxC i2i without a uni-modal image space)."""

    reason: str


@dataclass(frozen=True)
class Stat:
    """One metric over the runs of a row."""

    mean: float
    std: float | None  # sample std over seeds; None for a single run
    n: int
    interval: tuple[float, float] | None  # 95% bootstrap interval (one run) or mean +- 2 std (seeds)

    @property
    def basis(self) -> str:
        if self.interval is None:
            return ""
        return "mean ± 2 std" if self.n > 1 else "95% CI"


def not_defined(node: Any) -> str | None:
    """The reason when a metrics node says it does not apply ({defined: false} or {available: false})."""
    if isinstance(node, Mapping) and (node.get("defined") is False or node.get("available") is False):
        return str(node.get("reason") or "not defined")
    return None


def get_path(tree: Any, path: str) -> Any:
    """`tree["a"]["b"]` for path "a.b" (a list is indexed by a number: "folds.0.i2t.r1"); an Undefined where
    a node on the way says it does not apply; None where the path does not exist."""
    node: Any = tree
    for part in path.split("."):
        if (reason := not_defined(node)) is not None:
            return Undefined(reason)
        if isinstance(node, Mapping):
            if part not in node:
                return None
            node = node[part]
        elif isinstance(node, Sequence) and not isinstance(node, str) and part.isdigit():
            if int(part) >= len(node):
                return None
            node = node[int(part)]
        else:
            return None
    if (reason := not_defined(node)) is not None:
        return Undefined(reason)
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def printed_rsum(node: Mapping[str, Any]) -> float | None:
    """The official 5-fold summary's "rsum" line, 6 x mean over folds of the mean i2t recall (2 x the i2t
    recall sum); a full-split evaluation prints the true rsum."""
    folds = node.get("folds")
    if isinstance(folds, Sequence) and not isinstance(folds, str) and folds:
        means = []
        for fold in folds:
            vals = [_number(get_path(fold, f"i2t.r{k}")) for k in (1, 5, 10)]
            if any(v is None for v in vals):
                return None
            means.append(sum(vals) / 3.0)  # type: ignore[arg-type]
        return 6.0 * sum(means) / len(means)
    return _number(node.get("rsum"))


# Reported keys that no protocol stores under their own name but that the stored numbers determine.
DERIVED_KEYS = {"rsum_printed": printed_rsum}


# Protocols whose reported numbers ("sts.stsb", "image_retrieval.cub") are one statistic of several we store.
HEADLINE_GROUP = {n: p.statistic for n, p in PROTOCOLS.items() if p.statistic}


def stored_key(protocol: str, key: str) -> str:
    """Where a reported key's number is stored: "sts.stsb" -> "spearman.stsb" (the paper's statistic)."""
    if protocol in HEADLINE_GROUP and key.startswith(f"{protocol}."):
        return f"{HEADLINE_GROUP[protocol]}.{key[len(protocol) + 1:]}"
    return key


def metric_value(metrics: Mapping[str, Any], protocol: str, key: str) -> float | Undefined | None:
    """The number at `key` ("i2t.r1", "rsum", "sts.avg") of `protocol` in a metrics.json tree."""
    node = get_path(metrics, f"protocols.{protocol}")
    if node is None or isinstance(node, Undefined):
        return node
    value = get_path(node, key)
    if value is None and isinstance(node, Mapping) and key in node:  # stored flat: {"i2t.r1": ...}
        value = node[key]
    rest = key[len(protocol) + 1:] if key.startswith(f"{protocol}.") else key  # "sts.avg" inside protocol sts
    if value is None and rest != key:
        value = get_path(node, rest)
    if value is None and protocol in HEADLINE_GROUP:  # the paper's number is the headline statistic
        value = get_path(node, f"{HEADLINE_GROUP[protocol]}.{rest}")
    if value is None and key in DERIVED_KEYS and isinstance(node, Mapping):
        value = DERIVED_KEYS[key](node)
    if isinstance(value, Undefined):
        return value
    if value is None and isinstance(node, Mapping):  # a cascade's value needing ranks beyond its shortlist
        parent, _, leaf = key.rpartition(".")
        holder = get_path(node, parent) if parent else node
        reasons = holder.get("not_defined") if isinstance(holder, Mapping) else None
        if isinstance(reasons, Mapping) and leaf in reasons:
            return Undefined(str(reasons[leaf]))
    return _number(value)


def _as_interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 \
            and all(isinstance(v, (int, float)) for v in value):
        return float(value[0]), float(value[1])
    return None


def stored_interval(metrics: Mapping[str, Any], protocol: str, key: str) -> tuple[float, float] | None:
    """The stored 95% bootstrap interval of `key`: `ci["i2t.r1"]` (flat) or `ci95.i2t.r1` (nested)."""
    node = get_path(metrics, f"protocols.{protocol}")
    if not isinstance(node, Mapping):
        return None
    for name in CI_KEYS:
        ci = node.get(name)
        if not isinstance(ci, Mapping):
            continue
        found = _as_interval(ci.get(key)) or _as_interval(get_path(ci, key))
        if found is None and key == "rsum" and isinstance(ci.get("rsum"), Mapping) and len(ci["rsum"]) == 1:
            found = _as_interval(next(iter(ci["rsum"].values())))  # {family: [lo, hi]}
        if found is not None:
            return found
    return None


@dataclass
class RunGroup:
    """One report row: the runs of one (dataset, method, variant, setting, official | retrained | imported)."""

    dataset: str
    method: str
    variant: str
    setting: tuple[tuple[str, Any], ...]  # resolved (see harness.report.matching), facts shared by all runs
    kind: str  # OFFICIAL, RETRAINED, IMPORTED, or another source name
    tag: str = ""  # which checkpoint / imported matrix (run folder name), "" for retrained rows
    runs: list[JobResult] = field(default_factory=list)
    baseline: bool = False  # a run of a baseline method (e.g. zero-shot CLIP), shown as such
    facts: frozenset[str] = frozenset()  # settings that are facts about the runs (the checkpoint epoch)
    conflict: str = ""  # merged folders: the folder of a copy whose identity holds other numbers elsewhere
    cascade: str = ""  # a shortlist-and-rerank row: "rerank top-64 of esa/bigru" ("" for exact rows)

    @property
    def setting_dict(self) -> dict[str, Any]:
        return dict(self.setting)

    @property
    def model(self) -> str:
        """'vsl/sgr, batch_size=32, loss=triplet': the variant and every recipe setting (fp32 precision not named;
        facts such as the checkpoint epoch are part of `source`)."""
        extra = "".join(f", {k}={v}" for k, v in self.setting
                        if k not in self.facts and not (k == PRECISION and v == DEFAULT_PRECISION))
        return f"{self.method}/{self.variant}{extra}" + (f", {self.cascade}" if self.cascade else "")

    @property
    def source(self) -> str:
        """How the numbers were made: 'official checkpoint', 'retrained, 3 seeds (0, 1, 2)', 'imported: ...'."""
        text = self._source() + "".join(f", {'checkpoint ' if k == 'epoch' else ''}{k} {v}"
                                         for k, v in self.setting if k in self.facts)
        if self.conflict:
            text += f", from {self.conflict} {CONFLICT}"
        return f"baseline: {text}" if self.baseline else text

    def _source(self) -> str:
        if self.kind == OFFICIAL:
            names = sorted({Path(r.job.checkpoint).name for r in self.runs if r.job.checkpoint})
            suffix = self.tag.rsplit("-", 1)[-1] if self.tag else OFFICIAL
            what = "official checkpoint" + (f" #{suffix[len(OFFICIAL):]}" if suffix[len(OFFICIAL):] else "")
            members = max((len(r.job.members or ()) for r in self.runs), default=0)
            if members:
                return f"official checkpoints, mean of {members} members"
            return what + (f" ({', '.join(names)})" if names else "")
        if self.kind == RETRAINED:
            seeds = sorted(r.job.seed for r in self.runs if isinstance(r.job.seed, int))
            listed = ", ".join(str(s) for s in seeds)
            return f"retrained, {len(self.runs)} seed{'s' if len(self.runs) != 1 else ''}" + \
                (f" ({listed})" if listed else "")
        if self.kind == MEMBER:
            names = sorted({r.job.source or "" for r in self.runs})
            return f"retrained as an ensemble member ({', '.join(names)}); not one of the variant's seeds"
        if self.kind == IMPORTED:
            where = sorted({provenance_text(r.job.provenance) for r in self.runs} - {""})
            return "imported matrix" + (f": {'; '.join(where)}" if where else " (provenance not recorded)")
        return self.kind

    @property
    def label(self) -> str:
        return f"{self.model} · {self.source}"

    def has_protocol(self, protocol: str) -> bool:
        return any(get_path(r.metrics, f"protocols.{protocol}") is not None for r in self.runs)

    def computed(self, protocol: str) -> bool:
        """Whether some run computed the protocol (not only recorded that it does not apply)."""
        return any(isinstance(get_path(r.metrics, f"protocols.{protocol}"), Mapping) for r in self.runs)

    def stat(self, protocol: str, key: str) -> Stat | Undefined | None:
        values = [metric_value(r.metrics, protocol, key) for r in self.runs]
        undefined = [v for v in values if isinstance(v, Undefined)]
        if undefined:
            return undefined[0]
        nums = [v for v in values if v is not None]
        if not nums:
            return None
        if len(nums) == 1:
            run = next(r for r, v in zip(self.runs, values) if v is not None)
            return Stat(nums[0], None, 1, stored_interval(run.metrics, protocol, key))
        arr = np.asarray(nums, dtype=np.float64)
        mean, std = float(arr.mean()), float(arr.std(ddof=1))
        return Stat(mean, std, len(nums), (mean - 2 * std, mean + 2 * std))

    def efficiency(self, key: str) -> Stat | None:
        values = [(r.metrics.get("efficiency") or {}).get(key) for r in self.runs]
        return plain_stat([float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)])

    def matches(self, rep: Reported, registry: Registry) -> bool:
        """Whether this row's runs are the model `rep` describes (variant, dataset and every setting agree); a
        cascade row never is (papers report exact evaluations)."""
        if self.cascade:
            return False
        return row_matches(registry, rep, self.method, self.variant, self.dataset, self.setting_dict)


def cascade_label(cascade: Mapping[str, Any] | None) -> str:
    """How a report names a cascade row's method: "rerank top-64 of esa/bigru" ("" for an exact row)."""
    if not cascade:
        return ""
    return f"rerank top-{cascade.get('k')} of {cascade.get('shortlister') or cascade.get('source') or '?'}"


def cascade_order(label: str) -> tuple[int, int, str]:
    """Exact rows first, then cascades by K."""
    match = re.match(r"rerank top-(\d+)", label)
    return (1 if label else 0, int(match.group(1)) if match else 0, label)


def provenance_text(provenance: Any) -> str:
    """Where an imported matrix came from, in a few words: its label or origin, the file name and the start of
    its sha256 (the import command's {file, sha256, label, ...}); a plain string as it is."""
    if provenance is None:
        return ""
    if not isinstance(provenance, Mapping):
        return str(provenance)
    parts = [str(provenance[k]) for k in ("label", "from", "origin", "note") if provenance.get(k)]
    if provenance.get("file"):
        parts.append(Path(str(provenance["file"])).name)
    if provenance.get("sha256"):
        parts.append(f"sha256 {str(provenance['sha256'])[:12]}")
    return ", ".join(parts)


def plain_stat(nums: Sequence[float]) -> Stat | None:
    if not nums:
        return None
    arr = np.asarray(nums, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return Stat(float(arr.mean()), std, len(arr), None)


def resolved_setting(registry: Registry, config: JobConfig | Mapping[str, Any],
                     recipe: Mapping[str, Any] | None = None, store: ResultStore | None = None) -> dict[str, Any]:
    """The run's setting, every setting of its method resolved from what it stored (harness.report.matching):
    from the training `recipe` of a retrained run (e.g. objective only_contrastive), else from the registry's
    recipe and variant. E.g. an ESA* run of two BiGRU members has setting {members: bigru} even when its config
    does not say so."""
    return resolve_run(registry, config, store, train_recipe=recipe)


def run_kind(job: JobConfig) -> str:
    source = job.source or ""
    if source.startswith(OFFICIAL):
        return OFFICIAL
    if MEMBER_SOURCE.match(source):
        return MEMBER
    if source.startswith("seed"):
        return RETRAINED
    if source.startswith(IMPORTED):
        return IMPORTED
    return source or "unknown"


def job_name(store: ResultStore, result: JobResult) -> str:
    if isinstance(store, MergedStore):
        return store.name_of(result)
    try:
        return result.path.relative_to(store.root).as_posix()
    except ValueError:
        return str(result.config.get("name") or result.path)


def _order_key(registry: Registry, g: RunGroup) -> tuple:
    methods = list(registry.methods)
    m_idx = methods.index(g.method) if g.method in methods else len(methods)
    variants = list(registry.methods[g.method].variants) if g.method in registry.methods else []
    v_idx = variants.index(g.variant) if g.variant in variants else len(variants)
    kind_idx = {OFFICIAL: 0, IMPORTED: 1, RETRAINED: 2, MEMBER: 3}.get(g.kind, 4)
    return (g.dataset, m_idx, g.method, v_idx, g.variant, str(g.setting), kind_idx, g.kind, g.tag, g.conflict,
            cascade_order(g.cascade))


def collect_groups(registry: Registry, store: ResultStore, dataset: str | None = None) -> list[RunGroup]:
    """Every finished evaluation under the store, grouped into rows, in registry order.

    Runs share a row when their method, variant, resolved recipe settings and kind agree (seeds of one recipe);
    facts that differ between seeds (the best epoch) do not split a row: the row keeps the value all its runs
    share, or none."""
    groups: dict[tuple, RunGroup] = {}
    facts_of: dict[tuple, list[dict[str, Any]]] = {}
    for res in store.finished():
        job = res.job
        if job.stage != "evaluate" or not job.method or not job.dataset:
            continue
        if dataset is not None and job.dataset != dataset:
            continue
        kind = run_kind(job)
        tag = "" if kind == RETRAINED else res.path.parent.name
        method = registry.methods.get(job.method)
        facts = fact_keys(method)
        resolved = resolve_run(registry, job, store, res.metrics)
        setting = tuple(sorted((k, v) for k, v in resolved.items() if k not in facts))
        declared = registry.datasets.get(job.dataset)
        # never mixed with test-split rows ("test" is also the test split's name in the CUSA/ALBEF json layout)
        if job.split and declared is not None and job.split not in (declared.split, "test"):
            setting = tuple(sorted([*setting, ("split", job.split)], key=lambda kv: str(kv[0])))
        conflict = store.conflict_of(res) if isinstance(store, MergedStore) else ""
        cascade = cascade_label(job.cascade)
        key = (job.dataset, job.method, job.variant, setting, kind, tag, conflict, cascade)
        group = groups.setdefault(key, RunGroup(job.dataset, job.method, job.variant, setting,
                                                kind, tag, baseline=bool(getattr(method, "baseline", False)),
                                                facts=facts, conflict=conflict, cascade=cascade))
        group.runs.append(res)
        facts_of.setdefault(key, []).append({k: v for k, v in resolved.items() if k in facts})
    for key, group in groups.items():
        runs = facts_of[key]
        shared = {k: runs[0][k] for k in runs[0] if all(k in r and same(r[k], runs[0][k]) for r in runs)}
        if shared:
            group.setting = tuple(sorted([*group.setting, *shared.items()], key=lambda kv: str(kv[0])))
    return sorted(groups.values(), key=lambda g: _order_key(registry, g))


def matching_rows(registry: Registry, group: RunGroup, protocol: str) -> list[Reported]:
    """Every registry row (registry order) that describes the row's model on this dataset and protocol."""
    return [rep for rep in registry.reported_for(group.method, group.dataset)
            if rep.protocol == protocol and group.matches(rep, registry)]


def matching_reported(registry: Registry, group: RunGroup, protocol: str) -> Reported | None:
    """The first registry row (registry order) that describes the row's model on this dataset and protocol."""
    rows = matching_rows(registry, group, protocol)
    return rows[0] if rows else None


def printed_decimals(value: float) -> int:
    """Decimals a number needs, as far as the float tells (82.6 -> 1, 0.815 -> 3; 98.0 -> 0: a reported
    number's printed decimals are its registry row's `places`, not this)."""
    text = repr(float(value))
    if "e" in text or "." not in text:
        return 0
    frac = text.split(".")[1]
    return 0 if frac == "0" else len(frac)


def half_unit(decimals: int) -> float:
    """Half a unit of the last printed digit (1 decimal -> 0.05): a printed number's rounding slack."""
    return 0.5 * 10.0 ** -decimals


def printed_half_unit(value: float) -> float:
    """Half a unit of the last digit a number needs (82.6 -> 0.05)."""
    return half_unit(printed_decimals(value))


def outside(reported: float, interval: tuple[float, float] | None, slack: float | None = None) -> bool:
    """True when the printed number, widened by its rounding slack (default: half a unit of the digits it
    needs), lies entirely outside the interval."""
    if interval is None:
        return False
    lo, hi = interval
    slack = printed_half_unit(reported) if slack is None else slack
    return reported + slack < lo or reported - slack > hi
