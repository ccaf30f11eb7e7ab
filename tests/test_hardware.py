"""Hardware provenance: env.json's `hardware` mapping and the short line the reports print from it."""

from __future__ import annotations

import platform

import torch

from harness.core import hardware as hw
from harness.core.results import ResultStore, environment
from harness.report import write_reports
from tests.test_report import add_eval, recall_block, registry, section, table_row

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
"""


def test_env_json_records_cpu_gpu_versions_and_math_settings():
    env = environment(seed=0, device="cpu")
    assert env["device"] == "cpu"  # kept beside the new mapping
    h = env["hardware"]
    assert h["cpu"]["model"]  # /proc/cpuinfo or platform.processor()
    assert h["cpu"]["threads"] == torch.get_num_threads()
    assert h["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert h["cuda"] == torch.version.cuda
    assert set(h["math"]) >= {"matmul_allow_tf32", "cudnn_allow_tf32", "float32_matmul_precision",
                              "deterministic_algorithms"}
    assert h["math"]["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert h["gpus"] == [] or all({"name", "memory_gib"} <= set(g) for g in h["gpus"])


def test_math_settings_follow_torch(monkeypatch):
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert hw.hardware("cpu")["math"]["float32_matmul_precision"] == "high"
    finally:
        torch.set_float32_matmul_precision(old)


def test_cpu_model_and_isa_flags_from_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(CPUINFO)
    info = hw.cpu_info(f)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["isa_flags"] == ["amx_tile", "avx512f", "avx512_vnni", "avx2", "fma", "avx", "sse4_2"]


def test_without_proc_cpuinfo_the_model_comes_from_platform(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    info = hw.cpu_info(tmp_path / "absent")  # macOS: no /proc
    assert info["model"] == "arm" and info["isa_flags"] is None


def test_summary_names_gpu_or_cpu():
    gpu = {"device": "cuda:0", "hardware": {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.1}],
                                            "cuda": "12.4", "math": {"matmul_allow_tf32": True}}}
    assert hw.hardware_summary(gpu) == "NVIDIA H100 80GB HBM3 (79.1 GiB), CUDA 12.4, TF32"
    cpu = {"device": "cpu", "hardware": {"cpu": {"model": "AMD EPYC 9654", "capability": "AVX512", "threads": 2},
                                         "gpus": [{"name": "unused GPU"}]}}
    assert hw.hardware_summary(cpu) == "AMD EPYC 9654 (AVX512, 2 threads)"
    assert hw.hardware_summary({"device": "cuda", "gpus": ["NVIDIA A100"], "cuda": "11.8"}) == "NVIDIA A100, CUDA 11.8"
    assert hw.hardware_summary({}) == "—"


def test_reports_show_the_hardware_of_each_run(tmp_path):
    store = ResultStore(tmp_path / "results")
    env = {"device": "cpu", "git": {"revision": "abc123def4567890", "dirty": False}, "packages": {"torch": "2.14.1"},
           "hardware": {"cpu": {"model": "AMD EPYC 9654", "capability": "AVX2", "threads": 4}}}
    add_eval(store, "toy", "alpha-a-official", {"method": "alpha", "variant": "a", "source": "official"},
             {"recall": recall_block(52.0, 38.0, 320.0)}, env=env)
    write_reports(tmp_path / "results", tmp_path / "reports", registry=registry())
    toy = (tmp_path / "reports" / "toy.md").read_text()
    row = table_row(section(toy, "## Runs"), "`toy/alpha-a-official/eval`")
    assert row[4:6] == ["cpu", "AMD EPYC 9654 (AVX2, 4 threads)"]
    index = (tmp_path / "reports" / "index.md").read_text()
    assert table_row(section(index, "## Environments"), "`abc123def456`")[2] == "AMD EPYC 9654 (AVX2, 4 threads)"
