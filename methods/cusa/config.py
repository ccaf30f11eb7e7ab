"""CUSA's model configuration as data: CLIP geometry, objective, temperatures and loss weights.

The official code keeps everything in one yaml (`loss_config` with many sharing flags). Here the
same information is split into a CLIP geometry dict (open_clip's schema) and a `LossConfig`: which
of the three losses are on, their weights, and a list of learnable temperatures with the role each
one plays. `official.py` translates the official yaml into these; `standard_loss_config` builds the
configuration every released config uses from a few flat recipe keys.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import open_clip

from methods.common.clip import TINY_CLIP as TINY_CLIP  # re-exported: CUSA's tests and demo geometry
from methods.common.clip import validate_clip_config

# Official `clip_model` names of the two released backbones, our variant names, open_clip configs.
VARIANT_CLIP_NAMES = {"vitb32": "ViT-B/32", "vitl14_336": "ViT-L/14@336px"}
VARIANT_OPEN_CLIP = {"vitb32": "ViT-B-32", "vitl14_336": "ViT-L-14-336"}

OBJECTIVES = {
    # name: (itc, csa, usa)
    "cusa": (True, True, True),
    "only_contrastive": (True, False, False),
    "csa": (True, True, False),
    "usa": (True, False, True),
}


def clip_config(variant: str, override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """open_clip geometry of `variant` (or `override`, e.g. TINY_CLIP), checked for OpenAI's head rule."""
    if override is not None:
        cfg = copy.deepcopy(dict(override))
    elif variant in VARIANT_OPEN_CLIP:
        cfg = open_clip.get_model_config(VARIANT_OPEN_CLIP[variant])
        if cfg is None:  # pragma: no cover - shipped with open_clip_torch
            raise RuntimeError(f"open_clip_torch lacks the {VARIANT_OPEN_CLIP[variant]} model config")
        cfg = copy.deepcopy(cfg)
    else:
        raise ValueError(f"unknown CUSA variant '{variant}'; valid: {', '.join(VARIANT_OPEN_CLIP)} "
                         "(or pass options clip_config={...})")
    validate_clip_config(cfg)
    return cfg


@dataclass(frozen=True)
class Temperature:
    """One learnable (or frozen) temperature: its state-dict name, initial value and clamp range."""

    name: str
    init: float
    low: float
    high: float
    learnable: bool = True


# The roles a temperature can play in the losses.
ROLES = ("itc", "csa_i2t", "csa_t2i", "csa_teacher_image", "csa_teacher_text",
         "usa_image", "usa_text", "usa_teacher_image", "usa_teacher_text")


@dataclass(frozen=True)
class LossConfig:
    """Which losses are on, their weights and reductions, and the temperatures (in state-dict order)."""

    itc: bool
    csa: bool
    usa: bool
    temperatures: tuple[Temperature, ...]
    roles: Mapping[str, str]  # role -> temperature name
    itc_weight: float = 1.0
    csa_weight: float = 0.1
    usa_weight: float = 0.5
    itc_reduction: str = "mean"  # official `contrastive_loss_mode`: mean divides the soft CE by the batch size
    csa_loss: str = "kl"  # kl | contrastive (soft cross-entropy)
    csa_reduction: str = "mean"
    usa_loss: str = "kl"
    usa_reduction: str = "mean"
    csa_teacher: str = "each"  # each | add | dot: how the two teacher similarities form the CSA target
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [t.name for t in self.temperatures]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate temperature names {names}")
        needed = (["itc"] if self.itc else []) + (
            ["csa_i2t", "csa_t2i", "csa_teacher_image", "csa_teacher_text"] if self.csa else []) + (
            ["usa_image", "usa_text", "usa_teacher_image", "usa_teacher_text"] if self.usa else [])
        for role in needed:
            if self.roles.get(role) not in names:
                raise ValueError(f"loss role '{role}' has no temperature (roles {dict(self.roles)}, names {names})")
        for name, value in (("itc_reduction", self.itc_reduction), ("csa_reduction", self.csa_reduction),
                            ("usa_reduction", self.usa_reduction)):
            if value not in ("mean", "sum"):
                raise ValueError(f"{name} must be 'mean' or 'sum', got '{value}'")
        for name, value in (("csa_loss", self.csa_loss), ("usa_loss", self.usa_loss)):
            if value not in ("kl", "contrastive"):
                raise ValueError(f"{name} must be 'kl' or 'contrastive', got '{value}'")
        if self.csa_teacher not in ("each", "add", "dot"):
            raise ValueError(f"csa_teacher must be each, add or dot, got '{self.csa_teacher}'")

    @property
    def objective(self) -> str:
        flags = (self.itc, self.csa, self.usa)
        for name, value in OBJECTIVES.items():
            if value == flags:
                return name
        return "custom"

    @property
    def cross_heads(self) -> bool:
        return self.itc or self.csa

    @property
    def uni_heads(self) -> bool:
        return self.usa


