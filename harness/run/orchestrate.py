"""`run_all.py --methods ... --dataset ...`: check the inputs, plan the campaign, run its jobs on an
executor with a live table, then render the reports.

Everything that can be wrong with the inputs (an unknown method, variant or dataset, a data folder
that fails check-data, a missing official checkpoint for `--stage evaluate`) is reported before any
job starts. While jobs run, a failed job shows its last error lines and only the jobs that depend on
it are skipped. Ctrl-C stops gracefully (running jobs save their progress); rerunning the same
command resumes: finished jobs are reused, unfinished ones continue from their checkpoints.
"""

from __future__ import annotations

import fnmatch
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from harness.core.results import ResultStore
from harness.data.demo import build_demo, build_demo_images
from harness.report import write_reports
from harness.run.display import console, say
from harness.run.executors import make_executor
from harness.run.executors.base import Executor, Outcome, StopFlag, Task
from harness.run.health import health_text
from harness.run.jobs import RunSettings, changed_parts, is_cached, lock_holder, reset_job
from harness.run.plan import Job, Plan, build_plan, data_layout
from harness.run.protocol_refresh import RECOMPUTE, refresh_action
from harness.run.robust_plan import add_robustness_jobs
from harness.run.status import format_seconds, read_status
from harness.spec.campaign import Campaign
from harness.spec.checks import check_dataset
from harness.spec.registry import Registry, RegistryError, load_registry

MAX_TABLE_ROWS = 30


def resolve_data_root(dataset: str, data_root: str | Path, results: str | Path) -> Path:
    """The data folder. The demo set is used from `<data-root>/demo/` when present, else generated into
    `<results>/_data/`; other datasets come from --data-root."""
    if dataset == "demo":
        root = Path(data_root)
        for candidate in (root / "demo" / "precomp", root / "demo"):
            if (candidate / "test_caps.txt").is_file():
                return root
        return build_demo(Path(results) / "_data").parents[1]
    return Path(data_root)


def required_splits(stage: str, test: str, validation: str) -> list[str]:
    return {"evaluate": [test], "train": ["train", validation]}.get(stage, ["train", validation, test])


# ---- planning ---------------------------------------------------------------------------------------

def plan_campaign(campaign: Campaign, registry: Registry | None = None) -> tuple[Plan, ResultStore, Path]:
    """Check the data and expand the plan; raises before any job runs."""
    registry = registry or load_registry(*campaign.registry_files)
    ds = registry.dataset(campaign.dataset)
    data_root = resolve_data_root(ds.name, campaign.data_root, campaign.results)
    splits = required_splits(campaign.stage, ds.split, ds.validation_split)
    layouts = sorted({data_layout(registry, m, ds.name) for m in campaign.methods})
    if ds.name == "demo" and "cusa_json" in layouts:  # the demo's raw-image form is generated, never downloaded
        build_demo_images(data_root)
    if ds.name != "demo" and not data_root.is_dir():
        raise RegistryError(f"--data-root {data_root}: no such folder (the {ds.name} data goes there; see "
                            "`run_all.py check-data --help`)")
    problems = [p for layout in layouts
                for p in check_dataset(ds.name, data_root, splits, layout=layout, registry=registry)]
    if problems:
        raise RegistryError(f"{data_root} fails check-data for {ds.name} (stage {campaign.stage}):\n  "
                            + "\n  ".join(problems))
    plan = build_plan(registry, campaign, data_root=data_root)
    if campaign.perturb:
        add_robustness_jobs(plan, campaign.perturb, campaign.perturb_seed)
    return plan, ResultStore(campaign.results), data_root


def job_state(store: ResultStore, job: Job) -> str:
    """What a run would do with `job` now: cached, rerun (what changed), resume (from what), new."""
    if store.is_finished(job.name):
        done = store.load(job.name).config
        if done.get("key") == job.key:
            return refresh_action(store, job) or "cached"
        old = done.get("identity") or {}
        return "rerun: " + (changed_parts(old, job) if old else "key changed")
    d = store.job_dir(job.name)
    cfg_key = store.load(job.name).config.get("key") if (d / "config.yaml").is_file() else None
    if cfg_key is not None and cfg_key != job.key:
        old = store.load(job.name).config.get("identity") or {}
        return "restart: " + (changed_parts(old, job) if old else "key changed")
    if cfg_key is None and (d / "work").exists():  # what run_job does: progress it cannot match is moved aside
        return "restart: config.yaml unreadable or missing, earlier progress set aside"
    if (d / "work" / "checkpoint.pth").is_file():
        last = read_status(d).get("progress")
        return "resume: checkpoint" + (f" ({last})" if last else "")
    if any((d / "work").glob("tiles_*.h5")):
        last = read_status(d).get("progress")
        return "resume: tile cache" + (f" ({last})" if last else "")
    return "new"


