"""The result store: one directory per job, atomic writes, and the record of how a number was made.

A job directory holds `config.yaml` (the resolved job), `env.json` (versions, device, git revision,
seed), optional `sims.h5` / checkpoints / logs, and `metrics.json`, which is written last: a job is
finished exactly when its metrics.json exists. Every file is written to a temporary name in the same
folder and renamed into place, so an interrupted write never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness.core.errors import CorruptFileWarning, StorageError
from harness.core.hardware import hardware
from harness.core.jobconfig import JobConfig
from harness.core.paths import PROJECT_DIR

PACKAGES = ("itrbench", "torch", "torchvision", "numpy", "transformers", "open_clip_torch", "eccv_caption",
            "sentence-transformers", "h5py", "scipy")


SPACE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large for the file system",
                errno.EDQUOT: "disk quota exceeded"}


def fresh_path(base: str | Path) -> Path:
    """`<base>-<timestamp>`, or `<base>-<timestamp>-<n>` when that is taken: a name nothing holds yet, so
    what is moved aside twice within one second never replaces what was moved aside before."""
    base = Path(base)
    stamp = f"{base.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base.with_name(stamp), 1
    while path.exists():
        path, n = base.with_name(f"{stamp}-{n}"), n + 1
    return path


def move_aside(path: str | Path, tag: str) -> Path:
    """Rename `path` to `<name>.<tag>-<timestamp>[-n]` (`fresh_path`); returns the new path."""
    path = Path(path)
    aside = fresh_path(path.with_name(f"{path.name}.{tag}"))
    os.replace(path, aside)
    return aside


def quarantine(path: str | Path, reason: str) -> Path:
    """Move an unreadable file aside (never delete it) as `<name>.corrupt-<timestamp>`, with a warning that
    names both; returns the new path. What the file held is recomputed by whoever needed it."""
    path = Path(path)
    aside = move_aside(path, "corrupt")
    warnings.warn(f"{path}: unreadable ({reason}); moved aside to {aside.name}, what it held will be recomputed",
                  CorruptFileWarning, stacklevel=2)
    return aside


def _temp_beside(path: Path) -> Path:
    """A new empty file beside `path`, created with mode 0o666 so it follows the umask (mkstemp: 0o600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")  # pragma: no cover


def storage_error(path: str | Path, exc: OSError, size: int | None = None) -> StorageError:
    """A one-line error for a write that ran out of space (or past a file-size limit) naming the file,
    the bytes it needed and the space left."""
    path = Path(path)
    try:
        free = f"{shutil.disk_usage(path.parent).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    need = f"{size:,} bytes needed" if size is not None else "size unknown"
    hint = ("raise the file-size limit (ulimit -f) or write elsewhere" if exc.errno == errno.EFBIG
            else f"free space in {path.parent} or write elsewhere")
    return StorageError(f"{path}: cannot write: {SPACE_ERRNOS.get(exc.errno, exc.strerror)} ({need}, {free}); "
                        f"{hint}")


@contextlib.contextmanager
def atomic_path(path: str | Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The file follows the user's umask. A full disk or a file-size limit is a one-line StorageError that
    names `path` and the bytes needed (`size`, when the caller knows it); no temporary file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _temp_beside(path)
    try:
        try:
            yield tmp_path
            os.replace(tmp_path, path)
        except OSError as exc:
            if exc.errno in SPACE_ERRNOS:
                raise storage_error(path, exc, size) from exc
            raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    data = text.encode("utf-8")
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(_plain(obj), indent=2, sort_keys=False) + "\n")


def write_yaml(path: str | Path, obj: Any) -> None:
    write_text(path, yaml.safe_dump(_plain(obj), sort_keys=False))


def save_npy(path: str | Path, array: np.ndarray) -> None:
    array = np.asanyarray(array)
    with atomic_path(path, array.nbytes + 128) as tmp:
        with open(tmp, "wb") as f:
            # through Python's write (numpy's own tofile reports a short write without its errno)
            np.save(_RecordingWriter(f), array)


class _RecordingWriter:
    """A file whose first OSError is kept: torch.save turns write errors into a bare RuntimeError."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.f.flush()


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensor storages in a (nested) container: about the size torch.save writes."""
    import torch

    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(x, Mapping):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return total


def save_torch(path: str | Path, obj: Any) -> None:
    import torch

    size = _tensor_bytes(obj)
    with atomic_path(path, size) as tmp:
        with open(tmp, "wb") as f:
            writer = _RecordingWriter(f)
            try:
                torch.save(obj, writer)
            except RuntimeError as exc:
                if writer.error is not None and writer.error.errno in SPACE_ERRNOS:
                    raise storage_error(path, writer.error, size) from exc
                raise


def _plain(obj: Any) -> Any:
    """JSON/YAML-safe copy (numpy scalars and arrays, tuples, Paths)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def git_revision(cwd: str | Path | None = None, outputs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """The checkout's revision and whether its code has uncommitted changes; changes inside `outputs` (the
    reports or results folders being written, when they lie in the checkout) are not changes to the code."""
    cwd = Path(cwd or PROJECT_DIR)
    excluded = []
    for out in outputs:
        try:
            excluded.append(f":(exclude){Path(out).resolve().relative_to(cwd.resolve()).as_posix()}")
        except ValueError:
            continue
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
                               cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    if rev.returncode != 0:
        return {"revision": None, "dirty": None}
    return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def environment(seed: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Versions, hardware (the `hardware` mapping, see harness.core.hardware) and code revision, for env.json."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "packages": versions, "git": git_revision(), "seed": seed, "device": device}
    try:
        import torch

        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    info["hardware"] = hardware(device)
    return info


@dataclass
class JobResult:
    """A finished job as read back from disk."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any]  # config.yaml as stored: the job config's fields, plus key, name and identity
    env: dict[str, Any]

    @property
    def job(self) -> JobConfig:
        """The job's typed config (read leniently: results of other versions stay readable)."""
        return JobConfig.stored(self.config)


