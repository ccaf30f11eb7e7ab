"""Safe unpacking: every unsafe member refuses the whole archive, before anything is written."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest
from test_fetch_fixtures import zip_bytes

from harness.fetch import archive
from harness.fetch.errors import ArchiveError, NotFoundError


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name, kind, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


@pytest.mark.parametrize("member, why", [
    ("../x", "points outside the destination"),
    ("a/../../x", "points outside the destination"),
    ("/etc/x", "absolute path"),
    ("C:/x", "absolute path"),
])
def test_zip_paths_outside_the_destination_are_refused(tmp_path, member, why):
    path = tmp_path / "a.zip"
    path.write_bytes(zip_bytes({"ok.txt": b"fine", member: b"bad"}))
    with pytest.raises(ArchiveError) as info:
        archive.extract_all(path, "zip", tmp_path / "out")
    assert why in str(info.value) and repr(member) in str(info.value) and str(path) in str(info.value)
    assert not (tmp_path / "out" / "ok.txt").exists()  # refused before anything was written


def test_zip_symlink_is_refused(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="'link' is a symbolic link"):
        archive.members(path, "zip")


@pytest.mark.parametrize("member, why", [
    (_special("s", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
    (_special("h", tarfile.LNKTYPE, "other"), "is a link"),
    (_special("dev", tarfile.CHRTYPE), "device or FIFO"),
    (_special("fifo", tarfile.FIFOTYPE), "device or FIFO"),
    (_file("../up"), "points outside"),
])
def test_tar_links_devices_and_escapes_are_refused(tmp_path, member, why):
    path = _tar(tmp_path / "a.tar.gz", [_file("ok"), member])
    with pytest.raises(ArchiveError, match=why):
        archive.extract_all(path, "tar", tmp_path / "out")
    assert not (tmp_path / "out" / "ok").exists()


def test_extract_all_selects_members_and_extract_member_streams_one(tmp_path):
    path = _tar(tmp_path / "a.tar.gz", [_file("d/coco_precomp/a.txt", b"A"), _file("d/f30k_precomp/b.txt", b"B")])
    written = archive.extract_all(path, "tar", tmp_path / "out", lambda m: "coco_precomp" in m.split("/"))
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == ["d/coco_precomp/a.txt"]
    out = archive.extract_member(path, "tar", "d/f30k_precomp/b.txt", tmp_path / "b.txt")
    assert out.read_bytes() == b"B"
    assert not list(tmp_path.glob(".*.unpack"))


def test_unreadable_archive_is_named(tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(ArchiveError, match="not a readable zip archive"):
        archive.members(path, "zip")


def test_pick_member_by_path_or_unique_name():
    found = ["run/a/model.pth", "run/b/model.pth", "run/best.pth"]
    assert archive.pick_member("x.zip", found, "best.pth", None) == "run/best.pth"
    assert archive.pick_member("x.zip", found, "model.pth", "run/b/model.pth") == "run/b/model.pth"
    with pytest.raises(NotFoundError, match="2 files named model.pth: run/a/model.pth, run/b/model.pth"):
        archive.pick_member("x.zip", found, "model.pth", None)
    with pytest.raises(NotFoundError, match="has no member 'run/c/model.pth'"):
        archive.pick_member("x.zip", found, "model.pth", "run/c/model.pth")
