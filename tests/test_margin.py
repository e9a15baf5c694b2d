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


def test_a_stricter_oom_risk_widens_the_default_margin_and_a_looser_one_keeps_it() -> None:
    model = load_error_model()
    for risk in (0.02, 0.01):
        margin = default_margin(risk)
        assert margin.fraction > default_margin().fraction
        assert (1 - margin.fraction) * model.memory_headroom(TAGS, risk) <= 1.0, risk
    assert default_margin(0.2).fraction == default_margin(DEFAULT_OOM_RISK).fraction == default_margin().fraction


def test_plan_keeps_a_stricter_oom_risk_without_flagging_its_leader() -> None:
    """``plan --oom-risk 0.01`` without ``--memory-margin``: the search keeps the margin that risk needs, so the
    leader is under it (with the 5% default margin, 15%, the leader was at 4.6% and flagged)."""
    from typer.testing import CliRunner

    from configurator.cli import app

    args = ["plan", "--model", "qwen3-235b-a22b", "--cluster", "dgx-h100", "--num-gpus", "64", "--seq-len", "4096",
            "--global-batch", "1024", "--top", "3", "--oom-risk", "0.01", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    plans = json.loads(result.output[result.output.index("{"):])["plans"]
    assert plans and not plans[0]["rank"]["over_oom_risk_limit"] and plans[0]["oom_risk"] <= 0.01


def test_the_service_keeps_the_margin_its_request_risk_needs() -> None:
    from configurator.service.jobs import search_context

    request = {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 8, "global_batch": 64, "seq_len": 4096}
    assert search_context(request, None).memory_margin.fraction == default_margin().fraction
    assert search_context({**request, "oom_risk": 0.01}, None).memory_margin.fraction == default_margin(0.01).fraction
    assert search_context({**request, "oom_risk": 0.01, "memory_margin": "10%"}, None).memory_margin.fraction == 0.10
