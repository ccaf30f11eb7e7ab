"""Robustness passes: --perturb parsing, drop and summary arithmetic, image corruptions, and `evaluate
--perturb` end to end (official-format stub checkpoint: text; region features: image not defined; zero-shot
CLIP on the demo images: image)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from stub_method import write_checkpoint, write_split
from test_rehearsals import HERE, stub_lab

from harness.cli.app import main
from harness.eval.perturb.image import IMAGE_CORRUPTIONS, corrupt
from harness.eval.perturb.seeding import item_rng
from harness.eval.perturb.spec import PerturbError, parse_perturb
from harness.eval.robustness import PRECOMPUTED, compare, summarise


def test_parse_perturb_groups_names_and_severities():
    assert [p.key for p in parse_perturb("keyboard@1,zoom_blur")] == ["keyboard@1", "zoom_blur@3"]
    assert [p.key for p in parse_perturb("ocr@all")] == [f"ocr@{s}" for s in range(1, 6)]
    text = parse_perturb("text")
    assert len(text) >= 10 and {p.modality for p in text} == {"text"}
    assert {p.modality for p in parse_perturb("image@5")} == {"image"}
    assert len(parse_perturb("keyboard,keyboard@3")) == 1
    with pytest.raises(PerturbError, match="did you mean keyboard"):
        parse_perturb("keybord@2")
    with pytest.raises(PerturbError, match="severity '7' is not 1-5"):
        parse_perturb("ocr@7")


def test_drop_relative_drop_and_mmi():
    clean = {"i2t": {"r1": 50.0, "r5": 80.0, "r10": 90.0}, "t2i": {"r1": 40.0, "r5": 70.0, "r10": 80.0}, "rsum": 410.0}
    pert = {"i2t": {"r1": 25.0, "r5": 80.0, "r10": 90.0}, "t2i": {"r1": 40.0, "r5": 35.0, "r10": 80.0}, "rsum": 350.0}
    c = compare(clean, pert)
    assert c["drop"]["i2t.r1"] == 25.0 and c["drop"]["t2i.r5"] == 35.0 and c["drop"]["rsum"] == 60.0
    assert c["relative_drop"] == pytest.approx(60 / 410)
    assert c["mmi"] == pytest.approx((0.5 + 0.5) / 6)
    rows = {"a@1": {"modality": "text", **c}, "b@1": {"modality": "text", "relative_drop": 0.0, "mmi": 0.0},
            "c@1": {"modality": "image", "defined": False, "reason": "x"}}
    s = summarise(rows)
    assert s["text"]["perturbations"] == 2 and s["text"]["worst"] == "a@1"
    assert s["text"]["mean_relative_drop"] == pytest.approx(30 / 410) and "image" not in s


@pytest.mark.parametrize("name", sorted(IMAGE_CORRUPTIONS))
def test_image_corruptions_are_seeded_and_keep_the_size(name):
    yy, xx = np.mgrid[0:40, 0:48]
    im = Image.fromarray(np.stack([xx * 5, yy * 6, (xx + yy) * 2], -1).astype(np.uint8))
    outs = [np.asarray(corrupt(im, name, s, item_rng(0, name, s, 0)), dtype=float) for s in (1, 5)]
    again = np.asarray(corrupt(im, name, 5, item_rng(0, name, 5, 0)), dtype=float)
    assert outs[1].shape == (40, 48, 3) and np.array_equal(outs[1], again)
    change = [np.abs(o - np.asarray(im, dtype=float)).mean() for o in outs]
    assert change[1] > 0
    if name != "saturate":  # ImageNet-C's saturate first desaturates (1-2), then oversaturates (3-5)
        assert change[0] < change[1], change


@pytest.fixture
def lab(tmp_path, monkeypatch):
    _, reg, ck = stub_lab(tmp_path, monkeypatch)
    write_split(tmp_path / "data" / "f30k" / "precomp", "test", 60)
    return tmp_path, reg, ck


def _evaluate(tmp, reg, ck, out, *extra) -> dict:
    code = main(["evaluate", "--registry", str(reg), "--method", "stub", "--variant", "a", "--checkpoint", str(ck),
                 "--data-root", str(tmp / "data"), "--dataset", "f30k", "--split", "test", "--recall-only",
                 "--save-sims", str(tmp / out / "sims.npy"), "--json", str(tmp / out / "metrics.json"), *extra])
    assert code == 0
    return json.loads((tmp / out / "metrics.json").read_text())


def test_evaluate_perturb_text_reports_recall_and_drop_identically_twice(lab):
    tmp, reg, ck = lab
    first = _evaluate(tmp, reg, ck, "a", "--perturb", "text")["robustness"]
    second = _evaluate(tmp, reg, ck, "b", "--perturb", "text")["robustness"]
    assert first == second
    done = {k: r for k, r in first["perturbations"].items() if r.get("defined", True)}
    assert len(done) >= 10
    clean = first["clean"]
    for r in done.values():
        assert set(r["i2t"]) == set(r["t2i"]) == {"r1", "r5", "r10"}
        assert r["drop"]["rsum"] == pytest.approx(clean["rsum"] - r["rsum"])
    assert max(r["drop"]["rsum"] for r in done.values()) > 0  # the stub's caption vectors follow the text
    assert first["summary"]["text"]["perturbations"] == len(done)
    other = _evaluate(tmp, reg, ck, "c", "--perturb", "keyboard@5", "--perturb-seed", "1")["robustness"]
    assert other["seed"] == 1 and other["perturbations"]["keyboard@5"] != first["perturbations"].get("keyboard@5")


def test_image_perturbation_of_region_features_is_not_defined(lab):
    tmp, reg, ck = lab
    rec = _evaluate(tmp, reg, ck, "a", "--perturb", "gaussian_noise@2,zoom_blur")["robustness"]
    for r in rec["perturbations"].values():
        assert r["defined"] is False and r["reason"] == PRECOMPUTED
    assert rec["summary"] == {}


def test_bad_perturb_value_fails_before_loading(lab, capsys):
    tmp, reg, ck = lab
    code = main(["evaluate", "--registry", str(reg), "--method", "stub", "--variant", "a", "--checkpoint", str(ck),
                 "--data-root", str(tmp / "data"), "--dataset", "f30k", "--perturb", "zoomblur"])
    assert code == 2 and "did you mean zoom_blur" in capsys.readouterr().err


def _run(tmp, reg, *extra) -> int:
    return main(["run", "--registry", str(reg), "--methods", "stub", "--dataset", "mine", "--stage", "evaluate",
                 "--data-root", str(tmp / "data"), "--checkpoint-dir", str(tmp / "checkpoints"),
                 "--results", str(tmp / "results"), "--reports", str(tmp / "reports"), *extra])


def test_run_perturb_adds_a_robustness_job_and_a_report_section(lab):
    from plan_helpers import plan_of

    from harness.run.robust_plan import add_robustness_jobs
    from harness.spec.registry import load_registry

    tmp, reg, _ = lab
    write_split(tmp / "data" / "mine" / "precomp", "test", 30)
    write_checkpoint(tmp / "checkpoints" / "stub" / "a" / "mine" / "stub.pth")
    assert _run(tmp, reg, "--perturb", "keyboard@5,word_delete@2,gaussian_noise") == 0
    folder = tmp / "results" / "mine" / "stub-a-official"
    robust = json.loads((folder / "robust" / "metrics.json").read_text())
    assert robust["stage"] == "robust" and robust["clean_matrix"] == "stored"  # its evaluation's matrix, reused
    assert list(robust["robustness"]["perturbations"]) == ["keyboard@5", "word_delete@2", "gaussian_noise@3"]
    clean = json.loads((folder / "eval" / "metrics.json").read_text())["protocols"]["recall"]["rsum"]
    assert robust["robustness"]["clean"]["rsum"] == pytest.approx(clean)  # the same model, the same clean matrix
    assert not (folder / "robust" / "sims.npy").exists()
    text = (tmp / "reports" / "mine.md").read_text()
    assert "## Robustness" in text and "`keyboard@5`" in text and PRECOMPUTED in text
    assert (tmp / "reports" / "plots" / "mine-robustness.png").is_file()
    assert text.count("stub/a") >= 1 and "| stub/a (official, perturbation seed 0)" in text

    registry = load_registry(str(reg))
    def keys(spec: str, seed: int) -> dict[str, str]:
        plan = plan_of(registry, ["stub"], "mine", stage="evaluate", checkpoint_dir=tmp / "checkpoints",
                          data_root=tmp / "data")
        add_robustness_jobs(plan, spec, seed)
        return {j.name: j.key for j in plan.jobs}
    base = keys("keyboard@5", 0)
    assert base["mine/stub-a-official/robust"] != keys("keyboard@5", 1)["mine/stub-a-official/robust"]
    assert base["mine/stub-a-official/robust"] != keys("keyboard@4", 0)["mine/stub-a-official/robust"]
    assert base["mine/stub-a-official/eval"] == keys("ocr@1", 3)["mine/stub-a-official/eval"]  # clean job untouched
    assert _run(tmp, reg, "--perturb", "keyboard@5,word_delete@2,gaussian_noise") == 0  # cached: same numbers
    assert json.loads((folder / "robust" / "metrics.json").read_text()) == robust


def test_evaluate_perturb_text_on_an_official_esa_checkpoint(tmp_path, one_thread):
    import torch

    from methods.esa import ESAAdapter

    options = dict(embed_size=32, img_dim=48, word_dim=8)
    torch.manual_seed(0)
    ck = tmp_path / "model_best.pth"
    torch.save(ESAAdapter.build("bigru", "coco", options).official_checkpoint(epoch=2), ck)
    folder = tmp_path / "data" / "coco" / "precomp"
    folder.mkdir(parents=True)
    captions = (HERE.parent / "harness" / "assets" / "coco5k" / "testall_caps.txt").read_text().splitlines()[:60]
    (folder / "test_caps.txt").write_text("\n".join(captions) + "\n")
    np.save(folder / "test_ims.npy", np.random.default_rng(0).standard_normal((12, 4, 48)).astype(np.float32))
    records = []
    for out in ("a", "b"):
        code = main(["evaluate", "--method", "esa", "--variant", "bigru", "--checkpoint", str(ck), "--dataset", "coco",
                     "--split", "test", "--data-root", str(tmp_path / "data"), "--recall-only", "--perturb", "text",
                     "--save-sims", str(tmp_path / out / "sims.npy"), "--json", str(tmp_path / out / "m.json")])
        assert code == 0
        records.append(json.loads((tmp_path / out / "m.json").read_text())["robustness"])
    assert records[0] == records[1]
    done = {k: r for k, r in records[0]["perturbations"].items() if r.get("defined", True)}
    assert len(done) >= 10 and {r["level"] for r in done.values()} == {"character", "word", "sentence"}
    assert len({r["rsum"] for r in done.values()} | {records[0]["clean"]["rsum"]}) > 1  # the text side changed
