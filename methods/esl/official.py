"""ESL's official checkpoint container: reading it strictly and writing our models back in its layout.

Container (`train.py::save_checkpoint`): {epoch, model: [img_enc, txt_enc, sim_vec], best_rsum, opt
(argparse.Namespace), Eiters}; all three modules were DataParallel-wrapped, so every key starts with
`module.` (files without the prefix are accepted too). The variant is not stored anywhere (the official
code selects it with a source constant): we tell it from the key names, `kernel_txt_*` (ESL-H) or
`text_levels.masks_*` (ESL-A). `opt` is read here once and translated to our options dict.
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

VARIANTS = {"h": "esl-h", "a": "esl-a"}
KEY_HINT = {"h": "sim_vec keys text_levels.kernel_txt_*", "a": "sim_vec keys text_levels.masks_*"}


def read_official(adapter_cls: type[A], path: str | Path, *, variant: str | None = None,
                  dataset: str | None = None) -> A:
    """Load an official ESL-H or ESL-A checkpoint into an ESLAdapter, strictly."""
    path = Path(path)
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(f"{path}: unknown ESL variant {variant!r}; valid: {', '.join(VARIANTS)}")
    (img_state, txt_state, sim_state), opt = read_three_part(path, "ESL")
    kind = check_head(path, sim_state, "ESL", tuple(VARIANTS.values()))
    found = "h" if kind == "esl-h" else "a"
    if variant is not None and variant != found:
        raise CheckpointError(f"{path}: this is an ESL-{found.upper()} checkpoint ({KEY_HINT[found]}), "
                              f"but variant {variant!r} (ESL-{variant.upper()}) was asked")
    check_basic(path, opt)
    trained_on = checkpoint_dataset(path, opt, dataset, "ESL")
    options = encoder_options(path, opt, img_state, "ESL")
    options["kernel_size"] = int(opt.get("kernel_size", 2))
    try:
        adapter = adapter_cls.build(found, trained_on, options)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot build ESL from its opt ({exc})") from exc
    load_three_part(adapter.model, (img_state, txt_state, sim_state), path)
    return adapter


def official_opt(adapter: Adapter, epoch: int = 0) -> argparse.Namespace:
    """The official training `opt` (arguments.py fields + vocab_size) with our recipe values;
    `itrbench_*` fields say what the official fields cannot (dataset, BERT backbone)."""
    data_name = f"{adapter.dataset}_precomp"
    fields = official_opt_fields(adapter, epoch, data_name)
    fields["kernel_size"] = int(adapter.options["kernel_size"])
    return argparse.Namespace(**fields)


def write_official(adapter: Adapter, **extra: Any) -> dict[str, Any]:
    """The container the official train.py saves, for this model (keys prefixed `module.`)."""
    return write_three_part(adapter, official_opt(adapter, int(extra.get("epoch", 0))), **extra)