# Flat recipe keys of the released configs (all eight yaml files share these values).
STANDARD_LOSS_DEFAULTS: dict[str, Any] = {
    "tau": 0.05, "tau_range": (0.01, 0.10), "tau_learnable": True,
    "cross_tau": 0.45, "cross_tau_range": (0.10, 0.99), "cross_tau_learnable": True,
    "softlabel_tau": 1.0, "softlabel_tau_range": (0.10, 1.00), "softlabel_tau_learnable": False,
    "uni_tau_image": 0.45, "uni_tau_text": 0.45, "uni_tau_range": (0.10, 1.00), "uni_tau_learnable": True,
    "itc_weight": 1.0, "csa_weight": 0.1, "usa_weight": 0.5,
}


def standard_loss_config(objective: str = "cusa", options: Mapping[str, Any] | None = None) -> LossConfig:
    """The temperature layout of every released config, with values from `options` (flat recipe keys).

    Temperatures: `tau` (ITC), one shared `cross_tau` for both CSA directions, one frozen teacher
    temperature `cross_the_softlabel_tau` shared by CSA and USA (`uni_the_softlabel_tau` when CSA is
    off), and separate `uni_tau_image` / `uni_tau_text` for USA.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown CUSA objective '{objective}'; valid: {', '.join(OBJECTIVES)}")
    o = dict(STANDARD_LOSS_DEFAULTS)
    o.update({k: v for k, v in (options or {}).items() if k in STANDARD_LOSS_DEFAULTS})
    itc, csa, usa = OBJECTIVES[objective]
    temps: list[Temperature] = []
    roles: dict[str, str] = {}

    def add(name: str, init: Any, rng: Any, learnable: Any, *role_names: str) -> None:
        low, high = (float(x) for x in rng)
        temps.append(Temperature(name, float(init), low, high, bool(learnable)))
        roles.update({r: name for r in role_names})

    if itc:
        add("tau", o["tau"], o["tau_range"], o["tau_learnable"], "itc")
    if csa:
        add("cross_tau", o["cross_tau"], o["cross_tau_range"], o["cross_tau_learnable"], "csa_i2t", "csa_t2i")
    if csa:
        add("cross_the_softlabel_tau", o["softlabel_tau"], o["softlabel_tau_range"], o["softlabel_tau_learnable"],
            "csa_teacher_image", "csa_teacher_text", *(("usa_teacher_image", "usa_teacher_text") if usa else ()))
    if usa:
        add("uni_tau_image", o["uni_tau_image"], o["uni_tau_range"], o["uni_tau_learnable"], "usa_image")
        add("uni_tau_text", o["uni_tau_text"], o["uni_tau_range"], o["uni_tau_learnable"], "usa_text")
        if not csa:  # without CSA the official code names the shared teacher temperature after USA
            add("uni_the_softlabel_tau", o["softlabel_tau"], o["softlabel_tau_range"], o["softlabel_tau_learnable"],
                "usa_teacher_image", "usa_teacher_text")
    return LossConfig(itc=itc, csa=csa, usa=usa, temperatures=tuple(temps), roles=roles,
                      itc_weight=float(o["itc_weight"]), csa_weight=float(o["csa_weight"]),
                      usa_weight=float(o["usa_weight"]))
