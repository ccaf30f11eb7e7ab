"""The bad-input table: each case runs the CLI in a subprocess and must exit non-zero with one message that names
the file or value, print no traceback, and leave every file that was there before untouched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_orchestrate_fixtures import tiny_data, tiny_registry

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: tiny demo-layout data, a user registry, matrices, checkpoints and a finished result."""
    w = tmp_path_factory.mktemp("ws")
    tiny_data(w / "data")
    tiny_registry(w / "tiny.yaml")
    rng = np.random.default_rng(0)
    np.save(w / "good.npy", rng.standard_normal((4, 20)).astype(np.float32))
    np.save(w / "one_d.npy", np.zeros(20, np.float32))
    np.save(w / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    nan = rng.standard_normal((4, 20)).astype(np.float32)
    nan[1, 2] = np.nan
    np.save(w / "nan.npy", nan)
    (w / "empty.npy").write_bytes(b"")
    (w / "truncated.npy").write_bytes((w / "good.npy").read_bytes()[:90])
    np.savez(w / "two.npz", a=np.zeros((2, 10)), b=np.zeros((2, 10)))
    np.save(w / "owner_short.npy", np.arange(7))
    np.save(w / "owner_unordered.npy", np.array([1, 0] * 10))
    (w / "empty.pth").write_bytes(b"")
    torch.save({"img_dim": 8}, w / "ok.pth")
    (w / "truncated.pth").write_bytes((w / "ok.pth").read_bytes()[:100])
    (w / "bad.yaml").write_text("datasets: {}\nmethods:\n  x: [unclosed\n")
    (w / "dup.yaml").write_text(yaml.safe_dump({"datasets": {"coco": {"split": "test", "protocols": ["recall"]}}}))
    (w / "section.yaml").write_text(yaml.safe_dump({"papers": {}}))
    (w / "noadapter.yaml").write_text(yaml.safe_dump({"methods": {"ghost": {
        "title": "ghost", "adapter": "no_such_module:Ghost", "recipes": {"default": {"epochs": 1}},
        "variants": {"a": {"options": {}}}}}}))
    (w / "folder").mkdir()
    _matrix_inputs(w, rng)
    # a finished result the failing commands must leave alone
    res = w / "results" / "demo" / "tiny-a-seed0" / "eval"
    res.mkdir(parents=True)
    (res / "config.yaml").write_text(yaml.safe_dump({"stage": "evaluate", "method": "tiny", "variant": "a",
                                                     "dataset": "demo", "seed": 0, "source": "seed0"}))
    (res / "metrics.json").write_text(json.dumps({"stage": "evaluate", "protocols": {}}))
    lst = w / "listres" / "demo" / "tiny-a-seed0" / "eval"
    lst.mkdir(parents=True)
    (lst / "config.yaml").write_text("stage: evaluate\nmethod: tiny\nvariant: a\ndataset: demo\n")
    (lst / "metrics.json").write_text("[1, 2, 3]")
    return w


def _matrix_inputs(w: Path, rng: np.random.Generator) -> None:
    """Matrices and mappings of issue 22: transposed, uneven, empty, crafted headers, inexact integers,
    several tensors, bad mapping entries, features of the wrong width."""
    from test_orchestrate_fixtures import DIM, write_official

    good = rng.standard_normal((4, 20))
    np.save(w / "transposed.npy", good.T)
    np.save(w / "wide21.npy", rng.standard_normal((4, 21)))
    np.save(w / "zero.npy", np.zeros((0, 0), np.float32))
    np.save(w / "int_huge.npy", np.full((4, 20), 2**60, np.int64))
    np.save(w / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    for name, shape in (("tib.npy", (2_000_000, 2_000_000)), ("owner_tib.npy", (2**40,))):
        with open(w / name, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<i8" if "owner" in name else "<f4",
                                                     "fortran_order": False, "shape": shape})
            f.write(b"\0" * 64)
    torch.save({"a": torch.zeros(4, 20), "b": torch.zeros(4, 20)}, w / "two.pt")
    five = [0] * 5 + [1] * 5 + [2] * 5
    for name, entries in {"neg": [*five, 3, 3, 3, 3, -1], "range": [*five, 3, 3, 3, 3, 7],
                          "gap": [*five[:10], *[3] * 10], "first": [*[1] * 10, *[2] * 5, *[3] * 5],
                          "last": [*five, 2, 2, 2, 2, 2]}.items():
        np.save(w / f"owner_{name}.npy", np.array(entries, np.int64))
    wide = w / "wide" / "demo" / "precomp"
    wide.mkdir(parents=True)
    np.save(wide / "test_ims.npy", np.zeros((2, 3, DIM + 4), np.float32))
    (wide / "test_caps.txt").write_text("".join(f"a caption number {j}\n" for j in range(10)))
    write_official(w / "tiny.pth", 0)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


RUN = ["run", "--methods", "tiny", "--dataset", "demo", "--data-root", "{w}/data", "--registry", "{w}/tiny.yaml",
       "--results", "{w}/results", "--reports", "{w}/reports", "--checkpoint-dir", "{w}/ck", "--dry-run"]
EVAL = ["evaluate", "--method", "tiny", "--variant", "a", "--registry", "{w}/tiny.yaml", "--data-root", "{w}/data",
        "--dataset", "demo"]
METRICS = ["metrics", "--protocol", "recall", "--bootstrap", "0"]

CASES = [
    # run: names, values and paths are checked before any job starts
    ("run-empty-methods", [*RUN[:1], "--methods", ",", *RUN[3:]], "--methods is empty"),
    ("run-unknown-method", [*RUN[:1], "--methods", "tinny", *RUN[3:]], "Did you mean 'tiny'"),
    ("run-unknown-dataset", [*RUN[:3], "--dataset", "dmo", *RUN[5:]], "unknown dataset 'dmo'"),
    ("run-seeds-text", [*RUN, "--seeds", "a,b"], "--seeds 'a,b'"),
    ("run-seeds-negative", [*RUN, "--seeds", "-1"], "--seeds '-1'"),
    ("run-seeds-duplicate", [*RUN, "--seeds", "0,0"], "--seeds '0,0'"),
    ("run-tiles-zero", [*RUN, "--tiles", "0,5"], "--tiles '0,5'"),
    ("run-tiles-text", [*RUN, "--tiles", "big"], "--tiles 'big'"),
    ("run-device-cuda", [*RUN, "--device", "cuda"], "--device cuda: no CUDA device"),
    ("run-device-unknown", [*RUN, "--device", "tpu"], "--device"),
    ("run-set-misspelled", [*RUN, "--set", "epoch=3"], "Did you mean 'epochs'"),
    ("run-set-type", [*RUN, "--set", "epochs=two"], "epochs must be int"),
    ("run-set-no-value", [*RUN, "--set", "epochs"], "expected KEY=VALUE"),
    ("run-set-unknown-method", [*RUN, "--set", "nosuch.lr=1"], "'nosuch' is not a method"),
    ("run-set-bad-yaml", [*RUN, "--set", "lr=[1, 2"], "not valid YAML"),
    ("run-set-list-for-number", [*RUN, "--set", "lr=[1, 2]"], "lr must be float"),
    ("run-unknown-variant", [*RUN, "--variants", "zz"], "unknown variant 'zz'"),
    ("run-registry-missing", [*RUN, "--registry", "{w}/missing.yaml"], "missing.yaml: no such file"),
    ("run-registry-syntax", [*RUN, "--registry", "{w}/bad.yaml"], "bad.yaml:4: not valid YAML"),
    ("run-registry-duplicate", [*RUN, "--registry", "{w}/dup.yaml"], "datasets.coco is defined in"),
    ("run-registry-section", [*RUN, "--registry", "{w}/section.yaml"], "unknown top-level registry section 'papers'"),
    ("run-registry-adapter", [*RUN[:1], "--methods", "ghost", *RUN[3:], "--registry", "{w}/noadapter.yaml"],
     "cannot import adapter module 'no_such_module'"),
    ("run-data-root-missing", [*RUN[:3], "--dataset", "f30k", "--data-root", "{w}/nodata", *RUN[7:]],
     "--data-root {w}/nodata: no such folder"),
    ("run-data-fails-check", [*RUN[:3], "--dataset", "f30k", "--data-root", "{w}/folder", *RUN[7:]],
     "fails check-data"),
    ("run-sts-root-missing", [*RUN, "--sts-root", "{w}/nosts"], "--sts-root {w}/nosts: no such folder"),
    ("run-ir-root-missing", [*RUN, "--image-retrieval-root", "{w}/noir"], "--image-retrieval-root"),
    ("run-gpus-zero", [*RUN, "--gpus", "0"], "--gpus 0"),
    ("run-checkpoint-steps-zero", [*RUN, "--checkpoint-steps", "0"], "--checkpoint-steps 0"),
    ("run-checkpoint-minutes-negative", [*RUN, "--checkpoint-minutes", "-1"], "--checkpoint-minutes -1"),
    ("run-executor-opt", [*RUN, "--executor-opt", "gpus"], "--executor-opt 'gpus'"),
    ("run-evaluate-no-checkpoint", [*RUN, "--stage", "evaluate"], "official checkpoint not found"),
    ("run-bracket-path", [*RUN[:3], "--dataset", "f30k", "--data-root", "{w}/[/red]x[0, 1]", *RUN[7:]],
     "{w}/[/red]x[0, 1]: no such folder"),
    # evaluate
    ("evaluate-checkpoint-missing", [*EVAL, "--checkpoint", "{w}/none.pth"], "--checkpoint {w}/none.pth: no such file"),
    ("evaluate-checkpoint-empty", [*EVAL, "--checkpoint", "{w}/empty.pth"], "empty.pth"),
    ("evaluate-checkpoint-truncated", [*EVAL, "--checkpoint", "{w}/truncated.pth"], "truncated.pth"),
    ("evaluate-checkpoint-folder", [*EVAL, "--checkpoint", "{w}/folder"], "--checkpoint {w}/folder: no such file"),
    ("evaluate-data-root-missing", [*EVAL[:8], "{w}/nodata", *EVAL[9:], "--checkpoint", "{w}/ok.pth"],
     "--data-root {w}/nodata"),
    ("evaluate-json-folder", [*EVAL, "--checkpoint", "{w}/ok.pth", "--json", "{w}/folder"], "{w}/folder: is a folder"),
    ("evaluate-sims-folder", [*EVAL, "--checkpoint", "{w}/ok.pth", "--save-sims", "{w}/folder"], "is a folder"),
    ("evaluate-json-is-input", [*EVAL, "--checkpoint", "{w}/ok.pth", "--json", "{w}/ok.pth"],
     "is a file this command reads"),
    ("evaluate-unknown-method", ["evaluate", "--method", "esaa", "--variant", "a", "--checkpoint", "{w}/ok.pth",
                                 "--data-root", "{w}/data"], "Did you mean 'esa'"),
    ("evaluate-unknown-variant", [*EVAL[:3], "--variant", "zz", *EVAL[5:], "--checkpoint", "{w}/ok.pth"],
     "unknown variant 'zz'"),
    ("evaluate-batch-size", [*EVAL, "--checkpoint", "{w}/ok.pth", "--batch-size", "0"], "--batch-size 0"),
    ("evaluate-device-cuda", [*EVAL, "--checkpoint", "{w}/ok.pth", "--device", "cuda"], "no CUDA device"),
    ("evaluate-no-split", ["evaluate", "--method", "tiny", "--variant", "a", "--registry", "{w}/tiny.yaml",
                           "--data-root", "{w}/data", "--checkpoint", "{w}/ok.pth"], "pass --split"),
    ("evaluate-ensemble-count", [*EVAL[:3], "--variant", "pair", *EVAL[5:], "--checkpoint", "{w}/ok.pth"],
     "pass --checkpoint once per member"),
    ("evaluate-feature-width", [*EVAL[:8], "{w}/wide", *EVAL[9:], "--checkpoint", "{w}/tiny.pth"],
     "test_ims.npy: region feature dim"),
    ("evaluate-unknown-precision", [*EVAL, "--checkpoint", "{w}/ok.pth", "--precision", "fp8"], "invalid choice"),
    # metrics
    ("metrics-missing", [*METRICS, "--sims", "{w}/none.npy"], "{w}/none.npy: no such matrix file"),
    ("metrics-empty", [*METRICS, "--sims", "{w}/empty.npy"], "{w}/empty.npy: not a readable"),
    ("metrics-truncated", [*METRICS, "--sims", "{w}/truncated.npy"], "{w}/truncated.npy: not a readable"),
    ("metrics-one-d", [*METRICS, "--sims", "{w}/one_d.npy"], "expected a 2-D images x captions matrix"),
    ("metrics-text", [*METRICS, "--sims", "{w}/text.npy"], "expected numbers"),
    ("metrics-folder", [*METRICS, "--sims", "{w}/folder"], "{w}/folder: is a folder"),
    ("metrics-nan", [*METRICS, "--sims", "{w}/nan.npy"], "NaN"),
    ("metrics-json-is-sims", [*METRICS, "--sims", "{w}/good.npy", "--json", "{w}/good.npy"],
     "is a file this command reads"),
    ("metrics-json-folder", [*METRICS, "--sims", "{w}/good.npy", "--json", "{w}/folder"], "is a folder"),
    ("metrics-not-defined", ["metrics", "--protocol", "coco5k", "--sims", "{w}/good.npy"], "coco5k is not defined"),
    ("metrics-owner-length", [*METRICS, "--sims", "{w}/good.npy", "--image-of-caption", "{w}/owner_short.npy"],
     "owner_short.npy: expected 20 integers"),
    ("metrics-owner-order", [*METRICS, "--sims", "{w}/good.npy", "--image-of-caption", "{w}/owner_unordered.npy"],
     "grouped by image"),
    ("metrics-owner-missing", [*METRICS, "--sims", "{w}/good.npy", "--image-of-caption", "{w}/none.npy"],
     "{w}/none.npy: no such caption-to-image mapping"),
    ("metrics-data-root-missing", ["metrics", "--protocol", "eccv", "--sims", "{w}/good.npy", "--data-root",
                                   "{w}/nodir"], "--data-root {w}/nodir"),
    ("metrics-bootstrap-negative", ["metrics", "--protocol", "recall", "--sims", "{w}/good.npy", "--bootstrap", "-1"],
     "--bootstrap -1"),
    ("metrics-npz-ambiguous", [*METRICS, "--sims", "{w}/two.npz"], "several arrays (a, b)"),
    ("metrics-transposed", [*METRICS, "--sims", "{w}/transposed.npy"],
     "transposed.npy: the matrix looks transposed: 20 x 4; rows must be images"),
    ("metrics-transposed-owner", [*METRICS, "--sims", "{w}/transposed.npy", "--image-of-caption",
                                  "{w}/owner_neg.npy"], "transposed.npy: the matrix looks transposed"),
    ("metrics-width", [*METRICS, "--sims", "{w}/wide21.npy"], "wide21.npy: 4 images x 21 captions: 21 is not a "
                                                              "multiple of 5 captions per image"),
    ("metrics-empty-matrix", [*METRICS, "--sims", "{w}/zero.npy"], "zero.npy: an empty 0 x 0 matrix"),
    ("metrics-header-tib", [*METRICS, "--sims", "{w}/tib.npy"], "tib.npy: its header declares shape (2000000, "
                                                                "2000000) of float32"),
    ("metrics-int-beyond-2-53", [*METRICS, "--sims", "{w}/int_huge.npy"],
     "int_huge.npy: integer score 1152921504606846976 at (0, 0) is beyond 2**53"),
    ("metrics-pickled-objects", [*METRICS, "--sims", "{w}/objects.npy"], "objects.npy: holds Python objects"),
    ("metrics-pt-two-tensors", [*METRICS, "--sims", "{w}/two.pt"], "two.pt: several arrays (a, b); choose one "
                                                                   "with --key NAME"),
    ("metrics-pt-unknown-key", [*METRICS, "--sims", "{w}/two.pt", "--key", "c"], "two.pt: no array 'c' (has a, b)"),
    ("metrics-owner-negative", [*METRICS, "--sims", "{w}/good.npy", "--image-of-caption", "{w}/owner_neg.npy"],
     "owner_neg.npy: entry 19 is -1, but image rows are 0 <= row < 4"),
    ("metrics-owner-range", [*METRICS, "--sims", "{w}/good.npy", "--image-of-caption", "{w}/owner_range.npy"],
     "owner_range.npy: entry 19 is 7, but image rows are 0 <= row < 4"),
    ("metrics-owner-gap", [*METRICS, "--sims", "{w}/good.npy", "--image-of-caption", "{w}/owner_gap.npy"],
     "owner_gap.npy: image 2 has no caption (entry 10 jumps from image 1 to 3)"),
    ("metrics-owner-first", [*METRICS, "--sims", "{w}/good.npy", "--image-of-caption", "{w}/owner_first.npy"],
     "owner_first.npy: image 0 has no caption (entry 0 is 1)"),
    ("metrics-owner-last", [*METRICS, "--sims", "{w}/good.npy", "--image-of-caption", "{w}/owner_last.npy"],
     "owner_last.npy: image 3 has no caption (the last entry is 2"),
    ("metrics-owner-header-tib", [*METRICS, "--sims", "{w}/good.npy", "--image-of-caption", "{w}/owner_tib.npy"],
     "owner_tib.npy: its header declares shape (1099511627776,)"),
    ("metrics-unknown-protocol", ["metrics", "--protocol", "coco2k", "--sims", "{w}/good.npy"],
     "unknown protocol 'coco2k'"),
    # import
    ("import-shape", ["import", "--sims", "{w}/good.npy", "--method", "x", "--dataset", "demo",
                      "--captions-per-image", "3", "--results", "{w}/results"],
     "20 is not a multiple of 3 captions per image"),
    ("import-nan", ["import", "--sims", "{w}/nan.npy", "--method", "x", "--dataset", "demo", "--results",
                    "{w}/results"], "NaN"),
    ("import-bad-name", ["import", "--sims", "{w}/good.npy", "--method", "x y", "--dataset", "demo", "--results",
                         "{w}/results"], "--method 'x y'"),
    ("import-unknown-dataset", ["import", "--sims", "{w}/good.npy", "--method", "x", "--dataset", "cocoa",
                                "--results", "{w}/results"], "Did you mean 'coco'"),
    ("import-owner-order", ["import", "--sims", "{w}/good.npy", "--method", "x", "--dataset", "demo",
                            "--image-of-caption", "{w}/owner_unordered.npy", "--results", "{w}/results"],
     "grouped by image"),
    ("import-transposed", ["import", "--sims", "{w}/transposed.npy", "--method", "x", "--dataset", "demo",
                           "--results", "{w}/results"], "transposed.npy: the matrix looks transposed: 20 x 4"),
    ("import-int-beyond-2-53", ["import", "--sims", "{w}/int_huge.npy", "--method", "x", "--dataset", "demo",
                                "--results", "{w}/results"], "int_huge.npy: integer score"),
    ("import-pt-two-tensors", ["import", "--sims", "{w}/two.pt", "--method", "x", "--dataset", "demo", "--results",
                               "{w}/results"], "several arrays (a, b); choose one with --key NAME"),
    ("import-owner-gap", ["import", "--sims", "{w}/good.npy", "--method", "x", "--dataset", "demo",
                          "--image-of-caption", "{w}/owner_gap.npy", "--results", "{w}/results"],
     "owner_gap.npy: image 2 has no caption"),
    ("import-reported-missing", ["import", "--sims", "{w}/good.npy", "--method", "x", "--dataset", "demo",
                                 "--reported", "{w}/none.yaml", "--results", "{w}/results"], "none.yaml"),
    # check-data and report
    ("check-data-missing-root", ["check-data", "--dataset", "demo", "--data-root", "{w}/nodata"], "{w}/nodata"),
    ("check-data-unknown-dataset", ["check-data", "--dataset", "cooc", "--data-root", "{w}/data"], "Did you mean"),
    ("check-data-missing-split", ["check-data", "--dataset", "demo", "--data-root", "{w}/data", "--splits", "val"],
     "val_"),
    ("report-missing-results", ["report", "--results", "{w}/noresults", "--reports", "{w}/rep"],
     "--results {w}/noresults: no such results folder"),
    ("report-unknown-paper", ["report", "--results", "{w}/results", "--reports", "{w}/rep", "--paper", "esaa"],
     "Did you mean 'esa'"),
    ("report-export-format", ["report", "--results", "{w}/results", "--reports", "{w}/rep", "--export",
                              "{w}/all.xlsx"], "unknown format '.xlsx'; name a .csv or .parquet file"),
]


def test_the_table_is_large_and_unique():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


def _run_case(ws: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    return subprocess.run([sys.executable, str(ROOT / "run_all.py"), *[a.format(w=ws) for a in args]],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ws)


def test_bad_inputs_are_named_without_traceback_and_lose_nothing(ws):
    """Every case of the table, run as separate processes (a few at a time): non-zero exit, the expected words
    naming the file or value, no traceback, and the workspace byte for byte as it was."""
    before = _snapshot(ws)
    with ThreadPoolExecutor(max_workers=3) as pool:
        procs = list(pool.map(lambda case: _run_case(ws, case[1]), CASES))
    problems = []
    for (name, _, expected), proc in zip(CASES, procs):
        out = proc.stdout + proc.stderr
        if proc.returncode == 0:
            problems.append(f"{name}: exit 0 (accepted silently)\n{out}")
        elif "Traceback" in out:
            problems.append(f"{name}: traceback\n{out}")
        elif expected.format(w=ws) not in " ".join(out.split()):
            problems.append(f"{name}: message lacks {expected!r}\n{out}")
    assert not problems, "\n\n".join(problems)
    assert _snapshot(ws) == before


def test_report_moves_a_corrupt_metrics_file_aside_with_one_warning_line(ws, tmp_path):
    """A metrics.json holding a list is named in one warning line, moved aside (kept), and left out."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(ws / "listres", results)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]), "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), "report", "--results", str(results),
                           "--reports", str(tmp_path / "rep")], capture_output=True, text=True, env=env, timeout=120)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "quarantine(" not in out, out
    assert "warning:" in out and "metrics.json: unreadable" in out, out
    kept = list((results / "demo" / "tiny-a-seed0" / "eval").glob("metrics.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == "[1, 2, 3]"
