"""Word-level caption augmentation (methods.common.augment) and ESA's training batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.common.augment import augment_word_ids, augment_word_pieces
from methods.common.text_bert import bert_tokenize
from methods.common.vocab import END, START
from methods.esa import ESAAdapter

N = 40_000
KEEP, MASK = 5, 7
VOCAB = 10**9  # random ids practically never collide with KEEP or MASK


def test_word_id_statistics():
    out = np.array(augment_word_ids([KEEP] * N, np.random.default_rng(0), mask_id=MASK, vocab_size=VOCAB))
    kept, masked = (out == KEEP).sum() / N, (out == MASK).sum() / N
    randomised = ((out != KEEP) & (out != MASK)).sum() / N
    deleted = 1 - len(out) / N
    tol = 4 * np.sqrt(0.2 * 0.8 / N)  # ~4 standard errors
    assert kept == pytest.approx(0.8, abs=tol)
    assert masked == pytest.approx(0.2 * 0.5, abs=tol)
    assert randomised == pytest.approx(0.2 * 0.1, abs=tol)
    assert deleted == pytest.approx(0.2 * 0.4, abs=tol)
    assert out.max() < VOCAB and out.min() >= 0


def test_word_piece_statistics_act_on_whole_words():
    a, b, c = 20, 21, 22
    words = [[a, b, c]] * (N // 3)
    out = augment_word_pieces(words, np.random.default_rng(1), mask_id=MASK, vocab_size=VOCAB)
    n_words = len(words)
    # masked words contribute 3 consecutive [MASK]; deleted words vanish; kept words stay whole
    text = " ".join(map(str, out))
    masked_words = text.count(f"{MASK} {MASK} {MASK}")
    kept_words = text.count(f"{a} {b} {c}")
    assert out.count(MASK) == 3 * masked_words
    assert out.count(a) == out.count(b) == out.count(c) == kept_words
    random_pieces = len(out) - 3 * masked_words - 3 * kept_words
    assert random_pieces % 3 == 0  # every piece of a randomised word is replaced
    deleted_words = n_words - masked_words - kept_words - random_pieces // 3
    tol = 4 * np.sqrt(0.2 * 0.8 / n_words)
    assert kept_words / n_words == pytest.approx(0.8, abs=tol)
    assert masked_words / n_words == pytest.approx(0.1, abs=tol)
    assert random_pieces / 3 / n_words == pytest.approx(0.02, abs=tol)
    assert deleted_words / n_words == pytest.approx(0.08, abs=tol)


def test_probability_zero_is_identity_and_rng_is_reproducible():
    ids = list(range(50))
    assert augment_word_ids(ids, np.random.default_rng(0), mask_id=1, vocab_size=9, prob=0.0) == ids
    a = augment_word_ids(ids, np.random.default_rng(5), mask_id=1, vocab_size=100)
    b = augment_word_ids(ids, np.random.default_rng(5), mask_id=1, vocab_size=100)
    assert a == b and a != ids


CAPTIONS = ["A man riding a wave on top of a surfboard.", "Two giraffes standing in a grassy field",
            "a bowl of soup", "The kitchen has white cabinets and a black stove."]


def test_bigru_batch_interleaves_two_copies_per_caption():
    adapter = ESAAdapter.build("bigru", "coco", dict(embed_size=16, word_dim=8, img_dim=24))
    adapter.configure_training({"word_aug_prob": 0.0})
    imgs = np.random.default_rng(0).standard_normal((4, 36, 24)).astype(np.float32)
    batch = adapter.make_train_batch(imgs, CAPTIONS, np.random.default_rng(0))
    plain = adapter.tokenize(CAPTIONS)
    assert batch.tokens.ids.shape[0] == 8 and batch.region_keep.shape == (2, 4, 36)
    for b in range(4):
        for copy in (2 * b, 2 * b + 1):
            assert torch.equal(batch.tokens[[copy]].ids, plain[[b]].ids)
    assert torch.equal(batch.images, torch.from_numpy(imgs))


def test_bigru_batch_augments_each_copy_independently():
    adapter = ESAAdapter.build("bigru", "coco", dict(embed_size=16, word_dim=8, img_dim=24))
    adapter.configure_training({"hardnum": 2})
    imgs = np.zeros((64, 36, 24), dtype=np.float32)
    caps = [CAPTIONS[0]] * 64
    batch = adapter.make_train_batch(imgs, caps, np.random.default_rng(3))
    rows = [batch.tokens.ids[i, : batch.tokens.lengths[i]].tolist() for i in range(128)]
    assert sum(rows[2 * b] != rows[2 * b + 1] for b in range(64)) > 40  # the two copies differ
    mask_id = adapter.vocab("<mask>")
    assert mask_id == len(adapter.vocab) - 1
    assert any(mask_id in r for r in rows)
    assert any(r[0] != START or r[-1] != END for r in rows)  # <start>/<end> can be augmented too
    keep = batch.region_keep.float().mean().item()
    assert keep == pytest.approx(0.8, abs=0.02)
    assert not torch.equal(batch.region_keep[0], batch.region_keep[1])


def test_bert_batch_wraps_augmented_pieces():
    adapter = ESAAdapter.build("bert", "coco", dict(embed_size=16, img_dim=24, bert=dict(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)))
    adapter.configure_training({"word_aug_prob": 0.0})
    imgs = np.zeros((4, 36, 24), dtype=np.float32)
    batch = adapter.make_train_batch(imgs, CAPTIONS, np.random.default_rng(0))
    plain = bert_tokenize(CAPTIONS)
    for b in range(4):
        assert torch.equal(batch.tokens[[2 * b]].ids, plain[[b]].ids)
        assert torch.equal(batch.tokens[[2 * b + 1]].ids, plain[[b]].ids)
    adapter.configure_training({})
    batch = adapter.make_train_batch(np.zeros((32, 36, 24), np.float32), [CAPTIONS[3]] * 32,
                                     np.random.default_rng(1))
    for i in range(64):
        row = batch.tokens.ids[i, : batch.tokens.lengths[i]].tolist()
        assert row[0] == 101 and row[-1] == 102  # [CLS] ... [SEP] added after augmentation
    assert (batch.tokens.ids == 103).any()  # [MASK]
