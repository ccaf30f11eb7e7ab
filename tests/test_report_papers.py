"""Reports against the project's registry: full-shape synthetic evaluations (stub scores, the real shapes and
COCO ids, metrics computed by the project's protocol code) fill every reported cell their variant and recipe
can reproduce, and only those; a row is matched only by the run it describes."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

import numpy as np
import pytest

from harness.core.results import ResultStore
from harness.data.senteval import TASK_KEYS
from harness.eval.metrics.image_retrieval import DATASET_KEYS, image_retrieval_protocol
from harness.eval.protocols import compute_protocol, not_defined
from harness.report import write_reports
from harness.report.matching import default_setting, fact_keys, row_setting, same
from harness.report.runs import Stat, collect_groups, metric_value
from harness.spec.registry import load_registry

COCO_SHAPE, CUSA_COCO_SHAPE, F30K_SHAPE = (5000, 25000), (5000, 25010), (1000, 5000)


def _stub_sims(n_img: int, n_cap: int, seed: int) -> np.ndarray:
    """Scores that rank each image's own captions high more often than not (recalls well away from 0 and 100)."""
    rng = np.random.default_rng(seed)
    sims = rng.standard_normal((n_img, n_cap), dtype=np.float32)
    owner = np.arange(n_cap) // 5
    sims[owner, np.arange(n_cap)] += 2.5
    return sims


@lru_cache(maxsize=1)
def synthetic_protocols() -> dict[str, dict[str, Any]]:
    """{dataset: {protocol: result}} in the shapes the harness stores, computed once per test session."""
    coco = _stub_sims(*COCO_SHAPE, seed=0)
    out = {"coco": {p: compute_protocol(p, coco, bootstrap=0) for p in ("coco1k", "coco5k", "eccv", "cxc")}}
    del coco
    for result in out["coco"].values():
        result.pop("ids", None)  # the 25,000 COCO caption ids: bookkeeping the report never reads
    f30k = _stub_sims(*F30K_SHAPE, seed=1)
    out["f30k"] = {"f30k1k": compute_protocol("f30k1k", f30k, bootstrap=0)}
    rng = np.random.default_rng(2)
    spearman = {key: float(rng.uniform(40, 80)) for key in TASK_KEYS.values()}
    spearman["avg"] = float(np.mean(list(spearman.values())))
    out["coco"]["sts"] = {"protocol": "sts", "spearman": spearman,
                          "pearson": {k: v - 1.0 for k, v in spearman.items()},
                          "n_pairs": dict.fromkeys(TASK_KEYS.values(), 100)}
    features = {}
    for name in DATASET_KEYS:
        labels = np.repeat(np.arange(20), 5)
        feats = rng.standard_normal((100, 16)) + 2.0 * np.eye(20, 16)[labels]
        features[name] = (feats, labels, feats[::-1], labels[::-1]) if name == "inshop" else (feats, labels)
    out["coco"]["image_retrieval"] = image_retrieval_protocol(features, bootstrap=0)
    return out


def eval_metrics(dataset: str, method: str) -> dict[str, Any]:
    protocols = dict(synthetic_protocols()[dataset])
    shape = {"coco": COCO_SHAPE, "f30k": F30K_SHAPE}[dataset]
    if method == "cusa" and dataset == "coco":  # CUSA's json test split: 25,010 captions, uneven per image
        shape = CUSA_COCO_SHAPE
        protocols["coco1k"] = not_defined("COCO 1K folds need exactly 5 captions per image in image order")
    return {"stage": "evaluate", "shape": list(shape), "protocols": protocols, "efficiency": {}}


