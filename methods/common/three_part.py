"""The official container of ESL and X-Dim (both from the vse_infty code base): reading it strictly and
writing our models back in its layout.

Container (`train.py::save_checkpoint`): {epoch, model: [img_enc, txt_enc, sim_vec], best_rsum, opt
(argparse.Namespace), Eiters}; every key starts with `module.` (DataParallel; files without the prefix
are accepted too); the head kind is told from the `sim_vec` key names.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.api import (
    CheckpointError,
    add_prefix,
    dataset_of_name,
    load_container,
    load_strict,
    opt_dict,
    require_keys,
    strip_prefix,
)
from methods.common.pairwise import PairwiseAdapter
from methods.common.text_bert import BERT_OPTIONAL_KEYS

HEAD_NAMES = {"esl-h": "ESL-H", "esl-a": "ESL-A", "xdim": "X-Dim"}


def head_kind(sim_state: Mapping[str, Any]) -> str | None:
    """'esl-h', 'esl-a' or 'xdim' from the (prefix-stripped) sim_vec keys; None if none matches."""
    keys = set(sim_state)
    if "plus_encoder.encoders_1.text_levels.kernel_txt_1.weight" in keys:
        return "esl-h"
    if "plus_encoder.encoders_1.text_levels.masks_1.weight" in keys:
        return "esl-a"
    if {"weights.weight", "sim_map.weight", "temp_learnable.weight"} <= keys:
        return "xdim"
    return None


def read_three_part(path: Path, method: str) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """The three prefix-stripped state dicts [img_enc, txt_enc, sim_vec] and the opt dict of an official
    ESL / X-Dim container; errors name the file and what it holds instead."""
    container = load_container(path)
    require_keys(path, container, ["model", "opt"], method)
    states = container["model"]
    if not isinstance(states, (list, tuple)) or not all(isinstance(s, Mapping) for s in states):
        raise CheckpointError(f"{path}: 'model' is a {type(states).__name__}, expected a list of 3 state dicts "
                              f"[img_enc, txt_enc, sim_vec]: not an official {method} checkpoint")
    if len(states) != 3:
        hint = (" ([image encoder, text encoder], as ESA / VSE-style embedding checkpoints hold)"
                if len(states) == 2 else "")
        raise CheckpointError(f"{path}: 'model' holds {len(states)} state dicts{hint}; an official {method} "
                              "checkpoint holds 3 [img_enc, txt_enc, sim_vec]: this is a checkpoint of another method")
    return [strip_prefix(s) for s in states], opt_dict(container["opt"])


def check_head(path: Path, sim_state: Mapping[str, Any], method: str, allowed: Sequence[str]) -> str:
    """The head kind of the file; an error if it is not one of `allowed`."""
    kind = head_kind(sim_state)
    if kind in allowed:
        return kind
    found = (f"an {HEAD_NAMES[kind]} checkpoint" if kind else
             f"an unknown similarity head (keys {sorted(sim_state)[:4]}...)")
    raise CheckpointError(f"{path}: sim_vec (model[2]) is {found}, not {method}")


def checkpoint_dataset(path: Path, opt: Mapping[str, Any], asked: str | None, method: str) -> str:
    """The dataset the checkpoint was trained on (opt.itrbench_dataset or opt.data_name), checked
    against the asked one."""
    found = opt.get("itrbench_dataset") or dataset_of_name(opt.get("data_name"))
    if found is None:
        if asked is not None:
            raise CheckpointError(f"{path}: opt.data_name={opt.get('data_name')!r} names no known dataset, so it "
                                  f"cannot be checked against the asked dataset {asked!r}")
        return str(opt.get("data_name"))
    if asked is not None and asked != found:
        raise CheckpointError(f"{path}: this {method} checkpoint was trained on {found} "
                              f"(opt.data_name={opt.get('data_name')!r}), but dataset {asked!r} was asked")
    return found


def check_basic(path: Path, opt: Mapping[str, Any]) -> None:
    enc_type = opt.get("precomp_enc_type", "basic")
    if enc_type != "basic":
        raise CheckpointError(f"{path}: opt.precomp_enc_type={enc_type!r}; only 'basic' (precomputed BUTD "
                              "regions) models are supported")


def official_opt_fields(adapter: PairwiseAdapter, epoch: int, data_name: str) -> dict[str, Any]:
    """The arguments.py fields shared by ESL and X-Dim (+ vocab_size), with our recipe values."""
    o, r = adapter.options, adapter.recipe
    warmup = int(r.get("warmup_epochs", 1))
    decay = list(r.get("lr_decay_epochs", [15]))
    run = f"runs/{data_name}_{adapter.method}_{adapter.variant}"
    return dict(
        data_path=f"../../data/{data_name.replace('_precomp', '')}", data_name=data_name, vocab_path="./vocab/",
        margin=float(r.get("margin", 0.2)), num_epochs=int(r.get("epochs", 30)),
        batch_size=int(r.get("batch_size", 128)), word_dim=300, embed_size=int(o["embed_size"]),
        grad_clip=float(r.get("grad_clip", 2.0)), learning_rate=float(r.get("lr", 5e-4)),
        lr_update=int(decay[0]) if decay else int(r.get("epochs", 30)), optim="adam", workers=10, log_step=200,
        val_step=500, logger_name=f"{run}/log", model_name=f"{run}/checkpoint", resume="",
        max_violation=epoch > warmup, img_dim=int(o["img_dim"]), no_imgnorm=bool(o["no_imgnorm"]),
        no_txtnorm=bool(o["no_txtnorm"]), precomp_enc_type="basic", backbone_path="", backbone_source="detector",
        vse_mean_warmup_epochs=warmup, reset_start_epoch=False, backbone_warmup_epochs=5,
        embedding_warmup_epochs=2, backbone_lr_factor=0.01, input_scale_factor=1.0,
        vocab_size=int(adapter.model.txt_enc.bert.config.vocab_size),
        itrbench_dataset=adapter.dataset, itrbench_bert=o["bert"],
    )


def write_three_part(adapter: PairwiseAdapter, opt: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The container the official train.py saves: three state dicts, keys prefixed `module.`."""
    def state(module: nn.Module) -> OrderedDict:
        return OrderedDict(add_prefix({k: v.detach().cpu().clone() for k, v in module.state_dict().items()}))

    model = adapter.model
    container: dict[str, Any] = {
        "epoch": int(extra.get("epoch", 0)),
        "model": [state(model.img_enc), state(model.txt_enc), state(model.sim_vec)],
        "best_rsum": 0.0,
        "opt": opt,
        "Eiters": 0,
    }
    container.update(extra)
    return container


