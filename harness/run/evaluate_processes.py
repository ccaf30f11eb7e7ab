"""`evaluate --processes N`: the same command relaunched as N ranks (`harness.run.launch`, torchrun's
environment without its start-up cost), one rank per process.

Each rank joins the process group (gloo on CPU, NCCL on GPUs, `harness.run.distributed`), scores its share of
the tiles (`harness.eval.sharding`), and rank 0 merges them and writes every output. Under a launcher that
already started the ranks (torchrun, Slurm tasks through submitit) the command runs as it is, with the
launcher's world size.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.core.paths import PROJECT_DIR
from harness.run import distributed, launch


def under_launcher() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def several() -> bool:
    return distributed.active()


def relaunch(argv: Sequence[str], processes: int, device: str | None) -> int:
    """Run `run_all.py <argv>` as `processes` ranks on this machine (`harness.run.launch`); its exit status.

    On CPU each rank gets an equal share of the cores as its thread count (unless OMP_NUM_THREADS is set)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_DIR), env.get("PYTHONPATH", "")) if p)
    if not str(device or "cpu").startswith("cuda"):
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return launch.run_ranks([sys.executable, str(PROJECT_DIR / "run_all.py"), *argv], processes, env)


def join(device: str) -> tuple[str, bool]:
    """(this rank's device, whether it is rank 0) after joining the launcher's process group, if any."""
    ctx = distributed.init_from_env(device)
    if ctx is None:
        return device, True
    return ctx.device, ctx.is_main


def shared_cache(matrix: Path) -> Path:
    """The tile cache folder the ranks share when none is given: `<matrix stem>.tiles` beside the matrix."""
    return matrix.with_name(matrix.stem + ".tiles")
