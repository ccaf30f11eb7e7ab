"""CUSA's three losses: ITC with soft same-image targets, CSA and USA (KL to teacher similarities).

All functions take similarity logits (cosines, not yet divided by a temperature) of one batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from methods.cusa.config import LossConfig


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """Row reduction of the official `contrastive_loss_mode`: `mean` (divides by B) or `sum`."""
    return x.mean(dim=1) if reduction == "mean" else x.sum(dim=1)


def same_image_targets(image_index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Row-normalised targets: every caption of the same image in the batch is a positive."""
    pos = (image_index.view(-1, 1) == image_index.view(1, -1)).to(dtype)
    return pos / pos.sum(dim=1, keepdim=True)


def soft_itc_loss(logits_i2t: torch.Tensor, logits_t2i: torch.Tensor, image_index: torch.Tensor,
                  tau: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """(L_i2t + L_t2i) / 2 with soft same-image targets; `mean` keeps the official 1/B scale."""
    targets = same_image_targets(image_index, logits_i2t.dtype)
    l_i2t = -_reduce(F.log_softmax(logits_i2t / tau, dim=1) * targets, reduction).mean()
    l_t2i = -_reduce(F.log_softmax(logits_t2i / tau, dim=1) * targets, reduction).mean()
    return (l_i2t + l_t2i) / 2


def soft_label_loss(logits: torch.Tensor, teacher_sim: torch.Tensor, tau: torch.Tensor,
                    teacher_tau: torch.Tensor, kind: str = "kl", reduction: str = "mean") -> torch.Tensor:
    """Pull softmax(logits / tau) towards softmax(teacher_sim / teacher_tau), row by row.

    `kl`: KL(teacher || student) summed over the matrix and divided by the batch size (batchmean).
    `contrastive`: soft cross-entropy with the official row reduction.
    """
    target = F.softmax(teacher_sim / teacher_tau, dim=1)
    log_student = F.log_softmax(logits / tau, dim=1)
    if kind == "kl":
        return F.kl_div(log_student, target, reduction="batchmean")
    return -_reduce(log_student * target, reduction).mean()


def teacher_similarity(features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity matrix of teacher features (as sentence_transformers.util.cos_sim)."""
    f = F.normalize(features if features.is_floating_point() else features.float(), p=2, dim=1)
    return f @ f.t()


def cross_teacher_targets(sim_ii: torch.Tensor, sim_tt: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher similarities for the image->text and text->image CSA terms.

    `each` (the released configs): image-image for i2t, text-text for t2i. `add`: their mean for both.
    `dot`: sqrt of the product of the two with negatives set to zero, for both.
    """
    if mode == "each":
        return sim_ii, sim_tt
    if mode == "add":
        both = (sim_ii + sim_tt) / 2
    else:
        both = torch.sqrt(sim_ii.clamp(min=0) * sim_tt.clamp(min=0))
    return both, both


def cusa_losses(cfg: LossConfig, temps: Mapping[str, torch.Tensor], *, logits_i2t: torch.Tensor | None,
                logits_ii: torch.Tensor | None, logits_tt: torch.Tensor | None, image_index: torch.Tensor,
                teacher_image: torch.Tensor | None, teacher_text: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The weighted losses of one batch: {'itc', 'csa', 'usa', 'loss'} (disabled terms are 0).

    `temps` maps each role of `cfg.roles` to its temperature tensor.
    """
    zero = (logits_i2t if logits_i2t is not None else logits_ii).new_zeros(())
    out = {"itc": zero, "csa": zero, "usa": zero}
    if cfg.csa or cfg.usa:
        if teacher_image is None or teacher_text is None:
            raise ValueError(f"objective '{cfg.objective}' needs teacher image and text features in the batch")
        with torch.no_grad():
            sim_ii, sim_tt = teacher_similarity(teacher_image), teacher_similarity(teacher_text)
    if cfg.csa:
        t_i2t, t_t2i = cross_teacher_targets(sim_ii, sim_tt, cfg.csa_teacher)
        csa = (soft_label_loss(logits_i2t, t_i2t, temps["csa_i2t"], temps["csa_teacher_image"],
                               cfg.csa_loss, cfg.csa_reduction)
               + soft_label_loss(logits_i2t.t(), t_t2i, temps["csa_t2i"], temps["csa_teacher_text"],
                                 cfg.csa_loss, cfg.csa_reduction)) / 2
        out["csa"] = cfg.csa_weight * csa
    if cfg.usa:
        usa = (soft_label_loss(logits_ii, sim_ii, temps["usa_image"], temps["usa_teacher_image"],
                               cfg.usa_loss, cfg.usa_reduction)
               + soft_label_loss(logits_tt, sim_tt, temps["usa_text"], temps["usa_teacher_text"],
                                 cfg.usa_loss, cfg.usa_reduction)) / 2
        out["usa"] = cfg.usa_weight * usa
    if cfg.itc:
        out["itc"] = cfg.itc_weight * soft_itc_loss(logits_i2t, logits_i2t.t(), image_index, temps["itc"],
                                                    cfg.itc_reduction)
    out["loss"] = out["csa"] + out["usa"] + out["itc"]
    return out
