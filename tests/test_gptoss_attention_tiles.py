"""Flash attention computes whole tiles (cost/work.py ``computed_keys``, cost/compute.py ``_flash_tiles``).

Hand-computed: a CTA owns ``tile_m`` query rows and loops over the 128-key K/V tiles those rows can see.
Causal over 4,096 tokens with 256-row query tiles (Blackwell), query tile j (0..15) runs 2 (j + 1) K tiles,
256 (j + 1) keys per query: mean 256 x 8.5 = 2,176 = s/2 + 128. A 128-key window (GPT-OSS's even layers):
tile 0 runs its 2 diagonal K tiles, every later tile 3 (keys q0 - 127 .. q0 + 255 span three 128-key tiles),
so (256 + 15 x 384) / 16 = 376 keys per query for ~126 attended. With 128-row tiles: causal
128 x 16.5 = 2,112; windowed (128 + 31 x 256) / 32 = 252.
"""

from __future__ import annotations

import pytest

from configurator.cost.compute import BLACKWELL_FLASH_TILE_M, GemmCurve, GpuRates, flash_query_tile
from configurator.cost.work import LayerWork, attended_keys, computed_keys, layer_work
from configurator.profiles import load_gpu, load_model
from configurator.specs.job import JobSpec
from configurator.specs.plan import Plan


def test_computed_keys_by_hand() -> None:
    assert computed_keys(4096, 0, 256) == pytest.approx(2176.0)
    assert computed_keys(4096, 0, 128) == pytest.approx(2112.0)
    assert computed_keys(4096, 128, 256) == pytest.approx(376.0)
    assert computed_keys(4096, 128, 128) == pytest.approx(252.0)
    # a window that is not a multiple of the tile still spans two 128-key tiles per 128-row query tile
    assert computed_keys(4096, 100, 128) == pytest.approx(252.0)
    # a window at least the sequence is causal attention
    assert computed_keys(4096, 4096, 256) == computed_keys(4096, 0, 256)
    # never fewer keys than the useful ones
    for s, w, m in ((4096, 128, 256), (8192, 0, 128), (2048, 1024, 192), (1000, 0, 256)):
        assert computed_keys(s, w, m) >= attended_keys(s, w)


def test_query_tiles_per_architecture() -> None:
    assert flash_query_tile("blackwell", 64) == BLACKWELL_FLASH_TILE_M == 256  # FA4: 2 x 128-row Q tiles
    assert flash_query_tile("hopper", 64) == 192  # FA3 tile_size_fwd_sm90, head dim <= 64
    assert flash_query_tile("hopper", 128) == 128
    assert flash_query_tile("ampere", 64) == 128


def _rates(architecture: str, half_len: float) -> GpuRates:
    gpu = load_gpu("gb200")
    peak = gpu.peak_flops_for("bf16")
    curve = GemmCurve(max_flops=peak, half_dim=1.0)
    return GpuRates(gemm=curve, gemm_bf16=curve, attention_flops=peak, attention_half_len=half_len,
                    attention_bwd_factor=3.0, hbm_Bps=gpu.hbm_bandwidth_Bps, gemm_input_bytes=2.0,
                    attention_kernel="cudnn", exp2_per_s=gpu.sfu_exp2_per_s, exp_overlap=0.5,
                    flash_architecture=architecture)


def test_a_windowed_layer_pays_for_the_tiles_its_window_cuts() -> None:
    # 256 sequences x heads of 64, 4,096 tokens, 128-key window: the attended scores and their FLOPs
    batch, s, d, w = 256.0, 4096, 64.0, 128
    attended = attended_keys(s, w)
    work = LayerWork(gemms=(), attention_flops=2.0 * batch * s * attended * 2 * d, attention_kv_len=128.0,
                     elementwise_bytes=0.0, tp_bytes=0.0, tp_collectives=0, cp_bytes=0.0, ep_bytes=0.0,
                     attn_batch=batch, attn_q_len=float(s), attn_d_qk=d, attn_d_v=d,
                     attention_seq_len=float(s), attention_window=w)
    gpu = load_gpu("gb200")
    peak, exp_rate = gpu.peak_flops_for("bf16"), gpu.sfu_exp2_per_s
    scores = batch * s * 376.0  # computed, not attended
    mma, exp = scores * 4 * d / peak, scores / exp_rate
    both = max(mma, exp) + 0.5 * min(mma, exp)
    half = 164.0
    assert _rates("blackwell", half).attention_s(work) == pytest.approx(both * (376.0 + half / 2) / 376.0)
    # without the tile count (hand-built works, no sequence): attended keys and the
    # window as the row length, as before
    old = _rates("", half).attention_s(work)
    a_scores = batch * s * attended
    a_mma, a_exp = a_scores * 4 * d / peak, a_scores / exp_rate
    assert old == pytest.approx((max(a_mma, a_exp) + 0.5 * min(a_mma, a_exp)) * (128 + half) / 128)
    assert _rates("blackwell", half).attention_s(work) > 1.4 * old


