"""X-Dim's official checkpoint container: reading it strictly and writing our models back in its layout.

Container (`train.py::save_checkpoint`): {epoch, model: [img_enc, txt_enc, sim_vec], best_rsum, opt
(argparse.Namespace), Eiters}; every key starts with `module.` (DataParallel; files without the prefix
are accepted too). `opt` is read here once and translated to our options dict.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

from harness.api import Adapter, CheckpointError
from methods.common.three_part import (
    check_basic,
    check_head,
    checkpoint_dataset,
    encoder_options,
    load_three_part,
    official_opt_fields,
    read_three_part,
    write_three_part,
)

A = TypeVar("A", bound=Adapter)  # the paper's adapter class, passed in by its load_official

VARIANTS = ("bert",)


def read_official(adapter_cls: type[A], path: str | Path, *, variant: str | None = None,
                  dataset: str | None = None) -> A:
    """Load an official X-Dim checkpoint into an XDimAdapter, strictly."""
    path = Path(path)
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(f"{path}: unknown X-Dim variant {variant!r}; valid: {', '.join(VARIANTS)}")
    (img_state, txt_state, sim_state), opt = read_three_part(path, "X-Dim")
    check_head(path, sim_state, "X-Dim", ("xdim",))
    check_basic(path, opt)
    trained_on = checkpoint_dataset(path, opt, dataset, "X-Dim")
    options = encoder_options(path, opt, img_state, "X-Dim")
    adapter = adapter_cls.build("bert", trained_on, options)
    load_three_part(adapter.model, (img_state, txt_state, sim_state), path)
    return adapter


def official_opt(adapter: Adapter, epoch: int = 0) -> argparse.Namespace:
    """The official training `opt` (arguments.py fields + vocab_size) with our recipe values;
    `itrbench_*` fields say what the official fields cannot (dataset, BERT backbone)."""
    return argparse.Namespace(**official_opt_fields(adapter, epoch, f"{adapter.dataset}_precomp"))


def write_official(adapter: Adapter, **extra: Any) -> dict[str, Any]:
    """The container the official train.py saves, for this model (keys prefixed `module.`)."""
    return write_three_part(adapter, official_opt(adapter, int(extra.get("epoch", 0))), **extra)
