"""A stub method for real-shape rehearsals: fixed random embeddings, no training, seconds per run.

Images are SCAN-precomp region arrays; an image's vector is a fixed random projection of its mean region, a
caption's is a fixed random vector seeded by its text, plus a share of its image's vector when the caption
names the image ("img<k> ..."), so recalls are far from chance and from perfect. It reads a per-split
`<split>_owner.npy` (caption -> image) when present: uneven captions per image, as CUSA's COCO json has.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.api import Adapter, CheckpointError, load_container

DIM = 16


class _Model(torch.nn.Module):
    def __init__(self, in_dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(in_dim, DIM, generator=g), requires_grad=False)


class StubAdapter(Adapter):
    method = "stub"
    scoring = "embedding"

    def __init__(self, variant: str, dataset: str, in_dim: int) -> None:
        self.variant, self.dataset, self.options = variant, dataset, {"img_dim": in_dim}
        self.model = _Model(in_dim)

    @classmethod
    def build(cls, variant: str, dataset: str, options: Mapping[str, Any] | None = None) -> StubAdapter:
        return cls(variant, dataset, int((options or {}).get("img_dim", 8)))

    @classmethod
    def load_official(cls, path: str | Path, *, variant: str | None = None,
                      dataset: str | None = None) -> StubAdapter:
        box = load_container(path)
        if "img_dim" not in box:
            raise CheckpointError(f"{path}: not a stub checkpoint (no img_dim)")
        return cls(variant or "a", dataset or "coco", int(box["img_dim"]))

    @staticmethod
    def _folder(data_root: str | Path, split: str, dataset: str | None) -> Path:
        root = Path(data_root)
        for d in (root / (dataset or "") / "precomp", root / (dataset or ""), root):
            if (d / f"{split}_caps.txt").is_file():
                return d
        return root

    def image_of_caption(self, data_root: str | Path, split: str, dataset: str | None = None) -> np.ndarray | None:
        f = self._folder(data_root, split, dataset) / f"{split}_owner.npy"
        return np.load(f) if f.is_file() else None

    def eval_data(self, data_root: str | Path, split: str, dataset: str | None = None) -> tuple[Any, list[str]]:
        d = self._folder(data_root, split, dataset)
        if not (d / f"{split}_owner.npy").is_file():
            return super().eval_data(data_root, split, dataset)
        return np.load(d / f"{split}_ims.npy", mmap_mode="r"), (d / f"{split}_caps.txt").read_text().splitlines()

    def tokenize(self, captions: Sequence[str]) -> Any:
        return list(captions)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(images.float().mean(1) @ self.model.proj, dim=-1)

    def encode_texts(self, texts: Any) -> torch.Tensor:
        rows = []
        for text in texts:
            rng = np.random.default_rng(zlib.crc32(text.encode()))
            rows.append(rng.standard_normal(DIM))
        return torch.nn.functional.normalize(torch.tensor(np.stack(rows), dtype=torch.float32), dim=-1)

    def score(self, image_block: torch.Tensor, text_block: torch.Tensor) -> torch.Tensor:
        return image_block @ text_block.T


def write_split(folder: Path, split: str, n_images: int, owner: np.ndarray | None = None, dim: int = 8,
                seed: int = 0) -> Path:
    """A precomp split of `n_images` (1 region of `dim`) with 5 captions each, or uneven ones from `owner`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(folder / f"{split}_ims.npy", rng.standard_normal((n_images, 1, dim)).astype(np.float32))
    owner = np.arange(5 * n_images) // 5 if owner is None else owner
    (folder / f"{split}_caps.txt").write_text("\n".join(f"caption {j} of image {i}" for j, i in enumerate(owner))
                                               + "\n")
    if len(owner) != 5 * n_images:
        np.save(folder / f"{split}_owner.npy", owner)
    return folder


def write_checkpoint(path: Path, dim: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"img_dim": dim}, path)
    return path
