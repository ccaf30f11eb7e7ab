"""VSL's (= SGRAF's) official checkpoint container: strict, safe reading and writing it back.

Container (`train.py::save_checkpoint`): {epoch, model: [img_enc, txt_enc, sim_enc state dicts],
best_rsum, opt (argparse.Namespace), Eiters}. The module (SGR or SAF) is both in `opt.module_name` and
in the sim_enc keys (SGR_module.* / SAF_module.*); the dataset is `opt.data_name` (coco_precomp /
f30k_precomp), which selects the SCAN vocabulary, so the embedding rows must match it. The `opt`
namespace is read here once and translated to our options dict.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from harness.api import (
    Adapter,
    CheckpointError,
    dataset_of_name,
    load_container,
    load_strict,
    opt_dict,
    require_keys,
    strip_prefix,
)
from methods.common.vocab import load_scan_vocab

A = TypeVar("A", bound=Adapter)  # the paper's adapter class, passed in by its load_official

MODULES = {"sgr": "SGR", "saf": "SAF"}
SCAN_DATASETS = ("coco", "f30k")
# opts.py defaults of the official code (VSL HEAD), with the README's batch size and learning rate
OPT_DEFAULTS: dict[str, Any] = dict(
    data_path="./data/", vocab_path="./vocab/", model_name="./runs/model/", logger_name="./runs/log/",
    batch_size=128, num_epochs=25, lr_update=10, learning_rate=3e-4, workers=0, log_step=100, val_step=1000,
    grad_clip=2.0, margin=0.2, max_violation=True, img_dim=2048, word_dim=300, embed_size=1024, sim_dim=256,
    num_layers=1, bi_gru=True, no_imgnorm=False, no_txtnorm=False, module_name="SGR", sgr_step=3,
)


def module_of_keys(sim_state: Mapping[str, torch.Tensor], path: Path) -> str:
    keys = set(sim_state)
    has_sgr = any(k.startswith("SGR_module.") for k in keys)
    has_saf = any(k.startswith("SAF_module.") for k in keys)
    if has_sgr == has_saf:
        raise CheckpointError(
            f"{path}: sim_enc state (model[2]) has {'both' if has_sgr else 'neither of'} SGR_module.* and "
            f"SAF_module.* keys: not an SGRAF/VSL checkpoint of one module")
    return "SGR" if has_sgr else "SAF"


def _vocab_dataset(path: Path, opt: Mapping[str, Any], rows: int) -> str:
    """The SCAN vocabulary the official evaluation would load (./vocab/<data_name>_vocab.json),
    checked against the embedding rows."""
    sizes = {len(load_scan_vocab(ds)): ds for ds in SCAN_DATASETS}
    by_rows = sizes.get(rows)
    vocab_ds = opt.get("itrbench_vocab") or dataset_of_name(opt.get("data_name")) or by_rows
    if vocab_ds is None:
        raise CheckpointError(f"{path}: txt_enc embed.weight has {rows} rows and opt.data_name="
                              f"{opt.get('data_name')!r}: no SCAN vocabulary (coco 11353, f30k 8481 words) fits")
    expected = len(load_scan_vocab(vocab_ds))
    if rows != expected:
        hint = (f"its rows match the {by_rows} vocabulary: a checkpoint trained on {by_rows}" if by_rows
                else "no SCAN vocabulary has that size (an extra <mask> row? then it is not a VSL file)")
        raise CheckpointError(f"{path}: txt_enc embed.weight has {rows} rows, but opt.data_name="
                              f"{opt.get('data_name')!r} selects the {vocab_ds} SCAN vocabulary of {expected} "
                              f"words ({hint})")
    return vocab_ds


def read_official(adapter_cls: type[A], path: str | Path, *, variant: str | None = None,
                  dataset: str | None = None) -> A:
    """Load an official SGR+VSL or SAF+VSL checkpoint (or an SGRAF one) into a VSLAdapter, strictly."""
    path = Path(path)
    if variant is not None and variant not in MODULES:
        raise CheckpointError(f"{path}: VSL variant {variant!r} is not one checkpoint; valid: sgr, saf "
                              "(sgraf averages the matrices of an sgr and an saf checkpoint)")
    container = load_container(path)
    require_keys(path, container, ["model", "opt"], "SGRAF/VSL")
    states = container["model"]
    is_list = isinstance(states, (list, tuple))
    if not is_list or len(states) != 3 or not all(isinstance(s, Mapping) for s in states):
        shape = f"a list of {len(states)} entries" if is_list else f"a {type(states).__name__}"
        raise CheckpointError(f"{path}: 'model' is {shape}; an SGRAF/VSL checkpoint holds 3 state dicts "
                              "([img_enc, txt_enc, sim_enc]): this is a checkpoint of another method")
    img_state, txt_state, sim_state = (strip_prefix(s) for s in states)
    opt = opt_dict(container["opt"])

    module = module_of_keys(sim_state, path)
    opt_module = opt.get("module_name")
    if opt_module is not None and str(opt_module) != module:
        raise CheckpointError(f"{path}: opt.module_name={opt_module!r} but the sim_enc keys are {module}_module.*")
    found_variant = module.lower()
    if variant is not None and variant != found_variant:
        raise CheckpointError(f"{path}: this is an {module} checkpoint (sim_enc keys {module}_module.*), "
                              f"but variant {variant!r} was asked")
    if "embed.weight" not in txt_state:
        raise CheckpointError(f"{path}: txt_enc state (model[1]) has no embed.weight "
                              f"(keys {sorted(txt_state)[:5]}...): not an SGRAF/VSL checkpoint")
    rows, word_dim = (int(n) for n in txt_state["embed.weight"].shape)
    vocab_ds = _vocab_dataset(path, opt, rows)
    found_dataset = str(opt.get("itrbench_dataset") or vocab_ds)
    if dataset is not None and dataset != found_dataset:
        raise CheckpointError(f"{path}: this checkpoint was trained on {found_dataset} (opt.data_name="
                              f"{opt.get('data_name')!r}, {rows} vocabulary rows), but dataset {dataset!r} was asked")

    options = options_from_opt(opt, word_dim=word_dim)
    options["vocab"] = vocab_ds
    bn = sim_state.get("v_global_w.embedding_local.1.weight")
    if bn is not None:  # VisualSA's BatchNorm has one channel per region slot (36 in official files)
        options["num_regions"] = int(bn.shape[0])
    adapter = adapter_cls.build(found_variant, found_dataset, options)
    load_strict(adapter.model.img_enc, img_state, path=path, part="img_enc (model[0])")
    load_strict(adapter.model.txt_enc, txt_state, path=path, part="txt_enc (model[1])")
    load_strict(adapter.model.sim_enc, sim_state, path=path, part="sim_enc (model[2])")
    adapter.model.eval()
    adapter.checkpoint_info = {k: container[k] for k in ("epoch", "best_rsum", "Eiters") if k in container}
    adapter.recipe.update(recipe_from_opt(opt))
    return adapter


def options_from_opt(opt: Mapping[str, Any], word_dim: int | None = None) -> dict[str, Any]:
    """Model options from an official opt (defaults where a field is absent)."""
    get = lambda key: opt.get(key, OPT_DEFAULTS[key])  # noqa: E731
    return {
        "img_dim": int(get("img_dim")), "word_dim": int(word_dim if word_dim is not None else get("word_dim")),
        "embed_size": int(get("embed_size")), "sim_dim": int(get("sim_dim")),
        "num_layers": int(get("num_layers")), "bi_gru": bool(get("bi_gru")), "sgr_step": int(get("sgr_step")),
        "no_imgnorm": bool(get("no_imgnorm")), "no_txtnorm": bool(get("no_txtnorm")),
    }


def recipe_from_opt(opt: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings recorded in an official opt, as recipe keys."""
    keys = {"batch_size": "batch_size", "num_epochs": "epochs", "lr_update": "lr_update",
            "learning_rate": "lr", "grad_clip": "grad_clip", "margin": "margin", "max_violation": "max_violation"}
    return {ours: opt[theirs] for theirs, ours in keys.items() if theirs in opt}


