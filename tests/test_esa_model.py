"""ESA encoders: per-channel softmax pooling, masks, training views, init, and the BiGRU pieces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.common.text_bigru import BiGRUWordEncoder, init_embedding_from_vectors, read_word_vectors
from methods.esa import ESAAdapter
from methods.esa.model import ESAImageEncoder, esa_pool

TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


def test_esa_pool_is_a_per_channel_softmax_over_positions():
    gen = torch.Generator().manual_seed(0)
    feats, logits = torch.randn(2, 5, 3, generator=gen), torch.randn(2, 5, 3, generator=gen)
    out = esa_pool(feats, logits)
    for b in range(2):
        for d in range(3):
            w = torch.exp(logits[b, :, d]) / torch.exp(logits[b, :, d]).sum()
            assert out[b, d].item() == pytest.approx((w * feats[b, :, d]).sum().item(), abs=1e-6)


def test_esa_pool_mask_ignores_dropped_positions_without_renormalising():
    gen = torch.Generator().manual_seed(1)
    feats, logits = torch.randn(1, 6, 4, generator=gen), torch.randn(1, 6, 4, generator=gen)
    keep = torch.tensor([[True, False, True, True, False, True]])
    out = esa_pool(feats, logits, keep)
    feats2, logits2 = feats.clone(), logits.clone()
    feats2[:, [1, 4]] = 100.0
    logits2[:, [1, 4]] = 50.0
    assert torch.allclose(esa_pool(feats2, logits2, keep), out)
    kept = keep[0]
    w = torch.softmax(logits[0, kept], dim=0)  # -10000 logits underflow to exactly 0 weight
    assert torch.allclose(out[0], (w * feats[0, kept]).sum(0), atol=1e-6)


def test_image_views_use_their_own_region_mask():
    enc = ESAImageEncoder(img_dim=12, embed_size=8).eval()
    regions = torch.randn(3, 36, 12)
    keep = torch.ones(2, 3, 36, dtype=torch.bool)
    keep[0, :, 5] = False  # region 5 dropped in view 0 only
    views = enc.views(regions, keep)
    assert views.shape == (6, 8)
    assert torch.allclose(views.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.allclose(views[1::2], enc(regions), atol=1e-6)  # an all-keep view is the eval embedding
    changed = regions.clone()
    changed[:, 5] += 10.0
    again = enc.views(changed, keep)
    assert torch.allclose(again[0::2], views[0::2], atol=1e-6)  # rows 2b: view 0 of image b
    assert not torch.allclose(again[1::2], views[1::2], atol=1e-3)


def test_text_embedding_does_not_depend_on_padding_or_batch(tmp_path):
    for variant in ("bigru", "bert"):
        options = dict(embed_size=16, word_dim=8, img_dim=12, bert=TINY_BERT)
        adapter = ESAAdapter.build(variant, "coco", options)
        caps = ["a dog", "a very long caption about a dog running across a big green field"]
        both = adapter.text_embeddings(caps)
        alone = adapter.text_embeddings(caps[:1])
        assert torch.allclose(both[0], alone[0], atol=1e-6)
        assert torch.allclose(both.norm(dim=1), torch.ones(2), atol=1e-5)
        assert torch.allclose(both, adapter.encode_texts(adapter.tokenize(caps)))


def test_encoding_is_in_eval_mode_and_restores_training_flags():
    adapter = ESAAdapter.build("bigru", "coco", dict(embed_size=16, word_dim=8, img_dim=12))
    adapter.model.train()
    tokens = adapter.tokenize(["a man on a horse", "two cats"])
    a, b = adapter.encode_texts(tokens), adapter.encode_texts(tokens)
    assert torch.equal(a, b) and not a.requires_grad  # no dropout, no grad
    assert all(m.training for m in adapter.model.modules())
    train_a = adapter.model.txt_enc(tokens.ids, tokens.lengths)
    train_b = adapter.model.txt_enc(tokens.ids, tokens.lengths)
    assert not torch.equal(train_a, train_b)  # word dropout 0.1 in training


def test_initialisation_follows_the_official_code():
    adapter = ESAAdapter.build("bert", "coco", dict(embed_size=16, img_dim=12, bert=TINY_BERT))
    img, txt = adapter.model.img_enc, adapter.model.txt_enc
    for layer in (img.fc, img.linear1, txt.linear, txt.linear1):
        r = (6.0 / (layer.in_features + layer.out_features)) ** 0.5
        assert layer.bias.abs().max() == 0 and layer.weight.abs().max() <= r
        assert layer.weight.abs().max() > 0.8 * r  # uniform over the full Xavier range
    gru = ESAAdapter.build("bigru", "f30k", dict(embed_size=16, word_dim=8, img_dim=12)).model.txt_enc
    assert gru.linear1.bias.abs().max() > 0  # BiGRU linear1 keeps PyTorch's default init
    assert gru.embed.weight.shape == (8482, 8)


def test_bigru_word_encoder_handles_empty_captions():
    enc = BiGRUWordEncoder(10, 4, 6)
    out = enc.word_features(torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 0]))
    assert out.shape == (2, 1, 6)


def test_word_vectors_initialise_embedding_rows(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("dog 1 2 3\nhalfpipe 4 5 6\ncat 7 8 9\n")
    vectors = read_word_vectors(path, 3)
    embed = torch.nn.Embedding(4, 3)
    before = embed.weight.detach().clone()
    word2idx = {"dog": 0, "half-pipe": 1, "zebra": 2, "cat/kitten": 3}
    missing = init_embedding_from_vectors(embed, word2idx, vectors)
    assert missing == ["zebra"]
    assert embed.weight[0].tolist() == [1, 2, 3] and embed.weight[1].tolist() == [4, 5, 6]
    assert embed.weight[3].tolist() == [7, 8, 9] and torch.equal(embed.weight[2], before[2])
    path.write_text("dog 1 2\n")
    with pytest.raises(ValueError, match="vectors.txt:1"):
        read_word_vectors(path, 3)


def test_build_options_and_errors():
    with pytest.raises(ValueError, match="esa_star"):
        ESAAdapter.build("esa_star", "coco", {})
    with pytest.raises(ValueError, match="conflicts"):
        ESAAdapter.build("bigru", "coco", {"text": "bert"})
    demo = ESAAdapter.build("bigru", "demo", dict(embed_size=16, word_dim=8, img_dim=12))
    assert demo.options["vocab"] == "coco" and demo.vocab_size == 11354
    assert ESAAdapter.method == "esa" and ESAAdapter.scoring == "embedding"
    emb = demo.image_embeddings(np.zeros((2, 36, 12), np.float32))
    assert emb.shape == (2, 16)
