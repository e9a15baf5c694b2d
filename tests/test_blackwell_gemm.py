"""The Blackwell GEMM priors and SM counts say what their measurements say (cost/constants.py
``gemm.blackwell.*`` prior_source, cost/waves.py SM_COUNT, profiles/gpus/{b200,b300,gb200,gb300}.json).

Measurements used (quoted in the prior texts):
- pytorch/ao PR #2427, bench_matmul.py on B200: torch.mm bf16 M=K=N 8192 in 7.74e-4 s (1.42e15 FLOP/s).
- stas00/ml-engineering MAMF tables (best shape of a matmul sweep): bf16 B200 1,745, GB200 1,822,
  B300 1,769 TFLOP/s; fp8 (e4m3) B200 3,432.5, GB200 3,615.6, B300 3,353.3 TFLOP/s.
- NVIDIA's MUFU.EX2 micro-benchmark: GB200 4,943 G/s (16 per SM per clock), GB300 10,024 G/s (32).
"""

import math

import pytest

from configurator.cost.compute import gpu_rates
from configurator.cost.constants import PARAMETERS, CostConstants
from configurator.cost.waves import sm_count, wave_slowdown
from configurator.profiles import load_cluster

PRIOR = {p.name: p for p in PARAMETERS}
B200_8192_S = 7.74e-4
"""pytorch/ao PR #2427: torch.bfloat16 M=K=N 8192 time_sec on an NVIDIA B200."""
MAMF_BF16_TFLOPS = {"b200": 1745.0, "gb200": 1822.0, "b300": 1769.0}
MAMF_FP8_TFLOPS = {"b200": 3432.5, "gb200": 3615.6, "b300": 3353.3}
RATED_BF16_TFLOPS = {"b200": 2250.0, "gb200": 2500.0, "b300": 2250.0}


def _within_prior(value: float, name: str) -> bool:
    """Within one prior width of the default, on the fit's (log) scale."""
    p = PRIOR[name]
    return abs(math.log(value / p.default)) <= p.prior_width + 1e-12


def test_b200_8192_cube_bf16_gemm_at_the_prior_takes_the_measured_time():
    rates = gpu_rates(load_cluster("dgx-b200"), "bf16", CostConstants.defaults(), measured={})
    t = rates.gemm_s(8192, 8192, 8192, 1, True)
    # By hand: 2 x 8192^3 = 1.0995e12 FLOPs at 2.25e15 x 0.66 x (8192/8288)^3 (half_dim 96: 0.9657);
    # 2,048 output tiles of 128 x 256 on 148 SMs: 13 full waves + 124 tiles (one each, no split) ->
    # 13.84 / 14 of the rate -> 1.0995e12 / (1.485e15 x 0.9657) x 1.0117 = 0.776 ms.
    assert t == pytest.approx(2 * 8192**3 / (2.25e15 * 0.66 * (8192 / 8288) ** 3) * 14 / (2048 / 148), rel=1e-9)
    assert t == pytest.approx(7.76e-4, rel=2e-3)
    # The measured 0.774 ms lies within the prior's width (a factor e^0.1) of the prior's time.
    assert abs(math.log(t / B200_8192_S)) < PRIOR["gemm.blackwell.bf16"].prior_width


def test_bf16_prior_centre_is_both_skus_measured_efficiency_of_their_sustained_peak():
    """GB200 runs GEMMs 1.044x B200 (MAMF), not the 1.111x of the ratings: its efficiency of the rated
    peak is lower; of the sustained peak (rating x the profile's sustained_matmul_ratio) both SKUs sit
    within 0.01 of the one family constant."""
    half = PRIOR["gemm.half_dim"].default
    size = (8192 / (8192 + half)) ** 3
    b200_rate = 2 * 8192**3 / B200_8192_S
    implied = {}
    for key in ("b200", "gb200"):
        rate = b200_rate * MAMF_BF16_TFLOPS[key] / MAMF_BF16_TFLOPS["b200"]
        waves = wave_slowdown(8192, 8192, 8192, 1, sm_count(key, "blackwell"), stream_k=True)
        implied[key] = rate / (RATED_BF16_TFLOPS[key] * 1e12) / size * waves
    assert implied["b200"] == pytest.approx(0.661, abs=1e-3)
    assert implied["gb200"] == pytest.approx(0.615, abs=1e-3)
    ratio = {key: load_cluster(cluster).gpu.sustained_matmul_ratio
             for key, cluster in (("b200", "dgx-b200"), ("gb200", "gb200-nvl72"))}
    assert ratio == {"b200": 1.0, "gb200": 0.94}
    of_sustained = {key: implied[key] / ratio[key] for key in implied}
    assert of_sustained["gb200"] == pytest.approx(0.654, abs=1e-3)
    assert all(abs(v - PRIOR["gemm.blackwell.bf16"].default) < 0.01 for v in of_sustained.values())
    assert all(_within_prior(v, "gemm.blackwell.bf16") for v in implied.values())
    # The absolute gap the ratings claim (1.111x) is not what GEMMs sustain (1.044x).
    assert MAMF_BF16_TFLOPS["gb200"] / MAMF_BF16_TFLOPS["b200"] == pytest.approx(1.044, abs=1e-3)
    assert RATED_BF16_TFLOPS["gb200"] / RATED_BF16_TFLOPS["b200"] == pytest.approx(1.111, abs=1e-3)


