"""VSL's training objective: SGRAF's hardest-negative triplet loss plus the visual semantic loss.

total = L_triplet + L_VSL, both on the (B, B) score matrix S of a batch (images x captions, positives
on the diagonal).

- L_triplet: VSE++ hinge with margin 0.2, hardest negative per row and column (`max_violation`),
  summed over the batch (shared implementation in methods.common.triplet).
- L_VSL = 10 * (1 - mean_{b,c} min(R_S, R_C) / max(R_S, R_C)), where R_X = soft_rank(X) and C is the
  images' semantic similarity: C[i, j] = mean TF-IDF cosine over the 5 x 5 caption pairs of images i
  and j ("CIDEr" in the paper; a unigram TF-IDF in the code).

`soft_rank` is the official `rank_matrix`, literally: R[b, c] = 1 + sum_{a != c} sigmoid((X[a, b] -
X[b, c]) / T) with T = 0.001 and the exponent clamped to [-50, 50]. For the symmetric C this is the
soft rank of c within row b; for the non-symmetric S it compares column b with S[b, c], a quirk kept
so that training follows the official gradients.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from methods.common.triplet import triplet_costs

VSL_WEIGHT = 10.0
RANK_TEMPERATURE = 1e-3
EXPONENT_CLAMP = 50.0
TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn CountVectorizer's default token pattern


def triplet_loss(scores: torch.Tensor, margin: float = 0.2, max_violation: bool = True) -> torch.Tensor:
    """SGRAF's ContrastiveLoss.triplet_loss: summed hinge costs, diagonal positives."""
    cost_im, cost_s = triplet_costs(scores, margin=margin, hardest_negative=max_violation)
    return cost_s + cost_im


def soft_rank(x: torch.Tensor, temperature: float = RANK_TEMPERATURE) -> torch.Tensor:
    """The official rank_matrix of a square matrix (see the module docstring)."""
    n = x.shape[0]
    if x.ndim != 2 or x.shape[1] != n:
        raise ValueError(f"soft_rank needs a square matrix, got {tuple(x.shape)}")
    diff = x.unsqueeze(-1) - x.unsqueeze(0)  # [a, b, c] = x[a, b] - x[b, c]
    exponent = (-diff / temperature).clamp(-EXPONENT_CLAMP, EXPONENT_CLAMP)
    sig = 1.0 / (1.0 + torch.exp(exponent))
    off_diag = (1 - torch.eye(n, dtype=x.dtype, device=x.device)).unsqueeze(1)  # [a, 0, c]: a != c
    return (off_diag * sig).sum(dim=0) + 1


def visual_semantic_loss(scores: torch.Tensor, semantic: torch.Tensor, weight: float = VSL_WEIGHT,
                         temperature: float = RANK_TEMPERATURE) -> torch.Tensor:
    """weight * (1 - mean(min(R_S, R_C) / max(R_S, R_C))) over all B^2 entries."""
    if scores.shape != semantic.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and semantic matrix {tuple(semantic.shape)} differ")
    r_s = soft_rank(scores, temperature)
    r_c = soft_rank(semantic.to(scores.device), temperature)
    ratio = torch.minimum(r_s, r_c) / torch.maximum(r_s, r_c)
    return weight * (1 - ratio.sum() / scores.shape[0] ** 2)


class TfidfCorpus:
    """TF-IDF of all captions of a training split, as the official data loader fits it.

    scikit-learn's CountVectorizer() + TfidfTransformer() defaults, reimplemented: lower-case, tokens of
    two or more word characters, raw counts, idf = ln((1 + n) / (1 + df)) + 1, rows l2-normalised.
    Kept sparse (the official dense float64 array of COCO's train split would take ~100 GB).
    Caption j belongs to image j // captions_per_image; an image's semantic vector is the sum of the
    TF-IDF rows of its captions, so image_similarity = the mean cosine over all caption pairs.
    """

    def __init__(self, captions: Sequence[str], captions_per_image: int = 5) -> None:
        if captions_per_image < 1 or len(captions) % captions_per_image:
            raise ValueError(f"{len(captions)} captions cannot be grouped {captions_per_image} per image")
        self.captions_per_image = captions_per_image
        self.n_captions = len(captions)
        vocab: dict[str, int] = {}
        indptr, indices, counts = [0], [], []
        for caption in captions:
            row: dict[int, int] = {}
            for token in TOKEN_PATTERN.findall(caption.lower()):
                col = vocab.setdefault(token, len(vocab))
                row[col] = row.get(col, 0) + 1
            indices.extend(row)
            counts.extend(row.values())
            indptr.append(len(indices))
        tf = sp.csr_matrix((np.asarray(counts, dtype=np.float64), np.asarray(indices, dtype=np.int64),
                            np.asarray(indptr, dtype=np.int64)), shape=(len(captions), len(vocab)))
        df = np.bincount(tf.indices, minlength=len(vocab))
        idf = np.log((1.0 + len(captions)) / (1.0 + df)) + 1.0
        tfidf = tf @ sp.diags(idf)
        norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        self.vocabulary = vocab
        self.tfidf = sp.csr_matrix(sp.diags(1.0 / norms) @ tfidf)
        k = captions_per_image
        groups = sp.csr_matrix((np.ones(len(captions)), (np.arange(len(captions)) // k,
                                                         np.arange(len(captions)))))
        self.image_vectors = sp.csr_matrix(groups @ self.tfidf)
        self._index: dict[str, int | None] | None = None
        self._captions = list(captions)

    @property
    def n_images(self) -> int:
        return self.n_captions // self.captions_per_image

    def image_similarity(self, image_ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        """(B, B) float32: C[i, j] = mean cosine of the captions of images ids[i] and ids[j]."""
        ids = np.asarray(image_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_images):
            raise IndexError(f"image ids must lie in [0, {self.n_images}), got {ids.min()}..{ids.max()}")
        u = self.image_vectors[ids]
        c = (u @ u.T).toarray() / float(self.captions_per_image ** 2)
        return torch.from_numpy(c.astype(np.float32))

    def caption_ids(self, captions: Sequence[str]) -> np.ndarray:
        """Caption indices found by text, for loops that pass no indices. A caption text that belongs to
        several images is ambiguous and raises (pass caption ids instead)."""
        if self._index is None:
            index: dict[str, int | None] = {}
            k = self.captions_per_image
            for j, caption in enumerate(self._captions):
                prev = index.get(caption, -1)
                if prev == -1:
                    index[caption] = j
                elif prev is not None and prev // k != j // k:
                    index[caption] = None
            self._index = index
        out = []
        for caption in captions:
            j = self._index.get(caption, -1)
            if j == -1:
                raise KeyError(f"caption not in the VSL training corpus: {caption[:80]!r}")
            if j is None:
                raise KeyError(f"caption {caption[:80]!r} belongs to several images of the training corpus; "
                               "pass caption_ids to make_train_batch")
            out.append(j)
        return np.asarray(out, dtype=np.int64)
