"""Safe loading of official checkpoint containers and strict state-dict mapping.

Official ITR checkpoints are torch pickles that hold an `argparse.Namespace` (`opt`) beside the
state dicts. We load them with `weights_only=True`, allow-listing only the few harmless globals
these containers need, so an untrusted file cannot run code. Keys are matched strictly: any
missing or unexpected key is an error that names them, never a silent `strict=False`.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._weights_only_unpickler import Unpickler as WeightsOnlyUnpickler  # torch.load's own rules

from harness.core.errors import ItrbenchError


class CheckpointError(ItrbenchError):
    """A checkpoint that cannot be loaded as asked (wrong method, variant, dataset, keys or file)."""


SAFE_GLOBALS: list[Any] = [argparse.Namespace, collections.OrderedDict]


# A stored tensor cannot honestly need more bytes than its file holds (torch.save stores entries
# uncompressed); compressed entries may expand this much before a file is refused as a size bomb.
EXPANSION_LIMIT, EXPANSION_SLACK = 2, 1 << 20


def load_container(path: str | Path) -> dict[str, Any]:
    """A checkpoint container (a dict) read with `load_weights_only`."""
    obj = load_weights_only(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict container, found {type(obj).__name__}")
    return obj


def load_weights_only(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` with the allow-list; clear errors for bad files.

    Before torch allocates anything, the sizes the file declares (zip entries, every storage and tensor in
    the pickle) are checked against the bytes the file actually holds, so a small crafted or corrupt file
    cannot make the loader allocate gigabytes (`declared_storage_bytes`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        declared_storage_bytes(path)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {_first_line(exc)}); "
            "the file may be truncated: download it again") from exc
    except Exception as exc:  # pickle.UnpicklingError for disallowed globals
        if isinstance(exc, pickle.UnpicklingError) and not _refused_global(exc):
            raise CheckpointError(
                f"{path}: not a readable torch checkpoint (UnpicklingError: {_first_line(exc)}); the file may be "
                "truncated or corrupt: download it again") from exc
        raise CheckpointError(
            f"{path}: refused to unpickle ({_first_line(exc)}). Only weights and argparse.Namespace "
            "are accepted; this is not an official checkpoint of a supported method") from exc
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 240 else line[:237] + "..."


def _refused_global(exc: BaseException) -> bool:
    text = str(exc)
    return any(s in text for s in ("GLOBAL", "global", "Unsupported", "is blocked", "persistent_load"))


class _MetaStorages:
    """A persistent_load that records each storage's declared bytes and returns an unallocated (meta) one."""

    def __init__(self) -> None:
        self.nbytes: dict[str, int] = {}
        self.created: list[tuple[str, int, torch.UntypedStorage]] = []

    def __call__(self, saved_id: Any) -> Any:
        if not isinstance(saved_id, tuple) or len(saved_id) < 5:
            raise pickle.UnpicklingError(f"unexpected persistent id {saved_id!r:.80}")
        storage_type, key, numel = saved_id[1], str(saved_id[2]), saved_id[4]
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"storage {key}: element count {numel!r:.40} is not a count")
        nbytes = numel * torch._utils._element_size(dtype)
        self.nbytes[key] = max(nbytes, self.nbytes.get(key, 0))
        view = saved_id[5] if len(saved_id) > 5 else None  # legacy format: (view key, offset, size)
        if view is not None:
            _, offset, size = view
            nbytes = size * torch._utils._element_size(dtype)
            if offset < 0 or offset + size > numel:
                raise pickle.UnpicklingError(f"storage {key}: view [{offset}, {offset + size}) outside {numel}")
        meta = torch.UntypedStorage(nbytes, device="meta")
        self.created.append((key, nbytes, meta))
        return torch.storage.TypedStorage(wrap_storage=meta, dtype=dtype, _internal=True)

    def check_views(self) -> None:
        """A meta storage grows when a tensor is set on it beyond its end (real ones refuse): such a tensor
        claims more than its storage declares."""
        for key, nbytes, meta in self.created:
            if meta.nbytes() > nbytes:
                raise pickle.UnpicklingError(f"a tensor on storage {key} needs {meta.nbytes():,} bytes but the "
                                             f"storage declares {nbytes:,}")


