"""Per-rank, per-stage peak memory of a plan: ``estimate_memory(...) -> MemoryReport``.

What is counted (bytes per GPU), for every pipeline stage:

* **weights, grads, optimizer** - the stage's parameters (its layers' non-expert parameters over TP,
  routed experts over EP x expert-TP, the embedding on the first stage, the LM head on the last) times
  the runtime's bytes per parameter, sharded by the plan: ZeRO-1 / distributed optimizer shard the
  optimizer over DP x CP (Megatron's distributed optimizer shards over the DP x CP group), ZeRO-2 also
  the grads, ZeRO-3 also the weights (plus the unsharded layers in flight). Routed experts shard over
  the expert-data-parallel group instead. An optimizer CPU-offload fraction ``f`` moves ``f`` of the
  optimizer states (fp32 master weights + Adam moments) to host memory, which is reported and checked.
* **activations** - per layer and micro-batch after Korthikanti et al. 2022 (Table 2) generalised to
  GQA/MLA widths, SwiGLU, MoE top-k routing buffers, TP / sequence parallel / context parallel, with
  flash attention (no s^2 score matrix is stored), by named parts, times the micro-batches the
  schedule keeps in flight per model chunk (Megatron-Core's order replayed: ``configurator/inflight.py``).
  Full recompute (``recompute_num_layers`` N: the first N layers of each chunk) keeps those layers'
  inputs plus one layer's working set; selective recompute drops the parts of Megatron-Core's
  ``--recompute-modules`` (``RECOMPUTE_MODULE_PARTS``), or without a list keeps
  ``selective_keep_fraction`` (1.0 for Megatron: with flash attention its core-attention recompute
  saves nothing more) or torchtitan's op-level policy. The loss (logits) is counted once on the last stage.
* **overhead** - allocator fragmentation (reserved - allocated, a fraction of allocated per runtime),
  CUDA context and NCCL buffers (per GPU family); constants in ``profiles/memory.json``.
* **ep_buffers** - with the flex MoE token dispatcher (``ep_dispatcher=flex``), the DeepEP / HybridEP
  communication buffers every rank of a stage with MoE layers allocates once: an NVLink buffer, and an RDMA
  (NVSHMEM) buffer where the dispatcher's group spans nodes; sized from DeepEP's and HybridEP's own
  formulas (``configurator/ep_buffers.py``, which quotes them). Outside the PyTorch allocator: in the
  device total (nvidia-smi), not in ``reserved``/``allocated``. Zero for the alltoall/allgather dispatchers.

Where we deliberately differ from Megatron-LM's ``theoretical_memory_usage.py`` (reproduced by
``megatron_theoretical_memory`` below): it ignores CP, full recompute, MoE activations, offload, the
real in-flight count of non-first stages and the SwiGLU's wider fc1 output; it always assumes the
first stage is the peak. ``tests/test_memory.py`` checks both.
"""

from __future__ import annotations

import json
import math
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import lru_cache
from operator import add, attrgetter
from typing import Any, NamedTuple

from configurator.ep_buffers import FlexBuffers, flex_backend, flex_buffers
from configurator.errors import InputError
from configurator.inflight import CountTable, count_table, equal_weight_peak, peak_inflight, weighted_peak
from configurator.profiles import GIB, profiles_dir
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import PLAN_FIELDS, Plan