def write_official(adapter: Adapter, **extra: Any) -> dict[str, Any]:
    """The adapter's model in the official container layout (extra: epoch, best_rsum, Eiters, opt fields)."""
    o, r = adapter.options, adapter.recipe
    opt = dict(OPT_DEFAULTS)
    opt.update(
        data_name=f"{o['vocab']}_precomp", batch_size=int(r.get("batch_size", 128)),
        num_epochs=int(r.get("epochs", OPT_DEFAULTS["num_epochs"])),
        lr_update=int(r.get("lr_update", OPT_DEFAULTS["lr_update"])),
        learning_rate=float(r.get("lr", OPT_DEFAULTS["learning_rate"])),
        grad_clip=float(r.get("grad_clip", 2.0)), margin=float(r.get("margin", 0.2)),
        max_violation=bool(r.get("max_violation", True)),
        img_dim=int(o["img_dim"]), word_dim=int(o["word_dim"]), embed_size=int(o["embed_size"]),
        sim_dim=int(o["sim_dim"]), num_layers=int(o["num_layers"]), bi_gru=bool(o["bi_gru"]),
        no_imgnorm=bool(o["no_imgnorm"]), no_txtnorm=bool(o["no_txtnorm"]),
        module_name=MODULES[adapter.variant], sgr_step=int(o["sgr_step"]), vocab_size=len(adapter.vocab),
    )
    if adapter.dataset != o["vocab"]:
        opt["itrbench_dataset"] = adapter.dataset
        opt["itrbench_vocab"] = o["vocab"]
    container: dict[str, Any] = {"epoch": 0, "best_rsum": 0.0, "Eiters": 0}
    for key in ("epoch", "best_rsum", "Eiters"):
        if key in extra:
            container[key] = extra.pop(key)
    opt.update(extra.pop("opt", {}))
    container.update(extra)
    model = adapter.model
    container["model"] = [model.img_enc.state_dict(), model.txt_enc.state_dict(), model.sim_enc.state_dict()]
    container["opt"] = argparse.Namespace(**opt)
    return container
