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
    `images` (optional, e.g. a memmap) lets caption_ids resolve texts shared by several images.
    """

    def __init__(self, captions: Sequence[str], captions_per_image: int = 5,
                 images: np.ndarray | None = None) -> None:
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
        self._index: dict[str, list[int]] | None = None
        self._captions = list(captions)
        self.images = images  # (N_img, R, D), optional: tells apart images that share a caption text

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

    def caption_ids(self, captions: Sequence[str], images: np.ndarray | None = None) -> np.ndarray:
        """Caption indices found by text, for training loops that pass no indices. A text that occurs
        under several images is resolved by comparing the batch's region features (`images`, row i for
        caption i) with the corpus images; it raises if that is impossible."""
        if self._index is None:
            index: dict[str, list[int]] = {}
            for j, caption in enumerate(self._captions):
                index.setdefault(caption, []).append(j)
            self._index = index
        k = self.captions_per_image
        out = []
        for i, caption in enumerate(captions):
            found = self._index.get(caption)
            if found is None:
                raise KeyError(f"caption not in the VSL training corpus: {caption[:80]!r}")
            if len({j // k for j in found}) > 1:
                found = self._match_image(caption, found, None if images is None else images[i])
            out.append(found[0])
        return np.asarray(out, dtype=np.int64)

    def _match_image(self, caption: str, found: list[int], regions: np.ndarray | None) -> list[int]:
        if regions is None or self.images is None:
            raise KeyError(f"caption {caption[:80]!r} belongs to several images of the training corpus and "
                           "no image features were given to tell them apart; pass caption_ids")
        k = self.captions_per_image
        same = [j for j in found if np.array_equal(np.asarray(self.images[j // k]), np.asarray(regions))]
        if len({j // k for j in same}) != 1:
            raise KeyError(f"caption {caption[:80]!r} belongs to several images and the batch features match "
                           f"{len(same)} of them; pass caption_ids")
        return same
