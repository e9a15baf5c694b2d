"""Plan: every degree and switch of a parallelisation, and Megatron-LM's legality rules.

A ``Plan`` validates only what it can see alone (positive degrees, known enum values). Whether a
plan is legal *for a model, job and cluster* is ``plan_violations``: a list of reasons, empty
when legal, so the search can count why candidates were dropped (an illegal plan is a result,
not an exception); ``check_plan`` raises the first reason as an ``InputError`` for user input.

The rules are Megatron-LM's (``megatron/training/arguments.py`` and Megatron-Core's parallel
state). Where DeepSpeed differs it is said at the rule; the DeepSpeed emitter applies its own
extra restrictions (pipeline engine needs ZeRO < 2, no CP ring attention, no interleaving).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from configurator.errors import InputError, require, require_positive_int
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec

SHARDINGS: tuple[str, ...] = ("none", "zero1", "zero2", "zero3", "distopt", "hsdp")
MEGATRON_FSDP_SHARDINGS: tuple[str, ...] = ("zero2", "zero3", "hsdp")
"""The shardings of gradients (and parameters) that Megatron-LM runs as Megatron-FSDP (``--use-megatron-fsdp``;
emit/megatron.py)."""
RECOMPUTES: tuple[str, ...] = ("none", "selective", "full")
CP_COMMS: tuple[str, ...] = ("p2p", "all_gather", "a2a", "a2a+p2p")
"""Megatron's ``--cp-comm-type``: ring of point-to-point exchanges, all-gather of K/V (Llama 3),
Ulysses-style all-to-all over heads, and the hierarchical all-to-all inside + ring across."""
EP_DISPATCHERS: tuple[str, ...] = ("alltoall", "flex")
"""Megatron's ``--moe-token-dispatcher-type`` this tool emits: ``alltoall`` (one row per token-expert pair
all-to-all'd, Megatron-Core's recipes' default) or ``flex`` (DeepEP/HybridEP: one copy per destination node
over the NIC, fanned out over NVLink; ``cost/moe.py``)."""
RECOMPUTE_MODULES: tuple[str, ...] = ("core_attn", "mlp", "moe", "moe_act", "layernorm", "mla_up_proj",
                                      "shared_experts")
"""Megatron-Core's ``--recompute-modules`` names (selective recompute)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """How one job is laid out on the cluster. World size = dp * tp * pp * cp."""

    tp: int = 1
    """Tensor parallel degree (Megatron --tensor-model-parallel-size)."""
    pp: int = 1
    """Pipeline stages."""
    dp: int = 1
    """Data-parallel replicas of the dense part."""
    cp: int = 1
    """Context parallel degree: the sequence is split over cp ranks (ring attention)."""
    ep: int = 1
    """Expert parallel degree: routed experts are split over ep ranks."""
    etp: int = 1
    """Expert tensor parallel degree (Megatron --expert-tensor-parallel-size)."""
    vpp: int = 1
    """Virtual pipeline chunks per rank (interleaved 1F1B); 1 = plain 1F1B."""
    sp: bool = False
    """Megatron sequence parallelism (activations outside attention/MLP split over TP)."""
    sharding: str = "distopt"
    """none | zero1 | zero2 | zero3 | distopt (Megatron distributed optimizer = ZeRO-1 over DP x CP) |
    hsdp (ZeRO-3 inside groups of ``shard_group`` GPUs, replicated across the groups)."""
    shard_group: int = 0
    """With sharding=hsdp: GPUs per shard group (a divisor of dp * cp greater than 1); 0 otherwise."""
    recompute: str = "none"
    """none | selective (attention core) | full (whole layers)."""
    recompute_num_layers: int = 0
    """With full recompute: layers per stage recomputed (0 = all of them)."""
    recompute_modules: tuple[str, ...] = ()
    """With selective recompute: Megatron-Core's ``--recompute-modules`` (names in RECOMPUTE_MODULES);
    empty = Megatron's default (core_attn)."""
    tp_overlap: bool | None = None
    """TP communication overlapped with GEMMs (Transformer Engine userbuffers / async TP);
    None = the runtime's default (profiles/cost.json)."""
    ep_overlap: bool | None = None
    """MoE all-to-all overlapped with compute (Megatron's EP A2A overlap with 1F1B);
    None = the runtime's default."""
    cp_comm: str | None = None
    """Context-parallel communication (CP_COMMS); None = the runtime's default."""
    ep_dispatcher: str | None = None
    """MoE token dispatcher (EP_DISPATCHERS); None = the runtime's default (profiles/cost.json: alltoall)."""
    cuda_graphs: bool | None = None
    """Each layer's attention and router/dispatcher preprocessing (an MoE model) or attention and MLP (a dense
    one) captured in CUDA graphs (Megatron-Core ``--cuda-graph-impl transformer_engine --cuda-graph-modules``
    ``plan_graph_scopes``), so the host replays a graph per part instead of launching its kernels
    (cost/launch.py); the graphs' pool holds memory of its own (memory.py ``cuda_graph_bytes``). None = off,
    what Megatron does unless told; the search turns it on where it shortens the step and fits."""
    micro_batch: int = 1
    """Sequences per micro-batch per data-parallel rank."""
    offload: float = 0.0
    """Fraction of the optimizer (fp32 master weights + Adam moments) kept and updated on the CPU."""
    pipeline_layers: tuple[int, ...] = ()
    """Layers per virtual pipeline stage (pp * vpp entries, in model order; virtual stage v runs on
    pipeline rank v % pp); empty = an even split. Megatron: --decoder-first/last-pipeline-num-layers
    or --pipeline-model-parallel-layout. Llama-3.1-405B on 16 stages: (7, 8 x 14, 7)."""

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp", "cp", "ep", "etp", "vpp", "micro_batch"):
            require_positive_int(name, getattr(self, name))
        from configurator.bounds import check_plan_bounds

        check_plan_bounds(self)
        require(isinstance(self.sp, bool), "sp", self.sp, "must be true or false")
        require(self.sharding in SHARDINGS, "sharding", self.sharding,
                f"must be one of {', '.join(SHARDINGS)}")
        require(self.recompute in RECOMPUTES, "recompute", self.recompute,
                f"must be one of {', '.join(RECOMPUTES)}")
        if isinstance(self.shard_group, bool) or not isinstance(self.shard_group, int) or self.shard_group < 0:
            raise InputError("shard_group", self.shard_group, "must be a non-negative integer")
        if self.sharding == "hsdp":
            require(self.shard_group > 1, "shard_group", self.shard_group,
                    "must be > 1 (GPUs per shard group) with sharding=hsdp")
        elif self.shard_group:
            raise InputError("shard_group", self.shard_group, "needs sharding=hsdp")
        require(isinstance(self.recompute_modules, tuple)
                and all(m in RECOMPUTE_MODULES for m in self.recompute_modules)
                and len(set(self.recompute_modules)) == len(self.recompute_modules),
                "recompute_modules", self.recompute_modules,
                f"must be distinct names from {', '.join(RECOMPUTE_MODULES)}")
        if self.recompute_modules and self.recompute != "selective":
            raise InputError("recompute_modules", ",".join(self.recompute_modules), "needs recompute=selective")
        for name in ("tp_overlap", "ep_overlap"):
            value = getattr(self, name)
            require(value is None or isinstance(value, bool), name, value, "must be true, false or unset")
        require(self.cp_comm is None or self.cp_comm in CP_COMMS, "cp_comm", self.cp_comm,
                f"must be one of {', '.join(CP_COMMS)}")
        require(self.ep_dispatcher is None or self.ep_dispatcher in EP_DISPATCHERS, "ep_dispatcher",
                self.ep_dispatcher, f"must be one of {', '.join(EP_DISPATCHERS)}")
        require(self.cuda_graphs is None or isinstance(self.cuda_graphs, bool), "cuda_graphs", self.cuda_graphs,
                "must be true, false or unset")
        if isinstance(self.recompute_num_layers, bool) or not isinstance(self.recompute_num_layers, int) \
                or self.recompute_num_layers < 0:
            raise InputError("recompute_num_layers", self.recompute_num_layers,
                             "must be a non-negative integer")
        if self.recompute_num_layers and self.recompute != "full":
            raise InputError("recompute_num_layers", self.recompute_num_layers,
                             "needs recompute=full")
        require(isinstance(self.offload, (int, float)) and not isinstance(self.offload, bool)
                and 0.0 <= self.offload <= 1.0, "offload", self.offload, "must be a fraction in [0, 1]")
        if self.pipeline_layers:
            require(len(self.pipeline_layers) == self.pp * self.vpp, "pipeline_layers",
                    self.pipeline_layers,
                    f"must list one layer count per virtual stage (pp*vpp = {self.pp * self.vpp})")
            for n in self.pipeline_layers:
                require(isinstance(n, int) and not isinstance(n, bool) and n >= 0, "pipeline_layers",
                        self.pipeline_layers, "must be non-negative integers")

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def expert_dp(self) -> int:
        """Data-parallel degree of the routed experts: (dp*cp*tp) / (ep*etp) (MoE parallel folding)."""
        return max(1, (self.dp * self.cp * self.tp) // (self.ep * self.etp))

    def num_microbatches(self, job: JobSpec) -> int:
        return job.global_batch // (self.micro_batch * self.dp)

    def virtual_stage_layers(self, model: ModelSpec) -> tuple[int, ...]:
        """Layers of each virtual stage (pp * vpp of them): the explicit split, or an even one."""
        if self.pipeline_layers:
            return self.pipeline_layers
        return tuple([model.num_layers // (self.pp * self.vpp)] * (self.pp * self.vpp))

    def stage_layers(self, model: ModelSpec) -> tuple[int, ...]:
        """Layers held by each pipeline rank (all its virtual chunks)."""
        virtual = self.virtual_stage_layers(model)
        return tuple(sum(virtual[s::self.pp]) for s in range(self.pp))

    def describe(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}"]
        if self.vpp > 1:
            parts.append(f"VPP{self.vpp}")
        parts += [f"CP{self.cp}", f"DP{self.dp}"]
        if self.ep > 1 or self.etp > 1:
            parts += [f"EP{self.ep}", f"ETP{self.etp}"]
        parts += [f"mb{self.micro_batch}",
                  f"hsdp{self.shard_group}" if self.sharding == "hsdp" else self.sharding,
                  f"rc={self.recompute}"]
        if self.recompute_modules:
            parts[-1] += "(" + ",".join(self.recompute_modules) + ")"
        if self.sp:
            parts.append("SP")
        if self.offload:
            parts.append(f"offload={self.offload:.2f}")
        if self.tp_overlap is not None:
            parts.append(f"tp_overlap={'on' if self.tp_overlap else 'off'}")
        if self.ep_overlap is not None:
            parts.append(f"ep_overlap={'on' if self.ep_overlap else 'off'}")
        if self.cp_comm is not None:
            parts.append(f"cp_comm={self.cp_comm}")
        if self.ep_dispatcher is not None:
            parts.append(f"ep_dispatcher={self.ep_dispatcher}")
        if self.cuda_graphs:  # (off is Megatron's default and the search's answer wherever graphs would not help)
            parts.append("cuda_graphs=on")
        return " ".join(parts)

    def as_dict(self) -> dict[str, object]:
        """Every field, JSON-ready (tuples as lists); ``plan_from_dict`` reads it back."""
        return {name: (list(getattr(self, name)) if isinstance(getattr(self, name), tuple) else getattr(self, name))
                for name in PLAN_FIELDS}


PLAN_FIELDS: tuple[str, ...] = tuple(f for f in Plan.__dataclass_fields__)
"""Every field of ``Plan`` in declaration order (what a stored or golden plan object carries)."""


def _unchecked_replacer(changed: tuple[str, ...], positional: bool = False) -> Callable[..., Plan]:
    """A function, generated once per set of ``changed`` field names, that copies a Plan's fields through their
    slot descriptors (no loop, no ``object.__setattr__`` per field) and takes the changed ones from the
    ``changes`` dict (``positional``: from its arguments after the plan, in ``changed``'s order): the search
    builds hundreds of thousands of knob and recompute variants, and the generic loop was a tenth of a search's
    time (a lookup per field in ``changes`` was still a third of what is left)."""
    unknown = set(changed) - set(PLAN_FIELDS)
    if unknown:
        raise TypeError(f"Plan has no field {sorted(unknown)[0]!r}")
    if len(set(changed)) != len(changed):
        raise TypeError(f"Plan fields named twice: {changed}")
    if positional:
        lines = [f"def replace(plan, {', '.join(f'new_{name}' for name in changed)}):"]
        value = {name: f"new_{name}" for name in changed}
    else:
        lines = ["def replace(plan, changes):"]
        value = {name: f"changes[{name!r}]" for name in changed}
    lines.append("    new = new_plan(Plan)")
    for name in PLAN_FIELDS:
        lines.append(f"    set_{name}(new, {value.get(name, f'plan.{name}')})")
    lines.append("    return new")
    scope: dict[str, object] = {"new_plan": object.__new__, "Plan": Plan}
    scope.update({f"set_{name}": Plan.__dict__[name].__set__ for name in PLAN_FIELDS})
    exec("\n".join(lines), scope)  # noqa: S102 - generated from the dataclass's own field names
    return scope["replace"]  # type: ignore[return-value]


_REPLACERS: dict[tuple[str, ...], Callable[[Plan, dict[str, object]], Plan]] = {}
"""``_unchecked_replacer`` by the changed names in call order (a few dozen call sites, so a few dozen entries)."""


def replace_unchecked(plan: Plan, **changes: object) -> Plan:
    """``dataclasses.replace`` without ``__post_init__``'s checks, for code that derives plans from a
    plan already checked and changes only fields to values known valid (the search's inner loops build
    tens of thousands; validating each cost seconds). Never use it on user input."""
    key = tuple(changes)
    replacer = _REPLACERS.get(key)
    if replacer is None:
        replacer = _REPLACERS[key] = _unchecked_replacer(key)
    return replacer(plan, changes)


def unchecked_replacer(*names: str) -> Callable[..., Plan]:
    """``replace_unchecked`` for a fixed set of fields, called as ``replacer(plan, *values)`` (values in ``names``'
    order): for the search's hottest call sites, which build one per module. The keyword call's dict, its key
    and the lookup of its replacer were half of ``replace_unchecked``'s time (3.1 against 1.6 us per plan,
    measured 2026-11-30 on the shared 2-core machine); the plan built is the same. Never use it on user input."""
    return _unchecked_replacer(names, positional=True)


def plan_from_dict(fields: dict[str, object]) -> Plan:
    """A Plan from a JSON plan object: unknown keys (``global_batch``, ``num_gpus``, ...) are ignored,
    missing keys take Plan's defaults, lists become tuples."""
    kw = {k: fields[k] for k in PLAN_FIELDS if k in fields}
    for name in ("pipeline_layers", "recompute_modules"):
        if name in kw:
            kw[name] = tuple(kw[name] or ())  # type: ignore[arg-type]
    return Plan(**kw)  # type: ignore[arg-type]


def plan_violations(model: ModelSpec, job: JobSpec, plan: Plan, num_gpus: int | None = None) -> list[str]:
    """Every reason ``plan`` cannot run ``job`` on ``model`` (Megatron-LM's rules); [] if legal."""
    out: list[str] = []
    if num_gpus is not None and plan.world_size != num_gpus:
        out.append(f"dp*tp*pp*cp = {plan.dp}*{plan.tp}*{plan.pp}*{plan.cp} = {plan.world_size} "
                   f"must equal the {num_gpus} GPUs")
    # Tensor parallel: heads, query groups and FFN columns are split evenly.
    if model.num_attention_heads % plan.tp:
        out.append(f"tp={plan.tp} must divide num_attention_heads={model.num_attention_heads}")
    if model.attention != "mla" and model.num_kv_heads % plan.tp:
        out.append(f"tp={plan.tp} must divide the {model.num_kv_heads} key/value heads (query groups)")
    if model.ffn_hidden_size % plan.tp:
        out.append(f"tp={plan.tp} must divide ffn_hidden_size={model.ffn_hidden_size}")
    if plan.sp and plan.tp == 1:
        out.append("sequence parallel needs tp > 1 (Megatron turns it off at tp=1)")
    # Pipeline: layers over pp x vpp.
    if plan.pipeline_layers:
        layers = sum(plan.pipeline_layers)  # (every stage's layers: the split's integers, summed)
        if layers != model.num_layers:
            out.append(f"pipeline_layers {list(plan.pipeline_layers)} sum to {layers}, "
                       f"not num_layers={model.num_layers}")
    elif model.num_layers % (plan.pp * plan.vpp):
        out.append(f"num_layers={model.num_layers} must divide evenly over pp*vpp = "
                   f"{plan.pp}*{plan.vpp} (or give an uneven pipeline_layers split)")
    if plan.vpp > 1 and plan.pp == 1:
        out.append("vpp > 1 (interleaved schedule) needs pp > 1")
    # Context parallel: load-balanced causal attention splits the sequence in 2*cp chunks.
    if plan.cp > 1 and job.seq_len % (2 * plan.cp):
        out.append(f"seq_len={job.seq_len} must be divisible by 2*cp = {2 * plan.cp}")
    if plan.tp > 1 and plan.sp and (job.seq_len // plan.cp) % plan.tp:
        out.append(f"sequence parallel needs seq_len/cp = {job.seq_len // plan.cp} divisible by tp={plan.tp}")
    # Experts.
    if not model.is_moe and (plan.ep > 1 or plan.etp > 1):
        out.append(f"ep={plan.ep}, etp={plan.etp}: expert parallelism needs an MoE model")
    if model.is_moe:
        if model.num_experts % plan.ep:
            out.append(f"ep={plan.ep} must divide num_experts={model.num_experts}")
        if model.moe_ffn_hidden_size % plan.etp:
            out.append(f"etp={plan.etp} must divide moe_ffn_hidden_size={model.moe_ffn_hidden_size}")
        if (plan.dp * plan.cp * plan.tp) % (plan.ep * plan.etp):
            out.append(f"ep*etp = {plan.ep * plan.etp} must divide dp*cp*tp = "
                       f"{plan.dp * plan.cp * plan.tp} (world size / pp)")
    # Batch.
    if job.global_batch % (plan.micro_batch * plan.dp):
        out.append(f"global_batch={job.global_batch} must be divisible by micro_batch*dp = "
                   f"{plan.micro_batch}*{plan.dp}")
    else:
        m = plan.num_microbatches(job)
        if plan.vpp > 1 and (m % plan.pp or m < plan.pp):
            out.append(f"interleaved schedule needs the {m} micro-batches to be a multiple of "
                       f"pp={plan.pp} (and at least pp)")
    # Optimizer.
    if plan.sharding == "hsdp" and (plan.dp * plan.cp) % plan.shard_group:
        out.append(f"shard_group={plan.shard_group} must divide dp*cp = {plan.dp * plan.cp}")
    if plan.cp_comm is not None and plan.cp_comm != "p2p" and plan.cp == 1:
        out.append(f"cp_comm={plan.cp_comm} needs cp > 1")
    if plan.cp_comm in ("a2a", "a2a+p2p") and plan.cp > 1:
        heads = model.num_attention_heads // plan.tp
        if plan.cp_comm == "a2a" and heads % plan.cp:
            out.append(f"cp_comm=a2a splits the {heads} heads per TP rank over cp={plan.cp}: cp must divide them")
    if plan.ep_overlap and not model.is_moe:
        out.append("ep_overlap needs an MoE model")
    elif plan.ep_overlap:
        out += [f"ep_overlap: {r}" for r in ep_overlap_conflicts(plan)]
        if getattr(model, "mtp_layers", 0) > 1:
            out.append("ep_overlap: Megatron's EP A2A overlap supports at most one MTP layer")
    if plan.ep_dispatcher == "flex" and (not model.is_moe or plan.ep * plan.etp == 1):
        # MoEFlexTokenDispatcher: "DeepEP dispatcher requires TPxEP > 1" (its group is expert-TP x EP).
        out.append("ep_dispatcher=flex needs an MoE model with expert parallelism (ep x etp > 1)")
    if plan.cuda_graphs:
        out += [f"cuda_graphs: {r}" for r in cuda_graph_conflicts(plan, model.is_moe, bool(model.dropout),
                                                                   job.moe_routing)]
    if job.precision == "fp8" and {"moe_act", "layernorm"} & set(plan.recompute_modules):
        out.append("recompute_modules moe_act/layernorm: Megatron's fp8 delayed scaling does not support "
                   "recomputing them")
    if plan.offload > 0 and plan.sharding == "none":
        out.append("optimizer offload needs a sharded optimizer (distopt or ZeRO; Megatron: "
                   "--optimizer-cpu-offload requires --use-distributed-optimizer)")
    if plan.recompute_num_layers and plan.recompute_num_layers > (chunk := max(plan.virtual_stage_layers(model))):
        out.append(f"recompute_num_layers={plan.recompute_num_layers} exceeds the "
                   f"{chunk} layers of a pipeline chunk")
    return out


def ep_overlap_conflicts(plan: Plan) -> list[str]:
    """Why Megatron-Core refuses ``--overlap-moe-expert-parallel-comm`` for this plan (its
    TransformerConfig assertions and its schedule's), [] when it runs: the overlap needs expert parallelism, an
    interleaved schedule under pipeline parallelism, and no full recompute or recomputed MoE module. Under
    Megatron-FSDP it needs pp 1: Megatron-Core 0.19's combined 1F1B schedule asserts "EP overlap 1F1B with FSDP is
    not supported for interleaved pipeline parallelism" (combined_1f1b.py) on the first step, and pp > 1 needs the
    interleaved schedule. Only Megatron runs the overlap, so a ZeRO sharding here is Megatron-FSDP."""
    out = []
    if plan.ep == 1:
        out.append("needs expert parallelism (ep > 1)")
    if plan.pp > 1 and plan.vpp == 1:
        out.append("needs an interleaved schedule (vpp > 1) when pp > 1")
    elif plan.pp > 1 and plan.sharding in MEGATRON_FSDP_SHARDINGS:
        out.append("cannot run under Megatron-FSDP with pipeline parallelism (pp > 1)")
    if plan.recompute == "full":
        out.append("cannot run with full recompute")
    if "moe" in plan.recompute_modules:
        out.append("cannot run with the moe module recomputed")
    return out


def cuda_graph_conflicts(plan: Plan, is_moe: bool, dropout: bool = False, moe_routing: str = "learned") -> list[str]:
    """Why Megatron-Core refuses per-layer Transformer Engine CUDA graphs (``--cuda-graph-impl transformer_engine``
    over ``plan_graph_scopes``) for this plan, [] when it runs (Megatron-Core 0.19's TransformerConfig and
    Megatron-FSDP adapter): "full recompute is only supported with full iteration CUDA graph"; "moe recompute is
    not supported with moe_router CUDA graph"; "1F1B overlap with FSDP does not support per-layer CUDA graphs";
    with dropout (``dropout``), "attention dropout is not supported with graphed attention recomputation" (the
    default selective recompute is core_attn) and its MLP twin for a dense model; and with the alltoall dispatcher
    under an expert capacity factor (``moe_routing`` ``capacity_padded``), "moe_preprocess cuda graph is not
    supported when there are DtoH copies and synchronizations in the preprocess step"."""
    out = []
    if plan.recompute == "full":
        out.append("Megatron-Core captures per-layer graphs only without full recompute")
    if is_moe and "moe" in plan.recompute_modules:
        out.append("Megatron-Core cannot recompute the moe module under the moe_router graph")
    if plan.ep_overlap and plan.sharding in MEGATRON_FSDP_SHARDINGS:
        out.append("Megatron-FSDP's EP all-to-all overlap does not support per-layer graphs")
    if dropout and plan.recompute == "selective":
        modules = plan.recompute_modules or ("core_attn",)
        if "core_attn" in modules or (not is_moe and "mlp" in modules):
            out.append("Megatron-Core cannot recompute a graphed module with dropout")
    if is_moe and moe_routing == "capacity_padded" and plan.ep_dispatcher != "flex":
        out.append("Megatron-Core's moe_preprocess graph cannot run the alltoall dispatcher with a capacity factor")
    return out


def balanced_layout(num_layers: int, pp: int, vpp: int = 1) -> tuple[int, ...]:
    """Layers per virtual stage as even as possible, the first and last stages lighter.

    When ``num_layers`` does not divide over ``pp * vpp`` virtual stages, the stages that get one
    layer fewer are taken from the ends inwards (first, last, second, second-to-last, ...), because
    the ends also hold the embedding and the LM head/loss. For Llama-3.1-405B (126 layers, pp=16)
    this gives Meta's split: 7 on the first and last stage, 8 elsewhere.
    """
    virtual = pp * vpp
    base, extra = divmod(num_layers, virtual)
    if extra == 0:
        return tuple([base] * virtual)
    counts = [base + 1] * virtual
    order = [i // 2 if i % 2 == 0 else virtual - 1 - i // 2 for i in range(virtual)]
    for v in order[: virtual - extra]:
        counts[v] = base
    return tuple(counts)


def check_plan(model: ModelSpec, job: JobSpec, plan: Plan, num_gpus: int | None = None) -> None:
    """Raise ``InputError`` naming the first violated rule."""
    reasons = plan_violations(model, job, plan, num_gpus)
    if reasons:
        raise InputError("plan", plan.describe(), reasons[0])


def check_given_knobs(spec: ModelSpec, plan: Plan) -> None:
    """The knob rules a plan typed by hand (``estimate``/``emit`` options, ``--plan-json``, ``POST /v1/estimate``)
    can break and the search never does. For plans built in code they stay warnings (``cost.knobs.
    megatron_warnings``; the step model then ignores TP overlap at tp=1); a user asking for them gets one
    line instead: Megatron asserts sequence parallelism under --tp-comm-overlap (arguments.py: "Tensor
    parallel communication/GEMM overlap can happen only when sequence parallelism is enabled", after
    turning SP off at tp=1), and a dense model has no token dispatcher to choose."""
    if plan.tp_overlap and not plan.sp:
        raise InputError("tp_overlap", "on", "needs sequence parallelism (sp, which needs tp > 1); Megatron "
                         "asserts it")
    if plan.ep_dispatcher is not None and not spec.is_moe:
        raise InputError("ep_dispatcher", plan.ep_dispatcher, f"{spec.name} is not an MoE model")
    if plan.cuda_graphs:
        reasons = cuda_graph_conflicts(plan, spec.is_moe, bool(spec.dropout))
        if reasons:
            raise InputError("cuda_graphs", "on", reasons[0])


def resolve_plan(num_gpus: int, *, tp: int = 1, pp: int = 1, cp: int = 1, dp: int | None = None,
                 sp: bool | None = None, **rest: object) -> tuple[Plan, list[str]]:
    """Fill unspecified choices as Megatron-LM would, returning the plan and what was chosen.

    dp = GPUs / (tp*pp*cp); sequence parallel on when tp > 1. Other fields keep ``Plan``'s
    defaults (distributed optimizer on, no recompute, micro-batch 1).
    """
    chosen: list[str] = []
    from configurator.bounds import MAX_GPUS, require_at_most

    for name, value in (("tp", tp), ("pp", pp), ("cp", cp)):
        require_positive_int(name, value)
        require_at_most(name, value, MAX_GPUS, "(the largest GPU count)")
    if dp is None:
        model_parallel = tp * pp * cp
        require(num_gpus % model_parallel == 0, "tp*pp*cp", model_parallel,
                f"must divide the {num_gpus} GPUs")
        dp = num_gpus // model_parallel
        chosen.append(f"dp={dp} (GPUs / (tp*pp*cp))")
    if sp is None:
        sp = tp > 1
        chosen.append(f"sp={'on' if sp else 'off'} (on when tp > 1)")
    plan = Plan(tp=tp, pp=pp, cp=cp, dp=dp, sp=sp, **rest)  # type: ignore[arg-type]
    return plan, chosen


def with_megatron_sp(plan: Plan) -> Plan:
    """Megatron silently disables sequence parallelism at tp=1; mirror that for imported runs."""
    return replace(plan, sp=False) if plan.tp == 1 and plan.sp else plan
