"""CUSA data: json reader on the real example split, caption cleaning, preprocessing, teacher features."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data.cusa_json import CusaDataError, check_cusa_json, clip_preprocess, load_cusa_split, pre_caption
from harness.data.demo_images import demo_teacher_features, plan_image, render_caption_images, write_demo_split
from methods.cusa.teacher import TeacherFeatures, convert_unicom, main, read_unicom_pickle

DATA_DIR = Path(__file__).parent / "data" / "cusa"


def test_reader_groups_the_real_example_split():
    split = load_cusa_split(DATA_DIR, "test", check_images=False)
    rows = json.loads((DATA_DIR / "new_test.json").read_text())
    by_id: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_id[r["image_id"]].append(r["caption"])
    assert split.n_images == 201 and split.n_captions == 1000
    assert split.image_ids == sorted(by_id) and split.image_ids != list(by_id)  # sorted, not json order
    counts = np.bincount(split.image_of_caption)
    assert sorted(counts.tolist())[:2] == [2, 2] and counts.max() == 6 and counts.sum() == 1000
    for i, image_id in enumerate(split.image_ids):
        assert [split.captions[j] for j in split.captions_of_image[i]] == by_id[image_id]  # json order
    assert np.all(np.diff(split.image_of_caption) >= 0)  # captions grouped by image
    six = split.image_ids.index("COCO_val2014_000000328030.jpg")
    assert len(split.captions_of_image[six]) == 6
    assert split.image_paths[0] == DATA_DIR / "pics" / split.image_ids[0]


def test_reader_reports_missing_images_and_bad_rows(tmp_path):
    with pytest.raises(CusaDataError, match=r"201 of 201 images are missing"):
        load_cusa_split(DATA_DIR, "test")
    assert "201 of 201 images are missing" in check_cusa_json(DATA_DIR, "test")[0]
    with pytest.raises(CusaDataError, match=r"new_val\.json: no such file"):
        load_cusa_split(tmp_path, "val")
    rows = [{"image_path": "a.png", "caption": "x", "image_id": "1"}, {"image_path": "b.png", "caption": "y",
                                                                       "image_id": "1"}]
    (tmp_path / "new_test.json").write_text(json.dumps(rows))
    with pytest.raises(CusaDataError, match=r"image_id '1' names two files"):
        load_cusa_split(tmp_path, "test", check_images=False)
    (tmp_path / "new_test.json").write_text(json.dumps([{"image_path": "a.png", "image_id": "1"}]))
    with pytest.raises(CusaDataError, match=r"row 0 is not an"):
        load_cusa_split(tmp_path, "test", check_images=False)
    rows = [{"image_path": "a.png", "caption": "x", "image_id": 1}, {"image_path": "b", "caption": "y",
                                                                     "image_id": "2"}]
    (tmp_path / "new_test.json").write_text(json.dumps(rows))
    with pytest.raises(CusaDataError, match=r"mix strings and integers"):
        load_cusa_split(tmp_path, "test", check_images=False)


def test_pre_caption_follows_the_official_cleaning():
    assert pre_caption("A man with a red helmet on a small moped on a dirt road. ") == \
        "a man with a red helmet on a small moped on a dirt road"
    assert pre_caption("Two <person> cross-country skiers/hikers: \"smiling\"!") == \
        "two person cross country skiers hikers smiling"
    assert pre_caption(" ".join(f"w{i}" for i in range(70))) == " ".join(f"w{i}" for i in range(64))
    with pytest.raises(ValueError, match="empty after CUSA"):
        pre_caption(" ... !! ")


def test_clip_preprocess_resizes_short_side_and_centre_crops():
    a = np.zeros((40, 80, 3), dtype=np.uint8)
    a[:, 20:60] = 255  # a white centre band: a centre crop keeps only white
    x = clip_preprocess(32)(Image.fromarray(a))
    assert x.shape == (3, 32, 32)
    white = (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711])
    assert torch.allclose(x[:, 4:28, 4:28].mean(dim=(1, 2)), white, atol=1e-3)
    assert clip_preprocess(32)(Image.fromarray(a[..., 0], mode="L")).shape == (3, 32, 32)


def _official_unicom(path: Path, table: dict) -> None:
    np.save(path, table, allow_pickle=True)  # what the official extraction leaves: a pickled dict


def test_unicom_pickle_converts_to_a_safe_npz(tmp_path):
    rng = np.random.default_rng(0)
    table = {f"COCO_{i}.jpg": rng.standard_normal((1, 8)).astype(np.float32) for i in range(5)}
    _official_unicom(tmp_path / "train_unicom.npy", table)
    assert main(["convert-unicom", str(tmp_path / "train_unicom.npy"), str(tmp_path / "train_unicom.npz")]) == 0
    feats = TeacherFeatures.from_file(tmp_path / "train_unicom.npz")
    assert len(feats) == 5 and feats.dim == 8
    np.testing.assert_array_equal(feats.lookup(["COCO_3.jpg", "COCO_0.jpg"]),
                                  np.stack([table["COCO_3.jpg"][0], table["COCO_0.jpg"][0]]))
    with np.load(tmp_path / "train_unicom.npz", allow_pickle=False) as z:  # readable without pickle
        assert z["features"].dtype == np.float32
    with pytest.raises(CusaDataError, match=r"convert it once with"):
        TeacherFeatures.from_file(tmp_path / "train_unicom.npy")


def test_missing_teacher_feature_is_an_error(tmp_path):
    feats = TeacherFeatures(["a", "b"], np.eye(2, 3), tmp_path / "f.npz")
    with pytest.raises(CusaDataError, match=r"f\.npz: no teacher feature for 1 image id.*'zzz'"):
        feats.lookup(["a", "zzz", "b"])


class _Payload:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_malicious_unicom_pickle_is_refused_without_running_it(tmp_path):
    target = tmp_path / "pwned"
    _official_unicom(tmp_path / "evil.npy", {"img.jpg": _Payload(str(target))})
    with pytest.raises(CusaDataError, match=r"refused to unpickle: global 'posix\.mkdir' is not allowed"):
        read_unicom_pickle(tmp_path / "evil.npy")
    with pytest.raises(CusaDataError):
        convert_unicom(tmp_path / "evil.npy", tmp_path / "evil.npz")
    assert not target.exists() and not (tmp_path / "evil.npz").exists()
    _official_unicom(tmp_path / "strings.npy", {"img.jpg": np.array(["not", "numbers"])})
    with pytest.raises(CusaDataError, match=r"not a 1-D or 2-D numeric array"):
        read_unicom_pickle(tmp_path / "strings.npy")
    np.save(tmp_path / "plain.npy", np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(CusaDataError, match=r"not the official pickled"):
        read_unicom_pickle(tmp_path / "plain.npy")


def test_demo_images_draw_what_the_captions_say(tmp_path):
    plan = plan_image(["A red bus parked on the street.", "a red bus near a car", "The bus is red"])
    assert plan.scene == "street" and (plan.objects[0].name, plan.objects[0].color) == ("bus", "red")
    groups = [["a dog on the grass", "a brown dog in a field"], ["a blue boat on the water"] * 3]
    images = render_caption_images(groups, size=40)
    assert [im.size for im in images] == [(40, 40), (40, 40)]
    green = np.asarray(images[0], dtype=float)[0, 0]
    assert green[1] > green[0] + 30 and green[1] > green[2] + 30  # grass background
    feats = demo_teacher_features(groups)
    assert feats.shape[0] == 2 and (feats > 0).sum(axis=1).min() >= 2
    json_path = write_demo_split(tmp_path, "train", groups, size=40)
    split = load_cusa_split(tmp_path, "train")
    assert json_path.name == "new_train.json" and split.n_images == 2 and split.n_captions == 5
    teacher = TeacherFeatures.from_file(tmp_path / "train_unicom.npz")
    np.testing.assert_array_equal(teacher.lookup(split.image_ids), feats)
