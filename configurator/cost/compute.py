"""How long a GPU takes for a piece of work: GEMMs on a size-dependent efficiency curve, flash
attention on a length-dependent one, memory-bound kernels at a share of HBM bandwidth.

GEMM time is ``max(FLOPs / (peak * eff(m, n, k)) * waves, bytes / HBM)`` with
``eff = gemm_max * prod(d / (d + half_dim))`` over the three dimensions: large square GEMMs run at
``gemm_max`` of the dense peak, thin ones (few tokens per expert, small hidden sizes) lose inside
their tiles; ``waves`` (cost/waves.py) is the loss of a last, partly filled wave of output tiles.
``gemm_max`` and ``half_dim`` are calibrated per GPU family and precision
(``profiles/calibration.json``), or fitted to a probe's measured GEMM curve when the cluster
profile has one (``"compute": {"gemm": [{"precision", "m", "n", "k", "tflops"}, ...]}``), which
then replaces the calibrated curve for that precision.

Flash attention runs on two pipes: its two GEMMs (``QK^T``, ``PV``: ``2 (d_qk + d_v)`` FLOPs per score)
on the tensor cores, and one exponential per score on the special function units (MUFU.EX2), whose
rate did not grow with the tensor cores: per score, H100 spends half as long on the exponential as on
the GEMMs at head dim 128 (FlashAttention-3, section 3.2), B200 as long (FlashAttention-4: 1,024 cycles
each per 128 x 128 tile), and Blackwell Ultra (GB300/B300) doubles the SFU rate back to half. The kernels
overlap the two pipes in part (ping-pong warp groups), so a pass takes
``(max(mma, exp) + (1 - overlap) * min(mma, exp)) / length_curve``, with ``overlap`` the share of the
shorter pipe hidden (cost.json ``attention_exp_overlap``, from the FA3 ablation and FA4's comparison with
cuDNN). The backward recomputes the probabilities (one more exponential per score) under
``bwd_factor`` times the forward's tensor-core time. Both pipes work on whole tiles: the scores of the
K/V tiles each query tile's causal range or window band touches (``flash_query_tile``, ``work.computed_keys``),
not only the attended ones; under fp8 attention the backward runs at the bf16 tensor rate over a windowed
layer's causal range (``FP8_ATTENTION_BACKWARD``).
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from configurator.cost.constants import CostConstants, hardware_default
from configurator.cost.waves import STREAM_K_ARCHITECTURES, sm_count, wave_slowdown
from configurator.cost.work import BF16, LayerWork, attended_keys, computed_keys
from configurator.specs.hardware import ClusterSpec


UNFUSED_SCORE_BYTES = 2 + 2 + 2 + 1 + 2
"""Forward traffic per attention score without flash attention: the QK^T output written (bf16), read
and written by the fused scale-mask-softmax, the dropout mask (1 B) and the dropped-out probabilities
read by the PV GEMM."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GemmCurve:
    max_flops: float
    """Achievable FLOP/s of a large GEMM."""
    half_dim: float


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuRates:
    """Achievable rates of one GPU under one set of constants."""

    gemm: GemmCurve
    """At the job's GEMM precision."""
    gemm_bf16: GemmCurve
    attention_flops: float
    """Achievable FLOP/s of flash attention's tensor-core GEMMs (bf16 peak x the family's efficiency)."""
    attention_half_len: float
    attention_bwd_factor: float
    """Backward / forward time of the tensor-core part (the whole pass for the unfused kernel)."""
    hbm_Bps: float
    gemm_input_bytes: float
    """Bytes per element of GEMM operands for the memory-bound check (1 under fp8/fp4)."""
    attention_kernel: str
    """'cudnn' / 'fa2' (flash: FLOPs over the length curve) or 'unfused' (batched GEMMs over the
    whole s x s score matrix plus its softmax/dropout traffic, ``UNFUSED_SCORE_BYTES`` per score)."""
    exp2_per_s: float = 0.0
    """Exponentials/s of the special function units (GPUSpec.sfu_exp2_per_s); 0 = tensor pipe alone."""
    exp_overlap: float = 1.0
    """Share of the shorter of the two attention pipes (tensor cores, SFU) hidden under the longer."""
    sm_count: int = 0
    """SMs that a GEMM's output tiles are spread over in waves (cost/waves.py); 0 = no wave model."""
    stream_k: bool = False
    """cuBLAS splits the last partial wave along the reduction (Hopper, Blackwell; cost/waves.py)."""
    flash_architecture: str = ""
    """Architecture whose flash kernels' query tiles ``flash_query_tile`` gives; "" = attended keys only."""
    attention_bwd_flops: float = 0.0
    """FLOP/s of the backward's tensor-core GEMMs when they differ from the forward's (fp8 attention: the
    bf16 rate, ``FP8_ATTENTION_BACKWARD``); 0 = ``attention_flops``."""
    backward_window_tiles: bool = True
    """Whether the backward skips the K/V tiles outside a sliding window as the forward does (not under fp8
    attention: ``FP8_ATTENTION_BACKWARD``)."""

    def gemm_s(self, m: float, n: float, k: float, count: float, bf16: bool) -> float:
        curve = self.gemm_bf16 if bf16 else self.gemm
        d0 = curve.half_dim
        eff = (m / (m + d0)) * (n / (n + d0)) * (k / (k + d0))
        flops_s = 2.0 * m * n * k * count / (curve.max_flops * eff) * wave_slowdown(m, n, k, count, self.sm_count,
                                                                                      self.stream_k)
        in_bytes = BF16 if bf16 else self.gemm_input_bytes
        bytes_s = count * ((m * k + k * n) * in_bytes + m * n * BF16) / self.hbm_Bps
        return max(flops_s, bytes_s)

    def attention_s(self, work: LayerWork) -> float:
        """Forward seconds of the core attention (module docstring)."""
        if work.attention_flops <= 0:
            return 0.0
        if self.attention_kernel == "unfused":
            q, kv, n = work.attn_q_len, work.attention_kv_len, work.attn_batch
            gemms = self.gemm_s(q, kv, work.attn_d_qk, n, True) + self.gemm_s(q, work.attn_d_v, kv, n, True)
            return gemms + n * q * kv * UNFUSED_SCORE_BYTES / self.hbm_Bps
        return self._flash_s(work, 1.0)

    def attention_bwd_s(self, work: LayerWork) -> float:
        """Backward seconds of the core attention: ``bwd_factor`` x the forward's tensor-core time
        (five GEMMs instead of two) and one exponential per score (the recomputed probabilities)."""
        if work.attention_flops <= 0:
            return 0.0
        if self.attention_kernel == "unfused":
            return self.attention_bwd_factor * self.attention_s(work)
        return self._flash_s(work, self.attention_bwd_factor, backward=True)

    def _flash_s(self, work: LayerWork, mma_factor: float, backward: bool = False) -> float:
        tiles, length = self._flash_tiles(work, windowed=not backward or self.backward_window_tiles)
        rate = self.attention_bwd_flops if backward and self.attention_bwd_flops else self.attention_flops
        mma_s = mma_factor * tiles * work.attention_flops / rate
        exp_s = tiles * attention_exp_count(work) / self.exp2_per_s if self.exp2_per_s > 0 else 0.0
        both_s = max(mma_s, exp_s) + (1.0 - self.exp_overlap) * min(mma_s, exp_s)
        return both_s * length

    def _flash_tiles(self, work: LayerWork, windowed: bool = True) -> tuple[float, float]:
        """(computed / attended scores, length factor) of a flash pass.

        The kernel computes whole ``flash_query_tile x FLASH_TILE_N`` tiles (``computed_keys``): both GEMMs and
        the exponential run on the masked scores of the diagonal tiles and of the tiles a window's edge cuts.
        The length factor is the per-row fixed cost (``attention.half_len``, fitted against the causal
        sequence length, i.e. twice a causal row's mean keys) over the keys a row computes:
        ``(keys + half_len / 2) / keys``; causal that is ``(s + half_len) / s`` as before, up to the half
        diagonal tile. Without a sequence (hand-built works) the attended keys stand:
        ``(kv_len + half_len) / kv_len``. ``windowed`` False: a pass that runs a windowed layer's
        whole causal range of tiles (fp8 attention's backward, ``FP8_ATTENTION_BACKWARD``)."""
        if not (self.flash_architecture and work.attention_seq_len):
            kv_len = work.attention_kv_len
            return 1.0, (kv_len + self.attention_half_len) / kv_len
        s, w = int(work.attention_seq_len), work.attention_window
        computed = computed_keys(s, w if windowed else 0, flash_query_tile(self.flash_architecture, work.attn_d_qk))
        return computed / attended_keys(s, w), (computed + 0.5 * self.attention_half_len) / computed


