"""SCAN precomp readers and every check-data message, on small real-format folders."""

import numpy as np
import pytest

from harness.cli.app import main
from harness.data.precomp import DataError, check_precomp, load_precomp

REAL_CAPS = ["A man with a red helmet on a small moped on a dirt road .",
             "Man riding a motor bike on a dirt road on the countryside .",
             "A man riding on the back of a motorcycle .",
             "A dirt path with a young person on a motor bike rests to the foreground .",
             "A man in a red shirt and a red hat is on a motorcycle on a hill side ."]


def make_split(folder, split="testall", n_img=4, regions=3, dim=8, caps_per_img=5, repeat=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ims = rng.random((n_img, regions, dim), dtype=np.float32)
    if repeat:
        ims = np.repeat(ims, caps_per_img, axis=0)
    np.save(folder / f"{split}_ims.npy", ims)
    caps = [REAL_CAPS[j % 5] + f" {i}" for i in range(n_img) for j in range(caps_per_img)]
    (folder / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
    return ims


@pytest.mark.parametrize("layout", ["coco/precomp", "coco_precomp", "precomp", "."])
def test_layouts_are_recognised(tmp_path, layout):
    make_split(tmp_path / layout)
    split = load_precomp(tmp_path, "testall", "coco")
    assert split.n_images == 4 and len(split.captions) == 20
    assert isinstance(split.images, np.memmap)
    assert split.image_of_caption.tolist()[:6] == [0, 0, 0, 0, 0, 1]


def test_images_stored_once_per_caption_are_deduplicated(tmp_path):
    ims = make_split(tmp_path, repeat=True)
    split = load_precomp(tmp_path, "testall")
    assert split.n_images == 4
    np.testing.assert_array_equal(np.asarray(split.images), ims[::5])


def test_repeated_rows_that_differ_are_an_error(tmp_path):
    make_split(tmp_path, n_img=20, caps_per_img=1)  # 20 distinct images, 20 captions
    with pytest.raises(DataError, match="differ"):
        load_precomp(tmp_path, "testall")


def test_count_mismatch_message_names_file_and_counts(tmp_path):
    make_split(tmp_path)
    np.save(tmp_path / "testall_ims.npy", np.zeros((3, 3, 8), np.float32))
    with pytest.raises(DataError) as err:
        load_precomp(tmp_path, "testall")
    msg = str(err.value)
    assert "testall_ims.npy: 3 images but testall_caps.txt has 20 captions (expected 5 per image: 15)" in msg


def test_check_data_reports_every_problem(tmp_path):
    good = tmp_path / "good"
    make_split(good, dim=2048, n_img=2)
    assert check_precomp(good, "coco", ["testall"]) == []
    bad = tmp_path / "bad"
    make_split(bad, dim=16, n_img=2)
    ims = np.load(bad / "testall_ims.npy")
    ims[1, 0, 0] = np.nan
    ims[0, 1, 1] = -np.inf
    np.save(bad / "testall_ims.npy", ims)
    problems = check_precomp(bad, "coco", ["testall", "dev"], expected_images={"testall": 5000})
    text = "\n".join(problems)
    assert "region feature dim 16, expected 2048" in text
    assert "2 images, the coco testall split has 5000" in text
    assert "NaN/-inf values in image rows [0, 1]" in text
    assert "no dev_caps.txt / dev_ims.npy found" in text


def test_empty_caption_line_is_named(tmp_path):
    make_split(tmp_path)
    lines = (tmp_path / "testall_caps.txt").read_text().splitlines()
    lines[6] = "   "
    (tmp_path / "testall_caps.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="empty caption on line 7"):
        load_precomp(tmp_path, "testall")


def test_missing_root_and_pickled_npy(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_precomp(tmp_path / "nope", "test")
    make_split(tmp_path, split="test")
    np.save(tmp_path / "test_ims.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not a plain .npy"):
        load_precomp(tmp_path, "test")


def test_check_data_cli_exit_codes(tmp_path, capsys):
    make_split(tmp_path / "f30k" / "precomp", split="test", dim=2048, n_img=1000, regions=1)
    assert main(["check-data", "--dataset", "f30k", "--data-root", str(tmp_path)]) == 0
    assert main(["check-data", "--dataset", "f30k", "--data-root", str(tmp_path), "--splits", "dev"]) == 1
    out = capsys.readouterr().out
    assert "dev_caps.txt" in out and "1 problem(s)" in out
    assert main(["check-data", "--dataset", "f3k", "--data-root", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "Did you mean 'f30k'" in captured.out + captured.err
