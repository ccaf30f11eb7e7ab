"""`fetch` of official checkpoints against a local HTTP server and a fake Google Drive (no internet).

Targets are ESA's BiGRU Flickr30K files from the project registry (a Drive folder holding model_best.pth and
model_best_2.pth); the files are real official-format ESA containers, so the loader check is the real one.
"""

from __future__ import annotations

import errno
import hashlib
import tarfile

import pytest
import torch
import yaml
from test_fetch_fixtures import (  # noqa: F401 - fixtures
    esa_bytes,
    fake_drive,
    fetch,
    no_internet,
    out,
    server,
    text,
    zip_bytes,
)

from harness.fetch import download
from harness.fetch.errors import DiskFullError, FetchError
from harness.spec.registry import RegistryError

FOLDER = "1u6McZdcu1dTXn9uS9IYH6MsrqNCdJnYo"  # registry: esa/bigru/f30k
ARGS = ("--methods", "esa", "--variants", "bigru", "--dataset", "f30k")
NAMES = ("model_best.pth", "model_best_2.pth")


@pytest.fixture(autouse=True)
def offline_world(fake_drive, no_internet):  # noqa: F811
    """Every test runs with the fake Drive and HTTP limited to the local server: nothing reaches the network."""
    return fake_drive


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def official() -> dict[str, bytes]:
    return {NAMES[0]: esa_bytes(seed=0), NAMES[1]: esa_bytes(seed=1)}


def serve(srv, base: str = "", files: dict[str, bytes] | None = None) -> str:
    """Put the two files on the server at <base>/esa/bigru/f30k/<name>; returns the mirror URL."""
    for name, data in (files or official()).items():
        srv.files[f"{base}/esa/bigru/f30k/{name}"] = data
    return srv.url + base


def folder(dest):
    return dest / "esa" / "bigru" / "f30k"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def override(tmp_path, body: dict) -> str:
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump({"checkpoints": {"esa/bigru/f30k": body}}))
    return str(path)


def test_drive_folder_fetch_verifies_installs_and_a_second_fetch_only_verifies(tmp_path, out, fake_drive):  # noqa: F811
    fake_drive.folders[FOLDER] = [("id1", NAMES[0]), ("id2", NAMES[1]), ("id3", "logs/train.log")]
    fake_drive.files.update({"id1": official()[NAMES[0]], "id2": official()[NAMES[1]]})
    dest = tmp_path / "ck"
    assert fetch(*ARGS, "--dest", str(dest)) == 0
    for name, data in official().items():
        assert (folder(dest) / name).read_bytes() == data
        assert f"computed {sha(data)}" in text(out)  # no recorded hash: printed, not trusted silently
    assert fake_drive.calls == [("list", FOLDER), ("get", "id1"), ("get", "id2")]  # one listing per run
    leftovers = sorted(p.name for p in (folder(dest) / ".fetch").iterdir())
    assert leftovers == [".lock", f"{NAMES[0]}.verified.json", f"{NAMES[1]}.verified.json"]
    mtimes = [(folder(dest) / n).stat().st_mtime_ns for n in NAMES]

    fake_drive.calls.clear()
    assert fetch(*ARGS, "--dest", str(dest)) == 0
    assert fake_drive.calls == []
    assert [(folder(dest) / n).stat().st_mtime_ns for n in NAMES] == mtimes
    assert "2 already present" in text(out) and "present, verified" in text(out)

    out.export_text(clear=True)
    assert fetch("--list", "--methods", "esa", "--dataset", "f30k", "--dest", str(dest)) == 0
    listing = text(out)
    assert f"present, loads, sha256 not recorded (computed {sha(official()[NAMES[0]])})" in listing
    assert "esa/bert/f30k/model_best.pth" in listing and "missing" in listing and FOLDER in listing


def test_ensemble_variant_fetches_its_members_files(tmp_path, out, server):  # noqa: F811
    mirror = serve(server)
    assert fetch("--methods", "esa", "--variants", "esa_star", "--dataset", "f30k", "--dest", str(tmp_path),
                 "--mirror", mirror) == 0
    assert sorted(p.name for p in folder(tmp_path).iterdir() if p.is_file()) == list(NAMES)


def test_a_local_folder_mirror_is_copied(tmp_path, out):  # noqa: F811
    lab = tmp_path / "lab"
    for name, data in official().items():
        (folder(lab)).mkdir(parents=True, exist_ok=True)
        (folder(lab) / name).write_bytes(data)
    dest = tmp_path / "ck"
    assert fetch(*ARGS, "--dest", str(dest), "--mirror", str(lab)) == 0
    assert (folder(dest) / NAMES[1]).read_bytes() == official()[NAMES[1]]
    assert f"from {lab.as_uri()}/esa/bigru/f30k/model_best_2.pth" in text(out)


