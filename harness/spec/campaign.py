"""The typed campaign spec: what `run_all.py run` was asked to do, parsed and validated once by the CLI and
passed down (nothing below the CLI sees argparse)."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.spec.registry import Registry, RegistryError
from harness.spec.values import check_value

STAGES = ("train", "evaluate", "all")
MAX_SEED = 2**31 - 1  # torch, numpy and Python all take it; ensemble members' extra seeds are derived above it
EXECUTORS = ("inline", "local", "slurm")


@dataclass(frozen=True)
class Campaign:
    """Methods x variants x one dataset x seeds x stages, where the data and results are, and how to run."""

    methods: tuple[str, ...]
    dataset: str
    variants: tuple[str, ...] = ()  # empty: every variant of each method
    stage: str = "all"
    seeds: tuple[int, ...] = (0,)
    data_root: Path = Path("data")
    checkpoint_dir: Path = Path("checkpoints")
    results: Path = Path("results")
    reports: Path = Path("reports")
    registry_files: tuple[Path, ...] = ()
    executor: str = "inline"
    executor_options: Mapping[str, str] = field(default_factory=dict)
    device: str | None = None
    precision: str = "fp32"
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # method or "*" -> recipe keys
    force: tuple[str, ...] = ()  # job-name patterns whose earlier results may be replaced ("*": all)
    dry_run: bool = False
    gpus: int | None = None
    checkpoint_minutes: float | None = 15.0
    checkpoint_steps: int | None = None
    tiles: tuple[int, int] | None = None
    eval_processes: int = 1  # processes per evaluation job (--processes)
    store_matrix: str = "auto"  # --store-matrix
    matrix_limit: int = 4 << 30  # --matrix-limit, in bytes
    data_folders: Mapping[str, Path] = field(default_factory=dict)  # protocol name -> its data folder
    perturb: str | None = None  # canonical --perturb spec: a robustness job beside each single-model evaluation
    perturb_seed: int = 0
    shortlist: int | None = None  # cascade jobs: rerank each query's top-K of `shortlister` (METHOD[/VARIANT])
    shortlister: str | None = None


# ---- parsing helpers (each raises a one-line ValueError naming the option and the fix) ------------------------

def parse_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def parse_seeds(text: str | None) -> tuple[int, ...]:
    items = parse_list(text)
    try:
        seeds = tuple(int(s) for s in items)
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated non-negative integers, e.g. 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: expected distinct non-negative integers, e.g. 0,1,2")
    if max(seeds) > MAX_SEED:
        raise ValueError(f"--seeds {text!r}: {max(seeds)} is above the largest seed {MAX_SEED}; use a smaller one")
    return seeds


def parse_tiles(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        values = [int(p) for p in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"--tiles {text!r}: expected IMAGES,CAPTIONS (two positive integers, e.g. 1024,4096)")
    return values[0], values[1]


def parse_options(items: Sequence[str] | None, flag: str = "--executor-opt") -> dict[str, str]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_data_folders(items: Sequence[str], table: Mapping[str, Any]) -> dict[str, Path]:
    """`PROTOCOL=DIR` items -> {protocol: folder}: the protocol must declare a data folder, the folder exist."""
    out: dict[str, Path] = {}
    needs = sorted(n for n, p in table.items() if getattr(p, "data_folder", None))
    for item in items:
        name, sep, folder = item.partition("=")
        name = name.strip()
        if not sep or not name or not folder.strip():
            raise ValueError(f"--data-folder {item!r}: expected PROTOCOL=DIR, e.g. sts=data/senteval")
        if name not in needs:
            near = difflib.get_close_matches(name, needs, n=1, cutoff=0.5)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise ValueError(f"--data-folder {item!r}: '{name}' is not a protocol with a data folder of its own.{hint} "
                             f"Valid: {', '.join(needs) or 'none'}")
        if name in out:
            raise ValueError(f"--data-folder {item!r}: the folder of '{name}' is given twice")
        path = Path(folder.strip()).expanduser()
        if not path.is_dir():
            raise ValueError(f"--data-folder {name}={folder.strip()}: no such folder")
        out[name] = path.resolve()
    return out


def existing_path(text: str | None, flag: str, kind: str = "folder") -> Path | None:
    """`text` as an absolute path that must exist (None stays None)."""
    if not text:
        return None
    path = Path(text).expanduser()
    ok = path.is_dir() if kind == "folder" else path.is_file()
    if not ok:
        raise ValueError(f"{flag} {text}: no such {kind}")
    return path.resolve()


def check_device(device: str | None) -> str | None:
    """An explicit device must exist here: `--device cuda` without CUDA is an error, never a CPU fallback."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r}: not a torch device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu (or run where "
                             "a GPU is visible)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type != "cpu":
        raise ValueError(f"--device {device}: only cpu and cuda devices are supported")
    return device


