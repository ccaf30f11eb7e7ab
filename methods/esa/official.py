"""ESA's official checkpoint container: reading it strictly and writing our models back in its layout.

Container (`train.py::save_checkpoint`): {epoch, model: [img_enc state, txt_enc state], best_rsum,
opt (argparse.Namespace), Eiters}. BiGRU keys carry no prefix; the BERT code wraps both encoders
in DataParallel before saving, so its keys start with `module.`. Both forms are accepted on load.
The `opt` namespace is read here once and translated to our options dict.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from harness.api import (
    Adapter,
    CheckpointError,
    add_prefix,
    dataset_of_name,
    load_container,
    load_strict,
    opt_dict,
    require_keys,
    strip_prefix,
)
from methods.common.text_bert import BERT_OPTIONAL_KEYS
from methods.common.vocab import load_scan_vocab

A = TypeVar("A", bound=Adapter)  # the paper's adapter class, passed in by its load_official

VARIANTS = ("bigru", "bert")
SCAN_DATASETS = ("coco", "f30k")


def text_variant_of(state: Mapping[str, torch.Tensor], path: Path) -> str:
    """'bert' or 'bigru' from the text encoder's keys."""
    keys = set(state)
    if any(k.startswith("bert.") for k in keys):
        return "bert"
    if "embed.weight" in keys and any(k.startswith("rnn.") for k in keys):
        return "bigru"
    raise CheckpointError(
        f"{path}: text encoder state (model[1]) has neither bert.* nor embed.weight/rnn.* keys "
        f"(found {sorted(keys)[:6]}...): not an ESA checkpoint")


def _vocab_rows() -> dict[int, str]:
    return {len(load_scan_vocab(ds, add_mask=True)): ds for ds in SCAN_DATASETS}


def _bigru_dataset(path: Path, opt: Mapping[str, Any], rows: int) -> str:
    """The SCAN vocabulary the official code would use (coco if 'coco' in data_name, else f30k),
    checked against the embedding rows (len(vocab) + 1 for <mask>)."""
    data_name = opt.get("data_name")
    vocab_ds = "coco" if data_name is not None and "coco" in str(data_name) else "f30k"
    if data_name is None:  # no opt field: the rows decide
        vocab_ds = _vocab_rows().get(rows, vocab_ds)
    expected = len(load_scan_vocab(vocab_ds, add_mask=True))
    if rows != expected:
        other = _vocab_rows().get(rows)
        hint = (f"its rows match the {other} vocabulary: a checkpoint trained on {other}" if other
                else "no SCAN vocabulary has that size: a checkpoint trained with another vocabulary")
        raise CheckpointError(
            f"{path}: txt embed.weight has {rows} rows, but opt.data_name={data_name!r} selects the "
            f"{vocab_ds} SCAN vocabulary + <mask> = {expected} words ({hint})")
    return vocab_ds


def _check_asked(path: Path, what: str, asked: str | None, found: str, why: str) -> None:
    if asked is not None and asked != found:
        raise CheckpointError(
            f"{path}: this is an ESA {found} checkpoint ({why}), but {what} {asked!r} was asked: "
            f"pass {what} {found!r} or give a {asked} checkpoint")


