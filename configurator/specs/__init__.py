"""Frozen, self-validating specs: model, hardware, job and plan."""

from configurator.specs.hardware import ClusterSpec, GPUSpec, LinkSpec, NodeInfo
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan, check_plan, plan_violations, resolve_plan

__all__ = ["ClusterSpec", "GPUSpec", "JobSpec", "LinkSpec", "ModelSpec", "NodeInfo", "Plan",
           "check_plan", "plan_violations", "resolve_plan"]
