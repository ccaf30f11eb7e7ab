"""`docs/extending.md` is executed: each recipe runs from a fresh temporary folder as a user would run it.

A recipe starts at a line `<!-- recipe: NAME -->` and takes the fenced blocks after it, up to the next recipe or
heading of the same or higher level: a block whose info string names a file (```` ```yaml file=my.yaml ````) is
written there; a ```` ```bash ```` block runs in `bash -euo pipefail` with ITRBENCH set
to this checkout (a user's clone); other blocks are illustration. Nothing in the project is edited: the test
checks the checkout is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```\s*$", re.M | re.S)
RECIPE = re.compile(r"^<!-- recipe: ([\w-]+) -->\s*$", re.M)


@dataclass
class Recipe:
    name: str
    steps: list[tuple[str, str, str]] = field(default_factory=list)  # (kind: file | bash, file name, text)


def recipes(text: str) -> list[Recipe]:
    marks = list(RECIPE.finditer(text))
    out = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end():end]
        recipe = Recipe(mark.group(1))
        for block in FENCE.finditer(body):
            lang, info, code = block.group(1), block.group(2), block.group(3)
            target = re.search(r"file=(\S+)", info)
            if target:
                recipe.steps.append(("file", target.group(1), code))
            elif lang == "bash":
                recipe.steps.append(("bash", "", code))
        out.append(recipe)
    return out


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not {".git", ".venv", "__pycache__", ".pytest_cache", "results", "reports"} & set(rel.parts):
            h.update(str(rel).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


ALL = recipes(DOC.read_text(encoding="utf-8"))


def test_the_doc_has_its_recipes():
    names = [r.name for r in ALL]
    assert len(names) == len(set(names)), names
    assert {"dataset", "protocol", "method"} <= set(names), names
    assert all(any(kind == "bash" for kind, _, _ in r.steps) for r in ALL)


@pytest.mark.parametrize("recipe", ALL, ids=[r.name for r in ALL])
def test_recipe_runs_from_a_temporary_folder(recipe, tmp_path):
    before = _tree_digest(ROOT / "harness") + _tree_digest(ROOT / "methods") + _tree_digest(ROOT / "examples")
    env = {**os.environ, "ITRBENCH": str(ROOT), "PYTHONHASHSEED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None) if str(ROOT) not in env.get("PYTHONPATH", "") else None
    for kind, name, text in recipe.steps:
        if kind == "file":
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text, encoding="utf-8")
            continue
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"recipe {recipe.name}:\n$ {text}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    after = _tree_digest(ROOT / "harness") + _tree_digest(ROOT / "methods") + _tree_digest(ROOT / "examples")
    assert after == before, "the recipe edited project files"