def attention_exp_count(work: LayerWork) -> float:
    """Exponentials of one attention forward: one per score, and a score costs ``2 (d_qk + d_v)`` FLOPs
    of the two GEMMs (``LayerWork.attention_flops`` counts the attended keys, windows and causality)."""
    per_score = 2.0 * (work.attn_d_qk + work.attn_d_v)
    return work.attention_flops / per_score if per_score > 0 else 0.0


def fit_gemm_curve(points: list[tuple[float, float, float, float]], peak_flops: float) -> GemmCurve:
    """Fit ``max`` and ``half_dim`` to measured (m, n, k, flops_per_s) points (least squares on log)."""
    from scipy.optimize import least_squares

    arr = np.asarray(points, dtype=float)
    dims, measured = arr[:, :3], arr[:, 3]

    def residual(x: np.ndarray) -> np.ndarray:
        emax, d0 = math.exp(x[0]), math.exp(x[1])
        eff = emax * np.prod(dims / (dims + d0), axis=1)
        return np.log(eff * peak_flops) - np.log(measured)

    sol = least_squares(residual, x0=[math.log(0.7), math.log(64.0)],
                        bounds=([math.log(0.01), math.log(1.0)], [math.log(1.2), math.log(1e5)]))
    return GemmCurve(max_flops=math.exp(sol.x[0]) * peak_flops, half_dim=math.exp(sol.x[1]))


