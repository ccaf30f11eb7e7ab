"""CUSA losses against brute-force formulas, the training recipe, and a few real training steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.api import CusaDataError
from harness.data.demo_images import demo_teacher_features, render_caption_images
from methods.cusa.adapter import CUSAAdapter
from methods.cusa.config import TINY_CLIP, standard_loss_config
from methods.cusa.losses import cusa_losses
from methods.cusa.teacher import TeacherFeatures


def _log_softmax_row(row: np.ndarray, tau: float) -> np.ndarray:
    z = row / tau
    return z - math.log(np.exp(z).sum())


def brute_force(s_it, s_ii, s_tt, idx, t_img, t_txt, tau, tau_c, tau_s, tau_ui, tau_ut, a=0.1, b=0.5):
    """The official formulas written out per row in float64."""
    n = len(idx)

    def cos(f):
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        return f @ f.T

    def kl(student, teacher, t_student):
        total = 0.0
        for i in range(n):
            q = np.exp(teacher[i] / tau_s) / np.exp(teacher[i] / tau_s).sum()
            total += float((q * (np.log(q) - _log_softmax_row(student[i], t_student))).sum())
        return total / n  # batchmean

    def itc(s):
        total = 0.0
        for i in range(n):
            pos = np.array([idx[i] == idx[j] for j in range(n)], dtype=float)
            total += -((_log_softmax_row(s[i], tau) * pos / pos.sum()).sum() / n)  # mean over j divides by n
        return total / n

    p_ii, p_tt = cos(t_img), cos(t_txt)
    out = {"itc": (itc(s_it) + itc(s_it.T)) / 2,
           "csa": a * (kl(s_it, p_ii, tau_c) + kl(s_it.T, p_tt, tau_c)) / 2,
           "usa": b * (kl(s_ii, p_ii, tau_ui) + kl(s_tt, p_tt, tau_ut)) / 2}
    out["loss"] = out["itc"] + out["csa"] + out["usa"]
    return out


def test_losses_match_brute_force_formulas():
    rng = np.random.default_rng(0)
    n = 7
    idx = np.array([0, 1, 1, 2, 3, 3, 3])  # captions of the same image are soft positives
    s_it = rng.uniform(-1, 1, (n, n))
    u = rng.standard_normal((n, 5))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = rng.standard_normal((n, 5))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    s_ii, s_tt = u @ u.T, v @ v.T
    t_img, t_txt = rng.standard_normal((n, 6)), rng.standard_normal((n, 9))
    taus = {"tau": 0.05, "cross_tau": 0.45, "cross_the_softlabel_tau": 0.8, "uni_tau_image": 0.3, "uni_tau_text": 0.6}
    cfg = standard_loss_config("cusa")
    temps = {role: torch.tensor(taus[name], dtype=torch.float64) for role, name in cfg.roles.items()}
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    ours = cusa_losses(cfg, temps, logits_i2t=t(s_it), logits_ii=t(s_ii), logits_tt=t(s_tt),
                       image_index=torch.tensor(idx), teacher_image=t(t_img), teacher_text=t(t_txt))
    ref = brute_force(s_it, s_ii, s_tt, idx, t_img, t_txt, taus["tau"], taus["cross_tau"],
                      taus["cross_the_softlabel_tau"], taus["uni_tau_image"], taus["uni_tau_text"])
    for key in ("itc", "csa", "usa", "loss"):
        assert float(ours[key]) == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    only = cusa_losses(standard_loss_config("only_contrastive"), {"itc": t(0.05)}, logits_i2t=t(s_it), logits_ii=None,
                       logits_tt=None, image_index=torch.tensor(idx), teacher_image=None, teacher_text=None)
    assert float(only["loss"]) == pytest.approx(ref["itc"], rel=1e-9) and float(only["csa"]) == 0.0


def test_training_recipe_groups_and_schedule():
    adapter = CUSAAdapter.build("tiny", "coco", {"clip_config": TINY_CLIP, "objective": "only_contrastive"})
    setup = adapter.configure_training({"lr": 1e-5, "min_lr": 1e-6, "epochs": 30, "weight_decay": 1e-4,
                                        "from_scratch": True})
    no_decay, decay = setup.optimizer.param_groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4
    assert any(p is adapter.model.tau for p in decay["params"])  # 0-dim temperatures are decayed (timm rule)
    assert any(p is adapter.model.cross_image_projection.bias for p in no_decay["params"])
    assert any(p is adapter.model.clip_model.ln_final.weight for p in no_decay["params"])
    assert setup.lr_at_epoch(0) == [1e-5, 1e-5]
    assert setup.lr_at_epoch(15)[0] == pytest.approx(1e-6 + 0.5 * 9e-6)
    assert setup.lr_at_epoch(30)[0] == pytest.approx(1e-6)
    assert setup.grad_clip is None
    cusa = CUSAAdapter.build("tiny", "coco", {"clip_config": TINY_CLIP})
    with pytest.raises(ValueError, match="needs recipe key text_teacher"):
        cusa.configure_training({"epochs": 1, "from_scratch": True})
    with pytest.raises(ValueError, match="fine-tunes pretrained CLIP: set recipe key clip_weights"):
        CUSAAdapter.build("tiny", "coco", {"clip_config": TINY_CLIP}).configure_training({"epochs": 1})


def test_temperatures_are_clamped_before_each_step():
    adapter = CUSAAdapter.build("tiny", "coco", {"clip_config": TINY_CLIP, "objective": "only_contrastive"})
    with torch.no_grad():
        adapter.model.tau.fill_(0.5)
    batch = adapter.make_train_batch(torch.randn(3, 3, 32, 32), ["a cat", "a dog", "a bus"])
    adapter.train_step(batch, 0)
    assert adapter.model.tau.item() == pytest.approx(0.10)


@pytest.fixture(scope="module")
def synthetic_batch():
    groups = [["a red bus on the street", "a red bus parked"], ["a brown dog on the grass", "a dog in a field"],
              ["a blue boat on the water", "a boat in the sea"], ["a man holding an umbrella", "a person with a kite"]]
    images = render_caption_images(groups, size=48, seed=0)
    pairs = [(i, c) for i, g in enumerate(groups) for c in g]
    return groups, images, pairs


def test_cusa_training_steps_reduce_the_loss(synthetic_batch, tmp_path):
    groups, images, pairs = synthetic_batch
    torch.manual_seed(0)
    adapter = CUSAAdapter.build("tiny", "demo", {"clip_config": TINY_CLIP})
    ids = [f"img{i}" for i in range(len(groups))]
    TeacherFeatures(ids, demo_teacher_features(groups)).save(tmp_path / "train_unicom.npz")
    setup = adapter.configure_training({"lr": 2e-3, "min_lr": 2e-3, "epochs": 1, "text_teacher": "minilm",
                                        "from_scratch": True, "text_teacher_cache": True,
                                        "teacher_image_features": str(tmp_path / "train_unicom.npz")})
    batch = adapter.make_train_batch([images[i] for i, _ in pairs], [c for _, c in pairs], None,
                                     image_ids=[ids[i] for i, _ in pairs])
    assert batch.teacher_image.shape == (8, demo_teacher_features(groups).shape[1])
    assert batch.image_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    losses = []
    for _ in range(6):
        out = adapter.train_step(batch, 0)
        assert set(out) == {"loss", "itc", "csa", "usa"} and all(float(out[k]) > 0 for k in ("itc", "csa", "usa"))
        setup.optimizer.zero_grad()
        out["loss"].backward()
        setup.optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert adapter.model.cross_the_softlabel_tau.grad is None  # frozen teacher temperature
    with pytest.raises(CusaDataError, match="no teacher feature for 1 image id"):
        adapter.make_train_batch([images[0]], ["a red bus"], None, image_ids=["unknown"])
