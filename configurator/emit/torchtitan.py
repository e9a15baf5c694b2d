"""torchtitan launch files for a plan: ``torchtitan_job.py``, ``launch_torchtitan.sh`` (+ ``.sbatch``).

torchtitan 0.3.0 (the one release on PyPI) reads no TOML: ``python -m torchtitan.train --module M
--config FN`` imports ``M`` (a short model name or any importable module), calls ``FN()`` for a
``Trainer.Config`` and applies tyro ``--section.key value`` overrides (``torchtitan/config/manager.py``).
So the job is a generated Python module, ``torchtitan_job.py``, whose ``configurator_job()`` builds the
model from the ModelSpec with torchtitan's own layer builders and sets the plan; the launch script puts
the emitted folder on ``PYTHONPATH`` and runs ``torchrun ... -m torchtitan.train --module torchtitan_job
--config configurator_job``. CI (``tests/validators/torchtitan_check.py``) runs torchtitan's
``ConfigManager.parse_args`` on the argv the script passed to a stub torchrun, builds ``ParallelDims``,
applies ``update_from_config`` and builds the model on the meta device.

Mapping (plan -> torchtitan 0.3.0):

* model families: ``llama3`` (dense, MHA/GQA, no biases, no q/k norm), ``qwen3`` (per-head q/k norm,
  dense or MoE without shared experts or dense layers), ``deepseek_v3`` (MLA + MoE, shared experts,
  dense first layers, MTP). Anything else (LayerNorm, GELU, biases, learned positions, post/sandwich
  norms, sliding windows, ...) is refused by field name;
* MoE router (score function, top-k renormalisation, scaling, groups) set on every MoE layer; the
  expert bias is torchtitan's aux-loss-free balancing (``load_balance_coeff`` 1e-3, None = off);
  torchtitan 0.3.0 has no auxiliary balancing loss, so ``moe_aux_loss_coeff`` > 0 is refused;
* ZeRO-3 -> FSDP2 (``data_parallel_shard_degree`` = dp); ZeRO-2 -> FSDP2 with
  ``fsdp_reshard_after_forward = "never"``; HSDP -> ``data_parallel_replicate_degree`` x shard;
  ZeRO-1 / distributed optimizer / plain DDP are not torchtitan's and are refused;
* TP with sequence parallel (``enable_sequence_parallel``), TP overlap -> async TP (needs
  ``torch.compile``, so compile is enabled for the model); PP -> ``1F1B`` (or ``Interleaved1F1B`` with
  virtual stages) and ``module_fqns_per_model_part`` with the plan's layer split (embedding in the first
  chunk, norm + head in the last); CP -> ``context_parallel_degree``: language models must use
  FlexAttention (0.3.0 refuses SDPA for them), whose CP all-gathers K/V, so cp_comm all_gather (or
  unset) is emitted and p2p/a2a/a2a+p2p are refused (the torchtitan search fixes cp_comm=all_gather);
  EP -> ``expert_parallel_degree`` (torchtitan has no expert-TP: etp > 1 is refused);
* recompute: full -> ``FullAC`` (every layer; a partial layer count is refused), selective ->
  ``SelectiveAC`` (op-level: saves matmul outputs, recomputes the rest); Megatron's recompute modules
  are refused;
* fp8 -> ``Float8LinearConverter`` (rowwise); fp16 and fp4 are refused;
* offload: torchtitan offloads parameters, gradients and optimizer states together (FSDP2
  ``CPUOffloadPolicy``, ``training.enable_cpu_offload``): only offload = 1 with ZeRO-3 is emitted;
* batch: ``global_batch_size`` = the job's; without PP ``local_batch_size`` = micro-batch (torchtitan
  accumulates the rest); with PP ``local_batch_size`` = global / dp and ``pipeline_parallel_microbatch_size``
  = micro-batch.
"""

from __future__ import annotations

import pprint
from typing import Any

from configurator.emit.megatron import gpu_orders
from configurator.emit.shell import known_hosts, node_prologue
from configurator.errors import InputError
from configurator.placement import Placement
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan

