"""Methods registered by installed packages through the entry-point group `itrbench.methods`, as pytest plugins
are: each test installs a throwaway distribution (a dist-info folder and its package) on sys.path."""

from __future__ import annotations

import pytest

from harness.spec.registry import ENTRY_POINT_GROUP, PLUGINS_OFF, RegistryError, load_registry, plugin_documents

METHOD_YAML = """\
methods:
  plugmethod:
    title: "A method from an installed package"
    adapter: "itrbench_plug.adapter:PlugAdapter"
    recipes: {demo: {epochs: 1}}
    variants:
      base: {options: {zero_shot: true}}
    reported:
      - {variant: base, dataset: demo, protocol: recall, source: "the plugin's paper, Table 1", values: {rsum: 123.4}}
"""


def install(root, entry_points: str, files: dict[str, str], name: str = "itrbench-plug") -> None:
    """Write `files` (package modules) and a dist-info declaring `entry_points` under `root` (already on sys.path)."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_points}")



ADAPTER = {"itrbench_plug/adapter.py": """\
from harness.api import Adapter


class PlugAdapter(Adapter):
    method = "plugmethod"
    scoring = "embedding"
    build = load_official = classmethod(lambda cls, *a, **k: None)
    tokenize = encode_images = encode_texts = score = lambda self, *a: None
"""}


def test_a_registry_file_shipped_in_a_package_adds_its_method(site):
    install(site, "plug = itrbench_plug:REGISTRY\n", {
        "itrbench_plug/__init__.py": "REGISTRY = 'registry.yaml'  # relative: beside this module\n",
        "itrbench_plug/registry.yaml": METHOD_YAML, **ADAPTER})
    (label, path), = plugin_documents()
    assert "plug = itrbench_plug:REGISTRY" in label and "itrbench-plug" in label
    assert path == site / "itrbench_plug" / "registry.yaml"
    reg = load_registry()
    method = reg.method("plugmethod")
    assert method.adapter_class().__name__ == "PlugAdapter"
    assert {"esa", "cusa", "clip_zeroshot"} <= set(reg.methods)  # the project's methods are all still there
    assert [r.values["rsum"] for r in reg.reported_for("plugmethod")] == [123.4]


def test_a_callable_may_return_the_document_and_user_files_layer_on_top(site, tmp_path):
    install(site, "plug = itrbench_plug.hooks:registry\n", {
        "itrbench_plug/__init__.py": "",
        "itrbench_plug/hooks.py": f"import yaml\n\n\ndef registry():\n    return yaml.safe_load({METHOD_YAML!r})\n",
        **ADAPTER})
    user = tmp_path / "mine.yaml"
    user.write_text("reported:\n  - {method: plugmethod, variant: base, dataset: demo, protocol: recall, "
                    "source: my notebook, values: {rsum: 99.0}}\n")
    reg = load_registry(user)
    assert [(r.source, r.values["rsum"]) for r in reg.reported_for("plugmethod")] == [
        ("the plugin's paper, Table 1", 123.4), ("my notebook", 99.0)]


def test_a_plugin_redefining_a_method_is_refused_naming_it(site):
    install(site, "plug = itrbench_plug:doc\n", {
        "itrbench_plug/__init__.py": "doc = {'methods': {'esa': {'title': 'mine', 'adapter': 'x:Y', "
                                     "'variants': {'v': {}}}}}\n"})
    with pytest.raises(RegistryError, match=r"methods.esa is defined in .*registry.yaml:\d+ and again in entry point "
                                            r"'plug = itrbench_plug:doc' of itrbench-plug"):
        load_registry()


@pytest.mark.parametrize("files, fragment", [
    ({"itrbench_plug/__init__.py": "raise ImportError('broken on purpose')\n"},
     r"entry point 'plug = itrbench_plug:X' of itrbench-plug \(group itrbench.methods\) failed: "
     r"ImportError: broken on purpose; .*ITRBENCH_DISABLE_PLUGINS=1"),
    ({"itrbench_plug/__init__.py": "X = 42\n"}, r"gives a int; expected a registry file path"),
    ({"itrbench_plug/__init__.py": "X = 'missing.yaml'\n"}, r"its registry file .*missing.yaml does not exist"),
])
def test_a_broken_plugin_is_named(site, files, fragment):
    install(site, "plug = itrbench_plug:X\n", files)
    with pytest.raises(RegistryError, match=fragment):
        load_registry()


def test_plugins_can_be_switched_off(site, monkeypatch):
    install(site, "plug = itrbench_plug:X\n", {"itrbench_plug/__init__.py": "raise ImportError('broken')\n"})
    monkeypatch.setenv(PLUGINS_OFF, "1")
    assert plugin_documents() == []
    assert "plugmethod" not in load_registry().methods


def test_fetch_layers_user_files_on_the_plugins_too(site, tmp_path):
    from harness.fetch.targets import load_with_overrides

    install(site, "plug = itrbench_plug:REGISTRY\n", {
        "itrbench_plug/__init__.py": "REGISTRY = 'registry.yaml'\n",
        "itrbench_plug/registry.yaml": METHOD_YAML, **ADAPTER})
    user = tmp_path / "mine.yaml"
    user.write_text("reported:\n  - {method: plugmethod, variant: base, dataset: demo, protocol: recall, "
                    "source: my notebook, values: {rsum: 99.0}}\n")
    reg = load_with_overrides([user])
    assert [r.source for r in reg.reported_for("plugmethod")] == ["the plugin's paper, Table 1", "my notebook"]
