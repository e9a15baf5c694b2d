"""``plan``'s measured anchor (configurator/anchor.py): the best throughput published for the very job, the
top plan's ratio to it, and the flag when that ratio lies beyond the throughput error band."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from configurator.anchor import (find_measured, load_measured_jobs, measured_job, measured_jobs_table,
                                 predict_measured, shape_of)
from configurator.cost.step import estimate_step
from configurator.memory import estimate_memory
from configurator.profiles import load_cluster, load_model
from configurator.specs.job import JobSpec
from configurator.specs.plan import Plan
from configurator.uncertainty import band_for

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO.parent / "shared" / "data" / "published_runs.csv"

MODEL = load_model("llama3-8b")
CLUSTER = load_cluster("dgx-h100", num_gpus=8)
JOB = JobSpec(global_batch=64, seq_len=8192, precision="bf16")
PLAN = Plan(tp=2, pp=1, dp=4, sp=True, recompute="selective", micro_batch=1)


def _row(**changes: object) -> dict:
    """A hand-built table row: llama3-8b's job on 8 H100 (PLAN, as a Megatron run), measured at 5,000."""
    row = {"run_id": "x1", "source": "hand-built", "model": "Llama3 8B", "published_plan": "TP2 PP1 mb1",
           "shape": shape_of(MODEL), "gpu": "h100-80gb", "system": "dgx-h100", "num_gpus": 8, "global_batch": 64,
           "seq_len": 8192, "precision": "bf16", "measured_tokens_per_s_per_gpu": 5000.0, "plan": PLAN.as_dict(),
           "plan_text": PLAN.describe(), "runtime": "megatron",
           "job": {"moe_routing": "learned", "compiled": True, "cuda_graphs": [], "fused_expert_mlp": False,
                   "fp8_attention": False, "flex_dispatcher_sms": 0}}
    row.update(changes)
    return row


def _top() -> SimpleNamespace:
    """PLAN evaluated as the search evaluates its plans: the object ``measured_job`` reads."""
    return SimpleNamespace(plan=PLAN, memory=estimate_memory(MODEL, CLUSTER, JOB, PLAN),
                           step=estimate_step(MODEL, CLUSTER, JOB, PLAN))


def test_the_same_job_matches_exactly() -> None:
    match = find_measured([_row()], MODEL, "h100-80gb", JOB, 8)
    assert match is not None and match.exact and match.distance == 0.0


@pytest.mark.parametrize("changes", [
    {"seq_len": 4096}, {"gpu": "a100-80gb"}, {"precision": "fp8"},
    {"shape": shape_of(load_model("llama3-70b"))},
    {"shape": {**shape_of(MODEL), "num_kv_heads": 32}},
])
def test_a_different_sequence_gpu_precision_or_shape_does_not_match(changes: dict) -> None:
    assert find_measured([_row(**changes)], MODEL, "h100-80gb", JOB, 8) is None


def test_fp16_and_bf16_are_one_precision_and_the_name_does_not_matter() -> None:
    match = find_measured([_row(precision="fp16", model="some other name")], MODEL, "h100-80gb", JOB, 8)
    assert match is not None and match.exact


def test_without_the_very_job_the_nearest_run_is_taken_and_its_distance_said() -> None:
    # 16 GPUs, GBS 64: 1 doubling away; 64 GPUs, GBS 512: 3 + 3 doublings away
    rows = [_row(run_id="near", num_gpus=16), _row(run_id="far", num_gpus=64, global_batch=512,
                                                   measured_tokens_per_s_per_gpu=9000.0)]
    match = find_measured(rows, MODEL, "h100-80gb", JOB, 8)
    assert match is not None and match.row["run_id"] == "near" and not match.exact and match.distance == 1.0


def test_the_best_run_of_the_job_is_taken() -> None:
    rows = [_row(run_id="slow", measured_tokens_per_s_per_gpu=4000.0), _row(run_id="fast")]
    assert find_measured(rows, MODEL, "h100-80gb", JOB, 8).row["run_id"] == "fast"  # type: ignore[union-attr]


