"""The thin Google Drive layer: file and folder links through gdown (it handles the confirmation page).

Everything that talks to Drive is in `list_folder` and `download_file`, so tests replace these two
functions and never reach the network. gdown keeps its own `.part` file beside the output and resumes it.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from harness.fetch.download import ProgressFn
from harness.fetch.errors import NotFoundError, SourceError, first_line

DRIVE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")


@dataclass(frozen=True)
class DriveEntry:
    """One file of a Drive folder: its id and its path inside the folder ('sub/dir/name')."""

    id: str
    path: str


def drive_kind(url: str) -> str | None:
    """'file' or 'folder' for a Google Drive link, None for any other URL."""
    parsed = urlparse(url)
    if parsed.hostname not in DRIVE_HOSTS:
        return None
    return "folder" if "/folders/" in parsed.path else "file"


def drive_id(url: str) -> str:
    """The id in a Drive link (/file/d/<id>/, /drive/folders/<id>, ?id=<id>)."""
    parsed = urlparse(url)
    m = re.search(r"/(?:file/d|folders)/([\w-]+)", parsed.path)
    if m:
        return m.group(1)
    ids = parse_qs(parsed.query).get("id")
    if ids:
        return ids[0]
    raise SourceError(f"{url}: no Google Drive file or folder id in this link; fix the registry entry")


def list_folder(url: str) -> list[DriveEntry]:
    """Every file of a Drive folder (recursively), without downloading any."""
    import gdown

    try:
        found = gdown.download_folder(id=drive_id(url), skip_download=True, quiet=True)
    except Exception as exc:  # gdown raises its own errors, requests' and ValueError for odd pages
        raise SourceError(f"{url}: cannot list the Google Drive folder ({first_line(exc)}); the folder may be "
                          "private, moved, or over its quota: try later or pass --mirror") from None
    return [DriveEntry(id=f.id, path=str(f.path).replace("\\", "/")) for f in found or []]


def download_file(file_id: str, output: Path, progress: ProgressFn | None = None) -> Path:
    """Download Drive file `file_id` to `output` (resuming gdown's partial file); returns `output`."""
    import gdown

    kwargs = {"id": file_id, "output": str(output), "quiet": True, "resume": True}
    params = inspect.signature(gdown.download).parameters  # `progress` is a newer gdown's callback
    if progress is not None and ("progress" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())):
        kwargs["progress"] = progress
    url = f"https://drive.google.com/uc?id={file_id}"
    try:
        gdown.download(**kwargs)
    except Exception as exc:
        text = first_line(exc)
        if "404" in text or "not found" in text.lower():
            raise NotFoundError(f"{url}: not found on Google Drive ({text})") from None
        raise SourceError(f"{url}: Google Drive download failed ({text}); if Drive says too many downloads, "
                          "retry later or pass --mirror (the partial file is kept and resumed)") from None
    if not output.is_file():
        raise SourceError(f"{url}: gdown finished without writing {output}")
    return output
