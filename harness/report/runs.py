"""Finished evaluation results grouped into report rows, and the statistics of one metric over a row.

A row (`RunGroup`) is one model configuration on one dataset: (method, variant, setting) evaluated either
from one official checkpoint or retrained from scratch, in which case every seed that ran is one run of the
row. A metric over a row is a `Stat`: the value of a single run with its stored 95% bootstrap interval, or
the mean and sample std over seeds with the interval mean +- 2 std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.registry import Registry, Reported
from harness.results import JobResult, ResultStore

OFFICIAL, RETRAINED = "official", "retrained"
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
    """`tree["a"]["b"]` for path "a.b"; an Undefined where a node on the way says it does not apply."""
    node: Any = tree
    for part in path.split("."):
        if (reason := not_defined(node)) is not None:
            return Undefined(reason)
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if (reason := not_defined(node)) is not None:
        return Undefined(reason)
    return node


# Protocols whose reported numbers ("sts.stsb", "image_retrieval.cub") are one statistic of several we store.
HEADLINE_GROUP = {"sts": "spearman", "image_retrieval": "r1"}


def metric_value(metrics: Mapping[str, Any], protocol: str, key: str) -> float | Undefined | None:
    """The number at `key` ("i2t.r1", "rsum", "sts.avg") of `protocol` in a metrics.json tree."""
    node = get_path(metrics, f"protocols.{protocol}")
    if node is None or isinstance(node, Undefined):
        return node
    value = get_path(node, key)
    if value is None and key.startswith(f"{protocol}."):  # e.g. "sts.avg" inside protocol sts
        rest = key[len(protocol) + 1:]
        value = get_path(node, rest)
        if value is None and protocol in HEADLINE_GROUP:  # the paper's number is the headline statistic
            value = get_path(node, f"{HEADLINE_GROUP[protocol]}.{rest}")
    if isinstance(value, Undefined):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


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
    """One report row: the runs of one (dataset, method, variant, setting, official checkpoint | retrained)."""

    dataset: str
    method: str
    variant: str
    setting: tuple[tuple[str, Any], ...]
    kind: str  # OFFICIAL, RETRAINED, or another source name
    tag: str = ""  # which official checkpoint (run folder name), "" for retrained rows
    runs: list[JobResult] = field(default_factory=list)

    @property
    def setting_dict(self) -> dict[str, Any]:
        return dict(self.setting)

    @property
    def model(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.setting)
        return f"{self.method}/{self.variant}{extra}"

    @property
    def source(self) -> str:
        """How the numbers were made: 'official checkpoint', 'retrained, 3 seeds (0, 1, 2)'."""
        if self.kind == OFFICIAL:
            names = sorted({Path(str(r.config["checkpoint"])).name for r in self.runs if r.config.get("checkpoint")})
            suffix = self.tag.rsplit("-", 1)[-1] if self.tag else OFFICIAL
            what = "official checkpoint" + (f" #{suffix[len(OFFICIAL):]}" if suffix[len(OFFICIAL):] else "")
            members = max((len(r.config.get("members") or []) for r in self.runs), default=0)
            if members:
                return f"official checkpoints, mean of {members} members"
            return what + (f" ({', '.join(names)})" if names else "")
        if self.kind == RETRAINED:
            seeds = sorted(int(r.config["seed"]) for r in self.runs if isinstance(r.config.get("seed"), int))
            listed = ", ".join(str(s) for s in seeds)
            return f"retrained, {len(self.runs)} seed{'s' if len(self.runs) != 1 else ''}" + \
                (f" ({listed})" if listed else "")
        return self.kind

    @property
    def label(self) -> str:
        return f"{self.model} · {self.source}"

    def has_protocol(self, protocol: str) -> bool:
        return any(get_path(r.metrics, f"protocols.{protocol}") is not None for r in self.runs)

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

    def matches(self, rep: Reported) -> bool:
        if (rep.method, rep.variant, rep.dataset) != (self.method, self.variant, self.dataset):
            return False
        mine = self.setting_dict
        return all(mine.get(k) == v for k, v in rep.setting.items())


def plain_stat(nums: Sequence[float]) -> Stat | None:
    if not nums:
        return None
    arr = np.asarray(nums, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return Stat(float(arr.mean()), std, len(arr), None)


def resolved_setting(registry: Registry, config: Mapping[str, Any],
                     recipe: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run's setting, completed where the config leaves a declared setting implicit: from the training
    `recipe` of a retrained run (e.g. objective only_contrastive), else from the registry's variant.

    E.g. an ESA* run of two BiGRU members has setting {members: bigru} even when its config does not say so.
    """
    setting = dict(config.get("setting") or {})
    method = registry.methods.get(str(config.get("method")))
    if method is None:
        return setting
    variant = method.variants.get(str(config.get("variant")))
    for key in method.settings:
        if key in setting:
            continue
        if recipe is not None and key in recipe:
            setting[key] = recipe[key]
        elif variant is None:
            continue
        elif key == "members" and variant.is_ensemble and len(set(variant.members)) == 1:
            setting[key] = variant.members[0]
        elif key in variant.options:
            setting[key] = variant.options[key]
    return setting


