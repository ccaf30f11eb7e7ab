"""Typed view of registry.yaml: papers, variants, recipes, checkpoints, datasets and reported numbers.

The registry is validated when it is loaded; an unknown name anywhere (on the command line or
inside the file) is an error that lists the valid names and suggests the nearest one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness.core.paths import HARNESS_DIR
from harness.data.layouts import DataShape
from harness.eval.protocols import PROTOCOLS, Protocol
from harness.spec import protocol_plugins
from harness.spec.errors import RegistryError, nearest, unknown_name
from harness.spec.schema import TOP_SECTIONS, check_document
from harness.spec.yaml_lines import LineDict, load_yaml, location, plain

if TYPE_CHECKING:
    from harness.api.adapter import Adapter

# The project's registry: the top-level registry.yaml, shipped inside the package as harness/spec/registry.yaml
# (a link in a checkout, a copy in an installed wheel).
REGISTRY_PATH = HARNESS_DIR / "registry.yaml"


__all__ = ["RegistryError", "unknown_name"]  # defined in harness.spec.errors; imported from here by callers


ARCHIVE_KINDS = ("zip", "tar")


@dataclass(frozen=True)
class CheckpointFile:
    """One official checkpoint file: its name on disk, where it sits in the download, and its integrity."""

    name: str  # file name under --checkpoint-dir/<method>/<variant>/<dataset>/
    member: str | None = None  # path inside the archive or Drive folder the URL serves (None: found by name)
    size: int | None = None  # bytes; None while not recorded
    sha256: str | None = None  # lower-case hex; None while not recorded
    note: str = ""


@dataclass(frozen=True)
class Checkpoint:
    """Where the official weights of one (variant, dataset) live and how the harness names them.

    `url` (the first of `urls`) and `files` (the names) are kept for callers that only need those;
    `entries` holds each file's member path, size and sha256, `archive` says whether the URLs serve a
    zip / tar holding the files (None: the file itself, or a Google Drive folder)."""

    url: str
    files: tuple[str, ...]  # expected file name(s) under --checkpoint-dir/<method>/<variant>/<dataset>/
    note: str = ""
    urls: tuple[str, ...] = ()  # tried in order; default (url,)
    entries: tuple[CheckpointFile, ...] = ()  # one per name in `files`; default: names only
    archive: str | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            object.__setattr__(self, "urls", (self.url,) if self.url else ())
        if not self.entries:
            object.__setattr__(self, "entries", tuple(CheckpointFile(name=f) for f in self.files))

    def entry(self, name: str) -> CheckpointFile:
        for e in self.entries:
            if e.name == name:
                return e
        raise unknown_name("checkpoint file", name, self.files)


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
    note: str = ""  # about this row, shown beside it
    decimals: Mapping[str, int] = field(default_factory=dict)  # decimals the source printed, per key (default 1)
    derived: tuple[str, ...] = ()  # keys the registry computed from printed numbers (the source prints none)
    table_note: str = ""  # about the quoted table heading (e.g. it contradicts its numbers), shown beside it

    def places(self, key: str) -> int:
        """Decimals the source printed `key` with (1 unless the row says otherwise)."""
        return self.decimals.get(key, REPORTED_DECIMALS)


REPORTED_DECIMALS = 1  # every source in the registry prints one decimal unless a row says `decimals:`


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
    # optional recipe keys a user may set with --set (absent from the recipes): name -> int|float|bool|str|path|...
    recipe_keys: Mapping[str, str] = field(default_factory=dict)
    # settings whose values stand for recipe values: key -> value -> {recipe key: value} (None: no recipe makes it)
    setting_recipes: Mapping[str, Mapping[Any, Mapping[str, Any] | None]] = field(default_factory=dict)
    baseline: bool = False  # a reference row (e.g. zero-shot CLIP): reports show it on every dataset it ran on

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise unknown_name("variant", name, self.variants, where=f"method '{self.name}'")
        return self.variants[name]

    def has_recipe(self, variant: str, dataset: str) -> bool:
        """Whether the method or `variant` has a recipe of its own for `dataset` (else the default applies)."""
        return dataset != "default" and (dataset in self.recipes or dataset in self.variant(variant).recipes)

    def recipe(self, variant: str, dataset: str) -> dict[str, Any]:
        """The training recipe of `variant` on `dataset` (method defaults, then variant overrides). A dataset
        without a recipe of its own (a user's dataset) gets the `default` recipes (see `has_recipe`)."""
        v = self.variant(variant)
        merged = dict(self.recipes.get("default", {}))
        merged.update(self.recipes.get(dataset, {}))
        merged.update(v.recipes.get("default", {}))
        merged.update(v.recipes.get(dataset, {}))
        return merged

    def adapter_class(self) -> type[Adapter]:
        """The Adapter subclass named by `adapter: "package.module:Class"` (imported now: a registry file runs
        the code it names); anything else is a one-line RegistryError (`harness.spec.adapter_path`)."""
        from harness.spec.adapter_path import load_adapter_class  # it imports this module

        return load_adapter_class(self.name, self.adapter)


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    split: str
    protocols: tuple[str, ...]
    images: Mapping[str, int]  # declared images of each split ({} where not declared)
    captions_per_image: int
    layout: str  # a row of harness.data.layouts.LAYOUTS ("precomp", "cusa_json")
    validation_split: str = "dev"
    feature_dim: int | None = 2048  # region feature size check-data expects (None: any)

    @property
    def shape(self) -> DataShape:
        """What the registry declares about this dataset's files (split sizes, captions, feature size)."""
        return DataShape(self.name, dict(self.images), self.captions_per_image, self.feature_dim)


@dataclass(frozen=True)
class Registry:
    methods: Mapping[str, Method]
    datasets: Mapping[str, Dataset]
    reported: tuple[Reported, ...]
    protocols: Mapping[str, Protocol] = field(default_factory=lambda: dict(PROTOCOLS))  # built-ins + plugged in

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


def parse_checkpoint_file(raw: Any, where: str) -> CheckpointFile:
    """A `files:` item: a plain name, or {name, member, size, sha256, note}."""
    if isinstance(raw, str):
        raw = {"name": raw}
    name = _req(raw, "name", where)
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise RegistryError(f"{where}: file name {name!r} must be a plain file name (no folders)")
    unknown = sorted(set(raw) - {"name", "member", "size", "sha256", "note"})
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {unknown}; valid: name, member, size, sha256, note")
    size, sha = raw.get("size"), raw.get("sha256")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise RegistryError(f"{where}: size {size!r} must be a byte count or null")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                            or any(c not in "0123456789abcdef" for c in sha.lower())):
        raise RegistryError(f"{where}: sha256 {sha!r} must be 64 hex digits or null")
    member = raw.get("member")
    if member is not None and not isinstance(member, str):
        raise RegistryError(f"{where}: member {member!r} must be a path inside the archive / folder, or null")
    return CheckpointFile(name=name, member=member, size=size, sha256=sha.lower() if sha else None,
                          note=str(raw.get("note") or ""))


