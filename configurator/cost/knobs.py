"""The plan's communication knobs as the step model sees them: the plan's own choice, or the runtime's
default (``profiles/cost.json``) where the plan leaves it ``None``.

* ``tp_overlap`` - TP all-gather/reduce-scatter overlapped with the GEMMs (Transformer Engine
  userbuffers / async TP); needs tp > 1.
* ``ep_overlap`` - the MoE all-to-all overlapped with another micro-batch's computation.
* ``cp_comm`` - how context-parallel attention exchanges K/V (``cp.py``).
* ``ep_dispatcher`` - Megatron's MoE token dispatcher: ``alltoall`` or ``flex`` (DeepEP/HybridEP), which
  sends fewer bytes across nodes (``moe.py``) but whose kernels hold SMs while they run
  (``flex_overlap_compute_slowdown``); only where expert parallelism is on.
"""

from __future__ import annotations

from dataclasses import dataclass

from configurator.cost.constants import RuntimeCost, hardware_default
from configurator.specs.plan import MEGATRON_FSDP_SHARDINGS, Plan, ep_overlap_conflicts


@dataclass(frozen=True, kw_only=True, slots=True)
class Knobs:
    tp_overlap: bool
    ep_overlap: bool
    cp_comm: str
    ep_dispatcher: str = "alltoall"
    cuda_graphs: bool = False
    """The plan captures its layers' scopes in CUDA graphs (``Plan.cuda_graphs``; unset = off)."""


FLEX_DISPATCHER_FAMILIES = ("hopper", "blackwell")
"""GPU families DeepEP/HybridEP run on (DeepEP's README: SM90 Hopper, with SM100 Blackwell added later;
HybridEP targets Hopper and Blackwell NVLink/MNNVL). Older GPUs have only the alltoall dispatcher."""


def flex_dispatcher_available(gpu_family: str) -> bool:
    return gpu_family in FLEX_DISPATCHER_FAMILIES


def effective_knobs(plan: Plan, runtime: RuntimeCost) -> Knobs:
    tp = runtime.tp_comm_overlap if plan.tp_overlap is None else plan.tp_overlap
    # A runtime's default overlap applies only where Megatron-Core can run it (its TransformerConfig asserts).
    ep = (runtime.ep_comm_overlap and not ep_overlap_conflicts(plan)) if plan.ep_overlap is None else plan.ep_overlap
    cp = plan.cp_comm or runtime.cp_comm
    dispatcher = plan.ep_dispatcher or runtime.ep_dispatcher
    return Knobs(tp_overlap=bool(tp) and plan.tp > 1, ep_overlap=bool(ep) and plan.ep > 1, cp_comm=cp,
                 ep_dispatcher=dispatcher, cuda_graphs=bool(plan.cuda_graphs))


def flex_overlap_compute_slowdown(sm_count: int, dispatcher_sms: int = 0) -> float:
    """Share of a GPU's compute lost while the flex dispatcher's kernels run beside it: DeepEP's normal
    (training) kernels are persistent and hold ``s`` SMs for their whole run, so compute overlapping them
    runs on ``(S - s) / S`` of the SMs and takes ``s / S`` of the hidden time longer. ``dispatcher_sms``:
    the ``s`` a job's recipe sets (``JobSpec.flex_dispatcher_sms``; Megatron-Bridge's HybridEP recipes set
    32), 0 = DeepEP's default (cost.json ``flex_dispatcher_sms``, 20). Where the GPU's SM count is unknown,
    NCCL's generic share (``nccl_overlap_compute_slowdown``)."""
    if sm_count <= 0:
        return hardware_default("nccl_overlap_compute_slowdown")
    return min(1.0, (dispatcher_sms or hardware_default("flex_dispatcher_sms")) / sm_count)




def megatron_warnings(plan: Plan, gpu_family: str) -> list[str]:
    """What Megatron-LM warns about for this plan (megatron/training/arguments.py, validate_args): before
    Blackwell, TP/CP want CUDA_DEVICE_MAX_CONNECTIONS=1 while FSDP and the MoE all-to-all overlap want
    it larger, so combining them costs one side its overlap."""
    out = []
    if gpu_family in ("ampere", "hopper") and (plan.tp > 1 or plan.cp > 1):
        if plan.sharding in MEGATRON_FSDP_SHARDINGS:
            # (ZeRO-2 runs as Megatron-FSDP's optim_grads too: validate_args warns on --use-megatron-fsdp)
            out.append("Megatron-FSDP (ZeRO-2/3, HSDP) with tensor/context parallelism on Hopper or older: Megatron "
                       "warns they need different CUDA_DEVICE_MAX_CONNECTIONS settings (1 for TP/SP, unset for "
                       "FSDP); the launch script leaves it unset, which Megatron-FSDP's guide says may slow TP and "
                       "CP communication, a cost the step model does not count")
        elif plan.ep_overlap:
            out.append("MoE all-to-all overlap with tensor/context parallelism on Hopper or older: Megatron "
                       "warns they need different CUDA_DEVICE_MAX_CONNECTIONS settings")
    if plan.tp_overlap and not plan.sp:
        out.append("TP communication overlap needs sequence parallelism (Megatron asserts it)")
    if plan.offload > 0 and plan.sharding in MEGATRON_FSDP_SHARDINGS:
        out.append("optimizer offload under Megatron-FSDP (ZeRO-2/3, HSDP): Megatron-Core 0.19 fails building its "
                   "hybrid CPU optimizer (NVIDIA/Megatron-LM#1986); offload runs with the distributed optimizer")
    if plan.ep_dispatcher == "flex" and not flex_dispatcher_available(gpu_family):
        out.append(f"ep_dispatcher=flex: DeepEP/HybridEP run on Hopper and Blackwell, not on {gpu_family} GPUs")
    return out


__all__ = ["FLEX_DISPATCHER_FAMILIES", "Knobs", "effective_knobs", "flex_dispatcher_available",
           "flex_overlap_compute_slowdown", "megatron_warnings"]