def test_fp8_prior_is_the_measured_fp8_over_bf16_efficiency_ratio():
    ratios = {k: (MAMF_FP8_TFLOPS[k] / (2 * RATED_BF16_TFLOPS[k])) / (MAMF_BF16_TFLOPS[k] / RATED_BF16_TFLOPS[k])
              for k in MAMF_BF16_TFLOPS}
    assert ratios["b200"] == pytest.approx(0.984, abs=1e-3)
    assert ratios["gb200"] == pytest.approx(0.992, abs=1e-3)
    assert ratios["b300"] == pytest.approx(0.948, abs=1e-3)
    assert all(_within_prior(r, "gemm.blackwell.fp8") for r in ratios.values())
    assert PRIOR["gemm.blackwell.fp8"].default <= PRIOR["gemm.blackwell.fp8"].upper == 1.0


def test_fp8_gemm_rate_at_the_priors_is_their_product_of_the_fp8_peak():
    # On GB200 also x its sustained_matmul_ratio 0.94 (tests/test_sustained_matmul.py).
    rates = gpu_rates(load_cluster("gb200-nvl72"), "fp8", CostConstants.defaults(), measured={})
    assert rates.gemm.max_flops == pytest.approx(5.0e15 * 0.94 * 0.66 * 0.97)
    assert rates.gemm_bf16.max_flops == pytest.approx(2.5e15 * 0.94 * 0.66)


def test_blackwell_sm_counts_are_the_enabled_sms_not_the_die():
    assert sm_count("b200", "blackwell") == 148
    assert sm_count("b300", "blackwell") == 148
    assert sm_count("gb200", "blackwell") == 152
    assert sm_count("gb300", "blackwell") == 152


def test_nvidia_exponential_rates_fit_the_sm_counts_below_the_maximum_clock():
    # GB200: 4,943 G exponentials/s at 16 per SM per clock is 308.9 G SM-clocks/s; at GB200's 2,062 MHz
    # maximum SM clock 148 SMs give only 305.2, 152 SMs run it at 2.03 GHz.
    gb200_hz = 4943e9 / 16 / sm_count("gb200", "blackwell")
    assert gb200_hz == pytest.approx(2.0325e9, rel=1e-3)
    assert gb200_hz <= 2.062e9 < 4943e9 / 16 / 148
    # GB300: 10,024 G/s at 32 per SM per clock: 152 SMs at 2.06 GHz (the die's 160 would be 1.96 GHz).
    assert 10024e9 / 32 / sm_count("gb300", "blackwell") == pytest.approx(2.061e9, rel=1e-3)


def test_fp4_prior_is_the_measured_nvfp4_over_fp8_ratio_at_large_shapes():
    # pytorch/ao PR #2427 on B200, one run: nvfp4 vs bf16 efficiency (each of its own peak) at 6144^3 and 8192^3.
    nvfp4 = {6144: 5.50e15 / 9.0e15, 8192: 5.37e15 / 9.0e15}
    bf16 = {6144: 1.45e15 / 2.25e15, 8192: 1.42e15 / 2.25e15}
    fp8_ratio = PRIOR["gemm.blackwell.fp8"].default
    ratios = [nvfp4[n] / bf16[n] / fp8_ratio for n in (6144, 8192)]
    assert ratios == pytest.approx([0.977, 0.974], abs=1e-3)
    # cublasTest 13.3 MXF4 8192^3 (deepseek-ai/DeepGEMM PR #348): 5,239 TFLOP/s.
    ratios.append(5239e12 / 9.0e15 / bf16[8192] / fp8_ratio)
    assert ratios[-1] == pytest.approx(0.951, abs=1e-3)
    assert all(_within_prior(r, "gemm.blackwell.fp4") for r in ratios)
    rates = gpu_rates(load_cluster("dgx-b200"), "fp4", CostConstants.defaults(), measured={})
    assert rates.gemm.max_flops == pytest.approx(9.0e15 * 0.66 * 0.97 * 0.96)
