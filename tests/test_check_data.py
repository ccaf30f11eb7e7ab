"""`check-data` catches what would break or skew a run: empty splits, undecodable images, captions with a BOM,
NUL or control characters, counts that disagree with the ids files, non-UTF-8 text, NaN / Inf features."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from harness.cli.app import main
from harness.data.cusa_json import check_cusa_json
from harness.data.image_retrieval import check_image_retrieval
from harness.data.precomp import DataError, check_precomp, load_precomp
from harness.spec.checks import check_dataset

CAPTIONS = ["a man rides a red bike on a dirt road", "a dog runs on the grass", "two people wait near a bus",
            "a cat sleeps on a sofa", "a plate of food on a table"]


def precomp(folder, n_img=2, split="test", dim=8, caps=None):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{split}_ims.npy", np.random.default_rng(0).random((n_img, 3, dim), dtype=np.float32))
    lines = caps if caps is not None else [f"{CAPTIONS[j]} {i}" for i in range(n_img) for j in range(5)]
    (folder / f"{split}_caps.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return folder


def problems_of(folder, split="test"):
    return check_precomp(folder, "f30k", [split], feature_dim=None)


def test_a_clean_split_has_no_problem(tmp_path):
    assert problems_of(precomp(tmp_path)) == []


def test_zero_images_is_a_problem(tmp_path):
    precomp(tmp_path, n_img=0)
    [problem] = problems_of(tmp_path)
    assert problem == f"{tmp_path / 'test_ims.npy'}: 0 images and 0 captions in test_caps.txt; the split is empty"
    with pytest.raises(DataError, match="the split is empty"):
        load_precomp(tmp_path, "test")


def test_byte_order_mark_nul_and_control_characters_in_captions(tmp_path):
    caps = [f"{CAPTIONS[j]} {i}" for i in range(2) for j in range(5)]
    caps[0] = "\ufeff" + caps[0]
    caps[3] = caps[3].replace(" ", "\x00", 1)
    caps[7] = caps[7] + "\x0c"
    precomp(tmp_path, caps=caps)
    caps_file = tmp_path / "test_caps.txt"
    problems = problems_of(tmp_path)
    assert problems == [
        f"{caps_file}: starts with a byte-order mark (U+FEFF), which becomes part of the first caption; re-save "
        "the file as UTF-8 without BOM",
        f"{caps_file}: NUL bytes on line 4 (1 line(s)); remove them",
        f"{caps_file}: control characters on line 8 (1 line(s)); remove them"]


def test_captions_that_are_not_utf8_name_the_byte(tmp_path):
    precomp(tmp_path)
    caps = tmp_path / "test_caps.txt"
    caps.write_bytes(caps.read_bytes().replace(b"grass", b"gr\xe4ss", 1))  # latin-1
    [problem] = problems_of(tmp_path)
    assert problem.startswith(f"{caps}: not UTF-8 text (byte ") and ", line 2: invalid continuation byte)" in problem


def test_counts_that_disagree_with_the_ids_files(tmp_path):
    precomp(tmp_path, split="testall")
    (tmp_path / "testall_ids.txt").write_text("1\n2\n3\n")
    (tmp_path / "testall_capids.txt").write_text("".join(f"{i}\n" for i in range(9)))
    problems = problems_of(tmp_path, "testall")
    assert problems == [f"{tmp_path / 'testall_ids.txt'}: 3 ids for 2 images / 10 captions",
                        f"{tmp_path / 'testall_capids.txt'}: 9 caption ids for 10 captions in testall_caps.txt; "
                        "expected one per caption"]


def test_nan_inf_and_truncated_features(tmp_path):
    precomp(tmp_path)
    ims = np.load(tmp_path / "test_ims.npy")
    ims[1, 2, 3] = np.inf
    np.save(tmp_path / "test_ims.npy", ims)
    assert problems_of(tmp_path) == [f"{tmp_path / 'test_ims.npy'}: +inf values in image rows [1]; re-extract or "
                                     "re-download the features"]
    data = (tmp_path / "test_ims.npy").read_bytes()
    (tmp_path / "test_ims.npy").write_bytes(data[:100])
    [problem] = problems_of(tmp_path)
    assert problem.startswith(f"{tmp_path / 'test_ims.npy'}: not a plain .npy array (")
    assert problem.endswith("the file may be truncated or corrupt: download or extract it again")


def _png(path, colour=(200, 40, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)


def _jpeg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)


def test_cusa_json_undecodable_images_and_caption_bytes(tmp_path):
    rows = [{"image_path": f"images/{i}.{'jpg' if i == 2 else 'png'}", "caption": CAPTIONS[(i + j) % 5],
             "image_id": f"img{i}"} for i in range(4) for j in range(2)]
    rows[1]["caption"] = "\ufeff" + rows[1]["caption"]
    rows[4]["caption"] = rows[4]["caption"] + "\x00"
    (tmp_path / "new_test.json").write_text(json.dumps(rows))
    _png(tmp_path / "images/0.png")
    (tmp_path / "images/1.png").write_bytes(b"not a picture")
    _jpeg(tmp_path / "images/2.jpg")
    data = (tmp_path / "images/2.jpg").read_bytes()
    (tmp_path / "images/2.jpg").write_bytes(data[: len(data) // 2])  # truncated: the header still reads
    _png(tmp_path / "images/3.png")
    assert check_cusa_json(tmp_path, "test", decode_images=True) == [
        f"{tmp_path / 'new_test.json'}: 2 of 4 images do not decode (first: {tmp_path / 'images/1.png'}: not a "
        f"readable image (UnidentifiedImageError: cannot identify image file '{tmp_path / 'images/1.png'}')); "
        "replace or re-download them",
        f"{tmp_path / 'new_test.json'}: 1 caption(s) hold a byte-order mark (U+FEFF) (first: caption 1: "
        f"{rows[1]['caption']!r}); remove them",
        f"{tmp_path / 'new_test.json'}: 1 caption(s) hold NUL bytes (first: caption 4: {rows[4]['caption']!r}); "
        "remove them"]


def test_check_data_cli_on_the_cusa_layout(tmp_path, capsys):
    rows = [{"image_path": "images/0.png", "caption": c, "image_id": "0"} for c in CAPTIONS]
    (tmp_path / "new_test.json").write_text(json.dumps(rows))
    (tmp_path / "images").mkdir()
    (tmp_path / "images/0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))  # a PNG signature, then nothing
    assert main(["check-data", "--dataset", "f30k", "--layout", "cusa_json", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1 of 1 images do not decode" in out and "1 problem(s)" in out
    _png(tmp_path / "images/0.png")
    assert check_dataset("f30k", tmp_path, layout="cusa_json") == []


def test_image_retrieval_undecodable_images(tmp_path):
    inat = tmp_path / "inaturalist"
    (inat / "Inat_dataset_splits").mkdir(parents=True)
    (inat / "Inat_dataset_splits" / "Inaturalist_test_set1.txt").write_text("v/Aves/1/a.jpg\nv/Aves/2/b.jpg\n")
    _jpeg(inat / "v/Aves/1/a.jpg")
    (inat / "v/Aves/2").mkdir(parents=True)
    (inat / "v/Aves/2/b.jpg").write_bytes((inat / "v/Aves/1/a.jpg").read_bytes()[:300])
    assert check_image_retrieval(tmp_path, ("inaturalist",)) == []  # a run's pre-flight: files are there
    [problem] = check_image_retrieval(tmp_path, ("inaturalist",), decode_images=True)
    assert problem.startswith(f"inaturalist: 1 of 2 listed images do not decode (first: {inat / 'v/Aves/2/b.jpg'}: "
                              "not a readable image (")
