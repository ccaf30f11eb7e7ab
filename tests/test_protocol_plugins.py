"""Protocols of one's own: declared results, a registry's `protocols:` section and `add_protocols:`, the
`itrbench.protocols` entry-point group, and the one-line errors of every way a plugin can be wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.eval.protocols import PROTOCOLS, Field, PairedTest, Protocol, compute_protocol, declaration_problem
from harness.run.display import show_protocols
from harness.spec.protocol_plugins import ENTRY_POINT_GROUP, PLUGINS_OFF
from harness.spec.registry import RegistryError, load_registry

ROOT = Path(__file__).resolve().parents[1]
MODULE = '''
from harness.eval.protocols import Field, PairedTest, Protocol
import numpy as np

def _values(sims, owner):
    return sims.max(axis=1), None

def _compute(inp):
    return {"i2t": {"top": float(inp.sims.max(axis=1).mean())}, "score": float(inp.sims.max(axis=1).mean())}

TOP = Protocol("top", "mean best score", "any matrix", lambda inp: None, _compute, headline=("score",),
               fields=(Field("i2t.top"), Field("score")), columns=("i2t.top", "score"),
               paired=PairedTest("score", _values, "images"))
NOT_A_PROTOCOL = {"name": "top"}
'''


def write(folder: Path, yaml: str, module: str | None = MODULE, name: str = "myproto.py") -> Path:
    if module is not None:
        (folder / name).write_text(module)
    path = folder / "mine.yaml"
    path.write_text(yaml)
    return path


PLUG = 'protocols:\n  top: {object: "myproto:TOP"}\n'


def test_a_registry_file_plugs_a_protocol_in_and_extends_a_project_dataset(tmp_path):
    reg = load_registry(write(tmp_path, PLUG + "datasets:\n  f30k: {add_protocols: [top]}\n"))
    assert reg.protocols["top"].name == "top" and "recall" in reg.protocols
    assert reg.dataset("f30k").protocols == ("f30k1k", "top")
    assert load_registry().dataset("f30k").protocols == ("f30k1k",)  # the project's own registry is untouched
    assert "top" not in load_registry().protocols
    sims = np.arange(12.0).reshape(2, 6)
    out = compute_protocol("top", sims, table=reg.protocols, captions_per_image=3)
    assert out == {"protocol": "top", "i2t": {"top": 8.0}, "score": 8.0}  # row maxima 5 and 11


def test_a_new_dataset_may_name_a_plugged_protocol_and_reported_rows_may_use_it(tmp_path):
    yaml = PLUG + ("datasets:\n  mine: {split: test, protocols: [recall, top]}\n"
                   "reported:\n  - {method: esa, variant: bigru, dataset: mine, protocol: top, source: me, "
                   "values: {score: 1.0}}\n")
    reg = load_registry(write(tmp_path, yaml))
    assert reg.dataset("mine").protocols == ("recall", "top")
    assert reg.reported_for(dataset="mine")[0].protocol == "top"


@pytest.mark.parametrize(("yaml", "module", "message"), [
    ('protocols:\n  top: {object: "nosuchmodule_xyz:TOP"}\n', None, "cannot import module 'nosuchmodule_xyz'"),
    (PLUG, "def broken(:\n", "syntax error"),
    (PLUG, "raise RuntimeError('boom')\n", "importing module 'myproto' failed (RuntimeError: boom)"),
    ('protocols:\n  top: {object: "myproto:NOT_A_PROTOCOL"}\n', MODULE, "is a dict, not a"),
    ('protocols:\n  top: {object: "myproto:MISSING"}\n', MODULE, "has no attribute 'MISSING'"),
    ('protocols:\n  other: {object: "myproto:TOP"}\n', MODULE, "the Protocol is named 'top'"),
    ('protocols:\n  top: {object: "myproto.TOP"}\n', MODULE, "must read \"module:Object\""),
    ('protocols:\n  top: {object: "myproto:TOP", family: recall}\n', MODULE, "unknown field(s) family"),
    ('protocols:\n  top: "myproto:TOP"\n', MODULE, "expected {object:"),
    ('protocols:\n  recall: {object: "myproto:TOP"}\n', MODULE.replace('Protocol("top"', 'Protocol("recall"'),
     "'recall' is a built-in protocol"),
    (PLUG + "datasets:\n  nosuch: {add_protocols: [top]}\n", MODULE, "unknown dataset 'nosuch'"),
    (PLUG + "datasets:\n  f30k: {add_protocols: [tpo]}\n", MODULE, "unknown protocol 'tpo'"),
    (PLUG + "datasets:\n  f30k: {add_protocols: top}\n", MODULE, "expected a list of protocol names"),
])
def test_every_broken_plugin_is_a_one_line_error_naming_the_file(tmp_path, yaml, module, message):
    path = write(tmp_path, yaml, module)
    with pytest.raises(RegistryError) as err:
        load_registry(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_the_same_protocol_in_two_registry_files_is_an_error_naming_both(tmp_path):
    first = write(tmp_path, PLUG)
    (tmp_path / "b").mkdir()
    second = write(tmp_path / "b", PLUG)
    with pytest.raises(RegistryError, match="protocols.top is defined in .*mine.yaml and again in .*b/mine.yaml"):
        load_registry(first, second)


def test_declarations_are_checked():
    good = PROTOCOLS["recall"]
    assert all(declaration_problem(p) is None for p in PROTOCOLS.values())
    bad_cols = Protocol("x", "x", "x", good.applies, good.compute, ("rsum",), fields=(Field("rsum"),),
                        columns=("i2t.r1",))
    assert "columns i2t.r1 not among its fields" in declaration_problem(bad_cols)
    bad_test = Protocol("x", "x", "x", good.applies, good.compute, ("rsum",), fields=(Field("rsum"),),
                        paired=PairedTest("r50", good.paired.values))
    assert "paired test field 'r50'" in declaration_problem(bad_test)
    assert good.higher_is_better("rsum") and not good.higher_is_better("i2t.medr")


def test_the_command_line_table_is_laid_out_by_the_declared_columns(tmp_path, capsys):
    reg = load_registry(write(tmp_path, PLUG))
    show_protocols({"top": {"i2t": {"top": 3.25}, "score": 3.25}}, "t", reg.protocols)
    out = capsys.readouterr().out
    assert "top" in out and "3.25" in out and "R@1" not in out and "score" in out
    sims = np.eye(20).repeat(5, axis=1) + 0.01 * np.arange(100)[None, :] % 1
    show_protocols({"recall": compute_protocol("recall", sims, bootstrap=0)}, "r")
    out = capsys.readouterr().out
    assert all(h in out for h in ("R@1", "R@5", "R@10", "medr", "meanr", "image->text", "text->image", "rsum"))


def install(root: Path, entry: str, module: str) -> None:
    pkg = root / "itrbench_protoplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(module)
    info = root / "itrbench_protoplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: itrbench-protoplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry}\n")


def test_an_installed_package_plugs_a_protocol_in_through_an_entry_point(site, tmp_path, monkeypatch):
    install(site, "top = itrbench_protoplug:TOP", MODULE)
    ext = tmp_path / "ext.yaml"
    ext.write_text("datasets:\n  f30k: {add_protocols: [top]}\n")
    reg = load_registry(ext)
    assert "top" in reg.protocols and "top" in reg.dataset("f30k").protocols
    monkeypatch.setenv(PLUGINS_OFF, "1")
    with pytest.raises(RegistryError, match="unknown protocol 'top'"):
        load_registry(ext)


def test_a_broken_entry_point_names_itself_and_its_distribution(site):
    install(site, "top = itrbench_protoplug:NOT_A_PROTOCOL", MODULE)
    with pytest.raises(RegistryError, match="entry point 'top = itrbench_protoplug:NOT_A_PROTOCOL' of "
                                            "itrbench-protoplug: the object is a dict"):
        load_registry()


def test_run_and_report_carry_a_plugged_protocol_under_its_name(tmp_path, one_thread):
    import json
    import shutil

    from harness.cli.app import main as cli_main

    shutil.copy(ROOT / "examples" / "recall50" / "recall50.py", tmp_path)
    reg = tmp_path / "mine.yaml"
    reg.write_text('protocols:\n  recall50: {object: "recall50:RECALL50"}\n'
                   'datasets:\n  demo: {add_protocols: [recall50]}\n')
    results = tmp_path / "results"
    assert cli_main(["run", "--methods", "clip_zeroshot", "--dataset", "demo", "--results", str(results),
                     "--reports", str(tmp_path / "reports"), "--data-root", str(tmp_path / "data"),
                     "--registry", str(reg)]) == 0
    job = results / "demo" / "clip_zeroshot-tiny-zeroshot" / "eval"
    stored = json.loads((job / "metrics.json").read_text())["protocols"]["recall50"]
    sims = np.load(job / "sims.npy")
    owner = np.load(job / "image_of_caption.npy")
    hits = [np.count_nonzero(np.delete(sims[i], np.flatnonzero(owner == i)) >= sims[i, owner == i].max()) < 50
            for i in range(sims.shape[0])]
    assert stored["i2t"]["r50"] == pytest.approx(100 * np.mean(hits))
    report = (tmp_path / "reports" / "demo.md").read_text()
    assert "(`recall50`)" in report and "| i2t R@50 | t2i R@50 | rsum50 |" in report

    # the plug-in's code is in the evaluation's protocol identity: a comment reruns nothing, an edit of its
    # computation recomputes the values from the stored matrix (no re-scoring), and the report says so
    args = ["run", "--methods", "clip_zeroshot", "--dataset", "demo", "--results", str(results), "--reports",
            str(tmp_path / "reports"), "--data-root", str(tmp_path / "data"), "--registry", str(reg)]
    module = tmp_path / "recall50.py"
    stamps = {f: (job / f).stat().st_mtime_ns for f in ("metrics.json", "sims.npy")}
    module.write_text(module.read_text() + "\n# a comment changes nothing\n")
    assert cli_main(args) == 0
    assert {f: (job / f).stat().st_mtime_ns for f in stamps} == stamps
    module.write_text(module.read_text().replace("\nK = 50\n", "\nK = 20\n"))
    assert cli_main(args) == 0
    again = json.loads((job / "metrics.json").read_text())
    assert (job / "sims.npy").stat().st_mtime_ns == stamps["sims.npy"] and "protocols_recomputed" in again
    hits = [np.count_nonzero(np.delete(sims[i], np.flatnonzero(owner == i)) >= sims[i, owner == i].max()) < 20
            for i in range(sims.shape[0])]
    assert again["protocols"]["recall50"]["i2t"]["r50"] == pytest.approx(100 * np.mean(hits)) != stored["i2t"]["r50"]
    assert "protocols recomputed from the stored matrix" in (tmp_path / "reports" / "demo.md").read_text()


def test_metrics_names_unknown_and_embedding_protocols_in_one_line(tmp_path, capsys):
    from harness.cli.app import main as cli_main

    np.save(tmp_path / "s.npy", np.eye(60).repeat(5, axis=1).astype(np.float32))
    assert cli_main(["metrics", "--sims", str(tmp_path / "s.npy"), "--protocol", "recal"]) == 2
    err = capsys.readouterr().err
    assert "unknown protocol 'recal'" in err and "Did you mean 'recall'?" in err and "--registry" in err
    assert cli_main(["metrics", "--sims", str(tmp_path / "s.npy"), "--protocol", "sts"]) == 2
    assert "computed from a model's embeddings" in capsys.readouterr().err
    reg = write(tmp_path, PLUG)
    assert cli_main(["metrics", "--sims", str(tmp_path / "s.npy"), "--protocol", "top", "--registry", str(reg)]) == 0
    assert "1.00" in capsys.readouterr().out
