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

# The project's registry: the top-level registry.yaml, shipped inside the package as harness/registry.yaml
# (a link in a checkout, a copy in an installed wheel).
REGISTRY_PATH = Path(__file__).resolve().with_name("registry.yaml")

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


def _read_document(path: Path) -> dict[str, Any]:
    """One registry YAML document; errors name the file and, for syntax errors, the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"{path}: registry file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read the registry file ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RegistryError(f"{path}{line}: not valid YAML ({problem}); fix the file or pass another "
                            "--registry") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RegistryError(f"{path}: a registry file is a mapping with datasets / methods / reported sections, "
                            f"found a {type(raw).__name__}")
    return dict(raw)


def _flatten_reported(doc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Move each method's own `reported:` rows to the top-level list (they name their method implicitly)."""
    out = {k: v for k, v in doc.items() if k != "methods"}
    methods = doc.get("methods") or {}
    if not isinstance(methods, Mapping):
        raise RegistryError(f"{source}: methods: expected a mapping of method name -> method")
    out["methods"] = {}
    rows = list(doc.get("reported") or [])
    for name, body in methods.items():
        if isinstance(body, Mapping) and "reported" in body:
            body = dict(body)
            for row in body.pop("reported") or []:
                if not isinstance(row, Mapping):
                    raise RegistryError(f"{source}: methods.{name}.reported: each row is a mapping, found {row!r}")
                if row.get("method", name) != name:
                    raise RegistryError(f"{source}: methods.{name}.reported names method '{row['method']}'")
                rows.append({"method": name, **row})
        out["methods"][name] = body
    out["reported"] = rows
    return out


def load_registry_file(path: str | Path) -> Registry:
    """A registry from one self-contained file (datasets and methods all in it)."""
    path = Path(path)
    return parse_registry(_flatten_reported(_read_document(path), str(path)), source=str(path))


def merge_documents(docs: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Merge (source, document) pairs in order: datasets and methods by name (a name defined twice is an error
    naming both files), reported rows appended."""
    merged: dict[str, Any] = {"datasets": {}, "methods": {}, "reported": []}
    origin: dict[tuple[str, str], str] = {}
    for source, doc in docs:
        doc = _flatten_reported(doc or {}, source)
        for key, value in doc.items():
            if key == "reported":
                if not isinstance(value, list):
                    raise RegistryError(f"{source}: reported: expected a list of rows")
                merged["reported"].extend(value)
            elif key in ("datasets", "methods"):
                if not isinstance(value, Mapping):
                    raise RegistryError(f"{source}: {key}: expected a mapping of name -> definition")
                for name, body in value.items():
                    if (key, name) in origin:
                        raise RegistryError(f"{key}.{name} is defined in {origin[key, name]} and again in {source}; "
                                            "rename one of them")
                    origin[key, name] = source
                    merged[key][name] = body
            else:
                raise RegistryError(f"{source}: unknown top-level registry section '{key}'; valid: datasets, "
                                    "methods, reported")
    return merged


def load_registry(*extra: str | Path) -> Registry:
    """The project's registry with the user's registry files `extra` layered on top, in order.

    A user file may add datasets, methods (their adapters in the user's own modules) and reported rows;
    redefining a name is an error naming both files. Files are read fresh on every call (cheap: a few
    hundred lines), so a long-running orchestrator sees edits made between runs.
    """
    return _load((REGISTRY_PATH, *(Path(p) for p in extra if p)))


@lru_cache(maxsize=8)
def _load_cached(paths: tuple[Path, ...], stamps: tuple[float, ...]) -> Registry:
    docs = [(str(p), _read_document(p)) for p in paths]
    source = " + ".join(str(p) for p in paths)
    return parse_registry(merge_documents(docs), source=source)


def _load(paths: tuple[Path, ...]) -> Registry:
    stamps = []
    for p in paths:
        try:
            stamps.append(p.stat().st_mtime_ns)
        except OSError:
            stamps.append(-1)  # _read_document names the missing file
    return _load_cached(paths, tuple(stamps))
