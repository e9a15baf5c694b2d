"""fp8 attention at cuDNN's measured MXFP8/bf16 speed ratios (cost/compute.py ``FP8_ATTENTION_SPEEDUP``).

Hand-computed from cudnn-frontend's SDPA training benchmark (commit 3929da2e, cuDNN 9.22, batch 2, causal,
``time_ms``), 4,096 tokens: DeepSeek-V3's head dims 192/128 on GB300 run the forward in 0.864 ms (bf16) /
0.546 ms (MXFP8) = 1.582x, the backward in 3.127 / 2.348 ms = 1.332x; head dim 128 (llama3.1, 64 heads, 8 KV
heads: Qwen3-235B's class) on GB300 0.323 / 0.242 ms = 1.335x forward, 1.101 / 1.203 ms = 0.915x backward
(slower than bf16). The previous rule ran the backward at the bf16 rate (1.0x) and the forward's tensor pipe
at the fp8 peak (1.94x): every check below fails under it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from configurator.cost.compute import (FP8_ATTENTION_SPEEDUP, GemmCurve, GpuRates, fp8_attention_gpu,
                                       fp8_attention_speedup, gpu_rates)
from configurator.cost.constants import CostConstants
from configurator.cost.work import LayerWork
from configurator.profiles import load_cluster, load_gpu


def _work(d_qk: float, d_v: float, heads: float = 128.0, s: int = 4096) -> LayerWork:
    """One causal layer of ``heads`` x 2 sequences of ``s`` tokens (the benchmark's batch 2)."""
    scores = 2 * heads * s * (s + 1) / 2
    return LayerWork(gemms=(), attention_flops=scores * 2.0 * (d_qk + d_v), attention_kv_len=float(s),
                     elementwise_bytes=0.0, tp_bytes=0.0, tp_collectives=0, cp_bytes=0.0, ep_bytes=0.0,
                     attn_batch=2 * heads, attn_q_len=float(s), attn_d_qk=d_qk, attn_d_v=d_v,
                     attention_seq_len=float(s))


def _rates(gpu_key: str) -> GpuRates:
    gpu = load_gpu(gpu_key)
    peak = gpu.peak_flops_for("bf16")
    curve = GemmCurve(max_flops=peak, half_dim=1.0)
    return GpuRates(gemm=curve, gemm_bf16=curve, attention_flops=0.7 * peak, attention_half_len=256.0,
                    attention_bwd_factor=2.5, hbm_Bps=gpu.hbm_bandwidth_Bps, gemm_input_bytes=1.0,
                    attention_kernel="cudnn", exp2_per_s=gpu.sfu_exp2_per_s, exp_overlap=0.5,
                    flash_architecture="blackwell")


def test_deepseek_v3_fp8_attention_on_gb300_at_the_measured_ratios() -> None:
    bf16 = _rates("gb300")
    fp8 = replace(bf16, fp8_attention="GB300")
    work = _work(192.0, 128.0)
    assert fp8.attention_bwd_s(work) == pytest.approx(bf16.attention_bwd_s(work) / 1.332, rel=2e-3)
    assert fp8.attention_s(work) == pytest.approx(bf16.attention_s(work) / 1.582, rel=2e-3)


def test_qwen3_235b_fp8_attention_backward_is_slower_than_bf16_on_gb300() -> None:
    bf16 = _rates("gb300")
    fp8 = replace(bf16, fp8_attention="GB300")
    work = _work(128.0, 128.0, heads=64.0)
    assert fp8.attention_bwd_s(work) == pytest.approx(bf16.attention_bwd_s(work) / 0.915, rel=2e-3)
    assert fp8.attention_bwd_s(work) > bf16.attention_bwd_s(work)
    assert fp8.attention_s(work) == pytest.approx(bf16.attention_s(work) / 1.335, rel=2e-3)


def test_gb200_takes_its_own_slower_forward_ratios() -> None:
    # GB200's exponentials are half GB300's per tensor FLOP, so fp8 shortens less of the forward:
    # 0.977 / 0.714 = 1.368x at 192/128, 0.391 / 0.326 = 1.199x at 128; backward 3.383 / 2.620 = 1.291x.
    assert fp8_attention_speedup("GB200", "fwd", 192, 4096) == pytest.approx(1.368, abs=1e-3)
    assert fp8_attention_speedup("GB200", "fwd", 128, 4096) == pytest.approx(1.199, abs=1e-3)
    assert fp8_attention_speedup("GB200", "bwd", 192, 4096) == pytest.approx(1.291, abs=1e-3)


def test_ratios_interpolate_in_log_sequence_length_and_hold_at_the_ends() -> None:
    # Half way (log2) between 4,096 and 8,192 tokens: the mean of 1.101/1.203 and 3.832/3.917.
    mid = fp8_attention_speedup("GB300", "bwd", 128, math.sqrt(4096 * 8192))
    assert mid == pytest.approx(0.5 * (1.101 / 1.203 + 3.832 / 3.917))
    assert fp8_attention_speedup("GB300", "bwd", 128, 512) == pytest.approx(0.356 / 0.424)
    assert fp8_attention_speedup("GB300", "bwd", 128, 131072) == pytest.approx(59.024 / 55.340)


def test_nearest_measured_head_dim() -> None:
    # 256 takes 192's figures, 96 takes 128's; no head-dim-64 backward was measured causally: 128's.
    assert fp8_attention_speedup("GB300", "fwd", 256, 4096) == fp8_attention_speedup("GB300", "fwd", 192, 4096)
    assert fp8_attention_speedup("GB300", "fwd", 96, 4096) == fp8_attention_speedup("GB300", "fwd", 128, 4096)
    assert fp8_attention_speedup("GB300", "bwd", 64, 4096) == fp8_attention_speedup("GB300", "bwd", 128, 4096)
    assert fp8_attention_speedup("GB300", "fwd", 64, 4096) == pytest.approx(0.202 / 0.175)


def test_every_measured_ratio_is_within_the_peak_ratio() -> None:
    for gpu_key in ("gb200", "gb300"):
        gpu = load_gpu(gpu_key)
        peak_ratio = gpu.peak_flops_for("fp8") / gpu.peak_flops_for("bf16")
        assert peak_ratio == 2.0
        for (name, _, _), points in FP8_ATTENTION_SPEEDUP.items():
            if name == gpu_key.upper():
                assert all(0.5 < bf16 / fp8 < peak_ratio for _, bf16, fp8 in points)


def test_each_gpu_takes_the_benchmarked_gpu_with_its_sfu_rate() -> None:
    c = CostConstants.defaults()
    expected = {"gb200-nvl72": "GB200", "dgx-b200": "GB200", "gb300-nvl72": "GB300", "dgx-b300": "GB300"}
    for cluster_key, gpu in expected.items():
        assert gpu_rates(load_cluster(cluster_key), "fp8", c, measured={}, fp8_attention=True).fp8_attention == gpu
        assert gpu_rates(load_cluster(cluster_key), "fp8", c, measured={}).fp8_attention == ""
    assert fp8_attention_gpu(0.0, 2.5e15) == "GB200"
