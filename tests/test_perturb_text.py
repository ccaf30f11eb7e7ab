"""Caption perturbations: pinned outputs on a fixed sentence, edit counts growing with severity, determinism
(any PYTHONHASHSEED), and synonym replacement with and without the WordNet data."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.eval.perturb import text
from harness.eval.perturb.text import (
    KEYBOARD,
    OCR_CONFUSIONS,
    TEXT_PERTURBATIONS,
    WORDNET_MISSING,
    PerturbationUndefined,
    edits,
    perturb_caption,
    perturb_captions,
)

SENTENCE = "A man with a red helmet on a small moped on a dirt road ."  # 14 words, 10 of 2+ letters
LONG = " ".join(f"word{c}" for c in "abcdefghijklmnopqrst").replace("word", "wo")  # 20 distinct words

# Severity 2 of seed 0, caption 0. Pinned because determinism is the requirement; each was checked by hand
# against its definition: 14 words -> ceil(2 * 14 / 10) = 3 edits; 10 words of 2+ letters (delete, swap) -> 2;
# 13 adjacent word pairs -> 3 swaps; shuffle permutes ceil(4 * 14 / 10) = 6 words.
PINNED = {
    "keyboard": "Z man with a red helmdt on a small moped on a djrt road .",  # a->z, e->d, i->j: QWERTY neighbours
    "ocr": "A man with a rcd helmet on o small moped on a d1rt road .",  # e->c, a->o, i->1
    "char_insert": "A uman with a red helmet on ar smalhl moped on a dirt road .",
    "char_delete": "A man with a rd helme on a small moped on a dirt road .",
    "char_swap": "A man iwth a erd helmet on a small moped on a dirt road .",
    "char_replace": "R mav with a red helmet on o small moped on a dirt road .",
    "word_delete": "A man with a helmet on a small moped a road .",  # red, on, dirt deleted
    "word_insert": "A man with a red helmet on a on small moped on a dirt road man . on",  # on, man, on copied
    "word_swap": "A with a man red helmet on a moped small on a dirt road .",
    "insert_punctuation": "A . man with a red helmet ; on , a small moped on a dirt road .",
    "shuffle": "with man helmet a red on small a on moped A a dirt road .",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_outputs(name):
    assert perturb_caption(SENTENCE, name, 2, seed=0, index=0) == PINNED[name]


def test_pinned_character_edits_follow_their_tables():
    out = PINNED["keyboard"].split()
    for was, now in zip(SENTENCE.split(), out):
        if was != now:
            (i,) = [k for k in range(len(was)) if was[k] != now[k]]
            assert now[i].lower() in KEYBOARD[was[i].lower()]
    for was, now in zip(SENTENCE.split(), PINNED["ocr"].split()):
        if was != now:
            (i,) = [k for k in range(len(was)) if was[k] != now[k]]
            assert OCR_CONFUSIONS[was[i]] == now[i]


def _edit_count(name: str, before: list[str], after: list[str]) -> int:
    if name in ("word_delete",):
        return len(before) - len(after)
    if name in ("word_insert", "insert_punctuation"):
        return len(after) - len(before)
    return sum(a != b for a, b in zip(before, after))


@pytest.mark.parametrize("name", [n for n in TEXT_PERTURBATIONS if n not in ("synonym", "word_swap")])
def test_more_edits_at_higher_severity(name):
    counts = [_edit_count(name, LONG.split(), perturb_caption(LONG, name, s, seed=3).split()) for s in range(1, 6)]
    assert counts == sorted(counts) and counts[0] < counts[-1], counts
    if name not in ("shuffle", "ocr"):
        assert counts == [edits(s, 20) for s in range(1, 6)] == [2, 4, 6, 8, 10]


def test_word_swap_touches_more_positions_at_higher_severity():
    moved = [sum(a != b for a, b in zip(LONG.split(), perturb_caption(LONG, "word_swap", s).split()))
             for s in (1, 5)]
    assert 0 < moved[0] < moved[1]


def test_same_seed_same_text_other_seed_other_text():
    caps = [SENTENCE, "Two dogs play in the snow .", "A cat sleeps on a sofa ."] * 3
    a = perturb_captions(caps, "keyboard", 3, seed=7)
    assert a == perturb_captions(caps, "keyboard", 3, seed=7)
    assert a != perturb_captions(caps, "keyboard", 3, seed=8)
    assert a[0] != a[3]  # each caption has its own generator (its index), not a shared stream
    assert perturb_captions(caps[:1], "keyboard", 3, seed=7) == a[:1]  # independent of the other captions


def test_identical_under_any_hash_seed():
    code = ("from harness.eval.perturb.text import perturb_captions as p;"
            "print(p(['a man rides a red bike .', 'two dogs in snow'], 'shuffle', 4, 1), "
            "p(['a man rides a red bike .'], 'char_insert', 5, 2))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": h}).stdout for h in ("0", "123")}
    assert len(outs) == 1


def test_synonym_is_not_defined_without_wordnet(monkeypatch):
    monkeypatch.setattr(text, "_load_wordnet", lambda: None)
    assert TEXT_PERTURBATIONS["synonym"].unavailable() == WORDNET_MISSING
    with pytest.raises(PerturbationUndefined, match=r"python -m nltk.downloader wordnet"):
        perturb_captions([SENTENCE], "synonym", 3)


def test_synonym_replaces_words_that_have_one(monkeypatch):
    table = {"man": ("adult male",), "red": ("crimson", "scarlet"), "road": ("route",), "small": ("little",)}
    monkeypatch.setattr(text, "_load_wordnet", lambda: (lambda w: table.get(w.lower(), ())))
    assert TEXT_PERTURBATIONS["synonym"].unavailable() is None
    out = [perturb_caption(SENTENCE, "synonym", s) for s in (1, 5)]
    # 4 words have synonyms: severity 1 replaces ceil(0.4) = 1 of them, severity 5 ceil(2.0) = 2
    changed = [sum(w not in SENTENCE.split() for w in o.replace("adult male", "adult_male").split()) for o in out]
    assert changed == [1, 2]
    assert all(w in SENTENCE.split() or w in {"adult_male", "crimson", "scarlet", "route", "little"}
               for w in out[1].replace("adult male", "adult_male").split())


def test_empty_and_punctuation_only_captions_pass_through():
    for name in TEXT_PERTURBATIONS:
        if name not in ("synonym", "insert_punctuation"):  # punctuation marks are not words: nothing to edit
            assert perturb_caption("", name, 5) == ""
            assert perturb_caption(". ,", name, 5) == ". ,"
