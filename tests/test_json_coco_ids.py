"""ECCV Caption and CxC on a CUSA/ALBEF json COCO test split (25,010 captions, any order): the json captions are
matched to the Karpathy COCO 5K caption ids, and the numbers equal those of the same scores laid out as the
5000 x 25000 SCAN matrix."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.eval.evaluation import EvalSettings, SplitSpec, evaluate_matrix
from harness.eval.metrics.coco_captions import ASSETS, coco_ids_of_columns, coco_image_id, text_key
from harness.eval.protocols import compute_protocol


def _raw(text: str) -> str:
    """Karpathy's tokenised caption as a json caption would print it (no space before punctuation, new case)."""
    return re.sub(r" ([.,'!?])", r"\1", text).capitalize() + " "


@pytest.fixture(scope="module")
def coco5k(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("json")
    images = [int(x) for x in (ASSETS / "testall_ids.txt").read_text().split()][::5]
    texts = (ASSETS / "testall_caps.txt").read_text().splitlines()
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((5000, 25000)).astype(np.float32)  # scores in SCAN (Karpathy) order
    rows = []
    for k, image in enumerate(images):
        name = f"COCO_val2014_{image:012d}.jpg"
        caps = [(_raw(texts[5 * k + c]), 5 * k + c) for c in range(5)]
        if k < 10:  # ten images with a sixth COCO caption, as in CUSA's json
            caps.append((f"An extra caption number {k} that Karpathy left out.", None))
        order = rng.permutation(len(caps))  # json order within an image is not Karpathy's
        rows += [{"image_path": f"images/{name}", "caption": caps[i][0], "image_id": name, "_col": caps[i][1]}
                 for i in order]
    # the evaluation order: images sorted by id string, each image's captions in json order
    by_image: dict[str, list] = {}
    for r in rows:
        by_image.setdefault(r["image_id"], []).append(r)
    ordered = [r for key in sorted(by_image) for r in by_image[key]]
    row_of = {key: i for i, key in enumerate(sorted(by_image))}
    karpathy_row = {f"COCO_val2014_{image:012d}.jpg": k for k, image in enumerate(images)}
    owner = np.array([row_of[r["image_id"]] for r in ordered])
    sims = np.empty((5000, len(ordered)), np.float32)
    perm = np.array([karpathy_row[key] for key in sorted(by_image)])
    for j, r in enumerate(ordered):
        sims[:, j] = ref[perm, r["_col"]] if r["_col"] is not None else rng.standard_normal(5000)
    (tmp / "new_test.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "_col"} for r in rows]))
    ids_dir = tmp / "scan"
    ids_dir.mkdir()
    shutil.copy(ASSETS / "testall_ids.txt", ids_dir / "testall_ids.txt")
    return tmp, sims, owner, ref, ids_dir


def test_json_captions_map_to_the_karpathy_caption_ids(coco5k):
    tmp, sims, owner, ref, ids_dir = coco5k
    assert sims.shape == (5000, 25010)
    spec = SplitSpec(tmp, "test", "coco", test_split=True, protocols=("eccv", "cxc"), layout="cusa_json")
    got = evaluate_matrix(sims, owner, spec, EvalSettings(bootstrap=0)).metrics
    want = compute_protocol("eccv", ref, bootstrap=0, ids_dir=ids_dir)
    for direction in ("i2t", "t2i"):
        for key, value in want[direction].items():
            if isinstance(value, float):
                assert got["eccv"][direction][key] == pytest.approx(value, abs=1e-9), (direction, key)
    want_cxc = compute_protocol("cxc", ref, bootstrap=0, ids_dir=ids_dir)
    assert got["cxc"]["i2t"]["cxc_r1"] == pytest.approx(want_cxc["i2t"]["cxc_r1"], abs=1e-9)
    assert "coco5k" not in got  # only what the spec asked for (plus recall)
    assert got["recall"]["t2i"]["queries"] == 25010


def test_names_and_mismatches_are_explained():
    assert coco_image_id("COCO_val2014_000000391895.jpg") == 391895
    assert coco_image_id("./pics/391895.jpg") == 391895 and coco_image_id("cat.png") is None
    assert text_key("A man's bike, red.") == text_key("a man 's bike , red .")
    why = coco_ids_of_columns(["COCO_val2014_000000391895.jpg"], np.zeros(1, np.int64), ["a caption"])
    assert isinstance(why, str) and "not the 5000 COCO 5K test images" in why


def test_the_cusa_example_split_matches_its_karpathy_captions():
    """CUSA's own example test json (201 COCO 5K images): all but its extra captions find their caption id."""
    rows = json.loads((Path(__file__).parent / "data" / "cusa" / "new_test.json").read_text())
    texts = (ASSETS / "testall_caps.txt").read_text().splitlines()
    images = [int(x) for x in (ASSETS / "testall_ids.txt").read_text().split()]
    table = {(i, text_key(t)) for i, t in zip(images, texts)}  # (duplicate texts of an image count once here)
    hits = sum((coco_image_id(r["image_id"]), text_key(r["caption"])) in table for r in rows)
    assert hits == len(rows) - 1  # the one image with a sixth caption
