"""configurator: pick the parallelism plan for training an LLM on a GPU cluster, without a GPU.

Public API (everything else is internal):

    from configurator import load_model, load_cluster, JobSpec, Plan, estimate_memory
    model = load_model("llama3-8b")
    cluster = load_cluster("dgx-h100", num_gpus=8)
    job, plan = JobSpec(global_batch=64, seq_len=4096), Plan(tp=2, pp=2, dp=2, sp=True)
    memory = estimate_memory(model, cluster, job, plan)        # per-stage memory, fits or not
    step = estimate_step(model, cluster, job, plan)            # step time with its breakdown

The plan search is ``configurator.search.optimize.search``; launch files ``configurator.emit.emit``.
"""

from configurator.cost import StepReport, estimate_step
from configurator.errors import InputError
from configurator.memory import MemoryReport, StageMemory, estimate_memory
from configurator.profiles import load_cluster, load_model
from configurator.specs import ClusterSpec, GPUSpec, JobSpec, ModelSpec, Plan, check_plan, plan_violations

__all__ = ["ClusterSpec", "GPUSpec", "InputError", "JobSpec", "MemoryReport", "ModelSpec", "Plan",
           "StageMemory", "StepReport", "check_plan", "estimate_memory", "estimate_step", "load_cluster", "load_model",
           "plan_violations"]
__version__ = "0.1.0"
