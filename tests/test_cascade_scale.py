"""Scale rehearsal (issue 23 item 5): a stub pairwise adapter reranks a shortlist at COCO 5K shape,
5,000 images x 25,000 captions, K = 64, in seconds and without a dense matrix."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from harness.api import Adapter
from harness.eval.cascade_metrics import cascade_recall, direction_ranks
from harness.eval.rerank import score_pairs
from harness.eval.shortlist import CascadeResult, build_shortlist, candidate_pairs, vector_blocks

N_IMG, N_CAP, DIM, K = 5000, 25000, 16, 64


class StubPairwise(Adapter):
    """Pairwise in name and in how the harness drives it; scores inner products of fixed vectors."""

    method: ClassVar[str] = "stub-pairwise"
    scoring: ClassVar[Any] = "pairwise"

    def __init__(self) -> None:
        self.variant, self.dataset, self.options = "a", "coco", {}
        self.model = torch.nn.Linear(1, 1)
        self.calls = 0

    @classmethod
    def build(cls, variant, dataset, options=None):
        return cls()

    @classmethod
    def load_official(cls, path, *, variant=None, dataset=None):
        return cls()

    def tokenize(self, captions):
        return captions

    def encode_images(self, images):
        return images

    def encode_texts(self, texts):
        return texts

    def score(self, image_block, text_block):
        self.calls += 1
        return image_block @ text_block.T


def test_stub_pairwise_cascade_at_coco5k_shape(one_thread):
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(N_IMG, DIM, generator=g), dim=1)
    owner = np.arange(N_CAP) // 5
    txt = torch.nn.functional.normalize(img[owner] + 0.12 * torch.randn(N_CAP, DIM, generator=g), dim=1)
    stage1 = txt + 0.05 * torch.randn(N_CAP, DIM, generator=g)  # a noisier stage 1 than stage 2
    sl = build_shortlist(vector_blocks(img, stage1), N_IMG, N_CAP, K, "stub embedding")
    indptr, cols = candidate_pairs(sl)
    adapter = StubPairwise()
    scores = score_pairs(adapter, img, txt, indptr, cols, pair_tile=1 << 16)
    assert N_IMG <= adapter.calls <= N_IMG + -(-len(cols) // (1 << 16))  # per image (split at tile edges)
    res = CascadeResult.of(sl, indptr, cols, scores)
    out = cascade_recall(res, owner)
    assert N_IMG * K + N_CAP * K >= res.pairs_scored >= N_CAP * K
    assert res.pairs_total / res.pairs_scored >= 20  # the target at K = 64
    # exact ranks of a sample of queries from dense rows: equal wherever the positive is in the shortlist
    rows = np.arange(0, N_IMG, 50)
    dense = (img[rows] @ txt.T).numpy()
    best = np.array([dense[r, 5 * i:5 * i + 5].max() for r, i in enumerate(rows)])
    exact = (dense > best[:, None]).sum(1)
    inside = (owner[sl.i2t[rows]] == rows[:, None]).any(1)
    assert inside.mean() > 0.9
    got, _, known = direction_ranks(res.i2t_scores[rows], owner[res.i2t_index[rows]] == rows[:, None])
    np.testing.assert_array_equal(known, inside)
    np.testing.assert_array_equal(got[inside], exact[inside])
    assert 0 < out["i2t"]["r1"] < 100 and out["rsum"] is not None
    assert out["ceiling"]["i2t"] > 90.0 and out["ceiling"]["t2i"] > 90.0