def run_kind(config: Mapping[str, Any]) -> str:
    source = str(config.get("source") or "")
    if source.startswith(OFFICIAL):
        return OFFICIAL
    if source.startswith("seed"):
        return RETRAINED
    return source or "unknown"


def job_name(store: ResultStore, result: JobResult) -> str:
    try:
        return result.path.relative_to(store.root).as_posix()
    except ValueError:
        return str(result.config.get("name") or result.path)


def _order_key(registry: Registry, g: RunGroup) -> tuple:
    methods = list(registry.methods)
    m_idx = methods.index(g.method) if g.method in methods else len(methods)
    variants = list(registry.methods[g.method].variants) if g.method in registry.methods else []
    v_idx = variants.index(g.variant) if g.variant in variants else len(variants)
    return (g.dataset, m_idx, g.method, v_idx, g.variant, str(g.setting), g.kind != OFFICIAL, g.kind, g.tag)


def _train_recipe(store: ResultStore, config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The recipe of the training job behind a retrained evaluation (None for official checkpoints)."""
    name = config.get("train_job")
    if not name or not (store.job_dir(str(name)) / "config.yaml").is_file():
        return None
    recipe = store.load(str(name)).config.get("recipe")
    return recipe if isinstance(recipe, Mapping) else None


def collect_groups(registry: Registry, store: ResultStore, dataset: str | None = None) -> list[RunGroup]:
    """Every finished evaluation under the store, grouped into rows, in registry order."""
    groups: dict[tuple, RunGroup] = {}
    for res in store.finished():
        cfg = res.config
        if cfg.get("stage") != "evaluate" or not cfg.get("method") or not cfg.get("dataset"):
            continue
        if dataset is not None and cfg["dataset"] != dataset:
            continue
        kind = run_kind(cfg)
        tag = res.path.parent.name if kind == OFFICIAL else ""
        setting = tuple(sorted(resolved_setting(registry, cfg, _train_recipe(store, cfg)).items()))
        key = (cfg["dataset"], cfg["method"], str(cfg.get("variant")), setting, kind, tag)
        group = groups.setdefault(key, RunGroup(cfg["dataset"], cfg["method"], str(cfg.get("variant")), setting,
                                                kind, tag))
        group.runs.append(res)
    return sorted(groups.values(), key=lambda g: _order_key(registry, g))


def matching_reported(registry: Registry, group: RunGroup, protocol: str) -> Reported | None:
    """The first registry entry (registry order) for the row's model on this dataset and protocol."""
    for rep in registry.reported_for(group.method, group.dataset):
        if rep.protocol == protocol and group.matches(rep):
            return rep
    return None


def printed_decimals(value: float) -> int:
    """Decimals a reported number was printed with, as far as the float tells (82.6 -> 1, 0.815 -> 3)."""
    text = repr(float(value))
    if "e" in text or "." not in text:
        return 0
    frac = text.split(".")[1]
    return 0 if frac == "0" else len(frac)


def printed_half_unit(value: float) -> float:
    """Half a unit of the last printed digit of a reported number (82.6 -> 0.05): its rounding slack."""
    return 0.5 * 10.0 ** -printed_decimals(value)


def outside(reported: float, interval: tuple[float, float] | None) -> bool:
    """True when the printed number, with its rounding slack, lies entirely outside the interval."""
    if interval is None:
        return False
    lo, hi = interval
    slack = printed_half_unit(reported)
    return reported + slack < lo or reported - slack > hi
