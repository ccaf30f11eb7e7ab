"""The layout table: which layout a method reads a dataset in, unknown names, and a new layout as one row that
the registry, check-data and the data fingerprint pick up without an edit elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.core.errors import ItrbenchError
from harness.data.layouts import LAYOUTS, DataShape, Layout, layout, layout_for
from harness.run.plan import split_files
from harness.spec.checks import check_dataset
from harness.spec.registry import RegistryError, parse_registry


def test_a_method_reads_the_dataset_in_a_layout_holding_its_image_input():
    assert layout_for("precomp", "regions").name == "precomp"
    assert layout_for("precomp", "pixels").name == "cusa_json"
    assert layout_for("cusa_json", "pixels").name == "cusa_json"
    assert layout_for("cusa_json", "regions").name == "precomp"
    assert {row.image_input for row in LAYOUTS.values()} == {"regions", "pixels"}


def test_an_unknown_layout_names_the_valid_ones():
    with pytest.raises(ItrbenchError, match="unknown data layout 'precom'; valid: precomp, cusa_json; did you mean "
                                            "'precomp'"):
        layout("precom")


def _npz_read(root: Path, split: str, dataset: str | None):
    data = np.load(root / f"{split}.npz")

    class Split:
        n_images = int(data["images"].shape[0])
    return Split()


def _npz_check(root: Path, shape: DataShape, splits, decode_images: bool) -> list[str]:
    problems = []
    for split in splits:
        path = root / f"{split}.npz"
        if not path.is_file():
            problems.append(f"{path}: no such file")
        elif shape.images.get(split) not in (None, _npz_read(root, split, shape.name).n_images):
            problems.append(f"{path}: not {shape.images[split]} images")
    return problems


def test_a_new_layout_is_one_row(tmp_path, monkeypatch):
    row = Layout("npz_regions", "one {split}.npz", "regions", _npz_read, _npz_check,
                 lambda root, split, dataset: [root / f"{split}.npz"])
    monkeypatch.setitem(LAYOUTS, row.name, row)
    doc = {"datasets": {"mine": {"split": "test", "protocols": ["recall"], "layout": "npz_regions",
                                 "images": {"test": 3}}},
           "methods": {}}
    registry = parse_registry(doc)
    np.savez(tmp_path / "test.npz", images=np.zeros((2, 4), np.float32))
    assert check_dataset("mine", tmp_path, registry=registry) == [f"{tmp_path / 'test.npz'}: not 3 images"]
    assert split_files(tmp_path, "mine", "test", "npz_regions") == [tmp_path / "test.npz"]
    monkeypatch.delitem(LAYOUTS, row.name)
    with pytest.raises(RegistryError, match="unknown layout 'npz_regions'; valid: precomp, cusa_json"):
        parse_registry(yaml.safe_load(yaml.safe_dump(doc)))