class Runs:
    """Writes result folders the way the harness lays them out (config.yaml + metrics.json per job)."""

    def __init__(self, root, registry) -> None:
        self.store, self.registry = ResultStore(root), registry
        self._metrics: dict[tuple[str, str], str] = {}

    def _finish(self, name: str, config: dict, metrics: dict) -> str:
        self.store.start(name, {"name": name, **config}, {"device": "cpu"})
        self.store.finish(name, metrics)
        return name

    def _eval(self, name: str, config: dict, dataset: str, method: str, **metrics_extra: Any) -> str:
        return self._finish(name, {"stage": "evaluate", "dataset": dataset, "split": "test", "method": method,
                                   **config}, {**eval_metrics(dataset, method), **metrics_extra})

    def retrained(self, method: str, variant: str, dataset: str, seed: int = 0, best_epoch: int = 9,
                  tag: str = "", **recipe_changes: Any) -> str:
        """A training job of the registry's recipe (with `recipe_changes`) and the evaluation of its model."""
        m = self.registry.method(method)
        run = f"{dataset}/{method}-{variant}{tag}-seed{seed}"
        recipe = {**m.recipe(variant, dataset), **recipe_changes, "seed": seed}
        train = self._finish(f"{run}/train", {"stage": "train", "method": method, "variant": variant,
                                              "dataset": dataset, "seed": seed, "recipe": recipe,
                                              "options": dict(m.variant(variant).options)},
                             {"stage": "train", "best_rsum": 400.0, "best_epoch": best_epoch, "efficiency": {}})
        return self._eval(f"{run}/eval", {"variant": variant, "seed": seed, "source": f"seed{seed}",
                                          "train_job": train}, dataset, method)

    def ensemble(self, method: str, variant: str, dataset: str, members: list[str], source: str = "seed0",
                 tag: str = "") -> str:
        return self._eval(f"{dataset}/{method}-{variant}{tag}-{source}/eval",
                          {"variant": variant, "seed": 0 if source.startswith("seed") else None, "source": source,
                           "members": members}, dataset, method)

    def official(self, method: str, variant: str, dataset: str, tag: str = "official",
                 checkpoint_epoch: int | None = None, **extra: Any) -> str:
        """An official checkpoint's evaluation; its epoch (read from the checkpoint) is stored in metrics.json."""
        return self._eval(f"{dataset}/{method}-{variant}-{tag}/eval",
                          {"variant": variant, "seed": None, "source": "official",
                           "checkpoint": f"checkpoints/{method}/{variant}/{dataset}/model.pth", **extra},
                          dataset, method,
                          **({} if checkpoint_epoch is None else {"checkpoint_epoch": checkpoint_epoch}))

    def imported(self, method: str, variant: str, dataset: str, provenance: dict, setting: dict | None = None,
                 tag: str = "imported") -> str:
        return self._eval(f"{dataset}/{method}-{variant}-{tag}/eval",
                          {"variant": variant, "seed": None, "source": "imported", "provenance": provenance,
                           **({"setting": setting} if setting else {})}, dataset, method)

    def groups(self):
        return collect_groups(self.registry, self.store)


def matched_labels(registry, group) -> set[tuple[str, str, str]]:
    return {(rep.table, rep.protocol, rep.label) for rep in registry.reported_for(group.method, group.dataset)
            if group.matches(rep, registry)}


def group_of(groups, run_name: str):
    found = [g for g in groups if any(r.path.as_posix().endswith(run_name) for r in g.runs)]
    assert len(found) == 1, (run_name, [g.label for g in groups])
    return found[0]


# ---- every stored shape is addressable ---------------------------------------------------------------------

def test_every_reported_key_of_every_row_has_a_reproduced_counterpart():
    """Per-fold values, printed rsums, medr / meanr, ECCV, STS and image-retrieval keys: a full-shape result of
    the row's dataset holds a number for every key of every row of the registry."""
    registry = load_registry()
    missing = []
    for rep in registry.reported:
        metrics = eval_metrics(rep.dataset, "esa")  # coco1k defined: the precomp shape
        for key in rep.values:
            if not isinstance(metric_value(metrics, rep.protocol, key), float):
                missing.append((rep.method, rep.label, rep.protocol, key))
    assert not missing, missing[:10]
    # the per-fold and printed-rsum keys read what the fold protocol computed
    coco1k = synthetic_protocols()["coco"]["coco1k"]
    metrics = eval_metrics("coco", "esa")
    assert metric_value(metrics, "coco1k", "folds.3.t2i.r5") == coco1k["folds"][3]["t2i"]["r5"]
    assert metric_value(metrics, "coco1k", "rsum_printed") == pytest.approx(
        2 * sum(coco1k["i2t"][f"r{k}"] for k in (1, 5, 10)))
    assert metric_value(metrics, "coco1k", "folds.5.i2t.r1") is None  # no sixth fold
    assert metric_value(metrics, "coco1k", "ties.rsum_tie_optimistic") == coco1k["ties"]["rsum_tie_optimistic"]


