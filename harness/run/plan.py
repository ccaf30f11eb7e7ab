"""Expand (methods x variants x dataset x seeds x stages) into jobs with dependencies and identities.

Stages: `train` trains every single-model variant (one job per seed); `evaluate` scores the official
checkpoints found under `--checkpoint-dir/<method>/<variant>/<dataset>/<file>` (file names from the
registry); `all` trains, evaluates what it trained, and also evaluates the official checkpoints that
are present. An ensemble variant (members in the registry) is an evaluation that averages its
members' matrices, so it waits for them; an evaluation of a trained model waits for its training.

A job's identity (`key`) hashes its resolved config, the fingerprint of the data it reads and the code
that can change its output, per stage and over parsed code (`harness.core.code_identity`): a training job
the model's code, the training loop and the data readers; an evaluation (its matrix) the model's code and
the scoring code (the checkpoint's content is in its config). Protocol and metric code is in no key: an
evaluation carries the protocol code identity (`protocols`) its metrics.json must hold, and a stale one is
recomputed from the stored matrix (harness.run.jobs). A finished job with the same key is reused; a
changed one is rerun from scratch.
Runtime settings (GPU count, checkpoint interval, tile sizes) are not part of the identity: a recipe's
`batch_size` is the global batch, which gives the same training on any number of GPUs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.code_identity import model_code, stage_hash
from harness.core.jobconfig import JobConfig
from harness.data.layouts import LAYOUTS, layout_for
from harness.data.precomp import DataError, resolve_precomp_dir
from harness.eval.protocols import wanted
from harness.spec.campaign import MAX_SEED, Campaign  # campaign seeds are 0 .. MAX_SEED; members' extra seeds lie above
from harness.spec.protocol_plugins import protocol_identity
from harness.spec.registry import Dataset, Method, Registry, RegistryError
from harness.spec.values import check_recipe

MAX_MEMBERS = 64  # members of one ensemble of a single variant
RUNTIME_RECIPE_KEYS = ("gpus",)  # recipe keys that say where a job runs, not what it computes
UNHASHED = ("checkpoint",)  # where a file is; its content is in the identity (checkpoint_fingerprint)
IDENTITY_SCHEME = 2  # 2: per-stage code identities over parsed code (1, unmarked: whole files in every job)
CODE_STAGE = {"train": "train", "evaluate": "matrix", "cascade": "cascade"}  # code stages (harness.core.code_identity)
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
    identity: Mapping[str, Any] = field(default_factory=dict)  # the parts of `key`: config, data, code, scheme
    protocols: str = ""  # evaluations: the protocol code identity their metrics must have (not part of `key`)

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
    return _digest({"config": config, "data": data_fingerprint, "code": code_version, "scheme": IDENTITY_SCHEME})


def identity(config: Mapping[str, Any], data_fp: str, code: str) -> dict[str, Any]:
    return {"config": _digest(config), "data": data_fp, "code": code, "scheme": IDENTITY_SCHEME}


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


@lru_cache(maxsize=64)
def code_version(adapter: str, stage: str = "train") -> str:
    """Hash of the code that computes a job of `stage` (train | matrix) of the method with adapter
    "pkg.module:Class": the model's code (harness.core.code_identity.method_files) and the harness code of
    that stage (code_identity.STAGES), both over parsed code."""
    return _digest({"model": model_code(adapter), "harness": stage_hash(stage), "stage": stage})


# ---- expansion --------------------------------------------------------------------------------------

def member_seed(seed: int, member: int) -> int:
    """The training seed of model `member` (0-based) of an ensemble that repeats one variant, for campaign seed
    `seed`: the seed itself for the first model, else a seed above every campaign seed (MAX_SEED), so an
    ensemble's extra model is never also the run of another campaign seed."""
    if member == 0:
        return seed
    if not 0 <= seed <= MAX_SEED or not 0 < member < MAX_MEMBERS:
        raise RegistryError(f"seed {seed} / ensemble member {member + 1}: seeds are 0..{MAX_SEED} and an ensemble "
                            f"of one variant has at most {MAX_MEMBERS} members")
    return MAX_SEED + 1 + seed * MAX_MEMBERS + member


