"""The cost model's constants: calibrated efficiencies and per-runtime mechanisms.

Two files under ``profiles/``, kept apart on purpose:

* ``calibration.json`` - the named efficiency constants that ``configurator calibrate`` fits to
  measured runs (GEMM efficiency per GPU family and precision, attention kernel efficiency per
  family, bus efficiency per link type, HBM efficiency of memory-bound kernels, fixed overheads),
  with the data they came from and the fit's in-sample and leave-one-source-out errors;
* ``cost.json`` - facts about how each framework runs a step (does it overlap TP communication,
  the gradient reduce, the parameter gather; what selective recompute recomputes), with sources.
  These are mechanisms, never fitted.

``PARAMETERS`` lists every calibrated constant with its physical default, bounds and meaning; a
calibration file must give exactly these names (strict, as all loaders here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from configurator.errors import InputError
from configurator.profiles import profiles_dir


@dataclass(frozen=True, kw_only=True, slots=True)
class ParamDef:
    name: str
    default: float
    lower: float
    upper: float
    doc: str
    prior_width: float = 2.0
    """Width (one standard deviation, on the fit's scale: log for positive constants, linear for shares
    that may be 0) of the physical prior centred on ``default`` that calibrate.py adds to the fit. A
    constant one width from its default costs the fit as much as one row off by the robust scale (10%)
    would under a squared loss, so
    a constant that the remaining rows barely inform (e.g. A100 attention when the one publisher with
    A100 flash-attention rows is left out) falls back to its physical value instead of absorbing
    another mechanism's error. 2.0 (a factor e^2 = 7.4) is the old uniform weak prior, kept where no
    measurement narrows the value."""
    prior_source: str = ""
    """Where the default and its width come from (empty where the weak prior is kept)."""


PARAMETERS: tuple[ParamDef, ...] = (
    ParamDef(name="gemm.ampere.bf16", default=0.75, lower=0.4, upper=0.9,
             doc="Large-GEMM throughput / dense peak, A100, bf16 and fp16 (cuBLAS reaches 0.8-0.88 on "
                 "large square GEMMs; 0.9 is the most any kernel sustains at the boost clock).",
             prior_width=0.1, prior_source="cuBLAS bf16 on A100 SXM: 250-275 of 312 TFLOP/s on large square GEMMs (0.8-0.88); a factor e^0.1 around 0.75 spans 0.68-0.83."),
    ParamDef(name="gemm.hopper.bf16", default=0.7, lower=0.4, upper=0.9,
             doc="Large-GEMM throughput / dense peak, H100/H200/H800, bf16 and fp16 (cuBLAS: ~0.75-0.8 of "
                 "989 TFLOP/s at the power-limited clock).",
             prior_width=0.1, prior_source="cuBLAS bf16 on H100 SXM: ~650-750 of 989 TFLOP/s on large GEMMs at the power-limited clock (0.66-0.76)."),
    ParamDef(name="gemm.hopper.fp8", default=0.85, lower=0.4, upper=1.0,
             doc="fp8 GEMM efficiency (of the fp8 peak) / bf16 GEMM efficiency (of the bf16 peak), Hopper: "
                 "the fp8 speed-up over bf16 as a share of the 2x peak ratio, so it can never exceed it "
                 "(per-tensor scaling and casts cost some of it).",
             prior_width=0.1, prior_source="H100 fp8 GEMMs reach ~1.6-1.8x bf16 (of a 2x peak ratio) in cuBLAS/Transformer Engine benchmarks: 0.8-0.9."),
    ParamDef(name="gemm.blackwell.bf16", default=0.66, lower=0.4, upper=0.9,
             doc="Large-GEMM throughput / sustained dense peak, B200/B300/GB200/GB300, bf16 (the profile's peak "
                 "x its sustained_matmul_ratio: NVIDIA's 2,250 TFLOP/s for HGX B200/B300 at 1.0; the 2,500 rack "
                 "figure for GB200/GB300 at 0.94, whose GEMMs run only ~4% faster than B200's).",
             prior_width=0.1, prior_source="Measured, not fitted. B200: torch.mm (cuBLAS) runs M=K=N 8192 in 7.74e-4 s, 1.42 PFLOP/s = 0.631 of 2,250 (3072-6144: 0.627-0.672; pytorch/ao PR #2427, bench_matmul.py); the model's own size curve (gemm.half_dim at its prior 96: 0.966 at 8192) and waves (148 SMs: 1/1.012) put that at a large-GEMM maximum of 0.661. The best shape of a sweep reaches 1,745 (0.776; stas00/ml-engineering, compute/accelerator MAMF table), so 8192^3 runs at 0.81 of the best shape, as H100's prior (0.7) sits against its MAMF 0.80. GB200: the same sweep's best is 1,822 TFLOP/s, 1.044x B200's (fp8: 1.053x), not the 1.111x of the ratings, 0.729 of its 2,500; B200's 8192^3 rate x 1.044 over 2,500 is 0.593, a maximum of 0.615 (152 SMs: waves 1/1.002). B300: best 1,769 (0.786 of 2,250), as B200. Of the sustained peak (GB200's profile sustained_matmul_ratio 0.94, from the same sweep: 1.044/1.111), GB200's maximum is 0.615 / 0.94 = 0.654. Centre 0.66: B200's 0.661 and GB200's 0.654 (one constant per family; without the ratio the two SKUs' ratings, quoted at different clocks, left a 7% gap between them); a factor e^0.1 spans 0.60-0.73."),
    ParamDef(name="gemm.blackwell.fp8", default=0.97, lower=0.4, upper=1.0,
             doc="fp8 (MXFP8) efficiency / bf16 efficiency, Blackwell: the fp8 speed-up as a share of the "
                 "peak ratio (<= 1).",
             prior_width=0.05, prior_source="Measured fp8 (e4m3, torch._scaled_mm) vs bf16 best-shape GEMM rates, each over its own peak (stas00/ml-engineering MAMF tables): B200 3,432.5/4,500 = 0.763 vs 1,745/2,250 = 0.776 (ratio 0.98), GB200 3,615.6/5,000 = 0.723 vs 0.729 (0.99), B300 3,353.3/4,500 = 0.745 vs 0.786 (0.95); Blackwell's tensor cores apply the MXFP8 block scales inside the MMA (tcgen05 kind::mxf8f6f4), so the block-scaled GEMM is taken at the same ratio (its scale traffic is not separately measured in these sources). Centre 0.97, width 0.05."),
    ParamDef(name="gemm.blackwell.fp4", default=0.96, lower=0.3, upper=1.0,
             doc="fp4 (NVFP4) efficiency / fp8 efficiency, Blackwell: the fp4 speed-up over fp8 as a share "
                 "of the peak ratio (<= 1).",
             prior_width=0.05, prior_source="Measured on B200 at the same shapes as bf16 (the size curve and waves cancel): pytorch/ao PR #2427's nvfp4 recipe (torch._scaled_mm, cuBLAS) runs M=K=N 6144 and 8192 at 5.50e15 and 5.37e15 FLOP/s, 0.611 and 0.597 of 9,000, against bf16's 0.646 and 0.631 in the same run: 0.946 of bf16's efficiency; cublasTest 13.3 MXF4 8192^3 5,239 TFLOP/s (deepseek-ai/DeepGEMM PR #348) is 0.582, 0.922 of it. Over gemm.blackwell.fp8's 0.97 that is 0.95-0.975 (smaller GEMMs fall further: 4096^3 0.79, the size curve's part). Centre 0.96, width 0.05; B200 only (GB300/B300's 1.5x fp4 peak is not measured in these sources)."),
    ParamDef(name="gemm.half_dim", default=96.0, lower=32.0, upper=512.0,
             doc="GEMM size curve: efficiency = max * prod(d / (d + half_dim)) over m, n, k - the dimension "
                 "at which a thin GEMM runs at half the large-GEMM rate (wave quantisation and tile "
                 "under-use; Hopper's 128x128/128x256 tiles put it near one tile: cuBLAS runs M=128 x "
                 "8192 x 8192 at ~0.5-0.6 of the large-GEMM rate). Below 32 a 16-row GEMM would run at "
                 "a third of peak, which no tile can."),
    ParamDef(name="attention.ampere", default=0.6, lower=0.2, upper=0.9,
             doc="Flash attention's tensor-core GEMMs (QK^T, PV) / bf16 dense peak on long sequences, A100; the "
                 "softmax exponentials run on the SFU beside them (cost/compute.py, GPUSpec.sfu_exp2_per_s).",
             prior_width=0.2, prior_source="FlashAttention-2 paper (Dao 2023, fig. 4-6): forward 0.73 of A100 peak at head dim 128, where the exponentials (2.44 T/s) take 0.25 of the peak-rate GEMM time: with 0.58 of them exposed (cost.json attention_exp_overlap) the GEMMs alone run at 1 / (1/0.73 - 0.58 x 0.25) = 0.81; at head dim 64 (~0.6 overall, exponentials 0.5) 0.72. Centre: the earlier whole-kernel prior 0.55 restated for the GEMMs at head dim 128, 1 / (1/0.55 - 0.58 x 0.25) = 0.6 (training lengths and masks run below the papers' best cases), a factor e^0.2."),
    ParamDef(name="attention.hopper", default=0.58, lower=0.2, upper=0.9,
             doc="Flash attention's tensor-core GEMMs / bf16 dense peak on long sequences, Hopper (FA3/cuDNN); the "
                 "exponentials (3.87 T/s on H100: half the GEMM time at head dim 128) run on the SFU beside them.",
             prior_width=0.3, prior_source="FlashAttention-3 paper (Shah et al. 2024, ablation at head dim 128): 582 TFLOP/s without GEMM-softmax pipelining, i.e. the GEMMs alone at 989 / (989/582 - 0.5) = 825 TFLOP/s (0.83); 740 (0.75 overall) at 16K with it. Centre: the earlier whole-kernel prior 0.5 restated for the GEMMs, 1 / (1/0.5 - 0.58 x 0.5) = 0.58 (training lengths and masks below the papers' best cases), a factor e^0.3."),
    ParamDef(name="attention.blackwell", default=0.7, lower=0.2, upper=0.9,
             doc="Flash attention's tensor-core GEMMs / bf16 dense peak on long sequences, Blackwell (cuDNN); the "
                 "exponentials (B200: as long as the GEMMs at head dim 128; Blackwell Ultra: half) run on the SFU.",
             prior_width=0.3, prior_source="FlashAttention-4 (Zadouri et al. 2026): cuDNN 9.13 reaches ~1,235 TFLOP/s forward on B200 at head dim 128 (FA4's 1,605 is 1.3x it), where the exponentials take as long as the peak-rate GEMMs: the GEMMs alone at 2250 / (2250/1235 - 0.58) = 1,810 TFLOP/s (0.80). Centre: the earlier whole-kernel prior 0.5 restated for the GEMMs on B200, 1 / (1/0.5 - 0.58 x 1.0) = 0.7, a factor e^0.3."),
    ParamDef(name="attention.fa2.hopper", default=0.39, lower=0.15, upper=0.8,
             doc="flash-attention 2 (PyTorch SDPA, flash-attn 2) tensor-core GEMMs / bf16 dense peak on Hopper, "
                 "which lacks FA3's Hopper kernels; Blackwell scales by the same ratio to cuDNN.",
             prior_width=0.2, prior_source="FlashAttention-3 paper: FA2 reaches ~0.35 of H100 peak overall at head dim 128; with 0.58 of the exponentials (0.5 of the GEMM time) exposed the GEMMs alone run at 1 / (1/0.35 - 0.29) = 0.39 (the earlier whole-kernel prior 0.35 restated)."),
    ParamDef(name="attention.half_len", default=256.0, lower=16.0, upper=4096.0,
             doc="Attention length curve: efficiency = max * s_kv / (s_kv + half_len).",
             prior_width=0.7, prior_source="FlashAttention-2 paper's A100 benchmarks: at 512 keys the forward runs at ~0.65-0.8 of its 16K rate (half_len ~130-280); a factor 2 around 256."),
    ParamDef(name="attention.bwd_factor", default=3.0, lower=2.5, upper=5.0,
             doc="Flash-attention backward / forward time of the tensor-core GEMMs: 2.5x the FLOPs (5 matmuls vs 2) "
                 "at a lower efficiency (FA2/FA3 backward runs at 0.5-0.9 of the forward's rate); the backward's "
                 "recomputed exponentials are timed on the SFU beside them (cost/compute.py).",
             prior_width=0.15, prior_source="FlashAttention-2/3 papers: backward runs 2.5x the forward's FLOPs at 0.75-0.9 of its rate (FA2 A100: 0.63 vs 0.73 of peak), so 2.8-3.4."),
    ParamDef(name="memory.hbm", default=0.6, lower=0.3, upper=0.92,
             doc="Achieved / nominal HBM bandwidth of memory-bound kernels (norms, activations, "
                 "residuals, casts, optimizer); a streaming copy reaches ~0.9 of nominal.",
             prior_width=0.3, prior_source="Memory-bound kernels (norms, casts, optimizer) reach 0.5-0.9 of nominal HBM bandwidth; a streaming copy ~0.9."),
    ParamDef(name="link.nvlink", default=0.75, lower=0.3, upper=0.95,
             doc="Achieved / nominal NVLink bus bandwidth of NCCL collectives.",
             prior_width=0.15, prior_source="nccl-tests on H100 NVLink4: all-reduce bus bandwidth ~360-480 of 450 GB/s (0.8-0.9 at large messages, less at the MB-sized messages of TP)."),
    ParamDef(name="link.scale_out", default=0.8, lower=0.3, upper=0.97,
             doc="Achieved / nominal scale-out (InfiniBand/RoCE) bus bandwidth of NCCL collectives.",
             prior_width=0.15, prior_source="nccl-tests over 400G InfiniBand/RoCE: bus bandwidth ~0.75-0.95 of line rate at large messages."),
    ParamDef(name="link.alltoall", default=0.7, lower=0.25, upper=0.95,
             doc="Achieved / nominal bandwidth of NCCL's all-to-all (Megatron's alltoall token dispatcher, Ulysses "
                 "CP), its own efficiency rather than a fraction of the ring collectives' (one message per peer, "
                 "no ring steps), one figure on NVLink and on the scale-out NIC: the large-message figures differ "
                 "(~0.82 vs ~0.97, prior_source), but the rows that run NCCL's all-to-all across nodes are three, "
                 "all of one publisher, so a separate NIC figure is not identifiable out of sample (README, "
                 "'One NCCL all-to-all efficiency'). The flex dispatcher (DeepEP/HybridEP) runs at its own "
                 "benchmarked per-link figures instead (cost.json flex_dispatcher_nvlink_efficiency / "
                 "flex_dispatcher_rdma_efficiency).",
             prior_width=0.3, prior_source="NCCL maintainers: on H100 NVLink (450 GB/s) NCCL's protocol overhead "
             "leaves an effective 370 GB/s busBw for non-all-reduce collectives, alltoall included (0.82; "
             "NVIDIA/nccl-tests#212); an alltoall's bandwidth across nodes is one NIC's, 48-49 of a CX7's 50 GB/s "
             "(0.97; nccl-tests#267, #119, #130) - both at large messages; an MoE layer's uneven, MB-size splits "
             "run below: 0.7, a factor e^0.3 around it."),
    ParamDef(name="overhead.launch_s", default=1e-5, lower=3e-6, upper=4e-5,
             doc="Host time to issue one kernel from eager PyTorch (CUDA launch ~4 us plus the Python/ATen "
                 "dispatch). Costs time only where a layer's GPU work is shorter than its launches, or "
                 "after an MoE dispatcher's device-to-host sync (cost/launch.py). Kernels inside a CUDA-graph "
                 "scope (JobSpec.cuda_graphs) cost one replay per scope instead; a grouped GEMM launches one "
                 "cuBLAS GEMM per local expert.",
             prior_width=0.7, prior_source="CUDA launch ~4-6 us (cudaLaunchKernel; NVIDIA 'Getting Started with CUDA Graphs') plus ATen/Python dispatch: ~5-20 us per op in eager PyTorch with Megatron's module hooks; a factor 2 around 10 us."),
    ParamDef(name="overhead.step_s", default=0.05, lower=1e-3, upper=1.0,
             doc="Fixed time per optimizer step (data loading, logging, synchronisation, grad-norm).",
             prior_width=1.0, prior_source="Per-step host work (grad-norm all-reduce, logging, data-loader hand-off) is ~10-100 ms in Megatron/llm-foundry step logs; a factor e around 50 ms."),
    ParamDef(name="overhead.microbatch_s", default=2e-3, lower=1e-5, upper=2e-2,
             doc="Host overhead per micro-batch per pipeline rank (schedule bookkeeping, data loading, "
                 "transfer set-up), forward + backward.",
             prior_width=1.0, prior_source="Per-micro-batch host work (schedule bookkeeping, batch transfer) ~1-5 ms in Megatron timers; a factor e around 2 ms."),
    ParamDef(name="moe.expert_load_cv", default=0.15, lower=0.0, upper=0.3,
             doc="Coefficient of variation of the tokens routed to one expert beyond sampling noise (dropless, "
                 "learned routing with a load-balancing loss or bias). The busiest EP rank's load sets the MoE "
                 "layer's time (cost/moe.py).",
             prior_width=0.05,
             prior_source="Busiest expert / mean = 1 + z(E) x cv, z(E) the expected maximum of E standard normals "
                          "(2.34 for 64 experts; cost/moe.py). DeepSeek's Loss-Free Balancing paper (Wang et al. 2024, "
                          "arXiv 2408.15664; MoE models up to 3B parameters, 200B tokens) measures MaxVio (busiest "
                          "expert / mean - 1) and finds its bias-balanced router better balanced than aux-loss "
                          "routers; the figures used here, global MaxVio ~0.5-0.7 for aux-loss routers and ~0.04 "
                          "bias-balanced on 64 experts (cv ~0.2-0.3 and ~0.02), are recalled: the stored copies "
                          "(abstract and summaries) do not give them, so they stay unverified. Mixtral (Jiang et al. "
                          "2024, section 5 'Routing analysis', fig. 7: expert shares on The Pile validation subsets "
                          "at layers 0, 15 and 31) finds the distribution 'very similar' across ArXiv, PubMed and "
                          "PhilPapers and only DM Mathematics marginally different (verified in the text); the "
                          "spread ~10-17% around 12.5% (cv ~0.1-0.15) is read off the figure, not stated, and is a "
                          "whole-domain share, not a micro-batch's. "
                          "Centre 0.15 (between bias-balanced and aux-loss routers), one width 0.05; upper bound 0.3, "
                          "the top of the aux-loss range. Without it two rows (DGX Cloud's GB200 DeepSeek-V3, r237/r238) set 0.35 for every "
                          "learned-routing plan; their recipe ran capacity-padded token drop, i.e. no imbalance at "
                          "all (runs.py recipe_routing), and they stay over-predicted (~3x, 10% MFU) for a reason "
                          "not modelled: unexplained, not an imbalance."),
    ParamDef(name="overlap.tp", default=0.6, lower=0.0, upper=1.0,
             doc="Share of TP communication hidden under GEMMs when TP overlap is on "
                 "(Transformer Engine userbuffers, NeMo's tp_comm_overlap)."),
    ParamDef(name="overlap.ep", default=0.5, lower=0.0, upper=1.0,
             doc="Share of expert-parallel all-to-all hidden when EP overlap is on (Megatron's "
                 "--overlap-moe-expert-parallel-comm: another micro-batch's computation)."),
)
PARAMETER_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)


@dataclass(frozen=True, kw_only=True, slots=True)
class CostConstants:
    """Calibrated values by name (see ``PARAMETERS``)."""

    values: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        names = [n for n, _ in self.values]
        if sorted(names) != sorted(PARAMETER_NAMES):
            missing = sorted(set(PARAMETER_NAMES) - set(names))
            extra = sorted(set(names) - set(PARAMETER_NAMES))
            raise InputError("calibration", missing[0] if missing else extra[0],
                             "is missing" if missing else "is not a known constant")

    @staticmethod
    def defaults() -> CostConstants:
        return CostConstants(values=tuple((p.name, p.default) for p in PARAMETERS))

    @staticmethod
    def from_dict(values: dict[str, float]) -> CostConstants:
        return CostConstants(values=tuple((n, float(values[n])) for n in PARAMETER_NAMES if n in values)
                             + tuple((n, float(v)) for n, v in values.items() if n not in PARAMETER_NAMES))

    def as_dict(self) -> dict[str, float]:
        return dict(self.values)

    def __getitem__(self, name: str) -> float:
        for n, v in self.values:
            if n == name:
                return v
        raise KeyError(name)

    def gemm_efficiency(self, family: str, precision: str) -> float:
        """Large-GEMM throughput / the precision's dense peak. fp8 and fp4 constants are ratios to the
        next wider precision's efficiency, so their speed-up never exceeds the hardware's peak ratio."""
        if family == "ampere" or precision in ("bf16", "fp16"):
            return self[f"gemm.{family}.bf16"]
        eff = self[f"gemm.{family}.bf16"] * self[f"gemm.{family}.fp8"]
        if precision == "fp4":
            eff *= self[f"gemm.{family}.fp4"]
        return eff


@dataclass(frozen=True, kw_only=True, slots=True)
class RuntimeCost:
    """How a framework runs a step (profiles/cost.json; mechanisms with sources, not fitted)."""

    name: str
    tp_comm_overlap: bool
    """TP all-gather/reduce-scatter overlapped with the GEMMs that use them."""
    overlap_grad_reduce: bool
    """Data-parallel gradient reduction overlapped with the last micro-batch's backward."""
    overlap_param_gather: bool
    """Distributed-optimizer parameter all-gather overlapped with the next step's first forward."""
    grad_reduce_bytes: int
    """Bytes per gradient element on the wire in the data-parallel reduction."""
    selective_recompute: str
    """'attention' (Megatron: the core-attention forward is recomputed) or 'ops' (torchtitan's
    op-level policy: every second matmul is recomputed)."""
    overlap_cpu_optimizer: bool
    """Offloaded optimizer: D2H/H2D copies overlap the CPU Adam (Megatron's
    --overlap-cpu-optimizer-d2h-h2d)."""
    attention_kernel: str
    """'cudnn' (Transformer Engine fused/flash attention), 'fa2' (flash-attention 2, PyTorch SDPA) or
    'unfused' (materialised s^2 scores with a fused softmax: Megatron before flash attention)."""
    ep_comm_overlap: bool
    """Expert-parallel all-to-all overlapped with another micro-batch's computation."""
    ep_dispatcher: str
    """MoE token dispatcher: 'alltoall' (Megatron's all-to-all of one row per token-expert pair) or
    'flex' (DeepEP/HybridEP: one copy per destination node over the NIC, then NVLink; cost/moe.py)."""
    p2p_blocking: bool
    """Pipeline sends/receives occupy both ranks (DeepSpeed's pipeline engine) instead of running
    beside computation."""
    p2p_split_over_tp: bool
    """Without sequence parallelism, each TP rank sends 1/tp of the activation (Megatron's
    scatter/gather optimisation; DeepSpeed's pipeline engine partitions the activation and its gradient
    over the TP ranks); otherwise every TP rank sends all of it."""
    grad_accum_bytes_per_param: int
    """Memory traffic per parameter and micro-batch to accumulate gradients outside the GEMMs (0 where
    the wgrad GEMM accumulates into the fp32 buffer itself)."""
    zero1_grad_allreduce: bool
    """ZeRO-1 all-reduces the full gradients (then each rank updates its partition) instead of
    reduce-scattering them (DeepSpeed's BF16_Optimizer)."""
    cp_comm: str
    """Context-parallel exchange when the plan does not choose one: 'p2p' (Megatron's ring),
    'all_gather' (torchtitan's default rotate method, Llama 3), 'a2a' or 'a2a+p2p'."""
    source: str
    reduce_scatter_avg: bool = False
    """Gradients are reduce-scattered with a dividing op (``ReduceOp.AVG`` / ``PREMUL_SUM``: PyTorch FSDP2's
    ``_get_gradient_divide_factors`` for bf16/fp32), which NCCL does not run as PAT (cost/comm.py)."""
    zero2_reduces_each_microbatch: bool = False
    """ZeRO-2 reduce-scatters every micro-batch's gradients under pipeline parallelism too (Megatron-FSDP's
    ``optim_grads``: ``grad_reduce_every_bprop`` in megatron_fsdp.py, whatever the pipeline), as it must to keep
    only its shard of them; False: under PP it accumulates a micro-batch's gradients and reduces them once per step."""
    sharded_grad_reduce_bytes: int = 0
    """Bytes per gradient element on the wire when the plan shards gradients (ZeRO-2/3, HSDP), where the runtime
    runs those with another reduce dtype than ``grad_reduce_bytes`` (0: the same). Megatron-LM runs them as
    Megatron-FSDP, whose gradients take the compute dtype in Megatron-Core 0.19.2 (``--megatron-fsdp-main-grads-dtype
    auto``; this tool also emits ``--grad-reduce-in-bf16``, as Megatron-FSDP's user guide recommends): 2."""
    ddp_buckets: bool = False
    """Megatron-Core's DDP: gradients are reduced (and parameters gathered) in buckets of
    ``max(40M, 1M x dp)`` parameters (``DDP_BUCKET_MIN_PARAMS``) as the backward makes them ready, so the
    bucket holding the embedding and first layers is reduced after the backward ends and gathered before
    the next forward can start (cost/step.py ``input_bucket``)."""