TORCHTITAN_VERSION = "0.3.0"
JOB_MODULE = "torchtitan_job"
JOB_FUNCTION = "configurator_job"
FAMILIES = ("llama3", "qwen3", "deepseek_v3")


def _refuse(field: str, value: object, why: str) -> None:
    raise InputError(f"model.{field}", value, f"torchtitan {TORCHTITAN_VERSION} cannot express {why}; "
                     "refusing rather than emitting a different model")


def family(model: ModelSpec) -> str:
    """The torchtitan model family that builds ``model``, or an InputError naming the first field none can."""
    if model.features:
        _refuse("features", model.features[0], f"'{model.features[0]}' (no such option in its models)")
    checks = (
        ("norm", model.norm, model.norm != "rmsnorm", "LayerNorm (its models use RMSNorm)"),
        ("mlp", model.mlp, model.mlp != "swiglu", f"a {model.mlp} MLP (its models use SwiGLU)"),
        ("activation", model.activation, bool(model.activation), f"the {model.activation} activation"),
        ("linear_bias", True, model.linear_bias, "linear biases"),
        ("qkv_bias", True, model.qkv_bias, "query/key/value biases"),
        ("learned_position_embeddings", model.learned_position_embeddings, model.learned_position_embeddings > 0,
         "learned position embeddings"),
        ("norm_placement", model.norm_placement, model.norm_placement != "pre", f"{model.norm_placement}-norm layers"),
        ("norm_zero_centered", True, model.norm_zero_centered, "zero-centred norm weights"),
        ("qk_norm_full_width", True, model.qk_norm_full_width, "a query/key norm across all heads"),
        ("dropout", True, model.dropout, "dropout"),
        ("rope_percent", model.rope_percent, model.rope_percent != 1.0, "partial rotary embeddings"),
        ("rope_scaling", model.rope_scaling, model.rope_scaling == "linear", "linear rope interpolation"),
        ("moe_aux_loss_coeff", model.moe_aux_loss_coeff, model.is_moe and model.moe_aux_loss_coeff > 0,
         "an auxiliary load-balancing loss (its MoE balances with the expert bias only: set "
         "moe_aux_loss_coeff to 0 in a model file to train that way)"),
        ("moe_layer_freq", model.moe_layer_freq, model.is_moe and model.moe_layer_freq > 1,
         "MoE layers interleaved with dense ones (only dense first layers)"),
    )
    for field, value, bad, why in checks:
        if bad:
            _refuse(field, value, why)
    if model.attention == "mla":
        if model.qk_norm:
            _refuse("qk_norm", True, "query/key norms with latent attention")
        if not model.is_moe:
            _refuse("num_experts", 0, "dense latent attention (its MLA model, deepseek_v3, is MoE)")
        if model.rope_scaling not in ("", "yarn"):
            _refuse("rope_scaling", model.rope_scaling, "MLA with rope scaling other than YaRN")
        if model.rope_scaling == "yarn" and model.rope_mscale != model.rope_mscale_all_dim:
            _refuse("rope_mscale", model.rope_mscale, "YaRN with mscale != mscale_all_dim (one mscale only)")
        shared = model.shared_expert_ffn_hidden_size
        if shared and shared != model.num_shared_experts * model.moe_ffn_hidden_size:
            _refuse("shared_expert_ffn_hidden_size", shared,
                    "shared experts wider than num_shared_experts x moe_ffn_hidden_size")
        return "deepseek_v3"
    if model.mtp_layers:
        _refuse("mtp_layers", model.mtp_layers, "multi-token prediction outside deepseek_v3 (MLA)")
    if model.qk_norm:
        if model.rope_scaling:
            _refuse("rope_scaling", model.rope_scaling, "rope scaling in qwen3 (cos/sin rope without scaling)")
        if model.is_moe and (model.num_shared_experts or model.shared_expert_ffn_hidden_size):
            _refuse("num_shared_experts", model.num_shared_experts, "shared experts in a qwen3 MoE")
        if model.is_moe and model.first_dense_layers:
            _refuse("first_dense_layers", model.first_dense_layers, "dense first layers in a qwen3 MoE")
        return "qwen3"
    if model.is_moe:
        _refuse("qk_norm", False, "an MoE with GQA/MHA attention without query/key norms (its GQA MoE, qwen3, "
                "has per-head q/k norms; Mixtral-style models are not among its models)")
    if model.rope_scaling == "yarn":
        _refuse("rope_scaling", "yarn", "YaRN scaling in llama3 (llama-3 scaling only)")
    if model.head_dim and model.head_dim * model.num_attention_heads != model.hidden_size:
        _refuse("head_dim", model.head_dim, "a head size other than hidden_size / heads in llama3")
    return "llama3"