def override_tag(applied: Mapping[str, Any]) -> str:
    """The suffix that gives a run with recipe overrides its own job folders and report row ("" for none)."""
    return f"+set-{_digest(dict(applied))[:8]}" if applied else ""


def build_plan(registry: Registry, campaign: Campaign, *, data_root: Path | None = None, data_fp: str | None = None,
               code: str | None = None, protocols: str | None = None) -> Plan:
    """The jobs of `campaign` (the typed spec the CLI built; its settings travel whole). Raises (before any job
    runs) on unknown names, an unknown stage, or (stage evaluate) a missing official checkpoint, naming the
    expected path and the download link.

    `data_root` is where the data was found (default: the campaign's); `data_fp` / `code` / `protocols` pin the
    data fingerprint, the code version of every stage and the protocol code identity (tests); by default they
    are computed.
    """
    methods, variants, seeds, stage = list(campaign.methods), list(campaign.variants), campaign.seeds, campaign.stage
    if stage not in ("train", "evaluate", "all"):
        raise RegistryError(f"unknown stage '{stage}'; valid: train, evaluate, all")
    ds = registry.dataset(campaign.dataset)
    builder = _Builder(registry, campaign, ds.name, data_root if data_root is not None else campaign.data_root,
                       data_fp, code, protocols)
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
    if campaign.shortlist is not None:
        from harness.run.cascade_plan import add_cascades

        add_cascades(builder, campaign.shortlist, campaign.shortlister)
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
    def __init__(self, registry: Registry, campaign: Campaign, dataset: str, data_root: Path | None,
                 data_fp: str | None, code: str | None, protocols: str | None = None) -> None:
        self.registry, self.campaign, self.dataset, self.stage = registry, campaign, dataset, campaign.stage
        self.data_root = data_root
        self.plan = Plan()
        self._data_fp, self._code = data_fp, code
        self._fp_cache: dict[str, str] = {}
        ds = registry.dataset(dataset)
        self.protocols = protocols if protocols is not None else \
            protocol_identity(registry.protocols, wanted(ds.protocols, registry.protocols))
        self.test_split, self.val_split = ds.split, ds.validation_split

    def overrides_of(self, mname: str) -> dict[str, Any]:
        """The --set recipe overrides that apply to method `mname` (all-method ones, then its own)."""
        overrides = self.campaign.overrides
        return {**overrides.get("*", {}), **overrides.get(mname, {})}

    # identity parts
    def data_fp(self, splits: Sequence[str], layout: str) -> str:
        if self._data_fp is not None:
            return self._data_fp
        key = f"{layout}:{','.join(splits)}"
        if key not in self._fp_cache:
            files = [p for s in splits for p in split_files(self.data_root or "", self.dataset, s,
                                                            layout)] if self.data_root else []
            self._fp_cache[key] = data_fingerprint(files)
        return self._fp_cache[key]

    def code(self, method: str, stage: str) -> str:
        """The code identity of a job of `stage` (train | evaluate) of `method`."""
        if self._code is not None:
            return self._code
        return code_version(self.registry.method(method).adapter, CODE_STAGE[stage])

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
             splits: Sequence[str], depends: Sequence[Job] = (), gpus: int = 1, code_stage: str | None = None) -> Job:
        precision = self.campaign.precision
        if stage == "evaluate" and precision != "fp32":  # another matrix: its own job and report row
            setting = {**config.get("setting", {}), "precision": precision}
            config = {**config, "precision": precision, "setting": setting}
            name = f"{name}-{precision}"
        typed = JobConfig.from_dict(config)
        hashed = {k: v for k, v in typed.as_dict().items() if k not in UNHASHED}
        hashed.update({f"key_of_{d.name}": d.key for d in depends})
        parts = identity(hashed, self.data_fp(splits, data_layout(self.registry, method, self.dataset)),
                         self.code(method, code_stage or stage))
        return self.add(Job(name, stage, method, variant, self.dataset, seed, typed,
                            depends=tuple(d.name for d in depends), key=job_key(hashed, parts["data"], parts["code"]),
                            gpus=gpus, identity=parts, protocols=self.protocols if stage == "evaluate" else ""))

    # retrained models
    def train(self, mname: str, variant: str, seed: int, member: int = 0) -> Job:
        method = self.registry.method(mname)
        recipe = dataset_recipe(method, variant, self.registry.dataset(self.dataset))
        applied = self.overrides_of(mname)
        recipe.update(applied)
        gpus = int(self.campaign.gpus or recipe.get("gpus") or 1)
        for k in RUNTIME_RECIPE_KEYS:
            recipe.pop(k, None)
        run = f"{self.dataset}/{mname}-{variant}-seed{seed}{f'-member{member + 1}' if member else ''}" \
              f"{override_tag(applied)}"
        seed = member_seed(seed, member)
        where = f"{mname}/{variant} on {self.dataset} (recipe" + (" with --set overrides)" if applied else ")")
        check_recipe(recipe, where)
        if method.adapter_class().image_input == "regions":
            self.check_feature_dim({**method.variants[variant].options, **recipe}.get("img_dim"), where)
        config = {"stage": "train", "method": mname, "variant": variant, "dataset": self.dataset, "seed": seed,
                  "recipe": {**recipe, "seed": seed}, "options": dict(method.variants[variant].options),
                  "splits": ["train", self.val_split]}
        if applied:
            config["overrides"] = dict(applied)
        return self.make(f"{run}/train", "train", mname, variant, seed, config, ["train", self.val_split],
                         gpus=max(1, gpus))

    def check_feature_dim(self, img_dim: object, where: str) -> None:
        """A model's `img_dim` must be the region feature size of the data it trains on (checked from the
        training split's .npy header, when the data is there in the precomp layout)."""
        if not isinstance(img_dim, int) or self.data_root is None:
            return
        try:
            folder = resolve_precomp_dir(self.data_root, "train", self.dataset)
        except DataError:
            return
        ims = folder / "train_ims.npy"
        if not ims.is_file():
            return
        try:
            shape = np.load(ims, mmap_mode="r").shape
        except (OSError, ValueError):
            return  # unreadable data is check-data's to name
        if shape and shape[-1] != img_dim:
            raise RegistryError(f"{where}: img_dim={img_dim} but {ims} holds {shape[-1]}-dimensional region "
                                f"features; set img_dim={shape[-1]} (or use the features the recipe expects)")

    def trained(self, mname: str, variant: str, seed: int, member: int = 0) -> Job | None:
        """Train and evaluate `variant` with campaign seed `seed`; `member` k > 0 is the k+1-th model of an
        ensemble that repeats the variant: its own folders (`seed<s>-member<k+1>`) and seed (`member_seed`)."""
        train = self.train(mname, variant, seed, member)
        if self.stage == "train":
            return None
        applied = self.overrides_of(mname)
        run = f"seed{seed}" + (f"-member{member + 1}" if member else "")
        config = {"stage": "evaluate", "method": mname, "variant": variant, "dataset": self.dataset,
                  "seed": member_seed(seed, member), "source": run, "train_job": train.name,
                  "split": self.test_split}
        if applied:
            config["overrides"] = dict(applied)
        tag = override_tag(applied)
        return self.make(f"{self.dataset}/{mname}-{variant}-{run}{tag}/eval", "evaluate", mname, variant,
                         member_seed(seed, member), config, [self.test_split], depends=[train])

    def trained_ensemble(self, mname: str, variant: str, seed: int) -> None:
        spec = self.registry.method(mname).variants[variant]
        members = []
        for k, member in enumerate(spec.members):
            repeat = spec.members[:k].count(member)  # 0 for the first model of a variant: the seed's own run
            members.append(self.trained(mname, member, seed, repeat))
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
        weights = method.adapter_class().weights_file(variant, options)
        if weights is not None:
            config["checkpoint"] = str(weights)
            config["checkpoint_fingerprint"] = file_fingerprint(Path(weights))
        return self.make(f"{self.dataset}/{mname}-{variant}-zeroshot{override_tag(applied)}/eval", "evaluate",
                         mname, variant, None, config, [self.test_split])

    # official checkpoints
    def official(self, mname: str, variant: str, index: int, required: bool) -> Job | None:
        try:
            ck = official_checkpoint_path(self.registry, mname, variant, self.dataset, self.campaign.checkpoint_dir,
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