RUNTIMES: tuple[str, ...] = ("megatron", "megatron-2021", "nemo", "deepspeed", "fsdp", "llm-foundry")
"""Frameworks with both a memory layout and step mechanics. ``profiles/memory.json`` also has memory-only
layouts (``deepspeed-bf16``: DeepSpeed's BF16 optimizer) that ``validate`` uses for the rows that ran them."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Runtime:
    """How a training framework lays out memory (one mechanism; constants in profiles/memory.json)."""

    name: str
    weight_bytes: float
    """Bytes per parameter of the compute copy (bf16)."""
    grad_bytes: float
    """Bytes per parameter of gradient buffers (Megatron: fp32 main grads)."""
    master_bytes: float
    """Separate fp32 master copy (0 where the sharded fp32 parameter is the master: FSDP2)."""
    adam_bytes: float
    zero3_param_bytes: float
    """Bytes per parameter of the sharded parameter under ZeRO-3 / FSDP."""
    logit_bytes: float
    """Bytes per logit element kept for the loss and its gradient."""
    selective_keep_fraction: float
    fragmentation: float
    """(reserved - allocated) / allocated of the caching allocator at peak."""
    pipe_buffers: int
    """Stage-boundary activations kept per in-flight micro-batch (DeepSpeed's pipe buffers)."""
    fsdp_pp_unsharded: bool
    """With pp > 1, ZeRO-3 and ZeRO-2 keep the stage's bf16 parameters and grads unsharded (torchtitan: PyTorch's
    pipeline stage turns resharding after backward and gradient sync off but on the last micro-batch)."""
    grad_bucket_bytes: float = 0.0
    """A fixed gradient-reduction buffer per rank (DeepSpeed ZeRO-1/2's contiguous IPG bucket of
    ``reduce_bucket_size`` elements), bytes; counted with the grads."""
    pp_unsharded_grad_bytes: float = 2.0
    """With ``fsdp_pp_unsharded``: bytes per parameter of the unsharded gradient accumulated over the
    micro-batches (FSDP2 upcasts it to its fp32 reduce dtype while gradient sync is off: 4)."""
    sharded_grad_bytes: float = 0.0
    """Bytes per parameter of the gradient buffers of the sharded-gradient plans (ZeRO-2/3, HSDP) where the runtime
    keeps them in another dtype than ``grad_bytes`` (0: the same): Megatron-FSDP's main gradients take the compute
    parameters' dtype unless set (Megatron-Core 0.19.2 ``MixedPrecisionPolicy.main_grads_dtype`` None, from
    ``--megatron-fsdp-main-grads-dtype auto``), bf16, where the distributed optimizer keeps fp32 main grads."""
    zero2_param_bytes: float = 0.0
    """Bytes per parameter of the sharded parameter kept beside the unsharded compute copy under ZeRO-2 where that
    shard is the master (FSDP2's reshard_after_forward False, FSDP1's SHARD_GRAD_OP: ``master_bytes`` 0); 0 where
    the master is counted with the optimizer (Megatron-FSDP, DeepSpeed)."""
    selective_policy: str = "fraction"
    """What selective recompute keeps without a module list: ``fraction`` (``selective_keep_fraction``
    of the layer) or ``op_every_second_mm`` (torchtitan's op-level policy, ``torchtitan_op_sac_bytes``)."""

    @property
    def optimizer_bytes(self) -> float:
        return self.master_bytes + self.adam_bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class FamilyOverhead:
    cuda_context_bytes: float
    nccl_bytes: float


@lru_cache(maxsize=None)
def _constants() -> dict[str, Any]:
    return json.loads((profiles_dir() / "memory.json").read_text())


def memory_constants() -> dict[str, Any]:
    """``profiles/memory.json`` as loaded (read-only use)."""
    return _constants()


@lru_cache(maxsize=None)
def load_runtime(name: str) -> Runtime:
    """The runtime's memory constants (cached: ``estimate_memory`` asks for them on every call; a
    ``Runtime`` is frozen)."""
    table = _constants()["runtimes"]
    if name not in table:
        raise InputError("runtime", name, f"must be one of {', '.join(sorted(table))}")
    fields = {k: v for k, v in table[name].items() if k != "source"}
    return Runtime(name=name, **fields)


@lru_cache(maxsize=None)
def load_overhead(family: str) -> FamilyOverhead:
    entry = _constants()["gpu_families"][family]
    return FamilyOverhead(cuda_context_bytes=entry["cuda_context_GiB"] * GIB,
                          nccl_bytes=entry["nccl_buffers_GiB"] * GIB)


@dataclass(frozen=True, kw_only=True, slots=True)
class StageMemory:
    """One pipeline stage's rank; the parts add up to ``total_bytes``."""

    stage: int
    num_layers: int
    params: int
    """Parameters held by one rank of this stage (non-expert shard + expert shard)."""
    weights_bytes: float
    grads_bytes: float
    optimizer_bytes: float
    activations_bytes: float
    fragmentation_bytes: float
    context_bytes: float
    """CUDA context + NCCL buffers: outside the PyTorch allocator."""
    host_optimizer_bytes: float
    """Offloaded optimizer states of this rank, in host memory."""
    inflight_microbatches: float
    ep_buffer_bytes: float = 0.0
    """The flex dispatcher's DeepEP/HybridEP buffers (``ep_buffers.py``): outside the PyTorch allocator."""
    cuda_graph_bytes: float = 0.0
    """What the plan's own CUDA graphs' pool holds beyond eager (``cuda_graph_bytes``); 0 without them."""

    @property
    def allocated_bytes(self) -> float:
        """What ``torch.cuda.max_memory_allocated`` would report."""
        return self.weights_bytes + self.grads_bytes + self.optimizer_bytes + self.activations_bytes

    @property
    def reserved_bytes(self) -> float:
        """What ``torch.cuda.max_memory_reserved`` would report."""
        return self.allocated_bytes + self.fragmentation_bytes

    @property
    def total_bytes(self) -> float:
        """Device memory in use, as nvidia-smi shows it; this must fit the GPU."""
        return self.reserved_bytes + self.context_bytes + self.ep_buffer_bytes + self.cuda_graph_bytes

    @property
    def overhead_bytes(self) -> float:
        return self.fragmentation_bytes + self.context_bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryReport:
    stages: tuple[StageMemory, ...]
    capacity_bytes: float
    host_capacity_bytes: float
    host_peak_bytes: float
    """Offloaded optimizer states of the busiest node (all its ranks)."""
    runtime: str
    flex_buffers: FlexBuffers | None = None
    """The flex dispatcher's buffers of one EP rank (None for the other dispatchers); the stages with MoE
    layers carry their total as ``ep_buffer_bytes``."""

    @property
    def peak(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.total_bytes)

    @property
    def peak_bytes(self) -> float:
        return self.peak.total_bytes

    @property
    def fits_device(self) -> bool:
        return self.peak_bytes <= self.capacity_bytes

    @property
    def fits_host(self) -> bool:
        return self.host_peak_bytes <= self.host_capacity_bytes

    @property
    def fits(self) -> bool:
        return self.fits_device and self.fits_host

    def reason(self) -> str:
        """Why it does not fit ('' when it does)."""
        if not self.fits_device:
            return (f"stage {self.peak.stage} needs {self.peak_bytes / GIB:.1f} GiB of "
                    f"{self.capacity_bytes / GIB:.1f} GiB")
        if not self.fits_host:
            return (f"offloaded optimizer needs {self.host_peak_bytes / GIB:.1f} GiB of host memory per "
                    f"node, {self.host_capacity_bytes / GIB:.1f} GiB available")
        return ""

    def as_dict(self) -> dict[str, Any]:
        """INTERFACE.md's ``memory`` object (GiB)."""
        p = self.peak
        return {
            "peak_gib": round(p.total_bytes / GIB, 3),
            "capacity_gib": round(self.capacity_bytes / GIB, 3),
            "host_peak_gib": round(self.host_peak_bytes / GIB, 3),
            "host_capacity_gib": round(self.host_capacity_bytes / GIB, 3),
            "peak_stage": p.stage,
            "allocated_gib": round(p.allocated_bytes / GIB, 3),
            "reserved_gib": round(p.reserved_bytes / GIB, 3),
            "breakdown_gib": {
                "weights": round(p.weights_bytes / GIB, 3),
                "grads": round(p.grads_bytes / GIB, 3),
                "optimizer": round(p.optimizer_bytes / GIB, 3),
                "activations": round(p.activations_bytes / GIB, 3),
                "overhead": round(p.overhead_bytes / GIB, 3),
                "ep_buffers": round(p.ep_buffer_bytes / GIB, 3),
                **({"cuda_graphs": round(p.cuda_graph_bytes / GIB, 3)} if p.cuda_graph_bytes else {}),
            },
            "per_stage_peak_gib": [round(s.total_bytes / GIB, 3) for s in self.stages],
            "runtime": self.runtime,
        }


# ----- layers and parameters per stage ---------------------------------------------------------
def stage_layer_indices(model: ModelSpec, plan: Plan) -> list[list[int]]:
    """Global layer indices held by each pipeline rank.

    As Megatron: virtual stage ``v`` (chunk ``v // pp`` of rank ``v % pp``) holds the next
    ``virtual_stage_layers[v]`` layers in model order.
    """
    out: list[list[int]] = [[] for _ in range(plan.pp)]
    start = 0
    for v, n in enumerate(plan.virtual_stage_layers(model)):
        out[v % plan.pp].extend(range(start, start + n))
        start += n
    return out


@lru_cache(maxsize=64)
def all_layer_params(model: ModelSpec) -> tuple[tuple[int, int], ...]:
    """``model.layer_params(i)`` for every layer, computed once per model (the search asks often)."""
    return tuple(model.layer_params(i) for i in range(model.num_layers))


@lru_cache(maxsize=64)
def layer_moe_flags(model: ModelSpec) -> tuple[bool, ...]:
    """``model.layer_is_moe(i)`` for every layer, once per model."""
    return tuple(model.layer_is_moe(i) for i in range(model.num_layers))


@lru_cache(maxsize=1024)
def _virtual_chunks(num_layers: int, pp: int, vpp: int, pipeline_layers: tuple[int, ...]) -> tuple[tuple[range, ...], ...]:
    """Per pipeline rank, the layer ranges of its chunks (``chunk_layer_indices``), once per split."""
    virtual = pipeline_layers or tuple([num_layers // (pp * vpp)] * (pp * vpp))
    out: list[list[range]] = [[] for _ in range(pp)]
    start = 0
    for v, n in enumerate(virtual):
        out[v % pp].append(range(start, start + n))
        start += n
    return tuple(tuple(chunks) for chunks in out)


@lru_cache(maxsize=1024)
def _stage_param_table(model: ModelSpec, tp: int, pp: int, vpp: int, ep: int, etp: int,
                       pipeline_layers: tuple[int, ...]) -> tuple[tuple[int, float, float, float], ...]:
    """Per pipeline rank: (layers, ``stage_params``' non-expert and expert parameters, the largest
    gathered layer's parameters under ZeRO-3), once per partition (``estimate_memory`` is called for
    thousands of plans that share it; the same arithmetic in the same order, so the same floats)."""
    plan = Plan(tp=tp, pp=pp, vpp=vpp, ep=ep, etp=etp, pipeline_layers=pipeline_layers)
    params = all_layer_params(model)
    out = []
    for s, chunks in enumerate(_virtual_chunks(model.num_layers, pp, vpp, pipeline_layers)):
        layers = [i for r in chunks for i in r]
        dense, expert = stage_params(model, plan, s, layers)
        biggest = max([params[i][0] / tp + params[i][1] / (ep * etp) for i in layers] or [0])
        out.append((len(layers), dense, expert, biggest))
    return tuple(out)


def stage_params(model: ModelSpec, plan: Plan, stage: int, layers: list[int]) -> tuple[float, float]:
    """(non-expert, expert) parameters on one rank of ``stage``."""
    dense = expert = 0.0
    params = all_layer_params(model)
    for i in layers:
        d, e = params[i]
        dense += d
        expert += e
    vocab = model.padded_vocab_size(plan.tp)
    if stage == 0:
        dense += vocab * model.hidden_size + model.learned_position_embeddings * model.hidden_size
    if stage == plan.pp - 1:
        dense += model.norm_params
        if not model.tied_embeddings or plan.pp > 1:
            dense += vocab * model.hidden_size  # tied weights keep a copy on the last stage when pp > 1
        if model.mtp_layers:
            mtp_dense, mtp_expert = mtp_stage_params(model, plan)
            dense += mtp_dense
            expert += mtp_expert
    return dense / plan.tp, expert / (plan.ep * plan.etp)


def mtp_stage_params(model: ModelSpec, plan: Plan) -> tuple[float, float]:
    """(non-expert, expert) parameters the multi-token-prediction block adds to the last pipeline stage,
    before the TP/EP split. Megatron-Core builds the MTP block on the last stage (``mtp_on_this_rank``
    without a custom layout) and gives that stage its own input embedding when it is not also the first
    (gpt_model.py: ``if self.pre_process or self.mtp_process: self.embedding = ...``); the output head
    is shared with the main model. Per module (``ModelSpec.mtp_params``): eh_proj (2h x h), three norms
    and one transformer layer like the model's last."""
    if not model.mtp_layers:
        return 0.0, 0.0
    h = model.hidden_size
    layer_dense, layer_expert = model.layer_params(model.num_layers - 1)
    dense = model.mtp_layers * (2 * h * h + 3 * model.norm_params + layer_dense)
    if plan.pp > 1:
        dense += model.padded_vocab_size(plan.tp) * h
    return float(dense), float(model.mtp_layers * layer_expert)


# ----- activations -----------------------------------------------------------------------------
def layer_activation_parts(model: ModelSpec, job: JobSpec, plan: Plan, index: int) -> dict[str, float]:
    """Bytes one layer keeps for backward for one micro-batch, nothing recomputed, by part.

    Korthikanti et al. 2022 count 34*s*b*h bytes for a GPT layer without the attention-score terms
    (flash attention stores none): LayerNorm inputs 4sbh, QKV input 2sbh, Q,K,V 6sbh, projection input
    2sbh, fc1 input 2sbh, GELU in/out 16sbh, two dropout masks 2sbh. Parts before a TP split are
    divided by tp only with sequence parallelism; the rest always by tp. The parts are named after
    what Megatron-Core's ``--recompute-modules`` can drop (``recompute_dropped_parts``):

    * ``norm_in`` (the two norm inputs = residual stream), ``norm_out`` (the QKV and fc1 GEMM inputs:
      the norms' outputs), ``dropout`` masks;
    * ``qkv`` (q, k, v saved for flash attention; MLA: after the up projection), ``mla_latent``
      (MLA's compressed q/kv and the shared rope key), ``attn_out`` (flash output, the projection's
      input), ``softmax_stats`` (fp32 log-sum-exp);
    * dense ``mlp``: SwiGLU keeps fc1's output (2f wide) and fc2's input; GELU and squared ReLU
      (``relu2``, Nemotron: ``relu(x)**2`` saves its input - fc1's output - and fc2's input, as
      Transformer Engine's fused srelu does) keep f-wide input and output: (2 + gin) bytes per f;
    * MoE: ``router`` (fp32 logits and probabilities), ``shared`` experts, and per routed
      (token, expert) pair ``routed_in`` (the expert's fc1 input), ``routed_fc1_out`` (the
      activation's input), ``routed_act_out`` (fc2's input) and ``routed_probs`` (the fp32 routing
      probability the weighted activation saves; Megatron-Core 0.19 applies it there, so no expert
      output is kept for the unpermute).
    """
    h = model.hidden_size
    tokens = job.seq_len / plan.cp * plan.micro_batch
    sp_div = plan.tp if plan.sp else 1
    tp = plan.tp
    drop = 1 if model.dropout else 0
    # GEMM inputs saved for the weight gradient: bf16, or an fp8 copy under fp8/fp4 training
    # (Transformer Engine keeps the quantised input, not the bf16 one).
    gin = 1 if job.precision in ("fp8", "fp4") else 2
    parts: dict[str, float] = {}
    # Replicated over TP (split only by SP): two norm inputs, the attention and MLP GEMM inputs,
    # dropout masks.
    parts["norm_in"] = 2 * h * 2 / sp_div
    parts["norm_out"] = 2 * gin * h / sp_div
    parts["dropout"] = 2 * drop * h / sp_div
    if model.attention == "mla":
        qk = model.num_attention_heads * (model.qk_nope_head_dim + model.qk_rope_head_dim)
        v = model.num_attention_heads * model.v_head_dim
        attn_out = v  # q, k (2 x qk) and v are saved by flash attention
        parts["qkv"] = 2 * (2 * qk + v) / tp
        parts["mla_latent"] = (2 * 2 * (model.q_lora_rank + model.kv_lora_rank) + 2 * model.qk_rope_head_dim) / sp_div
    else:
        q = model.num_attention_heads * model.kv_channels
        kv = model.num_kv_heads * model.kv_channels
        attn_out = q
        parts["qkv"] = 2 * (q + 2 * kv) / tp
    # Flash attention saves its output (bf16); the projection's input is that tensor in bf16, or an
    # extra fp8 copy; plus the fp32 softmax statistics.
    parts["attn_out"] = (2 * attn_out + (gin * attn_out if gin == 1 else 0)) / tp
    parts["softmax_stats"] = 4 * model.num_attention_heads / tp
    fc1_out = 4 if model.mlp == "swiglu" else 2  # bytes per f of fc1's output (2f wide for SwiGLU)
    act_bytes_per_f = fc1_out + gin
    if model.layer_is_moe(index):
        k = model.moe_topk
        shared = model.shared_expert_ffn_hidden_size or model.num_shared_experts * model.moe_ffn_hidden_size
        parts["shared"] = act_bytes_per_f * shared / tp
        parts["router"] = 2 * 4 * model.num_experts / sp_div
        # Routed (alltoall dispatcher): each local token reaches k experts; per (token, expert) pair
        # the expert's fc1 input (gathered over expert-TP), its activation over moe_ffn/etp, and the
        # routing probability the weighted activation saves (fp32). Megatron-Core applies the
        # probabilities inside the expert activation (experts.py ``bias_act_func``: weighted SwiGLU),
        # so the unpermute after the combine is a plain scatter-add that keeps no expert output.
        parts["routed_in"] = k * gin * h * plan.etp / sp_div
        parts["routed_fc1_out"] = k * fc1_out * model.moe_ffn_hidden_size / sp_div
        parts["routed_act_out"] = k * gin * model.moe_ffn_hidden_size / sp_div
        parts["routed_probs"] = k * 4 / sp_div
    else:
        parts["mlp"] = act_bytes_per_f * model.ffn_hidden_size / tp
    return {name: tokens * value for name, value in parts.items()}


def layer_activation_bytes(model: ModelSpec, job: JobSpec, plan: Plan, index: int) -> float:
    """Bytes one layer keeps for backward for one micro-batch, nothing recomputed (the parts of
    ``layer_activation_parts`` summed)."""
    return sum(layer_activation_parts(model, job, plan, index).values())


RECOMPUTE_MODULE_PARTS: dict[str, tuple[str, ...]] = {
    "core_attn": ("softmax_stats",),
    "layernorm": ("norm_out",),
    "mlp": ("mlp",),
    "moe": ("router", "shared", "routed_in", "routed_fc1_out", "routed_act_out", "routed_probs"),
    "moe_act": ("routed_act_out",),
    "shared_experts": ("shared",),
    "mla_up_proj": ("qkv",),
}
"""What each of Megatron-Core's ``--recompute-modules`` stops keeping (transformer_config.py,
0.19.2). ``core_attn`` checkpoints the attention core: its inputs q, k, v stay (the checkpoint's
inputs) and its output stays (the projection saves it), so with flash attention only the softmax
statistics go - the s^2 scores it was designed for are not stored by flash attention at all.
``layernorm`` and ``moe_act`` are output-discarding checkpoints: the norms' outputs (the QKV/fc1
GEMM inputs) and the expert activation's output (fc2's input) are recomputed from the kept inputs.
``mlp``, ``moe`` and ``shared_experts`` checkpoint the whole (dense / MoE / shared-expert) MLP: only
its input stays, which is the norm output already counted in ``norm_out``. ``mla_up_proj`` drops the
up-projected q, k, v (recomputed from the kept latents, with RoPE)."""


@lru_cache(maxsize=256)
def recompute_dropped_parts(modules: tuple[str, ...]) -> frozenset[str]:
    """Activation parts not kept when ``modules`` are recomputed (Megatron's default: core_attn)."""
    return frozenset(p for m in (modules or ("core_attn",)) for p in RECOMPUTE_MODULE_PARTS[m])


def layer_kept_bytes(model: ModelSpec, job: JobSpec, plan: Plan, index: int, rt: "Runtime") -> float:
    """Bytes a layer keeps for backward under the plan's recompute (none or selective)."""
    return _kept_bytes(model, job, plan, index, rt, layer_activation_parts(model, job, plan, index))


def _kept_bytes(model: ModelSpec, job: JobSpec, plan: Plan, index: int, rt: "Runtime", parts: dict[str, float]) -> float:
    """``layer_kept_bytes`` from the layer's ``layer_activation_parts``."""
    if plan.recompute != "selective":
        return sum(parts.values())
    if plan.recompute_modules:
        dropped = recompute_dropped_parts(plan.recompute_modules)
        return sum(v for k, v in parts.items() if k not in dropped)
    if rt.selective_policy == "op_every_second_mm" and model.attention != "mla" and not model.layer_is_moe(index):
        return torchtitan_op_sac_bytes(model, job, plan)
    return rt.selective_keep_fraction * sum(parts.values())


def torchtitan_op_sac_bytes(model: ModelSpec, job: JobSpec, plan: Plan) -> float:
    """Bytes a dense layer keeps under torchtitan's op-level selective activation checkpointing.

    The policy (torchtitan ``activation_checkpoint.py``, ``_get_custom_policy``) saves the outputs of
    ``aten.mm`` except every second one, of the SDPA kernels and of TP's reduce-scatters, and
    recomputes everything else from the checkpointed layer input. The layer's matmuls run in the
    order wq, wk, wv, wo, w1, w3, w2 (gelu/relu2: fc1, fc2), so the odd ones are kept: wq, wv, w1, w2
    (bf16 outputs, also under Float8 training). Plus the layer input, the attention output and its
    fp32 log-sum-exp. Row-parallel outputs under TP are the unreduced (full-width) matmul output plus
    the reduce-scattered shard.
    """
    h = model.hidden_size
    tp = plan.tp
    sp_div = tp if plan.sp else 1
    q = model.num_attention_heads * model.kv_channels
    kv = model.num_kv_heads * model.kv_channels
    f = model.ffn_hidden_size
    row_out = h + (h / tp if tp > 1 else 0.0)  # width of a row-parallel output kept per token
    # (width, column-parallel?) of each matmul output, in execution order
    mms = [(q / tp, True), (kv / tp, True), (kv / tp, True), (row_out, False)]
    mms += ([(f / tp, True), (f / tp, True), (row_out, False)] if model.mlp == "swiglu"
            else [(f / tp, True), (row_out, False)])
    kept_mm = sum(width for n, (width, _) in enumerate(mms, start=1) if n % 2 == 1)
    per_token = 2 * h / sp_div + 2 * kept_mm + 2 * q / tp + 4 * model.num_attention_heads / tp
    return job.seq_len / plan.cp * plan.micro_batch * per_token


def layer_input_bytes(model: ModelSpec, job: JobSpec, plan: Plan) -> float:
    """What full recompute keeps per layer: its input (bf16), split by SP."""
    tokens = job.seq_len / plan.cp * plan.micro_batch
    return tokens * 2 * model.hidden_size / (plan.tp if plan.sp else 1)


def inflight_chunks(plan: Plan, stage: int, num_microbatches: int) -> float:
    """Micro-batch x model-chunk activations held at once by ``stage`` (in units of whole stages),
    all chunks weighing the same: Megatron's schedule replayed (``configurator/inflight.py``).

    1F1B: stage s warms up with pp - s - 1 forwards, then holds one more: min(pp - s, m).
    Interleaved: the warm-up is (pp - s - 1) * 2 + (vpp - 1) * g chunks (+1), each chunk 1/vpp of the
    stage (g = microbatch_group_size_per_vp_stage = pp by default); for the first stage that is
    pp * (1 + (pp - 1) / (pp * vpp)) stages' worth.
    """
    held, _ = peak_inflight(plan.pp, plan.vpp, num_microbatches, stage)
    return held / plan.vpp


def chunk_layer_indices(model: ModelSpec, plan: Plan, stage: int) -> list[list[int]]:
    """Global layer indices of each model chunk of pipeline rank ``stage`` (chunk c = virtual stage
    c * pp + stage)."""
    return [list(r) for r in _virtual_chunks(model.num_layers, plan.pp, plan.vpp, plan.pipeline_layers)[stage]]


def _per_kind(model: ModelSpec, job: JobSpec, plan: Plan, rt: Runtime, memo: dict | None = None,
              first: tuple[tuple[int, bool], ...] | None = None) -> dict[bool, tuple[float, float]]:
    """(everything, what the plan's recompute keeps) per layer kind (MoE or dense), one micro-batch. ``memo``:
    a search's ``ACTIVATION_MEMO``, which keeps each kind's ``layer_activation_parts`` for the recompute forms
    of a structure (they depend only on the fields in its key). ``first``: ``_first_of_each_kind(model)``, if the
    caller has it."""
    out: dict[bool, tuple[float, float]] = {}
    for i, kind in first or _first_of_each_kind(model):
        if kind not in out:
            key = ("layer_parts", plan.tp, plan.sp, plan.cp, plan.micro_batch, plan.etp, kind)
            parts = memo.get(key) if memo is not None else None
            if parts is None:
                parts = layer_activation_parts(model, job, plan, i)
                if memo is not None:
                    memo[key] = parts
            # (layer_activation_bytes and layer_kept_bytes, from one computation of the parts)
            out[kind] = (sum(parts.values()), _kept_bytes(model, job, plan, i, rt, parts))
    return out


@lru_cache(maxsize=64)
def _first_of_each_kind(model: ModelSpec) -> tuple[tuple[int, bool], ...]:
    """(index, is MoE) of the first layer of each kind, in layer order: the layers ``_per_kind`` works out (it
    asked every layer, then skipped all but the first of each kind)."""
    first: dict[bool, int] = {}
    for i, kind in enumerate(layer_moe_flags(model)):
        first.setdefault(kind, i)
    return tuple((i, kind) for kind, i in first.items())


def _chunk_activations(model: ModelSpec, job: JobSpec, plan: Plan, kinds: dict[bool, tuple[float, float]],
                       layers: list[int], flags: tuple[bool, ...] | None = None) -> tuple[float, float]:
    """(bytes one micro-batch leaves on this chunk until its backward, the largest single layer's
    full activations - the working set of a recomputed layer). ``flags``: ``layer_moe_flags(model)``, if
    the caller has it (its cache hashes the whole model spec on every call)."""
    if not layers:
        return 0.0, 0.0
    flags = flags or layer_moe_flags(model)
    if plan.recompute == "full":
        # Megatron's --recompute-method block: the first recompute_num_layers layers of each chunk
        # keep only their input; the others keep everything (0 = all layers recomputed).
        recomputed = plan.recompute_num_layers or len(layers)
        kept_input = layer_input_bytes(model, job, plan)
        per_chunk = sum(kept_input if n < recomputed else kinds[flags[i]][0] for n, i in enumerate(layers))
        return per_chunk, max(kinds[flags[i]][0] for i in layers[:recomputed])
    return sum(kinds[flags[i]][1] for i in layers), 0.0


def _stage_activations(model: ModelSpec, job: JobSpec, plan: Plan, rt: Runtime, stage: int,
                       num_microbatches: int, kinds: dict[bool, tuple[float, float]] | None = None,
                       flags: tuple[bool, ...] | None = None,
                       chunk_memo: dict[tuple[bool, ...], tuple[float, float]] | None = None) -> tuple[float, float]:
    """(activation bytes of the stage's rank at its peak, micro-batches in flight in stage units). ``flags``:
    ``layer_moe_flags(model)``, if the caller has it. ``chunk_memo``: ``_chunk_activations`` of this plan by the
    chunk's run of layer kinds (a chunk's sum depends on its layers only through their kinds, in order, so the
    chunks of one plan with the same run share it - the same floats). The definition one stage at a time:
    ``_stage_activation_table`` works out every stage of a plan with the same operations."""
    kinds = kinds or _per_kind(model, job, plan, rt)
    chunks = _virtual_chunks(model.num_layers, plan.pp, plan.vpp, plan.pipeline_layers)[stage]
    tokens = job.seq_len / plan.cp * plan.micro_batch
    boundary = rt.pipe_buffers * layer_input_bytes(model, job, plan)
    per_chunk = []
    working = 0.0
    flags = flags or layer_moe_flags(model)
    for layers in chunks:  # (ranges of layer indices: ``_chunk_activations`` reads them as the lists they were)
        if chunk_memo is None:
            kept, work = _chunk_activations(model, job, plan, kinds, layers, flags)
        else:
            run = flags[layers.start:layers.stop]
            hit = chunk_memo.get(run)
            if hit is None:
                hit = chunk_memo[run] = _chunk_activations(model, job, plan, kinds, layers, flags)
            kept, work = hit
        per_chunk.append(kept + boundary)
        working = max(working, work)
    held, counts = peak_inflight(plan.pp, plan.vpp, num_microbatches, stage, tuple(per_chunk))
    act = held + working
    if stage == 0:
        act += sum(counts) / plan.vpp * tokens * 8  # token ids and position ids (int64) per micro-batch
    if stage == plan.pp - 1:
        vocab = model.padded_vocab_size(plan.tp)
        act += tokens * (2 * model.hidden_size / (plan.tp if plan.sp else 1) + rt.logit_bytes * vocab / plan.tp)
        act += mtp_activation_bytes(model, job, plan, rt, kinds)
    return act, sum(counts) / plan.vpp


def mtp_activation_bytes(model: ModelSpec, job: JobSpec, plan: Plan, rt: Runtime,
                         kinds: dict[bool, tuple[float, float]]) -> float:
    """Activations the multi-token-prediction block keeps on the last stage for one micro-batch (the
    last virtual stage runs each micro-batch's backward right after its forward, so one is held, like
    the main head's logits): per module a layer like the model's last under the plan's recompute (full
    recompute keeps its input), the eh_proj input (the concatenated normed [h; e], bf16, 2h wide) and
    the two norms' inputs (2 x h, bf16), and its own loss's logits (``logit_bytes`` per vocabulary entry,
    as the main head)."""
    if not model.mtp_layers:
        return 0.0
    tokens = job.seq_len / plan.cp * plan.micro_batch
    sp_div = plan.tp if plan.sp else 1
    h = model.hidden_size
    layer = (layer_input_bytes(model, job, plan) if plan.recompute == "full"
             else kinds[model.layer_is_moe(model.num_layers - 1)][1])
    own = tokens * (2 * 2 * h * 2 / sp_div + rt.logit_bytes * model.padded_vocab_size(plan.tp) / plan.tp)
    return model.mtp_layers * (layer + own)


# ----- the estimator -----------------------------------------------------------------------------
ACTIVATION_MEMO: ContextVar[dict[tuple, Any] | None] = ContextVar("configurator_activation_memo", default=None)
"""Set by a search (one model, job and cluster) for its duration: the parts of ``estimate_memory`` that the
options of one structure share (``memory_parts``). Each stage's activation bytes under the plan fields they
depend on — not the sharding or the offload fraction, which the search varies most, nor the MoE dispatcher (its
buffers are not activations; the search resolves a structure again with flex where they do not fit), nor the
expert-parallel degree: a layer keeps what its rank's tokens route (``k`` pairs per token, over expert-TP),
whatever the number of experts it holds, so structures that differ only in EP (up to 7 of DeepSeek-V3's) share
them (DeepSeek-V3 on 64 H800: 82,497 stage computations -> 35,886). One key per plan, not per stage: hashing the
fields is a good part of a memo lookup. ``tests/test_search_speed.py`` checks that the activations do not depend
on EP. Under ``_SHARED``, a dict of its own: each stage's weights, grads and optimizer states per sharding
(``_STATE_FIELDS``), each layer kind's activation parts (``_per_kind``) and the partitions' parameter tables."""
ACTIVATION_MEMO_LIMIT = 4096
"""Plans ``ACTIVATION_MEMO`` holds before it starts a new generation (``_OLDER``; ``search.resolve.MEMO_LIMIT``
says why it is bounded)."""
_ACTIVATION_FIELDS = attrgetter(*(f for f in PLAN_FIELDS if f not in ("sharding", "shard_group", "offload", "ep",
                                                                       "ep_dispatcher", "cuda_graphs")))


def estimate_memory(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan, *,
                    runtime: str | Runtime = "megatron") -> MemoryReport:
    """Peak memory of every pipeline stage's rank. Pure; assumes ``plan`` is legal."""
    return memory_parts(model, cluster, job, plan, runtime=runtime).report(plan.offload)


class MemoryParts:
    """A plan's memory before the optimizer offload splits it: per pipeline rank, the parts ``estimate_memory``
    adds up. The offload fraction moves only a share of the optimizer states (``_stage_memory``), so one
    ``MemoryParts`` gives the report, or only the totals, of every fraction of the plan. The search checks
    thousands of plans for fit (``search/resolve.py``) and keeps a report only for the few it offers:
    ``totals`` works the totals out with the same operations in the same order as ``StageMemory.total_bytes``
    (equal to the last bit; ``tests/test_resolve_parts.py`` checks it). Read-only by convention (a plain
    class: the search builds one per estimate)."""

    __slots__ = ("states", "activations", "buffer_bytes", "context_bytes", "rt", "capacity_bytes",
                 "host_capacity_bytes", "gpus_per_node", "buffers", "state_sums", "activation_bytes", "graph_bytes")

    def __init__(self, *, states: tuple[tuple[int, int, float, float, float], ...],
                 activations: tuple[tuple[float, float], ...], buffer_bytes: tuple[float, ...], context_bytes: float,
                 rt: Runtime, capacity_bytes: float, host_capacity_bytes: float, gpus_per_node: int,
                 buffers: FlexBuffers | None = None, state_sums: StateSums | None = None,
                 activation_bytes: tuple[float, ...] | None = None,
                 graph_bytes: tuple[float, ...] | None = None) -> None:
        self.states = states  # per pipeline rank: (layers, parameters, weights, grads, whole optimizer states)
        self.activations = activations  # per pipeline rank: (activation bytes, micro-batches in flight)
        self.buffer_bytes = buffer_bytes  # per pipeline rank: the flex dispatcher's buffers (0 without them)
        self.context_bytes, self.rt = context_bytes, rt
        self.capacity_bytes, self.host_capacity_bytes = capacity_bytes, host_capacity_bytes
        self.gpus_per_node = gpus_per_node  # ranks of one node (``_report``: at worst all of the busiest stage)
        self.buffers = buffers
        # ``totals``' sums of ``states`` and the activation bytes of ``activations`` (worked out there if not given:
        # ``search/resolve.py``'s ``StructureMemory`` gives them, once per sharding and per recompute form)
        self.state_sums, self.activation_bytes = state_sums, activation_bytes
        self.graph_bytes = graph_bytes  # per pipeline rank: the plan's CUDA graphs' pool (None without them)

    def report(self, offload: float) -> MemoryReport:
        """``estimate_memory`` of the plan with ``offload`` of its optimizer states on the host."""
        ctx, rt = self.context_bytes, self.rt
        stages = tuple(_stage_memory(s, n, p, w, g, o, a, inflight, ctx, offload, rt, ep)
                       for s, ((n, p, w, g, o), (a, inflight), ep)
                       in enumerate(zip(self.states, self.activations, self.buffer_bytes)))
        if self.graph_bytes is not None:
            stages = tuple(replace(st, cuda_graph_bytes=gb) for st, gb in zip(stages, self.graph_bytes))
        return MemoryReport(stages=stages, capacity_bytes=self.capacity_bytes,
                            host_capacity_bytes=self.host_capacity_bytes,
                            host_peak_bytes=self.gpus_per_node * max(st.host_optimizer_bytes for st in stages),
                            runtime=rt.name, flex_buffers=self.buffers)

    def totals(self, offload: float) -> MemoryTotals:
        """``report(offload)``'s per-stage ``total_bytes`` and host peak, without building it."""
        frag, ctx = self.rt.fragmentation, self.context_bytes
        sums = self.state_sums
        if sums is None:
            sums = self.state_sums = state_sums(self.states)
        acts = self.activation_bytes
        if acts is None:
            acts = self.activation_bytes = activation_bytes(self.activations)
        if offload == 0.0 and math.copysign(1.0, offload) > 0:
            # No offload (most estimates): host = o * 0.0 = 0.0 and o - 0.0 = o for the finite, non-negative states,
            # so the same floats in one pass (StageMemory.total_bytes: (allocated + fragmentation) + context +
            # buffers, left to right; allocated = w + g + o + a, whose first two additions ``StateSums`` keeps).
            totals = tuple([x + x * frag + ctx + ep for x, ep in zip(map(add, sums.kept, acts), self.buffer_bytes)])
            if self.graph_bytes is not None:  # (StageMemory.total_bytes: ... + buffers + graphs)
                totals = tuple(map(add, totals, self.graph_bytes))
            return MemoryTotals(self, offload, totals, max(totals), self.gpus_per_node * 0.0)
        totals_list = []
        host_max = -math.inf
        for wg, o, a, ep in zip(sums.weights_grads, sums.optimizer, acts, self.buffer_bytes):
            host = o * offload  # as _stage_memory
            allocated = wg + (o - host) + a  # (w + g + (o - host) + a, left to right)
            # StageMemory.total_bytes: (allocated + fragmentation) + context + buffers, left to right
            totals_list.append(allocated + allocated * frag + ctx + ep)
            if host > host_max:
                host_max = host
        if self.graph_bytes is not None:
            totals_list = list(map(add, totals_list, self.graph_bytes))
        return MemoryTotals(self, offload, tuple(totals_list), max(totals_list), self.gpus_per_node * host_max)


class StateSums(NamedTuple):
    """Per pipeline rank, the sums of a sharding's states that ``MemoryParts.totals`` starts from, worked out once
    per sharding (``state_sums``): the same additions in the same order as ``w + g + o + a`` and
    ``w + g + (o - host) + a``, so the same floats."""

    weights_grads: tuple[float, ...]
    """w + g."""
    optimizer: tuple[float, ...]
    """o, the whole optimizer states."""
    kept: tuple[float, ...]
    """w + g + o: everything but the activations, without offload."""


def state_sums(states: tuple[tuple[int, int, float, float, float], ...]) -> StateSums:
    """``StateSums`` of ``MemoryParts.states``."""
    weights_grads = tuple([w + g for _n, _p, w, g, _o in states])
    optimizer = tuple([o for *_, o in states])
    return StateSums(weights_grads, optimizer, tuple(map(add, weights_grads, optimizer)))


def activation_bytes(activations: tuple[tuple[float, float], ...]) -> tuple[float, ...]:
    """Per pipeline rank, the activation bytes of ``MemoryParts.activations``."""
    return tuple([a for a, _inflight in activations])


class MemoryTotals:
    """What a fit check needs of a ``MemoryReport`` (``MemoryParts.totals``): each stage's device total, the
    peak and the host peak, the same floats; ``report()`` builds the full report when the plan is kept."""

    __slots__ = ("parts", "offload", "stage_totals", "peak_bytes", "host_peak_bytes", "_report")

    def __init__(self, parts: MemoryParts, offload: float, stage_totals: tuple[float, ...], peak_bytes: float,
                 host_peak_bytes: float) -> None:
        self.parts, self.offload, self.stage_totals = parts, offload, stage_totals
        self.peak_bytes, self.host_peak_bytes = peak_bytes, host_peak_bytes
        self._report: MemoryReport | None = None

    @property
    def capacity_bytes(self) -> float:
        return self.parts.capacity_bytes

    @property
    def host_capacity_bytes(self) -> float:
        return self.parts.host_capacity_bytes

    @property
    def fits_device(self) -> bool:
        return self.peak_bytes <= self.parts.capacity_bytes

    @property
    def fits_host(self) -> bool:
        return self.host_peak_bytes <= self.parts.host_capacity_bytes

    @property
    def fits(self) -> bool:
        return self.fits_device and self.fits_host

    def report(self) -> MemoryReport:
        """The full report (built once; the flex buffers are the parts' own)."""
        if self._report is None:
            self._report = self.parts.report(self.offload)
        return self._report


def memory_parts(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan, *,
                 runtime: str | Runtime = "megatron") -> MemoryParts:
    """``estimate_memory``'s parts of every pipeline rank, before ``plan.offload`` moves any optimizer states
    (which it does not read). Within a search (``ACTIVATION_MEMO`` set) the parts that the options of one
    structure share are worked out once: the weights, grads and optimizer states per sharding
    (``_stage_states``), the activations per recompute form (``_stage_activation_table``)."""
    rt = runtime if isinstance(runtime, Runtime) else load_runtime(runtime)
    m = max(1, plan.num_microbatches(job))
    memo = ACTIVATION_MEMO.get()
    if memo is None:
        states = _stage_states(model, plan, rt)
        acts = _stage_activation_table(model, job, plan, rt, m)
        context, capacity, host_capacity = _device_constants(cluster)
    else:
        shared = _shared_memo(memo)
        acts = _memo_activations(memo, shared, model, job, plan, rt, m)
        states = _memo_states(shared, model, plan, rt)
        device = shared.get(_DEVICE)
        if device is None or device[0] is not cluster:  # (one cluster per search; checked, not assumed)
            device = shared[_DEVICE] = (cluster, *_device_constants(cluster), {})
        _, context, capacity, host_capacity, _flex = device
    buffers, stage_buffer_bytes = _stage_flex_buffers(model, cluster, job, plan)
    return MemoryParts(states=states, activations=acts, buffer_bytes=stage_buffer_bytes, context_bytes=context, rt=rt,
                       capacity_bytes=capacity, host_capacity_bytes=host_capacity,
                       gpus_per_node=min(cluster.gpus_per_node, plan.world_size), buffers=buffers,
                       graph_bytes=cuda_graph_bytes(acts) if plan.cuda_graphs else None)


def cuda_graph_bytes(activations: tuple[tuple[float, float], ...]) -> tuple[float, ...]:
    """Per pipeline rank, what the plan's own CUDA graphs (``Plan.cuda_graphs``) hold beyond eager: a share
    (profiles/memory.json ``cuda_graph_activation_share``, NeMo's measured ~20%) of the rank's activation bytes at
    its peak (``MemoryParts.activations``). A captured graph keeps its forward's temporaries and its static input
    and output buffers in a pool of its own, sized by the micro-batches in flight like the activations, which
    eager code cannot reuse."""
    share = memory_constants()["cuda_graph_activation_share"]["value"]
    return tuple([a * share for a, _inflight in activations])


def stage_activations(model: ModelSpec, job: JobSpec, plan: Plan, rt: Runtime) -> tuple[tuple[float, float], ...]:
    """``memory_parts(...).activations`` alone (through ``ACTIVATION_MEMO`` in a search), for a caller that has the
    other parts (``search/resolve.py``'s ``StructureMemory``: a structure's next recompute form)."""
    m = max(1, plan.num_microbatches(job))
    memo = ACTIVATION_MEMO.get()
    if memo is None:
        return _stage_activation_table(model, job, plan, rt, m)
    return _memo_activations(memo, _shared_memo(memo), model, job, plan, rt, m)


def stage_states(model: ModelSpec, plan: Plan, rt: Runtime) -> tuple[tuple[int, int, float, float, float], ...]:
    """``memory_parts(...).states`` alone (through ``ACTIVATION_MEMO`` in a search), for a caller that has the other
    parts (``StructureMemory``: a structure's next sharding)."""
    memo = ACTIVATION_MEMO.get()
    if memo is None:
        return _stage_states(model, plan, rt)
    return _memo_states(_shared_memo(memo), model, plan, rt)


def _shared_memo(memo: dict) -> dict:
    """``memo``'s ``_SHARED`` dict (a dict of its own: a structure's shardings must not empty the activations),
    emptied at ``ACTIVATION_MEMO_LIMIT``."""
    shared = memo.get(_SHARED)
    if shared is None or len(shared) >= ACTIVATION_MEMO_LIMIT:
        shared = memo[_SHARED] = {}
    return shared


def _memo_activations(memo: dict, shared: dict, model: ModelSpec, job: JobSpec, plan: Plan, rt: Runtime,
                      m: int) -> tuple[tuple[float, float], ...]:
    """``_stage_activation_table`` of ``plan`` with ``m`` micro-batches through ``memo`` (a search's
    ``ACTIVATION_MEMO``, by ``_ACTIVATION_FIELDS``, ``m`` and the runtime; its last generation in ``_OLDER``)."""
    key = (_ACTIVATION_FIELDS(plan), m, rt.name)
    acts = memo.get(key)
    if acts is None:
        older = memo.get(_OLDER)
        acts = older.pop(key, None) if older is not None else None
        if len(memo) >= ACTIVATION_MEMO_LIMIT:
            # bounded, keeping the last generation: a structure's forms are asked again when it reaches the
            # front of the search again, often thousands of tables later
            memo[_OLDER] = {k: v for k, v in memo.items() if k != _SHARED and k != _OLDER}
            older = memo[_OLDER]
            memo.clear()
            memo[_SHARED], memo[_OLDER] = shared, older
        if acts is None:
            acts = _stage_activation_table(model, job, plan, rt, m, shared)
        memo[key] = acts
    return acts


def _memo_states(shared: dict, model: ModelSpec, plan: Plan,
                 rt: Runtime) -> tuple[tuple[int, int, float, float, float], ...]:
    """``_stage_states`` of ``plan`` through ``shared`` (``ACTIVATION_MEMO``'s ``_SHARED``, by ``_STATE_FIELDS``
    and the runtime)."""
    key = (_STATE_FIELDS(plan), rt.name)
    states = shared.get(key)
    if states is None:
        states = shared[key] = _stage_states(model, plan, rt, shared)
    return states


def _device_constants(cluster: ClusterSpec) -> tuple[float, float, float]:
    """(CUDA context + NCCL bytes, device capacity, host capacity the offload may use) of ``cluster``'s GPUs, as
    ``memory_parts`` reports them (a measured cluster's capacities are minima over its nodes: worked out once per
    search, ``_DEVICE``)."""
    overhead = load_overhead(cluster.gpu.family)
    return (overhead.cuda_context_bytes + overhead.nccl_bytes, float(cluster.gpu_memory_bytes),
            float(cluster.host_memory_bytes) * HOST_USABLE_FRACTION)


def memory_floor_bytes(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan, *,
                       runtime: str | Runtime = "megatron") -> float:
    """A lower bound of ``estimate_memory(...).peak_bytes`` for ``plan`` under any recompute form: each stage's
    total with no activations (weights, grads, the optimizer states ``plan.offload`` leaves, their fragmentation,
    context and buffers). Every part is non-negative and added in ``totals``' order, and rounding is monotone, so
    no recompute form's peak is below it: where it exceeds the GPU, none fits, without working out any
    activations (``search/resolve.py``'s ``needs_full_recompute``; DeepSeek-V3 on 64 H800: 92% of the
    shardings it checks)."""
    rt = runtime if isinstance(runtime, Runtime) else load_runtime(runtime)
    overhead = load_overhead(cluster.gpu.family)
    memo = ACTIVATION_MEMO.get()
    shared = memo.get(_SHARED) if memo is not None else None
    key = (_STATE_FIELDS(plan), rt.name)
    states = shared.get(key) if shared is not None else None
    if states is None:
        states = _stage_states(model, plan, rt, shared)
        if shared is not None:
            shared[key] = states
    _, stage_buffer_bytes = _stage_flex_buffers(model, cluster, job, plan)
    frag, ctx, offload = rt.fragmentation, overhead.cuda_context_bytes + overhead.nccl_bytes, plan.offload
    floor = 0.0
    for (_n, _p, w, g, o), ep in zip(states, stage_buffer_bytes):
        allocated = w + g + (o - o * offload)
        floor = max(floor, allocated + allocated * frag + ctx + ep)
    return floor


_SHARED = "shared"
"""``ACTIVATION_MEMO``'s entry holding the other parts (``memory_parts``), bounded on its own."""
_OLDER = "older"
"""``ACTIVATION_MEMO``'s entry holding the tables it held when it last reached ``ACTIVATION_MEMO_LIMIT``: a table
asked again is taken from there (and kept again), so the memo holds at most twice the limit and forgets only what
two generations did not ask for (Mixtral-8x22B/64 H100 at global batch 2,048: 7,994 tables worked out -> 6,011,
of 6,000 distinct; emptied at the limit, 1,994 were worked out again)."""
_DEVICE = "device"
"""``_SHARED``'s entry holding the cluster, its ``_device_constants`` and its flex buffers per plan (by
``_FLEX_FIELDS``)."""
_FLEX_FIELDS = attrgetter("ep_dispatcher", "ep", "etp", "tp", "sp", "cp", "micro_batch", "pp", "vpp", "pipeline_layers")
"""The plan fields ``_stage_flex_buffers`` reads (``plan_flex_buffers`` and ``_stages_with_moe``)."""
_STATE_FIELDS = attrgetter("tp", "pp", "vpp", "ep", "etp", "pipeline_layers", "dp", "cp", "sharding", "shard_group")
"""The plan fields ``_stage_states`` reads (its key in ``ACTIVATION_MEMO``: a structure's shardings)."""


def _stage_states(model: ModelSpec, plan: Plan, rt: Runtime,
                  memo: dict | None = None) -> tuple[tuple[int, int, float, float, float], ...]:
    """Per pipeline rank: (layers, parameters, weights, grads, whole optimizer states before any offload),
    bytes, under the plan's sharding. ``memo``: a search's ``ACTIVATION_MEMO``, which also holds the
    partition's parameter table (one model per search; the table's own cache hashes the model spec)."""
    dense_group = plan.dp * plan.cp
    expert_group = plan.expert_dp
    if plan.sharding == "hsdp":
        # HSDP: ZeRO-3 inside each shard group of ``shard_group`` ranks, replicated across groups; the
        # experts' data-parallel ranks split the same way (their shard group is the part of it they span).
        dense_group = math.gcd(dense_group, plan.shard_group)
        expert_group = math.gcd(expert_group, plan.shard_group)
    zero3 = plan.sharding in ("zero3", "hsdp")
    partition = (plan.tp, plan.pp, plan.vpp, plan.ep, plan.etp, plan.pipeline_layers)
    table = memo.get(partition) if memo is not None else None
    if table is None:
        table = _stage_param_table(model, *partition)
        if memo is not None:
            memo[partition] = table
    out = []
    sharded_grad = plan.sharding in ("zero2", "zero3", "hsdp")
    grad_b = rt.sharded_grad_bytes if sharded_grad and rt.sharded_grad_bytes else rt.grad_bytes
    for s, (num_layers, dense, expert, biggest_layer) in enumerate(table):
        weights = grads = optim = 0.0
        for params, group in ((dense, dense_group), (expert, expert_group)):
            w_b, g_b, o_b = rt.weight_bytes, grad_b, rt.optimizer_bytes
            if plan.sharding in ("zero1", "distopt", "zero2", "zero3", "hsdp"):
                o_b /= group
            if sharded_grad:
                g_b /= group
            if zero3:
                w_b = rt.zero3_param_bytes / group
            elif plan.sharding == "zero2":
                w_b += rt.zero2_param_bytes / group
            weights += params * w_b
            grads += params * g_b
            optim += params * o_b
        if zero3:
            # Unsharded working set: two gathered layers (current + prefetch) in bf16 and one layer's
            # unsharded gradient before its reduce-scatter (fp32; the runtime's sharded-gradient dtype where it
            # has one); the embedding/head gathered likewise.
            # A gathered layer holds its non-expert part over TP and only this rank's experts (EP x ETP).
            biggest = biggest_layer
            if s in (0, plan.pp - 1):
                biggest = max(biggest, model.padded_vocab_size(plan.tp) * model.hidden_size / plan.tp)
            weights += 2 * 2 * biggest
            grads += (rt.sharded_grad_bytes or 4) * biggest
            if plan.pp > 1 and rt.fsdp_pp_unsharded:
                weights += 2 * (dense + expert)
                grads += rt.pp_unsharded_grad_bytes * (dense + expert)
        elif plan.sharding == "zero2" and plan.pp > 1 and rt.fsdp_pp_unsharded:
            # (ZeRO-2's bf16 parameters are whole already; the gradients accumulate unsharded over the micro-batches)
            grads += rt.pp_unsharded_grad_bytes * (dense + expert)
        if plan.sharding in ("zero1", "zero2"):
            grads += rt.grad_bucket_bytes
        out.append((num_layers, int(dense + expert), weights, grads, optim))
    return tuple(out)


def _stage_activation_table(model: ModelSpec, job: JobSpec, plan: Plan, rt: Runtime, m: int,
                            memo: dict | None = None) -> tuple[tuple[float, float], ...]:
    """Per pipeline rank, ``_stage_activations``: (activation bytes at its peak, micro-batches in flight).

    The same operations on the same values as ``_stage_activations`` stage by stage (so the same floats;
    ``tests/test_memory_speed_caches.py`` compares them), with what does not depend on the recompute form taken
    from the plan's ``_StageLayout`` (``memo``: a search's, where the recompute forms of a structure share it): a
    chunk's sum depends on its layers only through their run of kinds, so it is worked out once per distinct run,
    and a rank whose chunks all have one run weighs them the same (``peak_inflight``'s count times the weight). A
    search works out about 6,000 tables for Mixtral-8x22B on 64 H100, about 9 recompute forms of each layout."""
    layout = _stage_layout(model, job, plan, rt, m, memo)
    kinds = _per_kind(model, job, plan, rt, memo, layout.first_of_kind)
    flags, boundary, vpp = layout.flags, layout.boundary, plan.vpp
    sums = [_chunk_activations(model, job, plan, kinds, layers, flags) for layers in layout.runs]
    out = []
    for s, (ids, held_equal, inflight_equal, ids_bytes) in enumerate(layout.stages):
        if len(ids) == 1:  # (every chunk of the rank has the same run: ``max`` over equal values is the first)
            kept, work = sums[ids[0]]
            act = held_equal * (kept + boundary) + max(0.0, work)
            inflight, extra = inflight_equal, ids_bytes
        else:
            per_chunk = []
            working = 0.0
            for i in ids:
                kept, work = sums[i]
                per_chunk.append(kept + boundary)
                working = max(working, work)
            first = per_chunk[0]
            if all(w == first for w in per_chunk):  # (``peak_inflight``: the count does not depend on the weight)
                act = held_equal * first + working
                inflight, extra = inflight_equal, ids_bytes
            else:
                held, counts = weighted_peak(layout.count_sets[s], tuple(per_chunk))
                act = held + working
                inflight = sum(counts) / vpp
                extra = inflight * layout.tokens * 8
        if s == 0:
            act += extra  # token ids and position ids (int64) per micro-batch
        if s == plan.pp - 1:
            act += layout.head
            act += mtp_activation_bytes(model, job, plan, rt, kinds)
        out.append((act, inflight))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _StageLayout:
    """What ``_stage_activation_table`` needs of a plan besides its recompute form: the fields of
    ``_LAYOUT_FIELDS``, the micro-batches and the runtime, for one model and job (a search's)."""

    flags: tuple[bool, ...]
    """``layer_moe_flags(model)`` (its cache hashes the whole model spec on every call)."""
    first_of_kind: tuple[tuple[int, bool], ...]
    """``_first_of_each_kind(model)``, for ``_per_kind``."""
    tokens: float
    boundary: float
    """The pipeline's send/receive buffers held per chunk and micro-batch (``_stage_activations``)."""
    head: float
    """The last stage's output layer activations (hidden states and logits) per micro-batch."""
    runs: tuple[range, ...]
    """The layers of the first chunk with each distinct run of layer kinds, in the order they first appear."""
    stages: tuple[tuple[tuple[int, ...], int, float, float], ...]
    """Per pipeline rank: its chunks' runs (indices into ``runs``, one per chunk; a single index where every chunk
    has that run), and for when its chunks weigh the same (always under 1F1B): the micro-batch-chunks held at the
    peak, the micro-batches in flight and the first stage's token and position ids at those counts
    (``peak_inflight``)."""
    count_sets: tuple[CountTable, ...]
    """Per pipeline rank (interleaved schedules only; empty under 1F1B): its ``count_table``, for ``weighted_peak``
    where its chunks differ (``peak_inflight``'s own: the same floats)."""


_LAYOUT = "stage_layout"
"""Key prefix of ``_StageLayout``s in ``ACTIVATION_MEMO``'s ``_SHARED`` dict."""
_LAYOUT_FIELDS = attrgetter("tp", "sp", "cp", "micro_batch", "pp", "vpp", "pipeline_layers")
"""The plan fields ``_stage_layout`` reads (its key, with the micro-batches and the runtime)."""


def _stage_layout(model: ModelSpec, job: JobSpec, plan: Plan, rt: Runtime, m: int,
                  memo: dict | None = None) -> _StageLayout:
    """``plan``'s ``_StageLayout`` with ``m`` micro-batches: from ``memo`` (a search's, keyed by ``_LAYOUT_FIELDS``,
    ``m`` and the runtime) or worked out with ``_stage_activations``' operations."""
    key = (_LAYOUT, _LAYOUT_FIELDS(plan), m, rt.name)
    hit = memo.get(key) if memo is not None else None
    if hit is not None:
        return hit
    pp, vpp = plan.pp, plan.vpp
    flags = layer_moe_flags(model)
    tokens = job.seq_len / plan.cp * plan.micro_batch
    vocab = model.padded_vocab_size(plan.tp)
    run_ids: dict[tuple[bool, ...], int] = {}
    runs: list[range] = []
    stages = []
    count_sets = []
    for s, chunks in enumerate(_virtual_chunks(model.num_layers, pp, vpp, plan.pipeline_layers)):
        ids = []
        for r in chunks:
            run = flags[r.start:r.stop]
            if run not in run_ids:
                run_ids[run] = len(runs)
                runs.append(r)
            ids.append(run_ids[run])
        held, counts = equal_weight_peak(pp, vpp, m, s)
        if vpp > 1:
            count_sets.append(count_table(pp, vpp, m, s))
        inflight = sum(counts) / vpp
        stages.append((tuple(ids) if len(set(ids)) > 1 else (ids[0],), held, inflight, inflight * tokens * 8))
    hit = _StageLayout(flags=flags, first_of_kind=_first_of_each_kind(model), tokens=tokens,
                       boundary=rt.pipe_buffers * layer_input_bytes(model, job, plan),
                       head=tokens * (2 * model.hidden_size / (plan.tp if plan.sp else 1)
                                      + rt.logit_bytes * vocab / plan.tp),
                       runs=tuple(runs), stages=tuple(stages), count_sets=tuple(count_sets))
    if memo is not None:
        memo[key] = hit
    return hit


def plan_flex_buffers(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan) -> FlexBuffers | None:
    """One EP rank's DeepEP/HybridEP buffers if ``plan`` runs the flex dispatcher with expert parallelism,
    else None (``ep_buffers.py``). HybridEP sizes its buffer for the first dispatch's tokens: a rank's share
    of the micro-batch (sequence over CP, and over TP with sequence parallelism)."""
    group = plan.ep * plan.etp
    if plan.ep_dispatcher != "flex" or not model.is_moe or group <= 1:
        return None
    tokens = math.ceil(job.seq_len / plan.cp * plan.micro_batch / (plan.tp if plan.sp else 1))
    return flex_buffers(flex_backend(cluster), model.hidden_size, group, tokens,
                        max(model.num_experts // plan.ep, 1), cluster.nvlink_domain_gpus)


def _stage_flex_buffers(model: ModelSpec, cluster: ClusterSpec, job: JobSpec,
                        plan: Plan) -> tuple[FlexBuffers | None, tuple[float, ...]]:
    """``plan_flex_buffers`` and, per pipeline rank, the bytes they take there: the buffers on a rank that
    holds an MoE layer (``_stages_with_moe``), 0 elsewhere and for the other dispatchers."""
    if plan.ep_dispatcher != "flex":
        return None, _no_buffers(plan.pp)  # (plan_flex_buffers' first test: most of the search's estimates)
    memo = ACTIVATION_MEMO.get()
    shared = memo.get(_SHARED) if memo is not None else None
    device = shared.get(_DEVICE) if shared is not None else None
    if device is None or device[0] is not cluster:
        return _flex_buffers_by_stage(model, cluster, job, plan)
    key = _FLEX_FIELDS(plan)  # (within a search: by the fields they read, for the cluster they are for)
    hit = device[4].get(key)
    if hit is None:
        hit = device[4][key] = _flex_buffers_by_stage(model, cluster, job, plan)
    return hit


def stage_flex_buffers(model: ModelSpec, cluster: ClusterSpec, job: JobSpec,
                       plan: Plan) -> tuple[FlexBuffers | None, tuple[float, ...]]:
    """``plan_flex_buffers`` and, per pipeline rank, the bytes they take there (``MemoryParts.buffer_bytes``): what
    ``memory_parts`` adds for the dispatcher, for a caller that has the other parts (``search/resolve.py``'s
    ``StructureMemory``)."""
    return _stage_flex_buffers(model, cluster, job, plan)


def _flex_buffers_by_stage(model: ModelSpec, cluster: ClusterSpec, job: JobSpec,
                           plan: Plan) -> tuple[FlexBuffers | None, tuple[float, ...]]:
    """``_stage_flex_buffers`` worked out."""
    buffers = plan_flex_buffers(model, cluster, job, plan)
    if buffers is None:
        return None, _no_buffers(plan.pp)
    return buffers, tuple(buffers.total_bytes if holds else 0.0
                          for holds in _stages_with_moe(model, plan.pp, plan.vpp, plan.pipeline_layers))


@lru_cache(maxsize=256)
def _no_buffers(pp: int) -> tuple[float, ...]:
    """No dispatcher buffers on any of ``pp`` pipeline ranks."""
    return (0.0,) * pp


@lru_cache(maxsize=1024)
def _stages_with_moe(model: ModelSpec, pp: int, vpp: int, pipeline_layers: tuple[int, ...]) -> tuple[bool, ...]:
    """Per pipeline rank, whether it holds an MoE layer (only those create the dispatcher's buffer: Megatron
    builds it at a rank's first dispatch, ``fused_a2a.get_buffer`` / ``init_hybrid_ep_buffer``)."""
    flags = layer_moe_flags(model)
    return tuple(any(flags[i] for r in chunks for i in r)
                 for chunks in _virtual_chunks(model.num_layers, pp, vpp, pipeline_layers))


def with_flex_buffers(base: MemoryReport, model: ModelSpec, cluster: ClusterSpec, job: JobSpec,
                      plan: Plan) -> MemoryReport:
    """``estimate_memory`` of ``plan`` from ``base``, the estimate of the same plan with another dispatcher:
    the dispatcher changes only the buffers (equal to the last bit; a test checks it). The search resolves
    memory per structure and chooses the dispatcher when it costs a plan (``search/resolve.py``)."""
    buffers, stage_buffer_bytes = _stage_flex_buffers(model, cluster, job, plan)
    stages = tuple(replace(st, ep_buffer_bytes=stage_buffer_bytes[st.stage]) for st in base.stages)
    return replace(base, stages=stages, flex_buffers=buffers)


def flex_peak_bytes(base: MemoryReport, model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan) -> float:
    """``with_flex_buffers(base, ...).peak_bytes`` without building that report: each stage's
    ``total_bytes`` with ``plan``'s buffers in place of ``base``'s (the same sum, so the same floats). The
    search checks it for every option whose dispatcher is open (``search/resolve.py`` ``fit_dispatcher``)."""
    _, stage_buffer_bytes = _stage_flex_buffers(model, cluster, job, plan)
    return max(st.reserved_bytes + st.context_bytes + stage_buffer_bytes[st.stage] + st.cuda_graph_bytes
               for st in base.stages)


def _stage_memory(stage: int, num_layers: int, params: int, weights: float, grads: float, optim: float, act: float,
                  inflight: int, context: float, offload: float, rt: Runtime, ep_buffers: float = 0.0) -> StageMemory:
    """One stage's memory from its parts, ``optim`` being the whole optimizer states before ``offload`` moves
    that share of them to the host."""
    host = optim * offload
    optim -= host
    allocated = weights + grads + optim + act
    return _new_stage_memory(stage, num_layers, params, weights, grads, optim, act, allocated * rt.fragmentation,
                             context, host, inflight, ep_buffers, 0.0)


def _stage_memory_builder() -> Any:
    """A function that builds a ``StageMemory`` from its fields in declaration order, through their slot
    descriptors (as ``specs.plan.replace_unchecked``): the dataclass's ``__init__`` (keyword arguments, a frozen
    ``object.__setattr__`` per field) was most of a report's cost, and the search builds one per stage of every
    option it keeps. It has no checks to skip; the object is the same (``==``, ``hash``)."""
    names = [f for f in StageMemory.__dataclass_fields__]
    lines = [f"def build({', '.join(names)}):", "    new = new_object(StageMemory)"]
    lines += [f"    set_{name}(new, {name})" for name in names]
    lines.append("    return new")
    scope: dict[str, Any] = {"new_object": object.__new__, "StageMemory": StageMemory}
    scope.update({f"set_{name}": StageMemory.__dict__[name].__set__ for name in names})
    exec("\n".join(lines), scope)  # noqa: S102 - generated from the dataclass's own field names
    return scope["build"]


_new_stage_memory = _stage_memory_builder()


def _report(stages: list[StageMemory], cluster: ClusterSpec, plan: Plan, rt: Runtime,
            buffers: FlexBuffers | None = None) -> MemoryReport:
    # Host memory: a node's GPUs belong to the same stage under Megatron's order when pp is the
    # slowest dimension, so a node holds gpus_per_node ranks of (at worst) the busiest stage.
    per_node = min(cluster.gpus_per_node, plan.world_size)
    host_peak = per_node * max(s.host_optimizer_bytes for s in stages)
    return MemoryReport(stages=tuple(stages), capacity_bytes=float(cluster.gpu_memory_bytes),
                        host_capacity_bytes=float(cluster.host_memory_bytes) * HOST_USABLE_FRACTION,
                        host_peak_bytes=host_peak, runtime=rt.name, flex_buffers=buffers)


def with_offload(base: MemoryReport, plan: Plan, cluster: ClusterSpec, *,
                 runtime: str | Runtime = "megatron") -> MemoryReport:
    """``estimate_memory`` of ``plan`` (offload fraction ``plan.offload``) from ``base``, the estimate of the same
    plan without offload: only the optimizer states move to the host, so the other parts are ``base``'s and
    these are worked out with the same operations as ``estimate_memory`` (equal to the last bit; a test checks
    it). The search asks for several fractions of one plan (``search/resolve.py``'s ``min_offload``)."""
    rt = runtime if isinstance(runtime, Runtime) else load_runtime(runtime)
    # (base's optimizer bytes are the whole states: ``optim - 0.0``)
    stages = [_stage_memory(st.stage, st.num_layers, st.params, st.weights_bytes, st.grads_bytes, st.optimizer_bytes,
                            st.activations_bytes, st.inflight_microbatches, st.context_bytes, plan.offload, rt,
                            st.ep_buffer_bytes)
              for st in base.stages]
    return _report(stages, cluster, plan, rt, base.flex_buffers)


HOST_USABLE_FRACTION = 0.8
"""Share of a node's RAM the offloaded optimizer may use (the OS, data loaders and pinned staging
buffers need the rest)."""


# ----- Megatron-LM's reference formula ---------------------------------------------------------
def megatron_theoretical_memory(model: ModelSpec, job: JobSpec, plan: Plan) -> tuple[float, float]:
    """(weights+optimizer, activations) bytes as Megatron-LM's ``theoretical_memory_usage.py``.

    Reimplemented from its published formulas (not its code) so tests can check that we agree
    where its assumptions hold: its numbers are for the first stage, with 18 B/param (6 + 12/dp
    with the distributed optimizer), and activations from Korthikanti's 34sbh-style term
    (18 + 4 ffn/h) sbh per layer for SP + selective recompute.
    """
    h, L = model.hidden_size, model.num_layers
    vocab = model.padded_vocab_size(plan.tp)
    block = sum(sum(model.layer_params(i)) for i in range(L)) + model.norm_params
    embedding = vocab * h
    shard = (block / plan.pp + embedding) / plan.tp
    if not model.tied_embeddings and plan.pp == 1:
        shard += embedding / plan.tp
    per_param = 6 + 12 / plan.dp if plan.sharding == "distopt" else 18
    weights_optimizer = shard * per_param
    s, b = job.seq_len, plan.micro_batch
    act = s * b * h * (18 + 4 * model.ffn_hidden_size / h) * L
    act += 8 * s * b * plan.pp + s * b * h * plan.pp
    if plan.vpp > 1:
        act *= 1 + (plan.pp - 1) / (plan.pp * plan.vpp)
    elif plan.pp > 1:
        act *= min(1, plan.num_microbatches(job) / plan.pp)
    if plan.pp == 1:
        act += s * b * h * 4 * (1 + vocab / h)
    return weights_optimizer, act / plan.tp


__all__ = ["MemoryParts", "MemoryReport", "MemoryTotals", "Runtime", "StageMemory", "StateSums", "activation_bytes",
           "estimate_memory", "flex_peak_bytes", "state_sums",
           "stage_activations", "stage_flex_buffers", "stage_states",
           "inflight_chunks", "memory_floor_bytes", "memory_parts",
           "layer_activation_bytes", "load_runtime", "megatron_theoretical_memory", "plan_flex_buffers",
           "with_flex_buffers", "with_offload"]
