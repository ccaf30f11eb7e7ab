"""`fetch data`: SCAN-style precomp archives and SentEval from a local server, the bundled ECCV / CxC files."""

from __future__ import annotations

import dataclasses
import io
import shutil
import tarfile

import numpy as np
import pytest
from test_fetch_fixtures import fetch, no_internet, out, server, text, zip_bytes  # noqa: F401 - fixtures

from harness.fetch import data as fetch_data_module
from harness.fetch import sources
from harness.fetch.errors import FetchError


@pytest.fixture(autouse=True)
def local_sources(monkeypatch, server, no_internet):  # noqa: F811
    """The official links point at the local server's /official/ (404 unless a test serves a file there)."""
    for name, src in list(sources.DATA_SOURCES.items()):
        monkeypatch.setitem(sources.DATA_SOURCES, name,
                            dataclasses.replace(src, urls=(f"{server.url}/official/{src.file}",)))


def f30k_zip(images: int = 1000) -> bytes:
    """data.zip in SCAN's layout with a Flickr30K test split (and a COCO folder that must stay packed)."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((images, 1, 2048), dtype=np.float32))
    caps = "\n".join(f"a dog runs on the grass number {i}" for i in range(5 * images)) + "\n"
    return zip_bytes({"data/f30k_precomp/test_ims.npy": buf.getvalue(),
                      "data/f30k_precomp/test_caps.txt": caps.encode(),
                      "data/coco_precomp/testall_caps.txt": b"not unpacked\n"})


def test_precomp_archive_from_a_mirror_then_check_data(tmp_path, out, server):  # noqa: F811
    server.files["/lab/data/data.zip"] = f30k_zip()
    root = tmp_path / "data"
    assert fetch("data", "--dataset", "f30k", "--data-root", str(root), "--splits", "test",
                 "--mirror", server.url + "/lab") == 0
    assert (root / "f30k" / "precomp" / "test_ims.npy").is_file() and not (root / "coco").exists()
    assert "sha256 not recorded; computed" in text(out) and "passes check-data" in text(out)
    assert not (root / ".fetch" / "f30k.unpack").exists()
    server.log.clear()
    assert fetch("data", "--dataset", "f30k", "--data-root", str(root), "--splits", "test") == 0
    assert server.log == [] and "nothing to fetch" in text(out)


def test_data_that_fails_check_data_after_unpacking_is_reported(tmp_path, out, server):  # noqa: F811
    server.files["/official/data.zip"] = f30k_zip(images=10)  # a test split of 10 images, not 1000
    assert fetch("data", "--dataset", "f30k", "--data-root", str(tmp_path), "--splits", "test") == 1
    assert "10 images, the f30k test split has 1000" in text(out)


def test_unsafe_data_archive_is_refused_and_deleted(tmp_path, out, server):  # noqa: F811
    server.files["/official/data.zip"] = zip_bytes({"data/f30k_precomp/../../../evil": b"x"})
    with pytest.raises(FetchError, match="points outside the destination.*deleted the download"):
        fetch("data", "--dataset", "f30k", "--data-root", str(tmp_path / "d"), "--splits", "test")
    assert not list(tmp_path.rglob("evil")) and not list((tmp_path / "d" / ".fetch").glob("*data.zip"))


def test_no_source_prints_the_manual_steps(tmp_path, out, server):  # noqa: F811
    assert fetch("data", "--dataset", "coco", "--data-root", str(tmp_path)) == 1
    printed = text(out)
    assert "coco: not fetched: no source worked:" in printed and "HTTP 404" in printed
    assert "Manual steps for coco" in printed and "https://github.com/kuanghuei/SCAN#download-data" in printed
    assert f"move its coco_precomp folder to {tmp_path}/coco/precomp" in printed
    assert f"check-data --dataset coco --data-root {tmp_path} --splits train,dev,testall" in printed


def test_offline_prints_problems_and_manual_steps(tmp_path, out, server):  # noqa: F811
    assert fetch("data", "--dataset", "senteval", "--data-root", str(tmp_path), "--offline") == 1
    assert server.log == [] and "--offline: nothing is downloaded" in text(out)
    assert "Manual steps for senteval" in text(out)


def test_existing_folder_that_fails_check_data_is_not_overwritten(tmp_path, out, server):  # noqa: F811
    folder = tmp_path / "f30k" / "precomp"
    folder.mkdir(parents=True)
    (folder / "test_caps.txt").write_text("mine\n")
    server.files["/official/data.zip"] = f30k_zip()
    with pytest.raises(FetchError, match="exists but fails check-data"):
        fetch("data", "--dataset", "f30k", "--data-root", str(tmp_path), "--splits", "test")
    assert (folder / "test_caps.txt").read_text() == "mine\n" and server.log == []


def test_senteval_tar_takes_the_folder_holding_sts(tmp_path, out, server):  # noqa: F811
    from test_sts import write_senteval

    tree = write_senteval(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(tree / "downstream", arcname="downstream")
    server.files["/official/senteval.tar"] = buf.getvalue()
    root = tmp_path / "data"
    assert fetch("data", "--dataset", "senteval", "--data-root", str(root)) == 0
    assert (root / "senteval" / "STS" / "STSBenchmark" / "sts-test.csv").is_file()


def test_eccv_and_cxc_are_verified_where_they_are_installed(tmp_path, out, server, monkeypatch):  # noqa: F811
    assert fetch("data", "--dataset", "eccv,cxc") == 0
    assert "eccv_caption package" in text(out) and "match their recorded sha256" in text(out)
    assert server.log == []
    # a damaged bundled CSV is moved aside and restored from the (mirrored) pinned upstream copy
    cxc = tmp_path / "cxc"
    shutil.copytree(fetch_data_module.CXC_DIR, cxc)
    monkeypatch.setattr(fetch_data_module, "CXC_DIR", cxc)
    good = (cxc / "sis_test.csv").read_bytes()
    (cxc / "sis_test.csv").write_bytes(good[:-10])
    server.files["/m/data/cxc/sis_test.csv"] = good
    assert fetch("data", "--dataset", "cxc", "--mirror", server.url + "/m") == 0
    assert (cxc / "sis_test.csv").read_bytes() == good and (cxc / "sis_test.csv.rejected").is_file()
    assert "sis_test.csv: sha256 mismatch: expected" in text(out)


def test_unknown_data_name_lists_the_valid_ones():
    with pytest.raises(FetchError, match="valid: coco, f30k, senteval, eccv, cxc"):
        fetch("data", "--dataset", "demo")
