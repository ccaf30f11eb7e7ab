"""The registry's error and its unknown-name message (the valid names and the nearest one)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from harness.core.errors import ItrbenchError


class RegistryError(ItrbenchError):
    """registry.yaml is malformed, or a name asked for is not in it."""


def nearest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name closest to `name` (difflib), or None when none is close."""
    near = difflib.get_close_matches(str(name), sorted(str(v) for v in valid), n=1, cutoff=0.5)
    return near[0] if near else None


def unknown_name(kind: str, name: str, valid: Iterable[str], where: str = "") -> RegistryError:
    """An error for an unknown `name` of `kind` listing the valid names and the nearest match; `where` (a file
    and line, a path in the registry) leads the message."""
    valid = sorted(valid)
    near = nearest(name, valid)
    hint = f" Did you mean '{near}'?" if near else ""
    loc = f"{where}: " if where else ""
    return RegistryError(f"{loc}unknown {kind} '{name}'; valid: {', '.join(valid)}.{hint}")
