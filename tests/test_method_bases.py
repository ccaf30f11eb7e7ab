"""The shared adapter bases in methods/common: every project adapter is a concrete Adapter built on them,
defines its own methods (none borrowed from another adapter by assignment), and the shared helpers behave."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from harness.api import Adapter
from harness.spec.registry import load_registry
from methods.common.clip import ClipAdapter
from methods.common.paper import PaperAdapter, as_regions

BASES = {"esa": PaperAdapter, "esl": PaperAdapter, "xdim": PaperAdapter, "vsl": PaperAdapter,
         "cusa": ClipAdapter, "clip_zeroshot": ClipAdapter}


@pytest.fixture(scope="module")
def adapters() -> dict[str, type[Adapter]]:
    registry = load_registry()
    return {name: registry.method(name).adapter_class() for name in BASES}


def test_each_project_adapter_builds_on_its_shared_base(adapters):
    for name, cls in adapters.items():
        assert issubclass(cls, BASES[name]) and not inspect.isabstract(cls), name
        assert cls.method == name


def test_no_adapter_borrows_another_classes_functions(adapters):
    """A function found in a class's own namespace was written in that class (its qualified name says so)."""
    for name, cls in adapters.items():
        for klass in cls.__mro__:
            if klass.__module__.startswith("methods."):
                for attr, value in vars(klass).items():
                    func = getattr(value, "__func__", value)
                    if inspect.isfunction(func) and func.__name__ != "<lambda>":
                        assert func.__qualname__.startswith(klass.__name__ + "."), (name, klass, attr)


def test_paper_adapters_delegate_the_official_layout_to_their_official_module(adapters):
    for name in ("esa", "esl", "xdim", "vsl"):
        fmt = adapters[name].official_format
        assert fmt.read.__module__ == f"methods.{name}.official" == fmt.write.__module__
        assert fmt.read.__name__ == "read_official" and fmt.write.__name__ == "write_official"
        assert adapters[name].weights_file("any") is None  # trained from scratch: no pretrained file to locate


def test_use_recipe_merges_the_defaults_under_the_recipe_without_changing_them():
    from methods.esa.adapter import DEFAULT_RECIPE, ESAAdapter

    before = dict(DEFAULT_RECIPE)
    adapter = ESAAdapter.build("bigru", "coco", {"embed_size": 8, "word_dim": 8, "img_dim": 6})
    assert adapter.recipe == before and adapter.recipe is not DEFAULT_RECIPE
    merged = adapter.use_recipe({"lr": 0.5, "epochs": 3})
    assert merged is adapter.recipe and merged == {**before, "lr": 0.5, "epochs": 3}
    assert DEFAULT_RECIPE == before and ESAAdapter.default_recipe is DEFAULT_RECIPE


def test_as_regions_reads_tensors_arrays_memmaps_and_sequences_alike(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5))
    want = torch.from_numpy(x.astype(np.float32))
    mm = np.lib.format.open_memmap(tmp_path / "r.npy", mode="w+", dtype=np.float16, shape=x.shape)
    mm[:] = x
    for given in (torch.from_numpy(x), x, list(x), [torch.from_numpy(r) for r in x]):
        got = as_regions(given)
        assert got.dtype == torch.float32 and got.shape == (3, 4, 5)
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(as_regions(mm, "cpu"), torch.from_numpy(np.asarray(mm, dtype=np.float32)))


def test_the_shared_clip_code_is_in_the_identity_of_both_clip_methods():
    """The model code of each CLIP method covers methods/common (where the CLIP code both run now lives), and
    the training stage's harness code covers the adapter base."""
    from harness.core.code_identity import STAGES, method_files, stage_files
    from harness.core.paths import PROJECT_DIR

    def rel(files):
        return {p.relative_to(PROJECT_DIR).as_posix() for p in files}

    cusa, zero_shot = (rel(method_files(a)) for a in ("methods.cusa.adapter:CUSAAdapter",
                                                       "methods.clip_zeroshot.adapter:ClipZeroShotAdapter"))
    for files in (cusa, zero_shot):
        assert {"methods/common/clip.py", "methods/common/paper.py"} <= files
    assert "harness/api/adapter.py" in rel(stage_files(STAGES["train"]))
    assert "methods/cusa/adapter.py" in cusa and "methods/clip_zeroshot/model.py" in zero_shot
    assert not any(f.startswith("methods/cusa/") for f in zero_shot)  # no longer borrows CUSA's package
