"""Every recipe value, override and run option has a type and a range, checked before the first job starts: a
bad value is one line naming it, never a job that dies hours later or a "finished" job with no model."""

from __future__ import annotations

import pytest
from test_orchestrate_fixtures import run_args, tiny_data, tiny_registry

from harness.cli.app import main
from harness.spec.values import RANGES, ValueRangeError, check_executor_options, check_recipe


@pytest.fixture
def camp(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    tiny_data(tmp_path / "data")
    tiny_registry(tmp_path / "registry.yaml")
    return tmp_path


BAD = [
    (["--set", "epochs=-3"], "epochs=-3: expected an integer >= 1"),
    (["--set", "batch_size=0"], "batch_size=0: expected an integer >= 1"),
    (["--set", "lr=.nan"], "is not finite"),
    (["--set", "lr=-0.1"], "lr=-0.1: expected a finite number > 0"),
    (["--set", "lr_decay_epochs=[ten, fifteen]"], "lr_decay_epochs"),
    (["--set", "seed=5"], "--seeds 5"),
    (["--seeds", "123456789012345678901234567890"], "above the largest seed"),
    (["--checkpoint-minutes", "nan"], "--checkpoint-minutes nan"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 runs on CUDA only"),
    (["--executor", "local", "--executor-opt", "workers=abc"], "workers=abc: expected a positive integer"),
    (["--executor", "local", "--executor-opt", "worker=2"], "Did you mean 'workers'"),
    (["--executor", "slurm", "--executor-opt", "partiton=gpu"], "Did you mean 'partition'"),
    (["--executor", "slurm", "--executor-opt", "timeout_min=0"], "timeout_min=0"),
    (["--data-folder", "stss=."], "Did you mean 'sts'"),
    (["--data-folder", "sts=no/such/folder"], "--data-folder sts=no/such/folder: no such folder"),
    (["--data-folder", "sts"], "expected PROTOCOL=DIR"),
    (["--data-folder", "sts=.", "--sts-root", "."], "given twice"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_values_are_refused_before_any_job(camp, capsys, extra, message):
    code = main(run_args(camp, "--dry-run", *extra))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and message in " ".join(err.split()), err
    assert not (camp / "results").exists()


def test_registry_recipe_values_are_checked_at_plan_time(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    tiny_data(tmp_path / "data")
    tiny_registry(tmp_path / "registry.yaml", recipe={"epochs": 0})
    code = main(run_args(tmp_path, "--dry-run"))
    err = capsys.readouterr().err
    assert code == 2 and "epochs=0: expected an integer >= 1" in err and "tiny/a" in err, err


def test_a_data_folder_is_keyed_by_its_protocol(tmp_path):
    from harness.spec.campaign import parse_data_folders
    from harness.spec.registry import load_registry

    (tmp_path / "senteval").mkdir()
    folders = parse_data_folders([f"sts={tmp_path / 'senteval'}"], load_registry().protocols)
    assert folders == {"sts": (tmp_path / "senteval").resolve()}
    from harness.eval.protocols import asked_by_folders

    assert asked_by_folders(folders) == ("sts",)


def test_good_values_pass_and_each_rule_can_fail():
    check_recipe({"epochs": 3, "lr": 2e-4, "lr_decay_epochs": [10, 15], "tau_range": [0.01, 0.1], "margin": 0.0,
                  "unknown_key": "kept", "nested": {"x": 1.5}}, "here")
    for key, (ok, what) in RANGES.items():
        assert not ok(float("nan")) and not ok(None) and what, key
    with pytest.raises(ValueRangeError, match="not finite"):
        check_recipe({"nested": {"x": float("inf")}}, "here")
    with pytest.raises(ValueRangeError, match="low <= high"):
        check_recipe({"tau_range": [0.1, 0.01]}, "here")
    check_executor_options("local", {"gpus": "0,1", "workers": "2"})
    with pytest.raises(ValueRangeError, match="Valid: none"):
        check_executor_options("inline", {"workers": "2"})


def test_img_dim_that_contradicts_the_data_is_refused(camp, capsys):
    code = main(run_args(camp, "--dry-run", "--set", "img_dim=999"))
    err = capsys.readouterr().err
    assert code == 2 and "img_dim=999" in err and "16-dimensional" in err and "set img_dim=16" in err, err


def test_a_training_that_writes_no_model_fails_and_is_never_cached(camp, capsys, monkeypatch):
    import json

    from harness.run import jobs
    from harness.run.training import TrainSummary

    def no_model(*args, **kwargs):  # the loop ran, but validation never produced a best model
        return TrainSummary(epochs=2, best_rsum=float("nan"), best_epoch=-1, steps=4)

    monkeypatch.setattr(jobs, "train", no_model)
    code = main(run_args(camp, "--stage", "train", "--variants", "a"))
    assert code != 0
    job = camp / "results" / "demo" / "tiny-a-seed0" / "train"
    assert not (job / "metrics.json").exists()
    status = json.loads((job / "status.json").read_text())
    assert status["state"] == "failed" and "without a model" in status["error"]
