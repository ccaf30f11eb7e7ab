"""Registry loading, validation errors and nearest-name suggestions."""

import copy
import re

import pytest
import yaml

from harness.spec.registry import REGISTRY_PATH, RegistryError, load_registry, merge_documents, parse_registry

MINIMAL = {
    "datasets": {"coco": {"split": "testall", "protocols": ["coco1k", "coco5k"]}},
    "methods": {"esa": {"title": "ESA", "adapter": "methods.esa.adapter:ESAAdapter",
                        "recipes": {"default": {"epochs": 25}, "coco": {"lr": 1e-3}},
                        "variants": {"bigru": {"options": {"text": "bigru"}, "recipes": {"coco": {"lr": 5e-4}}},
                                     "esa_star": {"members": ["bigru", "bigru"]}}}},
    "reported": [{"method": "esa", "variant": "bigru", "dataset": "coco", "protocol": "coco5k", "source": "Table II",
                  "values": {"i2t.r1": 58.2, "rsum": 429.6}}],
}


def test_project_registry_loads_every_method_and_variant():
    reg = load_registry()
    assert {"esa"} <= set(reg.methods)
    assert {"bigru", "bert", "esa_star"} <= set(reg.method("esa").variants)
    assert reg.method("esa").variant("esa_star").members == ("bigru", "bigru")
    for rep in reg.reported:
        assert rep.source, rep
        assert rep.values
    # every reported rsum equals the sum of its printed recalls up to rounding (two known 0.1 cases)
    for rep in reg.reported_for("esa"):
        vals = rep.values
        keys = [f"{d}.r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
        if all(vals.get(k) is not None for k in keys) and vals.get("rsum") is not None:
            assert abs(sum(vals[k] for k in keys) - vals["rsum"]) <= 0.11 + 1e-9, rep


def test_recipe_merging_order():
    reg = parse_registry(MINIMAL)
    assert reg.method("esa").recipe("bigru", "coco") == {"epochs": 25, "lr": 5e-4}


@pytest.mark.parametrize("kind,call,suggest", [
    ("method", lambda r: r.method("esaa"), "esa"),
    ("dataset", lambda r: r.dataset("cocoo"), "coco"),
    ("variant", lambda r: r.method("esa").variant("bigr"), "bigru"),
])
def test_unknown_names_list_valid_ones_and_suggest(kind, call, suggest):
    reg = parse_registry(MINIMAL)
    with pytest.raises(RegistryError) as err:
        call(reg)
    msg = str(err.value)
    assert f"unknown {kind}" in msg and "valid:" in msg and f"Did you mean '{suggest}'" in msg


@pytest.mark.parametrize("mutate,fragment", [
    (lambda d: d["reported"][0].update(variant="bert"), "unknown variant 'bert'"),
    (lambda d: d["reported"][0].update(protocol="coco2k"), "unknown protocol 'coco2k'"),
    (lambda d: d["reported"][0].update(values={"rsum": "n/a"}), "expected a number"),
    (lambda d: d["reported"][0].pop("source"), "missing required field 'source'"),
    (lambda d: d["methods"]["esa"]["variants"]["esa_star"].update(members=["gru"]), "unknown variant 'gru'"),
    (lambda d: d["methods"]["esa"]["recipes"].update(f30k={}), "unknown dataset 'f30k'"),
    (lambda d: d["datasets"]["coco"].update(protocols=["coco3k"]), "unknown protocol 'coco3k'"),
])
def test_invalid_documents_are_rejected_with_the_place(mutate, fragment):
    doc = copy.deepcopy(MINIMAL)
    mutate(doc)
    with pytest.raises(RegistryError, match=fragment):
        parse_registry(doc)


def test_merge_rejects_duplicate_names_naming_both_files():
    with pytest.raises(RegistryError, match="methods.esa is defined in a.yaml and again in b.yaml"):
        merge_documents([("a.yaml", {"methods": {"esa": {}}}), ("b.yaml", {"methods": {"esa": {}}})])


def test_user_file_layers_on_top_of_the_project_registry(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text(yaml.safe_dump({"datasets": {"mine": {"split": "test", "protocols": ["recall"]}}}))
    reg = load_registry(extra)
    assert "mine" in reg.datasets and "esa" in reg.methods
    extra.write_text(yaml.safe_dump({"datasets": {"coco": {"split": "test", "protocols": ["recall"]}}}))
    with pytest.raises(RegistryError,
                       match=r"datasets.coco is defined in .*registry.yaml:9 and again in .*mine.yaml:2"):
        load_registry(extra)


def test_each_paper_section_holds_its_reported_rows():
    raw = yaml.safe_load(REGISTRY_PATH.read_text())
    assert set(raw) == {"datasets", "methods"}
    papers = {name for name, body in raw["methods"].items() if not body.get("baseline")}  # baselines report none
    for name in papers:
        body = raw["methods"][name]
        assert body["reported"], name
        assert all("method" not in row for row in body["reported"])
    assert {r.method for r in load_registry().reported} == papers


def test_yaml_syntax_error_names_file(tmp_path):
    from harness.spec.registry import load_registry_file

    bad = tmp_path / "registry.yaml"
    bad.write_text("datasets: {}\nmethods:\n  x: [unclosed\n")
    with pytest.raises(RegistryError, match=re.escape(str(bad)) + r":\d+: not valid YAML"):
        load_registry_file(bad)
    good = tmp_path / "ok.yaml"
    good.write_text(yaml.safe_dump(MINIMAL))
    assert "esa" in load_registry_file(good).methods


# ---- reported rows: what they describe, where they belong, how they were printed -------------------------

@pytest.mark.parametrize("mutate,fragment", [
    (lambda d: d["reported"][0].update(protocol="coco1k", dataset="f30k"),
     r"protocol 'coco1k' is not one of dataset 'f30k's protocols \(f30k1k\); it belongs to dataset 'coco'"),
    (lambda d: d["reported"][0].update(protocol="eccv"), "protocol 'eccv' is not one of .*no dataset declares it"),
    (lambda d: d["reported"][0].update({"BERT-base)": None}), r"unknown key 'BERT-base\)'.*quote a label"),
    (lambda d: d["reported"][0].update(decimals={"i2t.r2": 2}), "unknown metric 'i2t.r2'"),
    (lambda d: d["reported"][0].update(decimals=True), "'decimals' is the number of decimals"),
    (lambda d: d["reported"][0].update(decimals={"rsum": 9}), "decimals of 'rsum' is 9"),
    (lambda d: d["reported"][0].update(derived=["rsum2"]), "unknown metric 'rsum2'"),
    (lambda d: d["reported"][0].update(setting={"members": "bret"}), "unknown members 'bret'.*Did you mean 'bert'"),
    (lambda d: d["methods"]["esa"].update(settings={"loss": 3}), "expected a list of allowed values"),
    (lambda d: d["methods"]["esa"].update(settings={"loss": {"vsl": 1}}), "the recipe values it stands for"),
])
def test_invalid_reported_rows_are_rejected_naming_the_fix(mutate, fragment):
    doc = copy.deepcopy(MINIMAL)
    doc["datasets"]["f30k"] = {"split": "test", "protocols": ["f30k1k"]}
    doc["methods"]["esa"]["settings"] = {"members": ["bigru", "bert"]}
    mutate(doc)
    with pytest.raises(RegistryError, match=fragment):
        parse_registry(doc)


def test_reported_row_precision_derived_keys_and_setting_kinds():
    doc = copy.deepcopy(MINIMAL)
    doc["methods"]["esa"]["settings"] = {"loss": {"vsl": {"vsl": True}, "ts": None}, "batch_size": [32, 128],
                                         "epoch": None}
    doc["reported"][0].update(decimals={"i2t.r1": 2}, derived=["rsum"], table_note="heading contradicts numbers",
                              setting={"epoch": 17, "loss": "ts", "batch_size": 32})
    reg = parse_registry(doc)
    rep = reg.reported[0]
    assert rep.places("i2t.r1") == 2 and rep.places("rsum") == 1
    assert rep.derived == ("rsum",) and rep.table_note == "heading contradicts numbers"
    method = reg.method("esa")
    assert method.settings == {"loss": ("vsl", "ts"), "batch_size": (32, 128), "epoch": ()}
    assert method.setting_recipes == {"loss": {"vsl": {"vsl": True}, "ts": None}}
    doc["reported"][0]["decimals"] = 0
    assert parse_registry(doc).reported[0].places("rsum") == 0


def test_every_rounding_difference_of_a_reported_rsum_has_its_note():
    """A printed rsum that differs from the sum of the row's printed recalls says so beside the row."""
    keys = [f"{d}.r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
    for rep in load_registry().reported:
        vals = rep.values
        if not all(vals.get(k) is not None for k in keys) or vals.get("rsum") is None:
            continue
        total = round(sum(vals[k] for k in keys), 1)
        if "rsum" in rep.derived:
            assert total == pytest.approx(vals["rsum"]), rep.label
        elif abs(total - vals["rsum"]) > 0.05:
            assert f"sum to {total:.1f}" in rep.note, (rep.method, rep.table, rep.label, rep.note)


def test_vsl_log_rows_carry_ranks_and_checkpoint_epochs():
    rows = [r for r in load_registry().reported_for("vsl") if r.source.startswith("log ")]
    assert len(rows) == 12
    for rep in rows:
        for key in ("i2t.medr", "i2t.meanr", "t2i.medr", "t2i.meanr"):
            assert rep.values.get(key) is not None, (rep.label, key)
        if "checkpoint epoch" in rep.label:
            epoch = int(rep.label.rsplit("checkpoint epoch ", 1)[1].rstrip(")"))
            assert rep.setting.get("epoch") == epoch, rep.label
    readme = [r for r in load_registry().reported_for("vsl") if r.source == "README"]
    assert readme and all(r.derived == ("rsum",) for r in readme)  # the README prints no rsum


def test_every_reported_protocol_is_declared_by_its_dataset():
    reg = load_registry()
    for rep in reg.reported:
        assert rep.protocol in reg.dataset(rep.dataset).protocols, rep


def test_recipes_and_options_are_plain_data_a_safe_loader_reads_back(tmp_path):
    """Training writes a variant's options and recipe into its checkpoints (the official `opt`); what the registry
    hands out must be plain dicts and lists (the loader's line-numbered dicts are not), or the weights-only loader
    refuses the checkpoint the harness itself wrote (ESL / X-Dim / CUSA demo recipes hold nested mappings)."""
    import torch

    from harness.core.checkpoints import load_container

    reg = load_registry()
    for m in reg.methods.values():
        for name, v in m.variants.items():
            for ds in reg.datasets:
                box = {"opt": m.recipe(name, ds), "options": v.options}
                path = tmp_path / f"{m.name}-{name}-{ds}.pth"
                torch.save(box, path)
                assert load_container(path) == box, (m.name, name, ds)
    assert any(isinstance(x, dict) for m in reg.methods.values() for x in m.recipe(next(iter(m.variants)),
                                                                                      "demo").values())
