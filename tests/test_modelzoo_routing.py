"""The Megatron-MoE model zoo's H100 Qwen3-235B rows ran with ``--moe-router-force-load-balancing`` (the launch
commands published with the table, examples/qwen3/run_235b.sh at 8017e11): they are costed without learned-routing
imbalance though their notes do not say so; other rows of the same repository and other sources are not touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from configurator.cost.constants import load_calibration
from configurator.cost.moe import expert_load_factor
from configurator.runs import read_runs, recipe_forced_balance

RUNS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "published_runs.csv"
H100_TABLE = "Megatron-MoE-ModelZoo Qwen3 best-practice results (NVIDIA MCore MoE team)"


def test_only_the_model_zoo_h100_qwen3_235b_table_is_looked_up() -> None:
    assert recipe_forced_balance(H100_TABLE, "Qwen3-235B-A22B")
    assert not recipe_forced_balance(H100_TABLE, "Qwen3-30B-A3B")
    assert not recipe_forced_balance("Megatron-MoE-ModelZoo Qwen3 results (GB200/GB300)", "Qwen3-235B-A22B")
    assert not recipe_forced_balance("Megatron-Core MoE README (MCore v0.8)", "Qwen3-235B-A22B")


def test_the_table_rows_are_costed_force_balanced_and_say_why() -> None:
    cases = {c.run_id: c for c in read_runs(RUNS) if c.source == H100_TABLE}
    assert len(cases) >= 5
    c = load_calibration()
    for case in cases.values():
        assert case.job.moe_routing == "force_balanced"
        assert any("--moe-router-force-load-balancing" in n for n in case.assumptions)
        # Only the sampling noise of the routed pairs is left: at 1e6 pairs per expert almost no imbalance.
        assert expert_load_factor(case.model, case.plan, case.job, 1e6, c) == pytest.approx(1.0, abs=0.01)
