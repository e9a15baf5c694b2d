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
not only the attended ones. Under fp8 attention each pass takes its bf16 time divided by cuDNN's measured
MXFP8/bf16 speed ratio for the head dim, pass and sequence length (``FP8_ATTENTION_SPEEDUP``), and a windowed
layer's backward runs its whole causal range (``FP8_ATTENTION_BACKWARD``).
"""

from __future__ import annotations

import functools
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
    """Achievable FLOP/s of flash attention's tensor-core GEMMs (bf16 peak x the family's efficiency; under fp8
    attention too: ``fp8_attention`` scales the passes' times)."""
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
    fp8_attention: str = ""
    """Benchmarked GPU of ``FP8_ATTENTION_SPEEDUP`` whose MXFP8/bf16 ratios divide the flash passes' bf16 times
    (``fp8_attention_gpu``); its backward also runs a windowed layer's whole causal range
    (``FP8_ATTENTION_BACKWARD``). "" = bf16 attention."""

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
        tiles, length = self._flash_tiles(work, windowed=not (backward and self.fp8_attention))
        mma_s = mma_factor * tiles * work.attention_flops / self.attention_flops
        exp_s = tiles * attention_exp_count(work) / self.exp2_per_s if self.exp2_per_s > 0 else 0.0
        both_s = max(mma_s, exp_s) + (1.0 - self.exp_overlap) * min(mma_s, exp_s)
        if self.fp8_attention:
            pass_ = "bwd" if backward else "fwd"
            seq_len = work.attention_seq_len or work.attention_kv_len
            both_s /= fp8_attention_speedup(self.fp8_attention, pass_, work.attn_d_qk, seq_len)
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


FP8_ATTENTION_SPEEDUP: dict[tuple[str, str, int], tuple[tuple[int, float, float], ...]] = {
    # (GPU, pass, head dim qk): (sequence length, bf16 ms, MXFP8 ms) per measured point
    ("GB200", "fwd", 192): ((2048, 0.321, 0.224), (4096, 0.977, 0.714), (8192, 3.470, 2.478),
                            (16384, 13.103, 9.337), (32768, 50.456, 37.773)),
    ("GB200", "bwd", 192): ((2048, 1.056, 0.854), (4096, 3.383, 2.620), (8192, 11.984, 9.567),
                            (16384, 50.424, 36.835), (32768, 212.546, 149.238)),
    ("GB200", "fwd", 128): ((2048, 0.125, 0.103), (4096, 0.391, 0.326), (8192, 1.397, 1.156),
                            (16384, 5.150, 4.400), (32768, 21.692, 17.201)),
    ("GB200", "bwd", 128): ((2048, 0.389, 0.461), (4096, 1.198, 1.305), (8192, 4.127, 4.272),
                            (16384, 16.554, 15.315), (32768, 71.756, 61.716)),
    ("GB200", "fwd", 64): ((2048, 0.109, 0.109), (4096, 0.210, 0.210), (8192, 0.414, 0.417),
                           (16384, 0.822, 0.826)),
    ("GB300", "fwd", 192): ((2048, 0.268, 0.166), (4096, 0.864, 0.546), (8192, 3.013, 1.944),
                            (16384, 11.178, 7.336), (32768, 44.189, 29.731)),
    ("GB300", "bwd", 192): ((2048, 0.977, 0.772), (4096, 3.127, 2.348), (8192, 11.074, 8.030),
                            (16384, 43.911, 31.002), (32768, 177.494, 122.768)),
    ("GB300", "fwd", 128): ((2048, 0.100, 0.079), (4096, 0.323, 0.242), (8192, 1.185, 0.856),
                            (16384, 4.593, 3.225), (32768, 18.014, 12.632)),
    ("GB300", "bwd", 128): ((2048, 0.356, 0.424), (4096, 1.101, 1.203), (8192, 3.832, 3.917),
                            (16384, 14.593, 14.072), (32768, 59.024, 55.340)),
    ("GB300", "fwd", 64): ((2048, 0.104, 0.092), (4096, 0.202, 0.175), (8192, 0.397, 0.342),
                           (16384, 0.790, 0.676)),
}
"""cuDNN's measured flash-attention times, bf16 and MXFP8 (Transformer Engine's fp8_dot_product_attention on
Blackwell, which Megatron-Bridge 26.08's MXFP8 recipes turn on: runs.py ``recipe_fp8_attention``), from
cudnn-frontend's SDPA training benchmark (github.com/NVIDIA/cudnn-frontend, commit 3929da2e,
``benchmark/sdpa_benchmark_training/results/<model>/<gpu>/*.csv``: cuDNN 9.22 (backend 92200), frontend
1.21.1, batch 2, causal ``top_left`` mask, non-deterministic backward, ``time_ms`` column). Head dim 192 (qk) /
128 (v): ``dsv3`` (DeepSeek-V3: 128 heads, no GQA; ``kimiK26``'s 64 heads agree within 0.06x); 128:
``llama3.1`` (64 heads, 8 KV heads, the nearest measured shape to Qwen3-235B's 64/4 and Qwen3-30B's 32/4);
64: ``gpt_oss`` (128 heads of 64 with the 128-key window; forward only: its backward is
``FP8_ATTENTION_BACKWARD``'s evidence; its 32K point left out, the bf16 forward there took 3.2x its 16K time for
twice the work of a windowed layer). The MXFP8/bf16 speed ratio at 4,096 tokens: forward 1.37x (GB200) /
1.58x (GB300) at 192, 1.20x / 1.33x at 128, 1.00x / 1.15x at 64; backward 1.29x / 1.33x at 192 and 0.92x /
0.92x at 128, every one below the 2x of the fp8/bf16 peaks (the exponentials run on the SFU at either
precision; the benchmark does not break the rest of the gap down). ``GB200`` stands for GPUs with Blackwell's
SFU rate per tensor FLOP, ``GB300`` for those with twice it (``fp8_attention_gpu``)."""

