"""Start N ranks of one command on this machine, as `torchrun --standalone` does, without its start-up cost.

`python -m harness.run.launch N -- python -m harness.run.executors.worker task.json` runs the command N times with
torch.distributed's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR,
MASTER_PORT: a free port on 127.0.0.1), waits for all, and exits with the first non-zero exit status of a rank
(stopping the others: SIGTERM, then SIGKILL after a grace) or 0. This module imports only the standard library:
importing torchrun's elastic launcher costs seconds (5.8 s on a 2-core machine) before any rank starts.

The ranks share the launcher's process group, so a Ctrl-C in the terminal or the local executor's SIGTERM to
the group reaches each rank directly; the launcher itself ignores both and waits for the ranks to save their
progress and exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

GRACE_SECONDS = 30.0  # after one rank failed, how long the others get to exit on SIGTERM


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(base: Mapping[str, str], rank: int, world: int, port: int) -> dict[str, str]:
    return {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def run_ranks(command: Sequence[str], world: int, env: Mapping[str, str] | None = None) -> int:
    """Run `command` as `world` ranks; the first non-zero exit status of a rank, else 0."""
    if world < 1:
        raise ValueError(f"launch: {world} processes; expected at least 1")
    base = dict(os.environ if env is None else env)
    port = free_port()
    procs: list[subprocess.Popen] = []
    previous: dict[int, object] = {}
    try:
        procs = [subprocess.Popen(list(command), env=rank_env(base, r, world, port), stdin=subprocess.DEVNULL)
                 for r in range(world)]
        # only now: an ignored signal would be inherited by the ranks
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        failed: int | None = None
        while True:
            codes = [p.poll() for p in procs]
            bad = [c for c in codes if c not in (None, 0)]
            if bad and failed is None:
                failed = bad[0]
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                deadline = time.monotonic() + GRACE_SECONDS
                while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                    time.sleep(0.1)
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            if all(c is not None for c in (p.poll() for p in procs)):
                if failed is None:
                    return 0
                return 128 - failed if failed < 0 else failed  # a rank killed by signal S: 128 + S, as a shell says
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        print("usage: python -m harness.run.launch N -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    return run_ranks(args[2:], int(args[0]))


if __name__ == "__main__":
    sys.exit(main())
