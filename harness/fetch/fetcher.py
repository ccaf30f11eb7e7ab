"""Fetching one checkpoint file: check what is present, try each source, verify, install atomically.

Per checkpoint folder `<dest>/<method>/<variant>/<dataset>/`, everything in flight lives in `.fetch/`:
partial downloads (`<tag>-<name>.part`, resumed), complete downloads and unpacked candidates, and the
verification stamps. A file reaches its final name only by one `os.replace` after its size, sha256 and
(by default) the adapter's strict loader accepted it, so an interrupted fetch never leaves a file that
looks complete. Sources are tried in order: each `--mirror` (`BASE/<method>/<variant>/<dataset>/<file>`,
the file itself), then the registry's URLs (a file, a Google Drive file or folder, or an archive).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from rich.console import Console

from harness.fetch import archive, drive
from harness.fetch.download import ProgressFn, download
from harness.fetch.errors import (
    ArchiveError,
    FetchError,
    IntegrityError,
    SourceError,
    VerifyError,
)
from harness.fetch.targets import Target
from harness.fetch.ui import FileProgress, say
from harness.fetch.verify import (
    STAGING,
    Loader,
    check_integrity,
    check_loads,
    move_aside,
    read_stamp,
    write_stamp,
)
from harness.spec.registry import Registry


@dataclass(frozen=True)
class Settings:
    dest: Path
    mirrors: tuple[str, ...] = ()
    offline: bool = False
    verify: bool = True
    retries: int = 3
    timeout: float = 60.0


@dataclass(frozen=True)
class Source:
    url: str
    archive: str | None = None  # zip / tar: the URL serves an archive holding the file
    member: str | None = None  # the file's path inside the archive or Drive folder


@dataclass(frozen=True)
class Result:
    target: Target
    state: str  # present | installed | missing | failed
    message: str = ""
    size: int | None = None
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.state in ("present", "installed")

    @property
    def unrecorded(self) -> bool:
        """Verified here, but the registry holds no sha256 for it (candidate for --record)."""
        return self.ok and self.sha256 is not None and self.target.entry.sha256 is None


def sources_of(target: Target, mirrors: Sequence[str]) -> list[Source]:
    mirrored = [Source(f"{m.rstrip('/')}/{target.label}") for m in mirrors]
    ck = target.checkpoint
    return mirrored + [Source(u, ck.archive, target.entry.member) for u in ck.urls]


def _tag(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:10]


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def folder_lock(staging: Path) -> Iterator[None]:
    """One fetch at a time per checkpoint folder (released by the OS if the process dies)."""
    staging.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(staging / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FetchError(f"{staging.parent}: another fetch is working in this folder; wait for it to end "
                             "and rerun") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Fetcher:
    """Fetches and verifies targets; keeps Drive folder listings and archive downloads for one run."""

    def __init__(self, registry: Registry, settings: Settings, console: Console) -> None:
        self.registry, self.settings, self.console = registry, settings, console
        self._folders: dict[str, list[drive.DriveEntry]] = {}
        self._archives: set[Path] = set()

    def loader(self, target: Target) -> Loader:
        def load(path: Path) -> object:
            cls = self.registry.method(target.method).adapter_class()
            return cls.load_official(path, variant=target.variant, dataset=target.dataset)
        return load

    def close(self) -> None:
        """Delete the archives downloaded in this run (their members are unpacked or failed)."""
        for blob in self._archives:
            blob.unlink(missing_ok=True)
        self._archives.clear()

    # ---- one target ---------------------------------------------------------------------------------
    def fetch(self, target: Target) -> Result:
        final = target.path(self.settings.dest)
        if final.is_file():
            present = self.check_present(target, final)
            if present is not None:
                return present
        elif final.exists():
            return Result(target, "failed", f"{final}: exists but is not a file; move it away and rerun fetch")
        if self.settings.offline:
            return Result(target, "missing", f"{target.label}: not present in {final.parent} (--offline: nothing "
                                             "is downloaded)")
        staging = final.parent / STAGING
        failures: list[str] = []
        with folder_lock(staging):
            earlier = staging / target.entry.name
            if earlier.is_file():  # a complete download from an interrupted run
                try:
                    return self.install(target, earlier, final, "an earlier download")
                except IntegrityError as exc:
                    failures.append(str(exc))
                except VerifyError as exc:
                    return Result(target, "failed", str(exc))
            for source in sources_of(target, self.settings.mirrors):
                try:
                    candidate = self.obtain(target, source, staging)
                    return self.install(target, candidate, final, source.url)
                except VerifyError as exc:  # the environment, not the file: other sources would fail alike
                    return Result(target, "failed", str(exc))
                except SourceError as exc:
                    failures.append(str(exc))
        return Result(target, "failed", f"{target.label}: no source worked: " + " | ".join(failures))

    def check_present(self, target: Target, final: Path) -> Result | None:
        """Verify a file already in place: a Result, or None when it was moved aside (fetch it again)."""
        stamp = read_stamp(final)
        try:
            size, sha = check_integrity(final, target.entry, str(final))
            if self.settings.verify and not (stamp and stamp.get("sha256") == sha and stamp.get("loads")):
                check_loads(final, self.loader(target), str(final))
        except IntegrityError as exc:
            where = move_aside(final, final)
            message = f"{exc}; moved to {where}"
            say(self.console, message, "x", "red")
            return Result(target, "failed", message) if self.settings.offline else None
        except VerifyError as exc:
            return Result(target, "failed", str(exc))
        loads = self.settings.verify or bool(stamp and stamp.get("loads") and stamp.get("sha256") == sha)
        write_stamp(final, sha, loads, (stamp or {}).get("source", "present"))
        return Result(target, "present", "", size, sha)

    def obtain(self, target: Target, source: Source, staging: Path) -> Path:
        """Download (or reuse) what `source` serves and return the candidate file `staging/<name>`."""
        name = target.entry.name
        kind = drive.drive_kind(source.url)
        base = name if source.archive is None else (Path(urlparse(source.url).path).name or "archive")
        blob = staging / f"{_tag(source.url)}-{base}"
        with FileProgress(self.console, target.label) as bar:
            self._download(target, source, kind, blob, bar)
        candidate = staging / name
        if source.archive is None:
            os.replace(blob, candidate)
            return candidate
        self._archives.add(blob)
        try:
            found = [m.name for m in archive.members(blob, source.archive) if not m.is_dir]
            member = archive.pick_member(source.url, found, name, source.member)
            return archive.extract_member(blob, source.archive, member, candidate)
        except ArchiveError:
            blob.unlink(missing_ok=True)  # unreadable or unsafe: never kept
            raise

    def _download(self, target: Target, source: Source, kind: str | None, blob: Path, bar: ProgressFn) -> None:
        if blob.is_file():
            return
        if kind == "folder":
            if source.url not in self._folders:
                self._folders[source.url] = drive.list_folder(source.url)
            entries = self._folders[source.url]
            path = archive.pick_member(source.url, [e.path for e in entries], target.entry.name,
                                       None if source.archive else source.member)
            drive.download_file(next(e.id for e in entries if e.path == path), blob, bar)
        elif kind == "file":
            drive.download_file(drive.drive_id(source.url), blob, bar)
        else:
            size = target.entry.size if source.archive is None else None
            download(source.url, blob, expected_size=size, progress=bar, retries=self.settings.retries,
                     timeout=self.settings.timeout)

    def install(self, target: Target, candidate: Path, final: Path, source: str) -> Result:
        """Check `candidate` and rename it onto `final`, or move it aside (IntegrityError)."""
        try:
            size, sha = check_integrity(candidate, target.entry, f"{target.label} from {source}")
            if self.settings.verify:
                check_loads(candidate, self.loader(target), f"{target.label} from {source}")
        except IntegrityError as exc:
            where = move_aside(candidate, final)
            raise IntegrityError(f"{exc}; moved to {where}") from None
        _fsync(candidate)
        os.replace(candidate, final)
        _fsync(final.parent)
        write_stamp(final, sha, self.settings.verify, source)
        self._clean(final.parent / STAGING, target.entry.name)
        return Result(target, "installed", f"from {source}", size, sha)

    def _clean(self, staging: Path, name: str) -> None:
        """Remove leftover partial downloads of `name` (other sources' attempts)."""
        for p in staging.iterdir():
            tag, dash, rest = p.name[:10], p.name[10:11], p.name[11:]
            tagged = dash == "-" and all(c in "0123456789abcdef" for c in tag) and rest.startswith(name)
            if tagged and p.is_file() and p not in self._archives:
                p.unlink(missing_ok=True)
