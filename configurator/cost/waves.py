"""Wave quantization: a GEMM runs in whole waves of output tiles over the GPU's SMs.

cuBLAS/CUTLASS's large-GEMM kernels give each SM one 128 x 256 output tile at a time (the bf16/fp8
tiles of sm80/sm90, and half of Blackwell's 2-SM 256 x 256 UMMA tile). A GEMM with ``tiles`` output
tiles on ``sms`` SMs runs ``ceil(tiles / sms)`` waves; the last wave leaves SMs idle, so the GEMM
reaches ``(tiles / sms) / ceil(tiles / sms)`` of its large-GEMM rate. Large GEMMs (many waves) lose
almost nothing; the thin GEMMs of one micro-batch split over TP 8 lose up to a fifth (BLOOM's
micro-batch-1 rows at TP 8: 3.1 waves run as 4). ``size_curve`` in compute.py (``gemm.half_dim``)
keeps the loss inside a tile (padding, short K loops); this is the loss across tiles.

The backward's two GEMMs have other output shapes (dgrad ``m x k``, wgrad ``n x k``), so a GEMM's
factor is the mean slowdown of its forward, dgrad and wgrad (the step model times the backward as
twice the forward). Grouped GEMMs (MoE experts) and batched GEMMs schedule all their tiles as one
launch, so the tiles of all ``count`` members share waves. A GEMM with fewer tiles than SMs (the wgrad of
a small hidden size reducing over many tokens) is split along its reduction to fill them (split-K).

Stream-K (Hopper and Blackwell): cuBLAS's sm90/sm100 GEMMs are persistent kernels whose tile
scheduler can split the *last* wave's tiles along the reduction too (CUTLASS's "data-parallel +
one stream-K wave" decomposition, Osama et al. 2023), so the remainder of ``r`` tiles runs in
``split = min(sms // r, reduction // MIN_SPLIT_K)`` slices and takes ``1 / split`` of a tile's time
instead of a whole one. Ampere's cuBLAS (CUDA 11) has no such scheduler: its last wave stays whole.
Splitting the remainder this way is the same rule as split-K under one wave (no full wave), so the
two cases share one formula: ``efficiency = (tiles / sms) / (full_waves + 1 / split)``.
"""

from __future__ import annotations

import math

TILE_M = 128
TILE_N = 256
MIN_SPLIT_K = 256
"""Shortest reduction slice a split-K GEMM gives one tile (four 64-deep K steps of the main loop)."""

SM_COUNT: dict[str, int] = {
    "a100-40gb": 108, "a100-80gb": 108, "a800-80gb": 108,  # NVIDIA A100 whitepaper (GA100, 108 SMs)
    "h100-80gb": 132, "h100-96gb": 132, "h800-80gb": 132, "h200": 132,  # H100 SXM5 whitepaper: 132 SMs
    "h20": 78,  # H20: 78 SMs (public spec sheets of the China SKU)
    # Blackwell: the enabled SMs CUDA reports per product, not the die's 160 ("Inside NVIDIA Blackwell Ultra":
    # "160 SMs ... in the full GPU implementation"). B200 148 (NVIDIA Blackwell architecture brief); B300 148
    # ("NVIDIA B300 SXM6 AC": 148 CUDA-visible SMs at a 2,032 MHz maximum SM clock, measurement notes in public
    # GitHub code; sglang PR #28460 reports the same clock); GB200 and GB300 152 (torch multi_processor_count=152
    # for "NVIDIA GB200" and for GB300/sm_103 in public GitHub code). NVIDIA's own MUFU.EX2 micro-benchmark
    # agrees ("Making Softmax More Efficient with NVIDIA Blackwell Ultra", 2026-02-25): GB200 4,943 G/s at 16
    # per SM per clock is 309 G SM-clocks/s, more than 148 SMs give at GB200's 2,062 MHz device-reported maximum
    # SM clock (stas00/ml-engineering, compute/accelerator clock table: 305),
    # 152 SMs at 2.03 GHz; GB300 10,024 G/s at 32 is 152 SMs at 2.06 GHz (160 would be 1.96 GHz).
    "b200": 148, "gb200": 152, "b300": 148, "gb300": 152,
    "l40s": 142, "v100-16gb": 80, "v100-32gb": 80, "t4": 40,
    "mi250x": 110, "mi300x": 304, "mi325x": 304, "mi355x": 256,  # AMD compute units (one GCD for MI250X)
}
"""Streaming multiprocessors (AMD: compute units) per GPU, by preset key."""
STREAM_K_ARCHITECTURES = frozenset({"hopper", "blackwell"})
"""GPU architectures whose cuBLAS splits the last partial wave (module docstring)."""
SM_COUNT_BY_ARCHITECTURE: dict[str, int] = {
    "volta": 80, "turing": 40, "ampere": 108, "ada": 142, "hopper": 132, "blackwell": 148,
    "cdna2": 110, "cdna3": 304, "cdna4": 256,
}
"""For GPUs given inline (issue 17's own specs): the architecture's flagship count."""


def sm_count(key: str, architecture: str) -> int:
    """SMs of a GPU: its preset's count, else its architecture's, else 0 (no wave model)."""
    return SM_COUNT.get(key) or SM_COUNT_BY_ARCHITECTURE.get(architecture, 0)


def wave_efficiency(rows: float, cols: float, count: float, sms: int, reduction: float = 0.0,
                    stream_k: bool = False) -> float:
    """Share of the SMs' time a GEMM with a ``rows x cols`` output (``count`` of them) keeps busy.

    Under one wave, cuBLAS splits the ``reduction`` dimension (split-K) into as many slices as fill the
    SMs, each slice at least ``MIN_SPLIT_K`` long; a GEMM of one wave or more runs its last wave
    unsplit (the A100-era heuristics; split-K costs an extra reduction of the output), unless
    ``stream_k``, where the last wave's tiles are split the same way (module docstring)."""
    if sms <= 0:
        return 1.0
    tiles = math.ceil(rows / TILE_M) * math.ceil(cols / TILE_N) * max(1.0, math.ceil(count))
    full, remainder = divmod(int(tiles), sms)
    if remainder == 0:
        return 1.0
    if full > 0 and not stream_k:
        return (tiles / sms) / (full + 1)
    split = max(1, min(sms // remainder, int(reduction // MIN_SPLIT_K)))
    return (tiles / sms) / (full + 1.0 / split)


def wave_slowdown(m: float, n: float, k: float, count: float, sms: int, stream_k: bool = False) -> float:
    """Mean of 1 / wave efficiency over the forward (m x n output, reducing k), dgrad (m x k, reducing n)
    and wgrad (n x k, reducing m) GEMMs."""
    if sms <= 0:
        return 1.0
    return (1.0 / wave_efficiency(m, n, count, sms, k, stream_k) + 1.0 / wave_efficiency(m, k, count, sms, n, stream_k)
            + 1.0 / wave_efficiency(n, k, count, sms, m, stream_k)) / 3.0


__all__ = ["SM_COUNT", "SM_COUNT_BY_ARCHITECTURE", "STREAM_K_ARCHITECTURES", "TILE_M", "TILE_N", "sm_count", "wave_efficiency",
           "wave_slowdown", "MIN_SPLIT_K"]
