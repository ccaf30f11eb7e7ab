"""ESL-H / ESL-A: official checkpoints (strict, safe loading, errors), scores equal to an official-style
reference, the linspace index semantics, and the training pieces."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_esl_reference import PAIR_CAPTIONS, TINY_BERT, esl_official_sims  # noqa: E402

from harness.api import CheckpointError, PaddedFeatures  # noqa: E402
from harness.eval.scoring import encode_texts, score_blocks  # noqa: E402
from methods.esl import ESLAdapter  # noqa: E402
from methods.esl.model import AdaptiveLevels, ESLHead, esl_pair_scores, level_dims, official_rows  # noqa: E402

EMBED, IMG_DIM, REGIONS = 256, 48, 6
CAPTIONS = PAIR_CAPTIONS


pytestmark = pytest.mark.usefixtures("one_thread")


def randomize(adapter: ESLAdapter, seed: int = 0) -> ESLAdapter:
    """Move every parameter and BN statistic away from its initial value (a 'trained' model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        head = adapter.model.sim_vec.calculator
        head.sim_eval.weight.copy_(0.1 + 0.08 * torch.randn(1, 9, generator=g))
        head.temp_scale_1.weight.fill_(0.3)
        head.temp_scale_2.weight.fill_(1.0)
        bn = adapter.model.img_enc.mlp.bns[0]
        bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=g))
    adapter.model.eval()
    return adapter


def build(variant: str, dataset: str = "coco") -> ESLAdapter:
    torch.manual_seed(1)
    return randomize(ESLAdapter.build(variant, dataset, dict(embed_size=EMBED, img_dim=IMG_DIM, bert=TINY_BERT)))


