"""Emitted launch files: checked by Megatron-LM's and DeepSpeed's own validators, golden files, refusals.

The validators run in a separate environment built by ``bash .ci/validators.sh`` (torch CPU, DeepSpeed,
the Megatron-Core 0.19 sources); ``.ci/run`` builds it and sets CONFIGURATOR_REQUIRE_VALIDATORS=1, so in CI
a missing environment fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.bench import load_scenarios, reference_plan
from configurator.emit import EmitRequest, emit, files_for
from configurator.emit.deepspeed import unsupported
from configurator.errors import InputError
from configurator.search.resolve import resolve
from configurator.specs.plan import balanced_layout, plan_from_dict, plan_violations

REPO = Path(__file__).resolve().parent.parent
VALIDATOR_PYTHON = REPO / ".venv-validators" / "bin" / "python"
MEGATRON_SOURCES = REPO / ".validators" / "megatron-core"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "emit"


@pytest.fixture(scope="session")
def validators() -> Path:
    if VALIDATOR_PYTHON.exists() and (MEGATRON_SOURCES / "megatron" / "training").is_dir():
        return VALIDATOR_PYTHON
    message = "validators environment missing: run `bash .ci/validators.sh`"
    if os.environ.get("CONFIGURATOR_REQUIRE_VALIDATORS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def run_megatron(specs: list[str]) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(MEGATRON_SOURCES))
    proc = subprocess.run([str(VALIDATOR_PYTHON), str(REPO / "tests/validators/megatron_check.py"), *specs],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(specs), proc.stderr[-3000:]
    return lines


def run_deepspeed(specs: list[str]) -> list[dict]:
    proc = subprocess.run([str(VALIDATOR_PYTHON), str(REPO / "tests/validators/deepspeed_check.py"), *specs],
                          capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(specs), proc.stderr[-3000:]
    return lines


def _request(model: str, cluster: str, gpus: int, seq: int, gbs: int, plan: Plan, precision: str = "bf16") -> EmitRequest:
    m, c = load_model(model), load_cluster(cluster, num_gpus=gpus)
    job = JobSpec(global_batch=gbs, seq_len=seq, precision=precision)
    assert not plan_violations(m, job, plan, gpus), plan_violations(m, job, plan, gpus)
    return EmitRequest(model=m, cluster=c, job=job, plan=plan)


MEGATRON_CASES = {
    "llama3-8b-fsdp": ("llama3-8b", "dgx-h100", 16, 4096, 64, Plan(dp=16, sharding="zero2", micro_batch=2), "bf16"),
    "llama3-70b-tp-cp-vpp": ("llama3-70b", "dgx-h100", 64, 8192, 128,
                             Plan(tp=4, pp=4, vpp=5, cp=2, dp=2, sp=True, recompute="full", recompute_num_layers=2), "bf16"),
    "llama3-405b-uneven-fp8": ("llama3-405b", "dgx-h100", 1024, 8192, 512,
                               Plan(tp=8, pp=16, dp=8, sp=True, recompute="full",
                                    pipeline_layers=balanced_layout(126, 16)), "fp8"),
    "llama3-70b-offload": ("llama3-70b", "dgx-h100", 8, 4096, 32,
                           Plan(tp=2, pp=4, vpp=7, dp=1, sp=True, recompute="full", offload=0.87, micro_batch=2,
                                pipeline_layers=balanced_layout(80, 4, 7)), "bf16"),
    "mixtral-etp": ("mixtral-8x7b", "dgx-h100", 64, 4096, 256, Plan(tp=2, pp=4, vpp=8, dp=8, ep=8, etp=2, sp=True), "bf16"),
    "deepseek-v3-mla": ("deepseek-v3", "dgx-b200", 256, 4096, 4096,
                        Plan(tp=1, pp=8, vpp=2, dp=32, ep=32, pipeline_layers=balanced_layout(61, 8, 2)), "fp8"),
    "gpt3-sc21": ("gpt3-175b", "dgx-a100", 1024, 2048, 1536, Plan(tp=8, pp=16, vpp=3, dp=8, sp=True), "fp16"),
    "qwen3-30b-fp4": ("qwen3-30b-a3b", "gb200-nvl72", 8, 4096, 512, Plan(dp=8, ep=8, micro_batch=4), "fp4"),
}


def test_megatron_accepts_emitted_plans_of_every_kind(validators, tmp_path) -> None:  # type: ignore[no-untyped-def]
    specs = []
    for name, (model, cluster, gpus, seq, gbs, plan, precision) in MEGATRON_CASES.items():
        request = _request(model, cluster, gpus, seq, gbs, plan, precision)
        emit(request, "megatron", tmp_path / name)
        specs.append(f"{tmp_path / name}:{gpus}:{request.cluster.gpu.family}")
    results = run_megatron(specs)
    bad = [(r["dir"], r.get("error")) for r in results if not r["ok"]]
    assert not bad, bad
    by_name = {Path(r["dir"]).name: r for r in results}
    # Megatron's own rank groups agree with ours (tp-cp-dp-pp, leftmost fastest).
    assert by_name["llama3-70b-tp-cp-vpp"]["groups"]["tp"][0] == [0, 1, 2, 3]
    assert by_name["llama3-70b-tp-cp-vpp"]["groups"]["cp"][0] == [0, 4]
    assert by_name["llama3-70b-tp-cp-vpp"]["groups"]["dp"][0] == [0, 8]
    assert by_name["llama3-70b-tp-cp-vpp"]["groups"]["pp"][0] == [0, 16, 32, 48]
    assert by_name["llama3-70b-offload"]["offload_fraction"] == pytest.approx(0.87)
    assert by_name["mixtral-etp"]["groups"]["ep"][0] == [0, 2, 4, 6, 8, 10, 12, 14]


def test_megatron_accepts_the_benchmark_scenarios_best_and_reference_plans(validators, tmp_path) -> None:  # type: ignore[no-untyped-def]
    golden = json.loads((REPO / "benchmarks" / "golden.json").read_text())
    scenarios = {s.name: s for s in load_scenarios(REPO / "benchmarks" / "scenarios.json")}
    specs = []
    for entry in golden["scenarios"]:
        s = scenarios[entry["name"]]
        ctx = s.ctx
        plans = {"best": plan_from_dict(entry["best"]["plan"])}
        if s.reference:
            structure = reference_plan(ctx, s.reference)
            options = resolve(ctx, structure).options if not plan_violations(ctx.model, ctx.job, structure,
                                                                              ctx.num_gpus) else ()
            if options:
                plans["reference"] = options[0].plan
        for label, plan in plans.items():
            out = tmp_path / f"{s.name}-{label}"
            emit(EmitRequest(model=ctx.model, cluster=ctx.cluster, job=ctx.job, plan=plan), "megatron", out)
            specs.append(f"{out}:{ctx.num_gpus}:{ctx.cluster.gpu.family}")
    results = run_megatron(specs)
    bad = [(Path(r["dir"]).name, r.get("error")) for r in results if not r["ok"]]
    assert not bad, bad
    assert len(specs) >= 30


def test_megatron_rejects_a_broken_plan(validators, tmp_path) -> None:  # type: ignore[no-untyped-def]
    request = _request("llama3-8b", "dgx-h100", 8, 4096, 64, Plan(tp=2, pp=2, dp=2, sp=True))
    emit(request, "megatron", tmp_path / "ok")
    broken = tmp_path / "broken"
    emit(request, "megatron", broken)
    args = (broken / "megatron_args.txt").read_text()
    # 16 layers per stage cannot be cut into virtual stages of 3 layers.
    (broken / "megatron_args.txt").write_text(args + "--num-layers-per-virtual-pipeline-stage\n3\n")
    no_env = tmp_path / "no-env"
    emit(request, "megatron", no_env)
    launch = (no_env / "launch_megatron.sh").read_text()
    (no_env / "launch_megatron.sh").write_text(launch.replace("export CUDA_DEVICE_MAX_CONNECTIONS=1", "# removed"))
    ok, bad, env = run_megatron([f"{tmp_path / 'ok'}:8:hopper", f"{broken}:8:hopper", f"{no_env}:8:hopper"])
    assert ok["ok"]
    assert not bad["ok"] and "virtual pipeline" in bad["error"]
    assert not env["ok"] and "CUDA_DEVICE_MAX_CONNECTIONS" in env["error"]


DEEPSPEED_CASES = {
    "zero3-partial-offload": ("llama3-70b", "dgx-h100", 64, 8192, 256,
                              Plan(dp=64, sharding="zero3", recompute="full", offload=0.4, micro_batch=2)),
    "pipeline-zero1": ("llama3-70b", "dgx-h100", 64, 4096, 256, Plan(pp=8, dp=8, sharding="zero1", recompute="full")),
    "autotp-zero2": ("llama3-8b", "dgx-h100", 16, 4096, 64, Plan(tp=2, dp=8, sharding="zero2")),
}


def test_deepspeed_accepts_emitted_configs_and_rejects_a_broken_one(validators, tmp_path) -> None:  # type: ignore[no-untyped-def]
    specs = []
    for name, (model, cluster, gpus, seq, gbs, plan) in DEEPSPEED_CASES.items():
        emit(_request(model, cluster, gpus, seq, gbs, plan), "deepspeed", tmp_path / name)
        specs.append(f"{tmp_path / name}:{plan.dp}")
    broken = tmp_path / "broken"
    emit(_request("llama3-8b", "dgx-h100", 16, 4096, 64, Plan(tp=2, dp=8, sharding="zero2")), "deepspeed", broken)
    cfg = json.loads((broken / "ds_config.json").read_text())
    cfg["gradient_accumulation_steps"] += 1  # breaks train_batch = micro x accumulation x dp
    (broken / "ds_config.json").write_text(json.dumps(cfg))
    results = run_deepspeed([*specs, f"{broken}:8"])
    assert all(r["ok"] for r in results[:-1]), results
    assert not results[-1]["ok"] and "train_batch_size" in results[-1]["error"]
    by_name = {Path(r["dir"]).name: r for r in results}
    assert by_name["zero3-partial-offload"]["offload_ratio"] == pytest.approx(0.4)
    assert by_name["pipeline-zero1"]["gradient_accumulation_steps"] == 32


def test_deepspeed_refuses_what_it_cannot_run() -> None:
    job = JobSpec(global_batch=64, seq_len=8192)
    assert "context parallel" in unsupported(Plan(cp=2, dp=4), job)[0]
    assert "interleaved" in unsupported(Plan(pp=2, vpp=2, dp=4), job)[0]
    assert "ZeRO stage < 2" in unsupported(Plan(pp=2, dp=4, sharding="zero2"), job)[0]
    assert "needs ZeRO-3" in unsupported(Plan(dp=8, sharding="zero1", offload=0.5), job)[0]
    assert unsupported(Plan(dp=8, sharding="zero3", offload=0.5), job) == []
    request = _request("llama3-8b", "dgx-h100", 8, 8192, 64, Plan(cp=2, dp=4))
    with pytest.raises(InputError, match="cannot run"):
        files_for(request, "deepspeed")


def test_sub_group_size_splits_the_states_for_a_partial_ratio() -> None:
    request = _request("llama3-70b", "dgx-h100", 64, 8192, 256,
                       Plan(dp=64, sharding="zero3", recompute="full", offload=0.4, micro_batch=2))
    cfg = json.loads(files_for(request, "deepspeed")["ds_config.json"])
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"]["ratio"] == 0.4
    assert zero["sub_group_size"] * 50 < request.model.total_params  # many groups, so the ratio can apply


@pytest.mark.parametrize("case", ["llama3-70b-tp-cp-vpp", "mixtral-etp"])
def test_megatron_files_match_golden(case: str) -> None:
    model, cluster, gpus, seq, gbs, plan, precision = MEGATRON_CASES[case]
    files = files_for(_request(model, cluster, gpus, seq, gbs, plan, precision), "megatron")
    for name, text in files.items():
        golden = GOLDEN_DIR / case / name
        if os.environ.get("CONFIGURATOR_UPDATE_GOLDEN") == "1":
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{golden} differs (CONFIGURATOR_UPDATE_GOLDEN=1 rewrites it)"


def test_deepspeed_files_match_golden() -> None:
    model, cluster, gpus, seq, gbs, plan = DEEPSPEED_CASES["zero3-partial-offload"]
    files = files_for(_request(model, cluster, gpus, seq, gbs, plan), "deepspeed")
    for name, text in files.items():
        golden = GOLDEN_DIR / "zero3-partial-offload" / name
        if os.environ.get("CONFIGURATOR_UPDATE_GOLDEN") == "1":
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{golden} differs (CONFIGURATOR_UPDATE_GOLDEN=1 rewrites it)"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "configurator.cli", *args], capture_output=True, text=True, timeout=300)


def test_plan_emit_writes_the_best_plan_and_never_overwrites_silently(tmp_path) -> None:
    out = tmp_path / "launch"
    base = ["plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "16", "--seq-len", "4096",
            "--global-batch", "64", "--json"]
    proc = cli(*base, "--emit", "all", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["megatron_args.txt", "launch_megatron.sh", "placement.txt", "ds_config.json",
                            "hostfile", "launch_deepspeed.sh"])
    best = json.loads(proc.stdout)["plans"][0]["plan"]
    assert best["cp"] == 1 and best["vpp"] == 1 and best["sp"] is False  # a plan DeepSpeed can run
    assert os.access(out / "launch_megatron.sh", os.X_OK)
    again = cli(*base, "--emit", "megatron", "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    assert cli(*base, "--emit", "megatron", "--out", str(out), "--force").returncode == 0
    lone = cli(*base, "--emit", "megatron")
    assert lone.returncode == 2 and "--out" in lone.stderr


def test_emit_command_for_a_given_plan(tmp_path) -> None:
    out = tmp_path / "e"
    proc = cli("emit", "--model", "llama3-70b", "--cluster", "dgx-h100", "--num-gpus", "64", "--seq-len", "8192",
               "--global-batch", "128", "--tp", "4", "--pp", "4", "--vpp", "5", "--cp", "2", "--framework", "megatron",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    args = (out / "megatron_args.txt").read_text().split()
    assert args[args.index("--num-layers-per-virtual-pipeline-stage") + 1] == "4"
    assert "--context-parallel-size" in args and "--sequence-parallel" in args
    assert "export CUDA_DEVICE_MAX_CONNECTIONS=1" in (out / "launch_megatron.sh").read_text()
    refused = cli("emit", "--model", "llama3-70b", "--cluster", "dgx-h100", "--num-gpus", "64", "--seq-len", "8192",
                  "--global-batch", "128", "--tp", "4", "--pp", "4", "--vpp", "5", "--cp", "2",
                  "--framework", "deepspeed", "--out", str(tmp_path / "d"))
    assert refused.returncode == 2 and "cannot run" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "d").exists()