def test_resume_after_a_cut_connection(tmp_path, out, server):  # noqa: F811
    mirror = serve(server)
    path = f"/esa/bigru/f30k/{NAMES[0]}"
    server.cut[path] = 50_000
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror) == 0
    assert (folder(tmp_path) / NAMES[0]).read_bytes() == official()[NAMES[0]]
    first, resumed = [r for p, r in server.log if p == path]
    assert first is None and 0 < int(resumed.removeprefix("bytes=").rstrip("-")) <= 50_000  # whole chunks kept


def test_a_server_that_ignores_range_restarts_the_file(tmp_path, out, server):  # noqa: F811
    mirror = serve(server)
    server.cut[f"/esa/bigru/f30k/{NAMES[0]}"] = 40_000
    server.ignore_range = True
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror) == 0
    assert (folder(tmp_path) / NAMES[0]).read_bytes() == official()[NAMES[0]]


def test_interrupt_leaves_nothing_complete_and_the_next_fetch_resumes(tmp_path, out, server, monkeypatch):  # noqa: F811
    mirror = serve(server)
    calls = []

    def interrupted(f, chunk):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise KeyboardInterrupt
        f.write(chunk)

    monkeypatch.setattr(download, "write_chunk", interrupted)
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror) == 130
    assert "interrupted: nothing was installed half-way" in text(out)
    assert not any(p.is_file() for p in folder(tmp_path).iterdir())  # nothing under a final name
    parts = [p for p in (folder(tmp_path) / ".fetch").iterdir() if p.name.endswith(".part")]
    assert len(parts) == 1 and parts[0].stat().st_size == calls[0]

    monkeypatch.setattr(download, "write_chunk", lambda f, chunk: f.write(chunk))
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror) == 0
    assert (folder(tmp_path) / NAMES[0]).read_bytes() == official()[NAMES[0]]
    assert (f"/esa/bigru/f30k/{NAMES[0]}", f"bytes={calls[0]}-") in server.log


def test_wrong_hash_names_file_expected_and_got_and_moves_it_aside(tmp_path, out, server):  # noqa: F811
    mirror = serve(server)
    lab = override(tmp_path, {"files": {NAMES[0]: {"sha256": "0" * 64}}})
    dest = tmp_path / "ck"
    assert fetch(*ARGS, "--dest", str(dest), "--mirror", mirror, "--registry", lab) == 1
    lines = [ln for ln in text(out).splitlines() if ln.startswith("x ")]
    assert len(lines) == 1
    line = lines[0]
    assert "esa/bigru/f30k/model_best.pth" in line and f"expected {'0' * 64}, got {sha(official()[NAMES[0]])}" in line
    assert f"moved to {folder(dest) / 'model_best.pth.rejected'}" in line
    assert not (folder(dest) / NAMES[0]).exists()
    assert (folder(dest) / "model_best.pth.rejected").read_bytes() == official()[NAMES[0]]
    assert (folder(dest) / NAMES[1]).is_file()  # the other file is fine


def test_a_recorded_hash_that_matches_is_verified(tmp_path, out, server):  # noqa: F811
    mirror = serve(server)
    data = official()[NAMES[0]]
    lab = override(tmp_path, {"files": {NAMES[0]: {"sha256": sha(data), "size": len(data)}}})
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror, "--registry", lab) == 0
    assert f"computed {sha(data)}" not in text(out)  # recorded: nothing to print
    out.export_text(clear=True)
    fetch("--list", *ARGS, "--dest", str(tmp_path), "--registry", lab)
    assert "verified (sha256, loads)" in text(out)


def test_size_announced_by_the_server_that_differs_is_refused_before_download(tmp_path, out, server):  # noqa: F811
    mirror = serve(server)
    lab = override(tmp_path, {"files": {NAMES[0]: {"size": 12}}})
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror, "--registry", lab) == 1
    assert f"serves {len(official()[NAMES[0]])} bytes, the registry expects 12" in text(out)


def test_404_then_the_next_mirror_then_the_official_link(tmp_path, out, server, fake_drive):  # noqa: F811
    lab_mirror = serve(server, "/lab", {NAMES[0]: official()[NAMES[0]]})  # the lab mirror lacks file 2
    fake_drive.folders[FOLDER] = [("id2", NAMES[1])]
    fake_drive.files["id2"] = official()[NAMES[1]]
    dead = server.url + "/gone"
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", dead, "--mirror", lab_mirror) == 0
    first = [p for p, _ in server.log if p.endswith(NAMES[0])]
    assert first == [f"/gone/esa/bigru/f30k/{NAMES[0]}", f"/lab/esa/bigru/f30k/{NAMES[0]}"]
    assert fake_drive.calls == [("list", FOLDER), ("get", "id2")]
    for name, data in official().items():
        assert (folder(tmp_path) / name).read_bytes() == data