def parse_checkpoint(ck: Mapping[str, Any], where: str) -> Checkpoint:
    """A `checkpoints.<dataset>` entry: urls (or the older single `url`), files, archive, note."""
    if not isinstance(ck, Mapping):
        raise RegistryError(f"{where}: expected a mapping with urls and files, found {type(ck).__name__}")
    if "urls" in ck and "url" in ck:
        raise RegistryError(f"{where}: give either 'urls' (a list) or 'url', not both")
    urls = ck.get("urls") if "urls" in ck else [_req(ck, "url", where)]
    if isinstance(urls, str) or not urls or not all(isinstance(u, str) and u for u in urls):
        raise RegistryError(f"{where}: 'urls' must be a non-empty list of URLs")
    archive = ck.get("archive")
    if archive is not None and archive not in ARCHIVE_KINDS:
        raise unknown_name("archive kind", str(archive), ARCHIVE_KINDS, where=where)
    entries = tuple(parse_checkpoint_file(f, f"{where}.files[{i}]") for i, f in enumerate(ck.get("files") or []))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise RegistryError(f"{where}: file names repeat in {names}")
    return Checkpoint(url=urls[0], files=tuple(names), note=str(ck.get("note") or ""), urls=tuple(urls),
                      entries=entries, archive=archive)


