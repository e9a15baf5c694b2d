"""torchtitan 0.3.0 target: the emitted launch script runs (stub torchrun), torchtitan's own ConfigManager parses
and validates what it launched, the device mesh builds on a fake process group of the plan's size, the model
builds on the meta device, and its fields (and parameter count) equal the ModelSpec. One validator process
checks every shape and preset (tests/validators/torchtitan_check.py; the environment comes from
``bash .ci/validators.sh``)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.emit import TORCHTITAN_FILES, EmitRequest, emit, files_for
from configurator.emit.torchtitan import family, job_settings, unsupported
from configurator.errors import InputError
from configurator.profiles import model_names
from configurator.specs.model import ModelSpec
from configurator.specs.plan import balanced_layout, plan_violations

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch_stubs import option, run_script  # noqa: E402
from validator_env import VALIDATOR_PYTHON, require, run_checker  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def torchtitan_env() -> Path:
    probe = subprocess.run([str(VALIDATOR_PYTHON), "-c", "import importlib.util as u, sys; sys.exit(not all("
                            "u.find_spec(m) for m in ('torchtitan', 'tyro', 'torchao', 'spmd_types')))"],
                           capture_output=True) if VALIDATOR_PYTHON.exists() else None
    require(probe is not None and probe.returncode == 0, "torchtitan validators environment")
    return VALIDATOR_PYTHON


def run_torchtitan(specs: list[str]) -> list[dict]:
    return run_checker("torchtitan_check.py", specs)


def no_aux_loss(name: str) -> ModelSpec:
    """A preset MoE trained with torchtitan's balancing only (it has no auxiliary loss)."""
    return replace(load_model(name), moe_aux_loss_coeff=0.0)


def _request(model: ModelSpec | str, cluster: str, gpus: int, seq: int, gbs: int, plan: Plan,
             precision: str = "bf16") -> EmitRequest:
    m = load_model(model) if isinstance(model, str) else model
    job = JobSpec(global_batch=gbs, seq_len=seq, precision=precision)
    assert not plan_violations(m, job, plan, gpus), plan_violations(m, job, plan, gpus)
    return EmitRequest(model=m, cluster=load_cluster(cluster, num_gpus=gpus), job=job, plan=plan)


CASES = {
    "dense-gqa-tp-selective": ("llama3-8b", "dgx-h100", 8, 8192, 64,
                               Plan(tp=2, dp=4, sp=True, sharding="zero3", recompute="selective"), "bf16"),
    "dense-mha-zero2-full": ("llama2-7b", "dgx-h100", 8, 4096, 64,
                             Plan(dp=8, sharding="zero2", recompute="full", micro_batch=2), "bf16"),
    "cp": ("llama3-8b", "dgx-h100", 16, 32768, 16, Plan(tp=2, cp=4, dp=2, sp=True, sharding="zero3",
                                                         cp_comm="all_gather"), "bf16"),
    "pp-uneven": ("llama3-405b", "dgx-h100", 256, 8192, 64,
                  Plan(tp=8, pp=16, dp=2, sp=True, sharding="zero3", recompute="full",
                       pipeline_layers=balanced_layout(126, 16)), "bf16"),
    "vpp-uneven-async-tp": ("llama3-70b", "dgx-h100", 64, 4096, 128,
                            Plan(tp=4, pp=4, vpp=3, dp=4, sp=True, sharding="zero3", tp_overlap=True,
                                 micro_batch=2, pipeline_layers=balanced_layout(80, 4, 3)), "bf16"),
    "fp8": ("llama3-8b", "dgx-h100", 8, 8192, 64, Plan(dp=8, sharding="zero3"), "fp8"),
    "hsdp": ("llama3-8b", "dgx-h100", 16, 4096, 64, Plan(dp=16, sharding="hsdp", shard_group=8), "bf16"),
    "offload": ("llama3-70b", "dgx-h100", 8, 4096, 32, Plan(dp=8, sharding="zero3", offload=1.0,
                                                            recompute="full"), "bf16"),
    "moe-ep": (no_aux_loss("qwen3-30b-a3b"), "dgx-h100", 16, 4096, 256,
               Plan(tp=2, dp=8, ep=8, sp=True, sharding="zero3"), "bf16"),
    "mla-mtp-ep": (no_aux_loss("deepseek-v3"), "dgx-b200", 256, 4096, 1024,
                   Plan(dp=256, ep=64, sharding="zero3", recompute="full"), "fp8"),
}


