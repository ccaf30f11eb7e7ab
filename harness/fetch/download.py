"""Resumable downloads: streaming HTTP(S) with Range requests, and local copies (file:// or a path).

A download writes `<blob>.part` and renames it to `<blob>` only when the whole body arrived, so a blob
that exists is complete as far as the transfer can tell (the caller still checks size and sha256). A cut
connection is resumed with `Range: bytes=<have>-` (a server that ignores Range restarts the file); a
partial file survives Ctrl-C and errors, and the next `fetch` resumes it.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import requests

from harness.fetch.errors import DiskFullError, IntegrityError, NotFoundError, SourceError, first_line

CHUNK = 1 << 20
RETRY_WAIT = 1.0  # seconds x attempt number between resumed attempts
ProgressFn = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None)


def free_bytes(folder: Path) -> int:
    """Free space of the file system holding `folder`."""
    return shutil.disk_usage(folder).free


def write_chunk(f: BinaryIO, chunk: bytes) -> None:
    """One write of a download (a seam for tests that simulate a full disk)."""
    f.write(chunk)


def check_space(folder: Path, needed: int, what: Path) -> None:
    """Refuse to start a transfer of `needed` bytes into `folder` when they do not fit."""
    free = free_bytes(folder)
    if needed > free:
        raise DiskFullError(f"{what}: needs {needed} more bytes, {folder} has {free} free; free some space "
                            "or pass another --dest, then rerun fetch")


def part_of(blob: Path) -> Path:
    return blob.with_name(blob.name + ".part")


def download(url: str, blob: Path, *, expected_size: int | None = None, progress: ProgressFn | None = None,
             retries: int = 3, timeout: float = 60.0, session: requests.Session | None = None) -> Path:
    """Bring `blob` to the complete body of `url` (HTTP(S), file:// or a local path); returns `blob`.

    Raises NotFoundError (404 / missing file), IntegrityError (the server's size is not `expected_size`),
    DiskFullError, or SourceError (other failures, after `retries` resumed attempts)."""
    if blob.is_file():
        return blob  # complete from an earlier run; the caller verifies it
    blob.parent.mkdir(parents=True, exist_ok=True)
    part = part_of(blob)
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        _http(url, part, expected_size, progress, retries, timeout, session or requests.Session())
    else:
        _copy_local(url, part, expected_size, progress)
    os.replace(part, blob)
    return blob


def local_path(url: str) -> Path:
    """The file a file:// URL or a plain path names."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(url2pathname(unquote(parsed.path)))
    return Path(url)


def _copy_local(url: str, part: Path, expected_size: int | None, progress: ProgressFn | None) -> None:
    src = local_path(url)
    if not src.is_file():
        raise NotFoundError(f"{url}: no such file")
    total = src.stat().st_size
    _check_total(url, total, expected_size)
    have = part.stat().st_size if part.exists() else 0
    if have > total:
        have = 0
    check_space(part.parent, total - have, part)
    with open(src, "rb") as fin, open(part, "ab" if have else "wb") as fout:
        fin.seek(have)
        done = have
        for chunk in iter(lambda: fin.read(CHUNK), b""):
            _write(fout, chunk, part, done, total)
            done += len(chunk)
            if progress:
                progress(done, total)
        _sync(fout)


def _check_total(url: str, total: int | None, expected: int | None) -> None:
    if total is not None and expected is not None and total != expected:
        raise IntegrityError(f"{url}: serves {total} bytes, the registry expects {expected}: another file or "
                             "version; fix the mirror or the registry entry")


def _write(f: BinaryIO, chunk: bytes, part: Path, done: int, total: int | None) -> None:
    try:
        write_chunk(f, chunk)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            of = f" of {total}" if total is not None else ""
            raise DiskFullError(f"{part}: disk full after {done}{of} bytes; free space in {part.parent} and rerun "
                                "fetch (the partial file is kept and resumed)") from None
        raise


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _content_range(value: str) -> tuple[int, int | None] | None:
    """(first byte, total or None) of a `Content-Range: bytes a-b/T` header."""
    try:
        unit, _, spec = value.strip().partition(" ")
        span, _, total = spec.partition("/")
        start = int(span.partition("-")[0])
        return (start, None if total.strip() == "*" else int(total)) if unit == "bytes" else None
    except ValueError:
        return None


def _http(url: str, part: Path, expected_size: int | None, progress: ProgressFn | None, retries: int,
          timeout: float, session: requests.Session) -> None:
    attempt = 0

    def again(why: str) -> None:
        nonlocal attempt
        attempt += 1
        if attempt > retries:
            have = part.stat().st_size if part.exists() else 0
            raise SourceError(f"{url}: {why} (gave up after {attempt} attempts; {have} bytes kept in {part}, "
                              "resumed by the next fetch)")
        time.sleep(RETRY_WAIT * attempt)

    while True:
        have = part.stat().st_size if part.exists() else 0
        if expected_size is not None and have > expected_size:
            part.unlink()
            have = 0
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with session.get(url, headers=headers, stream=True, timeout=timeout) as r:
                if r.status_code in (404, 410):
                    raise NotFoundError(f"{url}: HTTP {r.status_code} {r.reason}")
                if r.status_code == 416:  # nothing after `have`: complete if the size says so, else start over
                    if have and expected_size == have:
                        return
                    part.unlink(missing_ok=True)
                    again("HTTP 416 for the resumed range")
                    continue
                if r.status_code >= 500 or r.status_code == 429:
                    again(f"HTTP {r.status_code} {r.reason}")
                    continue
                if r.status_code not in (200, 206):
                    raise SourceError(f"{url}: HTTP {r.status_code} {r.reason}")
                start, total = 0, None
                if r.status_code == 206:
                    span = _content_range(r.headers.get("Content-Range", ""))
                    if span is None or span[0] != have:  # not the range asked for: start over
                        part.unlink(missing_ok=True)
                        again("unusable Content-Range in a resumed answer")
                        continue
                    start, total = span
                elif r.headers.get("Content-Length", "").isdigit():
                    total = int(r.headers["Content-Length"])
                _check_total(url, total, expected_size)
                if total is not None:
                    check_space(part.parent, total - start, part)
                done = start
                with open(part, "ab" if start else "wb") as f:
                    for chunk in r.iter_content(CHUNK):
                        _write(f, chunk, part, done, total)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
                    _sync(f)
        except requests.RequestException as exc:
            again(first_line(exc))
            continue
        size = part.stat().st_size
        if total is None or size == total:
            return
        if size > total:
            part.unlink()
        again(f"connection ended after {size} of {total} bytes")
