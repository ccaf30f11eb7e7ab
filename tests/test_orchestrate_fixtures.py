"""Shared pieces of the orchestrator tests: a tiny real adapter, tiny precomp data, a test registry.

`TinyAdapter` is small but has what makes data-parallel training hard: a batch-coupled loss (hardest
negative triplet over all pairs of the batch, through `Adapter.gather`), a BatchNorm layer, and
augmentation drawn from the training RNG in `make_train_batch`. Worker processes import it by module
name, so the tests put this folder on PYTHONPATH.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from harness.api import Adapter, CheckpointError, PaddedTokens, TrainingSetup, load_container, load_strict
from harness.data.demo import demo_captions, synthesize_regions
from methods.common.text_bert import pad_ids
from methods.common.triplet import triplet_costs

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is much faster (no spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
VOCAB = 211
REGIONS, DIM = 8, 16
SPLITS = (("train", 40), ("dev", 10), ("test", 12))


class TinyModel(nn.Module):
    def __init__(self, dim: int, embed: int) -> None:
        super().__init__()
        self.img = nn.Linear(dim, embed, bias=False)  # a bias before BatchNorm gets a zero gradient
        self.bn = nn.BatchNorm1d(embed)
        self.words = nn.EmbeddingBag(VOCAB, embed, mode="mean")
        self.txt = nn.Linear(embed, embed)

    def images(self, regions: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        if keep is not None:
            w = keep.to(regions.dtype).unsqueeze(-1)
            pooled = (regions * w).sum(1) / w.sum(1).clamp(min=1)
        else:
            pooled = regions.mean(1)
        return nn.functional.normalize(self.bn(self.img(pooled)), dim=-1)

    def texts(self, tokens: PaddedTokens) -> torch.Tensor:
        width = tokens.ids.shape[1]
        mask = torch.arange(width, device=tokens.ids.device)[None, :] < tokens.lengths[:, None]
        offsets = torch.cat([tokens.lengths.new_zeros(1), tokens.lengths.cumsum(0)[:-1]])
        bag = self.words(tokens.ids[mask], offsets)
        return nn.functional.normalize(self.txt(torch.tanh(bag)), dim=-1)


class TinyBatch:
    """A batch class with a non-standard axis, so the adapter overrides shard_batch."""

    def __init__(self, images: torch.Tensor, keep: torch.Tensor, tokens: PaddedTokens) -> None:
        self.images, self.keep, self.tokens = images, keep, tokens  # keep: (R, B) regions first


class TinyAdapter(Adapter):
    method = "tiny"
    scoring = "embedding"

    def __init__(self, variant: str, dataset: str, options: Mapping[str, Any]) -> None:
        self.variant, self.dataset, self.options = variant, dataset, dict(options)
        self.model = TinyModel(int(options.get("img_dim", DIM)), int(options.get("embed_size", 8)))
        self.recipe: dict[str, Any] = {}

    @classmethod
    def build(cls, variant: str, dataset: str, options: Mapping[str, Any] | None = None) -> TinyAdapter:
        return cls(variant, dataset, dict(options or {}))

    @classmethod
    def load_official(cls, path: str | Path, *, variant: str | None = None,
                      dataset: str | None = None) -> TinyAdapter:
        container = load_container(path)
        if "model" not in container or "opt" not in container:
            raise CheckpointError(f"{path}: not a tiny checkpoint (has {sorted(container)})")
        adapter = cls(variant or container["opt"]["variant"], dataset or "demo", container["opt"])
        load_strict(adapter.model, container["model"], path=path, part="model")
        return adapter

    def official_checkpoint(self, **extra: Any) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": {**self.options, "variant": self.variant}, **extra}

    def tokenize(self, captions: Sequence[str]) -> PaddedTokens:
        return pad_ids([[1 + zlib.crc32(w.encode()) % (VOCAB - 1) for w in c.lower().split()] or [1]
                        for c in captions])

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.images(torch.as_tensor(images, dtype=torch.float32).to(self.device))

    def encode_texts(self, texts: PaddedTokens) -> torch.Tensor:
        return self.model.texts(texts.to(self.device))

    def score(self, image_block: torch.Tensor, text_block: torch.Tensor) -> torch.Tensor:
        return image_block @ text_block.t()

    def configure_training(self, recipe: Mapping[str, Any]) -> TrainingSetup:
        self.recipe = dict(recipe)
        lr = float(recipe.get("lr", 1e-2))
        opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        decay = [int(e) for e in recipe.get("lr_decay_epochs", [])]
        return TrainingSetup(optimizer=opt, grad_clip=float(recipe.get("grad_clip", 2.0)),
                             lr_at_epoch=lambda e: [lr * 0.1 ** sum(e >= d for d in decay)])

    def make_train_batch(self, images: np.ndarray, captions: Sequence[str], rng: np.random.Generator,
                         caption_ids: np.ndarray | None = None) -> TinyBatch:
        regions = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        keep = torch.from_numpy(rng.random((regions.shape[1], regions.shape[0])) < 0.8)
        return TinyBatch(regions, keep, self.tokenize(captions))

    def shard_batch(self, batch: TinyBatch, start: int, stop: int, size: int) -> TinyBatch:
        return TinyBatch(batch.images[start:stop], batch.keep[:, start:stop], batch.tokens[start:stop])

    def train_step(self, batch: TinyBatch, epoch: int) -> dict[str, torch.Tensor]:
        if self.recipe.get("step_sleep"):  # lets a test signal a job while it is surely mid-training
            time.sleep(float(self.recipe["step_sleep"]))
        img = self.gather(self.model.images(batch.images.to(self.device), batch.keep.t().to(self.device)))
        cap = self.gather(self.model.texts(batch.tokens.to(self.device)))
        cost_im, cost_s = triplet_costs(img @ cap.t(), margin=0.2, hardest_negative=epoch >= 1)
        return {"loss": cost_im + cost_s}


# ---- data and registry --------------------------------------------------------------------------

def tiny_data(root: Path, splits: Sequence[tuple[str, int]] = SPLITS) -> Path:
    """A demo-layout precomp folder under root/demo/precomp (real captions, learnable features)."""
    caps, ids = demo_captions()
    rng = np.random.default_rng(0)
    folder = root / "demo" / "precomp"
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, n in splits:
        feats = np.stack([synthesize_regions(caps[5 * i:5 * i + 5], rng, regions=REGIONS, dim=DIM)
                          for i in range(start, start + n)])
        np.save(folder / f"{split}_ims.npy", feats)
        (folder / f"{split}_caps.txt").write_text("\n".join(caps[5 * start:5 * (start + n)]) + "\n")
        (folder / f"{split}_ids.txt").write_text("\n".join(ids[5 * start:5 * (start + n):5]) + "\n")
        start += n
    return root


def tiny_registry(path: Path, recipe: Mapping[str, Any] | None = None) -> Path:
    """A registry with one method `tiny`: variant `a`, ensemble `pair` = [a, a], official files for demo."""
    demo = {"epochs": 2, "batch_size": 30, "lr": 0.01, "lr_decay_epochs": [1], "embed_size": 8, "seed": 0,
            **dict(recipe or {})}
    doc = {"methods": {"tiny": {
        "title": "Tiny test method", "adapter": "test_orchestrate_fixtures:TinyAdapter",
        "recipes": {"default": {"epochs": 1, "batch_size": 16}, "demo": demo},
        "variants": {
            "a": {"description": "the model", "options": {"img_dim": DIM},
                  "checkpoints": {"demo": {"url": "https://example.org/tiny", "files": ["a.pth", "a2.pth"],
                                           "note": "test files"}}},
            "pair": {"description": "mean of two a models", "members": ["a", "a"], "options": {"ensemble": "mean"}},
        }}}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_official(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    adapter = TinyAdapter.build("a", "demo", {"img_dim": DIM, "embed_size": 8})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(adapter.official_checkpoint(), path)
    return path


def run_args(tmp: Path, *extra: str) -> list[str]:
    """The `run` command line of a campaign in `tmp` (data, registry and results inside it)."""
    return ["run", "--methods", "tiny", "--dataset", "demo", "--data-root", str(tmp / "data"),
            "--registry", str(tmp / "registry.yaml"), "--results", str(tmp / "results"),
            "--reports", str(tmp / "reports"), "--checkpoint-dir", str(tmp / "checkpoints"), *extra]


def campaign(tmp: Path, recipe: Mapping[str, Any] | None = None,
             splits: Sequence[tuple[str, int]] = SPLITS) -> Path:
    tiny_data(tmp / "data", splits)
    tiny_registry(tmp / "registry.yaml", recipe)
    return tmp


def worker_env() -> dict[str, str]:
    """Environment for subprocesses: this folder importable, one thread each (the CI machine is small)."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env
