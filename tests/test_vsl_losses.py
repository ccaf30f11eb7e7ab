"""VSL's losses and semantic matrix against brute-force computations of their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from methods.vsl.losses import TfidfCorpus, soft_rank, triplet_loss, visual_semantic_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_sigmoid(x: float, temperature: float) -> float:
    exponent = min(50.0, max(-50.0, -x / temperature))
    return 1.0 / (1.0 + math.exp(exponent))


def brute_rank(x: np.ndarray, temperature: float) -> np.ndarray:
    """R[b, c] = 1 + sum over a != c of sigmoid((X[a, b] - X[b, c]) / T), loop by loop."""
    n = x.shape[0]
    out = np.ones((n, n))
    for b in range(n):
        for c in range(n):
            for a in range(n):
                if a != c:
                    out[b, c] += brute_sigmoid(x[a, b] - x[b, c], temperature)
    return out


def brute_vsl(s: np.ndarray, c: np.ndarray, temperature: float) -> float:
    rs, rc = brute_rank(s, temperature), brute_rank(c, temperature)
    n = s.shape[0]
    total = sum(min(rs[i, j], rc[i, j]) / max(rs[i, j], rc[i, j]) for i in range(n) for j in range(n))
    return 10 * (1 - total / n ** 2)


def brute_triplet(s: np.ndarray, margin: float) -> float:
    n = s.shape[0]
    total = 0.0
    for i in range(n):  # image i as query: hardest caption negative in its row
        total += max([max(0.0, margin + s[i, j] - s[i, i]) for j in range(n) if j != i] + [0.0])
    for j in range(n):  # caption j as query: hardest image negative in its column
        total += max([max(0.0, margin + s[i, j] - s[j, j]) for i in range(n) if i != j] + [0.0])
    return total


@pytest.mark.parametrize("temperature", [1e-3, 0.05])
def test_soft_rank_matches_definition_on_non_symmetric_input(temperature):
    rng = np.random.default_rng(0)
    x = rng.random((6, 6))
    ours = soft_rank(torch.tensor(x), temperature).numpy()
    assert np.allclose(ours, brute_rank(x, temperature), atol=1e-10)


def test_soft_rank_of_symmetric_matrix_ranks_within_rows():
    """With a tiny temperature and distinct values, row b of a symmetric C holds the hard ranks (1 = the
    largest off-diagonal comparison set) of C[b, c] among the column b entries except row c."""
    rng = np.random.default_rng(1)
    a = rng.random((5, 5))
    c = (a + a.T) / 2
    ranks = soft_rank(torch.tensor(c), 1e-6).numpy()
    for b in range(5):
        for j in range(5):
            expected = 1 + sum(1 for i in range(5) if i != j and c[i, b] > c[b, j])
            assert ranks[b, j] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("temperature", [1e-3, 0.1])
def test_visual_semantic_loss_matches_brute_force(temperature):
    rng = np.random.default_rng(2)
    s = rng.random((5, 5))
    a = rng.random((5, 5))
    c = (a + a.T) / 2
    ours = visual_semantic_loss(torch.tensor(s), torch.tensor(c), temperature=temperature)
    assert float(ours) == pytest.approx(brute_vsl(s, c, temperature), abs=1e-9)


def test_visual_semantic_loss_is_zero_when_rankings_agree_and_has_gradients():
    rng = np.random.default_rng(3)
    a = rng.random((4, 4))
    c = torch.tensor((a + a.T) / 2)
    assert float(visual_semantic_loss(c.clone(), c)) == pytest.approx(0.0, abs=1e-12)
    s = torch.tensor(rng.random((4, 4)), requires_grad=True)
    loss = visual_semantic_loss(s, c, temperature=0.1)
    loss.backward()
    assert float(loss.detach()) > 0 and s.grad.abs().sum() > 0


def test_triplet_loss_matches_brute_force():
    rng = np.random.default_rng(4)
    s = rng.random((6, 6))
    assert float(triplet_loss(torch.tensor(s), 0.2, True)) == pytest.approx(brute_triplet(s, 0.2), abs=1e-12)
    all_negatives = sum(max(0.0, 0.2 + s[i, j] - s[i, i]) + max(0.0, 0.2 + s[i, j] - s[j, j])
                        for i in range(6) for j in range(6) if i != j)
    assert float(triplet_loss(torch.tensor(s), 0.2, False)) == pytest.approx(all_negatives, abs=1e-12)


CORPUS = [
    "A man rides a horse on the beach .", "a horse and its rider near the sea", "man riding horse",
    "The horse walks on sand .", "a person on a brown horse",
    "Two cats sleep on a sofa .", "cats on the couch", "two sleeping cats", "a pair of cats resting",
    "kittens asleep on a couch",
    "a plate of pizza", "pizza on a plate on the table", "a slice of pizza", "Pizza !", "food on a plate",
]


def brute_tfidf(captions: list[str]) -> tuple[dict[str, int], np.ndarray]:
    """scikit-learn's default TF-IDF, written out: lower-case, tokens of 2+ word chars, smooth idf, l2."""
    import re

    docs = [re.findall(r"(?u)\b\w\w+\b", c.lower()) for c in captions]
    vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
    tf = np.zeros((len(docs), len(vocab)))
    for r, d in enumerate(docs):
        for w in d:
            tf[r, vocab[w]] += 1
    df = (tf > 0).sum(axis=0)
    x = tf * (np.log((1 + len(docs)) / (1 + df)) + 1)
    return vocab, x / np.linalg.norm(x, axis=1, keepdims=True)


