"""X-Dim: official checkpoints (strict, safe loading, errors), scores equal to an official-style
reference, the linspace index semantics, and the training pieces."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_esl_reference import PAIR_CAPTIONS, TINY_BERT, l2n, official_style_matrix, sub, torch18_linspace_index  # noqa: E402

from harness.api import CheckpointError  # noqa: E402
from harness.eval.scoring import encode_texts, score_blocks  # noqa: E402
from methods.esl import ESLAdapter  # noqa: E402
from methods.xdim import XDimAdapter  # noqa: E402
from methods.xdim.model import XDimHead, official_rows, xdim_pair_scores, xdim_pair_scores_fast  # noqa: E402

EMBED, IMG_DIM, REGIONS = 64, 48, 6
CAPTIONS = PAIR_CAPTIONS[:10]


class OfficialXDimSimVec:
    """X-Dim `Sim_vec.forward` from a sim_vec state dict: the dependency matrix, then per caption the
    dense diagonal product, region attention, context and projection against all images of the shard.
    (The official code broadcasts the threshold with `repeat(1024, 1)`; here with the table size D.)"""

    def __init__(self, sim_state: Mapping[str, torch.Tensor]):
        self.s = sub(sim_state, "")

    def __call__(self, img_emb: torch.Tensor, cap_emb: torch.Tensor, cap_lens) -> torch.Tensor:
        s = self.s
        dim = s["weights.weight"].shape[0]
        n_image = img_emb.size(0)
        weights = torch.sigmoid(s["weights.weight"][torch18_linspace_index(dim)])
        thres = torch.mean(weights, 1) + s["sim_map.weight"] * torch.std(weights, 1)
        values = torch.exp(s["temp_learnable.weight"]) * (weights - thres.repeat(dim, 1).transpose(0, 1))
        learned = l2n(torch.tanh(torch.exp(values)) * weights, 1)
        diagonal = torch.diag_embed(learned.sum(0))
        smooth = torch.exp(s["temp_scale.weight"])
        sims = []
        for i in range(cap_emb.size(0)):
            n_word = int(cap_lens[i])
            cap_i_expand = cap_emb[i, :n_word, :].unsqueeze(0).repeat(n_image, 1, 1)
            attn = torch.tanh(cap_i_expand @ diagonal @ torch.transpose(img_emb, 1, 2))
            attn = F.leaky_relu(torch.transpose(attn, 1, 2).contiguous(), 0.1)
            attn = torch.transpose(l2n(attn, 2), 1, 2).contiguous()
            attn = F.softmax(attn * smooth, dim=2)
            context = l2n(torch.bmm(attn, img_emb), dim=-1)
            sim_loc = l2n(torch.mul(context, cap_i_expand) @ learned.t(), dim=-1)
            sims.append(sim_loc.sum(-1).mean(dim=1, keepdim=True))
        return torch.cat(sims, 1)


def xdim_official_sims(container: Mapping, regions: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
                       bert_config: dict, shard_size: int = 3) -> np.ndarray:
    img_state, txt_state, sim_state = container["model"]
    return official_style_matrix(OfficialXDimSimVec(sim_state), img_state, txt_state, bert_config, regions, ids,
                                 lengths, shard_size)


pytestmark = pytest.mark.usefixtures("one_thread")


def build(dataset: str = "f30k", alpha: float | None = None, seed: int = 0) -> XDimAdapter:
    """A model moved away from its initial weights; `alpha` sets every row's threshold multiplier."""
    torch.manual_seed(1)
    adapter = XDimAdapter.build("bert", dataset, dict(embed_size=EMBED, img_dim=IMG_DIM, bert=TINY_BERT))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        if alpha is not None:
            adapter.model.sim_vec.sim_map.weight.fill_(alpha)
        adapter.model.sim_vec.temp_learnable.weight.fill_(2.0)
        bn = adapter.model.img_enc.mlp.bns[0]
        bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=g))
    adapter.model.eval()
    return adapter


