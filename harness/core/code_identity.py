"""Hashes of the code that computes a result, over parsed code, one per stage of a result.

A result is invalidated only by code that can change it. Each stage names its entry modules and the module
prefixes that can change its output; the hashed set is the entries plus every `harness.*` module they import
(statically, at any depth, lazy imports included) that lies under one of those prefixes:

- `train` (the weights): the training loop `harness.run.training` and what it needs to produce weights: the
  adapter base `harness.api`, `harness.core.features`, `harness.core.checkpoints`, the data readers
  `harness.data`, data-parallel `harness.run.distributed`, and the validation pass that picks the best epoch
  (`harness.eval.scoring`, `harness.eval.precision`, `harness.eval.metrics.recall`: it chooses which epoch's
  weights are kept, so it can change them). Not protocols, other metrics, evaluation, report or cli.
- `matrix` (an evaluation's `sims.npy`): the scoring engine (`harness.eval.scoring`, `harness.eval.precision`),
  the scoring parts of `harness.eval.evaluation` (all of it but `PROTOCOL_PARTS`), the adapter base, features,
  checkpoints and the data readers. Not the protocol table or the metrics.
- `cascade` (a shortlist-and-rerank evaluation's `cascade.npz` and its recall): the matrix stage's code plus
  the shortlist, rerank, cascade and cascade-metric modules (its recall is computed there, not by the protocol
  table, so it is part of the result's key).
  Both include how an evaluation is split over processes and streamed into a rank summary (`SCALE`).
- `protocols` (the values in metrics.json computed from a matrix): `harness.eval.protocols`,
  `harness.eval.metrics`, `harness.eval.summary_metrics` (values from a rank summary) and the protocol parts of
  `harness.eval.evaluation`, with the readers they import. Plugged-in protocols add the parsed code of their
  own modules (`harness.spec.protocol_plugins.protocol_identity`).

Left out everywhere: `harness.core.results` / `errors` / `paths` (file writing, messages, where the package
is), which cannot change a number. A module is hashed as `ast.dump` of its parse tree without docstrings
(comments, docstrings and formatting change nothing), in sorted path order, so the hash is the same under any
PYTHONHASHSEED. The model's code (the method's package and the `methods.*` packages it imports) is hashed
the same way by `method_files` + `hash_files`.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from harness.core.paths import PROJECT_DIR

METHODS_ROOT = "methods"  # the project's method packages: shared blocks (methods.common) are model code too

# top-level names of harness/eval/evaluation.py that feed the protocols, not the matrix
PROTOCOL_PARTS = ("ids_dir", "text_vectors", "image_vectors", "image_retrieval_runner", "_file_vectors",
                  "protocol_inputs", "json_coco_ids", "evaluate_matrix")
# top-level names of evaluation.py that only robustness jobs run (harness.run.robust_plan hashes them)
ROBUSTNESS_PARTS = ("evaluate_robustness",)
EVALUATION = "harness.eval.evaluation"
ENGINE = ("harness.api", "harness.core.features", "harness.core.checkpoints", "harness.data")
# how one evaluation is split over processes and streamed without its matrix: they produce its sims / ranks
SCALE = ("harness.eval.sharding", "harness.eval.streaming", "harness.eval.streaming_coco")


@dataclass(frozen=True)
class Stage:
    """What one stage's code is: entry modules, the prefixes the import closure keeps, and modules of which
    only some top-level names (`only`) or all but some (`without`) belong to the stage."""

    name: str
    entries: tuple[str, ...]
    within: tuple[str, ...]
    only: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    without: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("train", ("harness.run.training", *ENGINE),
          (*ENGINE, "harness.run.training", "harness.run.distributed", "harness.eval.scoring",
           "harness.eval.precision", "harness.eval.metrics.recall")),
    Stage("matrix", ("harness.eval.scoring", "harness.eval.precision", EVALUATION, *ENGINE),
          (*ENGINE, "harness.eval.scoring", "harness.eval.precision", *SCALE, EVALUATION),
          without={EVALUATION: (*PROTOCOL_PARTS, *ROBUSTNESS_PARTS)}),
    Stage("cascade", ("harness.eval.cascade", "harness.eval.shortlist", "harness.eval.rerank",
                      "harness.eval.cascade_metrics", "harness.eval.scoring", "harness.eval.precision", EVALUATION,
                      *ENGINE),
          (*ENGINE, "harness.eval.cascade", "harness.eval.shortlist", "harness.eval.rerank",
           "harness.eval.cascade_metrics", "harness.eval.scoring", "harness.eval.precision", *SCALE, EVALUATION),
          without={EVALUATION: (*PROTOCOL_PARTS, *ROBUSTNESS_PARTS)}),
    Stage("protocols", ("harness.eval.protocols", "harness.eval.metrics", EVALUATION),
          ("harness.eval.protocols", "harness.eval.metrics", "harness.eval.summary_metrics", "harness.data",
           EVALUATION),
          only={EVALUATION: PROTOCOL_PARTS}),
)}


# ---- parsed code ------------------------------------------------------------------------------------------

def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _defined_names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


def parsed_code(source: str | bytes, only: Iterable[str] | None = None, without: Iterable[str] = ()) -> str:
    """The canonical text of a module's code: `ast.dump` without docstrings, optionally of the top-level
    statements defining `only` these names, or of all statements but those defining `without`."""
    tree = _strip_docstrings(ast.parse(source))
    assert isinstance(tree, ast.Module)
    keep, drop = (set(only) if only is not None else None), set(without)
    if keep is not None or drop:
        tree.body = [s for s in tree.body if (keep is None or _defined_names(s) & keep)
                     and not (_defined_names(s) & drop)]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def code_hash(path: Path, only: Iterable[str] | None = None, without: Iterable[str] = ()) -> str:
    """The hash of one file's parsed code (its bytes when it does not parse)."""
    data = path.read_bytes()
    try:
        text = parsed_code(data, only, without).encode()
    except (SyntaxError, ValueError):
        text = data
    return hashlib.sha256(text).hexdigest()