# ---- matching as a rule ------------------------------------------------------------------------------------

def test_row_settings_resolve_recipe_defaults():
    registry = load_registry()
    vsl = registry.method("vsl")
    assert default_setting(vsl, "sgr", "coco") == {"precision": "fp32", "loss": "vsl", "batch_size": 128}
    assert default_setting(vsl, "sgr", "coco", {"vsl": False, "batch_size": 32})["loss"] == "triplet"
    readme = next(r for r in registry.reported_for("vsl", "coco") if r.source == "README" and r.variant == "sgr")
    assert row_setting(registry, readme) == {"precision": "fp32", "loss": "vsl", "batch_size": 128}
    assert "epoch" in fact_keys(vsl) and "loss" not in fact_keys(vsl)
    assert same(32, "32") and same(None, False) and not same(True, "vsl")


def _check_default_runs(tmp_path, method: str, make, expected: dict[str, set[tuple[str, str, str]]]) -> None:
    registry = load_registry()
    runs = Runs(tmp_path / "results", registry)
    names = make(runs)
    groups = runs.groups()
    for key, want in expected.items():
        got = matched_labels(registry, group_of(groups, names[key]))
        assert got == want, (key, sorted(got ^ want))


def test_default_esa_runs_fill_exactly_the_default_rows(tmp_path):
    def make(runs):
        out = {}
        for ds in ("coco", "f30k"):
            for v in ("bigru", "bert"):
                members = [runs.retrained("esa", v, ds, seed=s, tag=f"-{v}") for s in (0, 1000)]
                out[f"{v}-{ds}"] = members[0]
                out[f"star-{v}-{ds}"] = runs.ensemble("esa", "esa_star", ds, members, tag=f"-{v}")
        return out

    t1, t2, pmw = "Table I", "Table II", "Pretrained Model Weight"
    _check_default_runs(tmp_path, "esa", make, {
        "bigru-f30k": {(t1, "f30k1k", "ESA (BiGRU)")},
        "bert-coco": {(t2, "coco1k", "ESA (BERT)"), (t2, "coco5k", "ESA (BERT)")},
        # the default ESA* averages two BiGRU models; the one of two BERT models fills the BERT rows
        "star-bigru-coco": {(t2, "coco1k", "ESA* (BiGRU)"), (t2, "coco5k", "ESA* (BiGRU)"),
                            (pmw, "coco1k", "ESA* (BiGRU)"), (pmw, "coco5k", "ESA* (BiGRU)")},
        "star-bert-f30k": {(t1, "f30k1k", "ESA* (BERT)"), (pmw, "f30k1k", "ESA* (BERT)")},
    })


def test_default_esl_and_xdim_runs_fill_their_variants_rows(tmp_path):
    def make(runs):
        return {f"{m}-{v}-{ds}": runs.retrained(m, v, ds) for m, v in (("esl", "h"), ("esl", "a"), ("xdim", "bert"))
                for ds in ("coco", "f30k")}

    esl1k, esl5k = (f"Results of 5-fold evaluation on COCO {n} Test Split" for n in ("1K", "5K"))
    h, a, x = "ESL-H (BUTD region, BERT-base)", "ESL-A (BUTD region, BERT-base)", "X-Dim (BUTD region, BERT-base)"
    _check_default_runs(tmp_path, "esl", make, {
        "esl-h-coco": {(esl1k, "coco1k", h), (esl5k, "coco5k", h)},
        "esl-a-f30k": {("Results on Flickr30K Test Split", "f30k1k", a)},
        "xdim-bert-coco": {("Results on MS-COCO (1K)", "coco1k", x)},
        "xdim-bert-f30k": {("Results on Flickr30K", "f30k1k", x)},
    })