def job_refusals(job: JobSpec) -> list[str]:
    """Why torchtitan can run no plan of ``job`` at all ([] if some plan may run): its precision (the model's
    refusals are ``family``'s). Checked before a search starts (``emit.check_framework_runs``)."""
    if job.precision in ("fp16", "fp4"):
        return [f"precision {job.precision}: torchtitan trains in bf16 (fp8 through its Float8 converter)"]
    return []


def unsupported(model: ModelSpec, plan: Plan, job: JobSpec) -> list[str]:
    """Why torchtitan cannot run ``plan`` as modelled ([] if it can). The model's own refusals are ``family``'s."""
    out = []
    if plan.sharding in ("none", "zero1", "distopt"):
        out.append(f"{plan.sharding}: torchtitan shards with FSDP2 (ZeRO-3, ZeRO-2 via reshard_after_forward="
                   "never, or HSDP); it has no ZeRO-1/distributed optimizer and no plain DDP with this emitter")
    if plan.etp > 1:
        out.append("expert tensor parallelism: torchtitan 0.3.0 has no expert_tensor_parallel_degree")
    replicate = plan.dp * plan.cp // plan.shard_group if plan.sharding == "hsdp" else 1
    if plan.dp % replicate:
        out.append(f"hsdp with shard groups of {plan.shard_group}: torchtitan shards over dp_shard x cp, so the "
                   f"{replicate} replicas must divide dp={plan.dp}")
    elif plan.ep > 1 and (plan.dp // replicate * plan.cp * plan.tp) % plan.ep:
        out.append("torchtitan's EP borrows ranks from dp_shard x cp x tp (not the HSDP replicas): ep must "
                   "divide it")
    if plan.ep_overlap:
        out.append("EP all-to-all overlap: no such option in torchtitan 0.3.0")
    if plan.cuda_graphs:
        out.append("cuda_graphs: Megatron-Core's per-layer Transformer Engine graphs; torchtitan 0.3.0 has no "
                   "per-layer capture of its own")
    if plan.ep_dispatcher == "flex":
        out.append("ep_dispatcher flex (DeepEP/HybridEP): this tool emits it for Megatron only; the torchtitan "
                   "emitter writes the default all-to-all dispatcher")
    if plan.cp > 1 and plan.cp_comm not in (None, "all_gather"):
        out.append(f"cp_comm {plan.cp_comm}: torchtitan 0.3.0's CP for language models (FlexAttention) "
                   "all-gathers K/V (cp_comm all_gather)")
    if plan.recompute == "full" and plan.recompute_num_layers:
        out.append("full recompute of some layers: torchtitan's FullAC checkpoints every layer")
    if plan.recompute_modules:
        out.append("Megatron's recompute modules: torchtitan's selective recompute is op-level")
    if plan.offload > 0 and not (plan.offload == 1.0 and plan.sharding == "zero3"):
        out.append(f"offload {plan.offload:g} with {plan.sharding}: torchtitan offloads parameters, gradients and "
                   "the whole optimizer together, with FSDP2 (ZeRO-3) only")
    out.extend(job_refusals(job))
    if plan.tp_overlap and not plan.sp:
        out.append("async TP needs sequence parallelism")
    if plan.tp_overlap and plan.pp > 1:
        pass  # torchtitan applies async TP per stage under PP; nothing to refuse
    if model.mtp_layers and (plan.pp > 1 or plan.cp > 1):
        out.append("torchtitan 0.3.0's MTP does not support pipeline or context parallelism")
    if model.tied_embeddings and plan.pp > 1:
        out.append("torchtitan does not tie embeddings under pipeline parallelism")
    if plan.pp > 1 and plan.vpp == 1 and job.global_batch % (plan.dp * plan.micro_batch) == 0 \
            and plan.num_microbatches(job) < plan.pp:
        # (Megatron's 1F1B runs fewer; the interleaved schedule's rule is plan_violations')
        out.append(f"{plan.num_microbatches(job)} micro-batches under pp={plan.pp}: PyTorch's Schedule1F1B, "
                   "which torchtitan runs, refuses fewer micro-batches than stages")
    return out


def _model_dict(model: ModelSpec, job: JobSpec) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "family": family(model), "name": model.name, "dim": model.hidden_size, "n_layers": model.num_layers,
        "n_heads": model.num_attention_heads, "ffn_hidden": model.ffn_hidden_size, "vocab_size": model.vocab_size, "tied_embeddings": model.tied_embeddings,
        "norm_eps": model.norm_eps, "rope_theta": float(model.rope_base), "rope_scaling": model.rope_scaling,
        "rope_scaling_factor": float(model.rope_scaling_factor),
        "rope_original_max_positions": model.rope_original_max_positions, "rope_mscale": float(model.rope_mscale_all_dim),
        "max_seq_len": job.seq_len,
    }
    if model.attention != "mla":
        spec.update(n_kv_heads=model.num_kv_heads, head_dim=model.kv_channels)
    else:
        spec.update(q_lora_rank=model.q_lora_rank, kv_lora_rank=model.kv_lora_rank,
                    qk_nope_head_dim=model.qk_nope_head_dim, qk_rope_head_dim=model.qk_rope_head_dim,
                    v_head_dim=model.v_head_dim, mtp_layers=model.mtp_layers)
    if model.is_moe:
        spec.update(num_experts=model.num_experts, top_k=model.moe_topk, moe_hidden=model.moe_ffn_hidden_size,
                    num_shared_experts=model.num_shared_experts, first_dense_layers=model.first_dense_layers,
                    score_func=model.moe_router_score, route_norm=model.moe_norm_topk_prob,
                    route_scale=float(model.moe_routed_scaling_factor),
                    num_expert_groups=model.moe_router_num_groups or None,
                    num_limited_groups=model.moe_router_group_topk or None,
                    expert_bias=model.moe_router_expert_bias)
    return spec


