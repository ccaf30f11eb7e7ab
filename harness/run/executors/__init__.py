"""Where jobs run: `inline` (this process), `local` (one worker process per visible GPU, or one on CPU;
torchrun for multi-GPU training), `slurm` (submitit job arrays, requeued on preemption).

An executor only starts tasks and reports how they ended (see `base.Executor`); the orchestrator owns
the dependency graph, and progress flows through each job's status.json. Another engine fits by
implementing `start`, `wait` and `cancel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EXECUTORS = ("inline", "local", "slurm")


def make_executor(name: str, options: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
    """An executor by name; `options` are its `--executor-opt KEY=VALUE` settings."""
    options = dict(options or {})
    if name == "inline":
        from harness.run.executors.inline import InlineExecutor

        if options:
            raise ValueError(f"the inline executor takes no options (got {', '.join(options)})")
        return InlineExecutor(**kwargs)
    if name == "local":
        from harness.run.executors.local import LocalExecutor

        return LocalExecutor.from_options(options, **kwargs)
    if name == "slurm":
        from harness.run.executors.slurm import SlurmExecutor

        return SlurmExecutor.from_options(options, **kwargs)
    raise ValueError(f"unknown executor '{name}'; valid: {', '.join(EXECUTORS)}")
