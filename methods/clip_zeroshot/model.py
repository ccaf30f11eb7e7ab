"""Which CLIP a zero-shot variant is, where its weights are on this machine, and building it.

A variant is an open_clip model name with a pretrained tag (`ViT-B-32` / `openai`), or an open_clip geometry
initialised at random (`tiny`, for the demo and tests). Weights come from a local file (option `weights`) or
from the file open_clip would have downloaded for the tag, when it is already in the user's cache (the
Hugging Face hub cache, or open_clip's `~/.cache/clip` for URL downloads; option `cache_dir` names another
cache folder, as open_clip's `cache_dir` does). Nothing is ever downloaded: the model is built with
`pretrained=None` and the weights are read with `torch.load(weights_only=True)` or safetensors.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from harness.api import CLIP_MEAN, CLIP_STD, CheckpointError, clip_preprocess
from methods.common.clip import TINY_CLIP, validate_clip_config

# Built-in variants. The registry's variant options say the same; `load_official` needs them without it.
VARIANTS: dict[str, dict[str, Any]] = {
    "vitb32_openai": {"model": "ViT-B-32", "pretrained": "openai"},
    "vitl14_336_openai": {"model": "ViT-L-14-336", "pretrained": "openai"},
    "tiny": {"clip_config": TINY_CLIP},  # random weights: meaningless numbers, shows the pipeline runs
}
SPEC_KEYS = ("model", "pretrained", "clip_config")
# What open_clip fetches for a Hugging Face entry 'org/repo/' (the safetensors copy first, as open_clip does).
HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
URL_CACHE = "~/.cache/clip"  # where open_clip keeps weights it downloaded from a URL


class ZeroShotCLIP(nn.Module):
    """An open_clip CLIP kept under `clip_model` (the layout CUSA's CLIP weight loader fills), without its
    logit scale: a softmax temperature, which no ranking depends on."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        if isinstance(getattr(clip, "logit_scale", None), nn.Parameter):
            del clip.logit_scale
        self.clip_model = clip

    @property
    def image_size(self) -> int:
        size = self.clip_model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def context_length(self) -> int:
        return int(self.clip_model.context_length)


@dataclass(frozen=True)
class ClipSpec:
    """One zero-shot CLIP: an open_clip model name (and pretrained tag), or a geometry to initialise at random."""

    variant: str
    model: str | None = None
    pretrained: str | None = None
    clip_config: Mapping[str, Any] | None = None
    quick_gelu: bool = True

    @classmethod
    def of(cls, variant: str, options: Mapping[str, Any]) -> ClipSpec:
        """The CLIP of `variant`: options `model` / `pretrained` / `clip_config` (a registry variant's, or a
        user's), else the built-in variant of that name."""
        own = {k: options[k] for k in SPEC_KEYS if options.get(k) is not None}
        spec = own if ("model" in own or "clip_config" in own) else {**VARIANTS.get(variant, {}), **own}
        if ("model" in spec) == ("clip_config" in spec):
            raise ValueError(f"clip_zeroshot variant '{variant}': give options model: (an open_clip model name, e.g. "
                             "ViT-B-16) with pretrained: (its tag, e.g. laion2b_s34b_b88k), or clip_config: (a random "
                             f"geometry), not {'both' if spec else 'neither'}; built-in variants: "
                             f"{', '.join(VARIANTS)}")
        quick_gelu = options.get("quick_gelu")
        if "clip_config" in spec:
            validate_clip_config(spec["clip_config"])
            return cls(variant, clip_config=dict(spec["clip_config"]),
                       quick_gelu=True if quick_gelu is None else bool(quick_gelu))
        model, pretrained = str(spec["model"]), spec.get("pretrained")
        cfg = _model_config(model)
        if pretrained is not None:
            pretrained = str(pretrained)
            tags = open_clip.list_pretrained_tags_by_model(model)
            if pretrained not in tags:
                raise ValueError(f"open_clip has no pretrained tag '{pretrained}' for {model}; valid: "
                                 f"{', '.join(tags) or 'none'}")
        if quick_gelu is None:  # as open_clip would build it for the tag
            tag_cfg = open_clip.get_pretrained_cfg(model, pretrained) if pretrained else {}
            quick_gelu = bool(tag_cfg.get("quick_gelu", cfg.get("quick_gelu", False)))
        return cls(variant, model=model, pretrained=pretrained, quick_gelu=bool(quick_gelu))

    @property
    def name(self) -> str:
        if self.clip_config is not None:
            return f"a randomly initialised CLIP ({self.variant})"
        return f"open_clip {self.model}" + (f" '{self.pretrained}'" if self.pretrained else "")


def _model_config(model: str) -> dict[str, Any]:
    """open_clip's config of `model`, refused when building it could reach the network (hub schemas,
    Hugging Face text towers or tokenizers)."""
    if ":" in model:
        raise ValueError(f"open_clip model '{model}': name a built-in open_clip model (open_clip.list_models()); "
                         "hub and local-dir schemas are not read")
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        near = difflib.get_close_matches(model, open_clip.list_models(), n=3, cutoff=0.6)
        raise ValueError(f"unknown open_clip model '{model}'" + (f"; did you mean {', '.join(near)}?" if near else
                                                                  "; see open_clip.list_models()"))
    text = cfg.get("text_cfg", {})
    hf = text.get("hf_model_name") or text.get("hf_tokenizer_name")
    if hf:
        raise ValueError(f"open_clip model '{model}' needs the Hugging Face model/tokenizer '{hf}', which could be "
                         "downloaded; clip_zeroshot reads CLIP-BPE models only")
    return cfg


def _safe_alternatives(filename: str) -> list[str]:
    """The safetensors copies open_clip looks for before a .bin / .pth file on the hub."""
    if filename == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors"]
    return [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []


def cached_weights(model: str, pretrained: str, cache_dir: str | Path | None = None) -> tuple[Path | None, list[str]]:
    """The file open_clip would load for `model` / `pretrained` if it is in the local cache (else None), and
    the places looked at. Only reads the cache: never downloads."""
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    looked: list[str] = []
    if cfg.get("file"):
        path = Path(cfg["file"]).expanduser()
        if path.is_file():
            return path, looked
        looked.append(str(path))
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)  # 'org/repo/' -> ('org/repo', ''); 'org/repo/f.bin' -> (.., 'f.bin')
        names = [*_safe_alternatives(filename), filename] if filename else list(HF_FILES)
        try:
            from huggingface_hub import constants, try_to_load_from_cache
        except ImportError:  # pragma: no cover - open_clip then downloads from the URL
            pass
        else:
            for name in names:
                hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
                if isinstance(hit, str):
                    return Path(hit), looked
            root = Path(cache_dir or constants.HF_HUB_CACHE)
            looked.append(f"{root}/models--{repo.replace('/', '--')}/snapshots/*/({' | '.join(names)})")
    url = cfg.get("url", "")
    if url:
        path = Path(cache_dir or URL_CACHE).expanduser() / os.path.basename(url)
        if path.is_file():
            return path, looked
        looked.append(str(path))
    return None, looked


def resolve_weights(spec: ClipSpec, options: Mapping[str, Any]) -> Path | None:
    """The weights file to load (None: a random geometry without `weights`); a one-line error naming where
    it looked and how to provide the file when there is none on this machine."""
    if options.get("weights"):
        path = Path(str(options["weights"])).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{path}: no such CLIP weights file (clip_zeroshot/{spec.variant} option weights)")
        return path
    if spec.clip_config is not None:
        return None
    if spec.pretrained is None:
        raise CheckpointError(f"clip_zeroshot/{spec.variant}: {spec.name} has no pretrained tag and no weights file; "
                              "set option pretrained: (an open_clip tag) or weights: (a local file)")
    path, looked = cached_weights(spec.model, spec.pretrained, options.get("cache_dir"))
    if path is None:
        raise CheckpointError(
            f"clip_zeroshot/{spec.variant}: no local weights for {spec.name} (looked in {'; '.join(looked)}); "
            f"itrbench never downloads them: pass --set clip_zeroshot.weights=FILE (a .safetensors / .bin state dict) "
            f"or fill the open_clip cache once: python -c \"import open_clip; "
            f"open_clip.create_model('{spec.model}', pretrained='{spec.pretrained}')\"")
    return path


def build_clip(spec: ClipSpec, seed: int = 0) -> ZeroShotCLIP:
    """The CLIP of `spec`, randomly initialised from `seed` (the global RNG is left as it was); no download."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.clip_config is not None:
            cfg = spec.clip_config
            clip = open_clip.CLIP(embed_dim=int(cfg["embed_dim"]), vision_cfg=dict(cfg["vision_cfg"]),
                                  text_cfg=dict(cfg["text_cfg"]), quick_gelu=spec.quick_gelu)
        else:
            clip = open_clip.create_model(spec.model, pretrained=None, force_quick_gelu=spec.quick_gelu,
                                          pretrained_image=False, pretrained_text=False)
    return ZeroShotCLIP(clip)


def preprocess_for(spec: ClipSpec, image_size: int) -> Any:
    """The evaluation transform open_clip uses for the tag (CLIP's own for OpenAI statistics)."""
    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained) if spec.model and spec.pretrained else {}
    mean, std = tuple(cfg.get("mean", CLIP_MEAN)), tuple(cfg.get("std", CLIP_STD))
    interpolation, resize_mode = cfg.get("interpolation", "bicubic"), cfg.get("resize_mode", "shortest")
    if (mean, std, interpolation, resize_mode) == (tuple(CLIP_MEAN), tuple(CLIP_STD), "bicubic", "shortest"):
        return clip_preprocess(image_size)
    return open_clip.image_transform(image_size, is_train=False, mean=mean, std=std, interpolation=interpolation,
                                     resize_mode=resize_mode)