def _module_fqns(model: ModelSpec, plan: Plan) -> list[list[str]] | None:
    """Module names per model chunk (pp * vpp chunks in model order), or None without PP."""
    if plan.pp == 1:
        return None
    parts, layer = [], 0
    counts = plan.virtual_stage_layers(model)
    for v, n in enumerate(counts):
        names = [f"layers.{i}" for i in range(layer, layer + n)]
        layer += n
        if v == 0:
            names.insert(0, "tok_embeddings")
        if v == len(counts) - 1:
            names += ["norm", "lm_head"]
        parts.append(names)
    return parts


def job_settings(model: ModelSpec, job: JobSpec, plan: Plan) -> dict[str, Any]:
    """Everything the generated module sets, as plain data (also what the tests compare)."""
    fam = family(model)  # model refusals first: they name a model field
    reasons = unsupported(model, plan, job)
    if reasons:
        raise InputError("emit", "torchtitan", f"cannot run {plan.describe()}: {reasons[0]}")
    replicate = plan.dp * plan.cp // plan.shard_group if plan.sharding == "hsdp" else 1
    parallelism: dict[str, Any] = {
        "data_parallel_replicate_degree": replicate,
        "data_parallel_shard_degree": plan.dp // replicate,
        "tensor_parallel_degree": plan.tp,
        "enable_sequence_parallel": plan.sp or plan.tp == 1,
        "pipeline_parallel_degree": plan.pp,
        "context_parallel_degree": plan.cp,
        "expert_parallel_degree": plan.ep,
        "fsdp_reshard_after_forward": "never" if plan.sharding == "zero2" else "default",
    }
    if plan.pp > 1:
        parallelism["pipeline_parallel_schedule"] = "Interleaved1F1B" if plan.vpp > 1 else "1F1B"
        parallelism["module_fqns_per_model_part"] = _module_fqns(model, plan)
        parallelism["pipeline_parallel_microbatch_size"] = plan.micro_batch
    local = job.global_batch // plan.dp if plan.pp > 1 else plan.micro_batch
    return {
        "model": _model_dict(model, job),
        "family": fam,
        "parallelism": parallelism,
        "training": {"local_batch_size": local, "global_batch_size": job.global_batch, "seq_len": job.seq_len,
                     "enable_cpu_offload": plan.offload > 0, "mixed_precision_param": "bfloat16",
                     # torchtitan 0.3.0 captures CUDA graphs by default, which PP and EP's standard
                     # all-to-all dispatcher (it synchronises with the host) do not support
                     "disable_cuda_graphs": plan.pp > 1 or plan.ep > 1},
        "activation_checkpoint": {"none": "none", "full": "full", "selective": "selective"}[plan.recompute],
        "async_tp": bool(plan.tp_overlap),
        "float8": job.precision == "fp8",
        "plan": plan.describe(),
    }


