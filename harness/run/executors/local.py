"""A local pool: one worker process per visible GPU (CUDA_VISIBLE_DEVICES set per worker), or a single
CPU worker. A training task with `processes` > 1 takes that many GPUs and runs as that many ranks
(`harness.run.launch`, torchrun's environment; DistributedDataParallel); on a machine without GPUs it runs
that many CPU processes (gloo).

Each task is a fresh `python -m harness.run.executors.worker <job dir>/task.json` process whose output goes
to the job's job.log, so a crash (even an out-of-memory kill) takes down only that job.
Tasks start in plan order; a task that does not fit waits for GPUs to free up (no overtaking, so a
multi-GPU job is not starved by single-GPU ones).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harness.core.paths import PROJECT_DIR
from harness.run.executors.base import INTERRUPTED_EXIT, Executor, Outcome, Task
from harness.run.status import LOG, error_lines, read_status

PROJECT_ROOT = PROJECT_DIR  # so workers import this very checkout
CANCEL_GRACE_SECONDS = 60.0  # after SIGTERM, time to write a checkpoint before SIGKILL


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else every device torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover
        return []


@dataclass
class _Running:
    task: Task
    process: subprocess.Popen
    slots: list[int]
    log: object


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, gpus: Sequence[str] | None = None, workers: int | None = None, device: str | None = None,
                 python: str = sys.executable) -> None:
        """`gpus`: GPU ids to use (default: all visible); `workers`: concurrent CPU jobs when there is
        no GPU (default 1); `device`: "cpu" forces CPU workers even where GPUs exist."""
        self.gpus = [] if device == "cpu" else list(visible_gpus() if gpus is None else gpus)
        self.slots = self.gpus if self.gpus else [None] * max(1, int(workers or 1))
        self.free = list(range(len(self.slots)))
        self.python = python
        self._running: list[_Running] = []

    @classmethod
    def from_options(cls, options: Mapping[str, str], device: str | None = None) -> LocalExecutor:
        if device not in (None, "cpu", "cuda"):
            raise ValueError(f"--device {device} with --executor local: the pool gives each worker its GPU(s); "
                             "choose them with --executor-opt gpus=0,1 (or --device cpu)")
        unknown = set(options) - {"gpus", "workers"}
        if unknown:
            raise ValueError(f"unknown local executor option(s) {', '.join(sorted(unknown))}; valid: gpus "
                             "(comma-separated ids), workers (CPU jobs at once)")
        gpus = [g for g in options["gpus"].split(",") if g] if "gpus" in options else None
        return cls(gpus=gpus, workers=int(options["workers"]) if "workers" in options else None, device=device)

    def describe(self) -> str:
        if self.gpus:
            return f"local pool, {len(self.gpus)} GPU worker(s) (GPUs {','.join(self.gpus)})"
        return f"local pool, {len(self.slots)} CPU worker(s)"

    @property
    def running(self) -> int:
        return len(self._running)

    def slots_needed(self, task: Task) -> int:
        return min(task.processes, len(self.gpus)) if self.gpus else 1

    def start(self, tasks: Sequence[Task]) -> list[Task]:
        started = []
        for task in tasks:
            need = self.slots_needed(task)
            if need > len(self.free):
                break  # plan order: later tasks wait too
            slots, self.free = self.free[:need], self.free[need:]
            self._launch(task, slots)
            started.append(task)
        return started

    def command(self, task: Task, processes: int) -> list[str]:
        worker = ["-m", "harness.run.executors.worker", str(task.job_dir() / "task.json")]
        if processes <= 1:
            return [self.python, *worker]
        return [self.python, "-m", "harness.run.launch", str(processes), "--", self.python, *worker]

    def _launch(self, task: Task, slots: list[int]) -> None:
        processes = len(slots) if self.gpus else task.processes
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(self.slots[s]) for s in slots) if self.gpus else ""
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        if not self.gpus and processes > 1:
            env.setdefault("OMP_NUM_THREADS", "1")
        task_path = task.write()
        log = open(task.job_dir() / LOG, "a", encoding="utf-8")
        if processes != task.processes:
            log.write(f"note: the recipe asks for {task.processes} GPUs, this machine gives {processes}; "
                      "same global batch\n")
            log.flush()
        process = subprocess.Popen(self.command(task, processes), env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   cwd=os.getcwd())
        assert task_path.is_file()
        self._running.append(_Running(task, process, slots, log))
        self.started(task)

    def wait(self, timeout: float) -> list[Outcome]:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            ended = [r for r in self._running if r.process.poll() is not None]
            if ended or time.monotonic() >= deadline or not self._running:
                break
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        out = []
        for r in ended:
            self._running.remove(r)
            self.free = sorted(self.free + r.slots)
            r.log.close()
            rc = r.process.returncode
            if rc == 0:
                out.append(Outcome(r.task.name, ok=True))
            elif rc == INTERRUPTED_EXIT or read_status(r.task.job_dir()).get("state") == "interrupted":
                out.append(Outcome(r.task.name, ok=False, interrupted=True, error="stopped; progress saved"))
            else:
                lines = error_lines(r.task.job_dir()) or [f"worker exited with code {rc}"]
                reason = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
                out.append(Outcome(r.task.name, ok=False, error="\n".join([*lines, f"({reason})"])))
        return out

    def cancel(self, graceful: bool = True) -> None:
        """SIGTERM every worker group (they checkpoint and exit), SIGKILL what is left after the grace."""
        for r in self._running:
            _signal_group(r.process, signal.SIGTERM)
        deadline = time.monotonic() + (CANCEL_GRACE_SECONDS if graceful else 0.0)
        while any(r.process.poll() is None for r in self._running) and time.monotonic() < deadline:
            time.sleep(0.1)
        for r in self._running:
            if r.process.poll() is None:
                _signal_group(r.process, signal.SIGKILL)
                r.process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