def test_causal_layers_change_by_half_a_diagonal_tile() -> None:
    # Causal: the length factor keeps its meaning (half_len against the sequence, i.e. half_len / 2 against a
    # row's mean keys); the computed keys add half a 256-row diagonal tile: 2,176 / 2,048 at 4,096 tokens.
    batch, s, d = 64.0, 4096, 128.0
    work = LayerWork(gemms=(), attention_flops=2.0 * batch * s * (s / 2) * 2 * d, attention_kv_len=float(s),
                     elementwise_bytes=0.0, tp_bytes=0.0, tp_collectives=0, cp_bytes=0.0, ep_bytes=0.0,
                     attn_batch=batch, attn_q_len=float(s), attn_d_qk=d, attn_d_v=d,
                     attention_seq_len=float(s), attention_window=0)
    new, old = _rates("blackwell", 0.0).attention_s(work), _rates("", 0.0).attention_s(work)
    assert new / old == pytest.approx(2176.0 / 2048.0)


def test_gpt_oss_layers_carry_their_sequence_and_window_under_context_parallelism_too() -> None:
    model = load_model("gpt-oss-120b")
    job = JobSpec(global_batch=64, seq_len=4096)
    windowed, full = layer_work(model, job, Plan(dp=8, ep=8), 0), layer_work(model, job, Plan(dp=8, ep=8), 1)
    assert (windowed.attention_seq_len, windowed.attention_window) == (4096.0, 128)
    assert (full.attention_seq_len, full.attention_window) == (4096.0, 0)
    # CP gives each query row one diagonal block (ring, gather or all-to-all), tiled as without CP: a row
    # computes the same keys, so CP must not escape the tile count (it did on the first merge: CP2 won
    # Llama-3-8B/8 by the 3% attention tax that only CP1 paid).
    ring = layer_work(model, job, Plan(dp=4, cp=2, ep=8), 0)
    assert (ring.attention_seq_len, ring.attention_window) == (4096.0, 128)


def test_fp8_attention_divides_by_the_measured_ratios_and_its_backward_runs_the_causal_tiles() -> None:
    # FP8_ATTENTION_SPEEDUP / FP8_ATTENTION_BACKWARD (cuDNN 9.22 benchmark, GB200, 4,096 tokens): the forward at
    # gpt_oss's measured ratio (0.210 / 0.210 ms = 1.0x) over the window's 376 keys per query; the backward
    # over all 2,176 causal keys per query, not the window's 376, at llama3.1's head-dim-128 ratio
    # (1.198 / 1.305 ms = 0.918x).
    from dataclasses import replace

    batch, s, d, w = 256.0, 4096, 64.0, 128
    attended = attended_keys(s, w)
    work = LayerWork(gemms=(), attention_flops=2.0 * batch * s * attended * 2 * d, attention_kv_len=128.0,
                     elementwise_bytes=0.0, tp_bytes=0.0, tp_collectives=0, cp_bytes=0.0, ep_bytes=0.0,
                     attn_batch=batch, attn_q_len=float(s), attn_d_qk=d, attn_d_v=d,
                     attention_seq_len=float(s), attention_window=w)
    bf16 = _rates("blackwell", 0.0)
    fp8 = replace(bf16, fp8_attention="GB200")
    gpu = load_gpu("gb200")
    peak, exp_rate = gpu.peak_flops_for("bf16"), gpu.sfu_exp2_per_s
    f_scores = batch * s * 376.0
    f_mma, f_exp = f_scores * 4 * d / peak, f_scores / exp_rate
    assert fp8.attention_s(work) == pytest.approx((max(f_mma, f_exp) + 0.5 * min(f_mma, f_exp)) / (0.210 / 0.210))
    b_scores = batch * s * 2176.0
    b_mma, b_exp = 3.0 * b_scores * 4 * d / peak, b_scores / exp_rate
    assert fp8.attention_bwd_s(work) == pytest.approx((max(b_mma, b_exp) + 0.5 * min(b_mma, b_exp)) / (1.198 / 1.305))
    assert fp8.attention_bwd_s(work) > 4 * bf16.attention_bwd_s(work)


def test_only_fp8_attention_changes_the_backward() -> None:
    from configurator.cost.compute import gpu_rates
    from configurator.cost.constants import CostConstants
    from configurator.profiles import load_cluster

    cluster, c = load_cluster("gb200-nvl72", num_gpus=4), CostConstants.defaults()
    plain = gpu_rates(cluster, "fp8", c)
    assert plain.fp8_attention == ""
    fp8 = gpu_rates(cluster, "fp8", c, fp8_attention=True)
    assert fp8.fp8_attention == "GB200"
    assert fp8.attention_flops == plain.attention_flops  # the measured ratios scale the passes' times
