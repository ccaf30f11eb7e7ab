"""Reports rendered from small synthetic result folders and a small registry written by the tests."""

from __future__ import annotations

import re

import numpy as np
import pytest

from harness.core.results import ResultStore, save_npy
from harness.data.demo import chance_rsum
from harness.eval.metrics.recall import fold_recall
from harness.eval.protocols import compute_protocol
from harness.report import write_reports
from harness.report.significance import per_image_rsum
from harness.spec.registry import RegistryError, parse_registry

PNG = b"\x89PNG\r\n\x1a\n"

REGISTRY = {
    "datasets": {
        "toy": {"description": "A toy set. Nothing more.", "split": "test", "protocols": ["recall", "cxc"]},
        "demo": {"description": "Demo set with synthetic image features.", "split": "test", "protocols": ["recall"]},
    },
    "methods": {
        "alpha": {
            "title": "Alpha: a method", "venue": "Nowhere 2024", "code": "https://example.org/alpha",
            "adapter": "methods.alpha:Alpha",
            "notes": ["The official evaluation prints 6 * mean(ar) as the 5-fold rsum (misprint)."],
            "settings": {"members": ["a"]},
            "variants": {
                "a": {"description": "plain", "options": {}},
                "b": {"description": "other", "options": {}},
                "ens": {"description": "mean of two a models", "members": ["a", "a"], "options": {}},
            },
        },
        "beta": {"title": "Beta", "adapter": "methods.beta:Beta", "variants": {"x": {"options": {}}}},
    },
    "reported": [
        {"method": "alpha", "variant": "a", "dataset": "toy", "protocol": "recall", "source": "paper",
         "table": "Table 1", "label": "Alpha-A", "values": {"i2t.r1": 50.0, "t2i.r1": 40.0, "rsum": 300.0}},
        {"method": "alpha", "variant": "b", "dataset": "toy", "protocol": "recall", "source": "paper",
         "table": "Table 1", "label": "Alpha-B", "note": "printed rsum differs from its recalls by 0.1",
         "values": {"i2t.r1": 61.2, "t2i.r1": 45.0, "rsum": 333.3}},
        {"method": "alpha", "variant": "ens", "setting": {"members": "a"}, "dataset": "toy", "protocol": "recall",
         "source": "README", "table": "Table 2", "label": "Alpha* (A)", "values": {"i2t.r1": 55.0, "rsum": 320.0}},
    ],
}


def registry():
    return parse_registry(REGISTRY, source="test registry")


def recall_block(i2t_r1, t2i_r1, rsum, ci=None, **extra):
    node = {"protocol": "recall", "i2t": {"r1": i2t_r1, "r5": 80.0, "r10": 90.0}, "t2i": {"r1": t2i_r1, "r5": 70.0},
            "rsum": rsum, "ties": {"rsum_tie_optimistic": rsum + 0.5, "i2t_affected_queries": 1,
                                   "t2i_affected_queries": 2}, **extra}
    if ci is not None:
        node["ci"] = ci
    return node


def add_eval(store, dataset, run, cfg, protocols, *, sims=None, efficiency=None, env=None, shape=(20, 100)):
    name = f"{dataset}/{run}/eval"
    config = {"stage": "evaluate", "dataset": dataset, "split": "test", "name": name, **cfg}
    store.start(name, config, env or {"device": "cpu", "git": {"revision": "abc123def4567890", "dirty": False},
                                      "python": "3.11.0", "packages": {"torch": "2.14.1", "numpy": "2.4.0"}})
    if sims is not None:
        save_npy(store.job_dir(name) / "sims.npy", sims.astype(np.float32))
        shape = sims.shape
    store.finish(name, {"stage": "evaluate", "shape": list(shape), "protocols": protocols,
                        "efficiency": efficiency or {}})
    return name


def add_train(store, dataset, run, seed, gpu_hours, wall):
    name = f"{dataset}/{run}/train"
    store.start(name, {"stage": "train", "dataset": dataset, "seed": seed}, {"device": "cuda"})
    store.finish(name, {"stage": "train", "best_rsum": 1.0, "efficiency": {"gpu_hours": gpu_hours,
                                                                            "train_wall_seconds": wall}})
    return name


