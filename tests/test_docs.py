"""The docs are true: every file, folder and module they name exists (so a move can never leave a doc pointing
nowhere), and `docs/extending.md`'s recipes run as a user would run them (tests/test_docs_recipes.py)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("*.md")),
        ROOT / "harness" / "assets" / "ATTRIBUTION.md"]
PATH = re.compile(r"(?<![\w./-])((?:harness|methods|bench|tests|examples|docs)/[\w./*-]*\w)")
MODULE = re.compile(r"(?<![\w./])((?:harness|methods)(?:\.\w+)+)")


def _resolves(dotted: str) -> bool:
    """`pkg.mod[.attr...]`: the longest importable module prefix, then attributes along the rest."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return i >= 2 or len(parts) == 1
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_and_module_a_doc_names_exists(doc):
    text = doc.read_text(encoding="utf-8")
    missing = [p for p in PATH.findall(text) if "<" not in p and not list(ROOT.glob(p.rstrip(".")))]
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"
    unknown = sorted({m for m in MODULE.findall(text) if not _resolves(m)})
    assert not unknown, f"{doc.name} names modules or objects that do not exist: {unknown}"
