"""Data-parallel training of one job over several processes (torchrun, Slurm tasks, or CPU/gloo in tests).

The contract is that W processes take the same optimizer steps as one process with the same recipe:

- every rank builds the *global* batch exactly as a single process would (same seed, same numpy RNG,
  same augmentation draws), then keeps a contiguous slice of its samples (`Adapter.shard_batch`);
- batch-coupled losses (hardest-negative triplet, InfoNCE) see the global batch: the adapter passes its
  embeddings through `Adapter.gather`, which the harness points at an autograd all-gather here;
- BatchNorm layers become `GlobalBatchNorm` (statistics over the global batch, same state-dict keys);
- DistributedDataParallel averages the gradients. All ranks compute the same global loss, and the
  all-gather's backward sums the W identical gradient copies, so the average is the single-process
  gradient with no extra scaling.

What cannot match bit for bit: randomness drawn *inside* the forward pass (dropout), which each rank
draws for its own shard, and float reassociation (sums over shards), which is ~1e-7 relative.
An adapter that never calls `gather` gets per-process loss batches (each rank's loss over its shard,
gradients averaged), as DDP code without all-gather does; the harness says so in the job log.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from harness.api.adapter import Adapter

PROCESS_GROUP_TIMEOUT = timedelta(hours=3)  # rank 0 validates and saves while the others wait
_REPLICATED = [False]  # True while every rank processes the same (whole) batch: no cross-rank reduction


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel job."""

    rank: int
    world_size: int
    local_rank: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside a launcher."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def init_from_env(device: str) -> DistContext | None:
    """Join the process group torchrun (or Slurm via submitit) described; None for a single process.

    `device` is "cuda" or "cpu": NCCL on GPUs (one per rank, by local rank), gloo on CPU.
    """
    rank, world, local = world_from_env()
    if world <= 1:
        return None
    if device.startswith("cuda"):
        n = torch.cuda.device_count()
        if n == 0:
            raise RuntimeError(f"rank {rank}: device cuda requested but no GPU is visible")
        index = local % n  # each rank may see only its own GPU (CUDA_VISIBLE_DEVICES per task)
        torch.cuda.set_device(index)
        device, backend = f"cuda:{index}", "nccl"
    else:
        device, backend = "cpu", "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=PROCESS_GROUP_TIMEOUT)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def replicated() -> Iterator[None]:
    """Within: every rank holds the whole batch, so gathers and BatchNorm statistics stay local."""
    _REPLICATED[0] = True
    try:
        yield
    finally:
        _REPLICATED[0] = False


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Samples [start, stop) of rank `rank` when n samples are split into `world` contiguous parts
    (sizes differ by at most one, larger parts first, like numpy.array_split)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows in rank order, with autograd (gradients flow back to each rank).

    Ranks may hold different numbers of rows (an uneven last batch): rows are padded to the largest
    count for the collective and trimmed after it.
    """
    world = dist.get_world_size()
    count = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    most = max(sizes)
    padded = tensor
    if tensor.shape[0] < most:
        pad = tensor.new_zeros((most - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad])
    with _autograd_collectives() as (all_gather, _):
        parts = all_gather(padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


@contextlib.contextmanager
def _autograd_collectives() -> Iterator[tuple[Any, Any]]:
    """torch.distributed.nn.functional's differentiable all_gather / all_reduce (public API; torch 2.14
    marks them deprecated in favour of private functional collectives, so the warning is silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from torch.distributed.nn.functional import all_gather, all_reduce

        yield all_gather, all_reduce


def all_reduce_max(values: list[float], device: str) -> list[float]:
    """Element-wise max of small flag vectors over ranks (identity for a single process)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(v) for v in t.tolist()]


def all_reduce_mean(value: float, device: str) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (all ranks' shards).

    Like SyncBatchNorm, but on every device (SyncBatchNorm refuses CPU tensors) and with uneven shards.
    Same parameters, buffers and state-dict keys as the BatchNorm it replaces; evaluation mode and a
    single process behave exactly like nn.BatchNorm*d. The mean is reduced first and the centred sum
    of squares second (two small all-reduces), which matches BatchNorm's two-pass variance.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()) or _REPLICATED[0]:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / max(1, x.shape[1])], dtype=x.dtype, device=x.device)
        local_sum = x.sum(dim=dims)
        with _autograd_collectives() as (_, all_reduce):
            totals = all_reduce(torch.cat([local_sum, count]))
            n = totals[-1]
            mean = totals[:-1] / n
            centred = x - mean.reshape(shape)
            var = all_reduce((centred * centred).sum(dim=dims)) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked)
                else:
                    factor = self.momentum
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.detach(), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm*d inside `module` by a GlobalBatchNorm sharing its parameters and buffers."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias  # the same Parameter objects
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


class _TrainStep(nn.Module):
    """Lets DistributedDataParallel run an adapter's whole train_step as its forward."""

    def __init__(self, adapter: Adapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._adapter = [adapter]  # a list, so the adapter is not registered as a submodule

    def forward(self, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        return self._adapter[0].train_step(batch, epoch)


class DataParallelStep:
    """The per-step callable under data parallelism: shard, forward through DDP, global loss.

    Counts the adapter's `gather` calls so the job log can say whether the loss saw the global batch.
    """

    def __init__(self, adapter: Adapter, ctx: DistContext) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.adapter = adapter
        self.ctx = ctx
        convert_batchnorm(adapter.model)
        self.gathers = 0

        def gather(t: torch.Tensor) -> torch.Tensor:
            self.gathers += 1
            return t if _REPLICATED[0] else gather_rows(t)

        adapter._gather_fn = gather
        # buffers are identical on every rank (GlobalBatchNorm): no per-forward broadcast needed
        params = inspect.signature(DistributedDataParallel).parameters
        sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        self.ddp = DistributedDataParallel(_TrainStep(adapter), device_ids=None, find_unused_parameters=True, **sync)

    def __call__(self, batch: Any, size: int, epoch: int) -> dict[str, torch.Tensor]:
        """Loss of this rank's shard of a global batch of `size` samples (the whole batch, replicated on
        every rank, when there are fewer samples than ranks: identical gradients, averaged)."""
        if size < self.ctx.world_size:
            with replicated():
                return self.ddp(batch, epoch)
        start, stop = shard_bounds(size, self.ctx.rank, self.ctx.world_size)
        return self.ddp(self.adapter.shard_batch(batch, start, stop, size), epoch)

    def close(self) -> None:
        self.adapter._gather_fn = None

