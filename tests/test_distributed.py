"""Data-parallel training: 2 gloo processes on CPU take the same steps as one process.

The tiny adapter's loss is batch-coupled (hardest negatives over all pairs of the batch) and its image
tower has BatchNorm, so per-shard losses or per-shard statistics would give a different loss curve.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_orchestrate_fixtures import DIM, TinyAdapter, tiny_data
from torch import nn

from harness import distributed
from harness.data.precomp import load_precomp
from harness.training import CHECKPOINT, train
from methods.base import PaddedTokens, slice_samples
from methods.common.checkpoint import load_container

RECIPE = {"epochs": 2, "batch_size": 30, "lr": 0.01, "lr_decay_epochs": [1], "seed": 3, "grad_clip": 2.0}
N_CAPTIONS = 124  # batches of 30, 30, 30, 30, 4: the last one splits 2 + 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(data_root: Path, work: Path, dist_ctx=None) -> tuple[list[float], TinyAdapter]:
    torch.manual_seed(RECIPE["seed"])
    adapter = TinyAdapter.build("a", "demo", {"img_dim": DIM, "embed_size": 8})
    split = load_precomp(data_root, "train", "demo")
    losses: list[float] = []
    train(adapter, split.images, split.captions[:N_CAPTIONS], RECIPE, work, log=lambda m: None,
          on_step=lambda info: losses.append(info.loss), dist=dist_ctx)
    return losses, adapter


def _rank(rank: int, world: int, port: int, data_root: str, work: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = distributed.init_from_env("cpu")
    try:
        losses, adapter = _train(Path(data_root), Path(work), ctx)
        if rank == 0:
            state = {k: v.tolist() for k, v in adapter.model.state_dict().items()}
            Path(out).write_text(json.dumps({"losses": losses, "state": state,
                                             "bn": type(adapter.model.bn).__name__}))
    finally:
        distributed.shutdown()


def test_two_gloo_processes_match_one_process(tmp_path):
    data = tiny_data(tmp_path / "data")
    out = tmp_path / "rank0.json"
    mp.start_processes(_rank, args=(2, _free_port(), str(data), str(tmp_path / "ddp"), str(out)), nprocs=2,
                       join=True, start_method="spawn")
    ddp = json.loads(out.read_text())
    single_losses, single = _train(data, tmp_path / "single")
    assert ddp["bn"] == "GlobalBatchNorm"
    assert len(ddp["losses"]) == len(single_losses) == 10
    np.testing.assert_allclose(ddp["losses"], single_losses, rtol=2e-5, atol=1e-5)
    for key, value in single.model.state_dict().items():  # weights and BatchNorm running statistics
        np.testing.assert_allclose(np.asarray(ddp["state"][key], dtype=np.float64), value.double().numpy(),
                                   rtol=1e-4, atol=2e-5, err_msg=key)
    # rank 0 wrote a checkpoint with the plain BatchNorm keys, loadable by the single-process model
    container = load_container(tmp_path / "ddp" / CHECKPOINT)
    single.model.load_state_dict(container["itrbench"]["model_state"])
    assert container["itrbench"]["epoch"] == 2 and len(container["itrbench"]["torch_rng_ranks"]) == 2


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
