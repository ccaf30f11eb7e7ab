"""Cascades through `run` and `evaluate` (issue 23): planned jobs with their own identity, run resumably from the
shortlister's stored matrix, their own report rows beside the exact ones, and the cost record and projection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from plan_helpers import plan_of
from test_orchestrate_fixtures import (  # noqa: F401 - one_thread: autouse fixture
    DIM,
    TinyAdapter,
    one_thread,
    run_args,
    tiny_data,
    write_official,
)

from harness.cli.app import main
from harness.eval.cost import add_cost, project
from harness.eval.protocols import PROTOCOLS
from harness.eval.shortlist import CascadeResult
from harness.run.display import declared_table
from harness.spec.registry import RegistryError, load_registry


class TinyPairAdapter(TinyAdapter):
    """The tiny model scored as a pairwise method (a nonlinear function of each pair)."""

    method = "tinypair"
    scoring = "pairwise"

    def score(self, image_block: torch.Tensor, text_block: torch.Tensor) -> torch.Tensor:
        return torch.tanh(2.0 * image_block @ text_block.t())


def _registry(path, k_files=("a.pth",)):
    demo = {"epochs": 1, "batch_size": 30, "lr": 0.01, "embed_size": 8, "seed": 0}
    ck = {"demo": {"url": "https://example.org/tiny", "files": list(k_files)}}
    doc = {"methods": {
        "tiny": {"title": "Tiny embedding", "adapter": "test_orchestrate_fixtures:TinyAdapter",
                 "recipes": {"default": {"epochs": 1, "batch_size": 16}, "demo": demo},
                 "variants": {"a": {"description": "m", "options": {"img_dim": DIM}, "checkpoints": ck}}},
        "tinypair": {"title": "Tiny pairwise", "adapter": "test_cascade_run:TinyPairAdapter",
                     "recipes": {"default": {"epochs": 1, "batch_size": 16}, "demo": demo},
                     "variants": {"p": {"description": "m", "options": {"img_dim": DIM}, "checkpoints": ck}}}}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def camp(tmp_path):
    tiny_data(tmp_path / "data")
    _registry(tmp_path / "registry.yaml")
    return tmp_path


def _plan(tmp, **kw):
    registry = load_registry(tmp / "registry.yaml")
    return plan_of(registry, ["tinypair"], "demo", data_fp="d", code="c", protocols="p", **kw)


def test_plan_adds_a_cascade_job_with_its_own_identity(camp):
    plan = _plan(camp, shortlist=8, shortlister="tiny")
    names = {j.name: j for j in plan.jobs}
    name = "demo/tinypair-p-seed0-rerank8-tiny-a/eval"
    assert name in names and "demo/tiny-a-seed0/eval" in names  # the shortlister's evaluation is planned too
    job = names[name]
    assert set(job.depends) == {"demo/tinypair-p-seed0/train", "demo/tiny-a-seed0/eval"}
    assert dict(job.config.cascade) == {"k": 8, "shortlister": "tiny/a", "stage1_job": "demo/tiny-a-seed0/eval"}
    exact = names["demo/tinypair-p-seed0/eval"]
    assert job.key != exact.key
    other_k = {j.name: j for j in _plan(camp, shortlist=16, shortlister="tiny").jobs}
    assert other_k["demo/tinypair-p-seed0-rerank16-tiny-a/eval"].key != job.key  # K is in the identity
    changed = {j.name: j for j in _plan(camp, shortlist=8, shortlister="tiny", recipe_overrides={
        "tiny": {"lr": 0.02}}).jobs}
    casc = next(j for n, j in changed.items() if "rerank8" in n)
    assert casc.key != job.key  # so is the stage-1 job's key


def test_bad_shortlister_is_refused_at_plan_time(camp):
    with pytest.raises(RegistryError, match="cross attention; stage 1 needs an embedding method"):
        _plan(camp, shortlist=8, shortlister="tinypair")
    with pytest.raises(RegistryError, match="positive number of candidates"):
        _plan(camp, shortlist=0, shortlister="tiny")
    assert main(["run", "--methods", "tinypair", "--dataset", "demo", "--registry", str(camp / "registry.yaml"),
                 "--shortlist", "8", "--dry-run"]) == 2  # --shortlister missing: one-line error


def test_run_evaluates_the_cascade_and_reports_it_beside_the_exact_row(camp):
    args = run_args(camp, "--methods", "tiny,tinypair", "--shortlist", "60", "--shortlister", "tiny")
    # run_args names --methods tiny first: the later --methods wins
    assert main(args) == 0
    res = camp / "results" / "demo"
    casc = json.loads((res / "tinypair-p-seed0-rerank60-tiny-a" / "eval" / "metrics.json").read_text())
    exact = json.loads((res / "tinypair-p-seed0" / "eval" / "metrics.json").read_text())
    assert casc["cascade"]["k"] == 60 and casc["cascade"]["source"] == "tiny/a"
    # K = the gallery's captions: every pair is a candidate, so the cascade equals the exact evaluation
    assert casc["protocols"]["recall"]["rsum"] == pytest.approx(exact["protocols"]["recall"]["rsum"])
    stored = CascadeResult.load(res / "tinypair-p-seed0-rerank60-tiny-a" / "eval" / "cascade.npz")
    sims = np.load(res / "tinypair-p-seed0" / "eval" / "sims.npy")
    np.testing.assert_allclose(stored.i2t_scores, np.take_along_axis(sims, stored.i2t_index, 1), atol=1e-5)
    for eff in (casc["efficiency"], exact["efficiency"]):
        assert eff["pairs_per_second"] > 0 and eff["encode_ms_per_item"] > 0 and eff["peak_host_mb"] > 0
        assert eff["peak_gpu_mb"] is None  # CPU
    report = (camp / "reports" / "demo.md").read_text()
    assert "tinypair/p, rerank top-60 of tiny/a" in report
    section = report.split("## Shortlist and rerank")[1].split("\n## ")[0]
    assert "+0.0" in section and "100.0%" in section
    assert "## Cost at scale" in report and "time at 1M images" in report
    assert (camp / "reports" / "plots" / "demo-time-vs-gallery.png").stat().st_size > 1000
    log = res / "tinypair-p-seed0-rerank60-tiny-a" / "eval" / "job.log"
    starts = log.read_text().count(" start ")
    assert main(args) == 0  # finished: reused, not run again
    assert log.read_text().count(" start ") == starts


def test_report_shows_beyond_the_shortlist(camp):
    args = run_args(camp, "--methods", "tiny,tinypair", "--shortlist", "1", "--shortlister", "tiny")
    main(args)
    report = (camp / "reports" / "demo.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| tinypair/p, rerank top-1 of tiny/a |")]
    assert sum("not defined: beyond the shortlist" in row for row in rows) == 2  # recall table, cascade table


def test_cli_cascade_writes_beside_save_sims_and_prints_no_none(camp, capsys):
    tiny_data(camp / "data2")
    ck = write_official(camp / "ck" / "a.pth", 0)
    reg = str(camp / "registry.yaml")
    common = ["evaluate", "--method", "tinypair", "--variant", "p", "--dataset", "demo", "--registry", reg,
              "--data-root", str(camp / "data"), "--checkpoint", str(ck)]
    assert main([*common[:2], "tiny", common[3], "a", *common[5:], "--save-sims", str(camp / "esa.npy")]) == 0
    out = camp / "x.npy"
    assert main([*common, "--shortlist", "2", "--shortlist-from", str(camp / "esa.npy"), "--save-sims", str(out),
                 "--json", str(camp / "x.json")]) == 0
    assert (camp / "x.cascade.npz").is_file() and not (camp / "x").exists()
    assert (camp / "x.image_of_caption.npy").is_file()
    rec = json.loads((camp / "x.json").read_text())
    assert rec["cascade"]["k"] == 2 and rec["result"].endswith("x.cascade.npz")
    assert rec["efficiency"]["pairs_per_second"] > 0 and rec["efficiency"]["peak_host_mb"] > 0
    printed = capsys.readouterr().out
    assert "None" not in printed and "beyond the shortlist" in printed and "stage-1 ceiling" in printed


def test_recall_table_shows_undefined_values_without_none():
    from rich.console import Console

    block = {"r1": 50.0, "r5": None, "r10": None, "medr": None, "meanr": None, "not_defined": {"r5": "beyond"}}
    table = declared_table({"recall": {"i2t": block, "t2i": block, "rsum": None}}, PROTOCOLS["recall"].cli_columns, "t")
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    assert "None" not in text and "beyond the shortlist" in text and "—" in text


def test_projection_model():
    eff = add_cost({"encode_ms_per_image": 2.0, "encode_ms_per_caption": 1.0, "scoring_seconds": 10.0,
                    "device": "cpu"}, (1000, 5000))
    assert eff["pairs_per_second"] == pytest.approx(5e6 / 10.0)
    assert eff["encode_ms_per_item"] == pytest.approx((2000 + 5000) / 6000)
    exact = project(eff, (1000, 5000), 100_000)
    assert exact.captions == 500_000 and exact.memory_bytes == 4 * 100_000 * 500_000  # 200 GB dense matrix
    assert exact.seconds == pytest.approx(200 + 500 + 100_000 * 500_000 / 5e5)  # encode linear, scoring quadratic
    casc = add_cost({"encode_seconds": 7.0, "stage1_seconds": 0.5, "scoring_seconds": 2.0, "pairs_scored": 640_000,
                     "pairs_per_second": 320_000.0}, (1000, 5000), 640_000)
    p = project(casc, (1000, 5000), 100_000, k=64)
    stage2 = 64 * 600_000 / 320_000.0
    assert p.seconds == pytest.approx(700 + 0.5 * 1e4 + stage2)  # stage 1 quadratic, stage 2 linear in K
    assert p.memory_bytes == 8 * 64 * 600_000
    assert project({"encode_ms_per_item": 1.0}, (10, 50), 100) is None  # no pairs/s measured: no projection


def test_a_killed_cascade_job_resumes_its_pair_tiles(camp):
    import signal
    import subprocess
    import sys

    from test_orchestrate_fixtures import worker_env

    from harness.run.jobs import KILL_ENV

    for method, variant in (("tiny", "a"), ("tinypair", "p")):
        write_official(camp / "checkpoints" / method / variant / "demo" / "a.pth", 3)
    args = run_args(camp, "--methods", "tiny,tinypair", "--stage", "evaluate", "--tiles", "2,30", "--shortlist", "60",
                    "--shortlister", "tiny")
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "run_all.py"), *args]

    def run(kill_at: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env={**worker_env(), KILL_ENV: kill_at}, capture_output=True, text=True,
                              timeout=120)

    assert main(args[:args.index("--shortlist")]) == 0  # the exact evaluations first
    # the cascade's 12 pair tiles (60 pairs each; the kill hook counts a job's tiles): killed after 6
    killed = run("tile:6")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    job = camp / "results" / "demo" / "tinypair-p-official-rerank60-tiny-a" / "eval"
    assert (job / "work" / "pairs_0.h5").is_file() and not (job / "metrics.json").exists()
    resumed = run("tile:7")  # the 6 remaining tiles finish before a 7th: resumed, not started over
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    casc = json.loads((job / "metrics.json").read_text())
    exact = json.loads((job.parents[1] / "tinypair-p-official" / "eval" / "metrics.json").read_text())
    assert casc["protocols"]["recall"]["rsum"] == pytest.approx(exact["protocols"]["recall"]["rsum"])
    section = (camp / "reports" / "demo.md").read_text().split("## Shortlist and rerank")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| tinypair/p, rerank top-60 of tiny/a"))
    assert "official checkpoint" in row and row.rstrip(" |").endswith("+0.0")  # beside its exact official row
