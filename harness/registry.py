"""Typed view of registry.yaml: papers, variants, recipes, checkpoints, datasets and reported numbers.

The registry is validated when it is loaded; an unknown name anywhere (on the command line or
inside the file) is an error that lists the valid names and suggests the nearest one.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

REGISTRY_PATH = Path(__file__).resolve().parents[1] / "registry.yaml"

PROTOCOLS = ("coco1k", "coco5k", "f30k1k", "eccv", "cxc", "sts", "image_retrieval", "recall")


class RegistryError(ValueError):
    """registry.yaml is malformed, or a name asked for is not in it."""


def unknown_name(kind: str, name: str, valid: Iterable[str], where: str = "") -> RegistryError:
    """An error for an unknown `name` of `kind` listing the valid names and the nearest match."""
    valid = sorted(valid)
    near = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{near[0]}'?" if near else ""
    loc = f" in {where}" if where else ""
    return RegistryError(f"unknown {kind} '{name}'{loc}; valid: {', '.join(valid)}.{hint}")


@dataclass(frozen=True)
class Checkpoint:
    """Where the official weights of one (variant, dataset) live and how the harness names them."""

    url: str
    files: tuple[str, ...]  # expected file name(s) under --checkpoint-dir/<method>/<variant>/<dataset>/
    note: str = ""


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    options: Mapping[str, Any]
    members: tuple[str, ...] = ()  # non-empty for ensembles: the variants whose matrices are averaged
    checkpoints: Mapping[str, Checkpoint] = field(default_factory=dict)  # by dataset
    recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # overrides by dataset

    @property
    def is_ensemble(self) -> bool:
        return bool(self.members)


@dataclass(frozen=True)
class Reported:
    """One number (or row of numbers) a paper reported, with where it was printed."""

    method: str
    variant: str
    dataset: str
    protocol: str
    source: str
    values: Mapping[str, float | None]  # metric path ("i2t.r1", "rsum", "sts.stsb") -> value
    setting: Mapping[str, Any] = field(default_factory=dict)  # e.g. {members: bigru} or {objective: cusa}
    table: str = ""
    label: str = ""
    note: str = ""


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    venue: str
    code: str
    adapter: str  # "package.module:ClassName"
    variants: Mapping[str, Variant]
    recipes: Mapping[str, Mapping[str, Any]]  # by dataset
    settings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # e.g. objective: [cusa, ...]
    notes: tuple[str, ...] = ()

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise unknown_name("variant", name, self.variants, where=f"method '{self.name}'")
        return self.variants[name]

    def recipe(self, variant: str, dataset: str) -> dict[str, Any]:
        """The training recipe of `variant` on `dataset` (method defaults, then variant overrides)."""
        v = self.variant(variant)
        if dataset not in self.recipes and dataset not in v.recipes:
            raise unknown_name("dataset", dataset, set(self.recipes) | set(v.recipes),
                               where=f"recipes of {self.name}/{variant}")
        merged = dict(self.recipes.get("default", {}))
        merged.update(self.recipes.get(dataset, {}))
        merged.update(v.recipes.get("default", {}))
        merged.update(v.recipes.get(dataset, {}))
        return merged

    def adapter_class(self) -> type:
        module_name, _, cls_name = self.adapter.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, cls_name)


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    split: str
    protocols: tuple[str, ...]
    images: int | None
    captions_per_image: int
    layout: str  # "precomp" or "cusa_json"
    validation_split: str = "dev"


@dataclass(frozen=True)
class Registry:
    methods: Mapping[str, Method]
    datasets: Mapping[str, Dataset]
    reported: tuple[Reported, ...]

    def method(self, name: str) -> Method:
        if name not in self.methods:
            raise unknown_name("method", name, self.methods)
        return self.methods[name]

    def dataset(self, name: str) -> Dataset:
        if name not in self.datasets:
            raise unknown_name("dataset", name, self.datasets)
        return self.datasets[name]

    def reported_for(self, method: str | None = None, dataset: str | None = None) -> list[Reported]:
        return [r for r in self.reported
                if (method is None or r.method == method) and (dataset is None or r.dataset == dataset)]


# ---- loading and validation ----------------------------------------------------------------------

def _req(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise RegistryError(f"{where}: expected a mapping, found {type(d).__name__}")
    if key not in d:
        raise RegistryError(f"{where}: missing required field '{key}'")
    return d[key]


def _variant(name: str, raw: Mapping[str, Any], where: str) -> Variant:
    checkpoints = {}
    for ds, ck in (raw.get("checkpoints") or {}).items():
        files = ck.get("files") or []
        checkpoints[ds] = Checkpoint(url=_req(ck, "url", f"{where}.checkpoints.{ds}"),
                                     files=tuple(files), note=ck.get("note", ""))
    return Variant(name=name, description=raw.get("description", ""), options=dict(raw.get("options") or {}),
                   members=tuple(raw.get("members") or ()), checkpoints=checkpoints,
                   recipes={k: dict(v) for k, v in (raw.get("recipes") or {}).items()})


def _reported(raw: Mapping[str, Any], where: str) -> Reported:
    values = _req(raw, "values", where)
    if not isinstance(values, Mapping) or not values:
        raise RegistryError(f"{where}: 'values' must be a non-empty mapping of metric -> number")
    for k, v in values.items():
        if v is not None and not isinstance(v, (int, float)):
            raise RegistryError(f"{where}: value of '{k}' is {v!r}, expected a number or null")
    return Reported(method=_req(raw, "method", where), variant=_req(raw, "variant", where),
                    dataset=_req(raw, "dataset", where), protocol=_req(raw, "protocol", where),
                    source=_req(raw, "source", where),
                    values={str(k): (None if v is None else float(v)) for k, v in values.items()},
                    setting=dict(raw.get("setting") or {}), table=raw.get("table", ""),
                    label=raw.get("label", ""), note=raw.get("note", ""))


def parse_registry(raw: Mapping[str, Any], source: str = "registry.yaml") -> Registry:
    """Build and cross-validate a Registry from the parsed YAML document."""
    datasets = {}
    for name, d in (_req(raw, "datasets", source) or {}).items():
        where = f"{source}: datasets.{name}"
        protocols = tuple(_req(d, "protocols", where))
        for p in protocols:
            if p not in PROTOCOLS:
                raise unknown_name("protocol", p, PROTOCOLS, where=where)
        datasets[name] = Dataset(name=name, description=d.get("description", ""), split=_req(d, "split", where),
                                 protocols=protocols, images=d.get("images"),
                                 captions_per_image=int(d.get("captions_per_image", 5)),
                                 layout=d.get("layout", "precomp"),
                                 validation_split=d.get("validation_split", "dev"))
    methods = {}
    for name, m in (_req(raw, "methods", source) or {}).items():
        where = f"{source}: methods.{name}"
        variants = {vn: _variant(vn, v or {}, f"{where}.variants.{vn}")
                    for vn, v in (_req(m, "variants", where) or {}).items()}
        for v in variants.values():
            for member in v.members:
                if member not in variants:
                    raise unknown_name("variant", member, variants, where=f"{where}.variants.{v.name}.members")
            for ds in list(v.checkpoints) + list(v.recipes):
                if ds != "default" and ds not in datasets:
                    raise unknown_name("dataset", ds, datasets, where=f"{where}.variants.{v.name}")
        recipes = {k: dict(r) for k, r in (m.get("recipes") or {}).items()}
        for ds in recipes:
            if ds != "default" and ds not in datasets:
                raise unknown_name("dataset", ds, datasets, where=f"{where}.recipes")
        settings = {k: tuple(v) for k, v in (m.get("settings") or {}).items()}
        methods[name] = Method(name=name, title=_req(m, "title", where), venue=m.get("venue", ""),
                               code=m.get("code", ""), adapter=_req(m, "adapter", where), variants=variants,
                               recipes=recipes, settings=settings, notes=tuple(m.get("notes") or ()))
    reported = []
    for i, r in enumerate(raw.get("reported") or []):
        where = f"{source}: reported[{i}]"
        rep = _reported(r, where)
        if rep.method not in methods:
            raise unknown_name("method", rep.method, methods, where=where)
        if rep.variant not in methods[rep.method].variants:
            raise unknown_name("variant", rep.variant, methods[rep.method].variants, where=where)
        if rep.dataset not in datasets:
            raise unknown_name("dataset", rep.dataset, datasets, where=where)
        if rep.protocol not in PROTOCOLS:
            raise unknown_name("protocol", rep.protocol, PROTOCOLS, where=where)
        for key, val in rep.setting.items():
            allowed = methods[rep.method].settings.get(key)
            if allowed is not None and val not in allowed:
                raise unknown_name(f"{key}", str(val), allowed, where=where)
        reported.append(rep)
    return Registry(methods=methods, datasets=datasets, reported=tuple(reported))


def load_registry_file(path: str | Path) -> Registry:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise RegistryError(f"{path}: registry file not found") from exc
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from exc
    return parse_registry(raw or {}, source=str(path))


def merge_documents(docs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge registry documents: mappings are merged by key (a duplicate name is an error), lists appended."""
    merged: dict[str, Any] = {"datasets": {}, "methods": {}, "reported": []}
    for doc in docs:
        for key, value in (doc or {}).items():
            if key == "reported":
                merged["reported"].extend(value or [])
            elif key in ("datasets", "methods"):
                for name, body in (value or {}).items():
                    if name in merged[key]:
                        raise RegistryError(f"{key}.{name} is defined twice")
                    merged[key][name] = body
            else:
                raise RegistryError(f"unknown top-level registry section '{key}'")
    return merged


@lru_cache(maxsize=4)
def load_registry(path: str | None = None) -> Registry:
    """The project's registry (cached). `path` overrides the default registry.yaml."""
    target = Path(path) if path else REGISTRY_PATH
    fragments = target.parent / "registry.d"
    if not target.exists() and fragments.is_dir():  # development layout: one fragment per paper
        docs = [yaml.safe_load(f.read_text()) for f in sorted(fragments.glob("*.yaml"))]
        return parse_registry(merge_documents(docs), source=str(fragments))
    return load_registry_file(target)
