"""The strict registry schema: unknown keys (with the nearest valid one, the file and the line), keys given twice,
wrong types and ranges, non-finite reported numbers, bad adapter strings and unknown layouts are refused as
one-line RegistryErrors; and no document, however odd, gets anything but a Registry or a RegistryError."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.spec.registry import Registry, RegistryError, load_registry, load_registry_file, parse_registry

USER = """\
datasets:
  mine:
    description: a user's dataset
    split: test
    protocols: [recall]
    images: {train: 40, dev: 10, test: 10}
    captions_per_image: 5
    feature_dim: 16
    layout: precomp
methods:
  toy:
    title: Toy
    adapter: "toy_module.sub:ToyAdapter"
    recipes:
      default: {epochs: 1}
    variants:
      base:
        description: the one variant
        options: {dim: 8}
        checkpoints:
          mine:
            urls: ["https://example.org/toy.zip"]
            files: [{name: toy.pth, size: null}]
    reported:
      - {variant: base, dataset: mine, protocol: recall, source: my notebook, values: {rsum: 300.0, i2t.r1: 50.0}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(RegistryError) as err:
        load_registry_file(path)
    message = str(err.value)
    assert "\n" not in message
    return message


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def test_the_user_registry_loads_with_its_declared_shape(tmp_path):
    reg = load_registry_file(write(tmp_path, USER))
    mine = reg.dataset("mine")
    assert mine.images == {"train": 40, "dev": 10, "test": 10}
    assert mine.shape.images["dev"] == 10 and mine.shape.feature_dim == 16
    assert reg.reported[0].values == {"rsum": 300.0, "i2t.r1": 50.0}


@pytest.mark.parametrize("good,typo,suggested,path", [
    ("captions_per_image: 5", "captions_per_imag: 5", "captions_per_image", "datasets.mine"),
    ("    title: Toy", "    titel: Toy", "title", "methods.toy"),
    ("        options: {dim: 8}", "        optoins: {dim: 8}", "options", "methods.toy.variants.base"),
    ('            urls: ["https://example.org/toy.zip"]', '            urlss: ["https://example.org/toy.zip"]', "urls",
     "methods.toy.variants.base.checkpoints.mine"),
    ("files: [{name: toy.pth, size: null}]", "files: [{name: toy.pth, sise: null}]", "size",
     "methods.toy.variants.base.checkpoints.mine.files[0]"),
    ("source: my notebook", "sourse: my notebook", "source", "reported[0] (toy/base)"),
    ("datasets:", "dataset:", "datasets", ""),
])
def test_a_typo_in_any_section_names_the_nearest_key_the_file_and_the_line(tmp_path, good, typo, suggested, path):
    text = USER.replace(good, typo)
    assert text != USER
    file = write(tmp_path, text)
    message = error_of(file)
    line = line_of(text, typo.strip())
    assert message.startswith(f"{file}:{line}: "), message
    assert f": {path}: " in message or not path, message
    assert f"did you mean '{suggested}'?" in message, message


def test_the_example_from_the_issue_reads_as_asked(tmp_path):
    text = USER.replace("captions_per_image: 5", "captions_per_imag: 5")
    file = write(tmp_path, text)
    assert error_of(file) == (f"{file}:{line_of(text, 'captions_per_imag')}: datasets.mine: unknown key "
                              "'captions_per_imag'; did you mean 'captions_per_image'?")


@pytest.mark.parametrize("where,key", [("    split: test\n", "split"), ("    title: Toy\n", "title")])
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, where, key):
    text = USER.replace(where, where + where)
    first = line_of(text, where.strip())
    file = write(tmp_path, text)
    assert error_of(file) == (f"{file}:{first + 1}: key '{key}' is given twice in one mapping (lines {first} and "
                              f"{first + 1}); YAML would keep the last silently: keep one")


