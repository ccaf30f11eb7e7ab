"""BiGRU caption encoder pieces: word embedding + 1-layer bidirectional GRU over packed sequences.

Keys follow the official VSE-family code (`embed.weight`, `rnn.*`), so official state dicts load
strictly. The two GRU directions are averaged, giving one `embed_size` vector per word.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class BiGRUWordEncoder(nn.Module):
    """ids (B, L) + lengths (B,) -> per-word features (B, max(lengths), embed_size).

    `word_dropout` is the dropout on word embeddings used during training (ESA: 0.1; 0 disables it).
    """

    def __init__(self, vocab_size: int, word_dim: int, embed_size: int, num_layers: int = 1,
                 word_dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=True)
        self.word_dropout = nn.Dropout(word_dropout)

    def word_features(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.to(torch.long).clamp(min=1)  # empty captions still get one (pad) step
        width = int(lengths.max())
        if ids.shape[1] < width:  # all captions empty (augmentation deleted every word): one pad step
            ids = torch.cat([ids, ids.new_zeros(ids.shape[0], width - ids.shape[1])], dim=1)
        x = self.word_dropout(self.embed(ids[:, :width]))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=width)
        half = out.shape[-1] // 2
        return (out[..., :half] + out[..., half:]) / 2


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) bool: True at positions < length."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths.to(torch.long)[:, None]


def read_word_vectors(path: str | Path, dim: int) -> dict[str, torch.Tensor]:
    """A GloVe-style text file (`word v1 ... v_dim` per line) as {word: vector}; errors name the file."""
    path = Path(path)
    vectors: dict[str, torch.Tensor] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if len(parts) < dim + 1:
                raise ValueError(f"{path}:{n}: expected a word and {dim} numbers, found {len(parts)} fields")
            word = " ".join(parts[:-dim])  # GloVe 840B has a few words containing spaces
            vectors[word] = torch.tensor([float(v) for v in parts[-dim:]])
    return vectors


def init_embedding_from_vectors(embed: nn.Embedding, word2idx: Mapping[str, int],
                                vectors: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy pretrained vectors into `embed` rows; a word not found is retried without '-', '.', "'"
    and then with the part before '/'. Rows of missing words keep their initial values.
    Returns the missing words."""
    missing = []
    with torch.no_grad():
        for word, idx in word2idx.items():
            key = word
            if key not in vectors:
                key = key.replace("-", "").replace(".", "").replace("'", "")
                if "/" in key:
                    key = key.split("/")[0]
            if key in vectors:
                embed.weight[idx] = vectors[key]
            else:
                missing.append(word)
    return missing
