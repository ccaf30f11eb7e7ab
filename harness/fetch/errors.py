"""Errors of `fetch`: each an ItrbenchError (a ValueError) with one line naming the file or URL and the fix."""

from __future__ import annotations

from harness.core.errors import ItrbenchError


class FetchError(ItrbenchError):
    """A fetch that cannot go on (bad arguments, a failed target, an environment problem)."""


class SourceError(FetchError):
    """One source (mirror or official URL) did not deliver the file; the next source is tried."""


class NotFoundError(SourceError):
    """The source answered 404 / 410 (or the file is not in the Drive folder / archive)."""


class IntegrityError(SourceError):
    """Downloaded bytes that are not the registry's file (size or sha256 mismatch, refused by the loader)."""


class ArchiveError(SourceError):
    """An archive that is unreadable or unsafe to unpack (member outside the destination, link, device)."""


class DiskFullError(FetchError):
    """No space left for a download or an unpacked archive; the partial file is kept for resuming."""


class VerifyError(FetchError):
    """The loader check could not run (an environment problem, not a bad file); the download is kept."""


def first_line(exc: BaseException) -> str:
    """An exception as `Type: first line of its message` (for one-line error messages)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