@pytest.fixture(scope="module")
def regions() -> torch.Tensor:
    return torch.randn(len(CAPTIONS) // 5, REGIONS, IMG_DIM, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module", params=["h", "a"])
def saved(request, tmp_path_factory) -> tuple[str, Path]:
    variant = request.param
    path = tmp_path_factory.mktemp(f"esl_{variant}") / "checkpoint_3.pth.tar"
    torch.save(build(variant).official_checkpoint(epoch=4, best_rsum=500.0), path)
    return variant, path


def load_raw(path: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


# ---- equivalence with the official algorithm ------------------------------------------------------------

def test_scores_match_official_reference(saved, regions):
    variant, path = saved
    adapter = ESLAdapter.load_official(path, variant=variant, dataset="coco")
    tokens = adapter.tokenize(CAPTIONS)
    expected = esl_official_sims(load_raw(path), regions, tokens.ids, tokens.lengths, TINY_BERT,
                                 heuristic=variant == "h")
    images = adapter.encode_images(regions)
    texts = adapter.encode_texts(tokens)
    ours = adapter.score(images, texts).numpy()
    assert ours.shape == (3, 15)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    # through the harness engine: odd tiles, text encoded in small batches (other padding widths)
    tiled = score_blocks(adapter, images, encode_texts(adapter, CAPTIONS, batch_size=4), image_tile=2, caption_tile=4)
    np.testing.assert_allclose(tiled, expected, atol=1e-5, rtol=0)
    assert np.abs(expected[:, :, None] - expected[:, None, :]).max() > 1e-3  # not a degenerate matrix


def test_chunked_scoring_equals_one_block(saved, regions):
    variant, path = saved
    adapter = ESLAdapter.load_official(path)
    images, texts = adapter.encode_images(regions), adapter.encode_texts(adapter.tokenize(CAPTIONS))
    whole = adapter.score(images, texts)
    adapter.score_budget = REGIONS * 4  # forces one image and a few captions per chunk
    torch.testing.assert_close(adapter.score(images, texts), whole, rtol=0, atol=1e-5)


def test_padding_words_do_not_change_scores(saved, regions):
    _, path = saved
    adapter = ESLAdapter.load_official(path)
    images, texts = adapter.encode_images(regions), adapter.encode_texts(adapter.tokenize(CAPTIONS))
    wide = torch.cat([texts.feats, torch.randn(len(texts), 5, texts.feats.shape[2])], dim=1)
    torch.testing.assert_close(adapter.score(images, PaddedFeatures(wide, texts.lengths)), adapter.score(images, texts),
                               rtol=0, atol=1e-6)


def test_load_without_module_prefix(saved, regions, tmp_path):
    variant, path = saved
    raw = load_raw(path)
    raw["model"] = [{k.removeprefix("module."): v for k, v in s.items()} for s in raw["model"]]
    bare = tmp_path / "bare.pth"
    torch.save(raw, bare)
    a, b = ESLAdapter.load_official(path), ESLAdapter.load_official(bare)
    assert a.variant == b.variant == variant
    tokens = a.tokenize(CAPTIONS[:5])
    torch.testing.assert_close(b.score(b.encode_images(regions), b.encode_texts(tokens)),
                               a.score(a.encode_images(regions), a.encode_texts(tokens)), rtol=0, atol=0)


# ---- container layout ---------------------------------------------------------------------------------

def test_official_checkpoint_layout(saved):
    variant, path = saved
    raw = load_raw(path)
    assert set(raw) == {"epoch", "model", "best_rsum", "opt", "Eiters"} and raw["epoch"] == 4
    img, txt, sim = raw["model"]
    assert all(k.startswith("module.") for part in raw["model"] for k in part)
    assert len(img) == 16 and len(sim) == 47
    assert len(txt) == 16 * TINY_BERT["num_hidden_layers"] + 7 + 2  # BERT blocks, embeddings + pooler, linear
    levels = "module.plus_encoder.encoders_1.text_levels."
    key = f"{levels}kernel_txt_1.weight" if variant == "h" else f"{levels}masks_1.weight"
    assert key in sim
    opt = raw["opt"]
    assert isinstance(opt, argparse.Namespace)
    assert (opt.data_name, opt.embed_size, opt.kernel_size, opt.precomp_enc_type) == ("coco_precomp", EMBED, 2, "basic")
    assert opt.max_violation is True  # saved after epoch index 3 >= vse_mean_warmup_epochs


@pytest.mark.parametrize("heuristic", [True, False])
def test_head_has_the_official_key_shapes(heuristic):
    head = ESLHead(512, 2, heuristic)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert len(shapes) == 47
    dims = [512 >> level for level in range(9)]
    for level in range(9):
        assert shapes[f"sims.calculator_1.masks_{level}.weight"] == (dims[level], dims[level])
        assert shapes[f"sims.calculator_1.lynorm_{level}.weight"] == (dims[level], dims[level])
    assert shapes["sims.calculator_1.sim_eval.weight"] == (1, 9)
    for level in range(1, 9):
        for side, conv in (("text_levels", "kernel_txt"), ("image_levels", "kernel_img")):
            key = f"plus_encoder.encoders_1.{side}."
            if heuristic:
                assert shapes[f"{key}{conv}_{level}.weight"] == (4, 1, 2)
            else:
                assert shapes[f"{key}masks_{level}.weight"] == (dims[level], dims[level - 1])


def test_adaptive_levels_keep_ties_and_the_top_two():
    levels = AdaptiveLevels(level_dims(256))
    with torch.no_grad():
        levels.masks_1.weight.normal_()
        levels.masks_1.weight[0] = torch.tensor([0.5, 0.5, 0.5, 0.1] + [0.0] * 252)
    m = levels.matrices()[0]
    assert int((m[0] != 0).sum()) == 3  # three tied maxima are all kept
    assert bool(((m[1:] != 0).sum(1) == 2).all())
    torch.testing.assert_close(m[0, :3], torch.full((3,), 0.5) / (0.76 ** 0.5))


def test_esl_a_level_weights_are_the_raw_weights_with_zero_sparsity_gradients():
    head = ESLHead(256, 2, heuristic=False).calculator
    with torch.no_grad():
        head.sim_eval.weight.normal_()
    alpha = head.level_weights(heuristic=False)
    torch.testing.assert_close(alpha, head.sim_eval.weight[0])
    alpha.sum().backward()
    assert head.temp_scale_1.weight.grad is not None and float(head.temp_scale_1.weight.grad.abs().sum()) == 0
    heuristic = ESLHead(256, 2, heuristic=True).calculator
    with torch.no_grad():
        heuristic.sim_eval.weight.copy_(torch.tensor([[0.1, -0.4, 0.2, 0.05, 0.3, -0.1, 0.0, 0.2, 0.15]]))
        heuristic.temp_scale_1.weight.fill_(0.5)
        heuristic.temp_scale_2.weight.fill_(1.0)
    w = heuristic.sim_eval.weight[0].detach()
    t = w.abs().min() + 0.5 * (w.abs().max() - w.abs().min())
    expected = torch.exp(np.e * (w.abs() - t)) * w  # larger |w| are boosted, smaller ones damped
    torch.testing.assert_close(heuristic.level_weights(heuristic=True).detach(), expected)


def test_level_dims_need_divisibility():
    assert level_dims(512) == [512, 256, 128, 64, 32, 16, 8, 4, 2]
    with pytest.raises(ValueError, match="divisible"):
        level_dims(128)


# ---- torch 1.8 linspace semantics ------------------------------------------------------------------

def test_linspace_index_is_every_row_in_order():
    table = torch.nn.Embedding(512, 3)
    torch.testing.assert_close(official_rows(table, 512), table.weight[torch.arange(512)])
    torch.testing.assert_close(official_rows(table, 256), table.weight[:256])
    # what the official call gives on this torch: on >= 2.0 it ends one past the last row
    modern = torch.linspace(0, 512, steps=512, dtype=torch.int)
    if int(torch.__version__.split(".")[0]) >= 2:
        assert int(modern[-1]) == 512 and int(modern[-2]) == 510
        with pytest.raises(IndexError):
            table(modern.long())


def test_scores_use_all_correspondence_rows():
    """Changing the last row of masks_0 (the row a torch >= 2 linspace would skip) changes the scores."""
    adapter = build("a")
    head = adapter.model.sim_vec
    u = torch.randn(2, 4, sum(head.dims))
    t = torch.randn(3, 5, sum(head.dims))
    before = esl_pair_scores(head.calculator.fold(u, False), t, torch.tensor([5, 4, 3]), head.smooth())
    with torch.no_grad():
        head.calculator.masks_0.weight[-1].add_(1.0)
    after = esl_pair_scores(head.calculator.fold(u, False), t, torch.tensor([5, 4, 3]), head.smooth())
    assert (before - after).abs().max() > 1e-4


# ---- strict loading errors ------------------------------------------------------------------------------

def one_line_error(path: Path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        ESLAdapter.load_official(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_wrong_variant_is_refused(saved):
    variant, path = saved
    other = "a" if variant == "h" else "h"
    message = one_line_error(path, variant=other)
    assert f"ESL-{variant.upper()} checkpoint" in message and repr(other) in message


def test_wrong_dataset_is_refused(saved):
    _, path = saved
    assert "trained on coco" in one_line_error(path, dataset="f30k")


def test_truncated_file_is_refused(saved, tmp_path):
    _, path = saved
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated" in one_line_error(cut)


def test_esa_two_part_checkpoint_is_refused(saved, tmp_path):
    _, path = saved
    raw = load_raw(path)
    raw["model"] = raw["model"][:2]
    esa = tmp_path / "esa_model_best.pth"
    torch.save(raw, esa)
    assert "holds 2 state dicts" in one_line_error(esa)


def test_missing_and_mis_shaped_keys_are_named(saved, tmp_path):
    _, path = saved
    raw = load_raw(path)
    key = "module.sims.calculator_1.lynorm_3.bias"
    del raw["model"][2][key]
    broken = tmp_path / "broken.pth"
    torch.save(raw, broken)
    assert "lynorm_3.bias" in one_line_error(broken)
    raw = load_raw(path)
    raw["opt"].embed_size = 512  # opt disagrees with the weights
    torch.save(raw, broken)
    assert "shape" in one_line_error(broken)


def test_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"model": [], "opt": argparse.Namespace(), "hook": torch.nn.Linear(1, 1)}, evil)
    assert "refused" in one_line_error(evil)


# ---- training -----------------------------------------------------------------------------------------

def test_configure_training_groups_and_schedule():
    adapter = build("h")
    setup = adapter.configure_training({"lr": 1e-3, "lr_decay_epochs": [2]})
    groups = setup.optimizer.param_groups
    assert isinstance(setup.optimizer, torch.optim.AdamW) and len(groups) == 4
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4, 1e-3, 1e-3])
    assert all(g["weight_decay"] == 1e-4 for g in groups) and setup.grad_clip == 2.0
    n_bert = sum(p.numel() for p in adapter.model.txt_enc.bert.parameters())
    assert sum(p.numel() for p in groups[1]["params"]) == n_bert
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in adapter.model.parameters())
    assert setup.lr_at_epoch(1) == pytest.approx([1e-3, 1e-4, 1e-3, 1e-3])
    assert setup.lr_at_epoch(2) == pytest.approx([1e-4, 1e-5, 1e-4, 1e-4])


