"""One evaluation over 2 gloo processes (evaluate --processes 2, or under torchrun itself): the tiles are dealt
over the ranks, each resumes its own cache, rank 0 merges them, and the matrix equals the single-process matrix
(bit for bit at the same thread count per process: BLAS kernels may sum in another order with other thread
counts)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from stub_method import write_checkpoint, write_split
from test_orchestrate_fixtures import one_thread, worker_env  # noqa: F401 - one_thread: autouse fixture
from test_rehearsals import user_registry

from harness.cli.app import main
from harness.eval import sharding
from harness.eval.scoring import tile_grid

HERE = Path(__file__).parent


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.chdir(tmp_path)
    for key, value in worker_env().items():
        monkeypatch.setenv(key, value)
    write_split(tmp_path / "data" / "mine" / "precomp", "test", 30)
    return tmp_path, user_registry(tmp_path / "mine.yaml"), write_checkpoint(tmp_path / "stub.pth")


def _evaluate(tmp: Path, reg: Path, ck: Path, out: str, *extra: str) -> int:
    return main(["evaluate", "--registry", str(reg), "--method", "stub", "--variant", "a", "--checkpoint", str(ck),
                 "--data-root", str(tmp / "data"), "--dataset", "mine", "--save-sims", str(tmp / out / "sims.npy"),
                 "--json", str(tmp / out / "metrics.json"), *extra])


def test_two_gloo_processes_give_the_single_process_matrix(lab):
    tmp, reg, ck = lab
    assert _evaluate(tmp, reg, ck, "one", "--tiles", "8,40") == 0  # 4 x 4 tiles: 8 per rank
    assert _evaluate(tmp, reg, ck, "two", "--tiles", "8,40", "--processes", "2", "--cache-dir",
                     str(tmp / "cache")) == 0
    one, two = np.load(tmp / "one" / "sims.npy"), np.load(tmp / "two" / "sims.npy")
    assert two.shape == (30, 150)
    np.testing.assert_array_equal(two, one)
    metrics = json.loads((tmp / "two" / "metrics.json").read_text())
    assert metrics["efficiency"]["processes"] == 2
    assert metrics["metrics"]["recall"] == json.loads((tmp / "one" / "metrics.json").read_text())["metrics"]["recall"]
    caches = sorted(p.name for p in (tmp / "cache").iterdir())
    assert caches == ["tiles_0.rank0of2.h5", "tiles_0.rank1of2.h5"]
    for r in range(2):  # each rank scored exactly its own 8 tiles
        with h5py.File(tmp / "cache" / caches[r], "r") as f:
            done = np.asarray(f["done"][...])
        assert done.sum() == 8
        grid = tile_grid(30, 150, 8, 40)
        assert all(done[a // 8, c // 40] == (sharding.owner_of_tile(i, 2) == r) for i, (a, _, c, _) in enumerate(grid))
    # resumed: a second run with the rank caches in place scores nothing new and gives the same matrix
    assert _evaluate(tmp, reg, ck, "again", "--tiles", "8,40", "--processes", "2", "--cache-dir",
                     str(tmp / "cache")) == 0
    np.testing.assert_array_equal(np.load(tmp / "again" / "sims.npy"), one)


def test_the_same_evaluation_under_torchrun_gives_the_same_matrix(lab):
    """Ranks started by torchrun (not by --processes): the command runs as a rank of the launcher's world."""
    import os
    import subprocess
    import sys

    tmp, reg, ck = lab
    assert _evaluate(tmp, reg, ck, "one", "--tiles", "8,40") == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(HERE.parent / "run_all.py"), "evaluate", "--registry", str(reg), "--method", "stub", "--variant", "a",
           "--checkpoint", str(ck), "--data-root", str(tmp / "data"), "--dataset", "mine", "--save-sims",
           str(tmp / "tr" / "sims.npy"), "--json", str(tmp / "tr" / "metrics.json"), "--tiles", "8,40"]
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp / "tr" / "sims.npy"), np.load(tmp / "one" / "sims.npy"))
    assert json.loads((tmp / "tr" / "metrics.json").read_text())["efficiency"]["processes"] == 2


