"""The GPU a plan was costed on, datasheet and measured side by side.

A cluster profile names (or inlines) a GPU spec: datasheet figures with their source. A probe adds a
``gpu_measured`` section (the driver's device name, memory, GEMM TFLOP/s by size and precision, HBM
bandwidth of a copy kernel); where it is present the cost model uses the measured figures in place of
``datasheet x calibrated efficiency`` (``cost/compute.py``). Both are shown so a user sees which one
the estimate used and how far the hardware is from its datasheet.
"""

from __future__ import annotations

from typing import Any

from configurator.cost.compute import measured_hbm_Bps
from configurator.specs.hardware import ClusterSpec

GIB = 2**30


def gpu_figures(cluster: ClusterSpec) -> dict[str, Any]:
    """JSON object: the GPU's datasheet figures, the measured ones (or None) and which are used."""
    gpu = cluster.gpu
    datasheet = {
        "name": gpu.name, "memory_gib": round(gpu.memory_bytes / GIB, 2),
        "hbm_tbps": round(gpu.hbm_bandwidth_Bps / 1e12, 4),
        "peak_dense_tflops": {p: round(f / 1e12, 1) for p, f in gpu.peak_flops},
        "sustained_matmul_ratio": gpu.sustained_matmul_ratio,
    }
    rated = "datasheet peak" if gpu.sustained_matmul_ratio == 1.0 else \
        f"datasheet peak x sustained_matmul_ratio {gpu.sustained_matmul_ratio:g}"
    out: dict[str, Any] = {
        "key": gpu.key, "vendor": gpu.vendor, "architecture": gpu.architecture or gpu.family,
        "constants_family": gpu.family, "calibrated": gpu.calibrated,
        "fallback_reason": gpu.fallback_reason or None,
        "datasheet": datasheet, "measured": None,
        "used": {"gemm": f"{rated} x calibrated efficiency", "hbm": "datasheet x calibrated efficiency"},
    }
    section = dict(cluster.measured).get("gpu_measured")
    if isinstance(section, dict):
        best: dict[str, float] = {}
        for p in section.get("gemm", []):
            best[p["precision"]] = max(best.get(p["precision"], 0.0), float(p["tflops"]))
        out["measured"] = {"name": section["name"], "memory_gib": section["memory_GiB"],
                           "hbm_copy_tbps": section["hbm_copy_TBps"], "best_gemm_tflops": best,
                           "gemm_points": len(section.get("gemm", []))}
        per_precision = {p: sum(1 for q in section.get("gemm", []) if q["precision"] == p) for p in best}
        fitted = sorted(p for p, n in per_precision.items() if n >= 3 and gpu.supports(p))
        if fitted:
            out["used"]["gemm"] = f"measured GEMM curve ({', '.join(fitted)}); others {rated} x efficiency"
        if measured_hbm_Bps(cluster):
            out["used"]["hbm"] = "measured copy-kernel bandwidth"
    return out


def gpu_line(cluster: ClusterSpec) -> str:
    """One line for the text output: the GPU, its constants, and measured vs datasheet figures."""
    f = gpu_figures(cluster)
    text = f"GPU {f['key']} ({f['datasheet']['name']}, {f['architecture']}"
    if not f["calibrated"]:
        text += f"; no measured runs: {f['constants_family']} constants as a fallback, wider error band"
    text += ")"
    m = f["measured"]
    if m is not None:
        text += (f"; measured '{m['name']}': HBM copy {m['hbm_copy_tbps']:g} TB/s vs datasheet "
                 f"{f['datasheet']['hbm_tbps']:g}, best GEMM "
                 + ", ".join(f"{p} {v:g} vs {f['datasheet']['peak_dense_tflops'].get(p, 0):g} TFLOP/s"
                             for p, v in sorted(m["best_gemm_tflops"].items())))
    return text


__all__ = ["gpu_figures", "gpu_line"]
