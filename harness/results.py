"""The result store: one directory per job, atomic writes, and the record of how a number was made.

A job directory holds `config.yaml` (the resolved job), `env.json` (versions, device, git revision,
seed), optional `sims.h5` / checkpoints / logs, and `metrics.json`, which is written last: a job is
finished exactly when its metrics.json exists. Every file is written to a temporary name in the same
folder and renamed into place, so an interrupted write never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PACKAGES = ("itrbench", "torch", "torchvision", "numpy", "transformers", "open_clip_torch", "eccv_caption",
            "sentence-transformers", "h5py", "scipy")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(_plain(obj), indent=2, sort_keys=False) + "\n")


def write_yaml(path: str | Path, obj: Any) -> None:
    write_text(path, yaml.safe_dump(_plain(obj), sort_keys=False))


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def save_torch(path: str | Path, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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


def git_revision(cwd: str | Path | None = None) -> dict[str, Any]:
    cwd = cwd or Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    if rev.returncode != 0:
        return {"revision": None, "dirty": None}
    return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def environment(seed: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Versions, hardware and code revision, for env.json."""
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
    return info


@dataclass
class JobResult:
    """A finished job as read back from disk."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    env: dict[str, Any]


class ResultStore:
    """`root/<job name>/` directories; finished when metrics.json exists."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def job_dir(self, name: str) -> Path:
        return self.root / name

    def is_finished(self, name: str) -> bool:
        return (self.job_dir(name) / "metrics.json").is_file()

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
        """Every finished job under root (sorted by path)."""
        if not self.root.exists():
            return []
        return [read_result(p.parent) for p in sorted(self.root.glob("**/metrics.json"))]


def read_result(d: Path) -> JobResult:
    def load(name: str, reader) -> dict:
        p = d / name
        if not p.is_file():
            return {}
        try:
            return reader(p.read_text()) or {}
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"{p}: unreadable result file ({exc})") from exc

    return JobResult(path=d, metrics=load("metrics.json", json.loads), config=load("config.yaml", yaml.safe_load),
                     env=load("env.json", json.loads))
