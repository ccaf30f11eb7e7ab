"""Shared pieces of the fetch tests: a local HTTP server, a fake Google Drive, official-format checkpoints.

No test reaches the internet: HTTP(S) goes to `LocalServer` (stdlib http.server on a thread, with Range
support and scripted faults), and `FakeDrive` replaces the two functions of `harness.fetch.drive`.
"""

from __future__ import annotations

import argparse
import io
import re
import threading
import zipfile
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from rich.console import Console

from harness.fetch import command, download, drive
from harness.fetch.command import add_fetch_parser, run_fetch
from harness.fetch.errors import NotFoundError, SourceError

SMALL = dict(embed_size=16, img_dim=24, word_dim=4)  # an ESA BiGRU checkpoint of ~150 KB


@cache
def esa_bytes(variant: str = "bigru", dataset: str = "f30k", seed: int = 0, img_dim: int = 24) -> bytes:
    """An official-format ESA checkpoint (the container train.py saves), as bytes."""
    from methods.esa import ESAAdapter

    torch.manual_seed(seed)
    container = ESAAdapter.build(variant, dataset, {**SMALL, "img_dim": img_dim}).official_checkpoint(epoch=1)
    buf = io.BytesIO()
    torch.save(container, buf)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


class LocalServer:
    """Serves `files` ({url path: bytes}); `cut[path] = n` sends n bytes of the next answer and drops the
    connection; `ignore_range` answers 200 with the whole file; `log` lists (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ignore_range = False
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = urlparse(self.path).path
                rng = self.headers.get("Range")
                server.log.append((path, rng))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not server.ignore_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                cut = server.cut.pop(path, None)
                self.wfile.write(body if cut is None else body[:cut])
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeDrive:
    """Google Drive stand-in: `files` {id: bytes}, `folders` {folder id: [(file id, path)]}; `calls` logs use."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.folders: dict[str, list[tuple[str, str]]] = {}
        self.calls: list[tuple[str, str]] = []

    def list_folder(self, url: str) -> list[drive.DriveEntry]:
        fid = drive.drive_id(url)
        self.calls.append(("list", fid))
        if fid not in self.folders:
            raise SourceError(f"{url}: cannot list the Google Drive folder (fake: unknown folder)")
        return [drive.DriveEntry(i, p) for i, p in self.folders[fid]]

    def download_file(self, file_id: str, output: Path, progress=None) -> Path:
        self.calls.append(("get", file_id))
        if file_id not in self.files:
            raise NotFoundError(f"https://drive.google.com/uc?id={file_id}: not found on Google Drive (fake)")
        output.write_bytes(self.files[file_id])
        return output


@pytest.fixture
def server():
    srv = LocalServer()
    yield srv
    srv.close()


@pytest.fixture
def fake_drive(monkeypatch):
    fake = FakeDrive()
    monkeypatch.setattr(drive, "list_folder", fake.list_folder)
    monkeypatch.setattr(drive, "download_file", fake.download_file)
    return fake


@pytest.fixture
def no_internet(monkeypatch):
    """HTTP(S) only to this machine: a request for any other host fails the test."""
    import requests

    real = requests.Session.request

    def local_only(self, method, url, *args, **kwargs):
        host = urlparse(url).hostname
        assert host in ("127.0.0.1", "localhost"), f"a test tried to reach {url}"
        return real(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", local_only)


@pytest.fixture
def out(monkeypatch):
    """The fetch console, captured; downloads in 32 KB chunks and without waits between retries."""
    console = Console(record=True, width=400, force_terminal=False, color_system=None)
    monkeypatch.setattr(command, "console", console)
    monkeypatch.setattr(download, "CHUNK", 32 * 1024)
    monkeypatch.setattr(download, "RETRY_WAIT", 0.0)
    return console


def fetch(*argv: str) -> int:
    """`fetch ARGV` through the fetch parser (as the CLI wires it)."""
    parser = argparse.ArgumentParser(prog="itrbench")
    add_fetch_parser(parser.add_subparsers(dest="command"))
    return run_fetch(parser.parse_args(["fetch", *argv]))


def text(console: Console) -> str:
    """Everything printed so far, as one line per message (wrapping undone)."""
    return console.export_text(clear=False)
