"""Ranges of the recipe values every method shares, and of the run's options: checked before the first job starts.

A recipe value reaches a job only if it has its key's type and lies in its range (`check_recipe`): an epoch count
of -3, a batch of 0 or a NaN learning rate would otherwise pass the plan and fail (or silently train nothing) hours
later. Keys not listed here keep the type check of the registry and of `--set` (the type of the recipe's value);
every number anywhere in a recipe must be finite.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any

from harness.core.errors import ItrbenchError


class ValueRangeError(ItrbenchError):
    """A recipe value or run option outside its type or range."""


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(lo: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo), f"an integer >= {lo}"


def _float(lo: float, hi: float | None = None, open_lo: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        return (_number(v) and math.isfinite(v) and (v > lo if open_lo else v >= lo)
                and (hi is None or v <= hi))
    bound = f"> {lo}" if open_lo else f">= {lo}"
    return ok, f"a finite number {bound}" + (f" and <= {hi}" if hi is not None else "")


def _int_list(lo: int) -> tuple[Callable[[Any], bool], str]:
    item, _ = _int(lo)
    return (lambda v: isinstance(v, (list, tuple)) and all(item(x) for x in v)), f"a list of integers >= {lo}"


def _interval() -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        return (isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(x) and math.isfinite(x) and x > 0
                                                                     for x in v) and v[0] <= v[1])
    return ok, "two finite positive numbers [low, high] with low <= high"


RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{k: _int(1) for k in ("epochs", "batch_size", "batch_size_test", "embed_size", "img_dim", "word_dim",
                            "sim_dim", "num_regions", "kernel_size", "hardnum", "lr_update", "gpus")},
    **{k: _int(0) for k in ("warmup_epochs", "seed")},
    **{k: _float(0.0, open_lo=True) for k in ("lr", "min_lr", "tau", "cross_tau", "softlabel_tau", "uni_tau_image",
                                               "uni_tau_text", "rank_temperature", "grad_clip")},
    **{k: _float(0.0) for k in ("margin", "weight_decay", "bert_lr_factor", "csa_weight", "itc_weight",
                                "usa_weight", "vsl_weight")},
    **{k: _float(0.0, 1.0) for k in ("lr_decay", "region_keep", "word_aug_prob")},
    "lr_decay_epochs": _int_list(0),
    **{k: _interval() for k in ("tau_range", "cross_tau_range", "softlabel_tau_range", "uni_tau_range")},
}


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    if isinstance(value, Mapping):
        return any(_non_finite(v) for v in value.values())
    return False


def check_value(key: str, value: Any, where: str) -> None:
    """One recipe value: finite, and inside its key's range when the key is a shared one."""
    if value is None:
        return
    if _non_finite(value):
        raise ValueRangeError(f"{where}: {key}={value!r} is not finite; give a finite number")
    rule = RANGES.get(key)
    if rule is not None and not rule[0](value):
        raise ValueRangeError(f"{where}: {key}={value!r}: expected {rule[1]}")


def check_recipe(recipe: Mapping[str, Any], where: str) -> None:
    """Every value of a resolved recipe (registry recipe with --set overrides) in its type and range."""
    for key, value in recipe.items():
        check_value(key, value, where)


# ---- executor options (--executor-opt KEY=VALUE) -------------------------------------------------------------

def _text(v: str) -> bool:
    return bool(v.strip())


def _pos_int_text(v: str) -> bool:
    return v.strip().isdigit() and int(v) >= 1


def _gpu_list(v: str) -> bool:
    items = [g for g in v.split(",") if g.strip()]
    return bool(items) and all(g.strip().isdigit() for g in items)


def _pos_number_text(v: str) -> bool:
    try:
        x = float(v)
    except ValueError:
        return False
    return math.isfinite(x) and x > 0


EXECUTOR_OPTIONS: dict[str, dict[str, tuple[Callable[[str], bool], str]]] = {
    "inline": {},
    "local": {"gpus": (_gpu_list, "comma-separated GPU indices, e.g. 0,1"),
              "workers": (_pos_int_text, "a positive integer")},
    "slurm": {**{k: (_text, "a non-empty name") for k in ("partition", "account", "qos", "constraint")},
              **{k: (_pos_int_text, "a positive integer") for k in ("timeout_min", "cpus_per_task",
                                                                    "array_parallelism", "gpus_per_node", "nodes")},
              "mem_gb": (_pos_number_text, "a positive number")},
}


def check_executor_options(executor: str, options: Mapping[str, str]) -> None:
    """Every --executor-opt is a known option of `executor` with a valid value (nearest name suggested)."""
    table = EXECUTOR_OPTIONS.get(executor, {})
    for key, value in options.items():
        if key not in table:
            near = difflib.get_close_matches(key, list(table), n=1, cutoff=0.5)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            valid = ", ".join(table) or "none"
            raise ValueRangeError(f"--executor-opt {key}={value}: not an option of the {executor} executor.{hint} "
                                  f"Valid: {valid}")
        ok, what = table[key]
        if not ok(value):
            raise ValueRangeError(f"--executor-opt {key}={value}: expected {what}")
