"""`python -m harness.run.executors.worker <job dir>/task.json`: run one task in this process.

Started by the local executor (directly, or once per rank by `harness.run.launch` or torchrun). SIGTERM
(cancel) and SIGUSR2 make the job save its progress at the next step or tile and exit with INTERRUPTED_EXIT.
Rerunning the same command by hand reproduces a failure with its full traceback.
"""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from harness.run.executors.base import INTERRUPTED_EXIT, StopFlag, Task, execute_task
from harness.run.jobs import JobInterrupted
from harness.run.status import read_status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m harness.run.executors.worker TASK.json", file=sys.stderr)
        return 2
    task = Task.from_json(Path(argv[0]).read_text())
    stop = StopFlag()
    stop.install([signal.SIGTERM, signal.SIGUSR2])
    try:
        execute_task(task, should_stop=stop, log=lambda msg: None)
    except JobInterrupted:
        return INTERRUPTED_EXIT
    except Exception:
        if read_status(task.job_dir()).get("state") != "failed":  # else the job has logged it already
            traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
