"""Flash attention's softmax exponentials on the special function units (cost/compute.py).

Hand-computed: one attention forward of 4,096 queries x 4,096 keys x 32 heads (non-causal), head dim 128,
so 4,096^2 x 32 = 536,870,912 scores, each ``2 x (128 + 128) = 512`` FLOPs of QK^T and PV and one
exponential. Rates are the profiles' bf16 peaks and SFU rates; the tensor-core efficiency is 1.0 in the
hand cases (the calibrated one only scales the tensor pipe) and the length curve is switched off
(``attention_half_len`` 0) so each time is the pipes' arithmetic alone.
"""

from __future__ import annotations

import json

import pytest

from configurator.cost.compute import GemmCurve, GpuRates, attention_exp_count
from configurator.cost.constants import hardware_default
from configurator.cost.work import LayerWork
from configurator.errors import InputError
from configurator.profiles import load_gpu, load_gpu_spec, profiles_dir

SCORES = 4096 * 4096 * 32
HEAD_DIM = 128


def _work(head_dim: int = HEAD_DIM, scores: float = SCORES) -> LayerWork:
    return LayerWork(gemms=(), attention_flops=scores * 2.0 * (2 * head_dim), attention_kv_len=4096.0,
                     elementwise_bytes=0.0, tp_bytes=0.0, tp_collectives=0, cp_bytes=0.0, ep_bytes=0.0,
                     attn_batch=32.0, attn_q_len=4096.0, attn_d_qk=float(head_dim), attn_d_v=float(head_dim))


def _rates(gpu_key: str, overlap: float, bwd_factor: float = 3.0, kernel: str = "cudnn") -> GpuRates:
    gpu = load_gpu(gpu_key)
    peak = gpu.peak_flops_for("bf16")
    curve = GemmCurve(max_flops=peak, half_dim=1.0)
    return GpuRates(gemm=curve, gemm_bf16=curve, attention_flops=peak, attention_half_len=0.0,
                    attention_bwd_factor=bwd_factor, hbm_Bps=gpu.hbm_bandwidth_Bps, gemm_input_bytes=2.0,
                    attention_kernel=kernel, exp2_per_s=gpu.sfu_exp2_per_s, exp_overlap=overlap)


def test_one_exponential_per_score():
    assert attention_exp_count(_work()) == pytest.approx(SCORES)
    assert attention_exp_count(_work(head_dim=64)) == pytest.approx(SCORES)


def test_profiles_carry_the_sfu_rates_of_their_sources():
    # FlashAttention-3: H100 SXM5 '3.9 TFLOPS of special functions'; NVIDIA's MUFU.EX2 benchmark: 4,943 G/s on
    # GB200 and 10,024 G/s on GB300 (the profiles take the rate at the clock of the bf16 peak: 4.88 and 9.77).
    assert load_gpu("h100-80gb").sfu_exp2_per_s == pytest.approx(3.87e12)
    assert load_gpu("gb200").sfu_exp2_per_s == pytest.approx(4.88e12)
    assert load_gpu("gb300").sfu_exp2_per_s == pytest.approx(9.77e12)
    assert load_gpu("b300").sfu_exp2_per_s / load_gpu("b200").sfu_exp2_per_s == pytest.approx(8.79 / 4.39)
    # Same bf16 peak, twice the exponentials: Blackwell Ultra's one attention-relevant change.
    assert load_gpu("gb200").peak_flops_for("bf16") == load_gpu("gb300").peak_flops_for("bf16")


def test_a_profile_without_the_figure_derives_it_from_the_architecture():
    # L40S (Ada): 362 TFLOP/s bf16 at 1,024 FLOPs per clock per SM, 16 exponentials per clock per SM.
    assert load_gpu("l40s").sfu_exp2_per_s == pytest.approx(362.05e12 * 16 / 1024, rel=1e-3)
    # AMD: not modelled.
    assert load_gpu("mi300x").sfu_exp2_per_s == 0.0


def test_h100_exponentials_take_half_the_matmul_time_at_head_dim_128():
    # FA3 paper, section 3.2: 512x more matmul FLOPs than exponentials, 256x lower exponential throughput.
    r = _rates("h100-80gb", overlap=1.0)
    mma_s = SCORES * 512 / 989.4e12
    exp_s = SCORES / 3.87e12
    assert exp_s / mma_s == pytest.approx(0.4993, abs=1e-3)
    assert r.attention_s(_work()) == pytest.approx(mma_s)  # fully overlapped: the tensor pipe sets the pace
    r0 = _rates("h100-80gb", overlap=0.0)
    assert r0.attention_s(_work()) == pytest.approx(mma_s + exp_s)


