"""Result store: atomic writes survive failures, finished jobs are detected, env is recorded."""

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.core import results
from harness.core.errors import CorruptFileWarning, StorageError
from harness.core.results import ResultStore, atomic_path, environment, save_npy, save_torch, write_json, write_yaml
from harness.eval.scoring import TileCache


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


# ---- issue 14: umask, full disks, corrupt resume state ------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def test_revision_is_dirty_for_code_changes_not_for_the_outputs_being_written(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "demo.md").write_text("old\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert results.git_revision(tmp_path)["dirty"] is False
    (tmp_path / "reports" / "demo.md").write_text("new\n")  # a report being rewritten
    assert results.git_revision(tmp_path)["dirty"] is True
    assert results.git_revision(tmp_path, outputs=[tmp_path / "reports", "/elsewhere"])["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert results.git_revision(tmp_path, outputs=[tmp_path / "reports"])["dirty"] is True


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_result_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        write_json(tmp_path / "metrics.json", {"rsum": 1.0})
        write_yaml(tmp_path / "config.yaml", {"method": "esa"})
        save_npy(tmp_path / "sims.npy", np.eye(2, dtype=np.float32))
        save_torch(tmp_path / "checkpoint.pth", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["metrics.json", "config.yaml", "sims.npy", "checkpoint.pth"], 0o666 & ~mask)


def test_disk_full_names_the_file_and_the_bytes_needed(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_json(target, {"rsum": 500.0})

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(StorageError) as err:
        write_json(target, {"rsum": 1.0, "pad": "x" * 1000})
    monkeypatch.undo()
    message = str(err.value)
    assert message.startswith(f"{target}: cannot write: no space left on the device (")
    assert "1,0" in message and "bytes needed" in message and "bytes free" in message and "\n" not in message
    assert json.loads(target.read_text()) == {"rsum": 500.0}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # and no temporary is left

    def full_npy(f, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.np, "save", full_npy)
    with pytest.raises(StorageError, match=r"sims\.npy: cannot write: no space left on the device \(4,224 bytes"):
        save_npy(tmp_path / "sims.npy", np.zeros((32, 32), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_file_size_limit_is_a_one_line_error_naming_file_and_size(tmp_path):
    """A real EFBIG (a `ulimit -f` of 64 KiB) for .npy and torch files; torch.save alone would say 'unexpected
    pos 704 vs 598'."""
    code = (
        "import resource, signal, sys\n"
        "import numpy as np, torch\n"
        "from harness.core.errors import StorageError\n"
        "from harness.core.results import save_npy, save_torch\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "for save, name, obj in ((save_npy, 'big.npy', np.zeros(100000, np.float32)),\n"
        "                        (save_torch, 'big.pth', {'w': torch.zeros(100000)})):\n"
        "    try:\n"
        "        save(sys.argv[1] + '/' + name, obj)\n"
        "    except StorageError as exc:\n"
        "        print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout + proc.stderr
    assert lines[0].startswith(f"{tmp_path}/big.npy: cannot write: file too large for the file system (400,128 bytes")
    assert lines[1].startswith(f"{tmp_path}/big.pth: cannot write: file too large for the file system (400,000 bytes")
    assert all("ulimit -f" in line for line in lines)
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary


def _finished_job(store: ResultStore, name: str) -> Path:
    store.start(name, {"method": "esa", "key": "k1", "recipe": {"lr": 0.1}}, {"seed": 0})
    return store.finish(name, {"protocol": "recall", "rsum": 412.5})


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_unreadable_metrics_json_is_moved_aside_and_the_job_is_unfinished(tmp_path, damage):
    store = ResultStore(tmp_path)
    d = _finished_job(store, "coco/a/eval")
    _finished_job(store, "coco/b/eval")
    text = (d / "metrics.json").read_bytes()
    broken = text[: len(text) // 2] if damage == "truncate" else b"\xff\xfe\x00garbage"
    (d / "metrics.json").write_bytes(broken)
    with pytest.warns(CorruptFileWarning, match=r"coco/a/eval/metrics\.json: unreadable .*moved aside to "
                                                r"metrics\.json\.corrupt-"):
        assert not store.is_finished("coco/a/eval")
    [aside] = d.glob("metrics.json.corrupt-*")
    assert aside.read_bytes() == broken  # kept, not deleted
    assert store.is_finished("coco/b/eval")  # the other job is untouched
    assert [r.path.name for r in store.finished()] == ["eval"] and store.finished()[0].path.parent.name == "b"
    assert store.load("coco/a/eval").config["key"] == "k1"


def test_truncated_config_yaml_is_moved_aside(tmp_path):
    store = ResultStore(tmp_path)
    d = _finished_job(store, "coco/a/eval")
    text = (d / "config.yaml").read_text()
    (d / "config.yaml").write_text(text[:-9])  # cut inside the last line: still parses as a smaller mapping
    with pytest.warns(CorruptFileWarning, match=r"config\.yaml: unreadable \(ValueError: no final newline"):
        result = store.load("coco/a/eval")
    assert result.config == {} and result.metrics["rsum"] == 412.5
    assert len(list(d.glob("config.yaml.corrupt-*"))) == 1 and not (d / "config.yaml").exists()


def test_truncated_tile_cache_is_moved_aside_and_scoring_restarts(tmp_path):
    path = tmp_path / "tiles_0.h5"
    cache = TileCache(path, (4, 6), (2, 3), "fp")
    cache.write(0, 2, 0, 3, np.ones((2, 3), np.float32))
    cache.close()
    cut = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(cut)
    with pytest.warns(CorruptFileWarning, match=r"tiles_0\.h5: unreadable .*moved aside to tiles_0\.h5\.corrupt-"):
        cache = TileCache(path, (4, 6), (2, 3), "fp")
    assert not any(cache.done(a, c) for a in (0, 2) for c in (0, 3))  # a fresh cache
    cache.write(2, 4, 3, 6, np.full((2, 3), 2.0, np.float32))
    cache.close()
    [aside] = tmp_path.glob("tiles_0.h5.corrupt-*")
    assert aside.read_bytes() == cut
    reopened = TileCache(path, (4, 6), (2, 3), "fp")
    assert reopened.done(2, 3) and reopened.read(2, 4, 3, 6).tolist() == [[2.0] * 3] * 2
    reopened.close()


def test_corrupt_job_files_rerun_only_that_job_even_on_dry_run(tmp_path):
    """End to end (the test suite's tiny method): a truncated metrics.json of the evaluation and a truncated
    config.yaml of the training job. Planning (--dry-run) works and names them; the next run recomputes
    the evaluation, and the training only because its identity is lost, never mixing old progress in."""
    from test_orchestrate_fixtures import campaign, run_args

    from harness.cli.app import main

    campaign(tmp_path)
    args = run_args(tmp_path, "--variants", "a")
    assert main(args) == 0
    res = tmp_path / "results"
    train, evaluate = res / "demo/tiny-a-seed0/train", res / "demo/tiny-a-seed0/eval"
    before = json.loads((evaluate / "metrics.json").read_text())
    text = (evaluate / "metrics.json").read_text()
    (evaluate / "metrics.json").write_text(text[: len(text) // 3])
    with pytest.warns(CorruptFileWarning, match=r"tiny-a-seed0/eval/metrics\.json: unreadable"):
        assert main([*args, "--dry-run"]) == 0
    assert main(args) == 0
    assert (train / "job.log").read_text().count(" start ") == 1  # cached
    assert (evaluate / "job.log").read_text().count(" start ") == 2  # recomputed
    after = json.loads((evaluate / "metrics.json").read_text())
    assert after["protocols"] == before["protocols"]
    assert len(list(evaluate.glob("metrics.json.corrupt-*"))) == 1

    cfg = (train / "config.yaml").read_text()
    (train / "config.yaml").write_text(cfg[:-3])
    with pytest.warns(CorruptFileWarning, match=r"tiny-a-seed0/train/config\.yaml: unreadable"):
        assert main(args) == 0
    assert (train / "job.log").read_text().count(" start ") == 1  # the job folder starts afresh
    assert "earlier progress cannot be matched" in (train / "job.log").read_text()
    moved = list((res / "_superseded").glob("demo__tiny-a-seed0__train-*"))
    assert len(moved) == 1 and list(moved[0].glob("config.yaml.corrupt-*"))  # kept beside its old progress


def test_two_supersedes_within_one_second_keep_both(tmp_path, monkeypatch):
    """Results moved aside twice in the same second go to two folders: neither overwrites the other."""
    import harness.run.jobs as jobs

    store = ResultStore(tmp_path / "results")
    monkeypatch.setattr(results.time, "strftime", lambda fmt, *a: "20261205-120000")  # the clock stands still
    moved = []
    for n in (1, 2):
        job = store.job_dir("demo/x/eval")
        (job / "work").mkdir(parents=True, exist_ok=True)
        (job / "work" / "tiles_0.h5").write_text(f"run {n}")
        (job / "metrics.json").write_text(f'{{"run": {n}}}')
        moved.append(jobs.supersede_job(store, "demo/x/eval", f"change {n}"))
    assert moved[0] != moved[1] and moved[1].name == moved[0].name + "-1"
    for n, folder in enumerate(moved, 1):
        assert (folder / "metrics.json").read_text() == f'{{"run": {n}}}'
        assert (folder / "work" / "tiles_0.h5").read_text() == f"run {n}"
