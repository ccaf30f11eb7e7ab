"""Resolving a registry's `adapter: "package.module:ClassName"` to an Adapter subclass, with one-line errors.

A registry file runs the code it names: importing the module may fail in any way (a syntax error, a missing
dependency, an exception at import time), and the name may not be an adapter class. Each case is a
`RegistryError` naming the method, the adapter string, what went wrong (with file:line where there is one)
and the fix, never a traceback.
"""

from __future__ import annotations

import importlib
import inspect
import re
import traceback
from types import ModuleType, TracebackType

from harness.api.adapter import Adapter
from harness.spec.registry import RegistryError

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_NAME = re.compile(r"[A-Za-z_]\w*")
FORM = '"package.module:ClassName"'


def load_adapter_class(method: str, adapter: str) -> type[Adapter]:
    """The Adapter subclass `adapter` names for registry method `method` (the module is imported now)."""
    where = f"method '{method}': adapter \"{adapter}\""
    module_name, colon, cls_name = adapter.partition(":")
    if not colon or not _DOTTED.fullmatch(module_name) or not _NAME.fullmatch(cls_name):
        raise RegistryError(f"{where} is not of the form {FORM}; write the module's dotted import path, a colon "
                            "and the adapter class's name (e.g. \"methods.esa.adapter:ESAAdapter\")")
    module = _import(where, module_name)
    if not hasattr(module, cls_name):
        near = sorted(n for n, v in vars(module).items() if _is_adapter_class(v) and v.__module__ == module_name)
        hint = f" (adapter classes defined there: {', '.join(near)})" if near else ""
        raise RegistryError(f"{where}: module '{module_name}' ({_file_of(module)}) has no attribute "
                            f"'{cls_name}'{hint}; name a class the module defines")
    cls = getattr(module, cls_name)
    if not inspect.isclass(cls):
        raise RegistryError(f"{where}: '{cls_name}' is not a class but a value of type {type(cls).__name__}; name "
                            "the adapter class (a subclass of harness.api.Adapter)")
    if not issubclass(cls, Adapter):
        raise RegistryError(f"{where}: class '{cls_name}' is not a subclass of harness.api.Adapter; derive it from "
                            "Adapter (see docs/extending.md, \"Add your own method\")")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise RegistryError(f"{where}: class '{cls_name}' leaves abstract methods unimplemented ({missing}); "
                            "define them (see docs/extending.md, \"Add your own method\")")
    return cls


def _is_adapter_class(value: object) -> bool:
    return inspect.isclass(value) and issubclass(value, Adapter) and value is not Adapter


def _file_of(module: ModuleType) -> str:
    return str(getattr(module, "__file__", None) or module.__name__)


def _import(where: str, module_name: str) -> ModuleType:
    """Import `module_name`; any failure becomes one line saying what went wrong, where, and the fix."""
    try:
        return importlib.import_module(module_name)
    except SyntaxError as exc:  # a syntax error's own position is the useful one, not the import's frame
        raise RegistryError(f"{where}: SyntaxError at {exc.filename}:{exc.lineno}: {exc.msg}; fix the adapter "
                            "module") from None
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise RegistryError(f"{where}: cannot import adapter module '{module_name}' (no module named "
                                f"'{exc.name}'); install it or put its folder on PYTHONPATH") from None
        raise RegistryError(f"{where}: importing '{module_name}' failed at {_raised_at(exc.__traceback__)}: "
                            f"no module named '{exc.name}'; install it (pip install ...) or fix the import") from None
    except (Exception, SystemExit) as exc:  # the module's own code raised while it was imported
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise RegistryError(f"{where}: importing '{module_name}' raised {type(exc).__name__} at "
                            f"{_raised_at(exc.__traceback__)}" + (f": {first}" if first else "")
                            + "; fix the adapter module so that it imports") from None


def _raised_at(tb: TracebackType | None) -> str:
    """file:line of the innermost frame outside importlib's machinery (where the module's code raised)."""
    frames = [f for f in traceback.extract_tb(tb) if not f.filename.startswith("<frozen")]
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename}:{last.lineno}"
