"""``estimate_step(model, cluster, job, plan, placement) -> StepReport``: the time of one training
step, as named exposed-time terms that add up to ``step_s``.

How a step is put together:

1. Per virtual pipeline stage, the forward and backward time of one micro-batch: its layers' GEMMs,
   attention and memory-bound kernels (``compute.py``), recompute (full: the forward again;
   selective: the attention forward, or every second matmul under torchtitan's op policy), a host
   overhead per layer, plus the communication the layer cannot hide - TP all-reduce-equivalents
   (partly hidden where the framework overlaps them), the CP ring exchange beyond the attention it
   overlaps, EP dispatch and combine, and ZeRO-3 parameter gathers / gradient reduce-scatters beyond
   the layer compute they are prefetched under. The embedding sits on the first and the LM head and
   loss on the last virtual stage.
2. The pipeline schedule is simulated (``schedule.py``) with the point-to-point transfer of each
   stage boundary on its real link. The busiest rank's time splits into compute and exposed
   TP/CP/EP/ZeRO-3 communication; the rest of the makespan is bubble, and what the transfers add
   to the makespan is ``pp_comm``.
3. After its last backward, every stage reduces its gradients over data parallel (reduce-scatter for
   ZeRO / the distributed optimizer, all-reduce otherwise; hierarchical on the real links) and
   all-gathers updated parameters; with the framework's overlap the reduction hides under the last
   backward and the gather under the next step's first forward. The step waits for the slowest
   stage (``dp_comm``).
4. The optimizer: the GPU part is memory-bound (``ADAM_BYTES_PER_PARAM``); the offloaded fraction
   runs CPU Adam at the node's measured or default rate while gradients go down and parameters come
   back over PCIe (overlapped with the CPU work where the framework does that); GPU and CPU parts
   run at once, and what the CPU part adds beyond the GPU part is ``offload``.
5. A fixed per-step overhead (calibrated).

``prepare`` does everything that does not depend on the calibrated constants, ``evaluate`` the
rest, so calibration can re-time hundreds of runs per trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from configurator.cost.comm import CommModel, LinkEfficiency
from configurator.cost.compute import WORK_TIME_MEMO, GemmCurve, GpuRates, expert_gemms_s, gpu_rates, \
    measured_gemm_curves, time_work
from configurator.cost.constants import CostConstants, RuntimeCost, grad_wire_bytes, hardware_default, \
    load_calibration, load_runtime_cost
from configurator.cost.cp import cp_times_s
from configurator.cost.knobs import effective_knobs, flex_overlap_compute_slowdown
from configurator.cost.launch import activation_syncs, dispatcher_syncs, layer_launch_s, plan_graph_scopes
from configurator.cost.moe import ep_overlap_paired_share, ep_scale_out_share, expert_load_factor
from configurator.cost.schedule import ScheduleResult, simulate
from configurator.cost.work import (BF16, LayerWork, embedding_work, expert_glu_clamp_unfused, head_work, layer_work,
                                   model_flops_per_token, mtp_projection_work)
from configurator.memory import all_layer_params, stage_layer_indices, stage_params
from configurator.placement import Placement
from configurator.recompute import MEGATRON_RUNTIMES, recompute_shares
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan

ADAM_BYTES_PER_PARAM = 4 * 2 + 4 * 2 + 4 * 2 + 4 + 2
"""Adam's memory traffic per sharded parameter: read+write the fp32 master, both moments, read the
fp32 gradient, write the bf16 parameter (30 B)."""
OFFLOAD_PCIE_BYTES_PER_PARAM = 4 + 2
"""Per offloaded parameter and step: its fp32 gradient down, its bf16 parameter back up."""
DDP_BUCKET_MIN_PARAMS = 40_000_000
DDP_BUCKET_PARAMS_PER_DP_RANK = 1_000_000
"""Megatron-Core's default DDP bucket: ``max(40000000, 1000000 * dp_group.size())`` parameters
(megatron/core/distributed/distributed_data_parallel.py: larger data-parallel groups get larger buckets
so the ring's per-rank chunks stay bandwidth-bound)."""
BREAKDOWN_TERMS: tuple[str, ...] = ("compute", "pipeline_bubble", "tp_comm", "cp_comm", "ep_comm", "pp_comm",
                                    "dp_comm", "optimizer", "offload", "overhead")
_COMPONENTS = ("compute", "tp_comm", "cp_comm", "ep_comm", "dp_comm", "pp_comm")


@dataclass(frozen=True, kw_only=True, slots=True)
class StepReport:
    """One step's time; ``breakdown_s`` adds up to ``step_s``."""

    step_s: float
    tokens_per_s_per_gpu: float
    model_tflops_per_gpu: float
    mfu: float
    breakdown_s: tuple[tuple[str, float], ...]
    compute_detail_s: tuple[tuple[str, float], ...]
    """The busiest rank's compute split: gemm, attention, elementwise, recompute, launch overhead."""
    critical_stage: int
    """Pipeline rank with the most work (its time is the ``compute`` term)."""
    stage_busy_s: tuple[float, ...]
    num_microbatches: int
    bubble_fraction: float
    runtime: str
    peak_flops: float
    graph_launch_saved_s: float = 0.0
    """Host launch time per step that the plan's own CUDA graphs (``Plan.cuda_graphs``) take off the GPU's path on
    the pipeline rank where they take off most (its layers' exposed launches, eager less graphed): 0 where every
    layer's kernels outlast their launches anyway on every rank (then the graphs change nothing, and the search
    leaves them off)."""

    def term(self, name: str) -> float:
        return dict(self.breakdown_s)[name]

    def as_dict(self) -> dict[str, Any]:
        """INTERFACE.md's ``time`` object (plus details)."""
        return {
            "step_s": round(self.step_s, 6),
            "tokens_per_s_per_gpu": round(self.tokens_per_s_per_gpu, 3),
            "model_tflops_per_gpu": round(self.model_tflops_per_gpu, 3),
            "mfu": round(self.mfu, 5),
            "breakdown_s": {k: round(v, 6) for k, v in self.breakdown_s},
            "compute_detail_s": {k: round(v, 6) for k, v in self.compute_detail_s},
            "critical_stage": self.critical_stage,
            "stage_busy_s": [round(b, 6) for b in self.stage_busy_s],
            "num_microbatches": self.num_microbatches,
            "bubble_fraction": round(self.bubble_fraction, 5),
            "runtime": self.runtime,
            **({"cuda_graph_launch_saved_s": round(self.graph_launch_saved_s, 6)} if self.graph_launch_saved_s else {}),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class VirtualStage:
    works: tuple[tuple[LayerWork, int, bool], ...]
    """(work, how many layers, is an MoE layer) plus the embedding/head entries (count 1)."""
    num_layers: int


@dataclass(kw_only=True, slots=True)
class StepInputs:
    """Everything about one (model, cluster, job, plan, placement) that the constants do not change."""

    model: ModelSpec
    cluster: ClusterSpec
    job: JobSpec
    plan: Plan
    runtime: RuntimeCost
    stages: tuple[VirtualStage, ...]
    comm: CommModel
    num_microbatches: int
    rank_params: tuple[tuple[float, float], ...]
    """Per pipeline rank: (non-expert, expert) parameters held by one of its ranks."""
    zero3_layer_bytes: tuple[float, ...]
    """Per virtual stage: bf16 non-expert parameter bytes of one layer on a rank (ZeRO-3 gathers over
    dp x cp), mean."""
    zero3_expert_bytes: tuple[float, ...]
    """Per virtual stage: bf16 expert parameter bytes of one layer on a rank (gathered over the
    expert-data-parallel group, which is what shards them), mean."""
    measured_curves: dict[str, GemmCurve]
    ep_domains: int
    """NVLink domains one expert-parallel group spans (node-limited routing, NIC sharing)."""
    cp_domains: int
    p2p_bytes: float
    cpu_adam_params_per_s_per_gpu: float
    model_flops_per_step: float
    input_bucket: tuple[float, int] = (0.0, 0)
    """Megatron DDP runtimes: ``input_bucket(model, plan)``; (0, 0) where the runtime reduces without buckets."""
    _rates: dict[tuple, GpuRates] = field(default_factory=dict)
    _schedules: dict[tuple, ScheduleResult] = field(default_factory=dict)

    def schedule(self, forward_s: list[float], backward_s: list[float], send_s: list[float]) -> ScheduleResult:
        """``simulate`` for this plan, remembering the last few results (calibration re-times the same
        stages many times while varying constants that do not touch them)."""
        key = (tuple(forward_s), tuple(backward_s), tuple(send_s))
        hit = self._schedules.get(key)
        if hit is None:
            hit = simulate(pp=self.plan.pp, vpp=self.plan.vpp, num_microbatches=self.num_microbatches,
                           forward_s=forward_s, backward_s=backward_s, send_forward_s=send_s,
                           send_backward_s=send_s)
            if len(self._schedules) >= 8:
                self._schedules.pop(next(iter(self._schedules)))
            self._schedules[key] = hit
        return hit


def input_bucket(model: ModelSpec, plan: Plan) -> tuple[float, int]:
    """(parameters per rank, buckets) of Megatron-Core's gradient buffer on the first pipeline rank's first
    model chunk: the parameters in the bucket that holds the input embedding, and how many buckets
    the chunk has.

    Megatron fills buckets walking the parameters in reverse (backward order) and closes one once it
    holds ``DDP_BUCKET_MIN_PARAMS``-or-more parameters (param_and_grad_buffer.py); the input embedding comes
    last, so its bucket is the embedding plus whatever first layers were left over. Its gradients are
    complete only when the backward ends, so its reduce-scatter cannot hide, and the next step's forward
    waits for its all-gather. Walked per layer (a layer's tensors are not split here). Other pipeline
    ranks and chunks have bucketing off (``disable_bucketing or pp_rank > 0``)."""
    return _input_bucket(model, plan.tp, plan.pp * plan.vpp, plan.dp * plan.cp,
                         plan.virtual_stage_layers(model)[0])


@lru_cache(maxsize=4096)
def _input_bucket(model: ModelSpec, tp: int, chunks: int, dp_cp: int, first_chunk: int) -> tuple[float, int]:
    bucket = max(DDP_BUCKET_MIN_PARAMS, DDP_BUCKET_PARAMS_PER_DP_RANK * dp_cp)
    params = all_layer_params(model)
    vocab = model.padded_vocab_size(tp)
    filled, count = 0.0, 0
    if chunks == 1:  # the only chunk also holds the final norm and the LM head, reduced first
        filled = (model.norm_params + (0 if model.tied_embeddings else vocab * model.hidden_size)) / tp
        if filled >= bucket:
            filled, count = 0.0, 1
    for i in reversed(range(first_chunk)):
        filled += params[i][0] / tp
        if filled >= bucket:
            filled, count = 0.0, count + 1
    embedding = (vocab + model.learned_position_embeddings) * model.hidden_size / tp
    return filled + embedding, count + 1


def cpu_adam_rate_per_gpu(cluster: ClusterSpec) -> float:
    """CPU Adam parameters per second available to one GPU: measured per node, or the default per core."""
    node_rate = dict(cluster.measured).get("cpu_adam_params_per_s")
    if isinstance(node_rate, (int, float)) and node_rate > 0:
        return float(node_rate) / cluster.gpus_per_node
    return hardware_default("cpu_adam_params_per_s_per_core") * cluster.host_cpu_cores_per_node / cluster.gpus_per_node


def group_domains(comm: CommModel, plan: Plan) -> tuple[int, int]:
    """NVLink domains the widest expert-parallel and context-parallel group spans (node-limited
    routing and NIC sharing depend on them)."""
    ep_domains = max((sh.domains for sh in comm.shapes("ep")), default=1) if plan.ep > 1 else 1
    cp_domains = max((sh.domains for sh in comm.shapes("cp")), default=1) if plan.cp > 1 else 1
    return ep_domains, cp_domains


def mean_layer_shard_bytes(params: list[tuple[float, float]] | tuple[tuple[float, float], ...], plan: Plan,
                           start: int, n: int) -> tuple[float, float]:
    """(dense, expert) bf16 bytes of one rank's shard of the mean layer among layers ``start .. start + n - 1``
    (``all_layer_params``' per-layer counts over TP, and over EP x ETP for the experts): what a ZeRO-3 /
    FSDP stage gathers per layer (``_layer_shard_comm``); (0, 0) for an empty stage."""
    dense_sum = expert_sum = 0.0
    for i in range(start, start + n):
        dense, expert = params[i]
        dense_sum += dense / plan.tp
        expert_sum += expert / (plan.ep * plan.etp)
    return BF16 * dense_sum / max(n, 1), BF16 * expert_sum / max(n, 1)


_SHARED = object()
_RATES = object()
"""Key tags of ``_shared_work`` and ``_rates_for`` entries in a search's ``WORK_TIME_MEMO``."""


_CONSTANT_VALUES: dict[int, tuple[CostConstants, dict[str, float]]] = {}
_CONSTANT_VALUES_LIMIT = 64


def constant_values(c: CostConstants) -> dict[str, float]:
    """``c``'s values by name, as a dict (``CostConstants[name]`` walks its tuple: ~35 look-ups per costing, 3% of a
    search's CPU). Remembered per constants object, which the entry holds so that its id stays its own; bounded
    (calibration builds a new object per trial)."""
    hit = _CONSTANT_VALUES.get(id(c))
    if hit is None:
        if len(_CONSTANT_VALUES) >= _CONSTANT_VALUES_LIMIT:
            _CONSTANT_VALUES.clear()
        hit = _CONSTANT_VALUES[id(c)] = (c, dict(c.values))
    return hit[1]


def _shared_work(work: LayerWork) -> LayerWork:
    """During a search, the first equal ``LayerWork`` seen: the structures and options of one search prepare the
    same few hundred works thousands of times, and one object per value lets ``time_work`` and ``expert_gemms_s``
    find their timings by identity instead of hashing every field of every work on every lookup."""
    memo = WORK_TIME_MEMO.get()
    if memo is None:
        return work
    return memo.setdefault((_SHARED, work), work)  # type: ignore[return-value]


def prepare(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan,
            placement: Placement | None = None, *, runtime: str = "megatron") -> StepInputs:
    """The constant-independent part of ``estimate_step``. ``plan`` must be legal (``check_plan``)."""
    rt = load_runtime_cost(runtime)
    if placement is not None:
        placement.check(cluster)
    m = max(1, plan.num_microbatches(job))
    work_cache: dict[tuple[bool, int], LayerWork] = {}

    def work_of(index: int) -> tuple[LayerWork, tuple[bool, int]]:
        """The layer's work and its kind: (MoE, attention window; sliding-window layers attend to fewer keys)."""
        key = (model.layer_is_moe(index), model.attention_window(index))
        if key not in work_cache:
            work_cache[key] = _shared_work(layer_work(model, job, plan, index))
        return work_cache[key], key

    stages = []
    zero3 = []
    zero3_e = []
    start = 0
    virtual = plan.virtual_stage_layers(model)
    params = all_layer_params(model)
    for v, n in enumerate(virtual):
        counts: dict[tuple[bool, int], int] = {}
        for i in range(start, start + n):
            _, key = work_of(i)
            counts[key] = counts.get(key, 0) + 1
        works = [(work_cache[key], c, key[0]) for key, c in sorted(counts.items())]
        if v == 0:
            works.append((_shared_work(embedding_work(model, job, plan)), 1, False))
        if v == len(virtual) - 1:
            works.append((_shared_work(head_work(model, job, plan)), 1, False))
            if model.mtp_layers:
                # Multi-token prediction (Megatron-Core places the MTP block on the last stage): per
                # module one more transformer layer like the last one, its eh_proj and norms, and its
                # own output head + loss (weights shared with the main head).
                last_work, (last_moe, _) = work_of(model.num_layers - 1)
                works += [(last_work, model.mtp_layers, last_moe),
                          (_shared_work(mtp_projection_work(model, job, plan)), model.mtp_layers, False),
                          (_shared_work(head_work(model, job, plan)), model.mtp_layers, False)]
        stages.append(VirtualStage(works=tuple(works), num_layers=n))
        dense_b, expert_b = mean_layer_shard_bytes(params, plan, start, n)
        zero3.append(dense_b)
        zero3_e.append(expert_b)
        start += n
    rank_params = tuple(stage_params(model, plan, s, layers)
                        for s, layers in enumerate(stage_layer_indices(model, plan)))
    split = plan.sp or rt.p2p_split_over_tp
    p2p = plan.micro_batch * job.seq_len / plan.cp * model.hidden_size * BF16 / (plan.tp if split else 1)
    comm = CommModel(cluster, plan, placement, LinkEfficiency(nvlink=1.0, scale_out=1.0))
    ep_domains, cp_domains = group_domains(comm, plan)
    return StepInputs(model=model, cluster=cluster, job=job, plan=plan, runtime=rt, stages=tuple(stages),
                      comm=comm, num_microbatches=m, rank_params=rank_params, zero3_layer_bytes=tuple(zero3),
                      zero3_expert_bytes=tuple(zero3_e),
                      measured_curves=measured_gemm_curves(cluster), p2p_bytes=p2p,
                      ep_domains=ep_domains, cp_domains=cp_domains,
                      cpu_adam_params_per_s_per_gpu=cpu_adam_rate_per_gpu(cluster),
                      model_flops_per_step=model_flops_per_token(model, job.seq_len) * job.tokens_per_step,
                      input_bucket=input_bucket(model, plan) if rt.ddp_buckets and rt.overlap_grad_reduce
                      else (0.0, 0))


def _layer_of_kind(model: ModelSpec, moe: bool) -> int:
    """Index of the first MoE (or dense) layer: selective-recompute shares differ only by kind."""
    return next((i for i in range(model.num_layers) if model.layer_is_moe(i) == moe), 0)


_GLU_CLAMP: dict[tuple[int, int], tuple[ModelSpec, JobSpec, bool]] = {}
_GLU_CLAMP_LIMIT = 64


def _glu_clamp_unfused(model: ModelSpec, job: JobSpec) -> bool:
    """``expert_glu_clamp_unfused(model, job)``, remembered per (model, job) object as ``constant_values`` remembers
    its constants (the entry holds both, so their ids stay theirs; bounded): ``_stage_times`` asks on every call, and
    the model's ``clamped_glu`` scans its features each time (~10,000 calls per MoE search, 2% of its CPU)."""
    hit = _GLU_CLAMP.get((id(model), id(job)))
    if hit is None:
        if len(_GLU_CLAMP) >= _GLU_CLAMP_LIMIT:
            _GLU_CLAMP.clear()
        hit = _GLU_CLAMP[(id(model), id(job))] = (model, job, expert_glu_clamp_unfused(model, job))
    return hit[2]


def _stage_times(inp: StepInputs, rates: GpuRates, comm: CommModel, c: CostConstants,
                 v: int, ep_paired_share: float | None = None, memo: dict[tuple, tuple] | None = None
                 ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(forward components, backward components, compute detail) of one micro-batch on virtual stage v.

    Hidden communication is not free: NCCL's SMs slow the compute it hides under
    (``nccl_overlap_compute_slowdown`` of the hidden time is added to compute). ``ep_paired_share``: the
    share of passes whose all-to-all can hide (``moe.ep_overlap_paired_share`` of the plan's schedule when
    None); the search's bounds, which time one layer for every pipeline shape at once, pass 1 (the least
    time) or 0 (the most): the stage time falls as the share grows.

    ``memo``: where a caller times the same works at the same rates over the same links under many plans that
    differ only in the recompute and the communication knobs (the search's bounds, ``search/bound.py``: one
    one-layer stage per layer kind, timed under every knob and recompute setting), what depends on nothing else --
    a work's compute, its expert imbalance, its TP all-reduce and its raw EP exchange (per dispatcher), its CP
    exchange (per CP type) -- is remembered in it per (stage, work, knob): the same floats, not worked out again per
    plan. The caller keeps
    one per (inputs, rates, links), and the plan must not change anything else those read (the degrees, the
    micro-batch, SP)."""
    plan, rt = inp.plan, inp.runtime
    cv = constant_values(c)
    knobs = effective_knobs(plan, rt)
    fwd = dict.fromkeys(_COMPONENTS, 0.0)
    bwd = dict.fromkeys(_COMPONENTS, 0.0)
    detail = dict.fromkeys(("gemm", "attention", "elementwise", "recompute", "launch"), 0.0)
    tp_hidden = cv["overlap.tp"] if knobs.tp_overlap else 0.0
    # Only micro-batch passes that Megatron's combined 1F1B pairs with another can hide their all-to-all.
    if ep_paired_share is None:
        ep_paired_share = ep_overlap_paired_share(plan.pp, plan.vpp, inp.num_microbatches)
    ep_hidden = cv["overlap.ep"] * ep_paired_share if knobs.ep_overlap else 0.0
    launch_s = cv["overhead.launch_s"]
    slowdown = hardware_default("nccl_overlap_compute_slowdown")
    ep_flex_slowdown = (flex_overlap_compute_slowdown(rates.sm_count, inp.job.flex_dispatcher_sms)
                        if knobs.ep_dispatcher == "flex" else slowdown)
    sync_s = hardware_default("d2h_sync_s")
    # The EP all-to-all's links: DeepEP/HybridEP (flex) move the tokens with their own kernels at the rates their
    # benchmarks measure on NVLink and over RDMA, not at the fitted NCCL all-to-all efficiencies (cost.json
    # flex_dispatcher_nvlink_efficiency / flex_dispatcher_rdma_efficiency).
    ep_comm: CommModel | None = None  # (the flex dispatcher's links: worked out where needed)
    stage = inp.stages[v]
    chunk_layers = stage.num_layers
    full_frac = 0.0
    if plan.recompute == "full" and chunk_layers:
        full_frac = min(1.0, (plan.recompute_num_layers or chunk_layers) / chunk_layers)
    per_mb_sharding = _per_microbatch_sharding(plan, rt)
    first_layer = True  # each chunk's forward starts with a gather nothing can hide
    # Megatron-Core's clamped GLU syncs the host once per MoE forward (and recompute): cost/launch.py.
    act_syncs = activation_syncs(
        rt.name in MEGATRON_RUNTIMES and _glu_clamp_unfused(inp.model, inp.job),
        plan.recompute == "selective" and bool({"moe_act", "moe"} & set(plan.recompute_modules)),
        inp.job.cuda_graphs)
    for i, (work, n, moe) in enumerate(stage.works):
        memo_key = (v, i, knobs.ep_dispatcher)
        known = memo.get(memo_key) if memo is not None else None
        if known is not None:
            wt, imbalance, f_compute, b_compute, tp_raw, ep_raw = known
        else:
            wt = time_work(work, rates)
            imbalance = 0.0
            factor = 1.0
            if work.expert_gemms:
                # Dropless routing: the busiest EP rank's grouped GEMMs and all-to-all set the pace.
                factor = expert_load_factor(inp.model, plan, inp.job, work.pairs_per_expert, cv)
                imbalance = (factor - 1.0) * expert_gemms_s(work, rates)
            f_compute = wt.total_s + imbalance
            b_compute = 2 * (wt.gemm_s + imbalance) + wt.attention_bwd_s + 2 * wt.elementwise_s
            tp_raw = comm.allreduce_s("tp", work.tp_bytes) if work.tp_bytes else 0.0
            ep_raw = 0.0
            if work.ep_bytes:
                if ep_comm is None:
                    ep_comm = comm.with_efficiency(flex_link_efficiency(comm.eff)) \
                        if knobs.ep_dispatcher == "flex" else comm
                share = ep_scale_out_share(inp.model, inp.model.moe_topk, inp.ep_domains, knobs.ep_dispatcher)
                ep_raw = 2 * ep_comm.alltoall_s("ep", work.ep_bytes * factor, share)
            if work.etp_bytes:
                # expert-TP all-gather of the dispatched pairs + reduce-scatter of the expert outputs
                ep_raw += comm.allreduce_s("etp", work.etp_bytes * factor)
            if memo is not None:
                memo[memo_key] = (wt, imbalance, f_compute, b_compute, tp_raw, ep_raw)
        is_layer = work.attention_flops > 0
        hidden_f = 0.0  # communication hidden under this layer's forward (repeated in backward)
        tp_f = work.tp_collectives * tp_raw * (1 - tp_hidden)
        hidden_f += work.tp_collectives * tp_raw * tp_hidden
        cp_key = (v, i, "cp", knobs.cp_comm)
        cp = memo.get(cp_key) if memo is not None else None
        if cp is None:
            cp = cp_times_s(knobs.cp_comm, work, plan.cp, comm, wt.attention_s,
                            wt.attention_bwd_s / wt.attention_s if wt.attention_s else 0.0)
            if memo is not None:
                memo[cp_key] = cp
        cp_f, cp_b, cp_hidden = cp
        ep_f = ep_raw * (1 - ep_hidden)
        hidden_f += ep_raw * ep_hidden
        # The flex dispatcher's kernels hold their own SMs (not NCCL's channels) while hidden.
        flex_extra_f = (ep_flex_slowdown - slowdown) * ep_raw * ep_hidden
        recompute = 0.0
        re_frac = 0.0  # share of the forward's communication repeated by recompute
        re_ep = 0.0
        if is_layer:
            if full_frac:
                recompute = full_frac * f_compute
                re_frac = full_frac
            elif plan.recompute == "selective" and plan.recompute_modules:
                # Megatron's --recompute-modules: configurator/recompute.py says what repeats.
                share = recompute_shares(inp.model, inp.job, plan, _layer_of_kind(inp.model, moe))
                recompute = (share.gemm * wt.gemm_s + share.attention * wt.attention_s
                             + share.elementwise * wt.elementwise_s)
                re_ep = share.ep_comm  # the MoE recompute repeats its dispatch and combine
            elif plan.recompute == "selective":
                recompute = wt.attention_s if rt.selective_recompute == "attention" else 0.5 * wt.gemm_s
        launch_f = launch_b = 0.0
        if is_layer:
            # A published run's graphs (its recipe's, ``JobSpec.cuda_graphs``), else the plan's own.
            own_graphs = knobs.cuda_graphs and not inp.job.cuda_graphs
            graphs = plan_graph_scopes(inp.model.is_moe) if own_graphs else inp.job.cuda_graphs
            syncs = dispatcher_syncs(moe, plan.ep, inp.job.moe_routing, graphs)
            local_experts = work.expert_gemms[0].count if work.expert_gemms else 0.0
            layer_syncs = act_syncs if work.expert_gemms else (0, 0)
            launch_f, launch_b = layer_launch_s(f_compute, b_compute + recompute, moe, launch_s,
                                                sync_s, syncs, graphs, local_experts, work.extra_kernels,
                                                layer_syncs, inp.cluster.host_dispatch_ratio)
            launch_b += re_frac * launch_f
            if own_graphs:
                eager_f, eager_b = layer_launch_s(f_compute, b_compute + recompute, moe, launch_s, sync_s, syncs, (),
                                                  local_experts, work.extra_kernels, layer_syncs,
                                                  inp.cluster.host_dispatch_ratio)
                saved = n * ((eager_f + eager_b + re_frac * eager_f) - (launch_f + launch_b))
                detail["graphs_saved"] = detail.get("graphs_saved", 0.0) + saved
        z_f = z_b = z_first = 0.0
        zf_hidden = zb_hidden = 0.0  # sharding gathers/reductions hidden under compute
        if per_mb_sharding and is_layer:
            gather, reduce = _layer_shard_comm(inp, comm, v, plan)
            # The NIC is shared with the CP and EP exchanges of the same layer: what they occupy of the
            # layer's compute window is not available to hide the gathers under.
            busy_f = (cp_f + cp_hidden / 3 + ep_raw) if (inp.cp_domains > 1 or inp.ep_domains > 1) else 0.0
            window_f = max(0.0, f_compute - busy_f)
            window_b = max(0.0, b_compute + recompute - 2 * busy_f)
            f_gather = gather if per_mb_sharding == "zero3" else 0.0
            z_f = max(0.0, f_gather - window_f)
            back = reduce + f_gather
            z_b = max(0.0, back - window_b)
            zf_hidden, zb_hidden = f_gather - z_f, back - z_b
            if first_layer and f_gather:
                # The first layer's gather of a micro-batch has nothing before it to hide under.
                z_first = f_gather - z_f
                first_layer = False
        slow_f = slowdown * (hidden_f + zf_hidden + cp_hidden / 3) + flex_extra_f
        slow_b = slowdown * ((1 + re_frac) * hidden_f + zb_hidden + 2 * cp_hidden / 3) + (1 + re_frac) * flex_extra_f
        fwd["compute"] += n * (f_compute + launch_f + slow_f)
        bwd["compute"] += n * (b_compute + recompute + launch_b + slow_b)
        fwd["tp_comm"] += n * tp_f
        bwd["tp_comm"] += n * (1 + re_frac) * tp_f
        fwd["cp_comm"] += n * cp_f
        bwd["cp_comm"] += n * (cp_b + re_frac * cp_f)
        fwd["ep_comm"] += n * ep_f
        bwd["ep_comm"] += n * (1 + re_frac + re_ep) * ep_f
        fwd["dp_comm"] += n * z_f + z_first
        bwd["dp_comm"] += n * z_b
        detail["gemm"] += n * 3 * (wt.gemm_s + imbalance)
        detail["attention"] += n * (wt.attention_s + wt.attention_bwd_s)
        detail["elementwise"] += n * 3 * wt.elementwise_s
        detail["recompute"] += n * recompute
        detail["launch"] += n * (launch_f + launch_b + slow_f + slow_b)
    return fwd, bwd, detail


@dataclass(frozen=True, slots=True)
class EndCollectives:
    """A pipeline rank's end-of-step data-parallel collectives in seconds, before any overlap: the gradient
    reduction (HSDP's replica all-reduce, or the all-reduce / reduce-scatter of the ranks that reduce once per
    step), the updated parameters' gather, and under Megatron's DDP buckets the input-side bucket's reduce
    and gather, which no window hides (``*_floor_s``; 0 without buckets)."""
    reduce_s: float = 0.0
    reduce_floor_s: float = 0.0
    gather_s: float = 0.0
    gather_floor_s: float = 0.0


def end_collectives(comm: CommModel, rt: RuntimeCost, plan: Plan, dense: float, expert: float,
                    bucket: tuple[float, int] = (0.0, 0)) -> EndCollectives:
    """``dense`` / ``expert`` parameters' end-of-step collectives (``EndCollectives``); ``bucket``:
    ``input_bucket``'s (parameters, buckets) where the rank reduces in Megatron's buckets. One formula for
    ``evaluate`` and the search's end-of-step bound (search/bound.py), which must never exceed it."""
    per_mb = _per_microbatch_sharding(plan, rt)
    if plan.sharding == "hsdp":
        # Gradient shards all-reduced across the replicas once per step.
        shard = (dense + expert) / plan.shard_group * grad_wire_bytes(rt, plan.sharding)
        return EndCollectives(reduce_s=2 * comm.subgroup_allgather_s("dp_cp", shard, plan.shard_group,
                                                                      outer=True, pat=False))
    if per_mb == "zero2":
        # Gradients were reduce-scattered per micro-batch; updated parameters are gathered once.
        return EndCollectives(gather_s=comm.allgather_s("dp_cp", dense * BF16) + comm.allgather_s("edp", expert * BF16))
    if per_mb:
        return EndCollectives()
    grad_all_reduce = plan.sharding == "none" or (plan.sharding == "zero1" and rt.zero1_grad_allreduce)

    def grad_collective(kind: str, num_bytes: float) -> float:
        """All-reduce (no sharding, or ZeRO-1 where the runtime all-reduces), else reduce-scatter."""
        if grad_all_reduce:
            return comm.allreduce_s(kind, num_bytes)
        return comm.reduce_scatter_s(kind, num_bytes, rt.reduce_scatter_avg)

    wire = grad_wire_bytes(rt, plan.sharding)
    grad = dense * wire
    grad_e = expert * wire
    gather = 0.0 if plan.sharding == "none" else \
        comm.allgather_s("dp_cp", dense * BF16) + comm.allgather_s("edp", expert * BF16)
    bucket_params, buckets = bucket
    if not buckets:
        return EndCollectives(reduce_s=grad_collective("dp_cp", grad) + grad_collective("edp", grad_e),
                              gather_s=gather)
    # Megatron's buckets: each its own collective (its own ring latency).
    reduce = buckets * grad_collective("dp_cp", grad / buckets) + grad_collective("edp", grad_e)
    reduce_floor = grad_collective("dp_cp", bucket_params * wire)
    gather_floor = 0.0
    if gather:
        gather = buckets * comm.allgather_s("dp_cp", dense * BF16 / buckets) + comm.allgather_s("edp", expert * BF16)
        gather_floor = comm.allgather_s("dp_cp", bucket_params * BF16)
    return EndCollectives(reduce_s=reduce, reduce_floor_s=reduce_floor, gather_s=gather, gather_floor_s=gather_floor)


def optimizer_params(plan: Plan, dense: float, expert: float) -> float:
    """Parameters a rank's optimizer updates, of its ``dense`` / ``expert`` ones: its shard under HSDP and
    the sharded optimizers (expert parameters over the expert-data-parallel group), all of them unsharded."""
    if plan.sharding == "hsdp":
        return (dense + expert) / plan.shard_group
    if plan.sharding != "none":
        return dense / (plan.dp * plan.cp) + expert / plan.expert_dp
    return dense + expert


def _per_microbatch_sharding(plan: Plan, rt: RuntimeCost) -> str:
    """Which per-layer, per-micro-batch sharding traffic the plan has: 'zero3' (ZeRO-3 / FSDP / HSDP:
    gather in forward and backward, reduce-scatter in backward), 'zero2' (ZeRO-2: reduce-scatter each
    micro-batch's gradients, no gathers; under pipeline parallelism only where the runtime does,
    ``RuntimeCost.zero2_reduces_each_microbatch``: Megatron-FSDP), or '' (none: ZeRO-1, the distributed
    optimizer, and ZeRO-2 under pipeline parallelism elsewhere, which reduce once per step)."""
    if plan.sharding in ("zero3", "hsdp"):
        return "zero3"
    if plan.sharding == "zero2" and (plan.pp == 1 or rt.zero2_reduces_each_microbatch):
        return "zero2"
    return ""


def _layer_shard_comm(inp: StepInputs, comm: CommModel, v: int, plan: Plan) -> tuple[float, float]:
    """(all-gather, gradient reduce-scatter) seconds of one layer's shards on virtual stage v.

    Non-expert parameters are sharded over dp x cp, expert parameters over the expert-data-parallel
    group (``dp*cp*tp / (ep*etp)`` ranks); HSDP shards both inside ``shard_group`` consecutive ranks."""
    rt = inp.runtime
    dense_b, expert_b = inp.zero3_layer_bytes[v], inp.zero3_expert_bytes[v]
    grad = grad_wire_bytes(rt, plan.sharding) / BF16
    if plan.sharding == "hsdp":
        g = comm.subgroup_allgather_s("dp_cp", dense_b + expert_b, plan.shard_group, outer=False)
        r = comm.subgroup_allgather_s("dp_cp", (dense_b + expert_b) * grad, plan.shard_group, outer=False,
                                      pat=not rt.reduce_scatter_avg)
        return g, r
    gather = comm.allgather_s("dp_cp", dense_b) + (comm.allgather_s("edp", expert_b) if expert_b else 0.0)
    avg = rt.reduce_scatter_avg
    reduce = comm.reduce_scatter_s("dp_cp", dense_b * grad, avg) + \
        (comm.reduce_scatter_s("edp", expert_b * grad, avg) if expert_b else 0.0)
    return gather, reduce


def _all_stage_times(inp: StepInputs, rates: GpuRates, comm: CommModel,
                     c: CostConstants) -> list[tuple[dict[str, float], dict[str, float], dict[str, float]]]:
    """``_stage_times`` of every virtual stage; stages with the same layers share one computation
    (fresh dict copies, since ``evaluate`` adds to them)."""
    groups, unique = _stage_time_groups(inp, rates, comm, c)
    return [(dict(f), dict(b), dict(d)) for f, b, d in (unique[g] for g in groups)]


def _stage_time_groups(inp: StepInputs, rates: GpuRates, comm: CommModel, c: CostConstants) -> tuple[
        list[int], list[tuple[dict[str, float], dict[str, float], dict[str, float]]]]:
    """Per virtual stage, the index of its ``_stage_times`` among the distinct ones, and those (shared: not to be
    changed). Stages with the same works, layer count and shard sizes (and the first stage, which starts with
    its gather) have the same times: most of an interleaved pipeline's chunks are alike."""
    index: dict[tuple, int] = {}
    unique: list[tuple[dict[str, float], dict[str, float], dict[str, float]]] = []
    groups = []
    for v, stage in enumerate(inp.stages):
        key = (tuple((id(w), n, moe) for w, n, moe in stage.works), stage.num_layers, inp.zero3_layer_bytes[v],
               inp.zero3_expert_bytes[v], v == 0)
        g = index.get(key)
        if g is None:
            g = index[key] = len(unique)
            unique.append(_stage_times(inp, rates, comm, c, v))
        groups.append(g)
    return groups, unique


def link_efficiency(c: CostConstants) -> LinkEfficiency:
    """The links' calibrated efficiencies; every timing of a step (evaluate, the bounds, the per-operation
    times) takes them from here, so the all-to-all efficiency cannot be left out of one of them. NCCL's
    all-to-all has one figure on both links (``link.alltoall``; cost/constants.py says why)."""
    cv = constant_values(c)
    return LinkEfficiency(nvlink=cv["link.nvlink"], scale_out=cv["link.scale_out"], alltoall=cv["link.alltoall"])


def flex_link_efficiency(eff: LinkEfficiency) -> LinkEfficiency:
    """``eff`` with the all-to-all moved by the flex dispatcher's (DeepEP/HybridEP) own kernels: DeepEP's
    benchmarked share of NVLink and of the NIC (cost.json ``flex_dispatcher_nvlink_efficiency``,
    ``flex_dispatcher_rdma_efficiency``), not NCCL's fitted ones."""
    return replace(eff, alltoall=hardware_default("flex_dispatcher_nvlink_efficiency"),
                   alltoall_scale_out=hardware_default("flex_dispatcher_rdma_efficiency"))


def _rates_for(inp: StepInputs, c: CostConstants) -> GpuRates:
    rates = inp._rates.get(c.values)
    if rates is None:
        search_memo = WORK_TIME_MEMO.get()
        if search_memo is None:
            rates = gpu_rates(inp.cluster, inp.job.precision, c, inp.measured_curves, inp.runtime.attention_kernel,
                              inp.job.fp8_attention)
        else:
            # One rates object per search, GPU and constants (knob variants are prepared with empty ``_rates``):
            # not worked out again per variant, and ``time_work`` finds its timings by the rates' identity.
            # Cluster and constants by identity, held by the entry so their ids stay theirs.
            key = (_RATES, id(inp.cluster), id(c), inp.job.precision, tuple(sorted(inp.measured_curves.items())),
                   inp.runtime.attention_kernel, inp.job.fp8_attention)
            hit = search_memo.get(key)
            if hit is None:
                hit = search_memo[key] = ((inp.cluster, c), gpu_rates(
                    inp.cluster, inp.job.precision, c, inp.measured_curves, inp.runtime.attention_kernel,
                    inp.job.fp8_attention))
            rates = hit[1]  # type: ignore[index]
        inp._rates.clear()
        inp._rates[c.values] = rates
    return rates


def busy_lower_bound(inp: StepInputs, constants: CostConstants) -> float:
    """A lower bound of ``evaluate(inp).step_s`` without simulating the schedule.

    Rank r runs all its micro-batches one after another (``m * W_r``); it cannot start before the first
    micro-batch's forward has passed virtual stages 0..r-1, and after its last operation (the backward
    of chunk 0 of the last micro-batch, in Megatron's 1F1B and interleaved orders) that backward still
    passes virtual stages r-1..0. So ``step >= max_r (sum_{v<r} (F_v + B_v) + m * W_r)``, exact for
    equal stages without transfers. The search ranks candidates by it and stops costing once it
    exceeds the best step found (branch and bound).
    """
    rates = _rates_for(inp, constants)
    comm = inp.comm.with_efficiency(link_efficiency(constants))
    pp = inp.plan.pp
    per_mb = constants["overhead.microbatch_s"] / inp.plan.vpp
    groups, unique = _stage_time_groups(inp, rates, comm, constants)
    per_group = [sum(f.values()) + sum(b.values()) + per_mb for f, b, _ in unique]
    times = [per_group[g] for g in groups]
    busy = [sum(times[r::pp]) for r in range(pp)]
    fill = [sum(times[:r]) for r in range(pp)]
    return max(fill[r] + inp.num_microbatches * busy[r] for r in range(pp)) + constants["overhead.step_s"]


def evaluate(inp: StepInputs, constants: CostConstants) -> StepReport:
    """Time one prepared step under ``constants``."""
    c = constants
    plan, job, cluster, rt = inp.plan, inp.job, inp.cluster, inp.runtime
    rates = _rates_for(inp, c)
    comm = inp.comm.with_efficiency(link_efficiency(c))
    m = inp.num_microbatches
    pp, vpp = plan.pp, plan.vpp
    groups, unique = _stage_time_groups(inp, rates, comm, c)
    send_f = [comm.p2p_stage_s(r, inp.p2p_bytes) for r in range(pp)]
    V = pp * vpp
    per_mb = constant_values(c)["overhead.microbatch_s"] / vpp
    # What is added below depends on the stage's times and, with gradient accumulation hooks or blocking sends,
    # on its rank and whether it is the first or last stage: worked out once per distinct case (the same
    # additions, so the same floats), shared by the stages alike (read only from here on).
    by_rank = bool(rt.grad_accum_bytes_per_param) or (rt.p2p_blocking and pp > 1)
    cases: dict[tuple, tuple[dict[str, float], dict[str, float], dict[str, float], float, float]] = {}
    per_stage = []
    fwd_s = []
    bwd_s = []
    for v, g in enumerate(groups):
        case_key = (g, v % pp, v == 0, v == V - 1) if by_rank else g
        case = cases.get(case_key)
        if case is None:
            f0, b0, d0 = unique[g]
            f, b, d = dict(f0), dict(b0), dict(d0)
            f["compute"] += per_mb / 3
            b["compute"] += 2 * per_mb / 3
            if rt.grad_accum_bytes_per_param:
                # Each micro-batch's gradients added into the fp32 buffers by a backward hook.
                accum = sum(inp.rank_params[v % pp]) / vpp * rt.grad_accum_bytes_per_param / rates.hbm_Bps
                b["compute"] += accum
                d["elementwise"] += accum
            if rt.p2p_blocking and pp > 1:
                # The rank sends its output and receives its input itself: both transfers cost it time.
                recv = send_f[(v - 1) % pp] if v > 0 else 0.0
                send = send_f[v % pp] if v < V - 1 else 0.0
                f["pp_comm"] = recv + send
                b["pp_comm"] = recv + send
            case = cases[case_key] = (f, b, d, sum(f.values()), sum(b.values()))
        per_stage.append(case[:3])
        fwd_s.append(case[3])
        bwd_s.append(case[4])
    if rt.p2p_blocking:
        send_f = [0.0] * pp
    sched = inp.schedule(fwd_s, bwd_s, send_f)
    if any(send_f):
        makespan0 = inp.schedule(fwd_s, bwd_s, [0.0] * pp).makespan_s
    else:
        makespan0 = sched.makespan_s
    critical = max(range(pp), key=lambda r: sched.busy_s[r])
    components = dict.fromkeys(_COMPONENTS, 0.0)
    detail = dict.fromkeys(("gemm", "attention", "elementwise", "recompute", "launch"), 0.0)
    for v in range(critical, pp * vpp, pp):
        f, b, d = per_stage[v]
        for k in _COMPONENTS:
            components[k] += m * (f[k] + b[k])
        for k in detail:
            detail[k] += m * d[k]
    bubble = max(0.0, makespan0 - sched.busy_s[critical])
    pp_comm = max(0.0, sched.makespan_s - makespan0) + components["pp_comm"]
    # ---- data-parallel gradient reduction and parameter gather at the end of the step ----
    end_times = []
    gpu_opt = []
    cpu_opt = []
    per_mb = _per_microbatch_sharding(plan, rt)
    overlap_slowdown = hardware_default("nccl_overlap_compute_slowdown")
    for r in range(pp):
        dense, expert = inp.rank_params[r]
        bucketed = r == 0 and inp.input_bucket[1] > 0
        ends = end_collectives(comm, rt, plan, dense, expert, inp.input_bucket if bucketed else (0.0, 0))
        exposed = 0.0
        total = 0.0  # the end-of-step collectives' time, hidden or not
        if plan.sharding == "hsdp":
            # Under the last backward.
            window = sched.finish_s[r] - sched.last_backward_start_s[r] if rt.overlap_grad_reduce else 0.0
            exposed += max(0.0, ends.reduce_s - window)
            total = ends.reduce_s
        elif per_mb == "zero2":
            exposed += max(0.0, ends.gather_s - (fwd_s[r] if rt.overlap_param_gather else 0.0))
            total = ends.gather_s
        elif not per_mb:
            window = sched.finish_s[r] - sched.last_backward_start_s[r] if rt.overlap_grad_reduce else 0.0
            first_fwd = fwd_s[r] if rt.overlap_param_gather else 0.0
            if bucketed:
                # The input-side bucket waits for the backward's end and the next forward waits for its gather.
                exposed += max(ends.reduce_floor_s, ends.reduce_s - window)
                if ends.gather_s:
                    exposed += max(ends.gather_floor_s, ends.gather_s - first_fwd) if rt.overlap_param_gather \
                        else ends.gather_s
            else:
                exposed += max(0.0, ends.reduce_s - window)
                exposed += max(0.0, ends.gather_s - first_fwd)
            total = ends.reduce_s + ends.gather_s
        # Hidden is not free: NCCL's SMs slow the backward/forward it hides under, as for every other
        # overlapped collective (``nccl_overlap_compute_slowdown``); counted in dp_comm.
        exposed += overlap_slowdown * max(0.0, total - exposed)
        end_times.append(sched.finish_s[r] + exposed)
        # Optimizer: parameters this rank updates.
        owned = optimizer_params(plan, dense, expert)
        gpu_opt.append((1 - plan.offload) * owned * ADAM_BYTES_PER_PARAM / rates.hbm_Bps)
        if plan.offload > 0:
            cpu = plan.offload * owned / inp.cpu_adam_params_per_s_per_gpu
            pcie = plan.offload * owned * OFFLOAD_PCIE_BYTES_PER_PARAM / cluster.gpu.pcie_host_bandwidth_Bps
            cpu_opt.append(max(cpu, pcie) if rt.overlap_cpu_optimizer else cpu + pcie)
        else:
            cpu_opt.append(0.0)
    dp_end = max(end_times) - sched.makespan_s
    optimizer = max(gpu_opt)
    offload = max(0.0, max(cpu_opt) - optimizer)
    overhead = constant_values(c)["overhead.step_s"]
    breakdown = {
        "compute": components["compute"], "pipeline_bubble": bubble, "tp_comm": components["tp_comm"],
        "cp_comm": components["cp_comm"], "ep_comm": components["ep_comm"], "pp_comm": pp_comm,
        "dp_comm": components["dp_comm"] + dp_end, "optimizer": optimizer, "offload": offload,
        "overhead": overhead,
    }
    step = sched.makespan_s + dp_end + optimizer + offload + overhead
    world = plan.world_size
    tokens = job.tokens_per_step
    peak = cluster.gpu.peak_flops_for(job.precision)
    model_tflops = inp.model_flops_per_step / step / world
    return StepReport(
        step_s=step, tokens_per_s_per_gpu=tokens / step / world, model_tflops_per_gpu=model_tflops / 1e12,
        mfu=model_tflops / peak, breakdown_s=tuple((k, breakdown[k]) for k in BREAKDOWN_TERMS),
        compute_detail_s=tuple(detail.items()), critical_stage=critical, stage_busy_s=sched.busy_s,
        num_microbatches=m, bubble_fraction=bubble / sched.makespan_s if sched.makespan_s else 0.0,
        runtime=rt.name, peak_flops=peak,
        graph_launch_saved_s=max(m * sum(per_stage[v][2].get("graphs_saved", 0.0) for v in range(r, pp * vpp, pp))
                                 for r in range(pp)))


def estimate_step(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan,
                  placement: Placement | None = None, *, runtime: str = "megatron",
                  constants: CostConstants | None = None) -> StepReport:
    """Step time of a legal plan; ``placement`` defaults to Megatron's order on consecutive GPUs."""
    inputs = prepare(model, cluster, job, plan, placement, runtime=runtime)
    return evaluate(inputs, constants or load_calibration())


__all__ = ["ADAM_BYTES_PER_PARAM", "BREAKDOWN_TERMS", "StepInputs", "StepReport", "busy_lower_bound", "estimate_step",
           "evaluate", "mean_layer_shard_bytes", "prepare"]


@dataclass(frozen=True, kw_only=True, slots=True)
class OperationTimes:
    """What a drawing of the step needs (``explain.py``): per virtual stage, how long one micro-batch's
    forward and backward take and which share of each is exposed communication, and per pipeline rank the
    time of one activation send. The same numbers ``evaluate`` feeds its schedule, so picture and total agree."""

    forward_s: tuple[float, ...]
    backward_s: tuple[float, ...]
    exposed_comm_share: tuple[tuple[float, float], ...]
    """(forward, backward) share of the operation that is communication not hidden behind compute."""
    send_s: tuple[float, ...]
    num_microbatches: int
    step: StepReport


def operation_times(inp: StepInputs, constants: CostConstants) -> OperationTimes:
    """The per-operation times of a prepared step (``OperationTimes``), with its ``StepReport``."""
    c = constants
    comm = inp.comm.with_efficiency(link_efficiency(c))
    per_stage = _all_stage_times(inp, _rates_for(inp, c), comm, c)
    per_mb = c["overhead.microbatch_s"] / inp.plan.vpp
    fwd = [sum(f.values()) + per_mb / 3 for f, _, _ in per_stage]
    bwd = [sum(b.values()) + 2 * per_mb / 3 for _, b, _ in per_stage]
    shares = tuple(((sum(f.values()) - f["compute"]) / fwd[v] if fwd[v] else 0.0,
                    (sum(b.values()) - b["compute"]) / bwd[v] if bwd[v] else 0.0)
                   for v, (f, b, _) in enumerate(per_stage))
    sends = tuple(comm.p2p_stage_s(r, inp.p2p_bytes) for r in range(inp.plan.pp))
    return OperationTimes(forward_s=tuple(fwd), backward_s=tuple(bwd), exposed_comm_share=shares, send_s=sends,
                          num_microbatches=inp.num_microbatches, step=evaluate(inp, c))


__all__ += ["OperationTimes", "operation_times"]