def test_the_flag_fires_when_the_measured_best_lies_below_the_top_plans_p10() -> None:
    top = _top()
    p10 = band_for(MODEL, CLUSTER, JOB, PLAN, "megatron", top.step.tokens_per_s_per_gpu, top.memory.peak_bytes,
                   top.memory.capacity_bytes).tokens_per_s_per_gpu_p10
    below = measured_job(MODEL, CLUSTER, JOB, top, rows=[_row(measured_tokens_per_s_per_gpu=0.99 * p10)])
    above = measured_job(MODEL, CLUSTER, JOB, top, rows=[_row(measured_tokens_per_s_per_gpu=1.01 * p10)])
    assert below is not None and above is not None
    assert below["beyond_band"] and "unproven" in below["line"]
    assert not above["beyond_band"] and "within the error band" in above["line"]
    # the band's upper edge of predicted / measured is predicted / p10
    assert below["band_upper_ratio"] == pytest.approx(top.step.tokens_per_s_per_gpu / p10, abs=1e-3)
    assert below["ratio"] == pytest.approx(1 / 0.99 * top.step.tokens_per_s_per_gpu / p10, abs=1e-3)


def test_no_matching_run_gives_no_anchor() -> None:
    assert measured_job(MODEL, CLUSTER, JOB, _top(), rows=[_row(seq_len=4096)]) is None


def test_the_measured_plan_is_modelled_as_it_ran_on_the_very_job_only() -> None:
    top = _top()
    exact = measured_job(MODEL, CLUSTER, JOB, top, rows=[_row()])
    assert exact is not None
    assert exact["measured_plan_predicted_tokens_per_s_per_gpu"] == pytest.approx(
        estimate_step(MODEL, CLUSTER, JOB, PLAN).tokens_per_s_per_gpu, abs=0.1)
    assert "the model predicts" in exact["line"]
    near = measured_job(MODEL, CLUSTER, JOB, top, rows=[_row(num_gpus=16)])
    assert near is not None and near["measured_plan_predicted_tokens_per_s_per_gpu"] is None
    assert "the nearest job, 16 GPUs and global batch 64 (this one: 8, 64)" in near["line"]


def test_a_measured_plan_illegal_for_the_model_is_not_modelled() -> None:
    match = find_measured([_row(plan={**PLAN.as_dict(), "tp": 3, "dp": 2})], MODEL, "h100-80gb", JOB, 8)
    assert match is not None and predict_measured(MODEL, match, None) is None


def test_the_recipe_job_flags_reach_the_measured_plans_prediction() -> None:
    flags = {**_row()["job"], "compiled": False}
    eager = replace(JOB, compiled=False)
    match = find_measured([_row(job=flags)], MODEL, "h100-80gb", JOB, 8)
    assert match is not None
    assert predict_measured(MODEL, match, None) == pytest.approx(
        estimate_step(MODEL, CLUSTER, eager, PLAN).tokens_per_s_per_gpu)
    assert predict_measured(MODEL, match, None) != pytest.approx(
        estimate_step(MODEL, CLUSTER, JOB, PLAN).tokens_per_s_per_gpu)


def test_the_shipped_table_has_qwen3_30b_on_16_h100_as_measured() -> None:
    rows = [r for r in load_measured_jobs() if r["run_id"] == "r104"]
    assert len(rows) == 1
    assert rows[0]["measured_tokens_per_s_per_gpu"] == 9058.0 and rows[0]["published_plan"] == "TP1 PP2 VPP12 EP8 mb1"
    assert rows[0]["shape"] == shape_of(load_model("qwen3-30b-a3b"))


@pytest.mark.skipif(not RUNS.is_file(), reason="the runs CSV (../shared) is not here")
def test_the_shipped_table_is_what_the_runs_csv_gives() -> None:
    import hashlib

    shipped = json.loads((Path(__file__).resolve().parent.parent / "profiles" / "measured_jobs.json").read_text())
    if shipped["runs_sha256"] != hashlib.sha256(RUNS.read_bytes()).hexdigest():
        pytest.skip("the runs CSV changed since the table was derived")
    assert shipped["jobs"] == json.loads(json.dumps(measured_jobs_table(RUNS))), \
        "regenerate: python -m configurator.anchor --runs ../shared/data/published_runs.csv"