def measured_gemm_curves(cluster: ClusterSpec) -> dict[str, GemmCurve]:
    """GEMM curves per precision from a probe's ``compute.gemm`` and ``gpu_measured.gemm``
    measurements (needs >= 3 points)."""
    measured = dict(cluster.measured)
    raw = []
    for section in ("compute", "gpu_measured"):
        if isinstance(measured.get(section), dict) and isinstance(measured[section].get("gemm"), list):
            raw += measured[section]["gemm"]
    if not raw:
        return {}
    by_precision: dict[str, list[tuple[float, float, float, float]]] = {}
    for p in raw:
        try:
            by_precision.setdefault(str(p["precision"]), []).append(
                (float(p["m"]), float(p["n"]), float(p["k"]), float(p["tflops"]) * 1e12))
        except (KeyError, TypeError, ValueError):
            continue
    curves = {}
    for precision, points in by_precision.items():
        if len(points) >= 3 and cluster.gpu.supports(precision):
            curves[precision] = fit_gemm_curve(points, cluster.gpu.peak_flops_for(precision))
    return curves


def measured_hbm_Bps(cluster: ClusterSpec) -> float:
    """A probe's copy-kernel HBM bandwidth (``gpu_measured.hbm_copy_TBps``), 0 when not measured.

    It is an achieved rate, so it replaces ``datasheet x memory.hbm`` outright (as a measured GEMM
    curve replaces ``peak x gemm efficiency``)."""
    section = dict(cluster.measured).get("gpu_measured")
    if isinstance(section, dict) and isinstance(section.get("hbm_copy_TBps"), (int, float)):
        return float(section["hbm_copy_TBps"]) * 1e12
    return 0.0


BLACKWELL_FLASH_TILE_M = 256
"""Query rows per CTA of Blackwell's flash forward: two 128-row Q tiles share each K/V tile
(FlashAttention-4 ``flash_fwd_sm100.py``: ``cta_tiler = (q_stage * m_block_size, n_block_size, ...)`` with
``q_stage`` 2, ``m_block_size`` = ``n_block_size`` = 128; its ``tile_size.h``: "Forward: (q_stage * 128, 128)")."""
HOPPER_FLASH_TILE_M = {64: 192}
"""FlashAttention-3 ``tile_size_fwd_sm90``: 192 x 128 tiles for head dims <= 64 (causal / local), 128 x 128
up to 128."""


