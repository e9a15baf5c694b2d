"""GPT-OSS 120B's Megatron-Bridge performance rows get the token dispatcher their container's recipe ran (issue 12):
HybridEP (``flex``) where the GPT-OSS workload config or perf recipe sets ``moe_flex_dispatcher_backend="hybridep"``,
else the alltoall dispatcher that ``gpt_oss_120b_pretrain_config`` sets (runs.py ``_gpt_oss_dispatcher`` cites the
tags and commits)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from configurator.runs import case_from_row, recipe_dispatcher

RUNS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "published_runs.csv"
GPT_OSS = "GPT OSS 120B"


def _src(container: str) -> str:
    return f"Megatron-Bridge performance summary (NeMo {container} container)"


def test_gpt_oss_dispatcher_follows_each_containers_recipe() -> None:
    # 26.08 (v0.6.0): the fp8 full-iteration configs of GB200 and GB300 set flex + hybridep; bf16 does not.
    assert recipe_dispatcher(_src("26.08"), GPT_OSS, "gb300-nvl72", "fp8", 1280) == "flex"
    assert recipe_dispatcher(_src("26.08"), GPT_OSS, "gb200-nvl72", "fp8", 1280) == "flex"
    assert recipe_dispatcher(_src("26.08"), GPT_OSS, "gb300-nvl72", "bf16", 1280) is None
    # 26.04 (v0.4.0): the GBS-1280 configs of GB200, B200 and B300 set hybridep; the GBS-512 ones do not.
    assert recipe_dispatcher(_src("26.04"), GPT_OSS, "gb200-nvl72", "bf16", 1280) == "flex"
    assert recipe_dispatcher(_src("26.04"), GPT_OSS, "dgx-b200", "bf16", 1280) == "flex"
    assert recipe_dispatcher(_src("26.04"), GPT_OSS, "gb200-nvl72", "bf16", 512) is None
    # 26.04.01 (v0.4.2) switched GB200 and B200 back to alltoall, B300 keeps hybridep.
    assert recipe_dispatcher(_src("26.04.01"), GPT_OSS, "gb200-nvl72", "bf16", 1280) is None
    assert recipe_dispatcher(_src("26.04.01"), GPT_OSS, "dgx-b200", "bf16", 1280) is None
    assert recipe_dispatcher(_src("26.04.01"), GPT_OSS, "dgx-b300", "bf16", 1280) == "flex"
    # 25.11 and 26.02 set no backend for GPT-OSS; H100 never.
    assert recipe_dispatcher(_src("26.02"), GPT_OSS, "dgx-b200", "bf16", 1280) is None
    assert recipe_dispatcher(_src("25.11"), GPT_OSS, "gb300-nvl72", "bf16", 1280) is None
    assert recipe_dispatcher(_src("26.04.01"), GPT_OSS, "dgx-h100", "bf16", 1280) is None
    # Other sources are not read from Megatron-Bridge's recipes at all.
    assert recipe_dispatcher("torchtitan", GPT_OSS, "gb300-nvl72", "fp8", 1280) is None


def test_published_gpt_oss_rows_take_the_recipes_dispatcher() -> None:
    if not RUNS.exists():
        pytest.skip("shared/data/published_runs.csv not present")
    with RUNS.open(newline="") as f:
        rows = {r["run_id"]: r for r in csv.DictReader(f) if r["run_id"] in ("r061", "r090", "r089", "r109", "r117", "r093")}
    cases = {rid: case_from_row(row) for rid, row in rows.items()}
    r061 = cases["r061"]  # GB300 MXFP8 EP16, 26.08
    assert r061.plan.ep_dispatcher == "flex"
    assert any("dispatcher flex" in a and "the recipe" in a for a in r061.assumptions)
    # 26.04.01 GB200/GB300 (r090, r089), 26.02 B200 (r109), 25.11 GB300 (r117), H100 (r093): alltoall (the default).
    assert all(cases[r].plan.ep_dispatcher is None for r in ("r090", "r089", "r109", "r117", "r093"))