def _variant(name: str, raw: Mapping[str, Any], where: str) -> Variant:
    checkpoints = {ds: parse_checkpoint(ck, f"{where}.checkpoints.{ds}")
                   for ds, ck in (raw.get("checkpoints") or {}).items()}
    return Variant(name=name, description=raw.get("description", ""), options=plain(raw.get("options") or {}),
                   members=tuple(raw.get("members") or ()), checkpoints=checkpoints,
                   recipes={k: plain(v or {}) for k, v in (raw.get("recipes") or {}).items()})


def _reported(raw: Mapping[str, Any], where: str) -> Reported:
    # keys, types and value ranges were checked by harness.spec.schema (REPORTED_KEYS, reported_value)
    values = _req(raw, "values", where)
    keys = [str(k) for k in values]
    raw_dec = raw.get("decimals", {})
    if isinstance(raw_dec, int) and not isinstance(raw_dec, bool):
        raw_dec = dict.fromkeys(keys, raw_dec)
    if not isinstance(raw_dec, Mapping):
        raise RegistryError(f"{where}: 'decimals' is the number of decimals the source printed: an integer, or a "
                            f"mapping of metric -> integer; found {raw_dec!r}")
    for k, d in raw_dec.items():
        if str(k) not in keys:
            raise unknown_name("metric", str(k), keys, where=f"{where}.decimals")
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 6:
            raise RegistryError(f"{where}: decimals of '{k}' is {d!r}, expected an integer 0..6")
    derived = raw.get("derived") or []
    if isinstance(derived, str) or not isinstance(derived, (list, tuple)):
        raise RegistryError(f"{where}: 'derived' lists the metrics the source does not print, found {derived!r}")
    for k in derived:
        if str(k) not in keys:
            raise unknown_name("metric", str(k), keys, where=f"{where}.derived")
    setting = raw.get("setting") or {}
    if not isinstance(setting, Mapping):
        raise RegistryError(f"{where}: 'setting' must be a mapping of setting -> value, found {setting!r}")
    return Reported(method=_req(raw, "method", where), variant=_req(raw, "variant", where),
                    dataset=_req(raw, "dataset", where), protocol=_req(raw, "protocol", where),
                    source=_req(raw, "source", where),
                    values={str(k): (None if v is None else float(v)) for k, v in values.items()},
                    setting=dict(setting), table=raw.get("table", ""),
                    label=raw.get("label", ""), note=raw.get("note", ""),
                    decimals={str(k): int(d) for k, d in raw_dec.items()},
                    derived=tuple(str(k) for k in derived), table_note=raw.get("table_note", ""))


def _settings(raw: Any, where: str) -> tuple[dict[str, tuple], dict[str, dict]]:
    """A method's `settings:` block: what reported rows may say about the model they describe.

    `key: [v1, v2]`: allowed values; a run's value is its recipe's (or its variant's option) `key`.
    `key: {v1: {recipe_key: value}, v2: null}`: allowed values, each with the recipe values it stands for
    (null: no recipe of ours makes it). `key: null`: any value; a fact about a run (the checkpoint epoch),
    not a recipe choice. Returns (allowed values, () for any; the recipe values of each value)."""
    if not isinstance(raw, Mapping):
        raise RegistryError(f"{where}: expected a mapping of setting -> allowed values")
    allowed: dict[str, tuple] = {}
    recipes: dict[str, dict] = {}
    for key, spec in raw.items():
        if spec is None:
            allowed[str(key)] = ()
        elif isinstance(spec, Mapping):
            for value, implied in spec.items():
                if implied is not None and not isinstance(implied, Mapping):
                    raise RegistryError(f"{where}.{key}.{value}: expected the recipe values it stands for "
                                        f"({{recipe_key: value}}) or null, found {implied!r}")
            allowed[str(key)] = tuple(spec)
            recipes[str(key)] = {v: (None if r is None else dict(r)) for v, r in spec.items()}
        elif isinstance(spec, (list, tuple)) and spec:
            allowed[str(key)] = tuple(spec)
        else:
            raise RegistryError(f"{where}.{key}: expected a list of allowed values, a mapping value -> recipe "
                                f"values, or null (any value), found {spec!r}")
    return allowed, recipes