def grad_wire_bytes(rt: RuntimeCost, sharding: str) -> int:
    """Bytes per gradient element the data-parallel reduction moves for a plan sharded as ``sharding``
    (``RuntimeCost.sharded_grad_reduce_bytes`` for ZeRO-2/3 and HSDP where the runtime sets it)."""
    if sharding in ("zero2", "zero3", "hsdp") and rt.sharded_grad_reduce_bytes:
        return rt.sharded_grad_reduce_bytes
    return rt.grad_reduce_bytes


@lru_cache(maxsize=None)
def _cost_file() -> dict[str, Any]:
    return json.loads((profiles_dir() / "cost.json").read_text())


def load_runtime_cost(name: str) -> RuntimeCost:
    table = _cost_file()["runtimes"]
    if name not in table:
        raise InputError("runtime", name, f"must be one of {', '.join(sorted(table))}")
    entry = dict(table[name])
    return RuntimeCost(name=name, **entry)


def hardware_default(key: str) -> float:
    """Hardware figures used when a profile does not measure them (cost.json 'hardware_defaults')."""
    return float(_cost_file()["hardware_defaults"][key]["value"])


def calibration_path() -> Path:
    return profiles_dir() / "calibration.json"


@lru_cache(maxsize=None)
def _load_calibration_cached(path: str) -> CostConstants:
    return load_calibration(Path(path))


def load_calibration(path: Path | None = None) -> CostConstants:
    """The fitted constants (``profiles/calibration.json``), strictly checked."""
    if path is None:
        return _load_calibration_cached(str(calibration_path()))
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("calibration", str(path), "file not found") from None
    except json.JSONDecodeError as exc:
        raise InputError("calibration", str(path), f"is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("constants"), dict):
        raise InputError("calibration", str(path), "must hold a 'constants' object")
    values = data["constants"]
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InputError(f"calibration.constants.{name}", value, "must be a number")
    return CostConstants.from_dict(values)


__all__ = ["CostConstants", "PARAMETERS", "PARAMETER_NAMES", "ParamDef", "RuntimeCost", "calibration_path",
           "grad_wire_bytes", "hardware_default", "load_calibration", "load_runtime_cost"]