def plan_table(plan: Plan, store: ResultStore, force: set[str] | bool = False) -> Table:
    table = Table(title=f"plan: {len(plan.jobs)} job(s)")
    for col in ("job", "stage", "gpus", "depends on", "state", "key"):
        table.add_column(col, overflow="fold")
    for job in plan.order():
        state = "rerun: forced" if (force is True or (force and job.name in force)) else job_state(store, job)
        style = "green" if state in ("cached", RECOMPUTE) else ("yellow" if state.startswith(("rerun", "restart"))
                                                               else "")
        table.add_row(escape(job.name), job.stage, str(job.gpus) if job.stage == "train" else "-",
                      escape("\n".join(job.depends) or "-"), Text(state, style=style), job.key[:10])
    return table


# ---- running ----------------------------------------------------------------------------------------

BLOCKING = ("failed", "skipped", "interrupted", "elsewhere")  # states whose dependents cannot run


@dataclass
class _Row:
    job: Job
    state: str  # cached | waiting | running | done | failed | skipped | interrupted | elsewhere
    submitted: float | None = None
    ended: float | None = None
    note: str = ""


class Scheduler:
    """Feeds ready jobs to an executor in plan order, tracks their outcomes, and draws the live table."""

    def __init__(self, plan: Plan, store: ResultStore, executor: Executor, settings: RunSettings,
                 stop: StopFlag, out: Console | None = None, poll: float = 0.5) -> None:
        self.plan, self.store, self.executor, self.settings = plan, store, executor, settings
        self.stop, self.console, self.poll = stop, out or console, poll
        self.rows = {j.name: _Row(j, "cached" if is_cached(store, j) else "waiting") for j in plan.order()}
        self.recompute = {n for n, r in self.rows.items() if r.state == "waiting"
                          and refresh_action(store, r.job) == RECOMPUTE}  # no model run: protocols from sims.npy
        self.started = time.time()

    def task(self, job: Job) -> Task:
        if job.stage == "train":
            return Task(job, self.settings, processes=job.gpus)
        scored = job.config.members is None  # an ensemble averages stored matrices: nothing to split
        return Task(job, self.settings, processes=self.settings.eval_processes if scored else 1)

    def run(self) -> dict[str, str]:
        """Run every job that is not cached; returns {job: reason} for failed, skipped and stopped jobs."""
        live = None
        if self.console.is_terminal:
            from rich.live import Live

            live = Live(get_renderable=self.render, console=self.console, refresh_per_second=2,
                        vertical_overflow="visible")
            live.start()
        cancelled = False
        self.executor.on_start = self.mark_started
        try:
            while True:
                if self.stop() and not cancelled:
                    cancelled = True
                    self.say("stopping: running jobs save their progress; rerun the same command to resume", "yellow")
                    self.executor.cancel()
                if not cancelled:
                    self.skip_blocked()
                    ready = [r for r in self.rows.values() if r.state == "waiting" and self.deps_done(r.job)
                             and not self.held_elsewhere(r)]
                    for task in self.executor.start([self.task(r.job) for r in ready]):
                        self.mark_started(task)
                for outcome in self.executor.wait(self.poll):
                    self.finish(outcome)
                self.skip_blocked()
                if self.executor.running == 0:
                    waiting = [r for r in self.rows.values() if r.state == "waiting"]
                    if cancelled or not any(self.deps_done(r.job) for r in waiting):
                        break
        except KeyboardInterrupt:  # the second Ctrl-C: stop now
            self.executor.cancel(graceful=False)
            raise
        finally:
            if live is not None:
                live.stop()
            self.executor.close()
        if not self.console.is_terminal:
            self.console.print(self.render())
        for r in self.rows.values():
            if r.state in ("waiting", "running"):
                r.state, r.note = "interrupted", "not run (stopped)"
        return {name: r.note or r.state for name, r in self.rows.items() if r.state in BLOCKING}

    def held_elsewhere(self, row: _Row) -> bool:
        """Another orchestrator (or a requeued Slurm job) runs this job now: not a failure; shown with who and since."""
        holder = lock_holder(self.store.job_dir(row.job.name))
        if holder is None:
            return False
        row.state, row.note = "elsewhere", f"running elsewhere ({holder})"
        self.say(f"{row.job.name}: {row.note}; not started here", "yellow")
        return True

    def mark_started(self, task: Task) -> None:
        row = self.rows[task.name]
        if row.state != "running":
            row.state, row.submitted = "running", time.time()
            self.say(f"start {task.name}", "bold")

    def deps_done(self, job: Job) -> bool:
        return all(self.rows[d].state in ("done", "cached") for d in job.depends if d in self.rows)

    def skip_blocked(self) -> None:
        changed = True
        while changed:
            changed = False
            for r in self.rows.values():
                if r.state != "waiting":
                    continue
                bad = [d for d in r.job.depends if self.rows.get(d) and self.rows[d].state in BLOCKING]
                if bad:
                    r.state, r.note, changed = "skipped", f"needs {', '.join(bad)}", True
                    self.say(f"skip {r.job.name} (needs {', '.join(bad)})", "yellow")

    def finish(self, outcome: Outcome) -> None:
        row = self.rows[outcome.name]
        row.ended = time.time()
        if outcome.ok:
            row.state = "done"
            how = f" ({RECOMPUTE} from sims.npy)" if outcome.name in self.recompute else ""
            if how:
                row.note = RECOMPUTE
            self.say(f"done {outcome.name}{how}" + _headline(self.store, outcome.name), "green")
        elif outcome.interrupted:
            row.state, row.note = "interrupted", outcome.error
            self.say(f"stopped {outcome.name}: {outcome.error}", "yellow")
        elif not self.held_elsewhere(row):  # a job another process runs is not a failure
            row.state, row.note = "failed", outcome.error.splitlines()[-1] if outcome.error else "failed"
            body = "\n".join("    " + line for line in outcome.error.splitlines())
            self.say(f"failed {outcome.name} (log: {self.store.job_dir(outcome.name) / 'job.log'})", "red")
            self.say(body)

    def say(self, message: str, style: str | None = None) -> None:
        text = escape(message)
        self.console.print(f"[{style}]{text}[/]" if style else text, highlight=False, soft_wrap=True)

    def render(self) -> Any:
        table = Table(title=f"jobs ({time.strftime('%H:%M:%S')}, elapsed "
                            f"{format_seconds(time.time() - self.started)})")
        for col in ("job", "stage", "state", "progress", "ETA", "elapsed"):
            table.add_column(col, overflow="fold")
        rows = list(self.rows.values())
        shown = rows
        if len(rows) > MAX_TABLE_ROWS:
            shown = [r for r in rows if r.state in ("running", "failed", "interrupted", "elsewhere")]
            shown += [r for r in rows if r.state == "waiting"][:max(0, MAX_TABLE_ROWS - len(shown))]
        for r in shown:
            state, progress, eta, elapsed = self.describe(r)
            table.add_row(escape(r.job.name), r.job.stage, state, Text(progress), eta, elapsed)  # progress: raw text
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.state] = counts.get(r.state, 0) + 1
        summary = Text(" · ".join(f"{n} {s}" for s, n in counts.items()) + f" · executor: {self.executor.describe()}",
                       style="dim")
        return Group(table, summary)

    def describe(self, r: _Row) -> tuple[Text, str, str, str]:
        styles = {"done": "green", "cached": "green", "failed": "red", "skipped": "yellow",
                  "interrupted": "yellow", "elsewhere": "yellow", "running": "bold cyan"}
        if r.state != "running":
            elapsed = format_seconds(r.ended - r.submitted) if r.ended and r.submitted else ""
            return Text(r.state, style=styles.get(r.state, "")), r.note, "", elapsed
        status = read_status(self.store.job_dir(r.job.name))
        fresh = status.get("updated", 0) >= (r.submitted or 0) - 5 and status.get("state") == "running"
        if not fresh:
            return Text("queued", style="dim"), "", "", format_seconds(time.time() - (r.submitted or time.time()))
        started = status.get("started") or r.submitted or time.time()
        flagged = health_text(status.get("health"))
        if flagged:  # a collapsed training shows in red beside its progress
            return (Text("running, " + flagged.split(":")[0], style="bold red"),
                    str(status.get("progress") or status.get("phase") or ""),
                    format_seconds(status.get("eta_seconds")), format_seconds(time.time() - started))
        return (Text("running", style=styles["running"]), str(status.get("progress") or status.get("phase") or ""),
                format_seconds(status.get("eta_seconds")), format_seconds(time.time() - started))


