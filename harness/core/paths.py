"""Where the harness's own files are: the package, its bundled assets and the project checkout."""

from __future__ import annotations

from pathlib import Path

HARNESS_DIR = Path(__file__).resolve().parents[1]
ASSETS_DIR = HARNESS_DIR / "assets"
PROJECT_DIR = HARNESS_DIR.parent  # the checkout (or site-packages for an installed wheel)
