"""Expand (methods x variants x dataset x seeds x stages) into jobs with dependencies and identities.

Stages: `train` trains every single-model variant (one job per seed); `evaluate` scores the official
checkpoints found under `--checkpoint-dir/<method>/<variant>/<dataset>/<file>` (file names from the
registry); `all` trains, evaluates what it trained, and also evaluates the official checkpoints that
are present. An ensemble variant (members in the registry) is an evaluation that averages its
members' matrices, so it waits for them; an evaluation of a trained model waits for its training.

A job's identity (`key`) hashes its resolved config, the fingerprint of the data it reads and the
version of the code that computes it (the source of the method's package and of the harness modules
a job runs). A finished job with the same key is reused; a changed one is rerun from scratch.
Runtime settings (GPU count, checkpoint interval, tile sizes) are not part of the identity: a recipe's
`batch_size` is the global batch, which gives the same training on any number of GPUs.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from harness.core.jobconfig import JobConfig
from harness.core.paths import PROJECT_DIR
from harness.data.layouts import LAYOUTS, layout_for
from harness.spec.registry import Dataset, Method, Registry, RegistryError

ENSEMBLE_SEED_STRIDE = 1000  # member k of an ensemble of one variant trained with seed + k * stride
RUNTIME_RECIPE_KEYS = ("gpus",)  # recipe keys that say where a job runs, not what it computes
UNHASHED = ("checkpoint",)  # where a file is; its content is in the identity (checkpoint_fingerprint)
ROOT = PROJECT_DIR
HARNESS_CODE = ("methods/common", "harness/run/training.py", "harness/eval/scoring.py", "harness/eval/evaluation.py",
                "harness/eval/protocols.py", "harness/api/adapter.py", "harness/core/features.py",
                "harness/core/checkpoints.py", "harness/run/jobs.py", "harness/run/distributed.py",
                "harness/eval/metrics", "harness/data")
SAMPLE_BYTES = 1 << 20  # bytes hashed at the start and at the end of each data file


@dataclass(frozen=True)
class Job:
    name: str  # also the result directory, relative to the results root
    stage: str  # "train" or "evaluate"
    method: str
    variant: str
    dataset: str
    seed: int | None
    config: JobConfig
    depends: tuple[str, ...] = ()
    key: str = ""
    gpus: int = 1  # processes for data-parallel training (recipe `gpus`); evaluations use one
    identity: Mapping[str, str] = field(default_factory=dict)  # the parts of `key`: config, data, code

    @property
    def label(self) -> str:
        return f"{self.method}/{self.variant}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["depends"] = list(self.depends)
        out["config"] = self.config.as_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Job:
        return cls(**{**d, "depends": tuple(d.get("depends") or ()), "config": JobConfig.from_dict(d["config"]),
                      "identity": dict(d.get("identity") or {})})


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out and why (shown with the plan)

    def by_name(self) -> dict[str, Job]:
        return {j.name: j for j in self.jobs}

    def order(self) -> list[Job]:
        """Jobs in an order where every job comes after its dependencies."""
        done: set[str] = set()
        out: list[Job] = []
        pending = list(self.jobs)
        while pending:
            ready = [j for j in pending if all(d in done for d in j.depends)]
            if not ready:
                raise RegistryError("cyclic or missing job dependencies: "
                                    + ", ".join(f"{j.name} <- {j.depends}" for j in pending))
            for j in ready:
                out.append(j)
                done.add(j.name)
                pending.remove(j)
        return out


# ---- identity ---------------------------------------------------------------------------------------

def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def job_key(config: Mapping[str, Any], data_fingerprint: str, code_version: str) -> str:
    return _digest({"config": config, "data": data_fingerprint, "code": code_version})


def identity(config: Mapping[str, Any], data_fp: str, code: str) -> dict[str, str]:
    return {"config": _digest(config), "data": data_fp, "code": code}


def file_fingerprint(path: Path) -> str:
    """Name, size and a hash of the first and last MiB: cheap on 20 GB feature files, and unlike
    modification times it survives copying the data to another disk."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > 2 * SAMPLE_BYTES:
            f.seek(size - SAMPLE_BYTES)
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]