@pytest.mark.parametrize("good,bad,fragment", [
    ("captions_per_image: 5", "captions_per_image: 0", "datasets.mine.captions_per_image: expected a positive integer"),
    ("captions_per_image: 5", "captions_per_image: five", "expected a positive integer, found 'five'"),
    ("captions_per_image: 5", "captions_per_image: true", "expected a positive integer, found True"),
    ("images: {train: 40, dev: 10, test: 10}", "images: {train: -4}", "expected a mapping of split -> positive"),
    ("images: {train: 40, dev: 10, test: 10}", "images: [40]", "expected a mapping of split -> positive"),
    ("feature_dim: 16", "feature_dim: 16.5", "datasets.mine.feature_dim: expected a positive integer or null"),
    ("protocols: [recall]", "protocols: recall", "datasets.mine.protocols: expected a list of names"),
    ("    split: test", "    split: [test]", "datasets.mine.split: expected a string"),
    ("rsum: 300.0", "rsum: .nan", "value of 'rsum' is nan, expected a finite number"),
    ("rsum: 300.0", "rsum: .inf", "value of 'rsum' is inf, expected a finite number"),
    ("rsum: 300.0", "rsum: 700.0", "value of 'rsum' is 700.0, outside the range of a percentage"),
    ("i2t.r1: 50.0", "i2t.r1: 150.0", "value of 'i2t.r1' is 150.0, outside the range"),
    ("i2t.r1: 50.0", "i2t.r1: fifty", "value of 'i2t.r1' is 'fifty', expected a number or null"),
    ("default: {epochs: 1}", "default: [epochs]", "methods.toy.recipes.default: expected a mapping of recipe key"),
    ("    variants:", "    baseline: maybe\n    variants:", "methods.toy.baseline: expected true or false"),
])
def test_wrong_types_and_ranges_are_refused_at_their_line(tmp_path, good, bad, fragment):
    text = USER.replace(good, bad)
    assert text != USER
    file = write(tmp_path, text)
    message = error_of(file)
    assert fragment in message, message
    assert message.startswith(f"{file}:{line_of(text, bad.strip().splitlines()[0])}: "), message


@pytest.mark.parametrize("adapter", [":Foo", "toy_module", "toy_module:", "toy module:Foo", "toy..x:Foo",
                                     "toy.x:Foo.Bar", "1toy:Foo"])
def test_an_adapter_that_is_not_module_colon_class_is_refused_at_load(tmp_path, adapter):
    text = USER.replace('"toy_module.sub:ToyAdapter"', f'"{adapter}"')
    file = write(tmp_path, text)
    message = error_of(file)
    assert message.startswith(f"{file}:{line_of(text, 'adapter:')}: methods.toy.adapter: "), message
    assert "is not 'package.module:Class'" in message


def test_an_unknown_layout_is_refused_with_the_valid_names(tmp_path):
    text = USER.replace("layout: precomp", "layout: hdf5_regions")
    file = write(tmp_path, text)
    message = error_of(file)
    assert message.startswith(f"{file}:{line_of(text, 'hdf5_regions')}: datasets.mine.layout: unknown layout "
                              "'hdf5_regions'; valid: precomp, cusa_json"), message
    assert "did you mean 'precomp'?" in error_of(write(tmp_path, USER.replace("layout: precomp", "layout: precom")))


def test_errors_in_a_user_file_on_top_of_the_project_registry_name_the_user_file(tmp_path):
    text = USER.replace("feature_dim: 16", "feature_dim: -1")
    file = write(tmp_path, text)
    with pytest.raises(RegistryError, match=re.escape(f"{file}:{line_of(text, 'feature_dim')}: datasets.mine."
                                                      "feature_dim: expected a positive integer or null")):
        load_registry(file)
    assert "mine" in load_registry(write(tmp_path, USER)).datasets


def test_documents_built_in_code_get_the_same_checks_without_lines():
    doc = yaml.safe_load(USER)
    doc["datasets"]["mine"]["layuot"] = "precomp"
    with pytest.raises(RegistryError, match=r"^here: datasets.mine: unknown key 'layuot'; did you mean 'layout'\?$"):
        parse_registry(doc, source="here")