def expected_model(model: ModelSpec, seq_len: int) -> dict:
    """Each ModelSpec field as torchtitan's model config must hold it."""
    out: dict = {"dim": model.hidden_size, "vocab_size": model.vocab_size, "n_layers": model.num_layers,
                 "tied_embeddings": model.tied_embeddings, "n_heads": model.num_attention_heads,
                 "rope_theta": float(model.rope_base), "rope_max_seq_len": seq_len,
                 "rope_scaling": {"": "none", "llama3": "llama", "yarn": "yarn"}[model.rope_scaling],
                 "norm_eps": [model.norm_eps], "mtp_layers": model.mtp_layers, "qk_norm": model.qk_norm,
                 "params": model.total_params + model.mtp_params}
    if model.rope_scaling:
        out.update(rope_scaling_factor=model.rope_scaling_factor, rope_original=model.rope_original_max_positions)
    if model.rope_scaling == "llama3":
        out.update(rope_low_freq=1.0, rope_high_freq=4.0)
    if model.attention == "mla":
        out.update(q_lora_rank=model.q_lora_rank, kv_lora_rank=model.kv_lora_rank,
                   qk_nope_head_dim=model.qk_nope_head_dim, qk_rope_head_dim=model.qk_rope_head_dim,
                   v_head_dim=model.v_head_dim, mscale=model.rope_mscale_all_dim)
    else:
        out.update(n_kv_heads=model.num_kv_heads, head_dim=model.kv_channels)
    if not model.is_moe or model.first_dense_layers:
        out["ffn_hidden"] = model.ffn_hidden_size
    if model.is_moe:
        out.update(num_experts=model.num_experts, top_k=model.moe_topk, score_func=model.moe_router_score,
                   route_norm=model.moe_norm_topk_prob, route_scale=model.moe_routed_scaling_factor,
                   num_expert_groups=model.moe_router_num_groups or None,
                   num_limited_groups=model.moe_router_group_topk or None, expert_bias=model.moe_router_expert_bias,
                   moe_hidden=model.moe_ffn_hidden_size, first_dense_layers=model.first_dense_layers,
                   moe_layers=model.num_moe_layers, moe_layers_alike=True,
                   shared_hidden=model.shared_expert_ffn_hidden_size
                   or model.num_shared_experts * model.moe_ffn_hidden_size)
    return out


def assert_model_equal(result: dict, model: ModelSpec, seq_len: int) -> None:
    got = result["model"]
    want = expected_model(model, seq_len)
    diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    assert not diff, (result["dir"], diff)


def launched(out: Path, root: Path, *args: str, env: dict[str, str] | None = None) -> Path:
    proc, launches = run_script(out / "launch_torchtitan.sh", *args, root=root, env=env,
                                record=root / "records" / out.name)
    assert proc.returncode == 0 and launches, proc.stderr
    argv = launches[0].argv
    assert argv[argv.index("-m") + 1:argv.index("-m") + 6] == ["torchtitan.train", "--module", "torchtitan_job",
                                                                 "--config", "configurator_job"]
    assert launches[0].env["PYTHONPATH"].split(":")[0] == str(out)
    return launches[0].prefix


