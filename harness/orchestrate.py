"""`run_all.py --methods ... --dataset ...`: plan the campaign, run its jobs, then render the reports."""

from __future__ import annotations

import argparse
import traceback
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.data.checks import check_dataset
from harness.data.demo import build_demo
from harness.jobs import JobContext, run_job
from harness.plan import Plan, build_plan, data_fingerprint, parse_list
from harness.registry import RegistryError, load_registry
from harness.results import ResultStore, git_revision

console = Console()


def resolve_data_root(dataset: str, data_root: str, results: str) -> Path:
    """The demo set is generated into the results folder; other datasets come from --data-root."""
    if dataset == "demo":
        return build_demo(Path(results) / "_data").parents[1]
    return Path(data_root)


def plan_table(plan: Plan, store: ResultStore) -> Table:
    table = Table(title="plan")
    for col in ("job", "stage", "depends on", "state"):
        table.add_column(col)
    for job in plan.order():
        state = "missing"
        if store.is_finished(job.name):
            state = "cached" if store.load(job.name).config.get("key") == job.key else "stale (rerun)"
        table.add_row(job.name, job.stage, ", ".join(job.depends) or "-", state)
    return table


def run_campaign(args: argparse.Namespace) -> int:
    registry = load_registry()
    methods = parse_list(args.methods)
    if not methods:
        raise RegistryError("--methods is empty; valid: " + ", ".join(registry.methods))
    for m in methods:
        registry.method(m)
    ds = registry.dataset(args.dataset)
    data_root = resolve_data_root(ds.name, args.data_root, args.results)
    splits = [ds.split] if args.stage == "evaluate" else ["train", ds.validation_split, ds.split]
    problems = check_dataset(ds.name, data_root, splits)
    if problems:
        raise RegistryError(f"{data_root} fails check-data for {ds.name}:\n  " + "\n  ".join(problems))
    seeds = [int(s) for s in parse_list(args.seeds)] or [0]
    fp = data_fingerprint(p for p in data_root.glob("**/*") if p.is_file() and not p.name.startswith("."))
    code = git_revision().get("revision") or "unknown"
    plan = build_plan(registry, methods, ds.name, variants=parse_list(args.variants) or None, seeds=seeds,
                      stage=args.stage, checkpoint_dir=Path(args.checkpoint_dir), data_fp=fp, code_version=code)
    store = ResultStore(args.results)
    console.print(plan_table(plan, store))
    if args.dry_run:
        return 0
    device = args.device or ("cuda" if _cuda() else "cpu")
    ctx = JobContext(registry=registry, store=store, data_root=data_root, device=device,
                     log=lambda msg: console.print(f"[dim]{msg}[/]", highlight=False))
    failed: dict[str, str] = {}
    for job in plan.order():
        blocked = [d for d in job.depends if d in failed]
        if blocked:
            failed[job.name] = f"skipped: depends on failed {', '.join(blocked)}"
            console.print(f"[yellow]skip[/] {job.name} ({failed[job.name]})")
            continue
        console.print(f"[bold]run[/] {job.name}")
        try:
            metrics = run_job(job, ctx, force=args.force)
        except Exception as exc:  # a failed job must not stop independent jobs
            failed[job.name] = f"{type(exc).__name__}: {exc}"
            tail = "".join(traceback.format_exception(exc)[-3:])
            console.print(f"[red]failed[/] {job.name}: {failed[job.name]}\n{tail}", highlight=False)
            continue
        if job.stage == "evaluate":
            _print_rsum(job.name, metrics)
    from harness.report import write_reports

    for path in write_reports(args.results, args.reports, dataset=ds.name):
        console.print(f"wrote {path}")
    if failed:
        console.print(f"[red]{len(failed)} job(s) failed or skipped[/]: " + ", ".join(failed))
        return 1
    return 0


def _print_rsum(name: str, metrics: dict) -> None:
    parts = [f"{p} rsum {m['rsum']:.1f}" for p, m in metrics.get("protocols", {}).items() if "rsum" in m]
    console.print(f"[green]done[/] {name}: " + ", ".join(parts))


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False
