"""Safe unpacking of zip and tar archives.

Every member is checked before anything is written: an absolute path, a `..` component, a link, a device
or FIFO anywhere in the archive refuses the whole archive, naming the member. Members are streamed out by
hand (never `extractall`), each to a temporary name renamed into place, and every target is checked to
resolve inside the destination.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from harness.fetch.download import CHUNK, check_space, write_chunk
from harness.fetch.errors import ArchiveError, NotFoundError


@dataclass(frozen=True)
class Member:
    name: str  # normalised relative posix path
    size: int
    is_dir: bool


def _safe_name(archive: Path, raw: str) -> str:
    name = raw.replace("\\", "/")
    pure = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or pure.is_absolute():
        raise ArchiveError(f"{archive}: member {raw!r} has an absolute path; refusing to unpack this archive")
    if ".." in pure.parts:
        raise ArchiveError(f"{archive}: member {raw!r} points outside the destination ('..'); refusing to unpack "
                           "this archive")
    parts = [p for p in pure.parts if p not in ("", ".")]
    return "/".join(parts)


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> list[Member]:
    out = []
    for info in zf.infolist():
        name = _safe_name(archive, info.filename)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            what = "a symbolic link" if kind == stat.S_IFLNK else "not a regular file"
            raise ArchiveError(f"{archive}: member {info.filename!r} is {what}; refusing to unpack this archive")
        if name:
            out.append(Member(name, info.file_size, info.is_dir()))
    return out


def _tar_members(archive: Path, tf: tarfile.TarFile) -> list[Member]:
    out = []
    for info in tf.getmembers():
        name = _safe_name(archive, info.name)
        if info.issym() or info.islnk():
            raise ArchiveError(f"{archive}: member {info.name!r} is a link (to {info.linkname!r}); refusing to "
                               "unpack this archive")
        if not (info.isfile() or info.isdir()):
            raise ArchiveError(f"{archive}: member {info.name!r} is a device or FIFO; refusing to unpack this archive")
        if name:
            out.append(Member(name, info.size, info.isdir()))
    return out


@contextmanager
def _open(archive: Path, kind: str) -> Iterator[tuple[list[Member], Callable[[str], IO[bytes]]]]:
    """(checked members, opener of a member by name) of a zip or tar archive."""
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                members = _zip_members(archive, zf)
                by_name = {_safe_name(archive, i.filename): i for i in zf.infolist()}
                yield members, lambda name: zf.open(by_name[name])
        elif kind == "tar":
            with tarfile.open(archive, "r:*") as tf:
                members = _tar_members(archive, tf)
                by_tar = {_safe_name(archive, i.name): i for i in tf.getmembers()}

                def opener(name: str) -> IO[bytes]:
                    f = tf.extractfile(by_tar[name])
                    if f is None:
                        raise ArchiveError(f"{archive}: member {name!r} has no data")
                    return f

                yield members, opener
        else:
            raise ArchiveError(f"{archive}: unknown archive kind {kind!r}; valid: zip, tar")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"{archive}: not a readable {kind} archive ({exc}); the download may be truncated or "
                           "another file: it is moved aside, rerun fetch") from None


def members(archive: Path, kind: str) -> list[Member]:
    """All members, after the safety check of every one."""
    with _open(archive, kind) as (found, _):
        return found


def pick_member(archive: str, found: list[str], name: str, member: str | None) -> str:
    """The member that is file `name`: the registry's `member` path, else the one file called `name`."""
    if member is not None:
        member = member.strip("/")
        if member not in found:
            raise NotFoundError(f"{archive}: has no member {member!r} (the registry's path for {name})")
        return member
    hits = [m for m in found if m.rsplit("/", 1)[-1] == name]
    if len(hits) == 1:
        return hits[0]
    listing = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "")
    why = f"{len(hits)} files named {name}: {', '.join(hits[:8])}" if hits else f"no file named {name} ({listing})"
    raise NotFoundError(f"{archive}: {why}; set `member:` for {name} in a --registry override (docs/fetch.md)")


def _stream(src: IO[bytes], target: Path) -> None:
    tmp = target.with_name(f".{target.name}.unpack")
    try:
        with open(tmp, "wb") as out:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                write_chunk(out, chunk)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _inside(dest: Path, name: str) -> Path:
    target = (dest / name).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise ArchiveError(f"{dest}: member {name!r} would land outside the destination; refusing it")
    return target


def extract_member(archive: Path, kind: str, name: str, out: Path) -> Path:
    """Write member `name` of the archive to the file `out` (checked archive, atomic rename)."""
    with _open(archive, kind) as (found, opener):
        sizes = {m.name: m.size for m in found if not m.is_dir}
        if name not in sizes:
            raise NotFoundError(f"{archive}: has no file member {name!r}")
        check_space(out.parent, sizes[name], out)
        with opener(name) as src:
            _stream(src, out)
    return out


def extract_all(archive: Path, kind: str, dest: Path, select: Callable[[str], bool] | None = None) -> list[Path]:
    """Unpack the (selected) members under `dest`; returns the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with _open(archive, kind) as (found, opener):
        chosen = [m for m in found if select is None or select(m.name)]
        check_space(dest, sum(m.size for m in chosen if not m.is_dir), dest)
        for m in chosen:
            target = _inside(dest, m.name)
            if m.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with opener(m.name) as src:
                _stream(src, target)
            written.append(target)
    return written


def remove_tree(path: Path) -> None:
    """Remove a staging folder (no error if it is gone)."""
    shutil.rmtree(path, ignore_errors=True)