FP8_ATTENTION_BACKWARD = (
    "cuDNN's MXFP8 backward runs every causal tile of a windowed layer: on GPT-OSS's shape (head dim 64, "
    "128-key window) cudnn-frontend's SDPA benchmark (FP8_ATTENTION_SPEEDUP's source, gpt_oss/gb200) measures "
    "its time growing with the square of the sequence (0.64, 2.08, 7.43, 27.9, 108 ms for 2K-32K tokens, "
    "3.2-3.9x per doubling) where the bf16 backward's grows with the sequence (0.24-3.69 ms, 2x per doubling). "
    "So under fp8 attention a windowed layer's backward covers its causal range, at the speed ratio of the "
    "nearest causally measured head dim (128).")


def fp8_attention_gpu(exp2_per_s: float, bf16_peak_flops: float) -> str:
    """The benchmarked GPU of ``FP8_ATTENTION_SPEEDUP`` whose ratios a GPU takes: the one whose exponentials per
    dense bf16 FLOP (GB200 16/8,192, GB300 32/8,192) are nearest on a log scale, since the exponentials, which
    fp8 does not speed up, set how much of a pass the faster tensor cores can shorten. Without a known SFU
    rate, GB200's."""
    blackwell = 16.0 / 8192.0
    if exp2_per_s <= 0 or bf16_peak_flops <= 0:
        return "GB200"
    return "GB300" if exp2_per_s / bf16_peak_flops > math.sqrt(2.0) * blackwell else "GB200"


@functools.lru_cache(maxsize=4096)
def fp8_attention_speedup(gpu: str, pass_: str, head_dim: float, seq_len: float) -> float:
    """MXFP8/bf16 speed ratio of a flash pass (``FP8_ATTENTION_SPEEDUP``): the measured head dim nearest to
    ``head_dim`` on a log scale (the larger on a tie), linear in log2 of the sequence length between the measured
    points (2K-32K tokens), held at the ends. Remembered: a search asks for the same few shapes many times."""
    dims = [d for (g, p, d) in FP8_ATTENTION_SPEEDUP if g == gpu and p == pass_]
    dim = min(dims, key=lambda d: (abs(math.log(max(head_dim, 1.0) / d)), -d))
    points = FP8_ATTENTION_SPEEDUP[(gpu, pass_, dim)]
    xs = [math.log2(s) for s, _, _ in points]
    ratios = [bf16 / fp8 for _, bf16, fp8 in points]
    return float(np.interp(math.log2(max(seq_len, 1.0)), xs, ratios))


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
    """``fp8_attention`` (JobSpec): flash attention's passes at cuDNN's measured MXFP8/bf16 speed ratios
    (``FP8_ATTENTION_SPEEDUP``) of the GPU with the nearest SFU rate (``fp8_attention_gpu``)."""
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
    attention_peak = gpu.peak_flops_for(sixteen) * sustained
    fp8_attn = fp8_attention and attention_kernel != "unfused" and gpu.supports("fp8")
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
                    fp8_attention=fp8_attention_gpu(gpu.sfu_exp2_per_s, gpu.peak_flops_for(sixteen))
                    if fp8_attn else "",
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


__all__ = [
    "BLACKWELL_FLASH_TILE_M",
    "FP8_ATTENTION_BACKWARD",
    "FP8_ATTENTION_SPEEDUP",
    "WORK_TIME_MEMO",
    "GemmCurve",
    "flash_query_tile",
    "fp8_attention_gpu",
    "fp8_attention_speedup",
    "GpuRates",
    "WorkTime",
    "attention_exp_count",
    "expert_gemms_s",
    "fit_gemm_curve",
    "gpu_rates",
    "measured_gemm_curves",
    "measured_hbm_Bps",
    "time_work",
]