def _rank_caches(folder: Path, grid, shape, tiles, flags) -> Path:
    cache = folder / "tiles_0.h5"
    for r, done in enumerate(flags):
        with h5py.File(sharding.rank_cache(cache, r, len(flags)), "w") as f:
            f.create_dataset("sims", data=np.full(shape, r + 1, np.float32))
            f.create_dataset("done", data=np.asarray(done, bool).reshape(-(-shape[0] // tiles[0]), -1))
            f.attrs["tiles"], f.attrs["fingerprint"] = tiles, "x"
    return cache


def test_merge_checks_every_tile_once(tmp_path):
    shape, tiles = (4, 6), (2, 3)
    grid = tile_grid(*shape, *tiles)  # caption-tile major: (0,0), (1,0), (0,1), (1,1) as (image, caption) tiles
    mine = [[sharding.owner_of_tile(i, 2) == r for i in range(len(grid))] for r in range(2)]
    flags = [[m[grid.index(t)] for t in sorted(grid)] for m in mine]  # done flags in (image tile, caption tile) order
    cache = _rank_caches(tmp_path, grid, shape, tiles, flags)
    merged = sharding.merge_tiles(cache, 2, grid, shape, tiles, "x")
    for i, (a, b, c, d) in enumerate(grid):
        assert (merged[a:b, c:d] == sharding.owner_of_tile(i, 2) + 1).all()
    _rank_caches(tmp_path, grid, shape, tiles, [[True] * 4, [False, False, False, True]])
    with pytest.raises(sharding.ShardError, match="1 tile\\(s\\) in several ranks' caches"):
        sharding.merge_tiles(cache, 2, grid, shape, tiles, "x")
    _rank_caches(tmp_path, grid, shape, tiles, [[True, False, False, False], [False] * 4])
    with pytest.raises(sharding.ShardError, match="3 tile\\(s\\) in no rank's cache"):
        sharding.merge_tiles(cache, 2, grid, shape, tiles, "x")
    with pytest.raises(sharding.ShardError, match="another computation"):
        sharding.merge_tiles(cache, 2, grid, shape, tiles, "y")
    with pytest.raises(sharding.ShardError, match="rank\\(s\\) missing"):
        sharding.merge_tiles(cache, 3, grid, shape, tiles, "x")


def test_processes_refused_when_out_of_range(lab, capsys):
    tmp, reg, ck = lab
    assert _evaluate(tmp, reg, ck, "bad", "--processes", "0") == 2
    assert "--processes 0" in capsys.readouterr().err


def _run(tmp: Path, reg: Path, results: str, *extra: str) -> int:
    return main(["run", "--registry", str(reg), "--methods", "stub", "--dataset", "mine", "--stage", "evaluate",
                 "--data-root", str(tmp / "data"), "--checkpoint-dir", str(tmp / "checkpoints"), "--device", "cpu",
                 "--results", str(tmp / results), "--reports", str(tmp / f"{results}-reports"), "--tiles", "8,40",
                 *extra])


def test_run_splits_evaluation_jobs_over_processes_and_streams(lab):
    """`run --processes 2` (local executor: torchrun, gloo) gives the inline single-process job's matrix; `run
    --store-matrix never` keeps ranks.npz instead of sims.npy with the same recall, and the report is written."""
    tmp, reg, _ = lab
    write_checkpoint(tmp / "checkpoints" / "stub" / "a" / "mine" / "stub.pth")
    job = Path("mine") / "stub-a-official" / "eval"
    assert _run(tmp, reg, "one") == 0
    assert _run(tmp, reg, "two", "--executor", "local", "--processes", "2") == 0
    np.testing.assert_array_equal(np.load(tmp / "two" / job / "sims.npy"), np.load(tmp / "one" / job / "sims.npy"))
    two = json.loads((tmp / "two" / job / "metrics.json").read_text())
    assert two["efficiency"]["processes"] == 2 and "2 process(es)" in (tmp / "two" / job / "job.log").read_text()
    assert sorted(p.name for p in (tmp / "two" / job / "work").iterdir()) == ["tiles_0.rank0of2.h5",
                                                                               "tiles_0.rank1of2.h5"]
    assert _run(tmp, reg, "streamed", "--store-matrix", "never") == 0
    streamed = json.loads((tmp / "streamed" / job / "metrics.json").read_text())
    one = json.loads((tmp / "one" / job / "metrics.json").read_text())
    assert not (tmp / "streamed" / job / "sims.npy").exists() and (tmp / "streamed" / job / "ranks.npz").is_file()
    assert streamed["protocols"]["recall"] == one["protocols"]["recall"] and streamed["shape"] == [30, 150]
    assert (tmp / "streamed-reports" / "mine.md").is_file()