def test_one_layer_b200_b300_h100_by_hand():
    o = 0.45
    work = _work()
    # B200: mma 536,870,912 x 512 / 2.25e15 = 122.2 us; exp 536,870,912 / 4.39e12 = 122.3 us: equal pipes.
    mma_b200 = SCORES * 512 / 2.25e15
    exp_b200 = SCORES / 4.39e12
    assert mma_b200 == pytest.approx(122.17e-6, rel=1e-3)
    assert exp_b200 == pytest.approx(122.29e-6, rel=1e-3)
    b200 = _rates("b200", o).attention_s(work)
    assert b200 == pytest.approx(exp_b200 + 0.55 * mma_b200)  # 189.5 us
    # B300: the same tensor cores, twice the exponentials: exp 61.1 us under mma 122.2 us.
    exp_b300 = SCORES / 8.79e12
    b300 = _rates("b300", o).attention_s(work)
    assert b300 == pytest.approx(mma_b200 + 0.55 * exp_b300)  # 155.8 us
    assert b200 / b300 == pytest.approx(1.2164, rel=1e-3)
    # H100: mma 277.8 us, exp 138.7 us (half: FA3), 277.8 + 0.55 x 138.7 = 354.1 us.
    mma_h100 = SCORES * 512 / 989.4e12
    exp_h100 = SCORES / 3.87e12
    h100 = _rates("h100-80gb", o).attention_s(work)
    assert h100 == pytest.approx(mma_h100 + 0.55 * exp_h100)
    assert h100 == pytest.approx(354.1e-6, rel=1e-3)


def test_head_dim_64_is_exponential_bound_on_blackwell_and_gains_most_on_ultra():
    o = 0.45
    work = _work(head_dim=64)  # 256 FLOPs per score: the tensor pipe is half as long, the exponentials as long
    mma = SCORES * 256 / 2.5e15
    exp_gb200, exp_gb300 = SCORES / 4.88e12, SCORES / 9.77e12
    gb200 = _rates("gb200", o).attention_s(work)
    gb300 = _rates("gb300", o).attention_s(work)
    assert exp_gb200 / mma == pytest.approx(2.0, rel=0.01)
    assert gb200 == pytest.approx(exp_gb200 + 0.55 * mma)
    assert gb300 == pytest.approx(max(mma, exp_gb300) + 0.55 * min(mma, exp_gb300))
    assert gb200 / gb300 == pytest.approx(1.645, rel=0.01)
    # At head dim 128 the gain is smaller (the tensor pipe is longer): 1.22.
    assert (_rates("gb200", o).attention_s(_work()) / _rates("gb300", o).attention_s(_work())
            == pytest.approx(1.2164, rel=0.01))


def test_backward_recomputes_one_exponential_per_score_under_five_gemms():
    o, bwd = 0.45, 3.0
    work = _work(head_dim=64)
    mma = SCORES * 256 / 2.5e15
    exp = SCORES / 4.88e12
    r = _rates("gb200", o, bwd_factor=bwd)
    # Backward tensor time 3 x mma (1.5 x exp) now exceeds the exponentials: they are the shorter pipe.
    assert r.attention_bwd_s(work) == pytest.approx(bwd * mma + 0.55 * exp)
    # So the backward / forward ratio is not bwd_factor once the exponentials count.
    assert r.attention_bwd_s(work) / r.attention_s(work) == pytest.approx((3.0 * mma + 0.55 * exp)
                                                                          / (exp + 0.55 * mma))


def test_no_sfu_figure_times_the_tensor_pipe_alone():
    r = _rates("mi300x", overlap=0.45)
    assert r.exp2_per_s == 0.0
    assert r.attention_s(_work()) == pytest.approx(SCORES * 512 / load_gpu("mi300x").peak_flops_for("bf16"))


def test_unfused_attention_has_no_exponential_term():
    # Materialised scores: the softmax is a memory-bound kernel (UNFUSED_SCORE_BYTES), not the SFU pipe.
    fast, slow = _rates("gb300", 0.45, kernel="unfused"), _rates("gb200", 0.45, kernel="unfused")
    assert fast.attention_s(_work()) == pytest.approx(slow.attention_s(_work()))
    assert fast.attention_bwd_s(_work()) == pytest.approx(3.0 * fast.attention_s(_work()))