FP8_ATTENTION_BACKWARD = (
    "cuDNN's fp8 attention (Transformer Engine's fp8_dot_product_attention; MXFP8 on Blackwell) speeds up the "
    "forward only. cudnn-frontend's SDPA training benchmark (benchmark/sdpa_benchmark_training/results, cuDNN "
    "9.22, GB200 and GB300, batch 2, causal): the MXFP8 backward runs at 0.92-0.97x the bf16 backward's speed "
    "at head dim 128 (32 heads, 4,096-8,192 tokens; fp8 1.03-1.09x) and 1.25-1.38x at DeepSeek's 192/128, "
    "against 1.2-1.6x for the forward; and on GPT-OSS's shape (head dim 64, 128-key window) its time grows with "
    "the square of the sequence (GB200 MXFP8: 0.64, 2.08, 7.43, 27.9, 108 ms for 2K-32K tokens, 3.2-3.9x per "
    "doubling; the bf16 backward 0.24-3.69 ms, 2x per doubling): the fp8 backward runs every causal tile of a "
    "windowed layer. So under fp8 attention the backward's tensor-core GEMMs run at the bf16 rate and a "
    "windowed layer's backward covers its causal range.")


def flash_query_tile(architecture: str, head_dim: float) -> int:
    """Query rows per CTA of the flash kernel on an architecture (``GpuRates.flash_architecture``): 256 on Blackwell
    (``BLACKWELL_FLASH_TILE_M``), 192 on Hopper for head dims <= 64, else 128 (FlashAttention-2/-3's 128-row
    tiles). cuDNN's kernels are closed; its own SDPA benchmark (cudnn-frontend
    ``benchmark/sdpa_benchmark_training/results/gpt_oss/gb200``, cuDNN 9.22: batch 2, 128 heads of 64,
    4,096 tokens, 128-key window: 0.210 ms forward, 0.465 ms backward) is within 20% of these tiles
    (tests/test_gptoss_attention_tiles.py), and 2-2.4x slower than attended-key counting puts it."""
    if architecture == "blackwell":
        return BLACKWELL_FLASH_TILE_M
    if architecture == "hopper" and head_dim <= 64:
        return HOPPER_FLASH_TILE_M[64]
    return 128


def attention_efficiency(family: str, kernel: str, constants: CostConstants) -> float:
    """Flash-attention throughput / bf16 peak for a kernel family (module docstring)."""
    cudnn = constants[f"attention.{family}"]
    if kernel != "fa2" or family == "ampere":
        return cudnn
    fa2_ratio = constants["attention.fa2.hopper"] / constants["attention.hopper"]
    return constants["attention.fa2.hopper"] if family == "hopper" else cudnn * fa2_ratio


def gpu_rates(cluster: ClusterSpec, precision: str, constants: CostConstants,
              measured: dict[str, GemmCurve] | None = None, attention_kernel: str = "cudnn",
              fp8_attention: bool = False) -> GpuRates:
    """``fp8_attention`` (JobSpec): the attention GEMMs at the fp8 peak and the family's fp8/bf16 GEMM
    efficiency ratio (as the other fp8 GEMMs); the exponentials stay on the SFU."""
    gpu = cluster.gpu
    measured = measured if measured is not None else measured_gemm_curves(cluster)
    half = constants["gemm.half_dim"]

    # The tensor-core rate GEMMs sustain under the power cap, relative to the family's reference part
    # (GPUSpec.sustained_matmul_ratio): scales every precision's modelled GEMM and the attention MMAs, not
    # a probe's measured curve (already sustained), the SFU's exponentials, nor the peak MFU is taken against.
    sustained = gpu.sustained_matmul_ratio

    def curve(p: str) -> GemmCurve:
        if p in measured:
            return measured[p]
        return GemmCurve(max_flops=gpu.peak_flops_for(p) * sustained * constants.gemm_efficiency(gpu.family, p),
                         half_dim=half)

    sixteen = gpu.half_precision  # bf16, or fp16 where the GPU has no bf16 (V100, T4)
    bf16_peak = gpu.peak_flops_for(sixteen) * sustained
    attention_peak = bf16_peak
    fp8_attn = fp8_attention and attention_kernel != "unfused" and gpu.supports("fp8")
    if fp8_attn:
        attention_peak = gpu.peak_flops_for("fp8") * sustained * (
            constants.gemm_efficiency(gpu.family, "fp8") / constants.gemm_efficiency(gpu.family, sixteen))
    attention_eff = attention_efficiency(gpu.family, attention_kernel, constants)
    return GpuRates(gemm=curve(precision), gemm_bf16=curve(sixteen),
                    attention_flops=attention_peak * attention_eff,
                    attention_half_len=constants["attention.half_len"],
                    attention_bwd_factor=2.0 if attention_kernel == "unfused" else constants["attention.bwd_factor"],
                    hbm_Bps=measured_hbm_Bps(cluster) or gpu.hbm_bandwidth_Bps * constants["memory.hbm"],
                    gemm_input_bytes=1.0 if precision in ("fp8", "fp4") else float(BF16),
                    attention_kernel=attention_kernel,
                    exp2_per_s=gpu.sfu_exp2_per_s, exp_overlap=hardware_default("attention_exp_overlap"),
                    sm_count=sm_count(gpu.key, gpu.architecture or gpu.family),
                    flash_architecture=(gpu.architecture or gpu.family) if attention_kernel != "unfused" else "",
                    # FP8_ATTENTION_BACKWARD: the fp8 backward at the bf16 rate, over a windowed layer's causal tiles
                    attention_bwd_flops=bf16_peak * attention_eff if fp8_attn else 0.0,
                    backward_window_tiles=not fp8_attn,
                    stream_k=(gpu.architecture or gpu.family) in STREAM_K_ARCHITECTURES)


