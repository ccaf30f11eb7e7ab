"""SCAN precomp vocabularies and the BiGRU caption tokenisation of the official data loaders.

The vocabularies are the real SCAN json files (bundled in harness/assets/vocab). Ids 0..3 are
<pad>, <start>, <end>, <unk>. ESA appends a <mask> row after loading; VSL/SGRAF do not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from methods.base import PaddedTokens
from methods.common.text_bert import pad_ids

VOCAB_DIR = Path(__file__).resolve().parents[2] / "harness" / "assets" / "vocab"
PAD, START, END, UNK = 0, 1, 2, 3


@dataclass
class Vocabulary:
    word2idx: dict[str, int]
    idx2word: dict[int, str]
    source: str = ""
    extra: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.word2idx)

    def __call__(self, word: str) -> int:
        return self.word2idx.get(word, UNK)

    def add_word(self, word: str) -> None:
        if word not in self.word2idx:
            idx = len(self.word2idx)
            self.word2idx[word] = idx
            self.idx2word[idx] = word
            self.extra.append(word)


def read_vocab_json(path: str | Path) -> Vocabulary:
    """A SCAN vocabulary json ({idx2word, word2idx, idx}); errors name the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        word2idx = {str(w): int(i) for w, i in raw["word2idx"].items()}
        idx2word = {int(i): str(w) for i, w in raw["idx2word"].items()}
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: vocabulary file not found") from exc
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a SCAN vocabulary json (need word2idx/idx2word): {exc}") from exc
    if sorted(word2idx.values()) != list(range(len(word2idx))):
        raise ValueError(f"{path}: vocabulary ids are not 0..{len(word2idx) - 1}")
    return Vocabulary(word2idx, idx2word, source=str(path))


@lru_cache(maxsize=8)
def _cached(dataset: str) -> Vocabulary:
    names = {"coco": "coco_precomp_vocab.json", "f30k": "f30k_precomp_vocab.json"}
    if dataset not in names:
        raise ValueError(f"no SCAN vocabulary for dataset {dataset!r}; valid: coco, f30k")
    return read_vocab_json(VOCAB_DIR / names[dataset])


def load_scan_vocab(dataset: str, add_mask: bool = False) -> Vocabulary:
    """The real SCAN vocabulary of `dataset` ('coco' or 'f30k'); `add_mask` appends <mask> (ESA)."""
    base = _cached(dataset)
    vocab = Vocabulary(dict(base.word2idx), dict(base.idx2word), source=base.source)
    if add_mask:
        vocab.add_word("<mask>")
    return vocab


def scan_tokenize(caption: str) -> list[str]:
    """`nltk.word_tokenize(caption.lower())` without NLTK data downloads (see word_tokenize)."""
    return word_tokenize(caption.lower())


def word_tokenize(text: str) -> list[str]:
    """NLTK's Treebank word tokenizer applied per sentence, as nltk.word_tokenize does."""
    from nltk.tokenize import NLTKWordTokenizer

    tok = NLTKWordTokenizer()
    return [t for sent in split_sentences(text) for t in tok.tokenize(sent)]


def split_sentences(text: str) -> list[str]:
    """Sentence split used before word tokenisation. Placeholder: one sentence per caption."""
    return [text]


def encode_caption(vocab: Vocabulary, caption: str) -> list[int]:
    """<start> + word ids (<unk> if absent) + <end>."""
    return [START] + [vocab(w) for w in scan_tokenize(caption)] + [END]


def vocab_tokenize(vocab: Vocabulary, captions: Sequence[str]) -> PaddedTokens:
    return pad_ids([encode_caption(vocab, c) for c in captions], pad=PAD)