def test_the_runtime_overlap_is_the_sourced_default():
    assert 0.0 <= hardware_default("attention_exp_overlap") <= 1.0


def test_a_gpu_spec_file_with_an_implausible_sfu_rate_is_rejected(tmp_path):
    spec = json.loads((profiles_dir() / "gpus" / "gb300.json").read_text())
    spec["sfu_exp2_Tps"] = 1e6
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(InputError) as err:
        load_gpu_spec(path)
    assert "sfu_exp2_Tps" in str(err.value.field)
    del spec["sfu_exp2_Tps"]
    path.write_text(json.dumps(spec))
    # Without the figure a Blackwell part gets Blackwell's ratio (16/8192), not Ultra's doubled one.
    assert load_gpu_spec(path).sfu_exp2_per_s == pytest.approx(2.5e15 * 16 / 8192)


BRIDGE_2608 = "Megatron-Bridge performance summary (NeMo 26.08 container)"


def test_the_2608_mxfp8_recipes_run_fp8_attention_except_deepseek_on_gb200():
    from configurator.runs import recipe_fp8_attention

    assert recipe_fp8_attention(BRIDGE_2608, "Qwen3_30B_a3B", "gb200-nvl72", "fp8")
    assert recipe_fp8_attention(BRIDGE_2608, "Qwen3_235B_a22B", "gb300-nvl72", "fp8")
    assert recipe_fp8_attention(BRIDGE_2608, "GPT OSS 120B", "gb300-nvl72", "fp8")
    assert recipe_fp8_attention(BRIDGE_2608, "DeepSeekV3", "gb300-nvl72", "fp8")
    assert not recipe_fp8_attention(BRIDGE_2608, "DeepSeekV3", "gb200-nvl72", "fp8")
    assert not recipe_fp8_attention(BRIDGE_2608, "Qwen3_30B_a3B", "gb200-nvl72", "bf16")
    assert not recipe_fp8_attention("Megatron-Bridge performance summary (NeMo 26.04.01 container)",
                                    "Qwen3_30B_a3B", "gb300-nvl72", "fp8")
    assert not recipe_fp8_attention("torchtitan", "Qwen3_30B_a3B", "gb300-nvl72", "fp8")


def test_fp8_attention_keeps_the_bf16_pipes_and_divides_by_the_measured_ratio():
    from configurator.cost.compute import gpu_rates
    from configurator.cost.constants import CostConstants
    from configurator.profiles import load_cluster

    c = CostConstants.defaults()
    cluster = load_cluster("gb200-nvl72")
    bf16 = gpu_rates(cluster, "fp8", c, measured={})
    fp8 = gpu_rates(cluster, "fp8", c, measured={}, fp8_attention=True)
    # Defaults: attention.blackwell 0.7 of the bf16 peak at GB200's sustained_matmul_ratio 0.94, under fp8
    # attention too (the exponentials are not scaled).
    assert bf16.attention_flops == fp8.attention_flops == pytest.approx(2.5e15 * 0.94 * 0.7)
    assert fp8.exp2_per_s == bf16.exp2_per_s == pytest.approx(4.88e12)
    # Head dim 128: bf16 mma 310.1 us at 1.645 PFLOP/s, exp 110.0 us; fp8 = the bf16 pass / cuDNN's measured
    # MXFP8 speed-up at head dim 128, 4,096 tokens on GB200 (llama3.1: 0.391 / 0.326 ms forward,
    # 1.198 / 1.305 ms backward). The old rule (fp8 peak on the tensor pipe: 0.71 of this forward) fails.
    work = _work()
    mma_bf16, exp = SCORES * 512 / 1.645e15, SCORES / 4.88e12
    half_len = c["attention.half_len"]
    stretch = (4096 + half_len) / 4096
    o = hardware_default("attention_exp_overlap")
    forward = (mma_bf16 + (1 - o) * exp) * stretch
    assert bf16.attention_s(work) == pytest.approx(forward, rel=1e-3)
    assert fp8.attention_s(work) == pytest.approx(forward / (0.391 / 0.326), rel=1e-3)
    assert fp8.attention_bwd_s(work) == pytest.approx(bf16.attention_bwd_s(work) / (1.198 / 1.305))
