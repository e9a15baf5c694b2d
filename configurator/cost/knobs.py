"""The plan's communication knobs as the step model sees them: the plan's own choice, or the runtime's
default (``profiles/cost.json``) where the plan leaves it ``None``.

* ``tp_overlap`` - TP all-gather/reduce-scatter overlapped with the GEMMs (Transformer Engine
  userbuffers / async TP); needs tp > 1.
* ``ep_overlap`` - the MoE all-to-all overlapped with another micro-batch's computation.
* ``cp_comm`` - how context-parallel attention exchanges K/V (``cp.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from configurator.cost.constants import RuntimeCost
from configurator.specs.plan import Plan, ep_overlap_conflicts


@dataclass(frozen=True, kw_only=True, slots=True)
class Knobs:
    tp_overlap: bool
    ep_overlap: bool
    cp_comm: str


def effective_knobs(plan: Plan, runtime: RuntimeCost) -> Knobs:
    tp = runtime.tp_comm_overlap if plan.tp_overlap is None else plan.tp_overlap
    # A runtime's default overlap applies only where Megatron-Core can run it (its TransformerConfig asserts).
    ep = (runtime.ep_comm_overlap and not ep_overlap_conflicts(plan)) if plan.ep_overlap is None else plan.ep_overlap
    cp = plan.cp_comm or runtime.cp_comm
    return Knobs(tp_overlap=bool(tp) and plan.tp > 1, ep_overlap=bool(ep) and plan.ep > 1, cp_comm=cp)




def megatron_warnings(plan: Plan, gpu_family: str) -> list[str]:
    """What Megatron-LM warns about for this plan (megatron/training/arguments.py, validate_args): before
    Blackwell, TP/CP want CUDA_DEVICE_MAX_CONNECTIONS=1 while FSDP and the MoE all-to-all overlap want
    it larger, so combining them costs one side its overlap."""
    out = []
    if gpu_family in ("ampere", "hopper") and (plan.tp > 1 or plan.cp > 1):
        if plan.sharding in ("zero3", "hsdp"):
            out.append("FSDP with tensor/context parallelism on Hopper or older: Megatron warns they need "
                       "different CUDA_DEVICE_MAX_CONNECTIONS settings (1 for TP/SP, unset for FSDP)")
        elif plan.ep_overlap:
            out.append("MoE all-to-all overlap with tensor/context parallelism on Hopper or older: Megatron "
                       "warns they need different CUDA_DEVICE_MAX_CONNECTIONS settings")
    if plan.tp_overlap and not plan.sp:
        out.append("TP communication overlap needs sequence parallelism (Megatron asserts it)")
    return out


__all__ = ["Knobs", "effective_knobs", "megatron_warnings"]
