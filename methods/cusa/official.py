"""The official CUSA checkpoint container and its yaml config, translated to ours and back.

Container (`retrieval.py`): `{'model': state_dict, 'config': yaml dict, 'epoch', 'best', 'best_epoch'}`,
no `opt` Namespace. The CLIP geometry is rebuilt from the state-dict shapes (as OpenAI's
`build_model` does); the temperatures and losses from `config['loss_config']`. The official model
would download the OpenAI weights before overwriting them; we never do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from harness.api import CheckpointError
from methods.cusa.config import VARIANT_CLIP_NAMES, LossConfig, Temperature

CLIP_PREFIX = "clip_model."


def variant_of_clip_name(name: str) -> str | None:
    """Our variant for an official `clip_model` name ('ViT-B/32' -> 'vitb32'), None if not released."""
    for variant, clip_name in VARIANT_CLIP_NAMES.items():
        if clip_name == name:
            return variant
    return None


def dataset_of_config(config: Mapping[str, Any]) -> str | None:
    """'coco' or 'f30k' from the config's save path (configs/<backbone>/<coco|flickr>/...), if it says."""
    text = f"{config.get('save_path', '')} {config.get('data_path', '')}".lower()
    if re.search(r"(^|[/_\s])(flickr|f30k)", text):
        return "f30k"
    if re.search(r"(^|[/_\s])coco", text):
        return "coco"
    return None