def test_torchtitan_accepts_every_plan_shape_and_preset_it_can_run(torchtitan_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    specs, requests = [], {}
    for name, (model, cluster, gpus, seq, gbs, plan, precision) in CASES.items():
        request = _request(model, cluster, gpus, seq, gbs, plan, precision)
        emit(request, "torchtitan", tmp_path / name)
        # node rank 0 of a multi-node plan, under Slurm for one of them (srun runs one launch per node)
        if name == "hsdp":
            proc, launches = run_script(tmp_path / name / "launch_torchtitan.sbatch", root=tmp_path,
                                        env={"SLURM_JOB_NODELIST": "gpu1,gpu2"}, record=tmp_path / "records" / name)
            assert proc.returncode == 0 and len(launches) == 2, proc.stderr
            assert [option(x.argv, "--node-rank") for x in launches] == ["0", "1"]
            assert {option(x.argv, "--master-addr") for x in launches} == {"gpu1"}
            record = launches[0].prefix
        else:
            record = launched(tmp_path / name, tmp_path, "0", "10.0.0.1")
        requests[str(record)] = (name, request)
        specs.append(f"{record}:{request.cluster.gpu.family}")
    presets = [p for p in model_names() if _runs(p)]
    assert {"llama2-7b", "llama3-8b", "llama3-405b"} <= set(presets)
    covered = {m for m, *_ in CASES.values() if isinstance(m, str)}
    for preset in sorted(set(presets) - covered):  # every runnable preset is checked once
        request = _request(preset, "dgx-b200", 8, 4096, 64, Plan(dp=8, sharding="zero3"))
        emit(request, "torchtitan", tmp_path / f"preset-{preset}")
        record = launched(tmp_path / f"preset-{preset}", tmp_path, "0", "10.0.0.1")
        requests[str(record)] = (preset, request)
        specs.append(f"{record}:blackwell")
    # The searched best plan (--emit torchtitan searches what torchtitan runs) goes through the same checks.
    searched = tmp_path / "searched"
    proc = cli("plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "16", "--seq-len", "32768",
               "--global-batch", "32", "--emit", "torchtitan", "--out", str(searched), "--json")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in searched.iterdir()) == sorted(["MANIFEST", *TORCHTITAN_FILES])
    answer = json.loads(proc.stdout)
    for row in answer["plans"]:
        assert row["plan"]["sharding"] in ("zero3", "zero2") and row["plan"]["etp"] == 1
        assert row["plan"]["cp"] == 1 or row["plan"]["cp_comm"] == "all_gather"
    searched_record = launched(searched, tmp_path, "0", "10.0.0.1")
    specs.append(f"{searched_record}:hopper")
    # A deliberately broken job (TP 3 on 8 GPUs, 32 heads) must be rejected by torchtitan's own checks.
    broken = tmp_path / "broken"
    emit(_request("llama3-8b", "dgx-h100", 8, 4096, 64, Plan(dp=8, sharding="zero3")), "torchtitan", broken)
    job = broken / "torchtitan_job.py"
    text = job.read_text()
    assert "'tensor_parallel_degree': 1," in text
    job.write_text(text.replace("'tensor_parallel_degree': 1,", "'tensor_parallel_degree': 3,"))
    broken_record = launched(broken, tmp_path, "0", "10.0.0.1")
    specs.append(f"{broken_record}:hopper")
    results = run_torchtitan(specs)
    broken_result = next(r for r in results if r["dir"] == str(broken_record))
    results.remove(broken_result)
    assert not broken_result["ok"] and "tp(3)" in broken_result["error"], broken_result
    searched_result = next(r for r in results if r["dir"] == str(searched_record))
    results.remove(searched_result)
    assert searched_result["ok"], searched_result
    best = answer["plans"][0]["plan"]
    assert searched_result["degrees"]["tp"] == best["tp"] and searched_result["degrees"]["cp"] == best["cp"]
    assert searched_result["degrees"]["pp"] == best["pp"]
    assert_model_equal(searched_result, load_model("llama3-8b"), 32768)
    bad = [(r["dir"], r.get("error"), r.get("trace")) for r in results if not r["ok"]]
    assert not bad, bad
    by_name = {}
    for r in results:
        name, request = requests[r["dir"]]
        by_name[name] = r
        assert r["world_size"] == request.cluster.num_gpus
        assert_model_equal(r, request.model, request.job.seq_len)
        settings = job_settings(request.model, request.job, request.plan)
        assert r["training"]["global_batch_size"] == request.job.global_batch
        assert r["training"]["seq_len"] == request.job.seq_len
        assert r["degrees"]["tp"] == request.plan.tp and r["degrees"]["pp"] == request.plan.pp
        assert r["degrees"]["cp"] == request.plan.cp and r["degrees"]["ep"] == request.plan.ep
        assert r["degrees"]["dp_replicate"] * r["degrees"]["dp_shard"] == request.plan.dp
        assert r["float8"] == (request.job.precision == "fp8")
        assert r["training"]["cpu_offload"] == (request.plan.offload > 0)
        assert r["activation_checkpoint"] == {"none": None, "full": "FullAC.Config",
                                              "selective": "SelectiveAC.Config"}[request.plan.recompute]
        if request.plan.pp > 1:
            assert r["pipeline"]["layers_per_part"] == list(request.plan.virtual_stage_layers(request.model))
            assert r["microbatch_size"] == request.plan.micro_batch
            assert r["training"]["local_batch_size"] == request.job.global_batch // request.plan.dp
        else:
            assert r["training"]["local_batch_size"] == request.plan.micro_batch
        assert settings["parallelism"]["tensor_parallel_degree"] == r["degrees"]["tp"]
    assert by_name["pp-uneven"]["pipeline"]["schedule"] == "1F1B"
    assert by_name["pp-uneven"]["pipeline"]["layers_per_part"] == [7] + [8] * 14 + [7]
    assert by_name["vpp-uneven-async-tp"]["pipeline"]["schedule"] == "Interleaved1F1B"
    assert by_name["vpp-uneven-async-tp"]["async_tp"] is True
    assert by_name["dense-mha-zero2-full"]["reshard_after_forward"] == "never"
    assert by_name["hsdp"]["degrees"]["dp_replicate"] == 2 and by_name["hsdp"]["degrees"]["dp_shard"] == 8
    assert by_name["mla-mtp-ep"]["loss"] == "MTPLoss.Config" and by_name["mla-mtp-ep"]["model"]["mtp_layers"] == 1
    assert by_name["fp8"]["model"]["params"] == 8_030_261_248  # Llama-3-8B: Meta's published count


def _runs(preset: str) -> bool:
    try:
        family(load_model(preset))
    except InputError:
        return False
    return True


