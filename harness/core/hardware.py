"""Hardware provenance for env.json: which CPU / GPU made a number, and the math settings that change it.

`hardware()` collects the `hardware` mapping stored in every result's env.json; `hardware_summary()`
turns a stored mapping (of any itrbench version, possibly partial) into the short line the reports print,
e.g. "AMD EPYC (AVX512, 2 threads)" or "NVIDIA H100 80GB HBM3 (79.1 GiB), CUDA 12.4".
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# vector-ISA flags of /proc/cpuinfo worth naming, widest first (x86 and Arm)
ISA_FLAGS = ("amx_tile", "avx512f", "avx512_bf16", "avx512_vnni", "avx2", "fma", "avx", "sse4_2",
             "sve2", "sve", "asimd", "neon")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY")


def cpu_info(cpuinfo: Path = CPUINFO) -> dict[str, Any]:
    """CPU model, logical cores and the vector-ISA flags it reports; without /proc/cpuinfo (macOS,
    Windows) the model is `platform.processor()` and the flags are unknown (None)."""
    model, flags = None, None
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if model is None and key in ("model name", "hardware", "cpu model") and value:
            model = value
        elif flags is None and key in ("flags", "features") and value:
            present = set(value.split())
            flags = [f for f in ISA_FLAGS if f in present]
    return {"model": model or platform.processor() or platform.machine() or None,
            "machine": platform.machine() or None, "logical_cores": os.cpu_count(), "isa_flags": flags}


def _torch_info(device: str | None) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_capability": _call(lambda: torch.backends.cpu.get_cpu_capability()),
        "threads": torch.get_num_threads(),
        "interop_threads": _call(torch.get_num_interop_threads),
        "cuda": torch.version.cuda,
        "cudnn": _call(lambda: torch.backends.cudnn.version()),
        "math": {
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            # torch >= 2.9 also has per-backend fp32_precision settings ("none", "tf32", "ieee")
            "matmul_fp32_precision": _call(lambda: torch.backends.cuda.matmul.fp32_precision),
            "cudnn_fp32_precision": _call(lambda: torch.backends.cudnn.fp32_precision),
        },
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "memory_gib": round(props.total_memory / 2 ** 30, 1),
                                 "capability": f"{props.major}.{props.minor}",
                                 "multiprocessors": props.multi_processor_count})
        info["driver"] = _nvidia_driver()
    return info


def _call(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a missing backend records null, never fails a run
        return None


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version (from the kernel module's proc file, else pynvml when installed)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        for word in text.split():
            if word.count(".") >= 1 and word.replace(".", "").isdigit():
                return word
    except OSError:
        pass
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001
        return None


def hardware(device: str | None = None) -> dict[str, Any]:
    """The `hardware` mapping of env.json: cpu (model, ISA flags, torch's CPU capability, threads), gpus
    (name, memory), driver, CUDA / cuDNN versions, the math settings and the thread / ISA environment."""
    info: dict[str, Any] = {"cpu": cpu_info(), "device": device,
                            "environment": {k: os.environ[k] for k in THREAD_VARS if k in os.environ}}
    try:
        torch_info = _torch_info(device)
    except ImportError:  # pragma: no cover - torch is a dependency
        return info
    cpu = info["cpu"]
    cpu["capability"] = torch_info.pop("cpu_capability")
    cpu["threads"] = torch_info.pop("threads")
    cpu["interop_threads"] = torch_info.pop("interop_threads")
    info.update(torch_info)
    return info


def hardware_summary(env: Mapping[str, Any]) -> str:
    """A short line naming the hardware of a stored env.json (any version): the GPU(s) with CUDA when the
    run used one, else the CPU with its vector ISA and threads; '—' when nothing is recorded."""
    hw = env.get("hardware") if isinstance(env.get("hardware"), Mapping) else {}
    device = str(env.get("device") or hw.get("device") or "")
    gpus = hw.get("gpus") or []
    if device.startswith("cuda") and gpus:
        names = [g.get("name", "?") if isinstance(g, Mapping) else str(g) for g in gpus]
        first = gpus[0] if isinstance(gpus[0], Mapping) else {}
        label = names[0] + (f" ({first['memory_gib']} GiB)" if first.get("memory_gib") else "")
        if len(names) > 1:
            label = f"{len(names)} x {label}"
        extras = [f"CUDA {hw['cuda']}" if hw.get("cuda") else None,
                  "TF32" if (hw.get("math") or {}).get("matmul_allow_tf32") else None]
        return ", ".join([label, *[e for e in extras if e]])
    if device.startswith("cuda") and env.get("gpus"):  # env.json before the hardware mapping
        return str(env["gpus"][0]) + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
    cpu = hw.get("cpu") if isinstance(hw.get("cpu"), Mapping) else {}
    model = cpu.get("model")
    threads = cpu.get("threads", env.get("torch_threads"))
    details = [str(cpu["capability"]) if cpu.get("capability") else None,
               f"{threads} threads" if threads else None]
    details = [d for d in details if d]
    if not model and not details:
        return device or "—"
    return (model or device or "cpu") + (f" ({', '.join(details)})" if details else "")
