"""Caption perturbations at severities 1-5, deterministic from a seed and offline.

Following Qiu et al. ("Are Multimodal Models Robust to Image and Text Perturbations?", 2022), severity s
perturbs a fraction s/10 of a caption's eligible words (10% .. 50%, at least one word):

- character level (one edit in each chosen word): `keyboard` (a letter replaced by a QWERTY neighbour),
  `ocr` (a character replaced by one an OCR engine confuses it with), `char_insert` (a random letter
  inserted), `char_delete` (a character deleted), `char_swap` (two adjacent, different characters swapped),
  `char_replace` (a letter replaced by another random letter);
- word level: `word_delete` (s/10 of the words deleted, at least one word kept), `word_insert` (s/10 of the
  word count copies of the caption's own words inserted at random places), `word_swap` (s/10 of the adjacent
  word pairs swapped), `insert_punctuation` (s/10 of the word count punctuation marks inserted between
  words, as AEDA), `synonym` (s/10 of the words that have a WordNet synonym replaced by one; not defined
  where the WordNet data is not installed);
- sentence level: `shuffle` (the order of 2s/10 of the words permuted: all of them at severity 5).

Captions are split on whitespace and joined with single spaces; punctuation tokens are not words. Each caption
is perturbed by its own generator (`seeding.item_rng`), so a caption's perturbation does not depend on which
other captions are perturbed with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from harness.eval.perturb.seeding import item_rng

SEVERITIES = (1, 2, 3, 4, 5)
WORDNET_MISSING = "WordNet data is not installed (python -m nltk.downloader wordnet)"
PUNCTUATION = (".", ",", "!", "?", ";", ":")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
# characters an OCR engine commonly reads as another (one fixed reading each)
OCR_CONFUSIONS = {"o": "0", "O": "0", "l": "1", "I": "1", "i": "1", "s": "5", "S": "5", "z": "2", "Z": "2",
                  "b": "6", "B": "8", "g": "9", "q": "9", "e": "c", "c": "e", "a": "o", "m": "rn", "n": "h",
                  "h": "b", "u": "v", "v": "u", "t": "f", "D": "0", "G": "6", "E": "F"}


def _keyboard_neighbours() -> dict[str, str]:
    """Letters next to each letter on a (staggered) QWERTY keyboard: same row left/right, the row above at
    the same and next column, the row below at the previous and same column."""
    out: dict[str, str] = {}
    for r, row in enumerate(_ROWS):
        for i, ch in enumerate(row):
            near = [row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)]
            if r > 0:
                near += [_ROWS[r - 1][j] for j in (i, i + 1) if j < len(_ROWS[r - 1])]
            if r + 1 < len(_ROWS):
                near += [_ROWS[r + 1][j] for j in (i - 1, i) if 0 <= j < len(_ROWS[r + 1])]
            out[ch] = "".join(sorted(near))
    return out


KEYBOARD = _keyboard_neighbours()


class PerturbationUndefined(Exception):
    """A perturbation that cannot run here (its reason is the message)."""


def is_word(token: str) -> bool:
    return token.isascii() and token.isalpha()


def edits(severity: int, n: int, per: int = 10) -> int:
    """ceil(severity * n / per), capped at n: how many of n eligible items severity perturbs (integers only,
    so no float rounding moves a count)."""
    if n <= 0:
        return 0
    return min(n, -(-int(severity) * n // per))


# ---- character level: one edit of one word ----------------------------------------------------------------

def _case(like: str, ch: str) -> str:
    return ch.upper() if like.isupper() else ch


def _keyboard(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(len(word)))
    near = KEYBOARD[word[i].lower()]
    return word[:i] + _case(word[i], near[int(rng.integers(len(near)))]) + word[i + 1:]


def _ocr(word: str, rng: np.random.Generator) -> str:
    spots = [i for i, ch in enumerate(word) if ch in OCR_CONFUSIONS]
    i = spots[int(rng.integers(len(spots)))]
    return word[:i] + OCR_CONFUSIONS[word[i]] + word[i + 1:]


def _insert(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(len(word) + 1))
    return word[:i] + LETTERS[int(rng.integers(26))] + word[i:]


def _delete(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(len(word)))
    return word[:i] + word[i + 1:]


def _swap(word: str, rng: np.random.Generator) -> str:
    spots = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
    i = spots[int(rng.integers(len(spots)))]
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def _replace(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(len(word)))
    others = LETTERS.replace(word[i].lower(), "")
    return word[:i] + _case(word[i], others[int(rng.integers(len(others)))]) + word[i + 1:]


CHARACTER_EDITS: dict[str, tuple[Callable[[str, np.random.Generator], str], Callable[[str], bool]]] = {
    "keyboard": (_keyboard, is_word),
    "ocr": (_ocr, lambda w: is_word(w) and any(ch in OCR_CONFUSIONS for ch in w)),
    "char_insert": (_insert, is_word),
    "char_delete": (_delete, lambda w: is_word(w) and len(w) >= 2),
    "char_swap": (_swap, lambda w: is_word(w) and any(a != b for a, b in zip(w, w[1:]))),
    "char_replace": (_replace, is_word),
}


def _character(edit: str) -> Callable[[list[str], int, np.random.Generator], list[str]]:
    fn, eligible = CHARACTER_EDITS[edit]

    def perturb(tokens: list[str], severity: int, rng: np.random.Generator) -> list[str]:
        spots = [i for i, t in enumerate(tokens) if eligible(t)]
        out = list(tokens)
        for i in sorted(rng.choice(spots, size=edits(severity, len(spots)), replace=False).tolist()):
            out[i] = fn(out[i], rng)
        return out

    return perturb


# ---- word level ---------------------------------------------------------------------------------------

def _word_spots(tokens: Sequence[str]) -> list[int]:
    return [i for i, t in enumerate(tokens) if is_word(t)]


def word_delete(tokens: list[str], severity: int, rng: np.random.Generator) -> list[str]:
    spots = _word_spots(tokens)
    k = min(edits(severity, len(spots)), max(0, len(spots) - 1))
    gone = set(rng.choice(spots, size=k, replace=False).tolist())
    return [t for i, t in enumerate(tokens) if i not in gone]


def word_insert(tokens: list[str], severity: int, rng: np.random.Generator) -> list[str]:
    words = [tokens[i] for i in _word_spots(tokens)]
    out = list(tokens)
    for _ in range(edits(severity, len(words))):
        out.insert(int(rng.integers(len(out) + 1)), words[int(rng.integers(len(words)))])
    return out


def word_swap(tokens: list[str], severity: int, rng: np.random.Generator) -> list[str]:
    out = list(tokens)
    pairs = [i for i in range(len(out) - 1) if is_word(out[i]) and is_word(out[i + 1]) and out[i] != out[i + 1]]
    for i in rng.choice(pairs, size=edits(severity, len(pairs)), replace=False).tolist():
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def insert_punctuation(tokens: list[str], severity: int, rng: np.random.Generator) -> list[str]:
    k = edits(severity, len(_word_spots(tokens)))
    gaps = sorted(rng.choice(len(tokens) + 1, size=min(k, len(tokens) + 1), replace=False).tolist(), reverse=True)
    out = list(tokens)
    for g in gaps:  # from the right: earlier gaps keep their place
        out.insert(g, PUNCTUATION[int(rng.integers(len(PUNCTUATION)))])
    return out


@functools.lru_cache(maxsize=1)
def _load_wordnet() -> Callable[[str], tuple[str, ...]] | None:
    """word -> its WordNet synonyms (sorted, the word itself excluded), or None without the WordNet data."""
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
    except (LookupError, OSError, ImportError):
        return None

    @functools.cache
    def synonyms(word: str) -> tuple[str, ...]:
        names = {lemma.name().replace("_", " ") for s in wordnet.synsets(word.lower()) for lemma in s.lemmas()}
        return tuple(sorted(n for n in names if n.lower() != word.lower()))

    return synonyms


def synonym(tokens: list[str], severity: int, rng: np.random.Generator) -> list[str]:
    lookup = _load_wordnet()
    if lookup is None:
        raise PerturbationUndefined(WORDNET_MISSING)
    spots = [i for i in _word_spots(tokens) if lookup(tokens[i])]
    out = list(tokens)
    for i in sorted(rng.choice(spots, size=edits(severity, len(spots)), replace=False).tolist()):
        options = lookup(out[i])
        out[i] = options[int(rng.integers(len(options)))]
    return out


# ---- sentence level -------------------------------------------------------------------------------------

def shuffle(tokens: list[str], severity: int, rng: np.random.Generator) -> list[str]:
    spots = _word_spots(tokens)
    if len({tokens[i] for i in spots}) < 2:
        return list(tokens)
    k = max(2, edits(2 * severity, len(spots)))
    chosen = sorted(rng.choice(spots, size=k, replace=False).tolist())
    values = [tokens[i] for i in chosen]
    order = rng.permutation(k).tolist()
    if [values[j] for j in order] == values:  # a permutation that moves nothing: rotate instead
        order = order[1:] + order[:1]
    out = list(tokens)
    for i, j in zip(chosen, order):
        out[i] = values[j]
    return out


@dataclass(frozen=True)
class TextPerturbation:
    name: str
    level: str  # character | word | sentence
    apply: Callable[[list[str], int, np.random.Generator], list[str]]

    def unavailable(self) -> str | None:
        """Why this perturbation cannot run here, or None."""
        if self.name == "synonym" and _load_wordnet() is None:
            return WORDNET_MISSING
        return None


TEXT_PERTURBATIONS: dict[str, TextPerturbation] = {
    **{name: TextPerturbation(name, "character", _character(name)) for name in CHARACTER_EDITS},
    "word_delete": TextPerturbation("word_delete", "word", word_delete),
    "word_insert": TextPerturbation("word_insert", "word", word_insert),
    "word_swap": TextPerturbation("word_swap", "word", word_swap),
    "insert_punctuation": TextPerturbation("insert_punctuation", "word", insert_punctuation),
    "synonym": TextPerturbation("synonym", "word", synonym),
    "shuffle": TextPerturbation("shuffle", "sentence", shuffle),
}


def perturb_caption(caption: str, name: str, severity: int, seed: int = 0, index: int = 0) -> str:
    """Caption `index` of a split perturbed by `name` at `severity` (1-5) under `seed`."""
    tokens = caption.split()
    if not tokens:
        return caption
    return " ".join(TEXT_PERTURBATIONS[name].apply(tokens, severity, item_rng(seed, name, severity, index)))


def perturb_captions(captions: Sequence[str], name: str, severity: int, seed: int = 0) -> list[str]:
    """Every caption perturbed (caption j with the generator of index j). Raises PerturbationUndefined."""
    reason = TEXT_PERTURBATIONS[name].unavailable()
    if reason is not None:
        raise PerturbationUndefined(reason)
    return [perturb_caption(c, name, severity, seed, j) for j, c in enumerate(captions)]
