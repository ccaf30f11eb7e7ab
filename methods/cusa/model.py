"""The CUSA model: OpenAI-style CLIP (open_clip, QuickGELU, no pretrained download) plus two heads.

State-dict keys equal the official `unire` module's: the temperatures first (`tau`, `cross_tau`,
...), then `clip_model.*` (OpenAI CLIP names, no `logit_scale`), then the cross-modal heads
(`ln_cross_{image,text}_projection`, `cross_{image,text}_projection`) and the uni-modal heads
(`ln_uni_*`, `uni_*`). Cross heads serve image-text retrieval; uni heads serve STS (text) and image
retrieval (image).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import open_clip
import torch
from torch import nn

from methods.cusa.config import LossConfig, validate_clip_config
from methods.cusa.losses import cusa_losses

EOT_TOKEN = 49407  # the largest id of CLIP's BPE vocabulary: argmax of a row is its end of text


def build_clip(cfg: Mapping[str, Any]) -> open_clip.CLIP:
    """An OpenAI-style CLIP (QuickGELU) from an open_clip geometry dict, randomly initialised."""
    validate_clip_config(cfg)
    model = open_clip.CLIP(embed_dim=int(cfg["embed_dim"]), vision_cfg=dict(cfg["vision_cfg"]),
                           text_cfg=dict(cfg["text_cfg"]), quick_gelu=True)
    del model.logit_scale  # CUSA's CLIP copy has no logit scale; its temperatures live on the wrapper
    return model


def _head(embed_dim: int) -> tuple[nn.LayerNorm, nn.Linear]:
    linear = nn.Linear(embed_dim, embed_dim)
    nn.init.normal_(linear.weight, std=0.02)  # the bias keeps torch's default init, as in the official code
    return nn.LayerNorm(embed_dim), linear


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Division by the L2 norm (no epsilon), as the official `get_similarity`."""
    return x / x.norm(dim=1, keepdim=True)


class CUSAModel(nn.Module):
    """CLIP + cross-modal and uni-modal heads + the temperatures of `loss_cfg`."""

    def __init__(self, clip_cfg: Mapping[str, Any], loss_cfg: LossConfig):
        super().__init__()
        self.clip_cfg = dict(clip_cfg)
        self.loss_cfg = loss_cfg
        for t in loss_cfg.temperatures:
            self.register_parameter(t.name, nn.Parameter(torch.tensor(t.init, dtype=torch.float32),
                                                         requires_grad=t.learnable))
        self.clip_model = build_clip(clip_cfg)
        dim = int(clip_cfg["embed_dim"])
        if loss_cfg.cross_heads:
            ln_i, lin_i = _head(dim)
            ln_t, lin_t = _head(dim)
            self.ln_cross_image_projection, self.ln_cross_text_projection = ln_i, ln_t
            self.cross_image_projection, self.cross_text_projection = lin_i, lin_t
        if loss_cfg.uni_heads:
            ln_i, lin_i = _head(dim)
            ln_t, lin_t = _head(dim)
            self.ln_uni_image_projection, self.ln_uni_text_projection = ln_i, ln_t
            self.uni_image_projection, self.uni_text_projection = lin_i, lin_t

    # ---- geometry ---------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.clip_cfg["vision_cfg"]["image_size"])

    @property
    def context_length(self) -> int:
        return int(self.clip_model.positional_embedding.shape[0])

    # ---- temperatures -----------------------------------------------------------------------
    @torch.no_grad()
    def clamp_temperatures(self) -> None:
        """Clamp every temperature into its range (the official code does this before each step)."""
        for t in self.loss_cfg.temperatures:
            getattr(self, t.name).clamp_(min=t.low, max=t.high)

    def temperatures_by_role(self) -> dict[str, torch.Tensor]:
        return {role: getattr(self, name) for role, name in self.loss_cfg.roles.items()}

    # ---- encoders ---------------------------------------------------------------------------
    def clip_text_features(self, ids: torch.Tensor, *, truncate: bool = True) -> torch.Tensor:
        """CLIP text features at the end-of-text token.

        With `truncate`, the sequence is cut after the longest end-of-text token of the batch (the
        causal mask makes later positions irrelevant to the EOT feature); otherwise it is padded to
        the full context, as the official code runs it.
        """
        clip = self.clip_model
        ctx = self.context_length
        if ids.dim() != 2:
            raise ValueError(f"token ids must be (N, L), got shape {tuple(ids.shape)}")
        if ids.shape[1] > ctx:
            raise ValueError(f"token ids are {ids.shape[1]} long; the CLIP context is {ctx}")
        eot = ids.argmax(dim=-1)
        if truncate:
            length = int(eot.max()) + 1 if len(ids) else 1
            ids = ids[:, :length]
        elif ids.shape[1] < ctx:
            ids = torch.cat([ids, ids.new_zeros(ids.shape[0], ctx - ids.shape[1])], dim=1)
        length = ids.shape[1]
        x = clip.token_embedding(ids) + clip.positional_embedding[:length]
        x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return x @ clip.text_projection

    def clip_image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if pixels.dim() != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != (size, size):
            raise ValueError(f"images must be preprocessed pixels (B, 3, {size}, {size}), got {tuple(pixels.shape)}")
        return self.clip_model.encode_image(pixels)

    def image_head(self, features: torch.Tensor, cross_modal: bool = True) -> torch.Tensor:
        """Cross or uni image head; the raw CLIP feature when that head does not exist (official)."""
        if cross_modal and self.loss_cfg.cross_heads:
            return self.cross_image_projection(self.ln_cross_image_projection(features))
        if not cross_modal and self.loss_cfg.uni_heads:
            return self.uni_image_projection(self.ln_uni_image_projection(features))
        return features

    def text_head(self, features: torch.Tensor, cross_modal: bool = True) -> torch.Tensor:
        if cross_modal and self.loss_cfg.cross_heads:
            return self.cross_text_projection(self.ln_cross_text_projection(features))
        if not cross_modal and self.loss_cfg.uni_heads:
            return self.uni_text_projection(self.ln_uni_text_projection(features))
        return features

    def encode_image(self, pixels: torch.Tensor, cross_modal: bool = True) -> torch.Tensor:
        return self.image_head(self.clip_image_features(pixels), cross_modal)

    def encode_text(self, ids: torch.Tensor, cross_modal: bool = True, *, truncate: bool = True) -> torch.Tensor:
        return self.text_head(self.clip_text_features(ids, truncate=truncate), cross_modal)

    # ---- training -----------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, image_index: torch.Tensor,
                teacher_image: torch.Tensor | None = None, teacher_text: torch.Tensor | None = None,
                *, truncate: bool = True) -> dict[str, torch.Tensor]:
        """Clamp the temperatures, encode the batch and return the weighted losses."""
        self.clamp_temperatures()
        img = self.clip_image_features(pixels)
        txt = self.clip_text_features(ids, truncate=truncate)
        cfg = self.loss_cfg
        logits_i2t = logits_ii = logits_tt = None
        if cfg.cross_heads:
            logits_i2t = l2_normalise(self.image_head(img, True)) @ l2_normalise(self.text_head(txt, True)).t()
        if cfg.uni_heads:
            ui = l2_normalise(self.image_head(img, False))
            ut = l2_normalise(self.text_head(txt, False))
            logits_ii, logits_tt = ui @ ui.t(), ut @ ut.t()
        return cusa_losses(cfg, self.temperatures_by_role(), logits_i2t=logits_i2t, logits_ii=logits_ii,
                           logits_tt=logits_tt, image_index=image_index, teacher_image=teacher_image,
                           teacher_text=teacher_text)
