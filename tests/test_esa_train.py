"""ESA training pieces: optimiser groups, lr schedule, the self-expanding loss step, a few real steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.common.triplet import group_positives, triplet_costs
from methods.esa import ESAAdapter

TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
OPTIONS = dict(embed_size=32, word_dim=16, img_dim=24, bert=TINY_BERT)
CAPTIONS = ["A man riding a wave on top of a surfboard.", "Two giraffes standing in a grassy field",
            "a bowl of soup with a spoon", "The kitchen has white cabinets and a black stove.",
            "A red bus on a city street", "a cat sitting on a wooden bench"]


def test_bigru_optimizer_and_schedule():
    adapter = ESAAdapter.build("bigru", "coco", {**OPTIONS, "weight_decay": 0.01})
    recipe = {"lr": 5e-4, "lr_decay_epochs": [15], "lr_decay": 0.1, "grad_clip": 2.0}
    setup = adapter.configure_training(recipe)
    opt = setup.optimizer
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["weight_decay"] == 0.01 and group["lr"] == 5e-4
    assert {id(p) for p in group["params"]} == {id(p) for p in adapter.model.parameters()}
    assert setup.grad_clip == 2.0
    assert setup.lr_at_epoch(14) == [5e-4] and setup.lr_at_epoch(15) == pytest.approx([5e-5])
    assert setup.lr_at_epoch(24) == pytest.approx([5e-5])


def test_bert_optimizer_has_three_groups():
    adapter = ESAAdapter.build("bert", "coco", {**OPTIONS, "bert_lr_factor": 0.1, "weight_decay": 1e-4})
    setup = adapter.configure_training({"lr": 1e-3, "lr_decay_epochs": [2, 4]})
    groups = setup.optimizer.param_groups
    txt = adapter.model.txt_enc
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4, 1e-3])
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0] == {id(p) for p in [*txt.linear.parameters(), *txt.linear1.parameters()]}
    assert ids[1] == {id(p) for p in txt.bert.parameters()}
    assert ids[2] == {id(p) for p in adapter.model.img_enc.parameters()}
    assert setup.lr_at_epoch(3) == pytest.approx([1e-4, 1e-5, 1e-4])
    assert setup.lr_at_epoch(4) == pytest.approx([1e-5, 1e-6, 1e-5])


def test_train_step_is_the_self_expanding_loss():
    adapter = ESAAdapter.build("bigru", "coco", OPTIONS)
    adapter.configure_training({"margin": 0.2, "warmup_epochs": 1})
    batch = adapter.make_train_batch(np.random.default_rng(0).standard_normal((6, 36, 24)).astype(np.float32),
                                     CAPTIONS, np.random.default_rng(0))
    adapter.model.eval()  # deterministic encoders, so the loss can be recomputed by hand
    img = adapter.model.img_enc.views(batch.images, batch.region_keep)
    cap = adapter.model.txt_enc(batch.tokens.ids, batch.tokens.lengths)
    scores = img @ cap.t()
    for epoch, hardest in ((0, False), (1, True), (7, True)):
        out = adapter.train_step(batch, epoch)
        ref = sum(triplet_costs(scores, group_positives(12, 2), margin=0.2, hardest_negative=hardest))
        assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-5)
        assert out["loss"].item() == pytest.approx((out["loss_im"] + out["loss_s"]).item(), rel=1e-6)
    assert adapter.train_step(batch, 0)["loss"] > adapter.train_step(batch, 1)["loss"]  # VSE0 sums negatives


@pytest.mark.parametrize("variant", ["bigru", "bert"])
def test_a_few_steps_reduce_the_loss(variant):
    torch.manual_seed(0)
    adapter = ESAAdapter.build(variant, "coco", OPTIONS)
    setup = adapter.configure_training({"lr": 3e-3, "warmup_epochs": 0, "grad_clip": 2.0})
    rng = np.random.default_rng(0)
    imgs = rng.standard_normal((6, 36, 24)).astype(np.float32)
    batch = adapter.make_train_batch(imgs, CAPTIONS, rng)
    adapter.model.train()
    losses = []
    for _ in range(8):
        out = adapter.train_step(batch, epoch=1)
        setup.optimizer.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(adapter.model.parameters(), setup.grad_clip)
        setup.optimizer.step()
        losses.append(out["loss"].item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-2:]) < 0.85 * np.mean(losses[:2]), losses