def _headline(store: ResultStore, name: str) -> str:
    try:
        metrics = store.load(name).metrics
    except ValueError:
        return ""
    if metrics.get("stage") == "train":
        flagged = health_text(metrics.get("health"))
        return (f": best val rsum {metrics.get('best_rsum', float('nan')):.1f} (epoch {metrics.get('best_epoch')})"
                + (f"; TRAINING {flagged}" if flagged else ""))
    parts = [f"{p} rsum {m['rsum']:.1f}" if isinstance(m["rsum"], (int, float)) else f"{p} rsum not defined"
             for p, m in (metrics.get("protocols") or {}).items() if isinstance(m, Mapping) and "rsum" in m]
    return (": " + ", ".join(parts)) if parts else ""


def forced(job: Job, patterns: tuple[str, ...]) -> bool:
    """Whether `--force [PATTERN]` names this job (its name, or a glob on it)."""
    return any(p == "*" or fnmatch.fnmatch(job.name, p) or fnmatch.fnmatch(job.name, f"*{p}*") for p in patterns)


def run_campaign(campaign: Campaign, registry: Registry | None = None) -> int:
    """Plan, run and report `campaign`; `registry` is the one the CLI read (read here when not given): the
    registry is read once per process."""
    registry = registry or load_registry(*campaign.registry_files)
    plan, store, data_root = plan_campaign(campaign, registry)
    force = {j.name for j in plan.jobs if forced(j, campaign.force)}
    console.print(plan_table(plan, store, force))
    for note in plan.notes:
        say(f"note: {note}", "dim")
    if campaign.dry_run:
        return 0
    image_tile, caption_tile = campaign.tiles or (None, None)
    settings = RunSettings(results=str(campaign.results.resolve()), data_root=str(data_root.resolve()),
                           registry=[str(f) for f in campaign.registry_files],
                           device=campaign.device, checkpoint_minutes=campaign.checkpoint_minutes,
                           checkpoint_steps=campaign.checkpoint_steps, image_tile=image_tile,
                           caption_tile=caption_tile, eval_processes=campaign.eval_processes,
                           store_matrix=campaign.store_matrix, matrix_limit=campaign.matrix_limit,
                           data_folders={k: str(v) for k, v in campaign.data_folders.items()})
    for job in plan.jobs:
        if job.name in force:
            reset_job(store, job.name, "rerun forced (--force)")
    stop = StopFlag()
    options = dict(campaign.executor_options)
    kind = campaign.executor
    if kind == "inline":
        executor = make_executor(kind, options, stop=stop)
    elif kind == "slurm":
        executor = make_executor(kind, options, results=str(campaign.results), device=campaign.device)
    else:
        executor = make_executor(kind, options, device=campaign.device)
    recompute = sum(1 for j in plan.jobs if j.name not in force and refresh_action(store, j) == RECOMPUTE)
    say(f"running {sum(1 for j in plan.jobs if not is_cached(store, j))} job(s) on "
        f"{executor.describe()}; results in {campaign.results}"
        + (f" ({recompute} of them: {RECOMPUTE}, no model run)" if recompute else ""))
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        if stop():
            raise KeyboardInterrupt
        stop.set(signum)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        problems = Scheduler(plan, store, executor, settings, stop).run()
    except KeyboardInterrupt:
        say("aborted: unfinished jobs resume from their last checkpoint when you rerun the same command", "red")
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        for path in write_reports(campaign.results, campaign.reports, dataset=plan.jobs[0].dataset,
                                  registry=registry):
            say(f"wrote {path}")
    except Exception as exc:  # a report problem must not hide the campaign's outcome
        say(f"report failed: {type(exc).__name__}: {exc}", "red")
        problems.setdefault("report", str(exc))
    if problems:
        say(f"{len(problems)} job(s) did not finish here:", "red")
        for name, why in problems.items():
            say(f"  {name}: {why}")
        if stop():
            return 130
        return 1
    return 0
