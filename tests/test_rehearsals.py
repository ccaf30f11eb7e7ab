"""Rehearsals at real shapes with a stub method (fixed random embeddings): every command end to end on
Flickr30K test (1000 x 5000), COCO 5K (5000 x 25,000 with Karpathy ids: 5-fold 1K, 5K, ECCV Caption, CxC),
trimmed subsets, CUSA's uneven COCO test captions (25,010) and a custom dataset from a user's registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from stub_method import write_checkpoint, write_split

from harness.cli.app import main

HERE = Path(__file__).parent
IDS = HERE / "data" / "karpathy" / "coco" / "testall_ids.txt"


def user_registry(path: Path, extra: dict | None = None) -> Path:
    doc = {"methods": {"stub": {
        "title": "Stub (fixed random embeddings)", "adapter": "stub_method:StubAdapter",
        "recipes": {"default": {"epochs": 1}},
        "variants": {"a": {"description": "the stub", "options": {"img_dim": 8},
                           "checkpoints": {d: {"url": "https://example.org/stub", "files": ["stub.pth"]}
                                           for d in ("coco", "f30k", "mine")}}},
        "reported": [{"variant": "a", "dataset": "f30k", "protocol": "f30k1k", "source": "rehearsal",
                      "values": {"i2t.r1": 1.0, "rsum": 10.0}}]}},
        "datasets": {"mine": {"description": "a user's own dataset", "split": "test", "protocols": ["recall"],
                              "images": None, "captions_per_image": 5, "layout": "precomp",
                              "feature_dim": 8}}}
    path.write_text(yaml.safe_dump({**doc, **(extra or {})}, sort_keys=False))
    return path


def stub_lab(tmp_path: Path, monkeypatch) -> tuple[Path, Path, Path]:
    """(folder, user registry, stub checkpoint): the working folder of a stub-method test, its current directory."""
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.chdir(tmp_path)
    return tmp_path, user_registry(tmp_path / "mine.yaml"), write_checkpoint(tmp_path / "stub.pth")


@pytest.fixture
def lab(tmp_path, monkeypatch):
    return stub_lab(tmp_path, monkeypatch)


def _evaluate(reg: Path, ck: Path, root: Path, dataset: str, out: Path, *extra: str) -> tuple[int, dict]:
    code = main(["evaluate", "--registry", str(reg), "--method", "stub", "--variant", "a", "--checkpoint", str(ck),
                 "--data-root", str(root), "--dataset", dataset, "--save-sims", str(out / "sims.npy"),
                 "--json", str(out / "metrics.json"), *extra])
    return code, json.loads((out / "metrics.json").read_text())["metrics"] if (out / "metrics.json").is_file() else {}


def test_flickr30k_full_and_trimmed(lab):
    tmp, reg, ck = lab
    write_split(tmp / "data" / "f30k" / "precomp", "test", 1000)
    code, m = _evaluate(reg, ck, tmp / "data", "f30k", tmp / "full")
    assert code == 0 and m["f30k1k"]["rsum"] == pytest.approx(m["recall"]["rsum"])
    assert np.load(tmp / "full" / "sims.npy").shape == (1000, 5000)

    # a trimmed copy of the test split: recall only, the others "not defined", the matrix saved, exit 0
    trimmed = tmp / "trim" / "f30k" / "precomp"
    write_split(trimmed, "test", 4)
    code, m = _evaluate(reg, ck, tmp / "trim", "f30k", tmp / "small")
    assert code == 0 and m["recall"]["rsum"] > 0
    assert m["f30k1k"] == {"defined": False, "reason": m["f30k1k"]["reason"]}
    assert "needs 1000 images, this matrix has 4" in m["f30k1k"]["reason"]
    assert np.load(tmp / "small" / "sims.npy").shape == (4, 20)
    assert np.array_equal(np.load(tmp / "small" / "image_of_caption.npy"), np.arange(20) // 5)

    # metrics on the saved matrices; check-data and report run at this shape too
    assert main(["metrics", "--sims", str(tmp / "full" / "sims.npy"), "--protocol", "f30k1k",
                 "--json", str(tmp / "f.json"), "--bootstrap", "0"]) == 0
    assert main(["check-data", "--registry", str(reg), "--dataset", "mine", "--data-root", str(tmp / "data")]) == 1

    # imported: the user's matrix, and a paper's (the official code's own output) beside it, with paired tests
    full = np.load(tmp / "full" / "sims.npy")
    truth = np.arange(5000)[None, :] // 5 == np.arange(1000)[:, None]
    np.save(tmp / "esa.npy", (full + 2.0 * truth).astype(np.float32))  # a far better model than the stub
    for method, path in (("stub/a", tmp / "full" / "sims.npy"), ("esa/bigru", tmp / "esa.npy")):
        assert main(["import", "--registry", str(reg), "--sims", str(path), "--method", method, "--dataset", "f30k",
                     "--results", str(tmp / "res")]) == 0
    assert main(["report", "--registry", str(reg), "--results", str(tmp / "res"), "--reports", str(tmp / "rep")]) == 0
    f30k = (tmp / "rep" / "f30k.md").read_text()
    section = f30k[f30k.index("## Flickr30K 1K (`f30k1k`)"):f30k.index("## recall over")]
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in section.splitlines() if ln.startswith(("| stub/a", "| esa/"))}
    assert set(rows) == {"stub/a", "esa/bigru"}
    assert "| best |" in rows["esa/bigru"] and "imported matrix: esa.npy" in rows["esa/bigru"]
    assert "| ≤0.001 |" in rows["stub/a"] and "| rehearsal |" in rows["stub/a"]  # its own reported row
    esa_rsum = json.loads((tmp / "res" / "f30k" / "esa-bigru-imported" / "eval" / "metrics.json").read_text())
    esa_rsum = esa_rsum["protocols"]["f30k1k"]["rsum"]
    assert f"{esa_rsum:.1f} (" in (tmp / "rep" / "esa.md").read_text()  # the paper's cells, beside its numbers


def test_coco5k_with_karpathy_ids_runs_every_protocol(lab):
    tmp, reg, ck = lab
    folder = write_split(tmp / "data" / "coco" / "precomp", "testall", 5000)
    shutil.copy(IDS, folder / "testall_ids.txt")
    code, m = _evaluate(reg, ck, tmp / "data", "coco", tmp / "out")
    assert code == 0
    assert set(m) == {"recall", "coco1k", "coco5k", "eccv", "cxc", "sts", "image_retrieval"}
    assert m["coco5k"]["rsum"] == pytest.approx(m["recall"]["rsum"])
    assert len(m["coco1k"]["folds"]) == 5
    assert m["eccv"]["i2t"]["eccv_r1"] >= 0 and m["eccv"]["ids"]["source"].endswith("testall_ids.txt + "
                                                                                       "eccv_caption caption order")
    assert m["cxc"]["t2t"]["cxc_r1"] >= 0  # the stub is an embedding method: uni-modal spaces exist
    assert "SentEval" in m["sts"]["reason"] and "--data-folder image_retrieval=" in m["image_retrieval"]["reason"]

    # the same matrix through `metrics`, and a COCO subset: only full-split recall applies
    assert main(["metrics", "--sims", str(tmp / "out" / "sims.npy"), "--protocol", "eccv",
                 "--data-root", str(folder), "--json", str(tmp / "e.json"), "--bootstrap", "0"]) == 0
    assert json.loads((tmp / "e.json").read_text())["i2t"]["eccv_r1"] == pytest.approx(m["eccv"]["i2t"]["eccv_r1"])
    write_split(tmp / "sub" / "coco" / "precomp", "testall", 50)
    code, sub = _evaluate(reg, ck, tmp / "sub", "coco", tmp / "subout")
    assert code == 0 and all(not v.get("defined", True) for k, v in sub.items() if k != "recall")


def test_cusa_uneven_captions_through_evaluate_import_metrics_and_report(lab):
    tmp, reg, ck = lab
    counts = np.full(5000, 5)
    counts[:10] = 6  # 25,010 captions, as CUSA's COCO test json
    owner = np.repeat(np.arange(5000), counts)
    write_split(tmp / "data" / "coco" / "precomp", "testall", 5000, owner=owner)
    code, m = _evaluate(reg, ck, tmp / "data", "coco", tmp / "out")
    assert code == 0 and m["coco5k"]["t2i"]["queries"] == 25010
    assert "uneven" in m["coco1k"]["reason"]
    saved_owner = tmp / "out" / "image_of_caption.npy"
    assert np.array_equal(np.load(saved_owner), owner)
    assert main(["metrics", "--sims", str(tmp / "out" / "sims.npy"), "--protocol", "coco5k", "--bootstrap", "0",
                 "--json", str(tmp / "c.json")]) == 0  # finds the mapping beside the matrix
    assert json.loads((tmp / "c.json").read_text())["rsum"] == pytest.approx(m["coco5k"]["rsum"])

    # imported twice (two "labs") and reported with paired significance tests on uneven captions
    sims = np.load(tmp / "out" / "sims.npy")
    np.save(tmp / "other.npy", sims + np.random.default_rng(1).normal(0, 0.05, sims.shape).astype(np.float32))
    for label, path in (("ours", tmp / "out" / "sims.npy"), ("theirs", tmp / "other.npy")):
        assert main(["import", "--registry", str(reg), "--sims", str(path), "--method", "stub/a", "--dataset", "coco",
                     "--image-of-caption", str(saved_owner), "--label", label, "--results", str(tmp / "res")]) == 0
    assert main(["report", "--registry", str(reg), "--results", str(tmp / "res"), "--reports",
                 str(tmp / "rep")]) == 0
    text = (tmp / "rep" / "coco.md").read_text()
    assert "stub" in text and "imported" in text


def test_custom_dataset_from_a_user_registry_through_run_and_report(lab):
    tmp, reg, ck = lab
    write_split(tmp / "data" / "mine" / "precomp", "test", 30)
    write_checkpoint(tmp / "checkpoints" / "stub" / "a" / "mine" / "stub.pth")
    args = ["run", "--registry", str(reg), "--methods", "stub", "--dataset", "mine", "--stage", "evaluate",
            "--data-root", str(tmp / "data"), "--checkpoint-dir", str(tmp / "checkpoints"),
            "--results", str(tmp / "results"), "--reports", str(tmp / "reports")]
    assert main(args) == 0
    metrics = json.loads((tmp / "results" / "mine" / "stub-a-official" / "eval" / "metrics.json").read_text())
    assert set(metrics["protocols"]) == {"recall"} and metrics["shape"] == [30, 150]
    assert (tmp / "results" / "mine" / "stub-a-official" / "eval" / "image_of_caption.npy").is_file()
    assert (tmp / "reports" / "mine.md").is_file()
    assert main(["check-data", "--registry", str(reg), "--dataset", "mine", "--data-root", str(tmp / "data")]) == 0
