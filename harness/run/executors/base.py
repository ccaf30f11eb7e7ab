"""The executor interface, the task it runs, and the code that runs one task wherever it lands.

A `Task` is a planned job plus the campaign's runtime settings and its process count. `execute_task`
runs it in the current process (joining a torch.distributed group when a launcher started several).
Executors decide only *where* and *when*: `start` what fits now, `wait` for endings, `cancel`.
"""

from __future__ import annotations

import abc
import gc
import json
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from harness.core.results import ResultStore, write_text
from harness.run import distributed
from harness.run.jobs import JobContext, RunSettings, registry_from, run_job
from harness.run.plan import Job

INTERRUPTED_EXIT = 75  # a worker that stopped on request after saving its progress (EX_TEMPFAIL)
TASK_FILE = "task.json"


@dataclass(frozen=True)
class Task:
    job: Job
    settings: Any  # harness.run.jobs.RunSettings
    processes: int = 1  # data-parallel processes (training); 1 for evaluations

    @property
    def name(self) -> str:
        return self.job.name

    def job_dir(self) -> Path:
        return Path(self.settings.results) / self.job.name

    def to_json(self) -> str:
        return json.dumps({"job": self.job.to_dict(), "settings": self.settings.to_dict(),
                           "processes": self.processes}, indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> Task:
        d = json.loads(text)
        return cls(Job.from_dict(d["job"]), RunSettings.from_dict(d["settings"]), int(d.get("processes", 1)))

    def write(self) -> Path:
        path = self.job_dir() / TASK_FILE
        write_text(path, self.to_json())
        return path


@dataclass
class Outcome:
    name: str
    ok: bool
    interrupted: bool = False
    error: str = ""


class StopFlag:
    """Set by a signal (SIGTERM from a cancel, SIGUSR2 from Slurm before preemption) or by code: the
    running job saves its progress at the next training step or scoring tile and stops."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self._event.is_set()

    def set(self, signum: int | None = None) -> None:
        self.signal = signum
        self._event.set()

    def install(self, signals: Sequence[int] = (signal.SIGTERM,)) -> dict[int, Any]:
        """Route `signals` to this flag; returns the previous handlers."""
        previous = {}
        for s in signals:
            previous[s] = signal.getsignal(s)
            signal.signal(s, lambda signum, frame: self.set(signum))
        return previous


def resolve_device(settings: Any) -> str:
    if settings.device:
        return str(settings.device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def execute_task(task: Task, should_stop: Callable[[], bool] | None = None,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one task in this process (one rank of it, under a multi-process launcher)."""
    settings = task.settings
    registry = registry_from(settings.registry)
    device = resolve_device(settings)
    dist_ctx = distributed.init_from_env(device) if task.processes > 1 else None
    if dist_ctx is not None:
        device = dist_ctx.device
    ctx = JobContext(registry=registry, store=ResultStore(settings.results), data_root=Path(settings.data_root),
                     device=device, settings=settings, should_stop=should_stop, dist=dist_ctx,
                     processes=dist_ctx.world_size if dist_ctx else 1, **({"log": log} if log else {}))
    try:
        result = run_job(task.job, ctx)
        gc.collect()  # the job's DDP wrappers (reference cycles) go before their process group does
        distributed.barrier()  # no rank tears the group down while another still talks to it (gloo aborts)
        return result
    finally:
        distributed.shutdown()


class Executor(abc.ABC):
    """Runs tasks somewhere. Small on purpose: start what fits, report endings, cancel."""

    name: ClassVar[str]
    on_start: Callable[[Task], None] | None = None  # set by the orchestrator; called as a task launches

    def started(self, task: Task) -> None:
        if self.on_start is not None:
            self.on_start(task)

    @abc.abstractmethod
    def start(self, tasks: Sequence[Task]) -> list[Task]:
        """Start tasks from `tasks` (all dependencies met, in plan order) as resources allow; returns the
        ones started. Tasks not started are offered again later."""

    @abc.abstractmethod
    def wait(self, timeout: float) -> list[Outcome]:
        """Outcomes of tasks that ended since the last call; blocks up to `timeout` seconds for one."""

    @abc.abstractmethod
    def cancel(self, graceful: bool = True) -> None:
        """Stop every running task; graceful: they save their progress first where they can."""

    @property
    @abc.abstractmethod
    def running(self) -> int:
        """Tasks started and not yet reported by `wait`."""

    def describe(self) -> str:
        return self.name

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (after the last wait)."""