def _scan_pickle(stream: Any) -> dict[str, int]:
    """Unpickle a checkpoint's object pickle with the weights-only rules and meta storages (nothing is
    allocated; tensors whose shape exceeds their storage fail here); the declared bytes of each storage."""
    unpickler = WeightsOnlyUnpickler(stream, encoding="utf-8")
    storages = _MetaStorages()
    unpickler.persistent_load = storages
    with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on odd pickle protocols: torch.load repeats them
        unpickler.load()
    storages.check_views()
    return storages.nbytes


def declared_storage_bytes(path: str | Path) -> int:
    """Total bytes the checkpoint's tensors declare, checked against what the file holds; raises
    CheckpointError naming the file when a zip entry, a storage or a tensor claims more than is there."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # torch.load's own test for the zip format
    try:
        return _declared_zip(path, size) if zipped else _declared_legacy(path, size)
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile, zlib, struct and unpickling errors of a corrupt file
        raise _scan_error(path, exc) from exc


def _declared_zip(path: Path, size: int) -> int:
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        expanded = sum(i.file_size for i in infos)
        if expanded > EXPANSION_LIMIT * size + EXPANSION_SLACK:
            big = max(infos, key=lambda i: i.file_size)
            raise CheckpointError(
                f"{path}: its entries declare {expanded:,} bytes unpacked (e.g. {big.filename}: {big.file_size:,}) in "
                f"a {size:,}-byte file; refused before loading (a corrupt or crafted file; torch.save stores "
                "tensors uncompressed)")
        pickles = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: a zip file but not a torch checkpoint (no single data.pkl entry)")
        prefix = pickles[0].filename[:-len("data.pkl")]
        entries = {i.filename: i for i in infos}
        with z.open(pickles[0]) as f:
            data = f.read(pickles[0].file_size + 1)
    declared = _scan_pickle(io.BytesIO(data))
    for key, nbytes in declared.items():
        record = entries.get(f"{prefix}data/{key}")
        held = record.file_size if record is not None else 0
        if nbytes > held:
            raise CheckpointError(f"{path}: storage {key} declares {nbytes:,} bytes but the file holds {held:,} for "
                                  "it; refused before loading (truncated, corrupt or crafted file)")
    return sum(declared.values())


def _declared_legacy(path: Path, size: int) -> int:
    """The pre-1.6 format: magic, protocol and sys-info pickles, the object pickle, the storage keys, then
    each storage as an 8-byte element count and its bytes."""
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if tarfile_header(f):
            raise CheckpointError(f"{path}: a legacy .tar checkpoint, which cannot be loaded safely "
                                  "(weights only); re-save it with a current torch")
        for _ in range(3):  # magic number, protocol version, sys info
            WeightsOnlyUnpickler(f, encoding="utf-8").load()
        declared = _scan_pickle(f)
        WeightsOnlyUnpickler(f, encoding="utf-8").load()  # the storage keys
        left = size - f.tell()
    total = sum(declared.values())
    if total + 8 * len(declared) > left:
        raise CheckpointError(f"{path}: its tensors declare {total:,} bytes but only {left:,} follow; refused before "
                              "loading (truncated, corrupt or crafted file)")
    return total


def tarfile_header(f: Any) -> bool:
    """Whether `f` (at offset 0) is a tar archive; leaves the offset at 0."""
    head = f.read(512)
    f.seek(0)
    return len(head) == 512 and head[257:262] == b"ustar"


def _scan_error(path: Path, exc: BaseException) -> CheckpointError:
    if isinstance(exc, pickle.UnpicklingError) and _refused_global(exc):
        return CheckpointError(
            f"{path}: refused to unpickle ({_first_line(exc)}). Only weights and argparse.Namespace are accepted; "
            "this is not an official checkpoint of a supported method")
    return CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {_first_line(exc)}); "
                           "the file may be truncated or corrupt: download it again")


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
