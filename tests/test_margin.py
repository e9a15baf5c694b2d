"""The default memory margin comes from the validation data (configurator/margin.py): the larger of the validation
report's p90 |memory error| and the headroom at which a plan filling memory to the margin has the ranking's OOM-risk
limit, rounded up to a whole percent. A plan at the default margin's edge is within that limit."""

from __future__ import annotations

import json
import math
from pathlib import Path

from configurator.margin import default_margin
from configurator.ranking import DEFAULT_OOM_RISK
from configurator.uncertainty import load_error_model

REPO = Path(__file__).resolve().parent.parent
TAGS = {"gpu_family": "hopper", "precision": "bf16", "moe": "moe", "ep_across_nodes": "yes", "cp": "no",
        "zero3": "no", "offload": "yes", "runtime": "megatron", "scale": "<=64"}


def _figures_pct() -> tuple[float, float]:
    summary = json.loads((REPO / "benchmarks/validation/summary.json").read_text())
    p90 = float(summary["memory"]["p90_abs_error_pct"])
    headroom = load_error_model().memory_headroom(TAGS, DEFAULT_OOM_RISK)
    return p90, 100 * (1 - 1 / headroom)


def test_the_default_margin_is_the_larger_figure_rounded_up() -> None:
    p90, risk = _figures_pct()
    assert default_margin().fraction * 100 == math.ceil(max(p90, risk) - 1e-9)


def test_a_plan_filling_memory_to_the_default_margin_keeps_the_oom_risk_limit() -> None:
    """Its predicted peak times the memory band's 95th percentile stays within capacity: ``oom_risk`` <= 5%."""
    model = load_error_model()
    fill = 1 - default_margin().fraction
    for tags in (TAGS, {**TAGS, "moe": "dense", "gpu_family": "blackwell", "scale": ">512", "zero3": "yes"}):
        assert fill * model.memory_headroom(tags, DEFAULT_OOM_RISK) <= 1.0
