"""bench/gpu.py: its CPU smoke mode (--device cpu --small) writes the JSON with every field for all five
methods, and the drift measures (ranks of the positives) are right on hand-made matrices."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ENTRY_FIELDS = {"precision", "skipped", "encode", "scoring", "peak_gpu_mib", "drift_vs_fp32"}
ENCODE_FIELDS = {"images", "captions", "image_s", "caption_s", "images_per_s", "captions_per_s"}
SCORING_FIELDS = {"images", "captions", "pairs", "seconds", "pairs_per_s", "sampled", "full_pairs",
                  "projected_full_s"}
DRIFT_FIELDS = {"max_abs_diff", "t2i_rank_changes", "t2i_queries", "i2t_rank_changes", "i2t_queries"}


def test_small_cpu_run_writes_every_field(tmp_path):
    bench = load_bench()
    out = tmp_path / "gpu.json"
    assert bench.main(["--device", "cpu", "--small", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["small"] is True
    assert report["shape"] == {"images": 6, "captions": 30, "regions": 4, "img_dim": 24}
    assert list(report["methods"]) == ["esa-bigru", "esl-h", "xdim", "vsl-sgr", "cusa-vitb32"]
    for name, result in report["methods"].items():
        assert result["parameters"] > 0
        by_precision = {e["precision"]: e for e in result["precisions"]}
        assert list(by_precision) == ["fp32", "bf16", "fp16"]
        for entry in by_precision.values():
            assert set(entry) == ENTRY_FIELDS
            assert set(entry["encode"]) == ENCODE_FIELDS and set(entry["scoring"]) == SCORING_FIELDS
        assert "CUDA" in by_precision["fp16"]["skipped"] and by_precision["fp16"]["scoring"]["pairs"] is None
        for precision in ("fp32", "bf16"):
            entry = by_precision[precision]
            assert entry["skipped"] is None and entry["peak_gpu_mib"] is None  # no GPU memory on CPU
            assert entry["encode"]["images"] == 6 and entry["encode"]["captions"] == 30
            assert entry["encode"]["images_per_s"] > 0 and entry["encode"]["captions_per_s"] > 0
            scoring = entry["scoring"]
            pairwise = result["scoring_kind"] == "pairwise"
            assert scoring["sampled"] is pairwise, name
            assert (scoring["images"], scoring["captions"]) == ((4, 20) if pairwise else (6, 30))
            assert scoring["full_pairs"] == 180 and scoring["pairs"] == scoring["images"] * scoring["captions"]
            assert scoring["projected_full_s"] == pytest.approx(180 / scoring["pairs_per_s"])
            assert set(entry["drift_vs_fp32"]) == DRIFT_FIELDS
        fp32, bf16 = by_precision["fp32"]["drift_vs_fp32"], by_precision["bf16"]["drift_vs_fp32"]
        assert fp32["max_abs_diff"] == 0 and fp32["t2i_rank_changes"] == fp32["i2t_rank_changes"] == 0
        assert 0 < bf16["max_abs_diff"] < 1.0, name  # bf16 autocast really ran, and stays close
        assert bf16["t2i_queries"] == by_precision["bf16"]["scoring"]["captions"]


def test_positive_ranks_and_drift():
    bench = load_bench()
    sims = np.zeros((2, 10))
    sims[0, :5] = [0.9, 0.1, 0.2, 0.3, 0.4]  # image 0's captions
    sims[1, 5:] = [0.5, 0.6, 0.7, 0.8, 0.95]
    sims[1, 1] = 0.5  # caption 1 prefers image 1
    t2i, i2t = bench.positive_ranks(sims)
    assert t2i.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert i2t.tolist() == [0, 0]
    moved = sims.copy()
    moved[0, 9] = 0.99  # image 0 now ranks caption 9 first; caption 9 ranks image 0 first
    result = bench.drift(moved, sims)
    assert result["max_abs_diff"] == pytest.approx(0.99)
    assert result["t2i_rank_changes"] == 1 and result["i2t_rank_changes"] == 1
    assert (result["t2i_queries"], result["i2t_queries"]) == (10, 2)


def test_a_failing_precision_is_recorded_and_the_json_still_written(tmp_path, monkeypatch, capsys):
    bench = load_bench()
    real = bench.run_precision

    def no_bf16(adapter, images, captions, shape, device, precision):
        if precision == "bf16":
            raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'BFloat16'\nmore detail")
        return real(adapter, images, captions, shape, device, precision)

    monkeypatch.setattr(bench, "run_precision", no_bf16)
    out = tmp_path / "gpu.json"
    assert bench.main(["--device", "cpu", "--small", "--methods", "esa-bigru", "--out", str(out)]) == 0
    entries = json.loads(out.read_text())["methods"]["esa-bigru"]["precisions"]
    assert [e["precision"] for e in entries] == ["fp32", "bf16", "fp16"]
    assert entries[1]["skipped"] == "failed: RuntimeError: \"addmm_impl_cpu_\" not implemented for 'BFloat16'"
    assert entries[1]["scoring"]["pairs_per_s"] is None and entries[0]["scoring"]["pairs_per_s"] > 0
    assert bench.main(["--device", "cpu", "--small", "--methods", "esa,xdim", "--out", str(out)]) == 2
    assert "unknown method 'esa'" in capsys.readouterr().err
