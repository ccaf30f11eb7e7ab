"""How a stored number was made, in a few words from its env.json: hardware and code revision.

`hardware_text` renders whatever env.json holds: a `hardware` mapping (CPU, ISA, threads, GPU, ... as later
versions record it) summarised key by key, else the device and GPU names older versions stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_scalar(v)}" for k, v in value.items() if v not in (None, "", [], {}))
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ", ".join(_scalar(v) for v in value if v not in (None, ""))
    return str(value)


def hardware_text(env: Mapping[str, Any] | None) -> str:
    """'cpu: AMD EPYC 7763; isa: avx2; threads: 8' from env["hardware"], else 'cuda:0 (NVIDIA H100)' / 'cpu';
    '' when nothing is recorded."""
    env = env or {}
    hw = env.get("hardware")
    if isinstance(hw, Mapping) and hw:
        return "; ".join(f"{k}: {text}" for k, v in hw.items() if (text := _scalar(v)))
    if hw not in (None, "", {}):
        return _scalar(hw)
    device = str(env.get("device") or "")
    gpus = _scalar(env.get("gpus") or [])
    return f"{device} ({gpus})" if device and gpus else device or gpus


def revision_text(env: Mapping[str, Any] | None) -> str:
    """The code revision a result was made at (12 hex digits, '+dirty' for uncommitted changes); '' unknown."""
    git = (env or {}).get("git") or {}
    rev = str(git.get("revision") or "")[:12]
    return rev + ("+dirty" if rev and git.get("dirty") else "")