def test_no_source_works_is_one_named_line(tmp_path, out, server):  # noqa: F811
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", server.url) == 1
    lines = [ln for ln in text(out).splitlines() if ln.startswith("x ")]
    assert len(lines) == 2
    assert "esa/bigru/f30k/model_best.pth: no source worked:" in lines[0]
    assert "HTTP 404" in lines[0] and FOLDER in lines[0]


def test_archive_source_unpacks_the_member(tmp_path, out, server):  # noqa: F811
    server.files["/esa.zip"] = zip_bytes({"run/a/model_best.pth": official()[NAMES[0]],
                                          "run/b/model_best.pth": official()[NAMES[1]]})
    lab = override(tmp_path, {"urls": [server.url + "/esa.zip"], "archive": "zip",
                              "files": {NAMES[0]: {"member": "run/a/model_best.pth"},
                                        NAMES[1]: {"member": "run/b/model_best.pth"}}})
    assert fetch(*ARGS, "--dest", str(tmp_path), "--registry", lab) == 0
    for name, data in official().items():
        assert (folder(tmp_path) / name).read_bytes() == data
    assert [p for p, _ in server.log] == ["/esa.zip"]  # one download serves both members
    assert not any(p.name.endswith("esa.zip") for p in (folder(tmp_path) / ".fetch").iterdir())


def test_archive_with_a_dotdot_member_is_refused(tmp_path, out, server):  # noqa: F811
    server.files["/esa.zip"] = zip_bytes({NAMES[0]: official()[NAMES[0]], NAMES[1]: official()[NAMES[1]],
                                          "../../evil.txt": b"owned"})
    lab = override(tmp_path, {"urls": [server.url + "/esa.zip"], "archive": "zip"})
    dest = tmp_path / "a" / "b" / "ck"
    assert fetch(*ARGS, "--dest", str(dest), "--registry", lab) == 1
    assert "member '../../evil.txt' points outside the destination" in text(out)
    assert not list(tmp_path.rglob("evil.txt"))
    assert not any(p.is_file() for p in folder(dest).iterdir())


def test_archive_with_a_link_is_refused(tmp_path, out, server):  # noqa: F811
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(NAMES[0])
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    server.files["/esa.tar"] = buf.getvalue()
    lab = override(tmp_path, {"urls": [server.url + "/esa.tar"], "archive": "tar"})
    assert fetch(*ARGS, "--dest", str(tmp_path), "--registry", lab) == 1
    assert "member 'model_best.pth' is a link (to '/etc/passwd')" in text(out)


def test_truncated_file_is_refused_by_the_loader_and_moved_aside(tmp_path, out, server):  # noqa: F811
    data = official()[NAMES[0]]
    mirror = serve(server, files={NAMES[0]: data[:-5000], NAMES[1]: official()[NAMES[1]]})
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror) == 1
    line = next(ln for ln in text(out).splitlines() if ln.startswith("x "))
    assert "esa/bigru/f30k/model_best.pth" in line and "refused by the loader" in line and "truncated" in line
    assert (folder(tmp_path) / "model_best.pth.rejected").stat().st_size == len(data) - 5000
    assert not (folder(tmp_path) / NAMES[0]).exists()


def test_checkpoint_of_another_dataset_is_refused(tmp_path, out, server):  # noqa: F811
    mirror = serve(server, files={NAMES[0]: esa_bytes(dataset="coco"), NAMES[1]: official()[NAMES[1]]})
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror) == 1
    line = next(ln for ln in text(out).splitlines() if ln.startswith("x "))
    assert "refused by the loader" in line and "coco" in line and "'f30k'" in line
    assert not (folder(tmp_path) / NAMES[0]).exists()


def test_no_verify_skips_the_loader_but_not_the_hash(tmp_path, out, server):  # noqa: F811
    mirror = serve(server, files={NAMES[0]: esa_bytes(dataset="coco"), NAMES[1]: official()[NAMES[1]]})
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror, "--no-verify") == 0
    assert (folder(tmp_path) / NAMES[0]).is_file()
    with pytest.raises(FetchError, match="records only files the loader accepted"):
        fetch(*ARGS, "--dest", str(tmp_path), "--no-verify", "--record", str(tmp_path / "rec.yaml"))


def test_disk_full_while_writing_is_one_line_and_keeps_the_partial(tmp_path, out, server, monkeypatch):  # noqa: F811
    mirror = serve(server)
    calls = []

    def full(f, chunk):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(chunk)

    monkeypatch.setattr(download, "write_chunk", full)
    with pytest.raises(DiskFullError) as info:
        fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror)
    message = str(info.value)
    assert "\n" not in message and "disk full after 32768 of" in message and "model_best.pth" in message
    assert "partial file is kept" in message
    assert not (folder(tmp_path) / NAMES[0]).exists()