@dataclass(frozen=True, slots=True)
class WorkTime:
    """Seconds of one piece of work, forward; backward is derived by ``backward_s``."""

    gemm_s: float
    attention_s: float
    elementwise_s: float
    attention_bwd_s: float = 0.0
    """The core attention's backward (``GpuRates.attention_bwd_s``): not a multiple of its forward once
    the exponentials count."""

    @property
    def total_s(self) -> float:
        return self.gemm_s + self.attention_s + self.elementwise_s


WORK_TIME_MEMO: ContextVar[dict[tuple, object] | None] = ContextVar("configurator_work_time_memo", default=None)
"""Set by a search for its duration: ``time_work`` and ``expert_gemms_s`` by (work, rates). A search times
the same few hundred layer works (one per tp/cp/ep/etp/micro-batch shape) tens of thousands of times,
each a dozen GEMMs through the efficiency and wave curves; the answers are pure functions of the two
frozen values, so they are remembered (per search, gone when it returns)."""


def _time_work(work: LayerWork, rates: GpuRates) -> WorkTime:
    gemm = sum(rates.gemm_s(g.m, g.n, g.k, g.count, g.bf16) for g in work.gemms)
    return WorkTime(gemm_s=gemm, attention_s=rates.attention_s(work),
                    elementwise_s=work.elementwise_bytes / rates.hbm_Bps, attention_bwd_s=rates.attention_bwd_s(work))


def time_work(work: LayerWork, rates: GpuRates) -> WorkTime:
    """Forward seconds of ``work`` at ``rates`` (remembered during a search: ``WORK_TIME_MEMO``).

    Looked up first by the two objects' identities (a search shares one object per equal work and rates:
    ``cost/step.py`` ``_shared_work``, ``_rates_for``), which costs a fraction of hashing every field of both; the
    entry holds the two objects, so their ids cannot be reused while it exists. Then by value."""
    memo = WORK_TIME_MEMO.get()
    if memo is None:
        return _time_work(work, rates)
    ids = (id(work), id(rates))
    same = memo.get(ids)
    if same is not None:
        return same[2]  # type: ignore[index, return-value]
    key = (work, rates)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = _time_work(work, rates)
    memo[ids] = (work, rates, hit)
    return hit  # type: ignore[return-value]


def expert_gemms_s(work: LayerWork, rates: GpuRates) -> float:
    """Seconds of the routed experts' grouped GEMMs of ``work`` (remembered like ``time_work``)."""
    memo = WORK_TIME_MEMO.get()
    if memo is None:
        return sum(rates.gemm_s(g.m, g.n, g.k, g.count, g.bf16) for g in work.expert_gemms)
    ids = (id(work), id(rates), 1)
    same = memo.get(ids)
    if same is not None:
        return same[2]  # type: ignore[index, return-value]
    key = (work, rates, "experts")
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = sum(rates.gemm_s(g.m, g.n, g.k, g.count, g.bf16) for g in work.expert_gemms)
    memo[ids] = (work, rates, hit)
    return hit  # type: ignore[return-value]


__all__ = ["BLACKWELL_FLASH_TILE_M", "FP8_ATTENTION_BACKWARD", "WORK_TIME_MEMO", "GemmCurve", "flash_query_tile", "GpuRates", "WorkTime", "attention_exp_count", "expert_gemms_s", "fit_gemm_curve", "gpu_rates", "measured_gemm_curves",
           "measured_hbm_Bps", "time_work"]
