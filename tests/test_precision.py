"""Mixed precision in the scoring engine: autocast on request, float32 storage, its own job identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plan_helpers import plan_of
from test_orchestrate_fixtures import DIM, TinyAdapter, campaign, one_thread  # noqa: F401 - one_thread: autouse

from harness.eval.precision import autocast, check_precision
from harness.eval.scoring import encode_images, similarity_matrix
from harness.spec.registry import load_registry


def test_precision_names_and_devices_are_checked():
    check_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        check_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        check_precision("fp16", "cpu")


def test_autocast_changes_the_compute_dtype_only_when_asked():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16


def test_bf16_scoring_is_close_to_fp32_and_stored_as_float32():
    torch.manual_seed(0)
    adapter = TinyAdapter("a", "demo", {"embed_size": 16})
    rng = np.random.default_rng(0)
    images = rng.standard_normal((6, 5, DIM)).astype(np.float32)
    captions = [f"a {w} on the {v}" for w in ("dog", "cat", "bus") for v in ("grass", "road", "beach", "bed",
                                                                              "sofa", "table", "hill", "lake",
                                                                              "snow", "sand")][:30]
    exact = similarity_matrix(adapter, images, captions, batch_size=4)
    again = similarity_matrix(adapter, images, captions, batch_size=4, precision="fp32")
    half = similarity_matrix(adapter, images, captions, batch_size=4, precision="bf16")
    assert np.array_equal(exact, again)
    assert half.dtype == np.float32 and encode_images(adapter, images, precision="bf16").dtype == torch.float32
    assert not np.array_equal(exact, half)  # bf16 really ran
    assert np.abs(exact - half).max() < 0.05


def test_a_non_fp32_evaluation_is_its_own_job_and_row(tmp_path):
    campaign(tmp_path)
    registry = load_registry(tmp_path / "registry.yaml")
    kw = dict(stage="all", data_root=tmp_path / "data", checkpoint_dir=tmp_path / "ck", code="c", variants=["a"])
    exact = plan_of(registry, ["tiny"], "demo", **kw).by_name()
    half = plan_of(registry, ["tiny"], "demo", precision="bf16", **kw).by_name()
    assert "demo/tiny-a-seed0/eval" in exact and "demo/tiny-a-seed0/eval-bf16" in half
    job = half["demo/tiny-a-seed0/eval-bf16"]
    assert job.config.precision == "bf16" and job.config.setting == {"precision": "bf16"}
    assert job.key != exact["demo/tiny-a-seed0/eval"].key
    assert half["demo/tiny-a-seed0/train"].key == exact["demo/tiny-a-seed0/train"].key  # training is shared
