"""Issue 22: matrices ranked in their own precision (no silent cast), readers that never crash on a crafted or
shrinking file, and a report that sets an unusable stored result aside instead of failing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_orchestrate_fixtures import tiny_registry

from harness.cli.app import main
from harness.core.results import ResultStore, save_npy
from harness.data.matrices import MatrixFileError, load_matrix, load_owner, lossless_scores
from harness.data.npy import NpyError, read_npy_stream
from harness.eval.protocols import compute_protocol

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def _near_ties(n: int = 4, k: int = 5) -> np.ndarray:
    """Own captions score 1 + 1e-12 above every other caption: separate in float64, tied in float32."""
    sims = np.ones((n, n * k))
    for i in range(n):
        sims[i, k * i:k * (i + 1)] += 1e-12
    return sims


def _metrics_rsum(path: Path, tmp_path: Path, *extra: str) -> float:
    out = tmp_path / f"{path.stem}.json"
    assert main(["metrics", "--sims", str(path), "--protocol", "recall", "--bootstrap", "0", "--json", str(out),
                 *extra]) == 0
    return json.loads(out.read_text())["rsum"]


def test_float64_scores_below_float32_precision_are_ranked_as_stored(tmp_path):
    sims = _near_ties()
    assert np.float32(1 + 1e-12) == np.float32(1)  # the cast this guards against ties every caption
    np.save(tmp_path / "near.npy", sims)
    assert _metrics_rsum(tmp_path / "near.npy", tmp_path) == 600.0
    assert load_matrix(tmp_path / "near.npy").dtype == np.float64


def test_import_stores_the_matrix_in_its_own_dtype_and_reports_what_metrics_reports(tmp_path):
    np.save(tmp_path / "near.npy", _near_ties())
    np.save(tmp_path / "huge.npy", _near_ties() * 1e300)  # finite, far above float32's 3.4e38
    for name in ("near", "huge"):
        assert main(["import", "--sims", str(tmp_path / f"{name}.npy"), "--method", name, "--dataset", "demo",
                     "--results", str(tmp_path / "results")]) == 0
        folder = tmp_path / "results" / "demo" / f"{name}-default-imported" / "eval"
        stored = np.load(folder / "sims.npy")
        assert stored.dtype == np.float64 and np.array_equal(stored, np.load(tmp_path / f"{name}.npy"))
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["protocols"]["recall"]["rsum"] == _metrics_rsum(tmp_path / f"{name}.npy", tmp_path) == 600.0


def test_integer_scores_are_exact_or_refused(tmp_path):
    base = np.arange(80).reshape(4, 20)[:, ::-1] * 3
    for dtype, offset in ((np.int64, 2**40), (np.int32, 2**30), (np.uint16, 0), (np.int8, -60)):
        scores = (base + offset if dtype != np.int8 else base // 3 - 60).astype(dtype)
        got = lossless_scores(scores, "m")
        assert got.dtype.kind == "f" and np.array_equal(got.astype(np.int64), scores.astype(np.int64))
        assert len(np.unique(got)) == len(np.unique(scores))  # distinct scores stay distinct (float32 would tie)
    np.save(tmp_path / "i64.npy", (base + 2**40).astype(np.int64))
    np.save(tmp_path / "f64.npy", (base + 2**40).astype(np.float64))
    assert _metrics_rsum(tmp_path / "i64.npy", tmp_path) == _metrics_rsum(tmp_path / "f64.npy", tmp_path)
    beyond = base.astype(np.int64)
    beyond[2, 7] = -(2**53)
    with pytest.raises(MatrixFileError, match=r"m: integer score -9007199254740992 at \(2, 7\) is beyond 2\*\*53"):
        lossless_scores(beyond, "m")
    with pytest.raises(MatrixFileError, match="expected numbers, found dtype complex64"):
        lossless_scores(np.zeros((2, 4), np.complex64), "m")


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= 52, reason="long double is float64 here")
def test_long_double_is_kept_when_exact_and_refused_when_not():
    exact = np.arange(8, dtype=np.longdouble).reshape(2, 4)
    assert lossless_scores(exact, "m").dtype == np.float64
    inexact = exact + np.longdouble(1) / np.longdouble(3) * np.longdouble(2.0) ** -60
    with pytest.raises(MatrixFileError, match=r"cannot be held exactly in float64"):
        lossless_scores(inexact, "m")


def test_a_stream_that_ends_early_is_an_error_not_a_crash():
    """What a file truncated while it is read looks like to the reader (a mapping would die of SIGBUS)."""
    buf = io.BytesIO()
    np.save(buf, np.ones((8, 40), np.float32))
    data = buf.getvalue()
    with pytest.raises(NpyError, match=r"sims.npy: ended after 1,240 of 1,280 data bytes"):
        read_npy_stream(io.BytesIO(data[:-40]), "sims.npy", len(data))  # the size it had when it was checked
    fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    buf = io.BytesIO()
    np.save(buf, fortran)
    assert np.array_equal(read_npy_stream(io.BytesIO(buf.getvalue()), "f.npy", len(buf.getvalue())), fortran)


def test_the_mapping_reader_checks_entries_when_it_knows_the_rows(tmp_path):
    np.save(tmp_path / "m.npy", np.array([0, 0, 1, 1, 3], np.int64))
    assert load_owner(tmp_path / "m.npy", 5).tolist() == [0, 0, 1, 1, 3]  # lengths only
    with pytest.raises(MatrixFileError, match=r"m.npy: image 2 has no caption \(entry 4 jumps from image 1 to 3\)"):
        load_owner(tmp_path / "m.npy", 5, 4)
    np.save(tmp_path / "u.npy", np.array([0, 1, 2**63], np.uint64))
    with pytest.raises(MatrixFileError, match=r"u.npy: entry 2 is 9223372036854775808, but image rows are"):
        load_owner(tmp_path / "u.npy", 3, 3)
    with pytest.raises(Exception, match="grouped by image"):
        compute_protocol("recall", np.zeros((2, 4)), np.array([0, 1, 0, 1]), matrix_name="x.npy")


# ---- report ------------------------------------------------------------------------------------------------

def _eval_job(store: ResultStore, name: str, sims: np.ndarray | None, protocols: dict) -> Path:
    job = f"demo/{name}/eval"
    variant = "a"
    store.start(job, {"stage": "evaluate", "method": "tiny", "variant": variant, "dataset": "demo", "split": "test",
                      "seed": None, "source": name.split("-", 2)[-1], "name": job}, {"device": "cpu"})
    if sims is not None:
        save_npy(store.job_dir(job) / "sims.npy", sims)
    store.finish(job, {"stage": "evaluate", "protocols": protocols, "shape": [20, 100], "efficiency": {}})
    return store.job_dir(job)


def test_report_sets_bad_results_aside_names_their_jobs_and_writes_the_rest(tmp_path):
    rng = np.random.default_rng(0)
    store = ResultStore(tmp_path / "results")

    def sims(strength: float) -> np.ndarray:
        s = rng.standard_normal((20, 100)).astype(np.float32)
        s[np.arange(100) // 5, np.arange(100)] += strength
        return s

    good, other = sims(2.0), sims(1.0)
    folders = {"good": _eval_job(store, "tiny-a-official1", good, {"recall": compute_protocol("recall", good,
                                                                                                bootstrap=0)}),
               "other": _eval_job(store, "tiny-a-official2", other, {"recall": compute_protocol("recall", other,
                                                                                                  bootstrap=0)})}
    nan = sims(1.0)
    nan[3, 4] = np.nan  # a diverged checkpoint: its protocols say why they are not defined
    undefined = {"recall": {"defined": False, "reason": "recall could not be computed: 1 NaN or infinite scores"}}
    folders["nan"] = _eval_job(store, "tiny-a-official3", nan, undefined)
    folders["cut"] = _eval_job(store, "tiny-a-official4", other, {"recall": compute_protocol("recall", other,
                                                                                               bootstrap=0)})
    (folders["cut"] / "sims.npy").write_bytes((folders["cut"] / "sims.npy").read_bytes()[:300])
    folders["flat"] = _eval_job(store, "tiny-a-official5", other.ravel(), {"recall": compute_protocol(
        "recall", other, bootstrap=0)})
    inf = compute_protocol("recall", other, bootstrap=0)
    inf["rsum"] = float("inf")
    folders["inf"] = _eval_job(store, "tiny-a-official6", None, {"recall": inf})
    tiny_registry(tmp_path / "tiny.yaml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]), "COLUMNS": "400",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), "report", "--results", str(tmp_path / "results"),
                           "--reports", str(tmp_path / "rep"), "--registry", str(tmp_path / "tiny.yaml")],
                          capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    for key, what in (("nan", "1 NaN or infinite scores"), ("cut", "the file is truncated"),
                      ("flat", "expected a 2-D images x captions matrix"),
                      ("inf", "metrics.json holds non-finite numbers (protocols.recall.rsum = inf)")):
        assert any(line.startswith(f"warning: {folders[key]}:") and what in line for line in warnings), (key, out)
    for key in ("nan", "cut", "flat"):  # moved aside, kept byte for byte
        assert not (folders[key] / "sims.npy").exists() and len(list(folders[key].glob("sims.npy.corrupt-*"))) == 1
    assert (folders["good"] / "sims.npy").is_file() and (folders["inf"] / "metrics.json").is_file()
    text = (tmp_path / "rep" / "demo.md").read_text()
    problems = text.split("## Stored results with problems")[1].split("## ")[0]
    for key in ("nan", "cut", "flat", "inf"):
        assert f"`demo/{folders[key].parent.name}/eval`" in problems
    recall = text.split("## recall")[1].split("\n## ")[0]
    rows = {n: line for line in recall.splitlines() for n in range(1, 7)
            if line.startswith("| tiny/a") and f"official checkpoint #{n} " in line}
    assert len(rows) == 6, text
    for n in (3, 4, 5):  # nan, cut, flat: named in their row
        assert f"not tested: {folders[{3: 'nan', 4: 'cut', 5: 'flat'}[n]]}: sims.npy is unusable" in rows[n]
    assert "| best |" in rows[1] and "not ranked: rsum is not finite" in rows[6]
    assert "not tested" not in rows[2] and "best" not in rows[2]  # the good rows are still compared
    again = subprocess.run([sys.executable, str(ROOT / "run_all.py"), "report", "--results", str(tmp_path / "results"),
                            "--reports", str(tmp_path / "rep"), "--registry", str(tmp_path / "tiny.yaml")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "sims.npy is unusable" not in again.stderr  # set aside once