REFUSED_PRESETS = {
    "gpt3-175b": "model.norm",  # LayerNorm, GELU, biases, learned positions: no torchtitan family
    "mixtral-8x7b": "model.moe_aux_loss_coeff",
    "mixtral-8x22b": "model.moe_aux_loss_coeff",
    "qwen3-30b-a3b": "model.moe_aux_loss_coeff",
    "qwen3-235b-a22b": "model.moe_aux_loss_coeff",
    "deepseek-v3": "model.moe_aux_loss_coeff",
    "gpt-oss-120b": "model.features",  # sliding-window attention, attention sinks, clamped SwiGLU
    "gpt-oss-20b": "model.features",
}


def test_presets_torchtitan_cannot_run_are_refused_by_field() -> None:
    for preset in model_names():
        model = load_model(preset)
        if preset not in REFUSED_PRESETS:
            assert family(model) in ("llama3", "qwen3", "deepseek_v3")
            continue
        with pytest.raises(InputError) as err:
            family(model)
        assert err.value.field == REFUSED_PRESETS[preset], (preset, str(err.value))
        assert "torchtitan 0.3.0 cannot express" in str(err.value)
    # Without the auxiliary loss, Mixtral is still refused: no GQA MoE without q/k norms in torchtitan.
    with pytest.raises(InputError) as err:
        family(no_aux_loss("mixtral-8x7b"))
    assert err.value.field == "model.qk_norm"


def test_plans_torchtitan_cannot_run_are_refused_with_the_reason() -> None:
    llama, job = load_model("llama3-8b"), JobSpec(global_batch=64, seq_len=4096)
    moe = no_aux_loss("qwen3-30b-a3b")
    cases = [
        (llama, Plan(dp=8, sharding="distopt"), "ZeRO-1"),
        (llama, Plan(dp=8, sharding="zero3", recompute="full", recompute_num_layers=4), "FullAC"),
        (llama, Plan(dp=8, sharding="zero3", offload=0.5), "offloads parameters"),
        (llama, Plan(tp=2, cp=2, dp=2, sp=True, sharding="zero3", cp_comm="p2p"), "all-gathers K/V"),
        (moe, Plan(tp=2, dp=4, ep=4, etp=2, sp=True, sharding="zero3"), "expert_tensor_parallel"),
        (no_aux_loss("deepseek-v3"), Plan(pp=2, dp=4, sharding="zero3"), "MTP"),
        (llama, Plan(dp=2, cp=4, sharding="hsdp", shard_group=2), "replicas must divide"),
        (moe, Plan(dp=8, ep=8, sharding="hsdp", shard_group=4), "not the HSDP replicas"),
        # 64 / (dp 4 x mb 4) = 4 micro-batches under 8 stages: PyTorch's Schedule1F1B raises; 8 run.
        (llama, Plan(pp=8, dp=4, micro_batch=4, sharding="zero3"), "Schedule1F1B"),
    ]
    for model, plan, reason in cases:
        reasons = unsupported(model, plan, job)
        assert reasons and reason in reasons[0], (plan.describe(), reasons)
    assert unsupported(llama, Plan(dp=8, sharding="zero3", offload=1.0), job) == []
    assert unsupported(llama, Plan(pp=8, dp=4, micro_batch=2, sharding="zero3"), job) == []
    assert unsupported(llama, Plan(dp=8, sharding="zero3"), JobSpec(global_batch=64, seq_len=4096, precision="fp16"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "configurator.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_plan_emit_torchtitan_refuses_a_model_it_cannot_build_before_searching(tmp_path) -> None:
    refused = cli("plan", "--model", "gpt3-175b", "--cluster", "dgx-h100", "--num-gpus", "64", "--seq-len", "2048",
                  "--global-batch", "64", "--emit", "torchtitan", "--out", str(tmp_path / "g"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "model.norm" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())


def test_amd_clusters_get_the_rccl_environment_in_the_torchtitan_launch() -> None:
    request = _request("llama3-8b", "mi300x-roce400", 16, 4096, 64, Plan(dp=16, sharding="zero3"))
    script = files_for(request, "torchtitan")["launch_torchtitan.sh"]
    lines = script.splitlines()
    assert 'export HIP_VISIBLE_DEVICES="$CUDA_VISIBLE_DEVICES"  # HIP honours both; set both for tools that read one' \
        in lines
    assert lines.index("export NCCL_PROTO=Simple  # RCCL's Simple protocol, as AMD's Megatron scripts set") \
        < next(i for i, line in enumerate(lines) if line.startswith("exec torchrun"))
    nvidia = files_for(_request("llama3-8b", "dgx-h100", 16, 4096, 64, Plan(dp=16, sharding="zero3")), "torchtitan")
    assert "HIP_VISIBLE_DEVICES" not in nvidia["launch_torchtitan.sh"]
