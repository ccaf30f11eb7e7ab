"""`fetch data --dataset coco|f30k|eccv|cxc|senteval`: download what the sources publish, then check-data.

A data set that already passes check-data is left alone. Otherwise its archive is downloaded into
`<data-root>/.fetch/` (resumed like a checkpoint, kept afterwards: SCAN's data.zip serves both COCO and
Flickr30K), unpacked safely, and the one folder the harness reads is renamed into place; an existing folder
that fails check-data is never overwritten. When no source works, the exact manual steps are printed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from harness.core.paths import ASSETS_DIR
from harness.fetch import archive, drive
from harness.fetch.download import download
from harness.fetch.errors import ArchiveError, FetchError, IntegrityError, SourceError
from harness.fetch.sources import CXC_FILES, CXC_RAW, DATA_SOURCES, ECCV_FILES, DataSource
from harness.fetch.ui import FileProgress, say
from harness.fetch.verify import STAGING, move_aside, sha256_file
from harness.spec.checks import check_dataset
from harness.spec.registry import Registry

CXC_DIR = ASSETS_DIR / "cxc"


def fetch_data(name: str, data_root: Path, *, registry: Registry, console: Console, mirrors: Sequence[str] = (),
               offline: bool = False, splits: Sequence[str] | None = None, retries: int = 3,
               timeout: float = 60.0) -> int:
    """Fetch and check one data set; returns the exit code (0: valid data in place)."""
    if name == "eccv":
        return _eccv(console)
    if name == "cxc":
        return _cxc(console, mirrors, offline, retries, timeout)
    if name not in DATA_SOURCES:
        raise FetchError(f"fetch data: unknown dataset '{name}'; valid: {', '.join([*DATA_SOURCES, 'eccv', 'cxc'])}")
    src = DATA_SOURCES[name]
    if name != "senteval":
        ds = registry.dataset(name)
        splits = list(splits or dict.fromkeys(["train", ds.validation_split, ds.split]))

    def problems() -> list[str]:
        if name == "senteval":
            return check_dataset("senteval", data_root / src.target)
        return check_dataset(name, data_root, list(splits or ()))

    found = problems()
    if not found:
        say(console, f"{name}: {data_root / src.target} passes check-data; nothing to fetch", "ok", "green")
        return 0
    target = data_root / src.target
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        _print_problems(console, found)
        raise FetchError(f"{target}: exists but fails check-data (problems above); fix it, or move it away and "
                         f"rerun fetch data --dataset {name}")
    if offline:
        _print_problems(console, found)
        _print_manual(console, src, data_root, "--offline: nothing is downloaded")
        return 1
    try:
        blob = _download(src, data_root / STAGING, console, mirrors, retries, timeout)
    except SourceError as exc:
        _print_manual(console, src, data_root, str(exc))
        return 1
    _unpack(src, blob, data_root)
    found = problems()
    if found:
        _print_problems(console, found)
        return 1
    say(console, f"{name}: {target} passes check-data (archive kept in {blob}; delete it to free "
                 f"{blob.stat().st_size} bytes)", "ok", "green")
    return 0


def _print_problems(console: Console, problems: Sequence[str]) -> None:
    for p in problems:
        say(console, p, "x", "red")


def _print_manual(console: Console, src: DataSource, data_root: Path, why: str) -> None:
    say(console, f"{src.dataset}: not fetched: {why}", "x", "red")
    say(console, f"Manual steps for {src.dataset} (DATA = {data_root}):")
    for i, step in enumerate(src.manual, 1):
        say(console, f"  {i}. {step.replace('DATA', str(data_root))}")


def _tag(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:10]


def _check(blob: Path, size: int | None, sha: str | None, console: Console) -> None:
    got_size = blob.stat().st_size
    if size is not None and got_size != size:
        raise IntegrityError(f"{blob}: size mismatch: expected {size} bytes, got {got_size}")
    got = sha256_file(blob)
    if sha is not None and got != sha:
        raise IntegrityError(f"{blob}: sha256 mismatch: expected {sha}, got {got}")
    if sha is None:
        say(console, f"{blob.name}: sha256 not recorded; computed {got} ({got_size} bytes)")


def _download(src: DataSource, staging: Path, console: Console, mirrors: Sequence[str], retries: int,
              timeout: float) -> Path:
    """A complete, checked download of `src.file` (an earlier complete one is reused)."""
    staging.mkdir(parents=True, exist_ok=True)
    urls = [f"{m.rstrip('/')}/data/{src.file}" for m in mirrors] + list(src.urls)
    blobs = [staging / f"{_tag(u)}-{src.file}" for u in urls]
    failures = []
    for url, blob in sorted(zip(urls, blobs), key=lambda ub: not ub[1].is_file()):  # complete ones first
        try:
            if not blob.is_file():
                with FileProgress(console, f"data/{src.file}") as bar:
                    if drive.drive_kind(url) == "file":
                        drive.download_file(drive.drive_id(url), blob, bar)
                    else:
                        download(url, blob, expected_size=src.size, progress=bar, retries=retries, timeout=timeout)
            try:
                _check(blob, src.size, src.sha256, console)
            except IntegrityError as exc:
                raise IntegrityError(f"{exc}; moved to {move_aside(blob, blob)}") from None
            return blob
        except SourceError as exc:
            failures.append(str(exc))
    raise SourceError("no source worked: " + " | ".join(failures))


def _unpack(src: DataSource, blob: Path, data_root: Path) -> None:
    unpack = data_root / STAGING / f"{src.dataset}.unpack"
    archive.remove_tree(unpack)
    keep = set(src.keep)
    try:
        archive.extract_all(blob, src.archive, unpack,
                            (lambda m: bool(keep & set(m.split("/")))) if keep else None)
    except ArchiveError as exc:
        blob.unlink(missing_ok=True)
        archive.remove_tree(unpack)
        raise FetchError(f"{exc} (deleted the download)") from None
    hits = sorted((p for p in unpack.rglob(src.pick) if p.is_dir()), key=lambda p: len(p.parts))
    if not hits:
        archive.remove_tree(unpack)
        raise FetchError(f"{blob}: has no folder {src.pick}; it is not the {src.dataset} archive the sources "
                         "publish: delete it and rerun, or follow the manual steps")
    take = hits[0].parent if src.parent else hits[0]
    target = data_root / src.target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        target.rmdir()  # empty (checked by the caller)
    os.replace(take, target)
    archive.remove_tree(unpack)


def _eccv(console: Console) -> int:
    spec = importlib.util.find_spec("eccv_caption")
    if spec is None or spec.origin is None:
        say(console, "eccv: the eccv_caption package is not installed; run: pip install eccv_caption==0.1.0", "x",
            "red")
        return 1
    folder = Path(spec.origin).parent / "data"
    missing = [f for f in ECCV_FILES if not (folder / f).is_file()]
    for f in missing:
        say(console, f"{folder / f}: missing; run: pip install --force-reinstall eccv_caption==0.1.0", "x", "red")
    if missing:
        return 1
    say(console, f"eccv: the ECCV Caption ground truth ships with the eccv_caption package ({folder}); nothing to "
                 "download. COCO 5K evaluations read testall_ids.txt / testall_capids.txt from the COCO precomp folder "
                 "when present (else the package's order is assumed, with a warning)", "ok", "green")
    return 0


def _cxc(console: Console, mirrors: Sequence[str], offline: bool, retries: int, timeout: float) -> int:
    bad = 0
    for fname, sha in CXC_FILES.items():
        path = CXC_DIR / fname
        if path.is_file() and sha256_file(path) == sha:
            continue
        if path.is_file():
            got = sha256_file(path)
            say(console, f"{path}: sha256 mismatch: expected {sha}, got {got}; moved to {move_aside(path, path)}",
                "x", "red")
        if offline:
            say(console, f"{path}: missing (--offline: not downloaded)", "x", "red")
            bad += 1
            continue
        failures = []
        for url in [f"{m.rstrip('/')}/data/cxc/{fname}" for m in mirrors] + [f"{CXC_RAW}/{fname}"]:
            blob = CXC_DIR / STAGING / f"{_tag(url)}-{fname}"
            try:
                download(url, blob, retries=retries, timeout=timeout)
                _check(blob, None, sha, console)
                os.replace(blob, path)
                break
            except IntegrityError as exc:
                failures.append(f"{exc}; moved to {move_aside(blob, blob)}")
            except SourceError as exc:
                failures.append(str(exc))
        else:
            say(console, f"{path}: not restored: " + " | ".join(failures), "x", "red")
            bad += 1
    if bad:
        return 1
    say(console, f"cxc: the CxC test annotations bundled in {CXC_DIR} match their recorded sha256 "
                 "(google-research-datasets/Crisscrossed-Captions @7d6634b)", "ok", "green")
    return 0
