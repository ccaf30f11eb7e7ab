"""Run each task in this process, one after the other (tests, CPU, debugging)."""

from __future__ import annotations

from collections.abc import Sequence

from harness.run.executors.base import Executor, Outcome, StopFlag, Task, execute_task
from harness.run.jobs import JobInterrupted
from harness.run.status import error_lines


class InlineExecutor(Executor):
    """Runs the first offered task to completion inside `start`. A task asking for several processes
    runs in one: the global batch, hence the training, is the same."""

    name = "inline"

    def __init__(self, stop: StopFlag | None = None) -> None:
        self.stop = stop or StopFlag()
        self._ended: list[Outcome] = []

    @property
    def running(self) -> int:
        return len(self._ended)

    def start(self, tasks: Sequence[Task]) -> list[Task]:
        if not tasks or self.stop():
            return []
        task = tasks[0]
        self.started(task)
        try:
            execute_task(task, should_stop=self.stop)
            outcome = Outcome(task.name, ok=True)
        except JobInterrupted as exc:
            outcome = Outcome(task.name, ok=False, interrupted=True, error=str(exc))
        except Exception as exc:  # a failed job must not stop the campaign
            lines = error_lines(task.job_dir()) or [f"{type(exc).__name__}: {exc}"]
            outcome = Outcome(task.name, ok=False, error="\n".join(lines))
        self._ended.append(outcome)
        return [task]

    def wait(self, timeout: float) -> list[Outcome]:
        ended, self._ended = self._ended, []
        return ended

    def cancel(self, graceful: bool = True) -> None:
        self.stop.set()