def test_a_method_without_a_recipe_for_a_dataset_gets_its_default_recipe():
    doc = yaml.safe_load(USER)
    doc["methods"]["toy"]["recipes"]["coco"] = {"epochs": 5}
    doc["datasets"]["coco"] = {"split": "testall", "protocols": ["recall"]}
    toy = parse_registry(doc).method("toy")
    assert toy.recipe("base", "mine") == {"epochs": 1} and not toy.has_recipe("base", "mine")
    assert toy.recipe("base", "coco") == {"epochs": 5} and toy.has_recipe("base", "coco")
    assert not toy.has_recipe("base", "default")
    doc["methods"]["toy"]["recipes"]["mine"] = None  # an empty entry: the dataset's own recipe, no changes
    doc["methods"]["toy"]["notes"] = None
    toy = parse_registry(doc).method("toy")
    assert toy.has_recipe("base", "mine") and toy.recipe("base", "mine") == {"epochs": 1} and toy.notes == ()


# ---- fuzzing: any document -> a Registry or a RegistryError, nothing else ----------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["recall", "precomp", "test", "default", "mine", "toy",
                                                           "base", "a:B", "x.y:Z"]))
KEYS = st.one_of(st.text(max_size=10), st.sampled_from(
    ["datasets", "methods", "reported", "checkpoints", "split", "protocols", "images", "layout", "title",
     "adapter", "variants", "recipes", "options", "members", "values", "settings", "recipe_keys", "files", "urls"]),
    st.integers(0, 3))
NODES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(KEYS, inner, max_size=4)), max_leaves=20)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return doc


def _parses_or_refuses(doc: Any) -> None:
    try:
        result = parse_registry(doc, source="fuzz.yaml")
    except RegistryError as exc:
        assert "\n" not in str(exc).split("; valid:")[0], str(exc)
    else:
        assert isinstance(result, Registry)


EXAMPLES = int(os.environ.get("ITRBENCH_FUZZ_EXAMPLES", "0"))  # a long run: ITRBENCH_FUZZ_EXAMPLES=500
FUZZ = settings(max_examples=EXAMPLES or 60, deadline=None, database=None, derandomize=not EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.data())
def test_fuzz_one_node_of_a_valid_document_replaced(data):
    doc = yaml.safe_load(USER)
    path = data.draw(st.sampled_from(_paths(doc)))
    _parses_or_refuses(_replace(copy.deepcopy(doc), path, data.draw(NODES)))


@FUZZ
@given(NODES)
def test_fuzz_random_documents(doc):
    _parses_or_refuses(doc)


@FUZZ
@given(st.data())
def test_fuzz_random_yaml_text_through_the_line_loader(data):
    lines = USER.splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    lines[i] = data.draw(st.sampled_from([lines[i] * 2, lines[i][: len(lines[i]) // 2], lines[i] + ": x",
                                          "  " + lines[i], lines[i].replace(":", "::"), lines[(i + 1) % len(lines)]]))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_text("\n".join(lines) + "\n")
        try:
            assert isinstance(load_registry_file(path), Registry)
        except RegistryError as exc:
            assert str(exc).startswith(str(path)), str(exc)


def test_a_reported_number_no_protocol_produces_and_an_ensemble_of_ensembles_are_refused(tmp_path):
    from harness.spec.registry import RegistryError, load_registry

    typo = tmp_path / "typo.yaml"
    typo.write_text("reported:\n  - {method: esa, variant: bigru, dataset: f30k, protocol: f30k1k, source: x, "
                    "values: {rsmu: 50.0}}\n")
    with pytest.raises(RegistryError, match=r"typo.yaml:2: .*unknown f30k1k number 'rsmu'.*Did you mean 'rsum'"):
        load_registry(typo)
    folds = tmp_path / "folds.yaml"  # per-fold numbers of a fold protocol are its fields too
    folds.write_text("reported:\n  - {method: esa, variant: bigru, dataset: coco, protocol: coco1k, source: x, "
                     "values: {folds.0.rsum: 500.0, rsum_printed: 501.0}}\n")
    load_registry(folds)
    cyc = tmp_path / "cyc.yaml"
    cyc.write_text("methods:\n  cyc:\n    title: cyc\n    adapter: 'methods.esa.adapter:ESAAdapter'\n"
                   "    recipes: {default: {epochs: 1}}\n    variants:\n"
                   "      a: {description: a, members: [b, b]}\n      b: {description: b, members: [a, a]}\n")
    with pytest.raises(RegistryError, match="'b' is itself an ensemble"):
        load_registry(cyc)
