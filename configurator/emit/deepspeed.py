"""DeepSpeed launch files for a plan: ``ds_config.json``, ``hostfile``, ``launch_deepspeed.sh``.

What DeepSpeed can run, and so what the DeepSpeed search considers (``unsupported`` gives the reason
for anything else, and the emitter refuses rather than writes something wrong):

* data parallel with ZeRO stage 0-3 (``none``, ``zero1``/``distopt`` -> 1, ``zero2``, ``zero3``);
* tensor parallel through AutoTP (``tensor_parallel.autotp_size``), which has no Megatron-style sequence
  parallelism and works with ZeRO stage <= 2;
* pipeline parallel through the pipeline engine (stages are set in the model code's ``PipelineModule``;
  the config's batch numbers must agree), which requires ZeRO stage < 2 and has no interleaved schedule;
* optimizer offload: all of it with any ZeRO stage; a partial ``ratio`` only with ZeRO-3 (with ZeRO-1/2
  a ratio is ignored and everything moves), and with a single sub-group any ratio > 0 offloads
  everything, so ``sub_group_size`` is set to split the states into about 100 groups;
* refused: context parallel (Megatron's ring attention; DeepSpeed's Ulysses all-to-all is another
  algorithm the cost model does not describe), expert parallel (DeepSpeed MoE's ``ep_size`` is an
  argument of ``deepspeed.moe.layer.MoE`` in the model code, not a config key), fp8/fp4 (needs
  Transformer Engine layers in the model code).

``train_batch_size = micro_batch x gradient_accumulation_steps x data-parallel size``, checked by
DeepSpeed's own ``DeepSpeedConfig`` in CI (``tests/validators/``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from configurator.emit.megatron import gpu_orders, hosts
from configurator.emit.shell import known_hosts, node_prologue
from configurator.placement import Placement
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan

ZERO_STAGE = {"none": 0, "zero1": 1, "distopt": 1, "zero2": 2, "zero3": 3}


def job_refusals(job: JobSpec) -> list[str]:
    """Why DeepSpeed can run no plan of ``job`` at all ([] if some plan may run): its precision. The search
    checks this before it starts (``emit.check_framework_runs``): every plan would be refused for it, and a search
    that drops them all would otherwise report that nothing fits memory."""
    if job.precision in ("fp8", "fp4"):
        return [f"{job.precision} training needs Transformer Engine layers in the model code"]
    return []


def unsupported(plan: Plan, job: JobSpec) -> list[str]:
    """Why DeepSpeed cannot run ``plan`` as modelled ([] if it can)."""
    if plan.sharding == "hsdp":
        return ["hsdp: DeepSpeed 0.19 removed MiCS (zero_optimization.mics_shard_size), its only hybrid "
                "shard/replicate ZeRO-3; hpZ shards the optimizer over all ranks"]
    out = []
    stage = ZERO_STAGE[plan.sharding]
    if plan.cp > 1:
        out.append("context parallel (ring attention) is Megatron's; DeepSpeed's Ulysses is a different "
                   "algorithm the cost model does not describe")
    if plan.vpp > 1:
        out.append("DeepSpeed's pipeline engine has no interleaved (virtual-stage) schedule")
    if plan.pp > 1 and stage >= 2:
        out.append(f"DeepSpeed's pipeline engine requires ZeRO stage < 2 (plan has stage {stage})")
    if plan.tp > 1 and stage == 3:
        out.append("AutoTP tensor parallelism works with ZeRO stage <= 2")
    if plan.sp:
        out.append("Megatron-style sequence parallelism (sp) has no DeepSpeed AutoTP equivalent")
    if plan.ep > 1 or plan.etp > 1:
        out.append("expert parallelism is set in DeepSpeed MoE model code (deepspeed.moe.layer.MoE ep_size), "
                   "not in ds_config; emit for Megatron instead")
    out.extend(job_refusals(job))
    if 0 < plan.offload < 1 and stage != 3:
        out.append(f"a partial optimizer offload (ratio {plan.offload:g}) needs ZeRO-3; with stage {stage} "
                   "DeepSpeed offloads all or nothing")
    if plan.tp_overlap:
        out.append("tp_overlap (TP communication/GEMM overlap) is Megatron/Transformer Engine's; AutoTP has none")
    if plan.cuda_graphs:
        out.append("cuda_graphs (Megatron-Core's per-layer Transformer Engine graphs) has no ds_config setting")
    if plan.recompute_modules:
        out.append("recompute_modules names Megatron-Core modules; DeepSpeed checkpoints what the model code wraps")
    if plan.pipeline_layers and plan.pp == 1:
        out.append("pipeline_layers without pipeline parallelism")
    return out


def ds_config(model: ModelSpec, job: JobSpec, plan: Plan) -> dict[str, Any]:
    stage = ZERO_STAGE[plan.sharding]
    accumulation = job.global_batch // (plan.micro_batch * plan.dp)
    cfg: dict[str, Any] = {
        "train_batch_size": job.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": 1.0,
        "steps_per_print": 10,
        "zero_optimization": {"stage": stage},
    }
    if job.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    else:
        cfg["bf16"] = {"enabled": True}
    zero = cfg["zero_optimization"]
    if stage >= 1:
        zero.update(reduce_scatter=True, reduce_bucket_size=int(5e8), allgather_bucket_size=int(5e8),
                    overlap_comm=True, contiguous_gradients=True)
    if stage == 3:
        zero.update(stage3_prefetch_bucket_size=int(5e8), stage3_param_persistence_threshold=int(1e6))

    if plan.offload > 0:
        off: dict[str, Any] = {"device": "cpu", "pin_memory": True}
        if plan.offload < 1:
            off["ratio"] = round(plan.offload, 4)
            # One sub-group would be offloaded whole by any ratio > 0: split the states into ~100 groups.
            params = model.total_params / (plan.tp * plan.pp)
            zero["sub_group_size"] = int(max(1e6, math.ceil(params / 100)))
        zero["offload_optimizer"] = off
    if plan.tp > 1:
        cfg["tensor_parallel"] = {"autotp_size": plan.tp}
    if plan.recompute != "none":
        cfg["activation_checkpointing"] = {"partition_activations": plan.tp > 1, "contiguous_memory_optimization": False,
                                           "cpu_checkpointing": False}
    return cfg


def hostfile(cluster: ClusterSpec, placement: Placement, names: tuple[str, ...] = ()) -> str:
    return "".join(f"{h} slots={cluster.gpus_per_node}\n" for h in hosts(cluster, placement, names))


def launch_script(cluster: ClusterSpec, plan: Plan, placement: Placement, names: tuple[str, ...] = ()) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# DeepSpeed launch for this plan (written by configurator). Run once, on the first host:",
        "#   bare metal: bash launch_deepspeed.sh [TRAINING-SCRIPT ARGS...]   (hosts from --hosts/--hostfile)",
        "#   Slurm:      sbatch launch_deepspeed.sbatch   (hosts from SLURM_JOB_NODELIST)",
        "# The host list is written in placement order and --include pins each node's GPU order, so the",
        "# launcher's ranks (host order x local GPU order) realise the placement. DeepSpeed reaches the",
        "# other nodes with pdsh/ssh (passwordless ssh between the nodes is needed).",
    ]
    if plan.pp > 1:
        lines.append(f"# Pipeline: build the model as deepspeed.pipe.PipelineModule(num_stages={plan.pp}) in train.py.")
    if plan.tp > 1:
        lines.append(f"# Tensor parallel: AutoTP with autotp_size={plan.tp} (ds_config.json tensor_parallel).")
    lines += node_prologue("launch_deepspeed.sh", cluster, placement, known_hosts(cluster, names),
                           gpu_orders(cluster, placement), per_node=False)
    lines += [
        'HOSTFILE="$HERE/hostfile"',
        'if [ -n "${SLURM_JOB_NODELIST:-}" ]; then',
        '  HOSTFILE="$(mktemp "${TMPDIR:-/tmp}/configurator-hostfile.XXXXXX")"',
        '  for r in "${!NODE_ORDER[@]}"; do echo "${NODES[${NODE_ORDER[$r]}]} slots=$NPROC"; done > "$HOSTFILE"',
        "fi",
        'INCLUDE=""',
        'for r in "${!NODE_ORDER[@]}"; do INCLUDE+="${INCLUDE:+@}${NODES[${NODE_ORDER[$r]}]}:${GPU_ORDERS[$r]}"; done',
        'TRAIN_SCRIPT="${TRAIN_SCRIPT:-train.py}"  # your DeepSpeed training script (data, tokenizer, checkpoints)',
        'exec deepspeed --hostfile "$HOSTFILE" --include "$INCLUDE" --master_addr "$MASTER_ADDR" \\',
        '  "$TRAIN_SCRIPT" --deepspeed --deepspeed_config "$HERE/ds_config.json" "$@"',
    ]
    return "\n".join(lines) + "\n"


def ds_config_text(model: ModelSpec, job: JobSpec, plan: Plan) -> str:
    return json.dumps(ds_config(model, job, plan), indent=2) + "\n"


__all__ = ["ZERO_STAGE", "ds_config", "ds_config_text", "hostfile", "launch_script", "unsupported"]