def encoder_options(path: Path, opt: Mapping[str, Any], img_state: Mapping[str, torch.Tensor],
                    method: str) -> dict[str, Any]:
    """The encoder options both methods read from `opt` (sizes default to the weights' shapes)."""
    if "fc.weight" not in img_state:
        raise CheckpointError(f"{path}: image encoder (model[0]) has no fc.weight: not an {method} checkpoint")
    fc = img_state["fc.weight"]
    return {
        "embed_size": int(opt.get("embed_size", fc.shape[0])),
        "img_dim": int(opt.get("img_dim", fc.shape[1])),
        "no_imgnorm": bool(opt.get("no_imgnorm", False)),
        "no_txtnorm": bool(opt.get("no_txtnorm", False)),
        "bert": opt.get("itrbench_bert", "bert-base-uncased"),
        "bert_pretrained": False,
    }


def load_three_part(model: nn.Module, states: Sequence[Mapping[str, torch.Tensor]], path: Path) -> None:
    """Load [img_enc, txt_enc, sim_vec] strictly into `model` (BERT's position-id buffers may be absent)."""
    img_state, txt_state, sim_state = states
    load_strict(model.img_enc, img_state, path=path, part="image encoder (model[0])")
    load_strict(model.txt_enc, txt_state, path=path, part="text encoder (model[1])", ignore=BERT_OPTIONAL_KEYS)
    load_strict(model.sim_vec, sim_state, path=path, part="sim_vec (model[2])")
    model.eval()