RECIPE_KEY_TYPES = ("int", "float", "bool", "str", "path", "list", "mapping", "any")


def _recipe_keys(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise RegistryError(f"{where}.recipe_keys: expected a mapping of key -> type ({', '.join(RECIPE_KEY_TYPES)})")
    for key, kind in raw.items():
        if kind not in RECIPE_KEY_TYPES:
            raise unknown_name("recipe key type", str(kind), RECIPE_KEY_TYPES, where=f"{where}.recipe_keys.{key}")
    return {str(k): str(v) for k, v in raw.items()}


def _baseline(raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise RegistryError(f"{where}.baseline: expected true or false, found {raw!r}")
    return raw


DERIVED_KEYS = ("rsum_printed",)  # reported numbers the report derives from a protocol's fields (columns.py)


def _check_reported_keys(rep: Reported, proto: Protocol, where: str) -> None:
    """A reported number must name a field its protocol stores (or `folds.<k>.<field>`, or a derived key), so it
    is compared, not shown as a column of its own; protocols that declare no fields are not checked."""
    fields = [f.path for f in proto.fields]
    if not fields:
        return
    for key in rep.values:
        bare = key.split(".", 2)[2] if key.startswith("folds.") and key.count(".") >= 2 else key
        if bare in fields or bare in DERIVED_KEYS:
            continue
        raise unknown_name(f"{proto.name} number", key, [*fields, *DERIVED_KEYS], where=f"{where}.values")


def parse_registry(raw: Mapping[str, Any], source: str = "registry.yaml") -> Registry:
    """Build and cross-validate a Registry from the parsed YAML document (every section first checked against
    the strict schema of harness.spec.schema: errors name the file and line where the document has them)."""
    if not isinstance(raw, Mapping):
        raise RegistryError(f"{source}: a registry is a mapping with datasets / methods / reported sections, "
                            f"found {type(raw).__name__}")
    raw = _flatten_reported(raw, source)
    check_document(raw, source, internal=(EXTENSIONS,))
    table, extensions = _plugged_protocols(raw, source)
    datasets = {}
    section = _req(raw, "datasets", source) or {}
    for name, d in section.items():
        where = f"{location(section, name, source)}: datasets.{name}"
        if protocol_plugins.is_extension(d):
            extensions.append((where, name, d))
            continue
        protocols = tuple(_req(d, "protocols", where))
        for p in protocols:
            if p not in table:
                raise unknown_name("protocol", p, table, where=where)
        split = _req(d, "split", where)
        datasets[name] = Dataset(name=name, description=d.get("description", ""), split=split,
                                 protocols=protocols, images=_split_images(d.get("images"), split),
                                 captions_per_image=int(d.get("captions_per_image", 5)),
                                 layout=d.get("layout", "precomp"),
                                 validation_split=d.get("validation_split", "dev"),
                                 feature_dim=d.get("feature_dim", 2048))
    datasets = _extend_datasets(datasets, extensions, table)
    methods = {}
    section = _req(raw, "methods", source) or {}
    for name, m in section.items():
        where = f"{location(section, name, source)}: methods.{name}"
        variants = {vn: _variant(vn, v or {}, f"{where}.variants.{vn}")
                    for vn, v in (_req(m, "variants", where) or {}).items()}
        for v in variants.values():
            for member in v.members:
                if member not in variants:
                    raise unknown_name("variant", member, variants, where=f"{where}.variants.{v.name}.members")
                if variants[member].members:  # an ensemble of ensembles (or a cycle) would never be planned
                    raise RegistryError(f"{where}.variants.{v.name}.members: '{member}' is itself an ensemble "
                                        f"(of {', '.join(variants[member].members)}); an ensemble's members are "
                                        "single models")
            for ds in list(v.checkpoints) + list(v.recipes):
                if ds != "default" and ds not in datasets:
                    raise unknown_name("dataset", ds, datasets, where=f"{where}.variants.{v.name}")
        recipes = {k: plain(r or {}) for k, r in (m.get("recipes") or {}).items()}
        for ds in recipes:
            if ds != "default" and ds not in datasets:
                raise unknown_name("dataset", ds, datasets, where=f"{where}.recipes")
        settings, setting_recipes = _settings(m.get("settings") or {}, f"{where}.settings")
        methods[name] = Method(name=name, title=_req(m, "title", where), venue=m.get("venue", ""),
                               code=m.get("code", ""), adapter=_req(m, "adapter", where), variants=variants,
                               recipes=recipes, settings=settings, notes=tuple(m.get("notes") or ()),
                               recipe_keys=_recipe_keys(m.get("recipe_keys") or {}, where),
                               setting_recipes=setting_recipes,
                               baseline=_baseline(m.get("baseline", False), where))
    reported = []
    for i, r in enumerate(raw.get("reported") or []):
        where = f"{location(r, None, source)}: reported[{i}]"
        rep = _reported(r, where)
        if rep.method not in methods:
            raise unknown_name("method", rep.method, methods, where=where)
        if rep.variant not in methods[rep.method].variants:
            raise unknown_name("variant", rep.variant, methods[rep.method].variants, where=where)
        if rep.dataset not in datasets:
            raise unknown_name("dataset", rep.dataset, datasets, where=where)
        if rep.protocol not in table:
            raise unknown_name("protocol", rep.protocol, table, where=where)
        declared = datasets[rep.dataset].protocols
        if rep.protocol not in declared:
            owners = [n for n, d in datasets.items() if rep.protocol in d.protocols]
            where_else = (f"it belongs to dataset {', '.join(repr(o) for o in owners)}" if owners
                          else "no dataset declares it")
            raise RegistryError(f"{where}: protocol '{rep.protocol}' is not one of dataset '{rep.dataset}'s "
                                f"protocols ({', '.join(declared)}); {where_else}. Name the dataset the row was "
                                f"evaluated on, or add '{rep.protocol}' to datasets.{rep.dataset}.protocols")
        _check_reported_keys(rep, table[rep.protocol], where)
        for key, val in rep.setting.items():
            allowed = methods[rep.method].settings.get(key)
            if allowed and val not in allowed:
                raise unknown_name(f"{key}", str(val), [str(a) for a in allowed], where=where)
        reported.append(rep)
    return Registry(methods=methods, datasets=datasets, reported=tuple(reported), protocols=table)


EXTENSIONS = "_dataset_extensions"  # merged documents: (where, dataset, {add_protocols: [...]}) of every file


def _plugged_protocols(raw: Mapping[str, Any], source: str) -> tuple[dict[str, Protocol], list[tuple]]:
    """The protocol table (built-ins, entry points, `protocols:` sections) and the dataset extensions merged so far."""
    try:
        return protocol_plugins.protocol_table(raw.get("protocols"), source), list(raw.get(EXTENSIONS) or [])
    except protocol_plugins.ProtocolPluginError as exc:
        raise RegistryError(str(exc)) from None


def _extend_datasets(datasets: dict[str, Dataset], extensions: Sequence[tuple], table: Mapping[str, Protocol],
                     ) -> dict[str, Dataset]:
    """Datasets with the protocols `datasets.<name>: {add_protocols: [...]}` entries add (in file order)."""
    import dataclasses

    for where, name, body in extensions:
        try:
            names = protocol_plugins.extension_names(body, where)
        except protocol_plugins.ProtocolPluginError as exc:
            raise RegistryError(str(exc)) from None
        if name not in datasets:
            raise unknown_name("dataset", name, datasets, where=f"{where} (add_protocols extends a dataset defined "
                               "in another registry file)")
        for p in names:
            if p not in table:
                raise unknown_name("protocol", p, table, where=f"{where}.add_protocols")
        ds = datasets[name]
        datasets[name] = dataclasses.replace(ds, protocols=tuple(dict.fromkeys((*ds.protocols, *names))))
    return datasets


def _split_images(raw: Any, test_split: str) -> dict[str, int]:
    """`images:` as {split: count}: a single count is the test split's."""
    if raw is None:
        return {}
    return {test_split: int(raw)} if isinstance(raw, int) else {str(k): int(v) for k, v in raw.items()}


def _read_document(path: Path) -> dict[str, Any]:
    """One registry YAML document; errors name the file and, for syntax errors, the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"{path}: registry file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read the registry file ({exc})") from None
    try:
        raw = load_yaml(text, str(path))
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
    return raw.derive(raw) if isinstance(raw, LineDict) else dict(raw)


def _flatten_reported(doc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Move each method's own `reported:` rows to the top-level list (they name their method implicitly)."""
    out = _like(doc, {k: v for k, v in doc.items() if k != "methods"})
    methods = doc.get("methods") or {}
    if not isinstance(methods, Mapping):
        raise RegistryError(f"{location(doc, 'methods', source)}: methods: expected a mapping of method name -> "
                            "method")
    out["methods"] = _like(methods, {})
    rows = doc.get("reported") or []
    if not isinstance(rows, list):
        raise RegistryError(f"{location(doc, 'reported', source)}: reported: expected a list of rows")
    rows = list(rows)
    for name, body in methods.items():
        if isinstance(body, Mapping) and "reported" in body:
            own = body["reported"] or []
            if not isinstance(own, list):
                raise RegistryError(f"{location(body, 'reported', source)}: methods.{name}.reported: expected a "
                                    "list of rows")
            body = _like(body, {k: v for k, v in body.items() if k != "reported"})
            for row in own:
                if not isinstance(row, Mapping):
                    raise RegistryError(f"{location(methods, name, source)}: methods.{name}.reported: each row is "
                                        f"a mapping, found {row!r}")
                if row.get("method", name) != name:
                    raise RegistryError(f"{location(row, 'method', source)}: methods.{name}.reported names method "
                                        f"'{row['method']}'")
                rows.append(_like(row, {"method": name, **row}))
        out["methods"][name] = body
    out["reported"] = rows
    return out


def _like(original: Any, items: Mapping[str, Any]) -> dict[str, Any]:
    """`items` as a mapping that keeps `original`'s file and key lines when it was read from a file."""
    return original.derive(items) if isinstance(original, LineDict) else dict(items)


def load_registry_file(path: str | Path) -> Registry:
    """A registry from one self-contained file (datasets and methods all in it)."""
    path = Path(path)
    return _parse_checked(lambda: parse_registry(_flatten_reported(_read_document(path), str(path)),
                                                 source=str(path)), str(path))


def merge_documents(docs: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Merge (source, document) pairs in order: datasets and methods by name (a name defined twice is an error
    naming both files), reported rows appended."""
    merged: dict[str, Any] = {"datasets": LineDict(), "methods": LineDict(), "reported": [], "protocols": {},
                              EXTENSIONS: []}
    origin: dict[tuple[str, str], str] = {}
    for source, doc in docs:
        if doc is not None and not isinstance(doc, Mapping):
            raise RegistryError(f"{source}: a registry file is a mapping with datasets / methods / reported "
                                f"sections, found a {type(doc).__name__}")
        doc = _flatten_reported(doc or {}, source)
        for key, value in doc.items():
            if key == "reported":
                merged["reported"].extend(value)
            elif key in SECTIONS_READ_ELSEWHERE or (key in TOP_SECTIONS and value is None):
                continue
            elif key == "protocols":  # protocols of one's own (harness/spec/protocol_plugins.py)
                try:
                    protocol_plugins.merge_section(merged["protocols"], value, source)
                except protocol_plugins.ProtocolPluginError as exc:
                    raise RegistryError(str(exc)) from None
            elif key in TOP_SECTIONS:  # sections of named entries (datasets, methods, ...) merge by name
                if not isinstance(value, Mapping):
                    raise RegistryError(f"{location(doc, key, source)}: {key}: expected a mapping of name -> "
                                        f"definition, found {value!r}")
                for name, body in value.items():
                    if key == "datasets" and protocol_plugins.is_extension(body):
                        merged[EXTENSIONS].append((f"{source}: datasets.{name}", name, body))
                        continue
                    if (key, name) in origin:
                        raise RegistryError(f"{key}.{name} is defined in {origin[key, name]} and again in "
                                            f"{location(value, name, source)}; rename one of them")
                    origin[key, name] = location(value, name, source)
                    merged.setdefault(key, LineDict()).take(name, body, value)
            else:
                near = nearest(str(key), TOP_SECTIONS)
                hint = f"; did you mean '{near}'?" if near else ""
                raise RegistryError(f"{location(doc, key, source)}: unknown top-level registry section {str(key)!r}"
                                    f"{hint} (valid: {', '.join(TOP_SECTIONS)})")
    return merged


SECTIONS_READ_ELSEWHERE = ("checkpoints",)  # amendments of checkpoint entries (sizes, hashes, mirrors): by fetch


# Installed packages add methods (datasets, reported rows) through this entry-point group, as pytest plugins
# do; the environment variable ITRBENCH_DISABLE_PLUGINS set to anything but "" or "0" ignores them all.
ENTRY_POINT_GROUP = "itrbench.methods"
PLUGINS_OFF = protocol_plugins.PLUGINS_OFF  # one switch turns off method and protocol plug-ins


def plugin_documents() -> list[tuple[str, Path | dict[str, Any]]]:
    """The registry documents installed packages declare in the entry-point group `itrbench.methods`, as
    (where it came from, a registry file path or the document itself), in entry-point name order.

    An entry point names (`"package.module:attribute"`) a path to a registry YAML file (str or Path; a relative
    path is taken from the folder of the entry point's module), a mapping (the document), or a callable
    returning either. Its methods' adapters live in the installed package. A broken entry point is an error
    naming it and its distribution.
    """
    import os
    import sys
    from importlib.metadata import entry_points

    if os.environ.get(PLUGINS_OFF, "") not in ("", "0"):
        return []
    found: list[tuple[str, Path | dict[str, Any]]] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        dist = getattr(ep, "dist", None)
        label = f"entry point '{ep.name} = {ep.value}' of {dist.name if dist else 'an installed package'}"
        try:
            obj = ep.load()
            if callable(obj):
                obj = obj()
        except Exception as exc:  # anything the package's code raises: name the plugin, not a traceback
            raise RegistryError(f"{label} (group {ENTRY_POINT_GROUP}) failed: {type(exc).__name__}: {exc}; fix or "
                                f"uninstall that package, or set {PLUGINS_OFF}=1 to ignore installed plugins") from None
        if isinstance(obj, (str, os.PathLike)):
            path = Path(obj)
            module = sys.modules.get(ep.module)
            if not path.is_absolute() and getattr(module, "__file__", None):
                path = Path(module.__file__).parent / path
            if not path.is_file():
                raise RegistryError(f"{label}: its registry file {path} does not exist")
            found.append((label, path))
        elif isinstance(obj, Mapping):
            found.append((label, dict(obj)))
        else:
            raise RegistryError(f"{label}: gives a {type(obj).__name__}; expected a registry file path, a mapping "
                                "(the registry document) or a callable returning one")
    return found


def load_registry(*extra: str | Path) -> Registry:
    """The project's registry, then the registries of installed plugins (`plugin_documents`), then the user's
    registry files `extra`, in order.

    A user file may add datasets, methods (their adapters in the user's own modules) and reported rows;
    redefining a name is an error naming both files. Files are read fresh on every call (cheap: a few
    hundred lines), so a long-running orchestrator sees edits made between runs.
    """
    plugins = plugin_documents()
    user = [Path(p) for p in extra if p]
    if all(isinstance(doc, Path) for _, doc in plugins):
        return _load((REGISTRY_PATH, *(doc for _, doc in plugins), *user))
    docs = [*builtin_documents(plugins), *((str(p), _read_document(p)) for p in user)]
    return parse_registry(merge_documents(docs), source=" + ".join(source for source, _ in docs))


def builtin_documents(plugins: list[tuple[str, Path | dict[str, Any]]] | None = None,
                      ) -> list[tuple[str, dict[str, Any]]]:
    """(source, document) of the project's registry and of each installed plugin's, in load order: what user
    registry files are layered on (for callers that merge documents themselves)."""
    found = plugin_documents() if plugins is None else plugins
    return [(str(REGISTRY_PATH), _read_document(REGISTRY_PATH)),
            *((label, doc) if isinstance(doc, dict) else (str(doc), _read_document(doc)) for label, doc in found)]


@lru_cache(maxsize=8)
def _load_cached(paths: tuple[Path, ...], stamps: tuple, plugged: tuple = ()) -> Registry:
    docs = [(str(p), _read_document(p)) for p in paths]
    source = " + ".join(str(p) for p in paths)
    return _parse_checked(lambda: parse_registry(merge_documents(docs), source=source), source)


def _parse_checked(parse: Any, source: str) -> Registry:
    """`parse()`, with a field of the wrong type (a string where a mapping belongs ...) reported as a one-line
    RegistryError naming the file(s), not a traceback (issue 14)."""
    try:
        return parse()
    except RegistryError:
        raise
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
        raise RegistryError(f"{source}: a registry field has the wrong type or value ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); see docs/extending.md") from None


def _load(paths: tuple[Path, ...]) -> Registry:
    stamps: list[Any] = []
    for p in paths:
        try:
            stamps.append(p.stat().st_mtime_ns)
        except OSError:
            stamps.append(-1)  # _read_document names the missing file
        # protocol modules beside a registry file are part of what it loads: an edited one is loaded again
        stamps += sorted((m.name, m.stat().st_mtime_ns) for m in p.parent.glob("*.py")) if p.parent.is_dir() else []
    return _load_cached(paths, tuple(stamps), protocol_plugins.entry_point_key())


def load_members(method: Method, variant: str, checkpoints: Sequence[str | Path], dataset: str | None) -> list[Adapter]:
    """Load one adapter per checkpoint with its strict, safe loader. An ensemble takes one per member."""
    spec = method.variant(variant)
    cls = method.adapter_class()
    if spec.is_ensemble:
        if len(checkpoints) != len(spec.members):
            raise RegistryError(f"{method.name}/{variant} averages {len(spec.members)} models "
                                f"({', '.join(spec.members)}): pass --checkpoint once per member, in that order "
                                f"(got {len(checkpoints)})")
        same = len(set(spec.members)) == 1
        members = [cls.load_official(ck, variant=None if same else m, dataset=dataset)
                   for ck, m in zip(checkpoints, spec.members)]
        if same and len({a.variant for a in members}) > 1:
            raise RegistryError(f"{method.name}/{variant}: the members must be models of one variant, got "
                                + ", ".join(f"{ck} ({a.variant})" for ck, a in zip(checkpoints, members)))
        return members
    if len(checkpoints) != 1:
        raise RegistryError(f"{method.name}/{variant} is a single model: pass exactly one --checkpoint")
    return [cls.load_official(checkpoints[0], variant=variant, dataset=dataset)]
