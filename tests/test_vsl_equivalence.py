"""Our VSL scoring vs an independent official-style evaluation, on official-layout checkpoints.

Checkpoints are built from randomly initialised models (small dims, random batch-norm statistics),
written in the official container layout with torch.save and loaded back through load_official.
Captions are real COCO captions (the demo assets, CC BY 4.0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_vsl_reference import official_similarity

from harness.eval.scoring import encode_images, encode_texts, score_blocks, similarity_matrix
from methods.vsl.adapter import VSLAdapter, mean_matrix
from methods.vsl.model import length_mask

pytestmark = pytest.mark.usefixtures("one_thread")

DIMS = dict(embed_size=32, sim_dim=16, img_dim=24, word_dim=8)
N_IMAGES = 6


def demo_captions(n_images: int) -> list[str]:
    from harness.data.demo import demo_captions as read

    return read()[0][: 5 * n_images]


def randomize_batch_norms(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(1 + 0.3 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(n, generator=g))


def official_file(tmp_path, variant: str, seed: int, dataset: str = "coco") -> str:
    torch.manual_seed(seed)
    adapter = VSLAdapter.build(variant, dataset, DIMS)
    randomize_batch_norms(adapter.model, seed)
    with torch.no_grad():  # spread the scores out so that a 1e-5 tolerance is a sharp test
        adapter.model.sim_enc.sim_eval_w.weight.mul_(30.0)
    path = tmp_path / f"{variant.upper()}+VSL_{dataset.upper()}.pth.tar"
    torch.save(adapter.official_checkpoint(epoch=7, best_rsum=400.0, Eiters=123), path)
    return str(path)


def regions(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((n, 36, DIMS["img_dim"])), 0).astype(np.float32)


def reference(path: str, adapter: VSLAdapter, images: np.ndarray, captions: list[str],
              shard_size: int) -> np.ndarray:
    container = torch.load(path, weights_only=False)  # the official code's own (trusted) load
    tokens = adapter.tokenize(captions)
    ids = [tokens.ids[i, : int(tokens.lengths[i])].tolist() for i in range(len(captions))]
    return official_similarity(container, images, ids, shard_size=shard_size)


@pytest.mark.parametrize("variant", ["sgr", "saf"])
def test_matrix_matches_official_evaluation(tmp_path, variant):
    path = official_file(tmp_path, variant, seed=1)
    adapter = VSLAdapter.load_official(path, variant=variant, dataset="coco")
    images, captions = regions(N_IMAGES, 2), demo_captions(N_IMAGES)
    ours = similarity_matrix(adapter, images, captions, batch_size=7, image_tile=4, caption_tile=11)
    ref = reference(path, adapter, images, captions, shard_size=4)
    assert ours.shape == ref.shape == (N_IMAGES, 5 * N_IMAGES)
    assert np.abs(ours - ref).max() < 1e-5
    assert ref.std() > 0.02  # the scores differ between pairs, so the comparison means something


def test_matrix_independent_of_tiles_chunks_and_padding(tmp_path):
    """Internal chunking, harness tiling and extra padding do not change any score."""
    adapter = VSLAdapter.load_official(official_file(tmp_path, "sgr", seed=3))
    images, captions = regions(N_IMAGES, 4), demo_captions(N_IMAGES)
    img = encode_images(adapter, images, batch_size=5)
    txt = encode_texts(adapter, captions, batch_size=9)
    whole = score_blocks(adapter, img, txt, image_tile=100, caption_tile=100)
    tiled = score_blocks(adapter, img, txt, image_tile=1, caption_tile=3)
    with torch.no_grad():
        txt = txt[:]  # the packed store as one block padded to its longest caption
        lengths = txt.lengths - 1
        padded = torch.cat([txt.feats, torch.randn(len(txt), 5, txt.feats.shape[2])], dim=1)  # junk past ends
        mask = length_mask(lengths, padded.shape[1] - 1)
        adapter.model.eval()
        chunked = adapter.model.sim_enc.pair_scores(img[:, 1:], img[:, 0], padded[:, 1:], padded[:, 0], mask,
                                                    chunk_elements=500).numpy()
    assert np.abs(whole - tiled).max() < 1e-6
    assert np.abs(whole - chunked).max() < 1e-6


def test_sgraf_is_mean_of_members_matching_official(tmp_path):
    sgr = VSLAdapter.load_official(official_file(tmp_path, "sgr", seed=5, dataset="f30k"))
    saf_path = official_file(tmp_path, "saf", seed=6, dataset="f30k")
    saf = VSLAdapter.load_official(saf_path, dataset="f30k")
    images, captions = regions(3, 7), demo_captions(3)
    a = similarity_matrix(sgr, images, captions)
    b = similarity_matrix(saf, images, captions)
    ref_b = reference(saf_path, saf, images, captions, shard_size=100)
    both = mean_matrix(a, b)
    assert both.dtype == np.float64
    assert np.allclose(both, (a.astype(np.float64) + b) / 2)
    assert np.abs(b - ref_b).max() < 1e-5
    with pytest.raises(ValueError, match="differ in shape"):
        mean_matrix(a, b[:, :-1])


def test_unknown_words_map_to_unk_and_scores_still_match(tmp_path):
    """Captions with out-of-vocabulary words and internal sentence ends, through the whole pipeline."""
    path = official_file(tmp_path, "saf", seed=8)
    adapter = VSLAdapter.load_official(path)
    captions = ["a zzqxv sits on the st. mark bench .", "a t.v . is on .", "Old luggage cases. One is brown.",
                "two dogs", "a sign that says p.i.n.k. on a wall"]
    tokens = adapter.tokenize(captions)
    assert (tokens.ids[0] == 3).any()  # <unk>
    images = regions(1, 9)
    ours = similarity_matrix(adapter, images, captions)
    ref = reference(path, adapter, images, captions, shard_size=100)
    assert np.abs(ours - ref).max() < 1e-5
