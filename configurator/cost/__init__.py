"""Step-time model: ``estimate_step(model, cluster, job, plan, placement) -> StepReport``.

Modules: ``work`` (FLOPs, bytes and message sizes of a micro-batch), ``compute`` (GPU efficiency
curves), ``comm`` (alpha-beta collectives on the placed links), ``schedule`` (pipeline simulation),
``step`` (puts them together), ``constants`` (calibrated efficiencies and runtime mechanisms),
``calibrate`` (fits the efficiencies to measured runs).
"""

from configurator.cost.constants import CostConstants, load_calibration
from configurator.cost.step import BREAKDOWN_TERMS, StepReport, estimate_step, evaluate, prepare

__all__ = ["BREAKDOWN_TERMS", "CostConstants", "StepReport", "estimate_step", "evaluate", "load_calibration",
           "prepare"]
