"""Plan expansion: stages, seeds, ensembles, dependencies, identities and input errors."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import yaml
from plan_helpers import plan_of
from test_orchestrate_fixtures import campaign, one_thread, write_official  # noqa: F401 - one_thread: autouse fixture

from harness.run import plan as plan_mod
from harness.run.executors.base import Task
from harness.run.jobs import RunSettings
from harness.run.plan import Job, code_version, data_fingerprint, split_files
from harness.spec.campaign import MAX_SEED
from harness.spec.registry import RegistryError, load_registry


@pytest.fixture
def setup(tmp_path):
    campaign(tmp_path)
    return tmp_path, load_registry(tmp_path / "registry.yaml")


def _plan(tmp, registry, **kw):
    kw.setdefault("data_root", tmp / "data")
    kw.setdefault("checkpoint_dir", tmp / "checkpoints")
    kw.setdefault("code", "code-v1")
    return plan_of(registry, ["tiny"], "demo", **kw)


def test_all_stage_trains_evaluates_and_waits_for_members(setup):
    tmp, registry = setup
    plan = _plan(tmp, registry, seeds=[0, 1], stage="all")
    jobs = plan.by_name()
    trains = sorted(n for n, j in jobs.items() if j.stage == "train")
    # the ensemble of two `a` models trains its second member in folders of its own, with a seed no campaign
    # seed can take (so it is never also the run of another --seeds value)
    assert trains == ["demo/tiny-a-seed0-member2/train", "demo/tiny-a-seed0/train",
                      "demo/tiny-a-seed1-member2/train", "demo/tiny-a-seed1/train"]
    member_seeds = {jobs[n].seed for n in trains if "member" in n}
    assert len(member_seeds) == 2 and min(member_seeds) > MAX_SEED
    assert jobs["demo/tiny-a-seed1-member2/train"].config.recipe["seed"] == jobs["demo/tiny-a-seed1-member2/train"].seed
    assert jobs["demo/tiny-a-seed1/eval"].depends == ("demo/tiny-a-seed1/train",)
    assert jobs["demo/tiny-pair-seed1/eval"].depends == ("demo/tiny-a-seed1/eval", "demo/tiny-a-seed1-member2/eval")
    assert jobs["demo/tiny-pair-seed1/eval"].config.members == tuple(jobs["demo/tiny-pair-seed1/eval"].depends)
    order = [j.name for j in plan.order()]
    for job in plan.jobs:
        assert all(order.index(d) < order.index(job.name) for d in job.depends)
    # no official checkpoints on disk: nothing official is planned, and the notes say where to get them
    assert not any("official" in n for n in jobs)
    assert any("https://example.org/tiny" in note for note in plan.notes)


def test_train_stage_only_trains(setup):
    tmp, registry = setup
    plan = _plan(tmp, registry, stage="train", variants=["pair"])
    assert {j.stage for j in plan.jobs} == {"train"}
    assert [j.seed for j in plan.jobs] == [0, plan_mod.member_seed(0, 1)]


def test_evaluate_stage_uses_official_checkpoints(setup):
    tmp, registry = setup
    first = write_official(tmp / "checkpoints" / "tiny" / "a" / "demo" / "a.pth", 1)
    write_official(tmp / "checkpoints" / "tiny" / "a" / "demo" / "a2.pth", 2)
    plan = _plan(tmp, registry, stage="evaluate")
    jobs = plan.by_name()
    assert sorted(jobs) == ["demo/tiny-a-official/eval", "demo/tiny-a-official2/eval", "demo/tiny-pair-official/eval"]
    assert jobs["demo/tiny-a-official/eval"].config.checkpoint == str(first)
    assert jobs["demo/tiny-pair-official/eval"].depends == ("demo/tiny-a-official/eval", "demo/tiny-a-official2/eval")
    # the checkpoint's content is its identity: moved elsewhere it is the same job, replaced it is another one
    key = jobs["demo/tiny-a-official/eval"].key
    shutil.copytree(tmp / "checkpoints", tmp / "moved")
    assert _plan(tmp, registry, stage="evaluate", checkpoint_dir=tmp / "moved").by_name()[
        "demo/tiny-a-official/eval"].key == key
    write_official(first, 7)
    assert _plan(tmp, registry, stage="evaluate").by_name()["demo/tiny-a-official/eval"].key != key


def test_missing_official_checkpoint_names_path_and_link(setup):
    tmp, registry = setup
    with pytest.raises(FileNotFoundError) as err:
        _plan(tmp, registry, stage="evaluate", variants=["a"])
    msg = str(err.value)
    assert str(tmp / "checkpoints" / "tiny" / "a" / "demo" / "a.pth") in msg
    assert "https://example.org/tiny" in msg


def test_unknown_names_suggest_the_nearest(setup):
    tmp, registry = setup
    with pytest.raises(RegistryError, match="Did you mean 'tiny'"):
        plan_of(registry, ["tinny"], "demo")
    with pytest.raises(RegistryError, match="Did you mean 'demo'"):
        plan_of(registry, ["tiny"], "dmeo")
    with pytest.raises(RegistryError, match="Did you mean 'pair'"):
        plan_of(registry, ["tiny"], "demo", variants=["piar"])
    with pytest.raises(RegistryError, match="unknown stage"):
        plan_of(registry, ["tiny"], "demo", stage="both")


def test_identity_follows_config_data_and_code_not_runtime(setup):
    tmp, registry = setup
    base = _plan(tmp, registry, stage="all").by_name()
    again = _plan(tmp, registry, stage="all").by_name()
    assert {n: j.key for n, j in base.items()} == {n: j.key for n, j in again.items()}
    # GPUs are a runtime setting: the global batch, hence the result, does not change
    more_gpus = _plan(tmp, registry, stage="all", gpus=4).by_name()
    assert more_gpus["demo/tiny-a-seed0/train"].gpus == 4
    assert {n: j.key for n, j in more_gpus.items()} == {n: j.key for n, j in base.items()}
    # code version: every job changes
    code2 = _plan(tmp, registry, stage="all", code="code-v2").by_name()
    assert all(code2[n].key != base[n].key for n in base)
    assert code2["demo/tiny-a-seed0/train"].identity["code"] == "code-v2"
    # a recipe change reruns the training and everything downstream of it
    doc = yaml.safe_load((tmp / "registry.yaml").read_text())
    doc["methods"]["tiny"]["recipes"]["demo"]["lr"] = 0.02
    (tmp / "registry2.yaml").write_text(yaml.safe_dump(doc))
    changed = _plan(tmp, load_registry(tmp / "registry2.yaml"), stage="all").by_name()
    assert all(changed[n].key != base[n].key for n in base)
    # test-split data: evaluations change, training (train + dev splits) does not
    caps = tmp / "data" / "demo" / "precomp" / "test_caps.txt"
    caps.write_text(caps.read_text().replace("a", "the", 1))
    data2 = _plan(tmp, registry, stage="all").by_name()
    assert data2["demo/tiny-a-seed0/train"].key == base["demo/tiny-a-seed0/train"].key
    assert data2["demo/tiny-a-seed0/eval"].key != base["demo/tiny-a-seed0/eval"].key
    assert data2["demo/tiny-a-seed0/eval"].identity["data"] != base["demo/tiny-a-seed0/eval"].identity["data"]


def test_data_fingerprint_is_content_not_timestamps(tmp_path):
    campaign(tmp_path)
    files = split_files(tmp_path / "data", "demo", "train")
    assert sorted(p.name for p in files) == ["train_caps.txt", "train_ids.txt", "train_ims.npy"]
    fp = data_fingerprint(files)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "data", copy)
    for p in copy.rglob("*"):
        os.utime(p, (1, 1))
    assert data_fingerprint(split_files(copy, "demo", "train")) == fp


def test_code_version_tracks_the_method_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fakemethod"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "adapter.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fakemethod", None)
    before = code_version("fakemethod.adapter:A")
    (pkg / "model.py").write_text("Y = 2\n")
    code_version.cache_clear()
    after = code_version("fakemethod.adapter:A")
    assert before != after
    assert code_version("fakemethod.adapter:A") == after


def test_reported_only_variants_are_not_run(setup):
    tmp, _ = setup
    doc = yaml.safe_load((tmp / "registry.yaml").read_text())
    doc["methods"]["tiny"]["variants"]["paper"] = {"description": "numbers only", "options": {"reported_only": True}}
    (tmp / "registry3.yaml").write_text(yaml.safe_dump(doc))
    plan = _plan(tmp, load_registry(tmp / "registry3.yaml"), stage="train")
    assert not any("paper" in j.name for j in plan.jobs)
    assert any("tiny/paper" in n for n in plan.notes)
    with pytest.raises(RegistryError, match="no jobs"):
        _plan(tmp, load_registry(tmp / "registry3.yaml"), stage="train", variants=["paper"])


def test_task_round_trips_through_json(setup):
    tmp, registry = setup
    job = _plan(tmp, registry, stage="train", gpus=2).jobs[0]
    task = Task(job, RunSettings(results=str(tmp / "r"), checkpoint_steps=3), processes=2)
    back = Task.from_json(task.to_json())
    assert back == task and isinstance(back.job, Job)
    assert plan_mod.RUNTIME_RECIPE_KEYS == ("gpus",) and "gpus" not in back.job.config.recipe


def test_pixel_methods_read_and_fingerprint_the_cusa_json_layout(tmp_path):
    """CUSA jobs on coco depend on new_{split}.json and the teacher features, not on precomp files, and
    check-data looks for the json layout for them."""
    from harness.run.plan import data_layout
    from harness.spec.checks import check_dataset
    from harness.spec.registry import load_registry

    registry = load_registry()
    assert data_layout(registry, "cusa", "coco") == "cusa_json"
    assert data_layout(registry, "esa", "coco") == "precomp"
    folder = tmp_path / "coco"
    folder.mkdir()
    assert split_files(tmp_path, "coco", "test", "cusa_json") == []
    problems = check_dataset("coco", tmp_path, ["test"], layout="cusa_json")
    assert len(problems) == 1 and "new_test.json" in problems[0] and str(folder) in problems[0]
    (folder / "new_test.json").write_text('[{"image_path": "a.jpg", "caption": "a dog", "image_id": "1"}]')
    (folder / "test_unicom.npz").write_bytes(b"x")
    (folder / "unrelated_test.txt").write_text("not an input")
    files = split_files(tmp_path, "coco", "test", "cusa_json")
    assert files == [folder / "new_test.json", folder / "test_unicom.npz"]
    before = data_fingerprint(files)
    (folder / "new_test.json").write_text('[{"image_path": "a.jpg", "caption": "a cat", "image_id": "1"}]')
    assert data_fingerprint(files) != before
    problems = check_dataset("coco", tmp_path, ["test"], layout="cusa_json")
    assert problems and "1 of 1 images are missing" in problems[0]


def test_set_overrides_reach_the_recipes_they_name_and_the_identity(setup):
    from harness.spec.campaign import parse_overrides

    tmp, registry = setup
    over = parse_overrides(["epochs=2", "tiny.lr=2e-4", "tiny.lr_decay_epochs=[1, 2]"], registry, ["tiny"], "demo")
    assert over == {"*": {"epochs": 2}, "tiny": {"lr": 2e-4, "lr_decay_epochs": [1, 2]}}
    base = _plan(tmp, registry, stage="train", variants=["a"]).by_name()["demo/tiny-a-seed0/train"]
    over = parse_overrides(["tiny.epochs=7"], registry, ["tiny"], "demo")
    plan = _plan(tmp, registry, stage="all", variants=["a", "pair"], recipe_overrides=over).by_name()
    changed = next(j for n, j in plan.items() if n.startswith("demo/tiny-a-seed0+set-") and n.endswith("/train"))
    assert changed.config.recipe["epochs"] == 7 and changed.key != base.key
    assert changed.config.overrides == {"epochs": 7}
    # a run with overrides has its own folders (train, eval and the ensemble), never the default run's
    assert not any(n.startswith("demo/tiny-a-seed0/") or n.startswith("demo/tiny-pair-seed0/") for n in plan)
    assert any(n.startswith("demo/tiny-pair-seed0+set-") for n in plan)
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_overrides(["epochs"], registry, ["tiny"], "demo")
    with pytest.raises(ValueError, match="'epoch' is not a recipe key of tiny on demo. Did you mean 'epochs'"):
        parse_overrides(["epoch=3"], registry, ["tiny"], "demo")
    with pytest.raises(ValueError, match="epochs must be int .*got str 'two'"):
        parse_overrides(["epochs=two"], registry, ["tiny"], "demo")
    with pytest.raises(ValueError, match="'tiyn' is not a method of this campaign.*Did you mean 'tiny.lr'"):
        parse_overrides(["tiyn.lr=1"], registry, ["tiny"], "demo")
    assert parse_overrides(["lr=1"], registry, ["tiny"], "demo") == {"*": {"lr": 1.0}}  # int -> float recipe


def test_code_version_follows_the_sibling_packages_a_method_imports(tmp_path, monkeypatch):
    """A method that builds on a sibling package (same top-level package): a change there changes its jobs'
    identity; a sibling it does not import does not."""
    root = tmp_path / "labmethods"
    for pkg, body in (("base", "Z = 0\n"), ("shared", "from labmethods.base import Z\n"),
                      ("mine", "from labmethods.shared import Z\n"), ("other", "W = 1\n")):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
        (root / pkg / "adapter.py").write_text(body)
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    code_version.cache_clear()
    before = code_version("labmethods.mine.adapter:A")
    for pkg, changes in (("other", False), ("base", True)):  # not imported / imported through `shared`
        (root / pkg / "extra.py").write_text("V = 3\n")
        code_version.cache_clear()
        assert (code_version("labmethods.mine.adapter:A") != before) is changes, pkg
