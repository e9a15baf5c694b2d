"""What changes in the launch files when the cluster's GPUs are AMD Instinct (ROCm).

Upstream Megatron-LM's arguments stay the same on ROCm: AMD's Megatron-LM fork (github.com/ROCm/Megatron-LM)
and Primus-Megatron (github.com/AMD-AGI/Primus, which drives the same Megatron arguments from its YAML) run
``pretrain_gpt.py`` with them in AMD's ``rocm/megatron-lm`` / ``rocm/primus`` containers. What differs:

* the environment: RCCL reads NCCL's ``NCCL_*`` variables; AMD's Megatron training scripts set the HIP/RCCL
  variables below (``HSA_NO_SCRATCH_RECLAIM``, ``GPU_MAX_HW_QUEUES``, ``TORCH_NCCL_HIGH_PRIORITY``,
  ``NCCL_PROTO=Simple``, ``RCCL_MSCCL_ENABLE=0``, RoCE's ``NCCL_IB_GID_INDEX=3``); the NIC list
  (``NCCL_IB_HCA``) is the site's and stays a placeholder;
* ``CUDA_DEVICE_MAX_CONNECTIONS=1``: Megatron asserts it with TP or CP > 1 when the device's major compute
  capability is below 10, and ROCm reports 9 for gfx942 (MI300X/MI325X) and gfx950 (MI355X) alike;
* refused by name: ``--tp-comm-overlap`` (Transformer Engine userbuffers are CUDA-only; ROCm's Transformer
  Engine does not ship them) and fp4 (Megatron's fp4 recipe is NVFP4 through Transformer Engine on CUDA;
  MI355X runs MXFP4, which Megatron-LM does not emit).

DeepSpeed and torchtitan run on ROCm as they are (ROCm wheels of PyTorch; torchtitan's Float8 converter
accepts gfx942+); only the environment lines are added.
"""

from __future__ import annotations

from configurator.errors import InputError
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.plan import Plan

RCCL_ENV: tuple[tuple[str, str, str], ...] = (
    ("HSA_NO_SCRATCH_RECLAIM", "1", "keep kernel scratch memory allocated (AMD's training scripts)"),
    ("GPU_MAX_HW_QUEUES", "2", "fewer HIP hardware queues, as AMD's Megatron scripts set"),
    ("TORCH_NCCL_HIGH_PRIORITY", "1", "RCCL streams at high priority, so communication overlaps compute"),
    ("NCCL_CHECKS_DISABLE", "1", "skip RCCL argument checks"),
    ("NCCL_PROTO", "Simple", "RCCL's Simple protocol, as AMD's Megatron scripts set"),
    ("RCCL_MSCCL_ENABLE", "0", "MSCCL algorithms off (AMD's Megatron scripts)"),
    ("NCCL_IB_GID_INDEX", "3", "RoCE v2 GID (drop on InfiniBand)"),
    ("NCCL_CROSS_NIC", "0", "keep rings on one NIC per rail"),
)


def refusals(cluster: ClusterSpec, plan: Plan, job: JobSpec, framework: str) -> list[str]:
    """Reasons a framework cannot run ``plan`` on this cluster's GPUs (empty on NVIDIA)."""
    if cluster.gpu.vendor != "amd":
        return []
    out = []
    if framework == "megatron" and plan.tp_overlap:
        out.append("--tp-comm-overlap needs Transformer Engine userbuffers, which ROCm's Transformer Engine "
                   "does not have")
    if framework == "megatron" and job.precision == "fp4":
        out.append("Megatron-LM's fp4 is NVFP4 through Transformer Engine on CUDA; AMD Instinct runs MXFP4, "
                   "which Megatron-LM does not emit")
    return out


def env_lines(cluster: ClusterSpec, plan: Plan, script: str, framework: str = "megatron") -> list[str]:
    """Lines to add to a launch script on AMD GPUs (none on NVIDIA)."""
    if cluster.gpu.vendor != "amd":
        return []
    container = {"megatron": "AMD's rocm/megatron-lm or rocm/primus container (AMD's Megatron-LM fork or "
                             "Primus-Megatron)",
                 "torchtitan": "a ROCm build of PyTorch with torchtitan"}.get(framework,
                                                                         "a ROCm build of PyTorch and DeepSpeed")
    lines = [f"# AMD Instinct ({cluster.gpu.name}, ROCm): run this in {container}; RCCL reads the NCCL_* "
             "variables."]
    if "export CUDA_VISIBLE_DEVICES=" in script:
        lines.append('export HIP_VISIBLE_DEVICES="$CUDA_VISIBLE_DEVICES"  # HIP honours both; set both for '
                     "tools that read one")
    lines += [f"export {name}={value}  # {why}" for name, value, why in RCCL_ENV]
    lines.append("# export NCCL_IB_HCA=...  # your RDMA NICs, one per GPU (site-specific)")
    fsdp = plan.sharding in ("zero2", "zero3")
    if framework == "megatron" and (plan.tp > 1 or plan.cp > 1) and not fsdp \
            and "CUDA_DEVICE_MAX_CONNECTIONS=1" not in script:
        lines.append("export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron asserts it with TP/CP > 1: ROCm reports "
                     "compute capability 9.x")
    return lines


def adapt(files: dict[str, str], cluster: ClusterSpec, plan: Plan, job: JobSpec) -> dict[str, str]:
    """The emitted files with the vendor's changes; an ``InputError`` naming the framework that cannot run
    the plan on these GPUs."""
    for name, framework in (("launch_megatron.sh", "megatron"), ("launch_deepspeed.sh", "deepspeed"),
                            ("launch_torchtitan.sh", "torchtitan")):
        if name not in files:
            continue
        reasons = refusals(cluster, plan, job, framework)
        if reasons:
            raise InputError("emit", framework, f"cannot run {plan.describe()} on {cluster.gpu.key} (ROCm): "
                             f"{reasons[0]}")
        extra = env_lines(cluster, plan, files[name], framework)
        if extra:
            lines = files[name].splitlines()
            at = next(i for i, line in enumerate(lines) if line.startswith("exec ") or line.startswith("# Data,"))
            files[name] = "\n".join(lines[:at] + extra + lines[at:]) + "\n"
    return files


__all__ = ["RCCL_ENV", "adapt", "env_lines", "refusals"]
