"""Reports rendered from stored results only (never re-running a model).

- `runs`: results grouped into rows (official checkpoint / imported matrix / retrained over seeds) and
  per-metric statistics; `matching`: which reported rows a run is the model of
- `paper`: reports/<paper>.md, every reported table reproduced cell by cell with deltas and flags
- `dataset`: reports/<dataset>.md, all methods x all protocols, efficiency, paired significance
- `index`: reports/index.md; `plots`: PNG figures; `markdown`, `columns`: table building blocks
- `site`: reports/site/, the static leaderboard (HTML) built from the same rows; `export`: the tidy table
  (`--export`); `merge`: several results folders as one store (`--results A --results B`); `provenance`:
  hardware and code revision from env.json
"""

from harness.report.write import write_reports

__all__ = ["write_reports"]
