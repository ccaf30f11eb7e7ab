"""Registry loading, validation errors and nearest-name suggestions."""

import copy
import re

import pytest
import yaml

from harness.registry import REGISTRY_PATH, RegistryError, load_registry, merge_documents, parse_registry

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
    with pytest.raises(RegistryError, match=r"datasets.coco is defined in .*registry.yaml and again in .*mine.yaml"):
        load_registry(extra)


def test_each_paper_section_holds_its_reported_rows():
    raw = yaml.safe_load(REGISTRY_PATH.read_text())
    assert set(raw) == {"datasets", "methods"}
    for name, body in raw["methods"].items():
        assert body["reported"], name
        assert all("method" not in row for row in body["reported"])
    assert {r.method for r in load_registry().reported} == set(raw["methods"])


def test_yaml_syntax_error_names_file(tmp_path):
    from harness.registry import load_registry_file

    bad = tmp_path / "registry.yaml"
    bad.write_text("datasets: {}\nmethods:\n  x: [unclosed\n")
    with pytest.raises(RegistryError, match=re.escape(str(bad)) + r":\d+: not valid YAML"):
        load_registry_file(bad)
    good = tmp_path / "ok.yaml"
    good.write_text(yaml.safe_dump(MINIMAL))
    assert "esa" in load_registry_file(good).methods
