"""What every reimplemented paper's adapter (ESA, ESL, X-Dim, VSL) repeats, kept once.

- `PaperAdapter`: the fields (model, variant, dataset, options, recipe), the recipe defaults merged under a
  training recipe, and the official container delegated to the paper's `official` module (`OfficialFormat`):
  `load_official` -> `read_official(cls, path, ...)`, `official_checkpoint` -> `write_official(self, ...)`.
- `as_regions`: region features (B, R, D) as a float32 tensor from a tensor, an array (memmaps included) or a
  sequence of (R, D) items.

A paper's package keeps only what the paper adds: its model, its official layout, its losses and recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from harness.api import Adapter

P = TypeVar("P", bound="PaperAdapter")


@dataclass(frozen=True)
class OfficialFormat:
    """A paper's official checkpoint container: its reader `read(adapter_cls, path, *, variant, dataset)` and
    its writer `write(adapter, **extra)` (the paper's `official.read_official` / `official.write_official`)."""

    read: Callable[..., Any]
    write: Callable[..., dict[str, Any]]


class PaperAdapter(Adapter):
    """Adapter base of the papers reimplemented from their official code.

    A subclass sets `method`, `scoring`, `official_format` and `default_recipe`, and implements `build`
    (which ends in `cls(model, variant, dataset, options, ...)`) and the inference and training hooks."""

    official_format: ClassVar[OfficialFormat]
    default_recipe: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, model: nn.Module, variant: str, dataset: str, options: dict[str, Any]) -> None:
        self.model = model
        self.variant = variant
        self.dataset = dataset
        self.options = options
        self.recipe: dict[str, Any] = dict(self.default_recipe)

    @classmethod
    def load_official(cls: type[P], path: str | Path, *, variant: str | None = None,
                      dataset: str | None = None) -> P:
        """The paper's official checkpoint, read strictly by its `official` module."""
        return cls.official_format.read(cls, path, variant=variant, dataset=dataset)

    def official_checkpoint(self, **extra: Any) -> dict[str, Any]:
        """This model in the official container layout, written by the paper's `official` module."""
        return self.official_format.write(self, **extra)

    def use_recipe(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        """Keep `recipe` over `default_recipe` as `self.recipe` (what configure_training and training read)."""
        self.recipe = {**self.default_recipe, **dict(recipe)}
        return self.recipe


def as_regions(images: torch.Tensor | np.ndarray | Sequence[Any],
               device: torch.device | str | None = None) -> torch.Tensor:
    """(B, R, D) float32 tensor from a tensor, an array (memmap included) or a sequence of (R, D) items."""
    if torch.is_tensor(images):
        return images.to(device=device, dtype=torch.float32)
    if isinstance(images, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
    return torch.stack([torch.as_tensor(np.asarray(x), dtype=torch.float32) for x in images]).to(device)
