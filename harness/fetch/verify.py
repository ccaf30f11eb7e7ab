"""Checks of a downloaded checkpoint: size, sha256, and a strict safe load by its adapter.

A file that fails is moved aside to `<name>.rejected` beside where it would go (never left under a name
that looks complete). A file that passes gets a stamp, `.fetch/<name>.verified.json` (size, mtime,
sha256, whether the loader accepted it), so `fetch --list` can say "verified" without loading it again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.fetch.errors import IntegrityError, VerifyError, first_line
from harness.spec.registry import CheckpointFile

STAGING = ".fetch"  # per-folder staging: partial downloads, unpacked candidates, stamps
Loader = Callable[[Path], Any]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_integrity(path: Path, entry: CheckpointFile, label: str) -> tuple[int, str]:
    """(size, sha256) of `path`; IntegrityError when either differs from what the registry records."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise IntegrityError(f"{label}: size mismatch: expected {entry.size} bytes, got {size} (truncated or "
                             "another file)")
    sha = sha256_file(path)
    if entry.sha256 is not None and sha != entry.sha256:
        raise IntegrityError(f"{label}: sha256 mismatch: expected {entry.sha256}, got {sha}")
    return size, sha


def check_loads(path: Path, loader: Loader, label: str) -> None:
    """Run the adapter's strict safe loader on `path`: IntegrityError if it refuses the file,
    VerifyError if the check itself cannot run (an environment problem)."""
    from harness.core.checkpoints import CheckpointError  # torch: imported only when a loader runs

    try:
        loader(path)
    except CheckpointError as exc:
        raise IntegrityError(f"{label}: refused by the loader: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        raise VerifyError(f"{label}: cannot check that it loads ({first_line(exc)}); fix that and rerun fetch "
                          f"(the download is kept in {path}), or pass --no-verify") from None


def rejected_path(final: Path) -> Path:
    return final.with_name(final.name + ".rejected")


def move_aside(path: Path, final: Path) -> Path:
    """Move a failed download to `<final>.rejected` (replacing an older one); returns where it went."""
    target = rejected_path(final)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def stamp_path(final: Path) -> Path:
    return final.parent / STAGING / f"{final.name}.verified.json"


def write_stamp(final: Path, sha256: str, loads: bool, source: str) -> None:
    st = final.stat()
    path = stamp_path(final)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256, "loads": loads,
                               "source": source}) + "\n")
    os.replace(tmp, path)


def read_stamp(final: Path) -> dict[str, Any] | None:
    """The stamp of `final` if it still describes the file on disk (same size and mtime), else None."""
    try:
        stamp = json.loads(stamp_path(final).read_text())
        st = final.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("size") != st.st_size or stamp.get("mtime_ns") != st.st_mtime_ns:
        return None
    return stamp
