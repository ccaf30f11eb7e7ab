"""reports/site/: a static leaderboard (HTML, one stylesheet, one script; no CDN, opens from file://).

- `pages`: index.html, a page per dataset and per paper, built from the report's rows (`RunGroup`)
- `cells`: table cells (values, reported numbers, the markdown's verdicts, interval whiskers)
- `html`: escaped builders; `site.css`, `site.js`: styles, sorting and filtering
"""

from harness.report.site.pages import write_site

__all__ = ["write_site"]
