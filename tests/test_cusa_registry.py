"""The CUSA registry fragment: recipes from the released configs, every appendix number, demo recipe."""

from __future__ import annotations

import pytest

from harness.spec.registry import load_registry
from methods.cusa.adapter import CUSAAdapter


def test_recipes_follow_the_released_configs():
    m = load_registry().method("cusa")
    assert set(m.variants) == {"vitb32", "vitl14_336", "paper_only"}
    b32 = m.recipe("vitb32", "coco")
    assert (b32["epochs"], b32["batch_size"], b32["lr"]) == (30, 128, 1e-5)
    assert (b32["min_lr"], b32["weight_decay"]) == (1e-6, 1e-4)
    assert (b32["tau"], b32["cross_tau"], b32["csa_weight"], b32["usa_weight"]) == (0.05, 0.45, 0.1, 0.5)
    assert m.recipe("vitb32", "f30k")["epochs"] == 40
    l14 = m.recipe("vitl14_336", "f30k")
    assert (l14["batch_size"], l14["batch_size_test"], l14["epochs"]) == (16, 32, 40)
    for variant in ("vitb32", "vitl14_336"):
        for ds in ("coco", "f30k"):
            ck = m.variant(variant).checkpoints[ds]
            assert ck.url.startswith("https://drive.google.com/drive/folders/") and ck.files == ("checkpoint_best.pth",)


def test_every_appendix_table_is_reported():
    reps = load_registry().reported_for("cusa")
    assert len(reps) == 138
    by_table = {t: [r for r in reps if r.table == t] for t in ("Table 8", "Table 9", "Table 10", "Table 11")}
    assert [len(v) for v in by_table.values()] == [68, 24, 23, 23]
    for r in by_table["Table 8"]:
        recalls = [r.values[f"{d}.r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
        assert abs(sum(recalls) - r.values["rsum"]) <= 0.3, r.label
    main = {(r.variant, r.setting["objective"], r.dataset): r.values for r in by_table["Table 8"]
            if r.variant != "paper_only"}
    assert len(main) == 16  # 2 backbones x 4 objectives x 2 datasets
    assert main[("vitl14_336", "cusa", "coco")]["i2t.r1"] == 67.9
    assert main[("vitb32", "only_contrastive", "f30k")]["rsum"] == 520.0
    sts = {r.label: r.values for r in by_table["Table 11"]}
    assert sts["CLIP ViT-B/32 + CUSA"]["sts.avg"] == 73.2 and set(sts["CLIP ViT-B/32 + CUSA"]) == {
        f"sts.{k}" for k in ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr", "avg")}
    eccv = {r.label: r for r in by_table["Table 9"]}["CLIP ViT-L/14@336px + CUSA"]
    assert (eccv.protocol, eccv.values["t2i.eccv_map_at_r"], eccv.values["i2t.eccv_r1"]) == ("eccv", 47.6, 80.9)
    assert {r.protocol for r in by_table["Table 10"]} == {"image_retrieval"}


def test_clip_rows_of_tables_9_to_11_are_on_the_coco_protocols_that_compute_them():
    """ECCV Caption, STS and image retrieval rows are of models trained on COCO: COCO declares the protocols
    (the loader checks it), and each CLIP row names the objective it describes (8 ECCV rows, 48 numbers)."""
    reg = load_registry()
    clip = [r for r in reg.reported_for("cusa") if r.variant != "paper_only"
            and r.protocol in ("eccv", "sts", "image_retrieval")]
    assert {r.dataset for r in clip} == {"coco"}
    assert {"eccv", "sts", "image_retrieval"} <= set(reg.dataset("coco").protocols)
    eccv = [r for r in clip if r.protocol == "eccv"]
    assert len(eccv) == 8 and sum(len(r.values) for r in eccv) == 48
    assert all(r.setting.get("objective") in ("cusa", "only_contrastive", "csa", "usa") for r in clip)


def test_paper_only_variant_cannot_be_built():
    with pytest.raises(ValueError, match="reported numbers only"):
        CUSAAdapter.build("paper_only", "coco", {"reported_only": True})


def test_demo_recipe_trains_a_tiny_clip():
    m = load_registry().method("cusa")
    adapter = CUSAAdapter.build("vitb32", "demo", dict(m.variant("vitb32").options))
    assert adapter.model.image_size == 224
    recipe = {**m.recipe("vitb32", "demo"), "objective": "only_contrastive"}
    assert recipe["from_scratch"] is True  # the demo's tiny CLIP has no pretrained weights
    setup = adapter.configure_training(recipe)
    assert adapter.model.image_size == 32 and adapter.objective == "only_contrastive"
    assert sum(p.numel() for p in adapter.model.parameters()) < 5_000_000
    params = {id(p) for g in setup.optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in adapter.model.parameters() if p.requires_grad}
    assert adapter.preprocess.transforms[1].size == (32, 32)