_MODULE_BODY = '''
import dataclasses
import importlib

import torch
from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
from torchtitan.components.optimizer import default_adamw
from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC
from torchtitan.hf_datasets.text_datasets import HuggingFaceTextDataLoader
from torchtitan.models.common import ComplexRoPE, CosSinRoPE, Embedding, Linear, RMSNorm
from torchtitan.models.common.config_utils import decoder_vocab_size
from torchtitan.models.utils import validate_converter_order
from torchtitan.trainer import Trainer


def _rope(m, cls=ComplexRoPE, dim=None):
    kw = dict(dim=dim or m["head_dim"], max_seq_len=m["max_seq_len"], theta=m["rope_theta"])
    if m["rope_scaling"] == "llama3":
        kw.update(scaling="llama", scaling_factor=m["rope_scaling_factor"], low_freq_factor=1.0,
                  high_freq_factor=4.0, original_max_position_embeddings=m["rope_original_max_positions"])
    elif m["rope_scaling"] == "yarn":
        kw.update(scaling="yarn", rope_factor=m["rope_scaling_factor"], beta_fast=32.0, beta_slow=1.0,
                  original_seq_len=m["rope_original_max_positions"] or 4096)
    return cls.Config(**kw)


def _decoder(fam_module, model_cls, m, layers, **extra):
    dim, vocab = m["dim"], m["vocab_size"]
    return model_cls.Config(
        dim=dim, vocab_size=vocab, enable_weight_tying=m["tied_embeddings"],
        tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim,
                                        param_init=fam_module._EMBEDDING_INIT),
        norm=RMSNorm.Config(normalized_shape=dim, param_init={"weight": torch.nn.init.ones_}),
        lm_head=Linear.Config(in_features=dim, out_features=vocab,
                              param_init=fam_module._output_linear_init(dim)
                              if hasattr(fam_module, "_output_linear_init") else fam_module._LINEAR_INIT),
        layers=layers, **extra)


def _llama3(m, attn_backend):
    fam = importlib.import_module("torchtitan.models.llama3")
    layers = fam._build_llama3_layers(
        n_layers=m["n_layers"], dim=m["dim"], n_heads=m["n_heads"], n_kv_heads=m["n_kv_heads"],
        hidden_dim=m["ffn_hidden"], rope=_rope(m), fuse_qkv=True, attn_backend=attn_backend)
    return fam, _decoder(fam, fam.Llama3Model, m, layers)


def _qwen3(m, attn_backend):
    fam = importlib.import_module("torchtitan.models.qwen3")
    common = dict(n_layers=m["n_layers"], dim=m["dim"], n_heads=m["n_heads"], n_kv_heads=m["n_kv_heads"],
                  head_dim=m["head_dim"], fuse_qkv=True, attn_backend=attn_backend, rope=_rope(m, CosSinRoPE))
    if "num_experts" in m:
        layers = fam._build_qwen3_moe_layers(moe_hidden_dim=m["moe_hidden"], num_experts=m["num_experts"],
                                             top_k=m["top_k"], moe_comm_backend="standard", **common)
    else:
        layers = fam._build_qwen3_layers(hidden_dim=m["ffn_hidden"], **common)
    return fam, _decoder(fam, fam.Qwen3Model, m, layers)


def _deepseek_v3(m, attn_backend):
    fam = importlib.import_module("torchtitan.models.deepseek_v3")
    layers = fam._build_dsv3_layers(
        n_layers=m["n_layers"], n_dense_layers=m["first_dense_layers"], dim=m["dim"], n_heads=m["n_heads"],
        q_lora_rank=m["q_lora_rank"], kv_lora_rank=m["kv_lora_rank"], qk_nope_head_dim=m["qk_nope_head_dim"],
        qk_rope_head_dim=m["qk_rope_head_dim"], v_head_dim=m["v_head_dim"], mscale=m["rope_mscale"],
        dense_hidden_dim=m["ffn_hidden"], moe_hidden_dim=m["moe_hidden"], num_experts=m["num_experts"],
        num_shared_experts=m["num_shared_experts"], router_top_k=m["top_k"], router_score_func=m["score_func"],
        router_num_expert_groups=m["num_expert_groups"], router_num_limited_groups=m["num_limited_groups"],
        router_route_scale=m["route_scale"], router_route_norm=m["route_norm"], attn_backend=attn_backend,
        moe_comm_backend="standard", non_blocking_capacity_factor=None,
        rope=_rope(m, dim=m["qk_rope_head_dim"]))
    mtp = fam._build_mtp_layers(layers[-1], dim=m["dim"], num_mtp_layers=m["mtp_layers"])
    return fam, _decoder(fam, fam.DeepSeekV3Model, m, layers, mtp_layers=mtp)


def _walk(node, seen=None):
    """Every config object below ``node`` (dataclass fields and lists)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, (list, tuple)):
        for item in node:
            yield from _walk(item, seen)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        yield node
        for f in dataclasses.fields(node):
            yield from _walk(getattr(node, f.name), seen)


def _finish(cfg, m):
    """What the family builders leave at their defaults: norm epsilon, router, expert bias."""
    for node in _walk(cfg):
        if isinstance(node, RMSNorm.Config):
            node.eps = m["norm_eps"]
    for layer in list(cfg.layers) + list(getattr(cfg, "mtp_layers", None) or []):
        moe = getattr(layer, "moe", None)
        if moe is None:
            continue
        moe.load_balance_coeff = 1e-3 if m["expert_bias"] else None
        r = moe.router
        r.score_func, r.route_norm, r.route_scale = m["score_func"], m["route_norm"], m["route_scale"]
        r.num_expert_groups, r.num_limited_groups = m["num_expert_groups"], m["num_limited_groups"]
    return cfg


def model_spec():
    m = MODEL
    fam, cfg = {"llama3": _llama3, "qwen3": _qwen3, "deepseek_v3": _deepseek_v3}[m["family"]](m, "flex")
    cfg = _finish(cfg, m)
    if FLOAT8:
        from torchtitan.components.quantization import Float8LinearConverter

        converters = [Float8LinearConverter.Config(model_compile_enabled=ASYNC_TP)]
        validate_converter_order(converters)
        for c in converters:
            cfg = c.build().convert(cfg)
    reference = fam.model_registry("debugmodel")  # the family's parallelize/pipeline/state-dict functions
    return dataclasses.replace(reference, flavor="configurator", model=cfg)


def configurator_job() -> Trainer.Config:
    spec = model_spec()
    vocab = decoder_vocab_size(spec)
    if MODEL.get("mtp_layers"):
        from torchtitan.models.deepseek_v3.mtp import MTPLoss

        loss = MTPLoss.Config(global_vocab_size=vocab)
    else:
        loss = ChunkedLossWrapper.Config(loss_fn=CrossEntropyLoss.Config(global_vocab_size=vocab))
    ac = {"full": FullAC.Config, "selective": SelectiveAC.Config}.get(ACTIVATION_CHECKPOINT)
    return Trainer.Config(
        model_spec=spec,
        loss=loss,
        # Yours to replace (or override on the command line): tokenizer folder, dataset, optimizer, steps.
        hf_assets_path="./assets/hf/tokenizer",
        dataloader=HuggingFaceTextDataLoader.Config(dataset="c4"),
        optimizer=default_adamw(lr=3e-4),
        training=TrainingConfig(steps=1000, **TRAINING),
        parallelism=ParallelismConfig(**PARALLELISM),
        activation_checkpoint=ac() if ac else None,  # None: no activation checkpointing
        compile=CompileConfig(enable=True, components=["model", "loss"], enable_async_tensor_parallel=True)
        if ASYNC_TP else CompileConfig(),
    )
'''


