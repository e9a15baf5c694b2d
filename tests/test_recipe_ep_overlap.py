"""The MoE all-to-all overlap that Megatron-Bridge's performance recipes turn on (``moe_a2a_overlap``),
looked up per published row (runs.recipe_ep_overlap), and what it changes in the step: the hidden share
``overlap.ep`` of the expert-parallel all-to-all leaves the ep_comm term."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from configurator.cost.step import estimate_step
from configurator.cost.constants import load_calibration
from configurator.runs import RunCase, read_runs, recipe_ep_overlap
from configurator.validate import predict

BRIDGE = "Megatron-Bridge performance summary (NeMo {} container)"


def test_recipe_overlap_follows_the_config_at_the_container_and_its_layout() -> None:
    # 26.04.01 (v0.4.2): DEEPSEEK_V3_PRETRAIN_CONFIG_B200_FP8_MX_V2 is PP8 VP2 EP32 with moe_a2a_overlap=True.
    assert recipe_ep_overlap(BRIDGE.format("26.04.01"), "DeepSeekV3", "dgx-b200", "fp8", (1, 8, 2, 32), 4096)
    # 26.04 (v0.4.0) shipped only the PP16 EP8 B200 config, without the overlap.
    assert not recipe_ep_overlap(BRIDGE.format("26.04"), "DeepSeekV3", "dgx-b200", "fp8", (1, 8, 2, 32), 4096)
    # Qwen3-235B H100 TP2 PP8 VP4 EP32 sets it in every release; another layout does not take it.
    assert recipe_ep_overlap(BRIDGE.format("25.11"), "Qwen3_235B_a22B", "dgx-h100", "fp8", (2, 8, 4, 32), 4096)
    assert not recipe_ep_overlap(BRIDGE.format("25.11"), "Qwen3_235B_a22B", "dgx-b200", "fp8", (1, 8, 2, 8), 4096)
    # 26.08's MXFP8 full-iteration recipes on GB200/GB300 set overlap_moe_expert_parallel_comm.
    assert recipe_ep_overlap(BRIDGE.format("26.08"), "Qwen3_30B_a3B", "gb300-nvl72", "fp8", (1, 1, 1, 8), 4096)
    assert not recipe_ep_overlap(BRIDGE.format("26.08"), "Qwen3_30B_a3B", "gb300-nvl72", "bf16", (1, 1, 1, 8), 4096)
    # Other sources never: their rows say it in the ep_overlap column or notes.
    assert not recipe_ep_overlap("Megatron-MoE-ModelZoo Qwen3 best-practice results", "Qwen3-235B-A22B",
                                 "dgx-h100", "bf16", (2, 8, 4, 32), 4096)


def _case(runs: Path, run_id: str) -> RunCase:
    return next(c for c in read_runs(runs) if c.run_id == run_id)


def test_recipe_overlap_is_recorded_on_the_row(published_runs: Path) -> None:
    case = _case(published_runs, "r142")  # NeMo 25.11, Qwen3-235B H100 TP2 PP8 VP4 EP32: the recipe's layout
    assert case.plan is not None and case.plan.ep_overlap is True
    assert any("moe_a2a_overlap" in a for a in case.assumptions)
    other = _case(published_runs, "r136")  # NeMo 25.11, Qwen3-235B B200 PP8 VP2 EP8: not the config's VP4
    assert other.plan is not None and other.plan.ep_overlap is None


def test_recipe_overlap_hides_overlap_ep_of_the_all_to_all(published_runs: Path) -> None:
    case = _case(published_runs, "r063")  # NeMo 26.08, Qwen3-30B GB300 EP8 MXFP8, one pipeline stage
    assert case.plan is not None and case.plan.ep_overlap is True
    c = load_calibration()
    on = predict(case, c).step
    off = estimate_step(case.model, case.cluster, case.job, replace(case.plan, ep_overlap=False),
                        runtime=case.runtime, constants=c)
    assert on is not None
    # Hand: ep_comm = m * layers * (fwd + bwd) * raw all-to-all * (1 - hidden share); the raw time is the same.
    # The hidden share is overlap.ep of the passes the combined 1F1B pairs: (m - 1) / m without pipelining.
    m = on.num_microbatches
    assert m == 512 // 8 // case.plan.micro_batch
    assert on.term("ep_comm") == pytest.approx(off.term("ep_comm") * (1 - c["overlap.ep"] * (m - 1) / m), rel=1e-9)
    assert on.step_s < off.step_s