def section(text, heading):
    """The text from `heading` up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading)
    nxt = re.search(rf"^#{{1,{level}}} ", text[start + len(heading):], flags=re.M)
    return text[start: start + len(heading) + (nxt.start() if nxt else len(text))]


def table_row(text, first_cell_prefix, contains=""):
    rows = [ln for ln in text.splitlines()
            if ln.startswith(f"| {first_cell_prefix}") and contains in ln]
    assert rows, f"no row starting with {first_cell_prefix!r} containing {contains!r}"
    return [c.strip() for c in rows[0].strip("|").split(" | ")]


def test_paper_table_deltas_and_interval_flags(tmp_path):
    store = ResultStore(tmp_path / "results")
    # i2t.r1 52.0 with CI [49, 55]: reported 50.0 is inside; rsum 320 with CI [310, 330]: reported 300 is outside
    add_eval(store, "toy", "alpha-a-official", {"method": "alpha", "variant": "a", "source": "official", "seed": None,
                                                "checkpoint": "ck/model_best.pth"},
             {"recall": recall_block(52.0, 38.25, 320.0, ci={"i2t.r1": [49.0, 55.0], "t2i.r1": [38.0, 38.5],
                                                              "rsum": [310.0, 330.0]})})
    paths = write_reports(tmp_path / "results", tmp_path / "reports", registry=registry())
    text = (tmp_path / "reports" / "alpha.md").read_text()
    assert tmp_path / "reports" / "alpha.md" in paths
    row = table_row(section(text, "### Table 1"), "Alpha-A", "official")
    assert row[1].startswith("official checkpoint (model_best.pth)")
    assert row[2] == "52.0 (50.0, +2.0)"  # inside [49, 55]: no flag
    # t2i.r1: 38.25 vs 40.0, interval [38.0, 38.5] -> outside; delta rounded to the column's decimals
    assert row[3] == "38.2 (40.0, -1.8) ⚠"
    assert row[4] == "320.0 (300.0, +20.0) ⚠"  # rsum outside [310, 330]
    assert row[5].startswith("[310.0, 330.0] (95% CI")
    # the summary counts the three compared cells, two of them flagged
    summary = table_row(section(text, "## Summary"), "official")
    assert summary[1:4] == ["3", "1", "2"]
    # notes: method-level known defects at the bottom; a reported row's note beside the row
    notes = section(text, "## Notes")
    assert "6 \\* mean(ar)" in notes and "printed rsum differs from its recalls by 0.1" not in notes
    header = table_row(section(text, "### Table 1"), "row")
    alpha_b = dict(zip(header, table_row(section(text, "### Table 1"), "Alpha-B")))
    assert alpha_b["note"] == "printed rsum differs from its recalls by 0.1"


def test_rounding_slack_of_the_printed_number_is_not_a_flag(tmp_path):
    store = ResultStore(tmp_path / "results")
    # reported 50.0 stands for [49.95, 50.05]; the interval [50.04, 50.5] overlaps it -> not flagged
    add_eval(store, "toy", "alpha-a-official", {"method": "alpha", "variant": "a", "source": "official"},
             {"recall": recall_block(50.2, 40.0, 300.0, ci={"i2t.r1": [50.04, 50.5]})})
    write_reports(tmp_path / "results", tmp_path / "reports", paper="alpha", registry=registry())
    row = table_row((tmp_path / "reports" / "alpha.md").read_text(), "Alpha-A", "official")
    assert row[2] == "50.2 (50.0, +0.2)"


def test_seed_rows_show_mean_std_and_flag_outside_two_std(tmp_path):
    store = ResultStore(tmp_path / "results")
    rsums, r1s = [300.0, 310.0, 320.0], [60.0, 60.5, 61.0]
    for seed, rsum, r1 in zip((0, 1, 2), rsums, r1s):
        add_eval(store, "toy", f"alpha-b-seed{seed}", {"method": "alpha", "variant": "b", "source": f"seed{seed}",
                                                       "seed": seed}, {"recall": recall_block(r1, 45.0, rsum)})
    write_reports(tmp_path / "results", tmp_path / "reports", registry=registry())
    text = (tmp_path / "reports" / "alpha.md").read_text()
    row = table_row(section(text, "### Table 1"), "Alpha-B", "retrained")
    assert row[1] == "retrained, 3 seeds (0, 1, 2)"
    r1_mean, r1_std = np.mean(r1s), np.std(r1s, ddof=1)  # 60.5 +- 0.5: 61.2 is outside [59.5, 61.5]? no: inside
    assert row[2] == f"{r1_mean:.1f} ± {r1_std:.1f} (61.2, {r1_mean - 61.2:+.1f})"
    # t2i.r1 is 45.0 in every seed: std 0, reported 45.0 -> inside
    assert row[3] == "45.0 ± 0.0 (45.0, +0.0)"
    mean, std = np.mean(rsums), np.std(rsums, ddof=1)  # 310 +- 10 -> [290, 330]; reported 333.3 is outside
    assert row[4] == f"{mean:.1f} ± {std:.1f} (333.3, {mean - 333.3:+.1f}) ⚠"
    assert row[5].startswith(f"[{mean - 2 * std:.1f}, {mean + 2 * std:.1f}] (mean ± 2 std")
    # the dataset report shows the same spread
    ds = (tmp_path / "reports" / "toy.md").read_text()
    drow = table_row(section(ds, "## recall over the full matrix"), "alpha/b")
    assert f"{mean:.1f} ± {std:.1f}" in drow[8]


def test_missing_results_show_as_missing_not_zero(tmp_path):
    store = ResultStore(tmp_path / "results")
    block = recall_block(52.0, 38.0, 320.0)
    del block["t2i"]["r1"]  # a metric the run did not produce
    add_eval(store, "toy", "alpha-a-official", {"method": "alpha", "variant": "a", "source": "official"},
             {"recall": block})
    write_reports(tmp_path / "results", tmp_path / "reports", registry=registry())
    paper = (tmp_path / "reports" / "alpha.md").read_text()
    table1 = section(paper, "### Table 1")
    assert table_row(table1, "Alpha-A")[3] == "— (40.0)"
    row_b = table_row(table1, "Alpha-B")  # never run
    assert row_b[1] == "not reproduced" and row_b[2:5] == ["— (61.2)", "— (45.0)", "— (333.3)"]
    assert table_row(section(paper, "### Table 2"), "Alpha\\* (A)")[1] == "not reproduced"
    ds = (tmp_path / "reports" / "toy.md").read_text()
    row = table_row(section(ds, "## recall"), "alpha/a")
    cols = ["i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "rsum"]
    header = table_row(section(ds, "## recall"), "model")
    cells = dict(zip(header, row))
    assert cells["t2i R@1"] == "— (40.0)" and cells["t2i R@10"] == "—"
    assert not any(re.fullmatch(r"0(\.0+)?", cells[c]) for c in cols)
    # efficiency fields that were not measured are missing, not zero
    eff = table_row(section(ds, "## Efficiency"), "alpha/a")
    assert eff[2:] == ["—"] * 7
    assert "No result has computed `cxc` yet." in ds


def test_undefined_protocol_parts_show_their_reason(tmp_path):
    store = ResultStore(tmp_path / "results")
    cxc = {"i2t": {"cxc_r1": 30.0, "cxc_r5": 60.0}, "t2i": {"cxc_r1": 20.0},
           "i2i": {"defined": False, "reason": "no uni-modal image space"}}
    add_eval(store, "toy", "alpha-a-official", {"method": "alpha", "variant": "a", "source": "official"},
             {"recall": recall_block(52.0, 38.0, 320.0), "cxc": cxc,
              "sts": {"defined": False, "reason": "cross-attention scores only image-text pairs"}})
    add_eval(store, "toy", "beta-x-official", {"method": "beta", "variant": "x", "source": "official"},
             {"recall": recall_block(40.0, 30.0, 250.0),
              "cxc": {"i2t": {"cxc_r1": 25.0}, "i2i": {"cxc_r1": 11.0}}})
    write_reports(tmp_path / "results", tmp_path / "reports", dataset="toy", registry=registry())
    ds = (tmp_path / "reports" / "toy.md").read_text()
    cx = section(ds, "## CxC")
    header = table_row(cx, "model")
    alpha = dict(zip(header, table_row(cx, "alpha/a")))
    beta = dict(zip(header, table_row(cx, "beta/x")))
    assert alpha["i2i cxc R@1"] == "not defined" and beta["i2i cxc R@1"] == "11.0"
    assert alpha["t2i cxc R@1"] == "20.0" and beta["t2i cxc R@1"] == "—"
    assert "- cxc i2i for alpha/a: no uni-modal image space" in cx
    sts = section(ds, "## STS")
    assert table_row(sts, "alpha/a")[2] == "not defined"
    assert "cross-attention scores only image-text pairs" in sts


def test_ensemble_setting_is_resolved_from_the_registry(tmp_path):
    store = ResultStore(tmp_path / "results")
    # the ensemble's config names its members but no setting; the registry says they are variant a
    members = ["toy/alpha-a-official/eval", "toy/alpha-a-official2/eval"]
    add_eval(store, "toy", "alpha-ens-official", {"method": "alpha", "variant": "ens", "source": "official",
                                                  "members": members},
             {"recall": recall_block(56.0, 40.0, 321.0)})
    write_reports(tmp_path / "results", tmp_path / "reports", paper="alpha", registry=registry())
    row = table_row(section((tmp_path / "reports" / "alpha.md").read_text(), "### Table 2"), "Alpha\\* (A)")
    assert row[1] == "official checkpoints, mean of 2 members" and row[2] == "56.0 (55.0, +1.0)"


def _sims(rng, n, signal):
    truth = np.repeat(np.eye(n), 5, axis=1)
    return signal * truth + rng.standard_normal((n, 5 * n))


def test_per_image_rsum_averages_to_the_protocol_rsum():
    rng = np.random.default_rng(0)
    sims = np.round(_sims(rng, 50, 1.5), 1)  # rounding makes ties: the headline rsum is tie-pessimistic
    v, strata = per_image_rsum(sims, "recall")
    assert strata is None and v.shape == (50,)
    assert v.mean() == pytest.approx(compute_protocol("recall", sims)["rsum"], abs=1e-9)
    v1k, folds = per_image_rsum(sims, "coco1k")
    assert np.array_equal(folds, np.repeat(np.arange(5), 10))
    assert v1k.mean() == pytest.approx(fold_recall(sims)["rsum"], abs=1e-9)


def test_dataset_report_significance_efficiency_and_plots(tmp_path):
    rng = np.random.default_rng(1)
    store = ResultStore(tmp_path / "results")
    n = 40
    strong, weak = _sims(rng, n, 3.0), _sims(rng, n, 0.3)
    for run, cfg, sims, secs in (
            ("alpha-a-official", {"method": "alpha", "variant": "a", "source": "official"}, strong, 0.5),
            ("alpha-b-official", {"method": "alpha", "variant": "b", "source": "official"}, weak, 0.05),
            ("beta-x-official", {"method": "beta", "variant": "x", "source": "official"}, strong, 2.0)):
        add_eval(store, "toy", run, cfg, {"recall": compute_protocol("recall", sims, bootstrap=0)}, sims=sims,
                 efficiency={"parameters": 2_500_000, "encode_ms_per_image": 0.25, "encode_ms_per_caption": 0.125,
                             "scoring_seconds": secs})
    for seed, gpu_h, wall in ((0, 0.5, 1800.0), (1, 1.5, 5400.0)):
        train = add_train(store, "toy", f"beta-x-seed{seed}", seed, gpu_h, wall)
        add_eval(store, "toy", f"beta-x-seed{seed}", {"method": "beta", "variant": "x", "source": f"seed{seed}",
                                                      "seed": seed, "train_job": train},
                 {"recall": compute_protocol("recall", weak, bootstrap=0)}, sims=weak,
                 efficiency={"scoring_seconds": 1.0})
    paths = write_reports(tmp_path / "results", tmp_path / "reports", registry=registry())
    ds = (tmp_path / "reports" / "toy.md").read_text()
    rec = section(ds, "## recall")
    header = table_row(rec, "model")
    rows = {(r[0], r[1]): dict(zip(header, r)) for r in
            [table_row(rec, "alpha/a"), table_row(rec, "alpha/b"), table_row(rec, "beta/x", "official"),
             table_row(rec, "beta/x", "retrained")]}
    p = {k[0] + " " + k[1].split(" ")[0]: v["p vs best (rsum)"] for k, v in rows.items()}
    # alpha/a and beta/x official share one matrix: the first of them is best, the copy is indistinguishable
    assert p["alpha/a official"] == "best" and p["beta/x official"] == "1.000"
    assert p["alpha/b official"] == "≤0.001" and p["beta/x retrained,"] == "≤0.001"
    # rsum reproduces the stored metrics (computed by the project's recall module) to the printed digit
    rsum = compute_protocol("recall", strong, bootstrap=0)["rsum"]
    # no interval stored in this metrics.json: the far-off reported number is shown but cannot be flagged
    assert rows[("alpha/a", "official checkpoint")]["rsum"] == f"{rsum:.1f} (300.0, {rsum - 300:+.1f})"
    eff = section(ds, "## Efficiency")
    a_eff = table_row(eff, "alpha/a")
    assert a_eff[2:6] == ["2.50 M", "0.250", "0.125", "0.50"]
    b_train = table_row(eff, "beta/x", "retrained")
    assert b_train[6] == f"{1.0:.3f} ± {np.std([0.5, 1.5], ddof=1):.3f}"  # GPU-hours from the train jobs
    assert b_train[7] == f"{1.0:.3f} ± {np.std([0.5, 1.5], ddof=1):.3f}"  # wall hours
    assert table_row(eff, "alpha/a")[6] == "—"  # official checkpoints: training cost unknown
    for plot in ("toy-rsum-vs-scoring-time.png", "alpha-reproduced-vs-reported.png"):
        path = tmp_path / "reports" / "plots" / plot
        assert path in paths and path.read_bytes()[:8] == PNG
    assert "](plots/toy-rsum-vs-scoring-time.png)" in ds
    assert "](plots/alpha-reproduced-vs-reported.png)" in (tmp_path / "reports" / "alpha.md").read_text()
    assert "](plots/beta-reproduced-vs-reported.png)" not in (tmp_path / "reports" / "beta.md").read_text()


def test_demo_report_states_chance_level_and_synthetic_features(tmp_path):
    store = ResultStore(tmp_path / "results")
    rng = np.random.default_rng(2)
    sims = _sims(rng, 20, 1.0)
    add_eval(store, "demo", "alpha-a-seed0", {"method": "alpha", "variant": "a", "source": "seed0", "seed": 0},
             {"recall": compute_protocol("recall", sims)}, sims=sims)
    write_reports(tmp_path / "results", tmp_path / "reports", dataset="demo", registry=registry())
    demo = (tmp_path / "reports" / "demo.md").read_text()
    assert "synthetic" in demo
    assert f"Chance level for 20 images x 100 captions (a random scorer): rsum {chance_rsum(20):.1f}" in demo
    # the paper report lists the demo run as a result without a reported counterpart
    paper = (tmp_path / "reports" / "alpha.md").read_text()
    assert "### demo, recall over the full matrix" in section(paper, "## Other runs")


def test_index_links_reports_with_revision_and_environment(tmp_path):
    store = ResultStore(tmp_path / "results")
    env = {"device": "cuda:0", "gpus": ["NVIDIA H100"], "python": "3.11.9", "platform": "Linux-6.1",
           "git": {"revision": "0123456789abcdef", "dirty": True}, "packages": {"torch": "2.14.1", "numpy": "2.4.6"}}
    add_eval(store, "toy", "alpha-a-official", {"method": "alpha", "variant": "a", "source": "official"},
             {"recall": recall_block(52.0, 38.0, 320.0)}, env=env)
    write_reports(tmp_path / "results", tmp_path / "reports", registry=registry())
    index = (tmp_path / "reports" / "index.md").read_text()
    assert "[toy](toy.md)" in index and "[alpha](alpha.md)" in index
    assert re.search(r"Generated \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", index)
    env_row = table_row(section(index, "## Environments"), "`0123456789ab`")
    assert env_row[:6] == ["`0123456789ab` (uncommitted changes)", "cuda:0", "NVIDIA H100", "3.11.9", "2.14.1", "2.4.6"]
    assert env_row[-1] == "1"


def test_unknown_paper_or_dataset_is_an_error(tmp_path):
    with pytest.raises(RegistryError, match="unknown method 'alpah'.*Did you mean 'alpha'"):
        write_reports(tmp_path / "results", tmp_path / "reports", paper="alpah", registry=registry())
    with pytest.raises(RegistryError, match="unknown dataset 'tyo'"):
        write_reports(tmp_path / "results", tmp_path / "reports", dataset="tyo", registry=registry())


def test_paper_asked_for_without_results_still_lists_its_tables(tmp_path):
    paths = write_reports(tmp_path / "results", tmp_path / "reports", paper="alpha", registry=registry())
    assert paths == [tmp_path / "reports" / "alpha.md", tmp_path / "reports" / "site" / "index.html",
                     tmp_path / "reports" / "index.md"]
    text = (tmp_path / "reports" / "alpha.md").read_text()
    assert "No reported number has a reproduced counterpart yet" in text
    assert table_row(section(text, "### Table 1"), "Alpha-A")[2:5] == ["— (50.0)", "— (40.0)", "— (300.0)"]


def test_started_jobs_without_metrics_are_listed_not_silently_dropped(tmp_path):
    store = ResultStore(tmp_path / "results")
    add_eval(store, "toy", "alpha-a-official", {"method": "alpha", "variant": "a", "source": "official"},
             {"recall": recall_block(52.0, 38.0, 320.0)})
    store.start("toy/beta-x-seed0/train", {"stage": "train", "method": "beta", "dataset": "toy"}, {})
    write_reports(tmp_path / "results", tmp_path / "reports", dataset="toy", registry=registry())
    ds = (tmp_path / "reports" / "toy.md").read_text()
    assert table_row(section(ds, "## Jobs without results"), "`toy/beta-x-seed0/train`")
    assert "beta/x" not in section(ds, "## recall")


def test_nested_ci95_of_the_bootstrap_summary_drives_the_flags(tmp_path):
    """Protocols summarized by harness.eval.metrics.bootstrap store {ci95: {direction: {metric: [lo, hi]}}}."""
    from harness.eval.metrics.bootstrap import QueryScores, summarize

    rng = np.random.default_rng(3)
    n = 60
    hits = {k: (rng.random(n) < p).astype(float) * 100 for k, p in (("r1", 0.4), ("r5", 0.7), ("r10", 0.8))}
    groups = [QueryScores(d, "coco5k", {k: v.copy() for k, v in hits.items()}) for d in ("i2t", "t2i")]
    groups += [QueryScores(d, "eccv", {"map_at_r": rng.random(n) * 100}) for d in ("i2t", "t2i")]
    node = {"protocol": "eccv", **summarize(groups, n=300, seed=0),
            "pmrp": {"available": False, "reason": "no plausible-match ground truth"}}
    lo, hi = node["ci95"]["i2t"]["eccv_map_at_r"]
    rsum_lo, rsum_hi = node["ci95"]["rsum"]["coco5k"]
    datasets = {**REGISTRY["datasets"], "toy": {**REGISTRY["datasets"]["toy"], "protocols": ["recall", "cxc", "eccv"]}}
    doc = {**REGISTRY, "datasets": datasets, "reported": [
        {"method": "alpha", "variant": "a", "dataset": "toy", "protocol": "eccv", "source": "paper", "table": "Table 3",
         "label": "Alpha-A", "values": {"i2t.eccv_map_at_r": round((lo + hi) / 2, 1),
                                        "rsum.coco5k": round(rsum_hi + 5, 1)}}]}
    store = ResultStore(tmp_path / "results")
    add_eval(store, "toy", "alpha-a-official", {"method": "alpha", "variant": "a", "source": "official"},
             {"eccv": node})
    write_reports(tmp_path / "results", tmp_path / "reports", registry=parse_registry(doc))
    row = table_row(section((tmp_path / "reports" / "alpha.md").read_text(), "### Table 3"), "Alpha-A")
    assert row[2].startswith(f"{node['i2t']['eccv_map_at_r']:.1f} (") and "⚠" not in row[2]
    assert row[3].startswith(f"{node['rsum']['coco5k']:.1f} (") and row[3].endswith("⚠")
    assert row[4].startswith(f"[{rsum_lo:.1f}, {rsum_hi:.1f}] (95% CI")
    ds = (tmp_path / "reports" / "toy.md").read_text()
    eccv = section(ds, "## ECCV Caption")
    assert "i2t eccv mAP@R" in eccv and "t2i coco5k R@10" in eccv
    assert "eccv pmrp for alpha/a: no plausible-match ground truth" in eccv


def test_reported_sts_and_image_retrieval_keys_find_the_headline_statistic():
    """The papers report Spearman (STS) and R@1 (image retrieval); we store several statistics per set."""
    from harness.report.runs import metric_value

    metrics = {"protocols": {
        "sts": {"spearman": {"stsb": 78.25, "avg": 73.0}, "pearson": {"stsb": 77.0}},
        "image_retrieval": {"r1": {"cub": 59.5, "avg": 61.0}, "missing": []},
        "coco5k": {"rsum": 400.0, "i2t": {"r1": 50.0}},
    }}
    assert metric_value(metrics, "sts", "sts.stsb") == 78.25
    assert metric_value(metrics, "image_retrieval", "image_retrieval.avg") == 61.0
    assert metric_value(metrics, "sts", "pearson.stsb") == 77.0
    assert metric_value(metrics, "coco5k", "i2t.r1") == 50.0
    assert metric_value(metrics, "sts", "sts.sickr") is None


def test_a_retrained_runs_objective_comes_from_its_training_recipe():
    from harness.report.runs import resolved_setting
    from harness.spec.registry import load_registry

    registry = load_registry()
    cfg = {"method": "cusa", "variant": "vitb32", "stage": "evaluate"}
    assert resolved_setting(registry, cfg)["objective"] == "cusa"  # the variant's option
    assert resolved_setting(registry, cfg, {"objective": "only_contrastive"})["objective"] == "only_contrastive"
    assert resolved_setting(registry, {**cfg, "setting": {"objective": "usa"}},
                            {"objective": "only_contrastive"})["objective"] == "usa"


def test_runs_of_a_baseline_method_show_as_baseline_rows(tmp_path):
    doc = {**REGISTRY, "methods": {**REGISTRY["methods"], "zs": {
        "title": "Zero-shot", "adapter": "methods.zs:ZS", "baseline": True, "variants": {"b32": {"options": {}}}}}}
    store = ResultStore(tmp_path / "results")
    add_eval(store, "toy", "zs-b32-official", {"method": "zs", "variant": "b32", "source": "official"},
             {"recall": recall_block(30.0, 20.0, 200.0)})
    add_eval(store, "toy", "alpha-a-official", {"method": "alpha", "variant": "a", "source": "official"},
             {"recall": recall_block(52.0, 38.0, 320.0)})
    write_reports(tmp_path / "results", tmp_path / "reports", dataset="toy", registry=parse_registry(doc))
    rec = section((tmp_path / "reports" / "toy.md").read_text(), "## recall")
    assert table_row(rec, "zs/b32")[1].startswith("baseline: official checkpoint")
    assert table_row(rec, "alpha/a")[1].startswith("official checkpoint")


def test_a_nan_rsum_is_never_best_is_listed_last_and_marked(tmp_path):
    rng = np.random.default_rng(3)
    store = ResultStore(tmp_path / "results")
    n = 30
    broken = compute_protocol("recall", _sims(rng, n, 3.0), bootstrap=0)
    broken["rsum"] = float("nan")  # e.g. a diverged model whose matrix held NaN
    for run, variant, block in (("alpha-a-official", "a", broken),
                                ("alpha-b-official", "b", compute_protocol("recall", _sims(rng, n, 0.5), bootstrap=0))):
        add_eval(store, "toy", run, {"method": "alpha", "variant": variant, "source": "official"}, {"recall": block},
                 sims=_sims(rng, n, 1.0))
    write_reports(tmp_path / "results", tmp_path / "reports", registry=registry())
    rec = section((tmp_path / "reports" / "toy.md").read_text(), "## recall")
    header = table_row(rec, "model")
    models = [ln.split(" | ")[0].strip("| ") for ln in rec.splitlines() if ln.startswith("| alpha/")]
    assert models == ["alpha/b", "alpha/a"]  # registry order puts a first; its NaN rsum sends it last
    a, b = dict(zip(header, table_row(rec, "alpha/a"))), dict(zip(header, table_row(rec, "alpha/b")))
    assert a["p vs best (rsum)"] == "not ranked: rsum is not finite" and b["p vs best (rsum)"] == "best"