def test_plan_prints_the_measured_job_and_its_json_carries_it() -> None:
    args = ["plan", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100", "--num-gpus", "16", "--seq-len", "4096",
            "--global-batch", "1024", "--precision", "fp8", "--top", "1", "--workers", "1"]
    env = {**os.environ, "COLUMNS": "400"}
    text = subprocess.run([sys.executable, "-m", "configurator.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)
    assert text.returncode == 0, text.stderr
    assert "measured on this job: 9,058 tok/s/GPU (r104, TP1 PP2 VPP12 EP8 mb1" in text.stdout
    proc = subprocess.run([sys.executable, "-m", "configurator.cli", *args, "--json"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    m = out["measured_job"]
    assert m["run_id"] == "r104" and m["exact"] and m["measured_tokens_per_s_per_gpu"] == 9058.0
    top = out["plans"][0]["time"]["tokens_per_s_per_gpu"]
    assert m["top_plan_tokens_per_s_per_gpu"] == pytest.approx(top, rel=1e-4)
    assert m["beyond_band"] == (m["ratio"] > m["band_upper_ratio"])
    assert m["measured_plan_predicted_tokens_per_s_per_gpu"] > 0
    assert m["line"].split(";")[0] in text.stdout.replace("\n", "")


def test_a_top_plan_below_the_measured_best_claims_no_gain() -> None:
    top = _top()
    m = measured_job(MODEL, CLUSTER, JOB, top, rows=[_row(measured_tokens_per_s_per_gpu=2 * top.step.tokens_per_s_per_gpu)])
    assert m is not None and not m["beyond_band"] and m["ratio"] == pytest.approx(0.5, abs=1e-3)
    assert "no gain over it claimed" in m["line"]


def test_the_recipe_flags_the_run_had_and_the_job_lacks_are_said() -> None:
    flags = {**_row()["job"], "cuda_graphs": ["attn", "moe_router"], "fp8_attention": True}
    m = measured_job(MODEL, CLUSTER, JOB, _top(), rows=[_row(job=flags)])
    assert m is not None and m["recipe_differences"] == {"cuda_graphs": ["attn", "moe_router"], "fp8_attention": True}
    assert "its recipe, unlike this job: cuda_graphs=attn+moe_router, fp8_attention=True" in m["line"]
    same = measured_job(MODEL, CLUSTER, JOB, _top(), rows=[_row()])
    assert same is not None and same["recipe_differences"] == {} and "unlike this job" not in same["line"]


def test_plan_json_has_a_null_measured_job_when_no_run_has_the_job() -> None:
    from typer.testing import CliRunner

    from configurator.cli import app

    # llama3-8b is published on H100 at seq 8192 only
    result = CliRunner().invoke(app, ["plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "8",
                                      "--seq-len", "4096", "--global-batch", "64", "--top", "1", "--workers", "1",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["measured_job"] is None


@pytest.mark.parametrize("module", ["configurator.anchor", "configurator.plausibility"])
@pytest.mark.parametrize("content", [None, "a,b\n1,2\n"])
def test_the_table_tools_refuse_bad_runs_in_one_line(tmp_path, module: str, content: str | None) -> None:
    """``python -m configurator.anchor|plausibility --runs FILE`` with a missing file or a CSV without the runs
    columns: one line naming the input, status 2, no traceback, and the shipped table untouched."""
    import subprocess
    import sys

    runs = tmp_path / "runs.csv"
    if content is not None:
        runs.write_text(content)
    table = REPO / ("profiles/measured_jobs.json" if module.endswith("anchor") else "benchmarks/measured_mfu.json")
    before = table.read_bytes()
    done = subprocess.run([sys.executable, "-m", module, "--runs", str(runs)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr
    assert ("no such file" if content is None else "run_id") in lines[0]
    assert table.read_bytes() == before