def test_default_vsl_runs_fill_exactly_the_default_rows(tmp_path):
    """The default retrained SGR fills the README rows and the batch-128 ablation row; its checkpoint epoch (best
    epoch 17) fills the epoch-17 log row and not the epoch-25 one; a triplet / batch-32 run fills only its row."""
    def make(runs):
        sgr = runs.retrained("vsl", "sgr", "coco", best_epoch=16)
        saf = runs.retrained("vsl", "saf", "coco", best_epoch=22)
        return {"sgr": sgr, "saf": saf, "sgraf": runs.ensemble("vsl", "sgraf", "coco", [sgr, saf]),
                "sgr-f30k": runs.retrained("vsl", "sgr", "f30k", best_epoch=35),
                "triplet32": runs.retrained("vsl", "sgr", "coco", tag="-triplet32", vsl=False, batch_size=32)}

    readme, ab1, ab2 = "experiments result", "batch-size ablation", "loss ablation"
    log = "evaluation log at VSL commit 3dcf9c1~1"
    _check_default_runs(tmp_path, "vsl", make, {
        "sgr": {(readme, "coco1k", "SGR+VSL"), (readme, "coco5k", "SGR+VSL"), (ab1, "coco1k", "SGR+VSL, batch 128"),
                (log, "coco1k", "SGR+VSL (checkpoint epoch 17)")},
        "saf": {(readme, "coco1k", "SAF+VSL"), (readme, "coco5k", "SAF+VSL"),
                (log, "coco1k", "SAF+VSL (checkpoint epoch 23)")},
        "sgraf": {(readme, "coco1k", "SGRAF+VSL"), (readme, "coco5k", "SGRAF+VSL"),
                  (ab2, "coco5k", "SGRAF + L_vs (= SGRAF+VSL)"), (log, "coco1k", "SGRAF+VSL"),
                  (log, "coco5k", "SGRAF+VSL")},
        "sgr-f30k": {(readme, "f30k1k", "SGR+VSL"), (log, "f30k1k", "SGR+VSL (checkpoint epoch 36)")},
        "triplet32": {(ab1, "coco1k", "SGR* (no VSL), batch 32")},
    })


def test_default_cusa_runs_fill_exactly_the_default_rows(tmp_path):
    def make(runs):
        return {f"{v}-{ds}": runs.retrained("cusa", v, ds) for v in ("vitb32", "vitl14_336") for ds in ("coco", "f30k")}

    b, lg = "CLIP ViT-B/32 + CUSA", "CLIP ViT-L/14@336px + CUSA"
    _check_default_runs(tmp_path, "cusa", make, {
        "vitb32-coco": {("Table 8", "coco5k", b), ("Table 9", "eccv", b), ("Table 10", "image_retrieval", b),
                        ("Table 11", "sts", b)},
        "vitb32-f30k": {("Table 8", "f30k1k", b)},
        "vitl14_336-coco": {("Table 8", "coco5k", lg), ("Table 9", "eccv", lg), ("Table 10", "image_retrieval", lg),
                            ("Table 11", "sts", lg)},
    })


def test_a_run_matching_no_row_is_listed_under_other_runs_with_its_settings(tmp_path):
    registry = load_registry()
    runs = Runs(tmp_path / "results", registry)
    runs.retrained("vsl", "saf", "coco", vsl=False, batch_size=64)  # no reported row: SAF without VSL, batch 64
    write_reports(tmp_path / "results", tmp_path / "reports", paper="vsl", registry=registry)
    text = (tmp_path / "reports" / "vsl.md").read_text()
    assert "retrained" not in text.split("## Other runs")[0].split("## Reported tables")[1]
    other = text.split("## Other runs")[1]
    assert "| vsl/saf, batch_size=64, loss=triplet | retrained, 1 seed (0), checkpoint epoch 10 |" in other
    assert "### coco, COCO 1K (mean of 5 folds)" in other