@pytest.fixture(scope="module")
def regions() -> torch.Tensor:
    return torch.randn(len(CAPTIONS) // 5, REGIONS, IMG_DIM, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module", params=[None, 0.3], ids=["init-alpha", "low-alpha"])
def saved(request, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("xdim") / "checkpoint_24.pth_528.2.tar"
    torch.save(build(alpha=request.param).official_checkpoint(epoch=25, best_rsum=528.2), path)
    return path


def load_raw(path: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


# ---- equivalence with the official algorithm ------------------------------------------------------------

def test_scores_match_official_reference(saved, regions):
    adapter = XDimAdapter.load_official(saved, variant="bert", dataset="f30k")
    tokens = adapter.tokenize(CAPTIONS)
    expected = xdim_official_sims(load_raw(saved), regions, tokens.ids, tokens.lengths, TINY_BERT)
    images, texts = adapter.encode_images(regions), adapter.encode_texts(tokens)
    ours = adapter.score(images, texts).numpy()
    assert ours.shape == (2, 10)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    tiled = score_blocks(adapter, images, encode_texts(adapter, CAPTIONS, batch_size=3), image_tile=1, caption_tile=4)
    np.testing.assert_allclose(tiled, expected, atol=1e-5, rtol=0)
    assert np.ptp(expected) > 1e-2  # not a degenerate matrix


def test_training_form_equals_fast_form(saved):
    """The direct differentiable form (s @ A^T) and the QR form used for evaluation agree."""
    head = XDimAdapter.load_official(saved).model.sim_vec
    g = torch.Generator().manual_seed(5)
    regions = l2n(torch.randn(3, 7, EMBED, generator=g))
    words = l2n(torch.randn(4, 9, EMBED, generator=g))
    lengths = torch.tensor([9, 4, 2, 6])
    agg, diag = head.dependency()
    slow = xdim_pair_scores(regions, words, lengths, agg, diag, head.smooth())
    for blocks in (1, 3, 8):
        gsum, parts = head.projection_factors(blocks)
        fast = xdim_pair_scores_fast(regions, words, lengths, gsum, parts, head.smooth())
        torch.testing.assert_close(fast, slow, rtol=0, atol=2e-6)


def test_factor_cache_follows_parameter_updates(saved):
    head = XDimAdapter.load_official(saved).model.sim_vec
    first = head.projection_factors()
    assert head.projection_factors() is first
    with torch.no_grad():
        head.sim_map.weight.mul_(0.5)
    second = head.projection_factors()
    assert second is not first and not torch.equal(second[0], first[0])


def test_chunked_scoring_equals_one_block(saved, regions):
    adapter = XDimAdapter.load_official(saved)
    images, texts = adapter.encode_images(regions), adapter.encode_texts(adapter.tokenize(CAPTIONS))
    whole = adapter.score(images, texts)
    adapter.score_budget = EMBED * 3
    torch.testing.assert_close(adapter.score(images, texts), whole, rtol=0, atol=1e-5)


def test_load_without_module_prefix(saved, regions, tmp_path):
    raw = load_raw(saved)
    raw["model"] = [{k.removeprefix("module."): v for k, v in s.items()} for s in raw["model"]]
    bare = tmp_path / "bare.pth"
    torch.save(raw, bare)
    a, b = XDimAdapter.load_official(saved), XDimAdapter.load_official(bare)
    tokens = a.tokenize(CAPTIONS[:5])
    torch.testing.assert_close(b.score(b.encode_images(regions), b.encode_texts(tokens)),
                               a.score(a.encode_images(regions), a.encode_texts(tokens)), rtol=0, atol=0)


# ---- container layout and the linspace index -------------------------------------------------------

def test_official_checkpoint_layout(saved):
    raw = load_raw(saved)
    assert set(raw) == {"epoch", "model", "best_rsum", "opt", "Eiters"} and raw["epoch"] == 25
    img, txt, sim = raw["model"]
    assert all(k.startswith("module.") for part in raw["model"] for k in part)
    assert len(img) == 16
    assert {k: tuple(v.shape) for k, v in sim.items()} == {
        "module.weights.weight": (EMBED, EMBED), "module.sim_eval.weight": (1, EMBED),
        "module.temp_scale.weight": (1, 1), "module.sim_map.weight": (1, EMBED),
        "module.temp_learnable.weight": (1, 1)}
    opt = raw["opt"]
    assert isinstance(opt, argparse.Namespace) and not hasattr(opt, "kernel_size")
    assert (opt.data_name, opt.embed_size, opt.vocab_size) == ("f30k_precomp", EMBED, 30522)


def test_head_initialisation_is_official():
    head = XDimHead(1024)
    assert head.temp_scale.weight.item() == pytest.approx(np.log(1 / 0.07))
    assert head.temp_learnable.weight.item() == 4.0
    assert abs(head.sim_map.weight.mean().item() - 2.5) < 0.02 and abs(head.sim_map.weight.std().item() - 0.1) < 0.02


def test_linspace_index_is_every_row_in_order():
    table = torch.nn.Embedding(1024, 2)
    torch.testing.assert_close(official_rows(table), table.weight[torch.arange(1024)])
    modern = torch.linspace(0, 1024, steps=1024, dtype=torch.int)
    if int(torch.__version__.split(".")[0]) >= 2:  # the official call on this torch: one past the end
        assert int(modern[-1]) == 1024
        with pytest.raises(IndexError):
            table(modern.long())


def test_scores_use_the_last_dependency_row(saved):
    """The row a torch >= 2 linspace would skip changes the dependency matrix."""
    head = XDimAdapter.load_official(saved).model.sim_vec
    before, _ = head.dependency()
    with torch.no_grad():
        head.weights.weight[-1].add_(1.0)
    after, _ = head.dependency()
    assert (before[-1] - after[-1]).abs().max() > 1e-3 and torch.equal(before[:-1], after[:-1])


# ---- strict loading errors ------------------------------------------------------------------------------

def one_line_error(path: Path, cls=XDimAdapter, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        cls.load_official(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_wrong_dataset_is_refused(saved):
    assert "trained on f30k" in one_line_error(saved, dataset="coco")


def test_unknown_variant_is_refused(saved):
    assert "variant" in one_line_error(saved, variant="bigru")


def test_truncated_file_is_refused(saved, tmp_path):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(saved.read_bytes()[:1000])
    assert "truncated" in one_line_error(cut)


def test_other_methods_are_refused(saved, tmp_path):
    raw = load_raw(saved)
    raw["model"] = raw["model"][:2]
    esa = tmp_path / "esa.pth"
    torch.save(raw, esa)
    assert "holds 2 state dicts" in one_line_error(esa)
    # an X-Dim file asked as ESL, and an ESL file asked as X-Dim
    assert "X-Dim checkpoint" in one_line_error(saved, cls=ESLAdapter)
    esl = ESLAdapter.build("h", "f30k", dict(embed_size=256, img_dim=IMG_DIM, bert=TINY_BERT))
    esl_path = tmp_path / "esl.pth"
    torch.save(esl.official_checkpoint(epoch=1), esl_path)
    assert "ESL-H checkpoint" in one_line_error(esl_path)


def test_missing_key_is_named(saved, tmp_path):
    raw = load_raw(saved)
    del raw["model"][2]["module.sim_eval.weight"]  # unused in forward, but part of the official file
    broken = tmp_path / "broken.pth"
    torch.save(raw, broken)
    assert "sim_eval.weight" in one_line_error(broken)


# ---- training -----------------------------------------------------------------------------------------

def test_training_steps_reduce_the_loss():
    adapter = build()
    setup = adapter.configure_training({"lr": 2e-3, "word_aug_prob": 0.0, "region_keep": 1.0})
    assert [g["lr"] for g in setup.optimizer.param_groups] == pytest.approx([2e-3, 2e-4, 2e-3, 2e-3])
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, REGIONS, IMG_DIM)).astype(np.float32)
    batch = adapter.make_train_batch(images, CAPTIONS[:6], rng)
    adapter.model.train()
    with torch.no_grad():
        assert float(adapter.train_step(batch, epoch=1)["loss"]) < float(adapter.train_step(batch, epoch=0)["loss"])
    losses = []
    for _ in range(4):
        loss = adapter.train_step(batch, epoch=0)["loss"]
        setup.optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in adapter.model.parameters() if p.grad is not None)
        torch.nn.utils.clip_grad_norm_(adapter.model.parameters(), setup.grad_clip)
        setup.optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_train_scores_match_the_reference_on_the_batch(saved):
    """The training forward (B x B, with gradients) computes the official similarity on its batch."""
    adapter = XDimAdapter.load_official(saved)
    g = torch.Generator().manual_seed(2)
    regions = torch.randn(3, REGIONS, IMG_DIM, generator=g)
    tokens = adapter.tokenize(CAPTIONS[:3])
    scores = adapter.model.train_scores(regions, tokens.ids, tokens.lengths)
    assert scores.requires_grad
    raw = load_raw(saved)
    from test_esl_reference import official_region_features, official_word_features

    img = official_region_features(raw["model"][0], regions)
    cap = official_word_features(raw["model"][1], TINY_BERT, tokens.ids)
    expected = OfficialXDimSimVec(raw["model"][2])(img, cap, tokens.lengths)
    torch.testing.assert_close(scores.detach(), expected, rtol=0, atol=1e-5)
