"""The thin Google Drive layer: link parsing, and how it calls gdown (replaced here; no network)."""

from __future__ import annotations

import gdown
import pytest
from gdown.download import GoogleDriveFileToDownload

from harness.fetch import drive
from harness.fetch.errors import NotFoundError, SourceError
from harness.spec.registry import load_registry


def test_every_registry_drive_link_has_an_id():
    registry = load_registry()
    for m in registry.methods.values():
        for v in m.variants.values():
            for ck in v.checkpoints.values():
                for url in ck.urls:
                    kind = drive.drive_kind(url)
                    assert kind in ("file", "folder") and len(drive.drive_id(url)) > 20, url
    assert drive.drive_kind("https://example.org/drive/folders/x") is None
    assert drive.drive_id("https://drive.google.com/uc?id=abc_-1&export=download") == "abc_-1"
    with pytest.raises(SourceError, match="no Google Drive file or folder id"):
        drive.drive_id("https://drive.google.com/drive/my-drive")


def test_download_file_calls_gdown_with_resume_and_progress(tmp_path, monkeypatch):
    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        kwargs["progress"](3, 3)
        (tmp_path / "out.bin").write_bytes(b"abc")
        return kwargs["output"]

    monkeypatch.setattr(gdown, "download", fake)
    progress = []
    assert drive.download_file("FILEID", tmp_path / "out.bin", lambda d, t: progress.append((d, t))).is_file()
    assert seen["id"] == "FILEID" and seen["resume"] is True and seen["quiet"] is True
    assert seen["output"] == str(tmp_path / "out.bin") and progress == [(3, 3)]


def test_gdown_failures_become_one_line_source_errors(tmp_path, monkeypatch):
    def quota(**kwargs):
        raise gdown.exceptions.FileURLRetrievalError("Too many users have viewed or downloaded this file recently.\n"
                                                     "Please try accessing the file again later.")

    monkeypatch.setattr(gdown, "download", quota)
    with pytest.raises(SourceError) as info:
        drive.download_file("FILEID", tmp_path / "x")
    message = str(info.value)
    assert "\n" not in message and "uc?id=FILEID" in message and "Too many users" in message
    assert "--mirror" in message

    def missing(**kwargs):
        raise gdown.exceptions.DownloadError("404 Client Error: Not Found for url")

    monkeypatch.setattr(gdown, "download", missing)
    with pytest.raises(NotFoundError):
        drive.download_file("FILEID", tmp_path / "x")


def test_list_folder_uses_gdown_without_downloading(monkeypatch):
    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return [GoogleDriveFileToDownload(id="a", path="model_best.pth", local_path="/x/model_best.pth"),
                GoogleDriveFileToDownload(id="b", path="runs\\coco\\best.pth", local_path="/x/b")]

    monkeypatch.setattr(gdown, "download_folder", fake)
    entries = drive.list_folder("https://drive.google.com/drive/folders/FOLDERID?usp=drive_link")
    assert seen["id"] == "FOLDERID" and seen["skip_download"] is True
    assert entries == [drive.DriveEntry("a", "model_best.pth"), drive.DriveEntry("b", "runs/coco/best.pth")]

    monkeypatch.setattr(gdown, "download_folder", lambda **kw: (_ for _ in ()).throw(RuntimeError("private\nx")))
    with pytest.raises(SourceError, match="cannot list the Google Drive folder \\(RuntimeError: private\\)"):
        drive.list_folder("https://drive.google.com/drive/folders/FOLDERID")
