"""Protocols of one's own: a registry's `protocols:` section, `itrbench.protocols` entry points, and datasets
extended with them (`add_protocols:`).

```yaml
protocols:
  recall50: {object: "recall50:RECALL50"}   # module:object; the module is a .py file beside this registry
                                             # file (recall50.py), or an importable module (mypkg.protocols)
datasets:
  f30k: {add_protocols: [recall50]}          # extend a dataset another registry file defines
```

The object is a `harness.eval.protocols.Protocol` whose `name` is the key (a callable returning one is called).
An installed package may declare the same through the entry-point group `itrbench.protocols`
(`recall50 = "mypkg.protocols:RECALL50"`). Anything else (a missing module, a syntax error, another type, a
built-in's name, a name defined twice) is a one-line RegistryError naming the file and the fix. Registry
loading calls `protocol_table` (the whole table: built-ins, entry points, registry sections) and
`extend_datasets`; merging files keeps each `protocols:` entry with the file it came from (`ProtocolRef`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import ItrbenchError
from harness.eval.protocols import PROTOCOLS, Protocol, declaration_problem

ENTRY_POINT_GROUP = "itrbench.protocols"
PLUGINS_OFF = "ITRBENCH_DISABLE_PLUGINS"
REF_KEYS = ("object",)
EXTENSION_KEY = "add_protocols"


class ProtocolPluginError(ItrbenchError):
    """A protocol named by a registry file or an entry point cannot be used (raised as the RegistryError)."""


@dataclass(frozen=True)
class ProtocolRef:
    """One `protocols:` entry and the registry file it came from (relative modules are found beside it)."""

    name: str
    object: str  # "module:attribute"
    source: str  # the registry file (or plugin label) that names it


def section_refs(section: Any, source: str) -> dict[str, ProtocolRef]:
    """The entries of one document's `protocols:` section, checked strictly."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ProtocolPluginError(f"{source}: protocols: expected a mapping of name -> {{object: \"module:Object\"}}, "
                                  f"found {type(section).__name__}")
    out: dict[str, ProtocolRef] = {}
    for name, body in section.items():
        where = f"{source}: protocols.{name}"
        if isinstance(body, ProtocolRef):
            out[str(name)] = body
            continue
        if not isinstance(body, Mapping) or "object" not in body:
            raise ProtocolPluginError(f"{where}: expected {{object: \"module:Object\"}} (the Protocol object your "
                                      f"module defines), found {body!r}")
        unknown = sorted(str(k) for k in body if k not in REF_KEYS)
        if unknown:
            raise ProtocolPluginError(f"{where}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(REF_KEYS)}")
        obj = body["object"]
        if not isinstance(obj, str) or obj.count(":") != 1 or not all(obj.split(":")):
            raise ProtocolPluginError(f"{where}: object {obj!r} must read \"module:Object\" (e.g. "
                                      "\"recall50:RECALL50\" for RECALL50 in recall50.py beside the registry file)")
        out[str(name)] = ProtocolRef(str(name), obj, source)
    return out


def _module_file(module: str, source: str) -> Path | None:
    """The .py file a module name or path stands for beside the registry file `source`, if there is one."""
    base = Path(source).parent if Path(source).suffix in (".yaml", ".yml") else Path(".")
    if module.endswith(".py"):
        return (base / module).resolve()
    candidate = base / (module.replace(".", os.sep) + ".py")
    return candidate.resolve() if candidate.is_file() else None


