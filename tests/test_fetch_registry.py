"""Checkpoint entries of the registry (urls, files, member, size, sha256) and the fetch override files."""

from __future__ import annotations

import pytest
import yaml

from harness.fetch.targets import Target, apply_overrides, load_with_overrides, record, select_targets
from harness.spec.registry import REGISTRY_PATH, RegistryError, load_registry, parse_checkpoint

FIELDS = {"name", "member", "size", "sha256", "note"}


def _entries():
    doc = yaml.safe_load(REGISTRY_PATH.read_text())
    for mname, m in doc["methods"].items():
        for vname, v in (m.get("variants") or {}).items():
            for ds, ck in ((v or {}).get("checkpoints") or {}).items():
                yield f"{mname}/{vname}/{ds}", ck


def test_every_registry_checkpoint_entry_has_the_fetch_fields():
    entries = list(_entries())
    assert len(entries) >= 18
    for key, ck in entries:
        assert set(ck) == {"urls", "archive", "files", "note"}, key
        assert ck["urls"] and all(u.startswith("https://") for u in ck["urls"]), key
        for f in ck["files"]:
            assert set(f) == FIELDS, (key, f)
            if f["size"] is None or f["sha256"] is None:
                assert "not recorded" in f["note"], (key, f["name"])  # null only with a note
            if "/drive/folders/" in ck["urls"][0] and f["member"] is None:
                assert "Drive folder" in f["note"], key
        if any(f["name"].endswith(".tar") for f in ck["files"]):
            assert ck["archive"] is None and "plain torch file" in ck["note"], key  # .pth.tar is not a tar


def test_parsed_entries_keep_url_and_files_for_existing_callers():
    ck = load_registry().method("esa").variant("bigru").checkpoints["coco"]
    assert ck.url == ck.urls[0] and ck.url.startswith("https://drive.google.com/drive/folders/")
    assert ck.files == ("model_best.pth", "model_best_2.pth")
    assert [e.name for e in ck.entries] == list(ck.files) and ck.entry("model_best_2.pth").sha256 is None
    assert ck.archive is None


def test_the_older_single_url_form_still_parses():
    ck = parse_checkpoint({"url": "https://example.org/a", "files": ["a.pth", "b.pth"], "note": "n"}, "x")
    assert ck.urls == ("https://example.org/a",) and ck.files == ("a.pth", "b.pth")
    assert ck.entry("b.pth").member is None and ck.entry("b.pth").size is None


@pytest.mark.parametrize("raw, message", [
    ({"urls": ["u"], "files": [{"name": "a", "sha256": "xyz"}]}, "sha256 'xyz' must be 64 hex digits"),
    ({"urls": ["u"], "files": [{"name": "a", "size": -1}]}, "size -1 must be a byte count"),
    ({"urls": ["u"], "files": [{"name": "../a"}]}, "must be a plain file name"),
    ({"urls": ["u"], "files": [{"name": "a", "md5": "0"}]}, "unknown field(s) ['md5']"),
    ({"urls": ["u"], "archive": "rar", "files": ["a"]}, "unknown archive kind 'rar'"),
    ({"urls": [], "files": ["a"]}, "'urls' must be a non-empty list"),
    ({"url": "u", "urls": ["u"], "files": ["a"]}, "either 'urls' (a list) or 'url'"),
    ({"urls": ["u"], "files": ["a", "a"]}, "file names repeat"),
])
def test_bad_entries_are_named(raw, message):
    with pytest.raises(RegistryError) as info:
        parse_checkpoint(raw, "reg.yaml: methods.m.variants.v.checkpoints.coco")
    assert message in str(info.value) and "checkpoints.coco" in str(info.value)


def test_overrides_amend_one_entry_and_name_unknown_keys():
    registry = load_registry()
    sha = "ab" * 32
    amended = apply_overrides(registry, {"esa/bigru/coco": {"urls": ["https://lab.example/esa.zip"],
                                                            "archive": "zip",
                                                            "files": {"model_best.pth": {"sha256": sha,
                                                                                         "size": 10}}}}, "lab.yaml")
    ck = amended.method("esa").variant("bigru").checkpoints["coco"]
    assert ck.urls == ("https://lab.example/esa.zip",) and ck.archive == "zip"
    assert ck.entry("model_best.pth").sha256 == sha and ck.entry("model_best.pth").size == 10
    assert ck.entry("model_best_2.pth").sha256 is None  # untouched
    assert registry.method("esa").variant("bigru").checkpoints["coco"].archive is None  # the original is unchanged
    with pytest.raises(RegistryError, match="Did you mean 'model_best.pth'"):
        apply_overrides(registry, {"esa/bigru/coco": {"files": {"model_bst.pth": {"size": 1}}}}, "lab.yaml")
    with pytest.raises(RegistryError, match="must be method/variant/dataset"):
        apply_overrides(registry, {"esa/coco": {}}, "lab.yaml")
    with pytest.raises(RegistryError, match="unknown checkpoint dataset 'demo'"):
        apply_overrides(registry, {"esa/bigru/demo": {}}, "lab.yaml")


def test_record_writes_an_override_that_loads_back(tmp_path):
    registry = load_registry()
    targets = select_targets(registry, ["vsl"], ["coco"], ["sgr"])
    assert [t.label for t in targets] == ["vsl/sgr/coco/SGR+VSL_COCO.pth.tar"]
    path = tmp_path / "hashes.yaml"
    path.write_text("datasets: {}\n")  # a user file with other sections keeps them
    assert record(path, [(targets[0], 42, "cd" * 32)]) == 1
    assert path.read_text().startswith("# Checkpoint sizes and hashes recorded by `itrbench fetch --record`")
    entry = load_with_overrides([path]).method("vsl").variant("sgr").checkpoints["coco"].entries[0]
    assert (entry.size, entry.sha256) == (42, "cd" * 32)


def test_user_registry_sections_and_overrides_layer_together(tmp_path):
    tiny = {"methods": {"tiny": {"title": "t", "adapter": "x:Y", "recipes": {},
                                 "variants": {"a": {"checkpoints": {"demo": {"url": "https://example.org/a",
                                                                             "files": ["a.pth"]}}}}}},
            "checkpoints": {"tiny/a/demo": {"files": {"a.pth": {"size": 5}}}}}
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(tiny))
    registry = load_with_overrides([path])
    (target,) = select_targets(registry, ["tiny"], ["demo"], None)
    assert isinstance(target, Target) and target.entry.size == 5 and target.path(tmp_path).name == "a.pth"
    assert "esa" in registry.methods
