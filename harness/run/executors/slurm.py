"""Slurm through submitit: ready jobs go out as job arrays, one array per resource shape.

A training job asks for `gpus_per_node = tasks_per_node = processes` (the recipe's `gpus`, or --gpus):
each task is one rank of DistributedDataParallel (submitit exports the torch.distributed variables).
Evaluations ask for one GPU. Jobs are `Checkpointable`: before a preemption or the time limit Slurm
sends USR2; the job saves a checkpoint at the next training step or scoring tile and is requeued,
and the requeued job resumes from it (Slurm's own requeue after a node failure resumes the same way,
from the last periodic checkpoint).

Options (`--executor-opt KEY=VALUE`): partition, account, qos, constraint, timeout_min (default 1440),
cpus_per_task (default 8), mem_gb, array_parallelism, max_requeues (default 30), signal_delay_s
(default 120), folder (submitit logs, default <results>/_slurm), cluster (submitit cluster name:
slurm, or local/debug to try the flow without a cluster).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import submitit

from harness.run.executors.base import Executor, Outcome, StopFlag, Task, execute_task
from harness.run.jobs import JobInterrupted
from harness.run.status import error_lines

OPTIONS = ("partition", "account", "qos", "constraint", "timeout_min", "cpus_per_task", "mem_gb",
           "array_parallelism", "max_requeues", "signal_delay_s", "folder", "cluster")
LATE_REQUEUE_SECONDS = 45.0  # if no step or tile boundary comes in time, requeue from the last checkpoint


class JobRunner(submitit.helpers.Checkpointable):
    """What a Slurm task runs. `checkpoint` (called by submitit on USR2) resubmits the same task, which
    resumes from the job's own checkpoint files; by then the job has saved them at a step boundary."""

    def __call__(self, task: Task) -> str:
        if task.processes > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=True)
        env = submitit.JobEnvironment()
        usr = env._usr_sig()
        previous = signal.getsignal(usr)
        stop = StopFlag()
        stop.install([usr, signal.SIGTERM])  # USR2: preemption/time limit (requeue); TERM: scancel (stop)
        watchdog = threading.Thread(target=_late_requeue, args=(stop, previous, env.global_rank), daemon=True)
        watchdog.start()
        try:
            execute_task(task, should_stop=stop)
        except JobInterrupted:
            if env.global_rank == 0 and callable(previous) and stop.signal == usr:
                stop.signal = None  # handled here: the watchdog stands down
                previous(usr, None)  # submitit: checkpoint() -> requeue -> exit
            return "interrupted"
        return "done"


def _late_requeue(stop: StopFlag, previous: Any, rank: int) -> None:
    """Requeue from the last checkpoint when the job does not reach a step boundary soon enough."""
    while not stop():
        time.sleep(1.0)
    time.sleep(LATE_REQUEUE_SECONDS)
    if stop.signal is None or stop.signal == signal.SIGTERM or rank != 0 or not callable(previous):
        return
    try:
        previous(stop.signal, None)
    except SystemExit as exc:
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    except BaseException:
        os._exit(1)
    os._exit(1)


class SlurmExecutor(Executor):
    name = "slurm"

    def __init__(self, folder: str | Path, options: Mapping[str, Any] | None = None, cluster: str | None = None,
                 device: str | None = None) -> None:
        self.options = dict(options or {})
        unknown = set(self.options) - set(OPTIONS)
        if unknown:
            raise ValueError(f"unknown slurm executor option(s) {', '.join(sorted(unknown))}; valid: "
                             + ", ".join(OPTIONS))
        self.folder = Path(self.options.pop("folder", folder))
        self.cluster = self.options.pop("cluster", cluster)
        requeues = int(self.options.get("max_requeues", 30))
        self.executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cluster,
                                              slurm_max_num_timeout=requeues, local_max_num_timeout=requeues)
        self.device = device
        self._jobs: list[tuple[Task, Any]] = []

    @classmethod
    def from_options(cls, options: Mapping[str, str], results: str | Path = "results",
                     device: str | None = None) -> SlurmExecutor:
        return cls(Path(results) / "_slurm", options, device=device)

    def describe(self) -> str:
        return f"slurm via submitit ({self.executor.cluster}), logs in {self.folder}"

    @property
    def running(self) -> int:
        return len(self._jobs)

    def parameters(self, processes: int) -> dict[str, Any]:
        o = self.options
        gpus = 0 if self.device == "cpu" else processes
        params: dict[str, Any] = {
            "name": "itrbench", "nodes": 1, "tasks_per_node": processes, "gpus_per_node": gpus,
            "cpus_per_task": int(o.get("cpus_per_task", 8)), "timeout_min": int(o.get("timeout_min", 1440)),
            "slurm_signal_delay_s": int(o.get("signal_delay_s", 120)),
        }
        if "mem_gb" in o:
            params["mem_gb"] = int(o["mem_gb"])
        for key in ("partition", "account", "qos", "constraint", "array_parallelism"):
            if key in o:
                params[f"slurm_{key}"] = int(o[key]) if key == "array_parallelism" else o[key]
        return params

    def start(self, tasks: Sequence[Task]) -> list[Task]:
        groups: dict[int, list[Task]] = defaultdict(list)
        for task in tasks:
            groups[task.processes].append(task)
        for processes, group in groups.items():
            self.executor.update_parameters(**self.parameters(processes))
            with self.executor.batch():
                jobs = [self.executor.submit(JobRunner(), task) for task in group]
            for task, job in zip(group, jobs):
                task.write()  # for a manual rerun: python -m harness.run.executors.worker <job dir>/task.json
                self._jobs.append((task, job))
                self.started(task)
        return list(tasks)

    def wait(self, timeout: float) -> list[Outcome]:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            ended = [(t, j) for t, j in self._jobs if j.done()]
            if ended or time.monotonic() >= deadline or not self._jobs:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        out = []
        for task, job in ended:
            self._jobs.remove((task, job))
            exc = job.exception()
            if exc is None:
                results = job.results()
                if results and results[0] == "interrupted":
                    out.append(Outcome(task.name, ok=False, interrupted=True, error="stopped; progress saved"))
                else:
                    out.append(Outcome(task.name, ok=True))
                continue
            lines = error_lines(task.job_dir()) or str(exc).strip().splitlines()[-6:]
            out.append(Outcome(task.name, ok=False, error="\n".join(
                [*lines, f"(slurm job {job.job_id}, {job.state}; submitit log: {job.paths.stdout})"])))
        return out

    def cancel(self, graceful: bool = True) -> None:
        """scancel: Slurm sends SIGTERM, on which a job saves its progress at the next step or tile."""
        for _, job in self._jobs:
            job.cancel(check=False)