def job_module(model: ModelSpec, job: JobSpec, plan: Plan) -> str:
    s = job_settings(model, job, plan)
    head = [
        f'"""torchtitan {TORCHTITAN_VERSION} job for {s["model"]["name"]}: {s["plan"]} (written by configurator).',
        "",
        f"Run: python -m torchtitan.train --module {JOB_MODULE} --config {JOB_FUNCTION} (this folder on PYTHONPATH;",
        "launch_torchtitan.sh does it). Override anything with --section.key value, e.g. --hf_assets_path DIR",
        "--dataloader.dataset NAME --training.steps N --checkpoint.folder DIR. The model is built with",
        f"torchtitan {TORCHTITAN_VERSION}'s own family builders (some are private helpers of that release).",
        '"""',
        "",
        "MODEL = " + pprint.pformat(s["model"], sort_dicts=False, width=110),
        "PARALLELISM = " + pprint.pformat(s["parallelism"], sort_dicts=False, width=110),
        "TRAINING = " + pprint.pformat(s["training"], sort_dicts=False, width=110),
        f"ACTIVATION_CHECKPOINT = {s['activation_checkpoint']!r}",
        f"ASYNC_TP = {s['async_tp']!r}",
        f"FLOAT8 = {s['float8']!r}",
    ]
    return "\n".join(head) + "\n" + _MODULE_BODY


