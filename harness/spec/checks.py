"""`check-data`: validate a dataset folder before any job starts, naming every problem."""

from __future__ import annotations

from pathlib import Path

from harness.data.layouts import layout as layout_row
from harness.spec.registry import Registry, load_registry


def check_dataset(dataset: str, data_root: str | Path, splits: list[str] | None = None,
                  layout: str | None = None, registry: Registry | None = None,
                  decode_images: bool = False) -> list[str]:
    """Problems of `dataset` under `data_root` for `splits` (default: its test split); [] when valid.

    `decode_images` also decodes every raw image file (CUSA json and image retrieval layouts): what the
    `check-data` command does; a run's pre-flight check only looks for missing files (a bad image still
    stops the run, naming the file, when it is read).

    `dataset` may also be `senteval` (STS data) or `image_retrieval` (CUB/SOP/In-shop/iNaturalist).
    `layout` overrides the registry's (e.g. cusa_json for pixel methods on coco/f30k); the folder is checked by
    that row of the layout table against the dataset's declared shape (images per split, captions per image)."""
    if dataset == "senteval":
        from harness.data.senteval import check_senteval

        return check_senteval(data_root)
    if dataset == "image_retrieval":
        from harness.data.image_retrieval import check_image_retrieval

        return check_image_retrieval(data_root, decode_images=decode_images)
    ds = (registry or load_registry()).dataset(dataset)
    splits = splits or [ds.split]
    root = Path(data_root)
    if not root.exists():
        return [f"{root}: data root does not exist"]
    return layout_row(layout or ds.layout).check(root, ds.shape, splits, decode_images)
