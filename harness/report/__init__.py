"""Reports rendered from stored results only (never re-running a model).

- `runs`: results grouped into rows (official checkpoint / retrained over seeds) and per-metric statistics
- `paper`: reports/<paper>.md, every reported table reproduced cell by cell with deltas and flags
- `dataset`: reports/<dataset>.md, all methods x all protocols, efficiency, paired significance
- `index`: reports/index.md; `plots`: PNG figures; `markdown`, `columns`: table building blocks
"""

from harness.report.write import write_reports

__all__ = ["write_reports"]