def test_train_batch_drops_regions_and_masks_words():
    adapter = build("a")
    adapter.configure_training({"word_aug_prob": 1.0})  # every word altered
    images = np.random.default_rng(0).normal(size=(4, 36, IMG_DIM)).astype(np.float32)
    batch = adapter.make_train_batch(images, CAPTIONS[:4], np.random.default_rng(1))
    kept = batch.image_lengths.numpy()
    assert batch.images.shape == (4, kept.max(), IMG_DIM) and 0.5 < kept.mean() / 36 < 0.95
    for i, n in enumerate(kept):
        assert torch.all(batch.images[i, n:] == 0)
        rows = batch.images[i, :n]  # kept regions, in their original order
        idx = [int(np.flatnonzero((images[i] == r.numpy()).all(1))[0]) for r in rows]
        assert idx == sorted(idx)
    plain = adapter.tokenize(CAPTIONS[:4])
    ids = batch.tokens.ids
    assert torch.all(ids[:, 0] == 101)
    assert not torch.equal(ids[:, : plain.ids.shape[1]], plain.ids[:, : ids.shape[1]])
    assert (ids == 103).any()  # [MASK] pieces


def test_training_steps_reduce_the_loss_and_switch_to_hardest_negatives():
    adapter = build("h")
    setup = adapter.configure_training({"lr": 2e-3, "word_aug_prob": 0.0, "region_keep": 1.0})
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, REGIONS, IMG_DIM)).astype(np.float32)
    batch = adapter.make_train_batch(images, CAPTIONS[:6], rng)
    adapter.model.train()
    with torch.no_grad():
        vse0 = float(adapter.train_step(batch, epoch=0)["loss"])
        hardest = float(adapter.train_step(batch, epoch=1)["loss"])
    assert hardest < vse0  # the max over negatives is at most their sum (and here strictly less)
    losses = []
    for _ in range(4):
        loss = adapter.train_step(batch, epoch=0)["loss"]
        setup.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.model.parameters(), setup.grad_clip)
        setup.optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_training_checkpoint_round_trip(tmp_path):
    adapter = build("a", dataset="f30k")
    adapter.configure_training({"epochs": 30, "lr_decay_epochs": [15]})
    path = tmp_path / "checkpoint_0.pth.tar"
    torch.save(adapter.official_checkpoint(epoch=1, best_rsum=1.0, Eiters=10), path)
    loaded = ESLAdapter.load_official(path, variant="a", dataset="f30k")
    for (k, v), (k2, v2) in zip(adapter.model.state_dict().items(), loaded.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    opt = load_raw(path)["opt"]
    assert (opt.num_epochs, opt.lr_update, opt.max_violation) == (30, 15, False)
