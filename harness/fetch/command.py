"""The `fetch` command: official checkpoints (or evaluation data) in one command, verified.

    fetch --methods esa,xdim --dataset coco [--variants ...] [--dest checkpoints] [--mirror BASE_URL ...]
          [--offline] [--no-verify] [--record FILE] [--registry FILE ...]
    fetch --list [--methods ...] [--dataset ...]
    fetch data --dataset coco|f30k|eccv|cxc|senteval [--data-root data] [--splits ...] [--mirror BASE_URL ...]

`add_fetch_parser` adds the subcommand to the CLI's subparsers; `run_fetch` runs it and returns the exit
code (0: everything asked for is present and verified). Errors are FetchError / RegistryError (ValueError)
with one-line messages; Ctrl-C exits 130 leaving only partial files under `.fetch/` folders.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.fetch.errors import FetchError
from harness.fetch.sources import DATA_NAMES
from harness.fetch.ui import say

if TYPE_CHECKING:  # the rest is imported when a fetch runs: building the CLI parser stays light
    from harness.fetch.fetcher import Result
    from harness.fetch.targets import Target

console = Console()


def add_fetch_parser(subparsers: Any) -> None:
    """Add `fetch` (and its `fetch data` form) to an argparse subparsers object."""
    p = subparsers.add_parser(
        "fetch", help="download official checkpoints (or evaluation data) and verify them",
        description="Download the official checkpoints the registry lists into DEST/<method>/<variant>/<dataset>/"
                    "<file> (where `evaluate` and `run --stage evaluate` look), verifying size, sha256 and that "
                    "the method's strict loader accepts each file. `fetch data` fetches evaluation data.")
    p.add_argument("what", nargs="?", choices=("checkpoints", "data"), default="checkpoints",
                   help="checkpoints (default) or data")
    p.add_argument("--methods", default=None, help="comma-separated method names (e.g. esa,xdim)")
    p.add_argument("--variants", default=None, help="comma-separated variants (default: every one with a "
                                                    "checkpoint; an ensemble fetches its members' files)")
    p.add_argument("--dataset", default=None,
                   help="dataset(s), comma-separated; for `fetch data`: " + ", ".join(DATA_NAMES))
    p.add_argument("--dest", default="checkpoints", help="checkpoint folder (the --checkpoint-dir of run)")
    p.add_argument("--data-root", default="data", help="`fetch data`: the data folder (as for check-data)")
    p.add_argument("--splits", default=None, help="`fetch data`: splits check-data checks (default: train, dev "
                                                   "and test split)")
    p.add_argument("--mirror", action="append", default=[], metavar="BASE_URL",
                   help="repeatable; tried before the official links, at BASE_URL/<method>/<variant>/<dataset>/"
                        "<file> (data: BASE_URL/data/<file>); http(s)://, file:// or a folder")
    p.add_argument("--offline", action="store_true", help="download nothing; only verify what is present")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the loader check (size and sha256 are still checked)")
    p.add_argument("--list", action="store_true",
                   help="show every checkpoint: source, size, and whether it is present and verified")
    p.add_argument("--record", default=None, metavar="FILE",
                   help="write the sha256 and size of verified files the registry has no hash for into FILE "
                        "(a user override; pass it later with --registry FILE)")
    p.add_argument("--registry", action="append", default=[], metavar="FILE",
                   help="user registry file layered on top, repeatable (may hold a checkpoints: override section)")
    p.add_argument("--retries", type=int, default=3, help="resumed attempts per source after a cut connection")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without data before an attempt fails")


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _mirrors(values: Sequence[str]) -> tuple[str, ...]:
    out = []
    for m in values:
        scheme = urlparse(m).scheme.lower()
        if scheme in ("http", "https", "file"):
            out.append(m.rstrip("/"))
        elif not scheme and Path(m).is_dir():
            out.append(Path(m).resolve().as_uri())
        else:
            raise FetchError(f"--mirror {m}: expected an http(s):// or file:// URL or an existing folder")
    return tuple(out)


def run_fetch(args: argparse.Namespace) -> int:
    """Run `fetch` as parsed by `add_fetch_parser`; returns the exit code."""
    try:
        if args.what == "data":
            return _run_data(args)
        return _run_checkpoints(args)
    except KeyboardInterrupt:
        say(console, "nothing was installed half-way; partial downloads stay in the .fetch/ folders and the next "
                     "fetch resumes them", "interrupted:", "red")
        return 130


def _run_data(args: argparse.Namespace) -> int:
    from harness.fetch.data import fetch_data
    from harness.fetch.targets import load_with_overrides

    names = _names(args.dataset)
    if not names:
        raise FetchError(f"fetch data: pass --dataset (one or more of {', '.join(DATA_NAMES)})")
    for n in names:
        if n not in DATA_NAMES:
            raise FetchError(f"fetch data: unknown dataset '{n}'; valid: {', '.join(DATA_NAMES)}")
    registry = load_with_overrides(args.registry)
    mirrors = _mirrors(args.mirror)
    code = 0
    for n in names:
        code = max(code, fetch_data(n, Path(args.data_root), registry=registry, console=console, mirrors=mirrors,
                                    offline=args.offline, splits=_names(args.splits) or None,
                                    retries=args.retries, timeout=args.timeout))
    return code


def _run_checkpoints(args: argparse.Namespace) -> int:
    from harness.fetch.fetcher import Fetcher, Settings
    from harness.fetch.targets import load_with_overrides, record, select_targets

    overrides = list(args.registry)
    if args.record and Path(args.record).is_file() and args.record not in overrides:
        overrides.append(args.record)  # hashes recorded earlier are checked, never re-recorded blindly
    registry = load_with_overrides(overrides)
    mirrors = _mirrors(args.mirror)
    dest = Path(args.dest)
    methods, datasets, variants = _names(args.methods), _names(args.dataset), _names(args.variants)
    if args.list:
        return _list(select_targets(registry, methods or None, datasets or None, variants or None), dest, mirrors)
    if not methods or not datasets:
        raise FetchError("fetch: pass --methods (e.g. esa,xdim) and --dataset (e.g. coco); fetch --list shows every "
                         "checkpoint the registry knows")
    if args.record and not args.verify:
        raise FetchError(f"--record {args.record}: records only files the loader accepted; drop --no-verify")
    targets = select_targets(registry, methods, datasets, variants or None)
    fetcher = Fetcher(registry, Settings(dest=dest, mirrors=mirrors, offline=args.offline, verify=args.verify,
                                         retries=args.retries, timeout=args.timeout), console)
    results: list[Result] = []
    try:
        for t in targets:
            r = fetcher.fetch(t)
            results.append(r)
            _report(r, dest)
    finally:
        fetcher.close()
    fresh = [r for r in results if r.unrecorded]
    if args.record and fresh:
        n = record(Path(args.record), [(r.target, int(r.size or 0), str(r.sha256)) for r in fresh])
        say(console, f"recorded the size and sha256 of {n} file(s) in {args.record}")
    elif args.record:
        say(console, f"nothing recorded in {args.record}: no verified file lacks a recorded sha256")
    else:
        for r in fresh:
            say(console, f"{r.target.label}: sha256 not in the registry; computed {r.sha256} ({r.size} bytes): "
                         "check it, then keep it with --record FILE")
    counts = {s: sum(r.state == s for r in results) for s in ("present", "installed", "missing", "failed")}
    say(console, f"{counts['installed']} fetched, {counts['present']} already present, {counts['missing']} missing, "
                 f"{counts['failed']} failed (in {dest})")
    return 0 if all(r.ok for r in results) else 1


def _report(r: Result, dest: Path) -> None:
    path = r.target.path(dest)
    if r.state == "installed":
        say(console, f"{path} ({r.size} bytes, {r.message}, verified)", "fetched", "green")
    elif r.state == "present":
        say(console, f"{path}: present, verified", "ok", "green")
    elif r.state == "missing":
        say(console, r.message, "missing", "yellow")
    else:
        say(console, r.message, "x", "red")


def _list(targets: list[Target], dest: Path, mirrors: Sequence[str]) -> int:
    from harness.fetch.fetcher import sources_of

    table = Table(title=escape(f"official checkpoints (in {dest})"))
    for col in ("checkpoint", "source", "size", "status"):
        table.add_column(col, overflow="fold")
    for t in targets:
        sources = sources_of(t, mirrors)
        source = sources[0].url + (f" (+{len(sources) - 1} more)" if len(sources) > 1 else "")
        size = str(t.entry.size) if t.entry.size is not None else "? (not recorded)"
        table.add_row(*(escape(x) for x in (t.label, source, size, _status(t, dest))))
    console.print(table)
    return 0


def _status(t: Target, dest: Path) -> str:
    """Present and verified? From the verification stamp when it still fits the file, else by hashing."""
    from harness.fetch.verify import STAGING, read_stamp, sha256_file

    final = t.path(dest)
    if not final.is_file():
        staging = final.parent / STAGING
        partial = staging.is_dir() and any(p.name.endswith(".part") and t.entry.name in p.name
                                           for p in staging.iterdir())
        return "missing (partial download kept)" if partial else "missing"
    size = os.path.getsize(final)
    if t.entry.size is not None and size != t.entry.size:
        return f"present, size mismatch: expected {t.entry.size}, got {size}"
    stamp = read_stamp(final)
    sha = stamp["sha256"] if stamp else sha256_file(final)
    loads = ", loads" if stamp and stamp.get("loads") else ""
    if t.entry.sha256 is None:
        return f"present{loads}, sha256 not recorded (computed {sha})"
    if sha != t.entry.sha256:
        return f"present, sha256 MISMATCH: expected {t.entry.sha256}, got {sha}"
    return f"verified (sha256{loads})"
