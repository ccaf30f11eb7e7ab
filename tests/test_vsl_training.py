"""VSL training pieces: the README recipes' schedule, batches, SAF's per-caption batch norm, a few steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.vsl.adapter import VSLAdapter
from methods.vsl.model import AttentionFiltration

pytestmark = pytest.mark.usefixtures("one_thread")

DIMS = dict(embed_size=24, sim_dim=12, img_dim=16, word_dim=8, num_regions=6)


def captions_for(n_images: int) -> list[str]:
    from harness.data.demo import demo_captions

    return demo_captions()[0][: 5 * n_images]


def test_step_decay_schedule_of_the_readme_recipes():
    adapter = VSLAdapter.build("sgr", "coco", DIMS)
    setup = adapter.configure_training({"lr": 3e-4, "lr_update": 10})
    assert [setup.lr_at_epoch(e)[0] for e in (0, 9, 10, 19, 20)] == pytest.approx([3e-4, 3e-4, 3e-5, 3e-5, 3e-6])
    assert setup.grad_clip == 2.0
    assert isinstance(setup.optimizer, torch.optim.Adam) and len(setup.optimizer.param_groups) == 1
    assert setup.optimizer.param_groups[0]["weight_decay"] == 0
    n_params = sum(p.numel() for p in adapter.model.parameters())
    assert sum(p.numel() for p in setup.optimizer.param_groups[0]["params"]) == n_params


def test_train_batch_is_sorted_and_carries_the_images_semantics():
    adapter = VSLAdapter.build("saf", "demo", DIMS)
    caps = captions_for(4)
    adapter.attach_training_corpus(caps)
    idx = np.array([17, 3, 8, 0])
    images = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 6, 16), np.float32)
    batch = adapter.make_train_batch(images, [caps[i] for i in idx], np.random.default_rng(0), caption_ids=idx)
    lengths = batch.tokens.lengths.tolist()
    assert lengths == sorted(lengths, reverse=True)
    order = [int(batch.images[r, 0, 0]) for r in range(4)]  # rows keep their image with their caption
    image_ids = idx[order] // 5
    assert torch.allclose(batch.semantic, adapter.corpus.image_similarity(image_ids))
    by_text = adapter.make_train_batch(images, [caps[i] for i in idx], np.random.default_rng(0))
    assert torch.equal(by_text.semantic, batch.semantic)


def test_vsl_needs_the_training_corpus():
    adapter = VSLAdapter.build("sgr", "demo", DIMS)
    with pytest.raises(RuntimeError, match="attach_training_corpus"):
        adapter.make_train_batch(np.zeros((1, 6, 16), np.float32), ["a dog"], np.random.default_rng(0))


def test_saf_training_batch_norm_follows_the_per_caption_loop():
    """Official training calls BatchNorm1d(1) once per caption on (images, 1, its L+1 nodes)."""
    torch.manual_seed(0)
    saf = AttentionFiltration(8)
    loop = AttentionFiltration(8)
    loop.load_state_dict(saf.state_dict())
    nodes = torch.randn(5, 3, 4, 8)
    node_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    saf.train()
    loop.train()
    ours = saf(nodes, node_mask)
    for c in range(3):  # the official loop, with nn.BatchNorm1d on each caption's valid nodes
        n = int(node_mask[c].sum())
        emb = nodes[:, c, :n]
        attn = torch.sigmoid(loop.bn(loop.attn_sim_w(emb).permute(0, 2, 1)))
        attn = attn / (attn.abs().sum(dim=-1, keepdim=True) + 1e-8)
        vec = torch.matmul(attn, emb).squeeze(1)
        vec = vec / (vec.pow(2).sum(-1, keepdim=True).sqrt() + 1e-8)
        assert torch.allclose(ours[:, c], vec, atol=1e-6)
    assert torch.allclose(saf.bn.running_mean, loop.bn.running_mean, atol=1e-7)
    assert torch.allclose(saf.bn.running_var, loop.bn.running_var, atol=1e-7)
    assert int(saf.bn.num_batches_tracked) == int(loop.bn.num_batches_tracked) == 3


@pytest.mark.parametrize("variant", ["sgr", "saf"])
def test_a_few_steps_reduce_the_loss(variant):
    torch.manual_seed(0)
    adapter = VSLAdapter.build(variant, "demo", DIMS)
    caps = captions_for(8)
    adapter.attach_training_corpus(caps)
    setup = adapter.configure_training({"lr": 1e-2, "lr_update": 10})
    rng = np.random.default_rng(0)
    idx = np.arange(0, 40, 5)  # one caption of each of the 8 images
    images = rng.random((8, 6, 16)).astype(np.float32)
    batch = adapter.make_train_batch(images, [caps[i] for i in idx], rng, caption_ids=idx)
    adapter.model.train()
    for m in adapter.model.modules():  # deterministic steps
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    losses = []
    for _ in range(20):
        out = adapter.train_step(batch, epoch=0)
        setup.optimizer.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(adapter.model.parameters(), setup.grad_clip)
        setup.optimizer.step()
        losses.append(float(out["loss"].detach()))
        assert float(out["loss"].detach()) == pytest.approx(float(out["triplet"] + out["vsl"]), rel=1e-5)
    assert np.mean(losses[-3:]) < 0.95 * np.mean(losses[:3])


def test_training_loop_writes_an_official_checkpoint(tmp_path):
    from harness.run.training import BEST, train

    torch.manual_seed(0)
    adapter = VSLAdapter.build("sgr", "demo", DIMS)
    caps = captions_for(6)
    adapter.attach_training_corpus(caps)
    images = np.random.default_rng(1).random((6, 6, 16)).astype(np.float32)
    recipe = {"epochs": 1, "batch_size": 10, "lr": 1e-3, "lr_update": 10, "seed": 0}
    train(adapter, images, caps, recipe, tmp_path, log=lambda s: None)
    loaded = VSLAdapter.load_official(tmp_path / BEST, variant="sgr", dataset="demo")
    for a, b in zip(adapter.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.checkpoint_info["epoch"] == 1


def test_reading_the_train_split_fits_its_tfidf_and_resolves_shared_captions(tmp_path):
    """The job runner reads the train split through train_data; VSL fits the TF-IDF there (as the official
    dataset does) and tells apart images that share a caption text by their features."""
    caps = captions_for(3)
    caps[12] = caps[2]  # image 2 gets a caption of image 0
    images = np.random.default_rng(0).random((3, 6, 16)).astype(np.float32)
    np.save(tmp_path / "train_ims.npy", images)
    (tmp_path / "train_caps.txt").write_text("\n".join(caps) + "\n")
    adapter = VSLAdapter.build("sgr", "demo", DIMS)
    data = adapter.train_data(tmp_path)
    assert data.captions == caps and data.image_of_caption is None
    assert adapter.corpus is not None and adapter.corpus.n_images == 3
    batch = adapter.make_train_batch(images[[2, 0]], [caps[12], caps[2]], np.random.default_rng(0))
    expected = adapter.make_train_batch(images[[2, 0]], [caps[12], caps[2]], np.random.default_rng(0),
                                        caption_ids=[12, 2])
    assert torch.equal(batch.semantic, expected.semantic)
    assert batch.semantic[0, 1] < batch.semantic[0, 0]


def test_warmup_epochs_sum_every_negative_before_hardest_negatives():
    torch.manual_seed(0)
    adapter = VSLAdapter.build("saf", "demo", DIMS)
    caps = captions_for(4)
    adapter.attach_training_corpus(caps)
    adapter.configure_training({"warmup_epochs": 1})
    idx = np.array([0, 5, 10, 15])
    batch = adapter.make_train_batch(np.random.default_rng(0).random((4, 6, 16)).astype(np.float32),
                                     [caps[i] for i in idx], np.random.default_rng(0), caption_ids=idx)
    adapter.model.eval()  # same scores in both calls
    with torch.no_grad():
        warm, hard = adapter.train_step(batch, epoch=0), adapter.train_step(batch, epoch=1)
    assert float(warm["triplet"]) > float(hard["triplet"]) > 0
