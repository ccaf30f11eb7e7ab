"""Data-parallel training: 2 gloo processes on CPU take the same steps as one process.

The tiny adapter's loss is batch-coupled (hardest negatives over all pairs of the batch) and its image
tower has BatchNorm, so per-shard losses or per-shard statistics would give a different loss curve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from test_orchestrate_fixtures import campaign, one_thread, run_args, worker_env  # noqa: F401 - one_thread: autouse fixture
from torch import nn

from harness.api import PaddedTokens, load_container, slice_samples
from harness.cli.app import main
from harness.run import distributed
from harness.run.training import CHECKPOINT

TRAIN = "demo/tiny-a-seed0/train"


def _curve(tmp: Path) -> np.ndarray:
    return np.loadtxt(tmp / "results" / TRAIN / "loss_curve.tsv", skiprows=1, ndmin=2)


def _result(tmp: Path, name: str) -> dict:
    return json.loads((tmp / "results" / TRAIN / name).read_text())


def test_two_gloo_processes_under_torchrun_match_one_process(tmp_path, monkeypatch):
    """One training job on 2 CPU processes (local executor -> torchrun -> gloo) against the same job in one
    process: the same loss at every step, the same weights and BatchNorm statistics.

    50 captions in batches of 30 and 20: shards of 15 and 10 per rank; hardest negatives and BatchNorm
    statistics over a shard alone would give another loss curve."""
    for key, value in worker_env().items():
        monkeypatch.setenv(key, value)
    splits = (("train", 10), ("dev", 6), ("test", 6))
    recipe = {"epochs": 3, "lr_decay_epochs": [2]}
    ddp, single = (campaign(tmp_path / name, recipe, splits) for name in ("ddp", "single"))
    args = ("--variants", "a", "--stage", "train", "--device", "cpu")
    assert main(run_args(ddp, *args, "--executor", "local", "--gpus", "2")) == 0
    assert main(run_args(single, *args)) == 0
    assert "on cpu, 2 process(es)" in (ddp / "results" / TRAIN / "job.log").read_text()
    assert _result(ddp, "metrics.json")["efficiency"]["processes"] == 2
    curve, reference = _curve(ddp), _curve(single)
    assert curve.shape == reference.shape == (6, 3)
    np.testing.assert_array_equal(curve[:, :2], reference[:, :2])
    np.testing.assert_allclose(curve[:, 2], reference[:, 2], rtol=2e-5, atol=1e-5)
    mine = load_container(ddp / "results" / TRAIN / "work" / CHECKPOINT)["itrbench"]
    theirs = load_container(single / "results" / TRAIN / "work" / CHECKPOINT)["itrbench"]
    assert len(mine["torch_rng_ranks"]) == 2 and len(theirs["torch_rng_ranks"]) == 1
    for key in theirs["model_state"]:  # weights and BatchNorm running statistics, in the plain BatchNorm keys
        torch.testing.assert_close(mine["model_state"][key], theirs["model_state"][key], rtol=1e-4, atol=2e-5)


def test_shard_bounds_partition_every_batch():
    for n in range(1, 40):
        for world in (1, 2, 3, 8):
            parts = [distributed.shard_bounds(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [b - a for a, b in parts]
            assert max(sizes) - min(sizes) <= 1


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())
    reference = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())
    reference.load_state_dict(model.state_dict())
    distributed.convert_batchnorm(model)
    assert isinstance(model[1], distributed.GlobalBatchNorm)
    assert list(model.state_dict()) == list(reference.state_dict())
    x = torch.randn(10, 4)
    torch.testing.assert_close(model(x), reference(x))
    torch.testing.assert_close(model[1].running_var, reference[1].running_var)
    assert model[1].weight is model.state_dict(keep_vars=True)["1.weight"]


@dataclass
class _Batch:
    images: torch.Tensor  # (B, R, D)
    tokens: PaddedTokens  # 2 rows per sample
    epoch_flag: int


def test_default_shard_slices_rows_per_sample():
    batch = _Batch(torch.arange(12.).reshape(6, 2, 1), PaddedTokens(torch.arange(24).reshape(12, 2),
                                                                    torch.full((12,), 2)), 7)
    part = slice_samples(batch, 2, 4, 6)
    assert part.images[:, 0, 0].tolist() == [4.0, 6.0]
    assert part.tokens.ids[:, 0].tolist() == [8, 10, 12, 14]  # rows 4..7: samples 2 and 3
    assert part.epoch_flag == 7
    with pytest.raises(ValueError, match="override Adapter.shard_batch"):
        slice_samples(torch.zeros(2, 6, 3), 0, 3, 6)


def test_esa_loss_over_shards_is_the_loss_over_the_global_batch():
    """ESA's shard_batch and gather: shard 0's loss, with shard 1's embeddings gathered in, equals the
    loss of the whole batch (eval mode: no word dropout, so both sides are deterministic)."""
    from methods.esa import ESAAdapter

    torch.manual_seed(0)
    adapter = ESAAdapter.build("bigru", "coco", {"embed_size": 32, "word_dim": 16, "img_dim": 8})
    adapter.configure_training({"warmup_epochs": 1, "hardnum": 2})
    captions = ["a man riding a wave on a surfboard", "two giraffes in a field", "a bowl of soup",
                "a red bus on a street", "a cat on a bench"]
    rng = np.random.default_rng(0)
    batch = adapter.make_train_batch(rng.random((5, 6, 8)).astype(np.float32), captions, rng)
    adapter.model.eval()
    first, second = adapter.shard_batch(batch, 0, 3, 5), adapter.shard_batch(batch, 3, 5, 5)
    assert first.images.shape[0] == 3 and first.region_keep.shape[1] == 3 and len(first.tokens) == 6
    with torch.no_grad():
        rest = [adapter.model.img_enc.views(second.images, second.region_keep),
                adapter.model.txt_enc(second.tokens.ids, second.tokens.lengths)]
    calls = iter(rest)
    adapter._gather_fn = lambda t: torch.cat([t, next(calls)])
    try:
        sharded = adapter.train_step(first, epoch=1)["loss"]
    finally:
        adapter._gather_fn = None
    whole = adapter.train_step(batch, epoch=1)["loss"]
    torch.testing.assert_close(sharded, whole, rtol=1e-5, atol=1e-5)
    alone = adapter.train_step(first, epoch=1)["loss"]  # without the gather the loss is another one
    assert abs(alone.item() - whole.item()) > 1e-3