def test_imported_matrix_fills_its_rows_labelled_with_its_provenance(tmp_path):
    registry = load_registry()
    runs = Runs(tmp_path / "results", registry)
    runs.imported("vsl", "sgraf", "coco", {"file": "/data/official/sims_ts.npy", "sha256": "ab12" * 16,
                                           "key": None, "label": None, "from": "official code (eval_overall.py)"},
                  setting={"loss": "vsl_ts"})
    write_reports(tmp_path / "results", tmp_path / "reports", paper="vsl", registry=registry)
    text = (tmp_path / "reports" / "vsl.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("| SGRAF + L_vs + L_ts") and "imported" in ln)
    assert "| imported matrix: official code (eval_overall.py), sims_ts.npy, sha256 ab12ab12ab12 |" in line
    assert "— (" not in line
    summary = text.split("## Summary")[1].split("##")[0]
    assert "| imported |" in summary


# ---- a full-shape synthetic evaluation of every reproducible model fills every reproducible cell ----------

def _all_reproducible_runs(runs: Runs) -> None:
    for ds in ("coco", "f30k"):
        for v in ("bigru", "bert"):
            members = [runs.retrained("esa", v, ds, seed=s, tag=f"-{v}") for s in (0, 1000)]
            runs.ensemble("esa", "esa_star", ds, members, tag=f"-{v}")
        for m, v in (("esl", "h"), ("esl", "a"), ("xdim", "bert")):
            runs.retrained(m, v, ds)
        for v in ("vitb32", "vitl14_336"):
            for objective in ("cusa", "only_contrastive", "csa", "usa"):
                runs.retrained("cusa", v, ds, tag=f"-{objective}", objective=objective)
    # VSL: the released checkpoints at the epochs of the authors' logs (the evaluation records the epoch)
    for v, ds, epoch in (("sgr", "coco", 17), ("sgr", "coco", 25), ("saf", "coco", 23), ("saf", "coco", 24),
                         ("sgr", "f30k", 36), ("saf", "f30k", 29)):
        runs.official("vsl", v, ds, tag=f"official-ep{epoch}", checkpoint_epoch=epoch)
    for ds in ("coco", "f30k"):
        members = [runs.official("vsl", v, ds) for v in ("sgr", "saf")]
        runs.ensemble("vsl", "sgraf", ds, members, source="official")
    for loss_on, bs, best in ((False, 32, 9), (False, 64, 9), (False, 128, 9), (True, 32, 17), (True, 64, 24)):
        runs.retrained("vsl", "sgr", "coco", best_epoch=best, tag=f"-{loss_on}-{bs}", vsl=loss_on, batch_size=bs)
    members = [runs.retrained("vsl", v, "coco", tag="-triplet", vsl=False) for v in ("sgr", "saf")]
    runs.ensemble("vsl", "sgraf", "coco", members, tag="-triplet")
    runs.imported("vsl", "sgraf", "coco", {"from": "the authors' saved SGR + L_ts and SAF + L_ts matrices"},
                  setting={"loss": "vsl_ts"})


def _reproducible(registry, rep) -> bool:
    """A row our code (or an imported matrix above) can be the model of: not another method's number quoted
    for context, not a backbone without released code."""
    method = registry.method(rep.method)
    return not method.variant(rep.variant).options.get("reported_only") and not rep.setting.get("quoted")


@pytest.fixture(scope="module")
def full_results(tmp_path_factory):
    """Every reproducible model of the five papers evaluated (synthetically) once, and the reports written."""
    root = tmp_path_factory.mktemp("full")
    registry = load_registry()
    _all_reproducible_runs(Runs(root / "results", registry))
    write_reports(root / "results", root / "reports", registry=registry)
    return registry, root


@pytest.mark.parametrize("paper", ["esa", "esl", "xdim", "vsl", "cusa"])
def test_full_shape_evaluations_fill_every_reproducible_cell_and_no_other(full_results, paper):
    registry, root = full_results
    runs = Runs(root / "results", registry)
    groups = [g for g in runs.groups() if g.method == paper]
    for rep in registry.reported_for(paper):
        matched = [g for g in groups if g.matches(rep, registry)]
        if not _reproducible(registry, rep):
            assert not matched, (rep.label, [g.label for g in matched])
            continue
        assert matched, f"{rep.table} / {rep.label} ({rep.dataset}, {rep.protocol}) is filled by no run"
        declared = row_setting(registry, rep)
        facts = fact_keys(registry.method(paper))
        for g in matched:
            mine = g.setting_dict
            for key, value in declared.items():  # only the model the row describes
                assert same(mine.get(key), value), (rep.label, g.label, key)
            assert not (set(mine) - set(declared) - facts), (rep.label, g.label)
            for key in rep.values:
                assert isinstance(g.stat(rep.protocol, key), Stat), (rep.label, g.label, key)
    text = (root / "reports" / f"{paper}.md").read_text()
    tables = text.split("## Reported tables")[1].split("## Other runs")[0].split("## Notes")[0]
    for line in tables.splitlines():
        if line.startswith("| ") and "not reproduced" not in line:
            assert "— (" not in line, line  # a reported number beside no reproduced one
    # one line per model: a row's metric families (recalls, rsum, printed rsum, medr / meanr) on one line
    if paper == "vsl":
        line = next(ln for ln in tables.splitlines() if ln.startswith("| SGR+VSL (checkpoint epoch 17)"))
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 2 + 12 + 2  # row, source, 6 recalls + rsum + printed rsum + 4 ranks, interval, note
        assert "<summary>Per-fold values of the rows above (folds 0–4)</summary>" in tables
        fold_lines = [ln for ln in tables.splitlines() if ln.startswith("| SGR+VSL (checkpoint epoch 17) |")
                      and ln.split(" | ")[2].strip().isdigit()]
        assert len(fold_lines) == 5


# ---- printing: the source's precision, notes beside rows and headings ---------------------------------------

def test_numbers_print_with_the_sources_decimals_and_notes_sit_beside_rows(tmp_path):
    registry = load_registry()
    runs = Runs(tmp_path / "results", registry)
    runs.official("vsl", "sgr", "coco", checkpoint_epoch=17)
    runs.official("esl", "h", "coco")
    write_reports(tmp_path / "results", tmp_path / "reports", registry=registry)
    vsl = (tmp_path / "reports" / "vsl.md").read_text()
    log = vsl.split("### evaluation log at VSL commit 3dcf9c1~1 — coco")[1]
    header = [c.strip() for c in next(ln for ln in log.splitlines() if ln.startswith("| row")).strip("|").split(" | ")]
    row = dict(zip(header, [c.strip() for c in next(ln for ln in log.splitlines()
                                                   if ln.startswith("| SGR+VSL (checkpoint epoch 17)")).strip("|")
                            .split(" | ")]))
    medr = synthetic_protocols()["coco"]["coco1k"]["i2t"]["medr"]
    assert row["i2t medr"] == f"{medr:.1f} (1.0, {medr - 1.0:+.1f})"  # one decimal, as the log prints
    assert "mean of the per-fold rsums" in row["note"]
    # the README's rsum is not printed there: marked as summed from the printed recalls
    readme = vsl.split("### experiments result — coco")[1]
    assert re.search(r"\(521\.5†, [+-]\d+\.\d\)", readme)
    esl = (tmp_path / "reports" / "esl.md").read_text()
    heading = esl.split("### Results of 5-fold evaluation on COCO 5K Test Split — coco")[1].lstrip("\n")
    assert heading.startswith("> **About this heading:** the heading says 5-fold, but the numbers are the full "
                              "COCO 5K evaluation")


def test_json_of_a_metrics_file_round_trips_the_fold_list(tmp_path):
    """The fold list survives metrics.json: the report reads it back as a list and indexes it."""
    metrics = eval_metrics("coco", "esa")
    back = json.loads(json.dumps(metrics))
    assert isinstance(back["protocols"]["coco1k"]["folds"], list)
    assert metric_value(back, "coco1k", "folds.0.i2t.r1") == metrics["protocols"]["coco1k"]["folds"][0]["i2t"]["r1"]