def clip_config_from_state(state: Mapping[str, torch.Tensor], path: str | Path) -> dict[str, Any]:
    """CLIP geometry from the state-dict shapes, following OpenAI's `build_model` (ViT only)."""
    def get(key: str) -> torch.Tensor:
        full = CLIP_PREFIX + key
        if full not in state:
            raise CheckpointError(f"{path}: model lacks '{full}': not a CUSA ViT CLIP checkpoint")
        return state[full]

    conv = get("visual.conv1.weight")
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = round((int(get("visual.positional_embedding").shape[0]) - 1) ** 0.5)
    vision_layers = len([k for k in state if k.startswith(CLIP_PREFIX + "visual.")
                         and k.endswith(".attn.in_proj_weight")])
    text_width = int(get("ln_final.weight").shape[0])
    text_layers = len({k.split(".")[3] for k in state if k.startswith(CLIP_PREFIX + "transformer.resblocks.")})
    for name, w in (("vision", width), ("text", text_width)):
        if w % 64:
            raise CheckpointError(f"{path}: CLIP {name} width {w} is not a multiple of 64")
    return {
        "embed_dim": int(get("text_projection").shape[1]),
        "vision_cfg": {"image_size": patch * grid, "layers": vision_layers, "width": width, "patch_size": patch},
        "text_cfg": {"context_length": int(get("positional_embedding").shape[0]),
                     "vocab_size": int(get("token_embedding.weight").shape[0]),
                     "width": text_width, "heads": text_width // 64, "layers": text_layers},
    }


def _avg(a: Any, b: Any) -> float:
    return (float(a) + float(b)) / 2.0


def loss_config_from_official(loss_config: Mapping[str, Any], path: str | Path = "<config>") -> LossConfig:
    """Translate the official `loss_config` (all its tau-sharing flags) into a LossConfig.

    Temperatures get the names, initial values, clamp ranges and frozen flags `unire` gives them, in
    the order it creates them.
    """
    try:
        c, x, u = loss_config["contrastive"], loss_config["cross_softlabel"], loss_config["uni_softlabel"]
        itc, csa, usa = bool(c["is_on"]), bool(x["is_on"]), bool(u["is_on"])
        temps: list[Temperature] = []
        roles: dict[str, str] = {}

        def add(name: str, init: Any, low: Any, high: Any, frozen: Any, *role_names: str) -> None:
            temps.append(Temperature(name, float(init), float(low), float(high), not bool(frozen)))
            roles.update({r: name for r in role_names})

        if itc:
            add("tau", c["tau"], c["tau_min"], c["tau_max"], c["is_block_tau"], "itc")
        if csa:
            each = x["cross_softlabel_mode"] == "each"
            if each and not x["use_same_tau"]:
                add("cross_tau_image", x["image_tau"], x["image_tau_min"], x["image_tau_max"], x["is_block_tau"],
                    "csa_i2t")
                add("cross_tau_text", x["text_tau"], x["text_tau_min"], x["text_tau_max"], x["is_block_tau"],
                    "csa_t2i")
            else:
                add("cross_tau", _avg(x["image_tau"], x["text_tau"]), _avg(x["image_tau_min"], x["text_tau_min"]),
                    _avg(x["image_tau_max"], x["text_tau_max"]), x["is_block_tau"], "csa_i2t", "csa_t2i")
            s = "the_softlabel_"
            if each and not x["use_same_softlabel_tau"]:
                add("cross_the_softlabel_tau_image", x[s + "image_tau"], x[s + "image_tau_min"],
                    x[s + "image_tau_max"], x["is_block_softlabel_tau"], "csa_teacher_image")
                add("cross_the_softlabel_tau_text", x[s + "text_tau"], x[s + "text_tau_min"],
                    x[s + "text_tau_max"], x["is_block_softlabel_tau"], "csa_teacher_text")
            else:
                add("cross_the_softlabel_tau", _avg(x[s + "image_tau"], x[s + "text_tau"]),
                    _avg(x[s + "image_tau_min"], x[s + "text_tau_min"]),
                    _avg(x[s + "image_tau_max"], x[s + "text_tau_max"]), x["is_block_softlabel_tau"],
                    "csa_teacher_image", "csa_teacher_text")
        if usa:
            shared = [("use_cross_softlabel_same_tau", ("csa_i2t", "csa_t2i")),
                      ("use_cross_softlabel_same_softlabel_tau", ("csa_teacher_image", "csa_teacher_text"))]
            for flag, _ in shared:
                if u[flag] and not csa:
                    raise ValueError(f"uni_softlabel.{flag} is True but cross_softlabel is off "
                                     "(the official model cannot be built either)")
            if u["use_cross_softlabel_same_tau"]:
                roles["usa_image"], roles["usa_text"] = roles["csa_i2t"], roles["csa_t2i"]
            elif u["use_same_tau"]:
                add("uni_tau", _avg(u["image_tau"], u["text_tau"]), _avg(u["image_tau_min"], u["text_tau_min"]),
                    _avg(u["image_tau_max"], u["text_tau_max"]), u["is_block_tau"], "usa_image", "usa_text")
            else:
                add("uni_tau_image", u["image_tau"], u["image_tau_min"], u["image_tau_max"], u["is_block_tau"],
                    "usa_image")
                add("uni_tau_text", u["text_tau"], u["text_tau_min"], u["text_tau_max"], u["is_block_tau"],
                    "usa_text")
            s = "the_softlabel_"
            if u["use_cross_softlabel_same_softlabel_tau"]:
                roles["usa_teacher_image"] = roles["csa_teacher_image"]
                roles["usa_teacher_text"] = roles["csa_teacher_text"]
            elif u["use_same_softlabel_tau"]:
                add("uni_the_softlabel_tau", _avg(u[s + "image_tau"], u[s + "text_tau"]),
                    _avg(u[s + "image_tau_min"], u[s + "text_tau_min"]),
                    _avg(u[s + "image_tau_max"], u[s + "text_tau_max"]), u["is_block_softlabel_tau"],
                    "usa_teacher_image", "usa_teacher_text")
            else:
                add("uni_the_softlabel_tau_image", u[s + "image_tau"], u[s + "image_tau_min"],
                    u[s + "image_tau_max"], u["is_block_softlabel_tau"], "usa_teacher_image")
                add("uni_the_softlabel_tau_text", u[s + "text_tau"], u[s + "text_tau_min"],
                    u[s + "text_tau_max"], u["is_block_softlabel_tau"], "usa_teacher_text")
        return LossConfig(
            itc=itc, csa=csa, usa=usa, temperatures=tuple(temps), roles=roles,
            itc_weight=float(c.get("rate", 1.0)), csa_weight=float(x.get("rate", 0.1)),
            usa_weight=float(u.get("rate", 0.5)), itc_reduction=c.get("contrastive_loss_mode", "mean"),
            csa_loss=x.get("use_loss", "kl"), csa_reduction=x.get("contrastive_loss_mode", "mean"),
            usa_loss=u.get("use_loss", "kl"), usa_reduction=u.get("contrastive_loss_mode", "mean"),
            csa_teacher=x.get("cross_softlabel_mode", "each") if csa else "each")
    except KeyError as exc:
        raise CheckpointError(f"{path}: config.loss_config lacks {exc} (not a CUSA config)") from exc
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unsupported config.loss_config: {exc}") from exc


def loss_config_to_official(cfg: LossConfig) -> dict[str, Any]:
    """The official `loss_config` for a LossConfig of the released layout (see `standard_loss_config`)."""
    by_name = {t.name: t for t in cfg.temperatures}
    expected = set()
    if cfg.itc:
        expected.add("tau")
    if cfg.csa:
        expected |= {"cross_tau", "cross_the_softlabel_tau"}
    if cfg.usa:
        expected |= {"uni_tau_image", "uni_tau_text"}
        if not cfg.csa:
            expected.add("uni_the_softlabel_tau")
    if set(by_name) != expected:
        raise ValueError(f"temperatures {sorted(by_name)} are not the released layout {sorted(expected)}")

    def temp(name: str, default: Temperature) -> Temperature:
        return by_name.get(name, default)

    tau = temp("tau", Temperature("tau", 0.05, 0.01, 0.10))
    cross = temp("cross_tau", Temperature("cross_tau", 0.45, 0.10, 0.99))
    soft = by_name.get("cross_the_softlabel_tau") or by_name.get("uni_the_softlabel_tau") or \
        Temperature("soft", 1.0, 0.10, 1.00, False)
    uni_i = temp("uni_tau_image", Temperature("uni_tau_image", 0.45, 0.10, 1.00))
    uni_t = temp("uni_tau_text", Temperature("uni_tau_text", 0.45, 0.10, 1.00))
    if uni_i.learnable != uni_t.learnable:
        raise ValueError("uni_tau_image and uni_tau_text must be both learnable or both frozen")

    def softlabel_fields(t: Temperature) -> dict[str, Any]:
        return {"the_softlabel_image_tau": t.init, "the_softlabel_image_tau_min": t.low,
                "the_softlabel_image_tau_max": t.high, "the_softlabel_text_tau": t.init,
                "the_softlabel_text_tau_min": t.low, "the_softlabel_text_tau_max": t.high}

    return {
        "contrastive": {"is_on": cfg.itc, "is_block_tau": not tau.learnable, "tau": tau.init, "tau_min": tau.low,
                        "tau_max": tau.high, "rate": cfg.itc_weight, "contrastive_loss_mode": cfg.itc_reduction},
        "cross_softlabel": {
            "is_on": cfg.csa, "use_same_tau": True, "is_block_tau": not cross.learnable,
            "image_tau": cross.init, "image_tau_min": cross.low, "image_tau_max": cross.high,
            "text_tau": cross.init, "text_tau_min": cross.low, "text_tau_max": cross.high,
            "rate": cfg.csa_weight, "use_loss": cfg.csa_loss, "contrastive_loss_mode": cfg.csa_reduction,
            "cross_softlabel_mode": cfg.csa_teacher, "use_same_softlabel_tau": True,
            "is_block_softlabel_tau": not soft.learnable, **softlabel_fields(soft)},
        "uni_softlabel": {
            "is_on": cfg.usa, "use_cross_softlabel_same_tau": False, "use_same_tau": False,
            "is_block_tau": not uni_i.learnable, "image_tau": uni_i.init, "image_tau_min": uni_i.low,
            "image_tau_max": uni_i.high, "text_tau": uni_t.init, "text_tau_min": uni_t.low,
            "text_tau_max": uni_t.high, "rate": cfg.usa_weight, "use_loss": cfg.usa_loss,
            "contrastive_loss_mode": cfg.usa_reduction,
            "use_cross_softlabel_same_softlabel_tau": cfg.csa, "use_same_softlabel_tau": True,
            "is_block_softlabel_tau": not soft.learnable, **softlabel_fields(soft)},
    }


def official_config(clip_name: str, cfg: LossConfig, recipe: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A config dict in the official yaml schema (what `retrieval.py` stores in its checkpoints)."""
    r = dict(recipe or {})
    batch = int(r.get("batch_size", 128))
    return {
        "save_path": str(r.get("save_path", "")), "dataset_name": "cross_coco",
        "data_path": str(r.get("data_path", "")),
        "batch_size_train": batch, "batch_size_test": int(r.get("batch_size_test", batch)),
        "batch_size_testall": int(r.get("batch_size_test", batch)), "clip_model": clip_name,
        "is_all_gather": False, "loss_config": loss_config_to_official(cfg),
        "optimizer": {"opt": "adamW", "lr": float(r.get("lr", 1e-5)),
                      "weight_decay": float(r.get("weight_decay", 1e-4))},
        "schedular": {"sched": "cosine", "epochs": int(r.get("epochs", 30)), "min_lr": float(r.get("min_lr", 1e-6)),
                      "decay_rate": 1, "warmup_lr": float(r.get("lr", 1e-5)),
                      "warmup_epochs": int(r.get("warmup_epochs", 0)), "cooldown_epochs": 0},
    }