def check_precision(precision: str, device: str | None) -> None:
    """fp16 autocast runs on CUDA only: asking for it where the evaluation runs on the CPU is refused, not ignored."""
    if precision != "fp16":
        return
    if device is None:
        import torch

        if torch.cuda.is_available():
            return
        raise ValueError("--precision fp16: no CUDA device is available here and fp16 runs on CUDA only; use "
                         "--precision bf16 (CPU or CUDA) or fp32")
    if not device.startswith("cuda"):
        raise ValueError(f"--precision fp16 --device {device}: fp16 runs on CUDA only; use --precision bf16 on the "
                         "CPU, or fp32")


# ---- recipe overrides ------------------------------------------------------------------------------------------

def parse_overrides(items: Sequence[str], registry: Registry, methods: Sequence[str], dataset: str,
                    variants: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """`--set KEY=VALUE` (every method of the campaign) or `--set METHOD.KEY=VALUE` -> {method or "*": {key: value}}.

    Values are read as YAML (`2e-4`, `true`, `[10, 15]`). Every key must be a recipe or option key of the
    method's variants on `dataset` (or one of the method's declared `recipe_keys`), and every value must
    have the type of the recipe's value; the nearest valid key is suggested.
    """
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE or METHOD.KEY=VALUE")
        scope, dot, name = key.partition(".")
        if dot and scope in registry.methods:
            if scope not in methods:
                raise ValueError(f"--set {item!r}: method '{scope}' is not in this campaign ({', '.join(methods)})")
            targets = [scope]
        elif dot:
            near = difflib.get_close_matches(scope, list(methods), n=1, cutoff=0.5)
            hint = f" Did you mean '{near[0]}.{name}'?" if near else ""
            raise ValueError(f"--set {item!r}: '{scope}' is not a method of this campaign "
                             f"({', '.join(methods)}).{hint}")
        else:
            scope, name, targets = "*", key, list(methods)
        if name == "seed":  # the jobs' seed comes from --seeds (it names their folders): an override would be ignored
            raise ValueError(f"--set {item!r}: the seed is not a recipe override; run it with --seeds {text.strip()}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(f"--set {item!r}: the value is not valid YAML") from None
        if isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as text
            with contextlib.suppress(ValueError):
                value = float(value)
        for m in targets:
            value = _checked(registry, m, dataset, variants, name, value, item)
        check_value(name, value, f"--set {item!r}")
        out.setdefault(scope, {})[name] = value
    return out


TYPES = {"int": int, "float": float, "bool": bool, "str": str, "path": str, "list": list, "mapping": dict}


def _checked(registry: Registry, method: str, dataset: str, variants: Sequence[str], key: str, value: Any,
             item: str) -> Any:
    spec = registry.method(method)
    names = [v for v in (variants or spec.variants) if v in spec.variants and not spec.variants[v].is_ensemble]
    known: dict[str, Any] = {}
    for v in names:
        with contextlib.suppress(RegistryError):
            known.update({k: val for k, val in spec.recipe(v, dataset).items() if k not in known or val is not None})
        known.update({k: val for k, val in spec.variants[v].options.items() if k not in known})
    declared = dict(spec.recipe_keys)
    if key not in known and key not in declared:
        valid = sorted(set(known) | set(declared))
        near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise ValueError(f"--set {item!r}: '{key}' is not a recipe key of {method} on {dataset}.{hint} "
                         f"Valid: {', '.join(valid)}")
    if key in declared:
        want = declared[key]
        if want == "path" and value is not None:
            if not isinstance(value, str) or not Path(value).expanduser().exists():
                raise ValueError(f"--set {item!r}: {key} is a path and {value!r} does not exist")
            return str(Path(value).expanduser().resolve())
        return _coerce(value, TYPES.get(want), key, item, f"a {want}")
    default = known[key]
    if default is None:
        return value
    return _coerce(value, type(default), key, item, f"{type(default).__name__} (recipe value {default!r})")


def _coerce(value: Any, want: type | None, key: str, item: str, what: str) -> Any:
    if want is None or value is None:
        return value
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if want in (list, tuple) and isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, bool) != (want is bool) or not isinstance(value, want):
        raise ValueError(f"--set {item!r}: {key} must be {what}, got {type(value).__name__} {value!r}")
    return value
