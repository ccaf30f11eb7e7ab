"""Safe loading of official checkpoint containers and strict state-dict mapping.

Official ITR checkpoints are torch pickles that hold an `argparse.Namespace` (`opt`) beside the
state dicts. We load them with `weights_only=True`, allow-listing only the few harmless globals
these containers need, so an untrusted file cannot run code. Keys are matched strictly: any
missing or unexpected key is an error that names them, never a silent `strict=False`.
"""

from __future__ import annotations

import argparse
import collections
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked (wrong method, variant, dataset, keys or file)."""


SAFE_GLOBALS: list[Any] = [argparse.Namespace, collections.OrderedDict]


def load_container(path: str | Path) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` with the allow-list; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "the file may be truncated: download it again") from exc
    except Exception as exc:  # pickle.UnpicklingError for disallowed globals
        raise CheckpointError(
            f"{path}: refused to unpickle ({str(exc).splitlines()[0]}). Only weights and argparse.Namespace "
            "are accepted; this is not an official checkpoint of a supported method") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict container, found {type(obj).__name__}")
    return obj


def require_keys(path: str | Path, container: Mapping[str, Any], keys: Iterable[str], what: str) -> None:
    missing = [k for k in keys if k not in container]
    if missing:
        raise CheckpointError(
            f"{path}: not a {what} checkpoint: container lacks {missing} (has {sorted(container)})")


def opt_dict(opt: Any) -> dict[str, Any]:
    """An official `opt` (Namespace or dict) as a plain dict."""
    if opt is None:
        return {}
    if isinstance(opt, argparse.Namespace):
        return dict(vars(opt))
    if isinstance(opt, Mapping):
        return dict(opt)
    raise CheckpointError(f"unexpected opt of type {type(opt).__name__}")


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop a DataParallel prefix when every key has it; leave the dict alone otherwise."""
    keys = list(state)
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, path: str | Path, part: str,
                ignore: Iterable[str] = ()) -> None:
    """Load `state` into `module` strictly (after `module.` stripping); mismatches name the keys.

    `ignore` lists keys that may be present in the file but are not part of the module on current
    library versions (e.g. BERT's `embeddings.position_ids` buffer).
    """
    state = strip_prefix(state)
    ignore = set(ignore)
    state = {k: v for k, v in state.items() if k not in ignore}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shape_errors = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shape_errors:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if shape_errors:
            parts.append(f"shape mismatches {_short(shape_errors)}")
        raise CheckpointError(
            f"{path}: {part} does not match the model built from it: " + "; ".join(parts)
            + ". Is this a checkpoint of another method, variant or dataset?")
    module.load_state_dict(state, strict=True)


def _short(items: list[str], n: int = 6) -> str:
    head = ", ".join(items[:n])
    return f"[{head}{', ...' if len(items) > n else ''}] ({len(items)} in all)"


def add_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def dataset_of_name(data_name: Any) -> str | None:
    """'coco' / 'f30k' from an official data_name ('coco', 'f30k_precomp' ...), None if neither."""
    name = str(data_name).lower()
    if "coco" in name:
        return "coco"
    if "f30k" in name or "flickr" in name:
        return "f30k"
    return None
