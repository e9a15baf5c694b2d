"""The plan-quality gate: `configurator bench --check` against the committed golden file, and the
gate's own logic on doctored golden files (each kind of regression must be caught)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from configurator.bench import compare, load_scenarios, run_scenario
from configurator.cost.constants import load_calibration
from configurator.errors import InputError

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "benchmarks" / "golden.json"
SCENARIOS = REPO / "benchmarks" / "scenarios.json"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "configurator.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


SUBSET = ("llama3-70b-h100-8-memory-tight", "qwen3-30b-a3b-gb200-8-fp8")
"""Scenarios checked in-process besides the CLI's ``--only llama3-8b`` (dense on H100, 128k context on
B200, a slow-node cluster): a memory-tight job and an fp8 MoE job. The full gate over every scenario is
``configurator bench --check`` (~3 min idle), run by ``.ci/run`` after the tests."""


def test_bench_check_passes_on_a_representative_subset() -> None:
    proc = cli("bench", "--check", "--json", "--only", "llama3-8b")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    out = json.loads(proc.stdout)
    assert out["failures"] == []
    names = {s["name"] for s in out["scenarios"]}
    assert {"llama3-8b-h100-8", "llama3-8b-b200-128k-context", "llama3-8b-8-nodes-slow-node"} <= names
    for s in out["scenarios"]:
        assert s["best"] is not None and s["best"]["fits"], s["name"]
        assert {"candidates", "evaluated", "seconds", "method"} <= set(s["search"])
    scenarios = [s for s in load_scenarios(SCENARIOS) if s.name in SUBSET]
    results = [run_scenario(s, load_calibration()) for s in scenarios]
    assert compare(results, json.loads(GOLDEN.read_text()), scenarios) == []
    tight = next(r for r in results if "memory-tight" in r["name"])
    assert tight["best"]["plan"]["offload"] > 0 or tight["best"]["plan"]["recompute"] != "none"


def test_golden_scenarios_cover_what_the_issue_asks_for() -> None:
    """Coverage of the full gate (from the golden file, without running it): dense and MoE, five GPU
    generations, 8 to 16,384 GPUs, long context, a memory-tight job, two measured-style clusters."""
    golden = {g["name"]: g["best"]["plan"] for g in json.loads(GOLDEN.read_text())["scenarios"]}
    scenarios = load_scenarios(SCENARIOS)
    assert len(scenarios) >= 15 and set(golden) == {s.name for s in scenarios}
    assert {"a100-80gb", "h100-80gb", "h200", "b200", "gb200"} <= {s.ctx.cluster.gpu.key for s in scenarios}
    sizes = [s.ctx.num_gpus for s in scenarios]
    assert min(sizes) == 8 and max(sizes) == 16384
    assert any(golden[s.name]["cp"] > 1 and s.name.endswith("128k-context") for s in scenarios)
    assert any(golden[s.name]["ep"] > 1 for s in scenarios)
    assert any("memory-tight" in s.name for s in scenarios)
    assert sum(1 for s in scenarios if s.ctx.cluster.name.startswith("slow-")) == 2


def test_golden_changes_are_recorded_in_the_changelog() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert golden["updated"]["reason"] in (REPO / "CHANGELOG.md").read_text()


@pytest.fixture(scope="module")
def small_run() -> tuple[list, list, dict]:
    scenarios = [s for s in load_scenarios(SCENARIOS) if s.name == "llama3-8b-h100-8"]
    results = [run_scenario(scenarios[0], load_calibration())]
    golden = json.loads(GOLDEN.read_text())
    golden = {"scenarios": [g for g in golden["scenarios"] if g["name"] == "llama3-8b-h100-8"]}
    return scenarios, results, golden


def test_compare_passes_on_the_golden_values(small_run) -> None:  # type: ignore[no-untyped-def]
    scenarios, results, golden = small_run
    assert compare(results, golden, scenarios) == []


def test_compare_catches_a_throughput_drop(small_run) -> None:  # type: ignore[no-untyped-def]
    scenarios, results, golden = small_run
    better = copy.deepcopy(golden)
    better["scenarios"][0]["best"]["tokens_per_s_per_gpu"] *= 1.01  # golden 1% faster than now
    failures = compare(results, better, scenarios)
    assert len(failures) == 1 and "dropped 0.99%" in failures[0]
    within = copy.deepcopy(golden)
    within["scenarios"][0]["best"]["tokens_per_s_per_gpu"] *= 1.004  # a 0.4% drop is tolerated
    assert compare(results, within, scenarios) == []


def test_compare_catches_a_lost_plan_a_misfit_and_a_slower_search(small_run) -> None:  # type: ignore[no-untyped-def]
    scenarios, results, golden = small_run
    none_now = copy.deepcopy(results)
    none_now[0]["best"] = None
    assert "now none fits" in compare(none_now, golden, scenarios)[0]
    misfit = copy.deepcopy(golden)
    misfit["scenarios"][0]["best"]["plan"].update(tp=1, pp=1, dp=8, cp=1, sharding="none", recompute="none",
                                                  micro_batch=8, offload=0.0)
    assert any("no longer fits memory" in f for f in compare(results, misfit, scenarios))
    cheaper = copy.deepcopy(golden)
    cheaper["scenarios"][0]["evaluated"] = max(1, results[0]["search"]["evaluated"] // 3)
    assert any("more than 2x" in f for f in compare(results, cheaper, scenarios))


def test_update_needs_a_reason_and_check_needs_a_golden_file(tmp_path) -> None:
    proc = cli("bench", "--update", "--only", "llama3-8b-h100-8")
    assert proc.returncode == 2 and "reason" in proc.stderr
    proc = cli("bench", "--check", "--golden", str(tmp_path / "none.json"), "--only", "llama3-8b-h100-8")
    assert proc.returncode == 2 and "none.json" in proc.stderr


def test_scenario_file_is_checked_strictly(tmp_path) -> None:
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"scenarios": [{"name": "x", "model": "llama3-8b", "cluster": "dgx-h100",
                                              "num_gpus": 8, "seq_len": 4096, "global_batch": 64, "gpus": 3}]}))
    with pytest.raises(InputError, match="gpus"):
        load_scenarios(bad)
