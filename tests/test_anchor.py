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

from configurator.anchor import (REACH_GPU_RATIO, batch_per_gpu_allowance, find_measured, load_measured_jobs,
                                 measured_job, measured_jobs_table, predict_measured, shape_of)
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


def _p10(top: SimpleNamespace) -> float:
    return band_for(MODEL, CLUSTER, JOB, PLAN, "megatron", top.step.tokens_per_s_per_gpu, top.memory.peak_bytes,
                    top.memory.capacity_bytes).tokens_per_s_per_gpu_p10


@pytest.mark.parametrize("num_gpus", [4, 16])
def test_a_run_one_doubling_away_in_gpus_at_the_same_batch_per_gpu_still_flags(num_gpus: int) -> None:
    # the job: 8 GPUs, GBS 64 = 8 sequences per GPU; the run: half or twice the GPUs at 8 per GPU
    top = _top()
    m = measured_job(MODEL, CLUSTER, JOB, top, rows=[_row(num_gpus=num_gpus, global_batch=8 * num_gpus,
                                                           measured_tokens_per_s_per_gpu=0.99 * _p10(top))])
    assert m is not None and not m["exact"] and m["judges_claim"] and m["gpu_ratio"] == 2.0
    assert m["batch_per_gpu_ratio"] == 1.0 and m["allowed_ratio"] == m["band_upper_ratio"]
    assert m["unproven"] and m["beyond_band"] and "unproven" in m["line"] and "too far" not in m["line"]


@pytest.mark.parametrize("num_gpus", [2, 32])
def test_a_run_beyond_one_doubling_in_gpus_is_context_without_the_flag(num_gpus: int) -> None:
    """4x fewer or more GPUs at the same batch per GPU, measured far below the top plan's p10: the ratio is beyond
    the band (a fact, ``beyond_band``), but the run is too far to judge the claim, so no "unproven". Without the
    cutoff this run would flag."""
    top = _top()
    m = measured_job(MODEL, CLUSTER, JOB, top, rows=[_row(num_gpus=num_gpus, global_batch=8 * num_gpus,
                                                           measured_tokens_per_s_per_gpu=0.5 * _p10(top))])
    assert m is not None and m["gpu_ratio"] == 4.0 > REACH_GPU_RATIO
    assert m["beyond_band"] and not m["judges_claim"] and not m["unproven"]
    assert "unproven" not in m["line"] and "beyond the error band" not in m["line"]
    assert "too far from this job to judge the claim: 4x apart in GPU count" in m["line"]
    assert f"the nearest job, {num_gpus} GPUs and global batch {8 * num_gpus} (this one: 8, 64)" in m["line"]


def test_a_run_within_reach_anchors_before_a_nearer_one_beyond_it() -> None:
    # 32 GPUs at GBS 64: 2 doublings away, 4x the GPUs; 16 GPUs at GBS 512: 1 + 3 doublings away, within reach
    rows = [_row(run_id="far", num_gpus=32), _row(run_id="reach", num_gpus=16, global_batch=512)]
    match = find_measured(rows, MODEL, "h100-80gb", JOB, 8)
    assert match is not None and match.row["run_id"] == "reach" and match.judges and match.distance == 4.0
    only_far = find_measured(rows[:1], MODEL, "h100-80gb", JOB, 8)
    assert only_far is not None and only_far.row["run_id"] == "far" and not only_far.judges


def test_a_run_at_a_smaller_batch_per_gpu_widens_the_band_by_the_batch_ratio() -> None:
    """Same GPUs, half the global batch: each GPU of the job runs twice the micro-batches, which can buy up to 2x
    (the fixed per-step costs fully amortized), so the flag needs the ratio beyond 2 x the band's edge; a run at
    twice the batch per GPU gets no allowance (the job cannot be faster than the run's easier job)."""
    top = _top()
    p10 = _p10(top)
    assert batch_per_gpu_allowance(2.0) == 2.0 and batch_per_gpu_allowance(0.5) == 1.0
    inside = measured_job(MODEL, CLUSTER, JOB, top, rows=[_row(global_batch=32,
                                                                measured_tokens_per_s_per_gpu=p10 / 1.9)])
    beyond = measured_job(MODEL, CLUSTER, JOB, top, rows=[_row(global_batch=32,
                                                                measured_tokens_per_s_per_gpu=p10 / 2.1)])
    assert inside is not None and beyond is not None
    assert inside["batch_per_gpu_ratio"] == 2.0 and inside["allowed_ratio"] == pytest.approx(
        2 * inside["band_upper_ratio"], abs=2e-3)
    assert inside["beyond_band"] and not inside["unproven"] and "unproven" not in inside["line"]
    assert (f"beyond the error band (x{inside['band_upper_ratio']:.2f}) but within x{inside['allowed_ratio']:.2f} "
            f"with the gain this job's 2.00x larger batch per GPU allows") in inside["line"]
    assert beyond["unproven"] and "2.00x larger batch per GPU allows): unproven" in beyond["line"]
    larger = measured_job(MODEL, CLUSTER, JOB, top, rows=[_row(global_batch=128,
                                                                measured_tokens_per_s_per_gpu=0.99 * p10)])
    assert larger is not None and larger["batch_per_gpu_ratio"] == 0.5 and larger["unproven"]
    assert larger["allowed_ratio"] == larger["band_upper_ratio"] and "larger batch per GPU" not in larger["line"]


def test_gpt3_on_1024_a100_is_too_far_from_the_64_gpu_run_to_judge() -> None:
    """The shipped table's only GPT-3 175B run on A100 is r013 (64 GPUs, GBS 64): 16x fewer GPUs than the
    scenario gpt3-175b-a100-1024 (GBS 1536), the nearest run, context only."""
    job = JobSpec(global_batch=1536, seq_len=2048, precision="fp16")
    match = find_measured(load_measured_jobs(), load_model("gpt3-175b"), "a100-80gb", job, 1024)
    assert match is not None and match.row["run_id"] == "r013" and match.gpu_ratio == 16.0 and not match.judges


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
    assert m["judges_claim"] and m["unproven"] == m["beyond_band"] and m["allowed_ratio"] == m["band_upper_ratio"]
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
