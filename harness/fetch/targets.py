"""What `fetch` downloads: the registry's checkpoint files for (method, variant, dataset), with user overrides.

A user file passed with `--registry FILE` may hold registry sections (datasets / methods / reported, layered
as everywhere) and a `checkpoints:` section that amends existing entries, keyed `method/variant/dataset`:

    checkpoints:
      esa/bigru/coco:
        urls: [https://lab.example/esa/bigru/coco.zip]   # optional: replaces the registry's list
        archive: zip                                       # optional
        files:
          model_best.pth: {size: 123, sha256: "ab...", member: "runs/coco/model_best.pth"}

`fetch --record FILE` writes the sizes and hashes it computed into such a section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.core.results import write_text
from harness.fetch.errors import FetchError
from harness.spec.registry import (
    Checkpoint,
    CheckpointFile,
    Registry,
    RegistryError,
    _read_document,
    builtin_documents,
    load_registry,
    merge_documents,
    parse_checkpoint,
    parse_registry,
    unknown_name,
)

RECORD_HEADER = ("# Checkpoint sizes and hashes recorded by `itrbench fetch --record` from files that passed the\n"
                 "# loader check. Compare them with a trusted copy before sharing; use with fetch --registry FILE.\n")


@dataclass(frozen=True)
class Target:
    """One official checkpoint file of (method, variant, dataset)."""

    method: str
    variant: str
    dataset: str
    checkpoint: Checkpoint
    entry: CheckpointFile

    @property
    def key(self) -> str:
        return f"{self.method}/{self.variant}/{self.dataset}"

    @property
    def label(self) -> str:
        return f"{self.key}/{self.entry.name}"

    def path(self, dest: Path) -> Path:
        """`<dest>/<method>/<variant>/<dataset>/<file>`: where `evaluate` and `run --stage evaluate` look."""
        return Path(dest) / self.method / self.variant / self.dataset / self.entry.name


def select_targets(registry: Registry, methods: Sequence[str] | None, datasets: Sequence[str] | None,
                   variants: Sequence[str] | None) -> list[Target]:
    """The checkpoint files of the asked methods / variants / datasets (ensembles give their members' files).

    Unknown names are errors with the nearest valid one; an explicitly asked variant without a checkpoint
    for an asked dataset is an error; None means every one."""
    for ds in datasets or ():
        registry.dataset(ds)
    out: dict[tuple[str, str, str, str], Target] = {}
    for mname in methods or list(registry.methods):
        method = registry.method(mname)
        names = list(variants) if variants else list(method.variants)
        for v in names:
            method.variant(v)
        for v in names:
            spec = method.variants[v]
            owners = list(dict.fromkeys(spec.members)) if spec.is_ensemble else [v]
            for ds in datasets or sorted({d for o in owners for d in method.variants[o].checkpoints}):
                missing = [o for o in owners if ds not in method.variants[o].checkpoints]
                if missing and variants:
                    have = sorted(n for n, s in method.variants.items() if ds in s.checkpoints)
                    raise FetchError(f"{mname}/{v} has no official checkpoint for {ds} in the registry "
                                     f"(variants with one: {', '.join(have) or 'none'})")
                for o in owners:
                    ck = method.variants[o].checkpoints.get(ds)
                    for entry in ck.entries if ck else ():
                        out.setdefault((mname, o, ds, entry.name), Target(mname, o, ds, ck, entry))
    if not out:
        raise FetchError(f"no official checkpoint in the registry for methods {', '.join(methods or ['all'])}"
                         f" on {', '.join(datasets or ['any dataset'])}")
    return list(out.values())


def load_with_overrides(files: Iterable[str | Path]) -> Registry:
    """The project's registry with the user files on top: registry sections are layered as by
    `load_registry`, `checkpoints:` sections amend the checkpoint entries they name."""
    docs: list[tuple[str, Mapping[str, Any]]] = []
    overlays = []
    for f in files:
        doc = dict(_read_document(Path(f)))
        section = doc.pop("checkpoints", None)
        if section is not None:
            overlays.append((str(f), section))
        if doc:
            docs.append((str(f), doc))
    if docs:
        docs[:0] = builtin_documents()  # the project's registry and installed plugins' (itrbench.methods)
        registry = parse_registry(merge_documents(docs), source=" + ".join(s for s, _ in docs))
    else:
        registry = load_registry()  # cached while the file is unchanged
    for source, section in overlays:
        registry = apply_overrides(registry, section, source)
    return registry


def _split_key(key: Any, registry: Registry, where: str) -> tuple[str, str, str]:
    parts = str(key).split("/")
    if len(parts) != 3:
        raise RegistryError(f"{where}: key {key!r} must be method/variant/dataset (e.g. esa/bigru/coco)")
    mname, vname, ds = parts
    method = registry.method(mname)
    variant = method.variant(vname)
    if ds not in variant.checkpoints:
        raise unknown_name("checkpoint dataset", ds, variant.checkpoints, where=f"{where} ({mname}/{vname})")
    return mname, vname, ds


def apply_overrides(registry: Registry, section: Any, source: str) -> Registry:
    """`registry` with the checkpoint entries of a `checkpoints:` override section amended."""
    if not isinstance(section, Mapping):
        raise RegistryError(f"{source}: checkpoints: expected a mapping of method/variant/dataset -> amendments")
    methods = dict(registry.methods)
    for key, body in section.items():
        where = f"{source}: checkpoints.{key}"
        mname, vname, ds = _split_key(key, registry, f"{source}: checkpoints")
        if not isinstance(body, Mapping):
            raise RegistryError(f"{where}: expected a mapping with urls / archive / files")
        unknown = sorted(set(body) - {"urls", "archive", "files", "note"})
        if unknown:
            raise RegistryError(f"{where}: unknown field(s) {unknown}; valid: urls, archive, files, note")
        method = methods[mname]
        variant = method.variants[vname]
        base = variant.checkpoints[ds]
        files = body.get("files") or {}
        if not isinstance(files, Mapping):
            raise RegistryError(f"{where}.files: expected a mapping of file name -> {{size, sha256, member}}")
        for name in files:
            if name not in base.files:
                raise unknown_name("checkpoint file", str(name), base.files, where=where)
        raw = {"urls": list(body.get("urls") or base.urls), "archive": body.get("archive", base.archive),
               "note": body.get("note", base.note),
               "files": [{**_file_raw(e), **dict(files.get(e.name) or {})} for e in base.entries]}
        ck = parse_checkpoint(raw, where)
        variant = dataclasses.replace(variant, checkpoints={**variant.checkpoints, ds: ck})
        methods[mname] = dataclasses.replace(method, variants={**method.variants, vname: variant})
    return dataclasses.replace(registry, methods=methods)


def _file_raw(e: CheckpointFile) -> dict[str, Any]:
    return {"name": e.name, "member": e.member, "size": e.size, "sha256": e.sha256, "note": e.note}


def record(path: Path, items: Iterable[tuple[Target, int, str]]) -> int:
    """Write (target, size, sha256) into the `checkpoints:` section of the user file `path`; returns how many."""
    path = Path(path)
    doc: dict[str, Any] = {}
    if path.exists():
        doc = dict(_read_document(path))
    section = dict(doc.get("checkpoints") or {})
    n = 0
    for target, size, sha in items:
        body = dict(section.get(target.key) or {})
        files = dict(body.get("files") or {})
        files[target.entry.name] = {**dict(files.get(target.entry.name) or {}), "size": int(size), "sha256": sha}
        body["files"] = files
        section[target.key] = body
        n += 1
    doc["checkpoints"] = section
    write_text(path, RECORD_HEADER + yaml.safe_dump(doc, sort_keys=False))
    return n