def user_args() -> list[str]:
    """Placeholders for what the plan does not decide (tokenizer, data, schedule, checkpoints)."""
    return ["--hf_assets_path", "./assets/hf/tokenizer", "--dataloader.dataset", "c4", "--training.steps", "1000",
            "--checkpoint.folder", "checkpoint"]


def launch_script(cluster: ClusterSpec, plan: Plan, placement: Placement, names: tuple[str, ...] = ()) -> str:
    lines = [
        "#!/usr/bin/env bash",
        f"# Per-node launch of torchtitan {TORCHTITAN_VERSION} for this plan (written by configurator).",
        "#   bare metal: on every node   bash launch_torchtitan.sh NODE_RANK [MASTER_ADDR] [MASTER_PORT]",
        "#   Slurm:      sbatch launch_torchtitan.sbatch   (srun runs this once per node)",
        "# Static node ranks, not c10d rendezvous: c10d orders nodes by address and would undo the placement.",
        "# torchtitan's mesh order is pp, dp_replicate, dp_shard, cp, tp (rightmost fastest).",
    ]
    lines += node_prologue("launch_torchtitan.sh", cluster, placement, known_hosts(cluster, names),
                           gpu_orders(cluster, placement), per_node=True)
    lines += [
        'export CUDA_VISIBLE_DEVICES="${GPU_ORDERS[$NODE_RANK]}"',
        f'export PYTHONPATH="$HERE${{PYTHONPATH:+:$PYTHONPATH}}"  # {JOB_MODULE}.py',
        "# Tokenizer, data, schedule and checkpoints are yours: replace these placeholders, e.g.",
        "#   --hf_assets_path DIR_WITH_TOKENIZER --dataloader.dataset NAME --training.steps N --checkpoint.enable",
        "USER_ARGS=(" + " ".join(user_args()) + ")",
        'exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" \\',
        '  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \\',
        f'  -m torchtitan.train --module {JOB_MODULE} --config {JOB_FUNCTION} "${{USER_ARGS[@]}}"',
    ]
    return "\n".join(lines) + "\n"


__all__ = ["FAMILIES", "JOB_FUNCTION", "JOB_MODULE", "family", "job_module", "job_settings", "launch_script",
           "unsupported", "user_args"]