def test_not_enough_free_space_is_refused_before_downloading(tmp_path, out, server, monkeypatch):  # noqa: F811
    mirror = serve(server)
    monkeypatch.setattr(download, "free_bytes", lambda folder: 1000)
    with pytest.raises(DiskFullError, match=f"needs {len(official()[NAMES[0]])} more bytes, .* has 1000 free"):
        fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror)


def test_offline_only_verifies_what_is_present(tmp_path, out, server):  # noqa: F811
    assert fetch(*ARGS, "--dest", str(tmp_path), "--offline", "--mirror", serve(server)) == 1
    assert server.log == [] and "--offline: nothing is downloaded" in text(out)
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", server.url) == 0
    server.log.clear()
    assert fetch(*ARGS, "--dest", str(tmp_path), "--offline") == 0
    assert server.log == []


def test_record_writes_hashes_that_later_catch_a_changed_file(tmp_path, out, server):  # noqa: F811
    rec = tmp_path / "hashes.yaml"
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", serve(server), "--record", str(rec)) == 0
    doc = yaml.safe_load(rec.read_text())
    files = doc["checkpoints"]["esa/bigru/f30k"]["files"]
    assert files[NAMES[0]] == {"size": len(official()[NAMES[0]]), "sha256": sha(official()[NAMES[0]])}
    assert "recorded the size and sha256 of 2 file(s)" in text(out)
    # the same bytes with one changed: size unchanged, sha256 differs, the recorded hash catches it
    path = folder(tmp_path) / NAMES[0]
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert fetch(*ARGS, "--dest", str(tmp_path), "--offline", "--registry", str(rec)) == 1
    assert f"sha256 mismatch: expected {sha(official()[NAMES[0]])}" in text(out)
    assert (folder(tmp_path) / "model_best.pth.rejected").is_file() and not path.exists()


def test_a_replaced_file_is_loaded_again_and_refused(tmp_path, out, server):  # noqa: F811
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", serve(server)) == 0
    (folder(tmp_path) / NAMES[1]).write_bytes(esa_bytes(dataset="coco"))  # no recorded hash; the stamp is stale
    assert fetch(*ARGS, "--dest", str(tmp_path), "--offline") == 1
    assert "refused by the loader" in text(out) and (folder(tmp_path) / "model_best_2.pth.rejected").is_file()


def test_drive_folder_without_the_file_names_the_fix(tmp_path, out, fake_drive):  # noqa: F811
    fake_drive.folders[FOLDER] = [("id1", "esa_a.pth"), ("id2", "esa_b.pth")]
    assert fetch(*ARGS, "--dest", str(tmp_path)) == 1
    line = next(ln for ln in text(out).splitlines() if ln.startswith("x "))
    assert "no file named model_best.pth (esa_a.pth, esa_b.pth)" in line and "set `member:`" in line


def test_unknown_names_and_missing_arguments(tmp_path, out):  # noqa: F811
    with pytest.raises(RegistryError, match="Did you mean 'esa'"):
        fetch("--methods", "esaa", "--dataset", "f30k")
    with pytest.raises(FetchError, match="pass --methods"):
        fetch("--dataset", "f30k")
    with pytest.raises(FetchError, match="esa/bigru has no official checkpoint for demo"):
        fetch("--methods", "esa", "--variants", "bigru", "--dataset", "demo")
    with pytest.raises(FetchError, match="--mirror ftp://x"):
        fetch(*ARGS, "--mirror", "ftp://x")


def test_a_loader_that_cannot_run_keeps_the_download_for_the_next_fetch(tmp_path, out, server, monkeypatch):  # noqa: F811
    from methods.esa.adapter import ESAAdapter

    real = ESAAdapter.load_official.__func__

    def offline_config(cls, path, **kwargs):
        raise OSError("cannot reach huggingface.co to read a config")

    monkeypatch.setattr(ESAAdapter, "load_official", classmethod(offline_config))
    mirror = serve(server)
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror) == 1
    assert "cannot check that it loads (OSError: cannot reach huggingface.co" in text(out)
    assert "--no-verify" in text(out)
    assert not (folder(tmp_path) / NAMES[0]).exists() and (folder(tmp_path) / ".fetch" / NAMES[0]).is_file()

    monkeypatch.setattr(ESAAdapter, "load_official", classmethod(real))
    server.log.clear()
    assert fetch(*ARGS, "--dest", str(tmp_path), "--mirror", mirror) == 0
    assert (folder(tmp_path) / NAMES[0]).read_bytes() == official()[NAMES[0]]
    assert "from an earlier download" in text(out) and server.log == []