def _import(module: str, where: str, source: str) -> Any:
    path = _module_file(module, source)
    try:
        if path is not None:
            if not path.is_file():
                raise ProtocolPluginError(f"{where}: module file {path} does not exist; put it beside the registry "
                                          "file or name an importable module")
            digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(f"itrbench_protocol_{path.stem}_{digest}", path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
        return importlib.import_module(module)
    except ProtocolPluginError:
        raise
    except SyntaxError as exc:
        raise ProtocolPluginError(f"{where}: {exc.filename}:{exc.lineno}: syntax error ({exc.msg}); fix the "
                                  "module") from None
    except ImportError as exc:
        raise ProtocolPluginError(f"{where}: cannot import module '{module}' ({exc}); put {module}.py beside the "
                                  "registry file, or install the module / put its folder on PYTHONPATH") from None
    except Exception as exc:  # the user's module code: name it, no traceback
        raise ProtocolPluginError(f"{where}: importing module '{module}' failed ({type(exc).__name__}: {exc}); "
                                  "fix the module") from None


def _checked(name: str, obj: Any, where: str) -> Protocol:
    if callable(obj) and not isinstance(obj, Protocol):
        try:
            obj = obj()
        except Exception as exc:
            raise ProtocolPluginError(f"{where}: calling it failed ({type(exc).__name__}: {exc})") from None
    problem = declaration_problem(obj)
    if problem is not None:
        raise ProtocolPluginError(f"{where}: the object {problem}; see docs/extending.md (Add a protocol)")
    if obj.name != name:
        raise ProtocolPluginError(f"{where}: the Protocol is named '{obj.name}'; name the entry '{obj.name}' or set "
                                  f"Protocol(name='{name}', ...)")
    return obj


def load_ref(ref: ProtocolRef) -> Protocol:
    """The Protocol object `ref` names (its module imported now: a registry file runs the code it names)."""
    where = f"{ref.source}: protocols.{ref.name} (object \"{ref.object}\")"
    module, _, attr = ref.object.partition(":")
    mod = _import(module, where, ref.source)
    if not hasattr(mod, attr):
        raise ProtocolPluginError(f"{where}: module '{module}' has no attribute '{attr}'; define it there or fix "
                                  "the object name")
    return _checked(ref.name, getattr(mod, attr), where)


def entry_point_protocols() -> dict[str, Protocol]:
    """Protocols installed packages declare in the entry-point group `itrbench.protocols`, by name."""
    from importlib.metadata import entry_points

    if os.environ.get(PLUGINS_OFF, "") not in ("", "0"):
        return {}
    out: dict[str, Protocol] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        dist = getattr(ep, "dist", None)
        where = f"entry point '{ep.name} = {ep.value}' of {dist.name if dist else 'an installed package'}"
        try:
            obj = ep.load()
        except Exception as exc:
            raise ProtocolPluginError(f"{where} (group {ENTRY_POINT_GROUP}) failed: {type(exc).__name__}: {exc}; fix "
                                      f"or uninstall that package, or set {PLUGINS_OFF}=1") from None
        _no_clash(ep.name, where, out)
        out[ep.name] = _checked(ep.name, obj, where)
    return out


def entry_point_key() -> tuple[str, ...]:
    """What identifies the installed protocol plugins (a cache key of loaded registries)."""
    from importlib.metadata import entry_points

    if os.environ.get(PLUGINS_OFF, "") not in ("", "0"):
        return ()
    return tuple(sorted(f"{ep.name}={ep.value}" for ep in entry_points(group=ENTRY_POINT_GROUP)))


def _no_clash(name: str, where: str, found: Mapping[str, Any]) -> None:
    if name in PROTOCOLS:
        raise ProtocolPluginError(f"{where}: '{name}' is a built-in protocol; give yours another name")
    if name in found:
        raise ProtocolPluginError(f"{where}: protocol '{name}' is defined twice; rename one of them")


def protocol_table(section: Any, source: str) -> dict[str, Protocol]:
    """The whole protocol table of a registry: built-ins, then entry points, then the `protocols:` section."""
    table: dict[str, Protocol] = dict(PROTOCOLS)
    table.update(entry_point_protocols())
    for name, ref in section_refs(section, source).items():
        _no_clash(name, f"{ref.source}: protocols.{name}", table)
        table[name] = load_ref(ref)
    return table


def merge_section(merged: dict[str, ProtocolRef], section: Any, source: str) -> None:
    """Add one document's `protocols:` entries to `merged` (merging registry files); a name twice is an error
    naming both files."""
    for name, ref in section_refs(section, source).items():
        if name in merged:
            raise ProtocolPluginError(f"protocols.{name} is defined in {merged[name].source} and again in {source}; "
                                      "rename one of them")
        merged[name] = ref


def is_extension(body: Any) -> bool:
    """Whether a `datasets:` entry only adds protocols to a dataset defined elsewhere (`{add_protocols: [...]}`)."""
    return isinstance(body, Mapping) and set(body) == {EXTENSION_KEY}


def extension_names(body: Mapping[str, Any], where: str) -> tuple[str, ...]:
    names = body[EXTENSION_KEY]
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ProtocolPluginError(f"{where}.{EXTENSION_KEY}: expected a list of protocol names, found {names!r}")
    return tuple(names)


def _plugged_files(table: Mapping[str, Protocol], names: Any) -> list[Path]:
    """The source files of the plugged-in protocols among `names` (built-ins are hashed with the harness)."""
    import inspect

    files = []
    for name in names:
        proto = table.get(name)
        if proto is None or PROTOCOLS.get(name) is proto:
            continue
        for fn in (proto.compute, proto.applies):
            try:
                src = inspect.getsourcefile(fn)
            except TypeError:  # a builtin or C callable: no source to hash
                src = None
            if src and not Path(src).resolve().is_relative_to(Path(__file__).resolve().parents[1]):
                files.append(Path(src))
    return files


def protocol_identity(table: Mapping[str, Protocol], names: Any) -> str:
    """The protocol code identity of an evaluation that runs `names`: the harness's protocol code and, for
    plugged-in protocols among them, the parsed code of the modules their computation lives in, so that an
    edited plug-in recomputes its values (from the stored matrix) and an edited comment does not."""
    from harness.core.code_identity import hash_files, protocol_code

    files = _plugged_files(table, names)
    return protocol_code() if not files else f"{protocol_code()}+{hash_files(files)}"
