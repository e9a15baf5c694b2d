"""The measured GPU section of a profile (``gpu_measured``): what the device is, how much memory it has,
GEMM TFLOP/s by precision and size, and HBM bandwidth from a copy kernel.

The planner uses these in place of the datasheet figures (``configurator/cost/compute.py``: a GEMM curve
fitted to the points, the copy bandwidth as the memory-bound rate) and shows both.

Everything here takes a ``torch.device``: on a GPU (CUDA or ROCm, which PyTorch also calls ``cuda``) the
timings are synchronised with the device; on the CPU the same code runs with small sizes, which is how the
tests exercise it. fp8 GEMMs need ``torch._scaled_mm`` (Hopper, Ada, Blackwell, MI300/MI355) and are skipped
where it is missing or fails; they were not run on a GPU in this repository's tests.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

GIB = 2**30
GEMM_SIZES = (256, 512, 1024, 2048, 4096, 8192)
"""Square GEMM sizes: from launch-bound to the large-GEMM plateau, enough points for the curve fit."""
COPY_BYTES = 1 << 30
"""1 GiB per copy: far above any last-level cache (MI300X's 256 MiB Infinity Cache included)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time_s(fn: Callable[[], Any], device: torch.device, repeat: int, warmup: int = 2) -> float:
    """Best wall time of ``fn`` over ``repeat`` runs, after ``warmup`` runs, synchronised on GPUs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _fp8_gemm(d: int, device: torch.device) -> Callable[[], Any] | None:
    """An fp8 (e4m3) GEMM through ``torch._scaled_mm``, or None where this device/torch lacks it."""
    dtype = getattr(torch, "float8_e4m3fnuz" if torch.version.hip else "float8_e4m3fn", None)
    if device.type != "cuda" or dtype is None or not hasattr(torch, "_scaled_mm"):
        return None
    try:
        a = torch.randn(d, d, device=device).to(dtype)
        b = torch.randn(d, d, device=device).to(dtype).t()  # column-major second operand, as _scaled_mm needs
        one = torch.ones((), device=device)
        torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    except (RuntimeError, TypeError):
        return None


def measure_gemm(device: torch.device, repeat: int, sizes: tuple[int, ...] = GEMM_SIZES,
                 precisions: tuple[str, ...] = ("bf16", "fp16", "fp8")) -> list[dict]:
    """GEMM TFLOP/s per precision and size: ``2 d^3 / best time``; unsupported precisions are skipped."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    out = []
    for precision in precisions:
        for d in sizes:
            if precision == "fp8":
                fn = _fp8_gemm(d, device)
                if fn is None:
                    break
            else:
                try:
                    a = torch.randn(d, d, dtype=dtypes[precision], device=device)
                    b = torch.randn(d, d, dtype=dtypes[precision], device=device)
                    (a @ b)
                except (RuntimeError, TypeError):  # e.g. bf16 matmul on a GPU without it
                    break
                fn = (lambda a=a, b=b: a @ b)
            t = best_time_s(fn, device, repeat)
            out.append({"precision": precision, "m": d, "n": d, "k": d, "tflops": float(f"{2 * d ** 3 / t / 1e12:.6g}")})
    return out


def measure_copy_TBps(device: torch.device, size_bytes: int = COPY_BYTES, repeat: int = 5) -> float:
    """Device-memory bandwidth of a copy kernel: each copy reads and writes ``size_bytes``."""
    src = torch.empty(size_bytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = best_time_s(lambda: dst.copy_(src), device, repeat)
    return 2 * size_bytes / t / 1e12


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def device_memory_GiB(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / GIB
    from pathlib import Path

    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024 / GIB
    return 0.0


def gpu_section(device: torch.device, repeat: int = 3, sizes: tuple[int, ...] = GEMM_SIZES,
                copy_bytes: int = COPY_BYTES) -> dict[str, Any]:
    """The ``gpu_measured`` section of a profile (schema checked by ``configurator.profiles``)."""
    backend = "rocm" if device.type == "cuda" and torch.version.hip else device.type
    return {
        "name": device_name(device),
        "memory_GiB": round(device_memory_GiB(device), 2),
        "gemm": measure_gemm(device, repeat, sizes),
        "hbm_copy_TBps": float(f"{measure_copy_TBps(device, copy_bytes, max(repeat, 3)):.6g}"),
        "backend": backend,
        "copy_size_bytes": copy_bytes,
        "repeat": repeat,
    }


__all__ = ["COPY_BYTES", "GEMM_SIZES", "best_time_s", "device_memory_GiB", "device_name", "gpu_section",
           "measure_copy_TBps", "measure_gemm"]