class ResultStore:
    """`root/<job name>/` directories; finished when a readable metrics.json exists.

    An unreadable config.yaml, env.json or metrics.json (truncated, not valid JSON / YAML, not a mapping)
    is moved aside with a CorruptFileWarning (`quarantine`) and read as absent: a job whose metrics.json
    was unreadable is not finished and runs again; nothing else is touched."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def job_dir(self, name: str) -> Path:
        return self.root / name

    def is_finished(self, name: str) -> bool:
        return read_state(self.job_dir(name) / "metrics.json") is not None

    def start(self, name: str, config: Mapping[str, Any], env: Mapping[str, Any], force: bool = False) -> Path:
        """Prepare a job directory. A forced rerun first removes the old metrics.json (the done flag)."""
        d = self.job_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        if force and (d / "metrics.json").exists():
            (d / "metrics.json").unlink()
        write_yaml(d / "config.yaml", config)
        write_json(d / "env.json", env)
        return d

    def finish(self, name: str, metrics: Mapping[str, Any]) -> Path:
        d = self.job_dir(name)
        write_json(d / "metrics.json", metrics)
        return d

    def load(self, name: str) -> JobResult:
        d = self.job_dir(name)
        return read_result(d)

    def finished(self) -> list[JobResult]:
        """Every finished job under root (sorted by path); unreadable metrics.json files are moved aside."""
        if not self.root.exists():
            return []
        out = []
        for p in sorted(self.root.glob("**/metrics.json")):
            result = read_result(p.parent)
            if p.is_file():  # an unreadable one was moved aside: not finished
                out.append(result)
        return out


def _parse_state(path: Path, text: str) -> Any:
    if path.suffix == ".json":
        return json.loads(text)
    if not text.endswith("\n"):  # yaml.safe_dump always ends with a newline; a cut file parses as less
        raise ValueError("no final newline: the file was cut short")
    return yaml.safe_load(text)


def read_state(path: str | Path) -> dict[str, Any] | None:
    """A job's metrics.json / config.yaml / env.json as a dict; None when absent, or when unreadable (then
    moved aside by `quarantine`, so the next reader sees it absent and the job redoes what it held)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return None
    try:
        obj = _parse_state(path, data.decode("utf-8"))
        if not isinstance(obj, dict):
            raise ValueError(f"expected a mapping, found {type(obj).__name__}")
    except (ValueError, yaml.YAMLError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if len(reason) > 160:
            reason = reason[:157] + "..."
        quarantine(path, f"{type(exc).__name__}: {reason}")
        return None
    return obj


def read_result(d: Path) -> JobResult:
    return JobResult(path=d, metrics=read_state(d / "metrics.json") or {},
                     config=read_state(d / "config.yaml") or {}, env=read_state(d / "env.json") or {})
