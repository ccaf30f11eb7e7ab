"""Blockwise scoring engine: tiling, HDF5 tile cache, resume after a kill, cache mismatch."""

import numpy as np
import pytest
import torch
from torch import nn

from harness.api import Adapter, PaddedFeatures
from harness.eval.scoring import CacheError, encode_images, encode_texts, score_blocks, similarity_matrix
from methods.common.text_bert import pad_ids


class BagOfWords(Adapter):
    """A tiny real adapter for engine tests: mean region projection vs mean word embedding."""

    method = "test"
    scoring = "embedding"

    def __init__(self, pairwise: bool = False):
        torch.manual_seed(0)
        self.model = nn.ModuleDict({"img": nn.Linear(6, 4), "txt": nn.Embedding(50, 4)})
        self.variant, self.dataset, self.options = "x", "demo", {}
        if pairwise:
            self.scoring = "pairwise"

    @classmethod
    def build(cls, variant, dataset, options=None):
        return cls()

    @classmethod
    def load_official(cls, path, *, variant=None, dataset=None):
        raise NotImplementedError

    def tokenize(self, captions):
        return pad_ids([[1 + (hash(w) % 49) for w in c.split()] for c in captions])

    def encode_images(self, images):
        return self.model["img"](images).mean(1)

    def encode_texts(self, texts):
        feats = self.model["txt"](texts.ids)
        return PaddedFeatures(feats, texts.lengths) if self.scoring == "pairwise" else feats.sum(1)

    def score(self, image_block, text_block):
        if self.scoring == "pairwise":  # max over words of the word-image product, per pair
            return torch.einsum("id,cld->icl", image_block, text_block.feats).amax(-1)
        return image_block @ text_block.T


def data(n_img=9, n_cap=45):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n_img, 3, 6)).astype(np.float32)
    words = "a man dog red ball on grass runs with the".split()
    caps = [" ".join(rng.choice(words, size=rng.integers(2, 7))) for _ in range(n_cap)]
    return images, caps


@pytest.mark.parametrize("pairwise", [False, True])
def test_tiles_equal_one_full_block(pairwise):
    adapter = BagOfWords(pairwise)
    images, caps = data()
    img, txt = encode_images(adapter, images, batch_size=4), encode_texts(adapter, caps, batch_size=7)
    full = score_blocks(adapter, img, txt, image_tile=100, caption_tile=100)
    tiled = score_blocks(adapter, img, txt, image_tile=2, caption_tile=8)
    np.testing.assert_allclose(tiled, full, atol=1e-6)
    with torch.no_grad():
        direct = adapter.score(img, txt[:]).numpy()  # a packed store slices to one padded block
    np.testing.assert_allclose(full, direct, atol=1e-6)


def test_killed_run_resumes_at_missing_tiles(tmp_path):
    adapter = BagOfWords(pairwise=True)
    images, caps = data()
    img, txt = encode_images(adapter, images), encode_texts(adapter, caps)
    cache = tmp_path / "tiles.h5"
    seen = []

    def kill_after_three(a, c):
        seen.append((a, c))
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_blocks(adapter, img, txt, image_tile=4, caption_tile=10, cache=cache, on_tile=kill_after_three)
    calls = []
    original = adapter.score
    adapter.score = lambda i, t: calls.append(1) or original(i, t)
    resumed = score_blocks(adapter, img, txt, image_tile=4, caption_tile=10, cache=cache)
    n_tiles = 3 * 5
    assert len(calls) == n_tiles - 3  # the three finished tiles were read back, not recomputed
    adapter.score = original
    uninterrupted = score_blocks(adapter, img, txt, image_tile=4, caption_tile=10)
    np.testing.assert_array_equal(resumed, uninterrupted)


def test_cache_of_another_model_is_refused(tmp_path):
    adapter = BagOfWords()
    images, caps = data()
    cache = tmp_path / "tiles.h5"
    similarity_matrix(adapter, images, caps, cache=cache, image_tile=4, caption_tile=10)
    with torch.no_grad():
        adapter.model["img"].weight.add_(1.0)
    with pytest.raises(CacheError, match="another computation"):
        similarity_matrix(adapter, images, caps, cache=cache, image_tile=4, caption_tile=10)


def test_wrong_tile_shape_is_an_error():
    adapter = BagOfWords()
    images, caps = data()
    img, txt = encode_images(adapter, images), encode_texts(adapter, caps)
    adapter.score = lambda i, t: torch.zeros(1, 1)
    with pytest.raises(ValueError, match="returned shape"):
        score_blocks(adapter, img, txt)
