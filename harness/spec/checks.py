"""`check-data`: validate a dataset folder before any job starts, naming every problem."""

from __future__ import annotations

from pathlib import Path

from harness.data.precomp import check_precomp
from harness.spec.registry import Registry, load_registry

EXPECTED_IMAGES = {"coco": {"testall": 5000, "dev": 5000, "train": 113287},
                   "f30k": {"test": 1000, "dev": 1014, "train": 29000}}


def check_dataset(dataset: str, data_root: str | Path, splits: list[str] | None = None,
                  layout: str | None = None, registry: Registry | None = None,
                  decode_images: bool = False) -> list[str]:
    """Problems of `dataset` under `data_root` for `splits` (default: its test split); [] when valid.

    `decode_images` also decodes every raw image file (CUSA json and image retrieval layouts): what the
    `check-data` command does; a run's pre-flight check only looks for missing files (a bad image still
    stops the run, naming the file, when it is read).

    `dataset` may also be `senteval` (STS data) or `image_retrieval` (CUB/SOP/In-shop/iNaturalist).
    `layout` overrides the registry's (e.g. cusa_json for pixel methods on coco/f30k)."""
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
    if (layout or ds.layout) == "cusa_json":
        from harness.data.cusa_json import check_cusa_json

        return [p for s in splits for p in check_cusa_json(root, s, dataset, decode_images=decode_images)]
    return check_precomp(root, dataset, splits, feature_dim=ds.feature_dim,
                         expected_images=EXPECTED_IMAGES.get(dataset), captions_per_image=ds.captions_per_image)
