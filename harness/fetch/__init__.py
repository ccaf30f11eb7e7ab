"""`fetch`: official checkpoints and evaluation data in one command, verified.

Modules: `targets` (what the registry lists, user overrides, --record), `download` (resumable HTTP / local
copies), `drive` (the thin Google Drive layer over gdown), `archive` (safe zip / tar unpacking), `verify`
(size, sha256, the adapter's strict loader, stamps), `fetcher` (one file: sources in order, atomic install),
`data` and `sources` (`fetch data`), `ui` (messages, progress bars), `command` (the CLI: `add_fetch_parser`,
`run_fetch`). See docs/fetch.md.
"""

from harness.fetch.command import add_fetch_parser, run_fetch
from harness.fetch.errors import FetchError

__all__ = ["FetchError", "add_fetch_parser", "run_fetch"]
