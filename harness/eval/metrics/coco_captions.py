"""COCO ids of the captions of a raw-image COCO test split (the CUSA/ALBEF json layout).

ECCV Caption and CxC name the 25,000 Karpathy COCO 5K test captions by COCO caption id. A json test split
holds the same 5000 images with every COCO caption (25,010: a few images have 6 or 7) and raw caption text.
Each json caption is matched to a Karpathy caption of its image by its letters and digits (case, spaces and
punctuation ignored: the Karpathy text is tokenised, the json text is not); the extra captions match none and
are left out of those two protocols. Karpathy's 5 captions of an image are taken in ascending caption-id
order, as `harness.eval.metrics.ids` assumes when a data folder has no `testall_capids.txt`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.core.paths import ASSETS_DIR
from harness.eval.metrics.ids import N_IMAGES, CocoTestIds, canonical_ids

ASSETS = ASSETS_DIR / "coco5k"
_NOT_ALNUM = re.compile(r"[^a-z0-9]")
_IMAGE_NUMBER = re.compile(r"(\d+)(?:\.\w+)?$")


def text_key(caption: str) -> str:
    return _NOT_ALNUM.sub("", caption.lower())


def coco_image_id(name: str) -> int | None:
    """391895 for "COCO_val2014_000000391895.jpg", "391895" or a path ending in either; None otherwise."""
    m = _IMAGE_NUMBER.search(Path(str(name)).name)
    return int(m.group(1)) if m else None


@lru_cache(maxsize=1)
def _karpathy_table() -> dict[tuple[int, str], list[int]]:
    """(COCO image id, text key) -> COCO caption ids of the 25,000 Karpathy test captions (an image may hold
    the same text twice)."""
    images = [int(x) for x in (ASSETS / "testall_ids.txt").read_text().split()]
    texts = (ASSETS / "testall_caps.txt").read_text(encoding="utf-8").splitlines()
    canon = canonical_ids()
    caption_ids = dict(zip(canon.image_ids.tolist(), canon.caption_ids.reshape(N_IMAGES, 5).tolist()))
    table: dict[tuple[int, str], list[int]] = {}
    for k in range(0, len(images), 5):
        image = images[k]
        for caption_id, text in zip(caption_ids[image], texts[k:k + 5]):
            table.setdefault((image, text_key(text)), []).append(caption_id)
    return table


def coco_ids_of_columns(row_images: Sequence[str], image_of_caption: np.ndarray,
                        captions: Sequence[str]) -> tuple[CocoTestIds, np.ndarray] | str:
    """(ids of the rows and of the matched columns, the matched column indices), or why there are none.

    `row_images`: each row's image name or id; `captions`: each column's text; `image_of_caption`: column ->
    row. The rows must be the 5000 COCO 5K test images and every Karpathy caption must be found once.
    """
    rows = [coco_image_id(n) for n in row_images]
    if None in rows:
        bad = row_images[rows.index(None)]
        return f"image '{bad}' has no COCO image id in its name"
    canon = canonical_ids()
    if len(rows) != N_IMAGES or set(rows) != set(canon.image_ids.tolist()):
        return f"the rows are not the {N_IMAGES} COCO 5K test images ({len(set(rows))} distinct images)"
    table = _karpathy_table()
    total = sum(len(v) for v in table.values())
    columns, ids, used = [], [], set()
    for j, (row, text) in enumerate(zip(np.asarray(image_of_caption).tolist(), captions)):
        free = [c for c in table.get((rows[row], text_key(text)), ()) if c not in used]
        if free:
            used.add(free[0])
            columns.append(j)
            ids.append(free[0])
    if len(ids) != total:
        return (f"{total - len(ids)} of the {total} COCO 5K test captions were not found in the split's "
                "captions (matched by text within each image)")
    return (CocoTestIds(np.asarray(rows, dtype=np.int64), np.asarray(ids, dtype=np.int64),
                        source="caption text matched to the Karpathy COCO 5K captions"),
            np.asarray(columns, dtype=np.int64))
