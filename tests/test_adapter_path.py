"""A registry's adapter path that does not resolve to an Adapter subclass is one line naming the method, the
adapter string, what went wrong and the fix, through the CLI, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli.app import main
from harness.spec.adapter_path import load_adapter_class
from harness.spec.registry import RegistryError

ROOT = Path(__file__).resolve().parents[1]
CONCRETE = """\
from harness.api import Adapter


class Good(Adapter):
    method = "bad"
    scoring = "embedding"
    build = load_official = classmethod(lambda cls, *a, **k: None)
    tokenize = encode_images = encode_texts = score = lambda self, *a: None
"""

# case: (module source, class name in the adapter string, words the message must hold)
CASES = {
    "syntax": ("x = (\n", "Bad", "SyntaxError at {file}:1"),
    "raises": ("import os\nraise RuntimeError('no GPU here')\n", "Bad", "raised RuntimeError at {file}:2: no GPU here"),
    "exits": ("raise SystemExit(3)\n", "Bad", "raised SystemExit at {file}:1"),
    "dependency": ("import no_such_dependency_xyz\n", "Bad",
                   "failed at {file}:1: no module named 'no_such_dependency_xyz'"),
    "missing": (CONCRETE, "Bda", "has no attribute 'Bda' (adapter classes defined there: Good)"),
    "not-a-class": ("Bad = 3\n", "Bad", "'Bad' is not a class but a value of type int"),
    "not-an-adapter": ("class Bad:\n    method = 'bad'\n", "Bad",
                       "class 'Bad' is not a subclass of harness.api.Adapter"),
    "abstract": ("from harness.api import Adapter\n\n\nclass Bad(Adapter):\n    pass\n", "Bad",
                 "leaves abstract methods unimplemented (build, encode_images"),
}


def write_case(tmp_path: Path, case: str, source: str, adapter: str) -> tuple[Path, Path]:
    """A package `pkg_<case>` holding `adapter.py` = `source`, and a registry file naming `adapter`."""
    pkg = tmp_path / f"pkg_{case.replace('-', '_')}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "adapter.py").write_text(source)
    reg = tmp_path / "bad.yaml"
    reg.write_text(yaml.safe_dump({"methods": {"bad": {"title": "Bad", "adapter": adapter.format(pkg=pkg.name),
                                                       "recipes": {"demo": {"epochs": 1}},
                                                       "variants": {"base": {"options": {}}}}}}))
    return pkg, reg


def run_cli(reg: Path, capsys) -> tuple[int, str]:
    code = main(["run", "--registry", str(reg), "--methods", "bad", "--dataset", "demo", "--dry-run"])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("case", CASES)
def test_a_broken_adapter_module_is_one_line_through_the_cli(case, tmp_path, monkeypatch, capsys):
    source, cls, expected = CASES[case]
    pkg, reg = write_case(tmp_path, case, source, "{pkg}.adapter:" + cls)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = run_cli(reg, capsys)
    lines = err.strip().splitlines()
    assert code != 0 and "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: method 'bad': adapter \"{pkg.name}.adapter:{cls}\"")
    assert expected.format(file=pkg / "adapter.py") in lines[0]


@pytest.mark.parametrize("adapter", [":Foo", "mod:", "mod", "mod:Foo:Bar", "mod.:Foo", "my-mod:Foo", "mod:Foo Bar"])
def test_a_malformed_adapter_string_names_the_form(adapter, tmp_path, capsys):
    _, reg = write_case(tmp_path, "form", "", adapter)
    code, err = run_cli(reg, capsys)
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # refused when the registry is read (the schema names the file and line) before anything is imported
    assert "bad.yaml:" in err and "methods.bad.adapter" in err and "package.module:Class" in err, err


def test_a_missing_module_says_how_to_make_it_importable():
    with pytest.raises(RegistryError, match=r"cannot import adapter module 'no_such_pkg_q\.adapter' \(no module "
                                            r"named 'no_such_pkg_q'\); install it or put its folder on PYTHONPATH"):
        load_adapter_class("ghost", "no_such_pkg_q.adapter:Ghost")


def test_a_concrete_adapter_class_resolves(tmp_path, monkeypatch):
    pkg, _ = write_case(tmp_path, "good", CONCRETE, "")
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = load_adapter_class("bad", f"{pkg.name}.adapter:Good")
    assert cls.__name__ == "Good" and cls.__module__ == f"{pkg.name}.adapter"


def test_run_all_prints_no_traceback_for_a_syntax_error(tmp_path):
    """The real entry point, in its own process: exit 2, one line on stderr."""
    pkg, reg = write_case(tmp_path, "proc", "def f(:\n", "{pkg}.adapter:Bad")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), "--registry", str(reg), "--methods", "bad",
                           "--dataset", "demo", "--dry-run"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: method 'bad': adapter \"{pkg.name}.adapter:Bad\": SyntaxError at {pkg / 'adapter.py'}:1: "
        "invalid syntax; fix the adapter module"]
