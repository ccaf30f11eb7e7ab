"""Result store: atomic writes survive failures, finished jobs are detected, env is recorded."""

import json

import numpy as np
import pytest

from harness import results
from harness.results import ResultStore, atomic_path, environment, save_npy, write_json


def test_atomic_write_keeps_old_content_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_json(target, {"rsum": 500.0})

    def broken_dumps(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(results.json, "dumps", broken_dumps)
    with pytest.raises(RuntimeError, match="disk full"):
        write_json(target, {"rsum": 1.0})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"rsum": 500.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_failure_inside_atomic_block_leaves_nothing(tmp_path):
    target = tmp_path / "sims.npy"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_store_finish_marks_done_and_force_clears(tmp_path):
    store = ResultStore(tmp_path)
    store.start("coco/esa-bigru-seed0/eval", {"method": "esa"}, {"seed": 0})
    assert not store.is_finished("coco/esa-bigru-seed0/eval")
    save_npy(store.job_dir("coco/esa-bigru-seed0/eval") / "sims.npy", np.eye(2, 10, dtype=np.float32))
    store.finish("coco/esa-bigru-seed0/eval", {"protocols": {}})
    assert store.is_finished("coco/esa-bigru-seed0/eval")
    [res] = store.finished()
    assert res.config == {"method": "esa"} and res.env == {"seed": 0}
    store.start("coco/esa-bigru-seed0/eval", {"method": "esa"}, {"seed": 0}, force=True)
    assert not store.is_finished("coco/esa-bigru-seed0/eval")


def test_environment_records_versions_and_revision():
    env = environment(seed=3, device="cpu")
    assert env["seed"] == 3 and env["device"] == "cpu"
    assert env["packages"]["torch"] and env["packages"]["numpy"]
    assert set(env["git"]) == {"revision", "dirty"}
