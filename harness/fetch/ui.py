"""Terminal output of `fetch`: escaped one-line messages and a progress bar per file."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def say(console: Console, message: str, mark: str = "", style: str = "") -> None:
    """Print `[mark] message` on one logical line; the message is escaped (paths may hold '[')."""
    head = f"[{style}]{escape(mark)}[/] " if mark and style else (f"{escape(mark)} " if mark else "")
    console.print(head + escape(message), highlight=False, soft_wrap=True)


class FileProgress:
    """A per-file progress bar (bytes, speed, time left); call it with (bytes so far, total)."""

    def __init__(self, console: Console, label: str) -> None:
        self._progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True)
        self._label = label
        self._task = None

    def __enter__(self) -> FileProgress:
        self._progress.start()
        self._task = self._progress.add_task(self._label, total=None)
        return self

    def __call__(self, done: int, total: int | None) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