def hash_files(files: Iterable[Path], only: Mapping[Path, tuple[str, ...]] | None = None,
               without: Mapping[Path, tuple[str, ...]] | None = None, root: Path = PROJECT_DIR) -> str:
    """One hash of several files' parsed code, in sorted order, each named by its path below `root`."""
    h = hashlib.sha256()
    for p in sorted(set(files)):
        try:
            name = p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            name = p.name
        h.update(f"{name}\0{code_hash(p, (only or {}).get(p), (without or {}).get(p, ()))}\0".encode())
    return h.hexdigest()[:16]


# ---- the import closure -------------------------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    """Dotted names a module imports (absolute; `from a import b` gives a and a.b), at any depth."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return set()
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_files(name: str, root: Path = PROJECT_DIR) -> list[Path]:
    """The source files of a dotted module or package under `root` (a package: every .py in it); [] if none."""
    base = root.joinpath(*name.split("."))
    if base.is_dir():
        return sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)
    file = base.with_suffix(".py")
    return [file] if file.is_file() else []


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_files(stage: Stage, root: Path = PROJECT_DIR) -> list[Path]:
    """The entry modules of `stage` and every module under its prefixes they import, transitively."""
    todo = [p for e in stage.entries for p in module_files(e, root)]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in sorted(_imports(path)):
            if name.startswith("harness.") and _under(name, stage.within):
                todo += [p for p in module_files(name, root) if p not in seen]
    return sorted(seen)


def stage_hash(name: str, root: Path = PROJECT_DIR) -> str:
    """The hash of the harness code of stage `name` (train | matrix | protocols)."""
    stage = STAGES[name]
    files = stage_files(stage, root)
    by_module = {_module_name(p, root): p for p in files}
    only = {by_module[m]: names for m, names in stage.only.items() if m in by_module}
    without = {by_module[m]: names for m, names in stage.without.items() if m in by_module}
    return hash_files(files, only, without, root)


@lru_cache(maxsize=8)
def protocol_code() -> str:
    """The identity of the protocol / metric code now: stored with every evaluation's metrics."""
    return stage_hash("protocols")


# ---- the model's code ---------------------------------------------------------------------------------------

def _package_files(package: str, module: str) -> list[Path]:
    spec = importlib.util.find_spec(package) if package else None
    if spec is not None and spec.submodule_search_locations:
        return sorted(f for loc in spec.submodule_search_locations for f in Path(loc).rglob("*.py")
                      if "__pycache__" not in f.parts)
    mspec = importlib.util.find_spec(module)
    return [Path(mspec.origin)] if mspec is not None and mspec.origin else []


def _sibling_packages(files: Iterable[Path], roots: Iterable[str]) -> set[str]:
    """Packages under the top-level packages `roots` (`methods.cusa`) that `files` import."""
    found = set()
    for path in files:
        for name in _imports(path):
            parts = name.split(".")
            if len(parts) >= 2 and parts[0] in roots:
                found.add(".".join(parts[:2]))
    return found


def method_files(adapter: str) -> list[Path]:
    """The model code of the adapter "pkg.module:Class": its package (methods/esa/ for methods.esa.adapter),
    or its module when it has none, and the packages of its own top-level package and of `methods` that it
    imports, transitively (methods/cusa/ for clip_zeroshot, methods/common/ for most)."""
    module = adapter.partition(":")[0]
    package = module.rpartition(".")[0]
    files = _package_files(package, module)
    roots = {module.partition(".")[0], METHODS_ROOT} if package else {METHODS_ROOT}
    seen = {package}
    todo = _sibling_packages(files, roots) - seen
    while todo:
        sibling = min(todo)  # a fixed order: the hash must not depend on PYTHONHASHSEED
        todo.discard(sibling)
        seen.add(sibling)
        extra = _package_files(sibling, sibling)
        files += extra
        todo |= _sibling_packages(extra, roots) - seen
    return files


def model_code(adapter: str) -> str:
    """The hash of the model code of an adapter (see `method_files`)."""
    return hash_files(method_files(adapter))