def read_official(adapter_cls: type[A], path: str | Path, *, variant: str | None = None,
                  dataset: str | None = None) -> A:
    """Load an official ESA checkpoint (either variant) into an ESAAdapter, strictly."""
    path = Path(path)
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(f"{path}: ESA variant {variant!r} cannot be loaded from one file; "
                              f"valid: {', '.join(VARIANTS)} (esa_star averages two such files)")
    container = load_container(path)
    require_keys(path, container, ["model", "opt"], "ESA")
    states = container["model"]
    is_list = isinstance(states, (list, tuple))
    if not is_list or len(states) != 2 or not all(isinstance(s, Mapping) for s in states):
        shape = f"a list of {len(states)} entries" if is_list else f"a {type(states).__name__}"
        raise CheckpointError(f"{path}: 'model' is {shape}; an ESA checkpoint holds 2 "
                              "([image encoder, text encoder]): this is a checkpoint of another method")
    img_state, txt_state = (strip_prefix(s) for s in states)
    opt = opt_dict(container["opt"])

    text = text_variant_of(txt_state, path)
    key_hint = "text keys bert.*" if text == "bert" else "text keys embed.*, rnn.*"
    _check_asked(path, "variant", variant, text, key_hint)
    enc_type = opt.get("precomp_enc_type", "basic")
    if enc_type != "basic":
        raise CheckpointError(f"{path}: opt.precomp_enc_type={enc_type!r}; only 'basic' (precomputed "
                              "regions) ESA models are supported")
    if int(opt.get("num_layers", 1)) != 1:
        raise CheckpointError(f"{path}: opt.num_layers={opt['num_layers']}; only the 1-layer BiGRU is "
                              "supported")

    options: dict[str, Any] = {
        "text": text,
        "embed_size": int(opt.get("embed_size", 1024)),
        "img_dim": int(opt.get("img_dim", 2048)),
        "no_imgnorm": bool(opt.get("no_imgnorm", False)),
        "no_txtnorm": bool(opt.get("no_txtnorm", False)),
    }
    if text == "bigru":
        rows = int(txt_state["embed.weight"].shape[0])
        vocab_ds = _bigru_dataset(path, opt, rows)
        found = opt.get("itrbench_dataset", vocab_ds)
        why = f"opt.data_name={opt.get('data_name')!r}, {rows} embedding rows"
        options.update(vocab=vocab_ds, word_dim=int(opt.get("word_dim", txt_state["embed.weight"].shape[1])))
    else:
        found = opt.get("itrbench_dataset") or dataset_of_name(opt.get("data_name"))
        why = f"opt.data_name={opt.get('data_name')!r}"
        if found is None:
            if dataset is not None:
                raise CheckpointError(f"{path}: opt.data_name={opt.get('data_name')!r} names no known "
                                      f"dataset, so it cannot be checked against the asked {dataset!r}")
            found = str(opt.get("data_name"))
        options.update(bert=opt.get("itrbench_bert", "bert-base-uncased"), bert_pretrained=False,
                       vocab=opt.get("itrbench_vocab", dataset_of_name(found) or "coco"))
    _check_asked(path, "dataset", dataset, found, why)

    adapter = adapter_cls.build(text, found, options)
    load_strict(adapter.model.img_enc, img_state, path=path, part="image encoder (model[0])")
    load_strict(adapter.model.txt_enc, txt_state, path=path, part="text encoder (model[1])",
                ignore=BERT_OPTIONAL_KEYS if text == "bert" else ())
    adapter.model.eval()
    return adapter


def official_opt(adapter: Adapter, epoch: int = 0) -> argparse.Namespace:
    """The official training `opt` for this model (fields of arguments.py + vocab_size), with our
    recipe values where we trained. Extra `itrbench_*` fields say what the official fields cannot."""
    o, r = adapter.options, adapter.recipe
    data_name = adapter.dataset if adapter.dataset in SCAN_DATASETS else o["vocab"]
    run = f"runs/{data_name}_butd_region_{adapter.variant}"
    warmup = int(r.get("warmup_epochs", 1))
    decay = list(r.get("lr_decay_epochs", [15]))
    fields: dict[str, Any] = dict(
        data_path=f"../../data/{data_name}", data_name=data_name, vocab_path="../../data/vocab",
        margin=float(r.get("margin", 0.2)), num_epochs=int(r.get("epochs", 25)),
        batch_size=int(r.get("batch_size", 128)), word_dim=int(o["word_dim"]),
        embed_size=int(o["embed_size"]), num_layers=1, grad_clip=float(r.get("grad_clip", 2.0)),
        learning_rate=float(r.get("lr", 5e-4)),
        lr_update=int(decay[0]) if decay else int(r.get("epochs", 25)), optim="adam", workers=10,
        log_step=200, val_step=500, logger_name=f"{run}/log", model_name=run, resume="",
        max_violation=epoch > warmup,
        img_dim=int(o["img_dim"]), no_imgnorm=bool(o["no_imgnorm"]), no_txtnorm=bool(o["no_txtnorm"]),
        vse_mean_warmup_epochs=warmup, reset_start_epoch=False, hardnum=int(r.get("hardnum", 2)),
    )
    if adapter.variant == "bert":
        del fields["num_layers"]
        fields.update(precomp_enc_type="basic", backbone_path="", backbone_source="detector",
                      backbone_warmup_epochs=5, embedding_warmup_epochs=2, backbone_lr_factor=0.01,
                      input_scale_factor=1.0, itrbench_bert=o["bert"])
    fields["vocab_size"] = int(adapter.vocab_size)
    fields["itrbench_dataset"] = adapter.dataset
    fields["itrbench_vocab"] = o["vocab"]
    return argparse.Namespace(**fields)


def write_official(adapter: Adapter, **extra: Any) -> dict[str, Any]:
    """The container the official train.py saves, for this model (BERT keys prefixed `module.`).

    Tensors share storage with the model when it is on the CPU (so a file holding both is not doubled).
    """
    def state(module: torch.nn.Module) -> OrderedDict:
        sd = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        return OrderedDict(add_prefix(sd) if adapter.variant == "bert" else sd)

    epoch = int(extra.get("epoch", 0))
    container: dict[str, Any] = {
        "epoch": epoch,
        "model": [state(adapter.model.img_enc), state(adapter.model.txt_enc)],
        "best_rsum": 0.0,
        "opt": official_opt(adapter, epoch),
        "Eiters": 0,
    }
    container.update(extra)
    return container
