"""Reports rendered from stored results only (never re-running a model)."""

from harness.report.markdown import write_reports

__all__ = ["write_reports"]
