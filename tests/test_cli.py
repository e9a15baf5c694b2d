"""The command line as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

BASE = ["--cluster", "dgx-h100", "--num-gpus", "8", "--seq-len", "4096", "--global-batch", "64"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "configurator.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_estimate_json_has_interface_keys() -> None:
    proc = run("estimate", "--model", "llama3-8b", *BASE, "--tp", "2", "--pp", "2", "--recompute", "selective",
               "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fits"] is True
    assert set(out["plan"]) >= {"dp", "tp", "pp", "vpp", "cp", "ep", "etp", "sp", "sharding", "recompute",
                                "micro_batch", "global_batch", "offload", "precision", "num_gpus"}
    assert out["plan"]["dp"] == 2 and out["plan"]["sp"] is True
    assert set(out["memory"]["breakdown_gib"]) == {"weights", "grads", "optimizer", "activations", "overhead",
                                                   "ep_buffers"}
    assert len(out["memory"]["per_stage_peak_gib"]) == 2
    t = out["time"]
    assert set(t) >= {"step_s", "tokens_per_s_per_gpu", "model_tflops_per_gpu", "mfu", "breakdown_s"}
    assert set(t["breakdown_s"]) >= {"compute", "pipeline_bubble", "tp_comm", "cp_comm", "ep_comm", "pp_comm",
                                     "dp_comm", "optimizer", "offload"}
    assert sum(t["breakdown_s"].values()) == pytest.approx(t["step_s"], rel=1e-4)
    assert 0 < t["mfu"] < 1


def test_estimate_table_renders() -> None:
    proc = run("estimate", "--model", "mixtral-8x7b", *BASE, "--tp", "2", "--ep", "4", "--recompute", "full")
    assert proc.returncode == 0, proc.stderr
    assert "Memory per GPU" in proc.stdout and "peak" in proc.stdout
    assert "Step time breakdown" in proc.stdout and "tokens/s per GPU" in proc.stdout


def test_models_and_clusters_list_presets() -> None:
    models = json.loads(run("models", "--json").stdout)
    assert {m["name"] for m in models} >= {"llama3-405b", "deepseek-v3", "gpt3-175b"}
    clusters = json.loads(run("clusters", "--json").stdout)
    assert {c["name"] for c in clusters} >= {"dgx-h100", "gb200-nvl72"}


@pytest.mark.parametrize("args, needle", [
    (["--model", "llama9-1b", *BASE], "model='llama9-1b'"),
    (["--model", "llama3-8b", *BASE, "--tp", "3"], "tp*pp*cp=3"),
    (["--model", "llama3-8b", *BASE, "--tp", "0"], "tp=0"),
    (["--model", "llama3-8b", *BASE, "--pp", "3", "--dp", "1", "--tp", "1"], "dp*tp*pp*cp"),
    (["--model", "llama3-8b", *BASE, "--precision", "fp9"], "precision='fp9'"),
    (["--model", "llama3-8b", *BASE, "--sharding", "zero5"], "sharding='zero5'"),
    (["--model", "llama3-8b", *BASE, "--offload", "-0.1"], "offload=-0.1"),
    (["--model", "llama3-8b", *BASE, "--seq-len", "-5"], "seq_len=-5"),
    (["--model", "/no/such/config.json", *BASE], "file not found"),
    (["--model", "llama3-8b", "--cluster", "dgx-h900", "--num-gpus", "8", "--seq-len", "8", "--global-batch", "8"],
     "cluster='dgx-h900'"),
    (["--model", "llama3-8b", "--cluster", "dgx-a100", "--num-gpus", "8", "--seq-len", "8", "--global-batch", "8",
      "--precision", "fp8"], "not supported"),
])
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    proc = run("estimate", *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_malformed_config_json(tmp_path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    proc = run("estimate", "--model", str(bad), *BASE)
    assert proc.returncode == 2 and "num_attention_heads" in proc.stderr and "Traceback" not in proc.stderr


def test_non_integer_option_exits_2() -> None:
    proc = run("estimate", "--model", "llama3-8b", *BASE, "--tp", "two")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_validate_refuses_to_overwrite(tmp_path, published_runs) -> None:
    out = tmp_path / "pred.csv"
    out.write_text("keep me")
    proc = run("validate", "--runs", str(published_runs), "--out", str(out))
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert out.read_text() == "keep me"


def _tiny_runs(published_runs, tmp_path, n: int = 12):  # type: ignore[no-untyped-def]
    import csv

    rows = [r for r in csv.DictReader(published_runs.open()) if r["measured_tokens_per_s_per_gpu"]][:n]
    path = tmp_path / "runs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_calibrate_writes_constants_and_refuses_to_overwrite(tmp_path, published_runs) -> None:
    runs = _tiny_runs(published_runs, tmp_path)
    out = tmp_path / "cal.json"
    proc = run("calibrate", "--runs", str(runs), "--out", str(out), "--no-cv", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["fit"]["rows"] == 12 and data["fit"]["cross_validated"] is None
    assert json.loads(proc.stdout)["constants"] == data["constants"]
    # The fitted file is usable as --calibration.
    est = run("estimate", "--model", "llama3-8b", *BASE, "--calibration", str(out), "--json")
    assert est.returncode == 0, est.stderr
    again = run("calibrate", "--runs", str(runs), "--out", str(out), "--no-cv")
    assert again.returncode == 2 and "--force" in again.stderr


def test_calibrate_bad_input_is_one_line(tmp_path) -> None:
    proc = run("calibrate", "--runs", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "c.json"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "missing.csv" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    est = run("estimate", "--model", "llama3-8b", *BASE, "--calibration", str(bad))
    assert est.returncode == 2 and "constants" in est.stderr and "Traceback" not in est.stderr


def test_validate_report_writes_page_and_plots(tmp_path, published_runs) -> None:
    runs = _tiny_runs(published_runs, tmp_path, n=30)
    report = tmp_path / "report"
    proc = run("validate", "--runs", str(runs), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    page = (report / "validation.md").read_text()
    assert "median absolute error" in page and "![throughput](throughput.png)" in page
    for name in ("throughput.png", "memory.png", "error_by_group.png"):
        assert (report / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((report / "summary.json").read_text())["throughput"]["predicted_rows"] >= 27
    again = run("validate", "--runs", str(runs), "--report", str(report))
    assert again.returncode == 2 and "--force" in again.stderr


def test_plan_json_lists_ranked_plans_and_the_search() -> None:
    # The model's own order (the default ranks by the error band's p25 under an OOM-risk limit:
    # tests/test_uncertainty.py).
    proc = run("plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "16", "--seq-len", "4096",
               "--global-batch", "64", "--top", "3", "--objective", "mean", "--oom-risk", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["plans"]) == 3
    assert set(out["search"]) >= {"candidates", "feasible", "evaluated", "seconds", "method"}
    steps = [p["time"]["step_s"] for p in out["plans"]]
    assert steps == sorted(steps)
    best = out["plans"][0]
    assert best["fits"] and best["vs_best"] == "best" and best["placement"]["node_order"] == [0, 1]
    assert "slower" in out["plans"][1]["vs_best"] or out["plans"][1]["time"]["step_s"] == best["time"]["step_s"]


def test_plan_table_renders() -> None:
    proc = run("plan", "--model", "llama3-70b", "--cluster", "dgx-h100", "--num-gpus", "8", "--seq-len", "4096",
               "--global-batch", "32", "--top", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Best plans" in proc.stdout and "offload" in proc.stdout and "search: exhaustive" in proc.stdout


def test_a_capped_study_says_its_ranking_is_not_proven_and_a_complete_search_does_not() -> None:
    args = ("plan", "--model", "llama3-70b", "--cluster", "dgx-h100", "--num-gpus", "64", "--seq-len", "4096",
            "--global-batch", "256", "--top", "1")
    capped = run(*args, "--method", "optuna", "--trials", "3")
    full = run(*args)
    assert capped.returncode == 0 and full.returncode == 0, capped.stderr + full.stderr
    assert "not proven optimal" in " ".join(capped.stdout.split()) and "not proven optimal" not in full.stdout


def test_plan_exits_3_when_nothing_fits() -> None:
    proc = run("plan", "--model", "llama3-405b", "--cluster", "dgx-h100", "--num-gpus", "8", "--seq-len", "8192",
               "--global-batch", "16")
    assert proc.returncode == 3
    assert "no plan fits" in proc.stderr and "GiB of 79.6" in proc.stderr and "Traceback" not in proc.stderr


def test_a_study_that_tried_few_structures_does_not_claim_that_no_plan_fits() -> None:
    """Two Optuna trials on DeepSeek-V3/256 H100 find nothing that fits, among 18,343 structures most of which were
    never tried (plans do fit: ``test_emit``'s 60-trial study finds them): no plan found, not "no plan fits"."""
    proc = run("plan", "--model", "deepseek-v3", "--cluster", "dgx-h100", "--num-gpus", "256", "--seq-len", "4096",
               "--global-batch", "1024", "--method", "optuna", "--trials", "2", "--top", "1", "--json")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: no plan found:"), proc.stderr
    assert "--trials" in proc.stderr and "no plan fits" not in proc.stderr
    assert json.loads(proc.stdout)["search"]["complete"] is False


@pytest.mark.parametrize(("args", "needle"), [
    (["--method", "annealing"], "method='annealing'"),
    (["--top", "0"], "top=0"),
    (["--precision", "fp4"], "precision='fp4'"),
    (["--runtime", "jax"], "runtime='jax'"),
])
def test_plan_bad_input_exits_2(args: list[str], needle: str) -> None:
    proc = run("plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "8", "--seq-len", "4096",
               "--global-batch", "64", *args)
    assert proc.returncode == 2, proc.stdout
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_probe_prints_the_torchrun_line_and_checks_ranks() -> None:
    proc = run("probe", "--out", "c.json", "--nodes", "4", "--node-rank", "2", "--master-addr", "10.0.0.1",
               "--nproc-per-node", "8")
    assert proc.returncode == 0, proc.stderr
    assert "--nnodes 4 --node-rank 2 --nproc-per-node 8 --master-addr 10.0.0.1" in proc.stdout
    assert "-m cluster_probes --out c.json" in proc.stdout
    bad = run("probe", "--out", "c.json", "--nodes", "4", "--node-rank", "4", "--master-addr", "10.0.0.1")
    assert bad.returncode == 2 and "node_rank=4" in bad.stderr