def data_fingerprint(paths: Iterable[Path]) -> str:
    """Fingerprint of a set of data files (order-independent)."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        if p.is_file():
            h.update(file_fingerprint(p).encode())
    return h.hexdigest()[:16]


def split_files(data_root: str | Path, dataset: str, split: str, layout: str = "precomp") -> list[Path]:
    """The files a job reading `split` of `dataset` in `layout` depends on (that layout's row says which)."""
    return LAYOUTS[layout].split_files(Path(data_root), split, dataset)


def data_layout(registry: Registry, method: str, dataset: str) -> str:
    """The on-disk layout `method` reads `dataset` in: the dataset's own when it holds the adapter's image input
    (regions / pixels), else that input's default layout (the CUSA/ALBEF json for pixel methods)."""
    image_input = registry.method(method).adapter_class().image_input
    return layout_for(registry.dataset(dataset).layout, image_input).name


def _source_files(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    if target.is_dir():
        return sorted(p for p in target.rglob("*.py") if "__pycache__" not in p.parts)
    return []


def _hash_files(files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _package_files(package: str, module: str) -> list[Path]:
    spec = importlib.util.find_spec(package) if package else None
    if spec is not None and spec.submodule_search_locations:
        return [f for loc in spec.submodule_search_locations for f in _source_files(Path(loc))]
    mspec = importlib.util.find_spec(module)
    return [Path(mspec.origin)] if mspec is not None and mspec.origin else []


def _sibling_packages(files: Iterable[Path], root: str) -> set[str]:
    """Packages under the same top-level package (`methods.cusa` for `root` = methods) that `files` import."""
    found = set()
    for path in files:
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     else [])
            for name in names:
                parts = name.split(".")
                if len(parts) >= 2 and parts[0] == root:
                    found.add(".".join(parts[:2]))
    return found


@lru_cache(maxsize=32)
def code_version(adapter: str) -> str:
    """Hash of the code a job of the method with adapter "pkg.module:Class" runs: the adapter's package
    (methods/esa/ for methods.esa.adapter), the sibling packages it imports (methods/cusa/ for
    clip_zeroshot, which builds on CUSA's CLIP), and the shared harness modules (HARNESS_CODE)."""
    module = adapter.partition(":")[0]
    package = module.rpartition(".")[0]
    files = _package_files(package, module)
    root = module.partition(".")[0]
    seen = {package}
    todo = _sibling_packages(files, root) - seen if package else set()
    while todo:
        sibling = min(todo)  # a fixed order: the hash must not depend on PYTHONHASHSEED
        todo.discard(sibling)
        seen.add(sibling)
        extra = _package_files(sibling, sibling)
        files += extra
        todo |= _sibling_packages(extra, root) - seen
    for rel in HARNESS_CODE:
        files += _source_files(ROOT / rel)
    return _hash_files(files)


# ---- expansion --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanInputs:
    """What the expansion needs besides the registry."""

    data_root: Path | None = None  # for data fingerprints (none: fingerprint "")
    checkpoint_dir: Path | None = None
    gpus: int | None = None  # override of the recipes' `gpus`
    precision: str = "fp32"  # evaluations: autocast precision (harness.eval.precision); non-fp32 is part of identity
    recipe_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # method ("*": all) -> recipe keys


def override_tag(applied: Mapping[str, Any]) -> str:
    """The suffix that gives a run with recipe overrides its own job folders and report row ("" for none)."""
    return f"+set-{_digest(dict(applied))[:8]}" if applied else ""


def build_plan(registry: Registry, methods: Sequence[str], dataset: str, *, variants: Sequence[str] | None = None,
               seeds: Sequence[int] = (0,), stage: str = "all", checkpoint_dir: Path | None = None,
               data_root: Path | None = None, gpus: int | None = None, data_fp: str | None = None,
               code: str | None = None, precision: str = "fp32",
               recipe_overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Plan:
    """The jobs for a campaign. Raises (before any job runs) on unknown names, an unknown stage, or
    (stage evaluate) a missing official checkpoint, naming the expected path and the download link.

    `data_fp` / `code` pin the data fingerprint and code version (tests); by default they are computed.
    """
    if stage not in ("train", "evaluate", "all"):
        raise RegistryError(f"unknown stage '{stage}'; valid: train, evaluate, all")
    ds = registry.dataset(dataset)
    overrides = {k: dict(v) for k, v in (recipe_overrides or {}).items()}
    inputs = PlanInputs(data_root, checkpoint_dir, gpus, precision, overrides)
    builder = _Builder(registry, ds.name, stage, inputs, data_fp, code)
    for mname in methods:
        method = registry.method(mname)
        if variants and len(methods) > 1:  # each name applies to the methods that define it
            names = [v for v in variants if v in method.variants]
            if not names:
                builder.plan.notes.append(f"{mname}: none of --variants {', '.join(variants)} is a variant of it")
                continue
        else:
            names = list(variants) if variants else list(method.variants)
        for v in names:
            method.variant(v)  # validates the name with a suggestion
        for v in names:
            if not _buildable(method, v):
                builder.plan.notes.append(f"{mname}/{v}: holds reported numbers only; nothing to run")
            elif _skip_reason(method, v, ds.name):
                builder.plan.notes.append(f"{mname}/{v}: not run on {ds.name}: {_skip_reason(method, v, ds.name)}")
        names = [v for v in names if _buildable(method, v) and not _skip_reason(method, v, ds.name)]
        for v in names:
            if not method.has_recipe(v, ds.name):
                sized = shape_sized(method, v, ds)
                builder.note(f"{mname}/{v}: no recipe for '{ds.name}'; using the default recipe"
                             + (f" ({', '.join(f'{k}={val}' for k, val in sized.items())} from the dataset's "
                                "declared shape)" if sized else ""))
        zero_shot = [v for v in names if method.variants[v].options.get("zero_shot")]
        names = [v for v in names if v not in zero_shot]
        for v in zero_shot:
            if stage == "train":
                builder.note(f"{mname}/{v}: a zero-shot model; nothing to train")
            else:
                builder.zero_shot(mname, v)
        singles = [v for v in names if not method.variants[v].is_ensemble]
        ensembles = [v for v in names if method.variants[v].is_ensemble]
        if stage in ("train", "all"):
            for seed in seeds:
                for v in singles:
                    builder.trained(mname, v, seed)
                for v in ensembles:
                    builder.trained_ensemble(mname, v, seed)
        if stage in ("evaluate", "all"):
            for v in singles:
                builder.official(mname, v, 0, required=stage == "evaluate")
            for v in ensembles:
                builder.official_ensemble(mname, v, required=stage == "evaluate")
    if not builder.plan.jobs:
        raise RegistryError(f"the plan for {', '.join(methods)} on {ds.name} (stage {stage}) has no jobs"
                            + ("".join(f"\n  {n}" for n in builder.plan.notes)))
    return builder.plan


# recipe keys that follow the dataset's declared shape when the default recipe applies: key -> Dataset field
SHAPE_KEYS = {"img_dim": "feature_dim"}


def shape_sized(method: Method, variant: str, dataset: Dataset) -> dict[str, Any]:
    """The recipe values the default recipe takes from `dataset`'s declared shape (a user dataset with 512-d
    regions gets img_dim 512): keys of SHAPE_KEYS the method's recipes or options use, where the dataset
    declares the value and has no recipe of its own."""
    if method.has_recipe(variant, dataset.name):
        return {}
    recipes = [*method.recipes.values(), *(r for v in method.variants.values() for r in v.recipes.values())]
    used = {k for r in recipes for k in r}
    used |= {k for v in method.variants.values() for k in v.options}
    recipe = method.recipe(variant, dataset.name)
    out = {}
    for key, attr in SHAPE_KEYS.items():
        value = getattr(dataset, attr)
        if key in used and value is not None and recipe.get(key) != value:
            out[key] = value
    return out


def dataset_recipe(method: Method, variant: str, dataset: Dataset) -> dict[str, Any]:
    """The recipe of `variant` on `dataset`: its own, or the default sized from the dataset's declared shape."""
    return {**method.recipe(variant, dataset.name), **shape_sized(method, variant, dataset)}


def _skip_reason(method: Any, variant: str, dataset: str) -> str | None:
    """A recipe `skip: <reason>` leaves the variant out on that dataset (e.g. a backbone the demo does not run)."""
    try:
        reason = method.recipe(variant, dataset).get("skip")
    except RegistryError:
        return None
    return str(reason) if reason else None


def _buildable(method: Any, variant: str) -> bool:
    """Variants that only hold reported numbers (option `reported_only`) cannot be built or run."""
    return not method.variants[variant].options.get("reported_only")


class _Builder:
    def __init__(self, registry: Registry, dataset: str, stage: str, inputs: PlanInputs, data_fp: str | None,
                 code: str | None) -> None:
        self.registry, self.dataset, self.stage, self.inputs = registry, dataset, stage, inputs
        self.plan = Plan()
        self._data_fp, self._code = data_fp, code
        self._fp_cache: dict[str, str] = {}
        ds = registry.dataset(dataset)
        self.test_split, self.val_split = ds.split, ds.validation_split

    def overrides_of(self, mname: str) -> dict[str, Any]:
        """The --set recipe overrides that apply to method `mname` (all-method ones, then its own)."""
        overrides = self.inputs.recipe_overrides
        return {**overrides.get("*", {}), **overrides.get(mname, {})}

    # identity parts
    def data_fp(self, splits: Sequence[str], layout: str) -> str:
        if self._data_fp is not None:
            return self._data_fp
        key = f"{layout}:{','.join(splits)}"
        if key not in self._fp_cache:
            files = [p for s in splits for p in split_files(self.inputs.data_root or "", self.dataset, s,
                                                            layout)] if self.inputs.data_root else []
            self._fp_cache[key] = data_fingerprint(files)
        return self._fp_cache[key]

    def code(self, method: str) -> str:
        return self._code if self._code is not None else code_version(self.registry.method(method).adapter)

    def note(self, text: str) -> None:
        if text not in self.plan.notes:
            self.plan.notes.append(text)

    def add(self, job: Job) -> Job:
        existing = self.plan.by_name().get(job.name)
        if existing is None:
            self.plan.jobs.append(job)
            return job
        return existing

    def make(self, name: str, stage: str, method: str, variant: str, seed: int | None, config: dict[str, Any],
             splits: Sequence[str], depends: Sequence[Job] = (), gpus: int = 1) -> Job:
        precision = self.inputs.precision
        if stage == "evaluate" and precision != "fp32":  # another matrix: its own job and report row
            setting = {**config.get("setting", {}), "precision": precision}
            config = {**config, "precision": precision, "setting": setting}
            name = f"{name}-{precision}"
        typed = JobConfig.from_dict(config)
        hashed = {k: v for k, v in typed.as_dict().items() if k not in UNHASHED}
        hashed.update({f"key_of_{d.name}": d.key for d in depends})
        parts = identity(hashed, self.data_fp(splits, data_layout(self.registry, method, self.dataset)),
                         self.code(method))
        return self.add(Job(name, stage, method, variant, self.dataset, seed, typed,
                            depends=tuple(d.name for d in depends), key=job_key(hashed, parts["data"], parts["code"]),
                            gpus=gpus, identity=parts))

    # retrained models
    def train(self, mname: str, variant: str, seed: int) -> Job:
        method = self.registry.method(mname)
        recipe = dataset_recipe(method, variant, self.registry.dataset(self.dataset))
        applied = self.overrides_of(mname)
        recipe.update(applied)
        gpus = int(self.inputs.gpus or recipe.get("gpus") or 1)
        for k in RUNTIME_RECIPE_KEYS:
            recipe.pop(k, None)
        run = f"{self.dataset}/{mname}-{variant}-seed{seed}{override_tag(applied)}"
        config = {"stage": "train", "method": mname, "variant": variant, "dataset": self.dataset, "seed": seed,
                  "recipe": {**recipe, "seed": seed}, "options": dict(method.variants[variant].options),
                  "splits": ["train", self.val_split]}
        if applied:
            config["overrides"] = dict(applied)
        return self.make(f"{run}/train", "train", mname, variant, seed, config, ["train", self.val_split],
                         gpus=max(1, gpus))

    def trained(self, mname: str, variant: str, seed: int) -> Job | None:
        train = self.train(mname, variant, seed)
        if self.stage == "train":
            return None
        applied = self.overrides_of(mname)
        config = {"stage": "evaluate", "method": mname, "variant": variant, "dataset": self.dataset, "seed": seed,
                  "source": f"seed{seed}", "train_job": train.name, "split": self.test_split}
        if applied:
            config["overrides"] = dict(applied)
        tag = override_tag(applied)
        return self.make(f"{self.dataset}/{mname}-{variant}-seed{seed}{tag}/eval", "evaluate", mname, variant, seed,
                         config, [self.test_split], depends=[train])

    def trained_ensemble(self, mname: str, variant: str, seed: int) -> None:
        spec = self.registry.method(mname).variants[variant]
        members = []
        for k, member in enumerate(spec.members):
            member_seed = seed + (k * ENSEMBLE_SEED_STRIDE if spec.members.count(member) > 1 else 0)
            members.append(self.trained(mname, member, member_seed))
        if self.stage == "train":
            return
        self.ensemble(mname, variant, seed, f"seed{seed}{override_tag(self.overrides_of(mname))}",
                      [m for m in members if m is not None])

    def ensemble(self, mname: str, variant: str, seed: int | None, source: str, members: list[Job]) -> Job:
        config = {"stage": "evaluate", "method": mname, "variant": variant, "dataset": self.dataset, "seed": seed,
                  "source": source, "members": [m.name for m in members], "split": self.test_split}
        return self.make(f"{self.dataset}/{mname}-{variant}-{source}/eval", "evaluate", mname, variant, seed,
                         config, [self.test_split], depends=members)

    # pretrained models evaluated as they are (zero-shot baselines)
    def zero_shot(self, mname: str, variant: str) -> Job:
        """One evaluation of a pretrained model (variant option `zero_shot`), whatever the seeds. Its weights
        file is found now (a missing one is an error before any job runs) and its content is in the identity."""
        method = self.registry.method(mname)
        recipe = dataset_recipe(method, variant, self.registry.dataset(self.dataset))
        applied = self.overrides_of(mname)
        options = {**method.variants[variant].options, **recipe, **applied}
        for k in (*RUNTIME_RECIPE_KEYS, "skip"):
            options.pop(k, None)
        config: dict[str, Any] = {"stage": "evaluate", "method": mname, "variant": variant, "dataset": self.dataset,
                                  "seed": None, "source": "zeroshot", "options": options, "split": self.test_split}
        if applied:
            config["overrides"] = dict(applied)
        cls = method.adapter_class()
        locate = getattr(cls, "weights_file", None)
        weights = locate(variant, options) if locate is not None else None
        if weights is not None:
            config["checkpoint"] = str(weights)
            config["checkpoint_fingerprint"] = file_fingerprint(Path(weights))
        return self.make(f"{self.dataset}/{mname}-{variant}-zeroshot{override_tag(applied)}/eval", "evaluate",
                         mname, variant, None, config, [self.test_split])

    # official checkpoints
    def official(self, mname: str, variant: str, index: int, required: bool) -> Job | None:
        try:
            ck = official_checkpoint_path(self.registry, mname, variant, self.dataset, self.inputs.checkpoint_dir,
                                          index)
        except (FileNotFoundError, RegistryError) as exc:
            if required:
                raise
            if isinstance(exc, FileNotFoundError):  # a checkpoint the user could download
                self.note(f"official {mname}/{variant} not evaluated: {exc}")
            return None
        suffix = "official" if index == 0 else f"official{index + 1}"
        config = {"stage": "evaluate", "method": mname, "variant": variant, "dataset": self.dataset, "seed": None,
                  "source": "official", "checkpoint": str(ck), "split": self.test_split,
                  "checkpoint_fingerprint": file_fingerprint(ck)}
        return self.make(f"{self.dataset}/{mname}-{variant}-{suffix}/eval", "evaluate", mname, variant, None,
                         config, [self.test_split])

    def official_ensemble(self, mname: str, variant: str, required: bool) -> None:
        spec = self.registry.method(mname).variants[variant]
        same = len(set(spec.members)) == 1
        members = []
        for k, member in enumerate(spec.members):
            job = self.official(mname, member, k if same else 0, required)
            if job is None:
                if self.registry.method(mname).variants[member].checkpoints.get(self.dataset):
                    self.note(f"official {mname}/{variant} not evaluated (needs the official {member} checkpoint "
                              f"#{k + 1})")
                return
            members.append(job)
        self.ensemble(mname, variant, None, "official", members)


def official_checkpoint_path(registry: Registry, method: str, variant: str, dataset: str,
                             checkpoint_dir: Path | None, index: int = 0) -> Path:
    """Where evaluate-only expects an official checkpoint; a clear error with the download link if absent."""
    spec = registry.method(method).variant(variant)
    ck = spec.checkpoints.get(dataset)
    if ck is None or not ck.files:
        raise RegistryError(f"{method}/{variant} has no official checkpoint for {dataset} in the registry")
    if index >= len(ck.files):
        raise RegistryError(f"{method}/{variant} on {dataset}: the registry lists {len(ck.files)} checkpoint "
                            f"file(s), an ensemble needs {index + 1}")
    base = Path(checkpoint_dir or "checkpoints")
    path = base / method / variant / dataset / ck.files[index]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: official checkpoint not found; get it with `run_all.py fetch --methods "
                                f"{method} --variants {variant} --dataset {dataset} --dest {base}` or download it "
                                f"from {ck.url}" + (f" ({ck.note})" if ck.note else ""))
    return path
