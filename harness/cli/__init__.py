"""The command line: argument parsing and the commands (run, evaluate, metrics, import, check-data, report, fetch)."""

from harness.cli.app import main

__all__ = ["main"]