def test_tfidf_matches_definition_and_official_avg_pool():
    corpus = TfidfCorpus(CORPUS, captions_per_image=5)
    vocab, dense = brute_tfidf(CORPUS)
    assert set(corpus.vocabulary) == set(vocab)
    ours = corpus.tfidf.toarray()[:, [corpus.vocabulary[w] for w in vocab]]
    assert np.allclose(ours, dense, atol=1e-12)
    ids = [2, 0, 0, 1]  # an image can repeat within a batch
    rows = np.concatenate([dense[5 * i: 5 * i + 5] for i in ids])  # (5B, V), as tfidf_for_image
    cos = rows @ rows.T
    pooled = cos.reshape(4, 5, 4, 5).mean(axis=(1, 3))  # AvgPool2d(5, stride 5)
    got = corpus.image_similarity(ids).numpy()
    assert got.dtype == np.float32 and np.allclose(got, pooled, atol=1e-6)
    assert got[1, 1] > got[1, 0]  # an image's captions agree with each other more than with pizza


def test_tfidf_matches_scikit_learn_when_available():
    text = pytest.importorskip("sklearn.feature_extraction.text")
    x = text.TfidfTransformer().fit_transform(text.CountVectorizer().fit_transform(CORPUS)).toarray()
    corpus = TfidfCorpus(CORPUS)
    assert np.allclose(corpus.tfidf.toarray() @ corpus.tfidf.toarray().T, x @ x.T, atol=1e-12)


def test_caption_lookup_by_text():
    images = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 3), np.float32)
    corpus = TfidfCorpus(CORPUS + ["man riding horse"] * 5, images=images)  # a text of two images
    assert corpus.caption_ids(["cats on the couch", "Pizza !"]).tolist() == [6, 13]
    assert corpus.caption_ids(["man riding horse"], images[[3]]).tolist() == [15]  # told apart by features
    assert corpus.caption_ids(["man riding horse"], images[[0]]).tolist() == [2]
    with pytest.raises(KeyError, match="several images"):
        corpus.caption_ids(["man riding horse"])
    with pytest.raises(KeyError, match="match 0 of them"):
        corpus.caption_ids(["man riding horse"], images[[1]])
    with pytest.raises(KeyError, match="not in the VSL training corpus"):
        corpus.caption_ids(["an unseen caption"])
    with pytest.raises(ValueError, match="cannot be grouped"):
        TfidfCorpus(CORPUS[:7])
