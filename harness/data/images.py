"""Whether raw image files decode (for `check-data` on the raw-image layouts: CUSA json, image retrieval)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def image_problem(path: str | Path) -> str | None:
    """None when `path` decodes as an image, else why not (missing, truncated, not an image ...).

    The whole file is decoded (JPEGs at 1/8 scale, which still reads every byte), so a truncated file is
    caught, not just a bad header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            if im.width < 1 or im.height < 1:
                return f"empty image ({im.width} x {im.height})"
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, struct.error ...
        text = str(exc).splitlines()[0] if str(exc) else ""
        return f"not a readable image ({type(exc).__name__}{': ' + text[:160] if text else ''})"
    return None


def unreadable_images(paths: Sequence[str | Path], threads: int | None = None) -> list[tuple[Path, str]]:
    """(path, reason) for every file of `paths` that does not decode, in the given order."""
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        found = list(pool.map(image_problem, paths))
    return [(Path(p), why) for p, why in zip(paths, found) if why is not None]


def image_problems_summary(where: str | Path, paths: Sequence[str | Path], what: str = "images") -> list[str]:
    """One check-data line for the undecodable files among `paths` ([] when all decode; missing ones are
    left to the caller's own "missing" message)."""
    bad = [(p, why) for p, why in unreadable_images(paths) if why != "missing"]
    if not bad:
        return []
    first, why = bad[0]
    return [f"{where}: {len(bad)} of {len(paths)} {what} do not decode (first: {first}: {why}); replace or "
            "re-download them"]
