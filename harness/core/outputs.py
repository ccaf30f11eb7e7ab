"""The one guard every command passes its output paths through: nothing it writes replaces what it reads.

An output path is refused, before any work starts, when it is

- a folder, or its nearest existing parent is not a folder;
- one of the files the command reads (matrices, mappings, checkpoints, registry files), by resolved path;
- inside a data folder the command reads (`--data-root`): data is never written;
- inside a job folder of a results store (a folder holding a job's `config.yaml`): only the job that owns it writes
  there;
- an existing file, unless the command was told to overwrite it (`--overwrite`).

Every refusal is one `OutputError` line naming the flag, the path, what it collides with and what to do.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from harness.core.errors import ItrbenchError

JOB_MARKER = "config.yaml"  # a folder holding it is a job folder of a results store


class OutputError(ItrbenchError):
    """An output path that would destroy an input, the data or a stored result."""


def job_folder_of(path: Path) -> Path | None:
    """The job folder (a folder with a job's config.yaml beside its status or metrics) `path` lies in, if any."""
    for folder in [path.parent, *path.parent.parents]:
        marker = folder / JOB_MARKER
        if marker.is_file() and ((folder / "metrics.json").exists() or (folder / "status.json").exists()
                                 or (folder / "env.json").exists()):
            return folder
    return None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def guard_output(path: str | Path | None, flag: str, *, reads: Iterable[str | Path | None] = (),
                 data_folders: Iterable[str | Path | None] = (), overwrite: bool = False) -> Path | None:
    """`path` checked as an output of the command (see the module docstring); None passes through."""
    if path is None or str(path) == "":
        return None
    out = Path(path)
    if out.is_dir():
        raise OutputError(f"{flag} {path}: is a folder; give a file name")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {path}: {parent} is not a folder; choose a path in a folder")
    target = out.resolve()
    for inp in reads:
        if inp is not None and str(inp) and Path(inp).resolve() == target:
            raise OutputError(f"{flag} {path}: is a file this command reads ({inp}); writing it would destroy the "
                              f"input: choose another name")
    for folder in data_folders:
        if folder is not None and str(folder) and _inside(target, Path(folder).resolve()):
            raise OutputError(f"{flag} {path}: is inside the data folder {folder}; data is never written: choose a "
                              f"path outside it")
    job = job_folder_of(target)
    if job is not None:
        raise OutputError(f"{flag} {path}: is inside the job folder {job}, which only its job writes; choose a path "
                          f"outside the results store's job folders")
    if out.exists() and not overwrite:
        raise OutputError(f"{flag} {path}: exists; choose another name, or pass --overwrite to replace it")
    return out
