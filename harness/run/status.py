"""The live state of a job, as the job itself writes it: `<job dir>/status.json` and `<job dir>/job.log`.

Every executor runs jobs somewhere else (this process, a subprocess, a Slurm node), so progress
flows through the result folder, which they all share: the job rewrites status.json (atomically,
a few times a second at most) and appends to job.log; the orchestrator only reads them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

from harness.core.results import write_json

STATUS, LOG = "status.json", "job.log"
STATES = ("queued", "running", "done", "failed", "interrupted")


def read_status(job_dir: str | Path) -> dict[str, Any]:
    """The job's last status record ({} when it never started or the file is being replaced)."""
    try:
        return json.loads((Path(job_dir) / STATUS).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def log_tail(job_dir: str | Path, lines: int = 12) -> list[str]:
    path = Path(job_dir) / LOG
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in deque(f, maxlen=lines)]


def error_lines(job_dir: str | Path, lines: int = 6) -> list[str]:
    """The last lines of the job's error (status.json), else of its log."""
    err = read_status(job_dir).get("error")
    if err:
        return err.splitlines()[-lines:]
    return log_tail(job_dir, lines)


def format_seconds(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StatusWriter:
    """Writes a job's status.json; progress updates are throttled, state changes are immediate.

    ETA is extrapolated from the progress made since this process started the current phase.
    """

    def __init__(self, job_dir: str | Path, enabled: bool = True, interval: float = 0.5) -> None:
        self.path = Path(job_dir) / STATUS
        self.enabled = enabled
        self.interval = interval
        self.record: dict[str, Any] = {}
        self._last = 0.0
        self._phase: tuple[str, float, float] | None = None  # (phase, start time, progress at start)

    def state(self, state: str, **fields: Any) -> None:
        now = time.time()
        if state == "running" and self.record.get("state") != "running":
            self.record = {"started": now}
        self.record.update(state=state, updated=now, pid=os.getpid(), host=socket.gethostname(), **fields)
        self._write(force=True)

    def progress(self, phase: str, done: float, total: float, text: str) -> None:
        now = time.time()
        if self._phase is None or self._phase[0] != phase:
            self._phase = (phase, now, done)
        _, start, done0 = self._phase
        eta = None
        if done > done0 and total:
            eta = (total - done) * (now - start) / (done - done0)
        self.record.update(phase=phase, done=done, total=total, progress=text, eta_seconds=eta, updated=now)
        self._write(force=False)

    def _write(self, force: bool) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        try:
            write_json(self.path, self.record)
        except OSError:  # a status update must never kill the job
            pass
