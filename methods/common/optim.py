"""The optimizer setups the vse_infty-derived codes share: AdamW over parameter groups, BERT at a
reduced lr, and a step decay of every group's lr at given epochs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from harness.api import TrainingSetup


def bert_text_groups(txt_enc: nn.Module, lr: float, bert_lr_factor: float) -> list[dict[str, Any]]:
    """[text encoder without BERT at lr, BERT at lr x bert_lr_factor] (the official group order)."""
    bert_ids = {id(p) for p in txt_enc.bert.parameters()}
    return [{"params": [p for p in txt_enc.parameters() if id(p) not in bert_ids], "lr": lr},
            {"params": list(txt_enc.bert.parameters()), "lr": lr * bert_lr_factor}]


def adamw_step_decay(groups: Sequence[dict[str, Any]], recipe: Mapping[str, Any], weight_decay: float) -> TrainingSetup:
    """AdamW over `groups`; every group's lr x recipe lr_decay from each epoch in recipe lr_decay_epochs;
    gradient norm clipped to recipe grad_clip (none when absent or 0)."""
    lr = max(g["lr"] for g in groups)
    optimizer = torch.optim.AdamW(list(groups), lr=lr, weight_decay=weight_decay)
    base_lrs = [g["lr"] for g in groups]
    decay_epochs = [int(e) for e in recipe["lr_decay_epochs"]]
    decay = float(recipe["lr_decay"])

    def lr_at_epoch(epoch: int) -> list[float]:
        steps = sum(epoch >= e for e in decay_epochs)
        return [base * decay ** steps for base in base_lrs]

    clip = recipe.get("grad_clip")
    return TrainingSetup(optimizer=optimizer, grad_clip=float(clip) if clip else None, lr_at_epoch=lr_at_epoch)
