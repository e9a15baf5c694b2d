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
from configurator.emit import DEEPSPEED_FILES, MEGATRON_FILES, TORCHTITAN_FILES, EmitRequest, emit, files_for
from configurator.emit.deepspeed import unsupported
from configurator.errors import InputError
from configurator.search.resolve import resolve
from configurator.profiles import model_names
from configurator.specs.model import ModelSpec
from configurator.specs.plan import balanced_layout, check_given_knobs, plan_from_dict, plan_violations

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch_stubs import TRANSFORMER_ENGINE_VERSION, option, run_script  # noqa: E402
from validator_env import VALIDATOR_PYTHON, megatron_ready, require, run_checker  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "emit"


@pytest.fixture(scope="session")
def validators() -> Path:
    require(megatron_ready())
    return VALIDATOR_PYTHON


def run_megatron(specs: list[str]) -> list[dict]:
    return run_checker("megatron_check.py", specs, with_megatron=True)


def run_deepspeed(specs: list[str]) -> list[dict]:
    return run_checker("deepspeed_check.py", specs)


def launched(out: Path, root: Path, node_rank: int = 0, te_version: str = TRANSFORMER_ENGINE_VERSION) -> Path:
    """Run the emitted launch_megatron.sh for one node with the stub torchrun (on a node whose Transformer Engine
    is ``te_version``); the record's prefix."""
    proc, launches = run_script(out / "launch_megatron.sh", str(node_rank), "10.0.0.1", root=root,
                                record=root / "records" / out.name, te_version=te_version)
    assert proc.returncode == 0 and len(launches) == 1, proc.stderr
    assert option(launches[0].argv, "--node-rank") == str(node_rank)
    return launches[0].prefix


def launched_deepspeed(out: Path, root: Path) -> Path:
    proc, launches = run_script(out / "launch_deepspeed.sh", root=root, record=root / "records" / out.name)
    assert proc.returncode == 0 and len(launches) == 1, proc.stderr
    return launches[0].prefix


def expected_megatron_model(model: ModelSpec, tp: int) -> dict:
    """Each ModelSpec field as Megatron's parsed args / TransformerConfig must hold it."""
    e: dict = {
        "num_layers": model.num_layers, "hidden_size": model.hidden_size, "ffn_hidden_size": model.ffn_hidden_size,
        "num_attention_heads": model.num_attention_heads, "normalization": "RMSNorm" if model.norm == "rmsnorm" else "LayerNorm",
        "layernorm_epsilon": model.norm_eps, "layernorm_zero_centered_gamma": model.norm_zero_centered,
        "gated_linear_unit": model.mlp == "swiglu", "squared_relu": model.mlp == "relu2",
        "activation_func": {"swiglu": "silu", "gelu": "gelu", "relu2": "squared_relu"}[model.mlp],
        "add_bias_linear": model.linear_bias, "add_qkv_bias": model.linear_bias or model.qkv_bias,
        "qk_layernorm": model.qk_norm, "untie_embeddings_and_output_weights": not model.tied_embeddings,
        "multi_latent_attention": model.attention == "mla", "vocab_size": model.vocab_size,
        "padded_vocab_size": model.padded_vocab_size(tp),
        "attention_dropout": 0.1 if model.dropout else 0.0, "hidden_dropout": 0.1 if model.dropout else 0.0,
        "mtp_num_layers": model.mtp_layers or None,
    }
    if model.learned_position_embeddings:
        e["position_embedding_type"] = "learned_absolute"
    else:
        e.update(rotary_base=model.rope_base, rotary_percent=model.rope_percent,
                 use_rope_scaling=model.rope_scaling == "llama3")
        if model.rope_scaling == "llama3":
            e["rope_scaling_factor"] = model.rope_scaling_factor
    if model.attention == "mla":
        e.update(q_lora_rank=model.q_lora_rank or None, kv_lora_rank=model.kv_lora_rank,
                 qk_head_dim=model.qk_nope_head_dim, qk_pos_emb_head_dim=model.qk_rope_head_dim,
                 v_head_dim=model.v_head_dim, rope_type="yarn" if model.rope_scaling == "yarn" else "rope")
        if model.rope_scaling == "yarn":
            e.update(rotary_scaling_factor=model.rope_scaling_factor, mscale=model.rope_mscale,
                     mscale_all_dim=model.rope_mscale_all_dim,
                     original_max_position_embeddings=model.rope_original_max_positions)
    else:
        e.update(num_query_groups=model.num_kv_heads, kv_channels=model.kv_channels)
    if model.is_moe:
        shared = model.shared_expert_ffn_hidden_size or model.num_shared_experts * model.moe_ffn_hidden_size
        pattern = [1 if model.layer_is_moe(i) else 0 for i in range(model.num_layers)]
        e.update(num_moe_experts=model.num_experts, moe_router_topk=model.moe_topk,
                 moe_ffn_hidden_size=model.moe_ffn_hidden_size, moe_shared_expert_intermediate_size=shared or None,
                 moe_layer_freq=pattern if (model.first_dense_layers or model.moe_layer_freq > 1) else 1,
                 moe_router_score_function=model.moe_router_score,
                 moe_router_enable_expert_bias=model.moe_router_expert_bias,
                 moe_router_num_groups=model.moe_router_num_groups or None,
                 moe_router_group_topk=model.moe_router_group_topk or None,
                 moe_router_topk_scaling_factor=(model.moe_routed_scaling_factor
                                                 if model.moe_routed_scaling_factor != 1 else None),
                 moe_router_pre_softmax=not model.moe_norm_topk_prob,
                 moe_router_load_balancing_type=model.moe_aux_loss_type if model.moe_aux_loss_coeff else "none",
                 moe_aux_loss_coeff=model.moe_aux_loss_coeff)
    return e


def assert_model_equal(result: dict, model: ModelSpec, tp: int) -> None:
    got = result["model"]
    diffs = {k: (v, got.get(k)) for k, v in expected_megatron_model(model, tp).items()
             if not (got.get(k) == v or (isinstance(v, float) and got.get(k) == pytest.approx(v)))}
    assert not diffs, f"{result['dir']}: (ModelSpec, Megatron) differ: {diffs}"


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
    # The plan knobs, as Megatron spells them.
    "llama3-70b-tp-overlap-selective": ("llama3-70b", "dgx-h100", 16, 4096, 64,
                                        Plan(tp=8, pp=2, dp=1, sp=True, tp_overlap=True, recompute="selective",
                                             recompute_modules=("core_attn", "mlp")), "bf16"),
    "llama3-8b-cp-a2a-p2p": ("llama3-8b", "dgx-h100", 16, 32768, 16, Plan(tp=4, cp=4, dp=1, sp=True, cp_comm="a2a+p2p"),
                             "bf16"),
    "qwen3-30b-ep-overlap": ("qwen3-30b-a3b", "dgx-h100", 16, 4096, 256, Plan(dp=16, ep=8, ep_overlap=True), "bf16"),
    # The flex dispatcher (DeepEP) across two nodes. Megatron refuses flex only under --fake-process-group
    # (arguments.py: "Fake process group is not supported with flex token dispatcher"); the checker runs
    # parse_args/validate_args and builds the TransformerConfig without it, so the flags are checked as
    # a real launch would check them (DeepEP itself is imported only when the dispatcher is built).
    "qwen3-30b-flex-deepep": ("qwen3-30b-a3b", "dgx-h100", 16, 4096, 256,
                              Plan(dp=16, ep=16, ep_overlap=True, ep_dispatcher="flex"), "bf16"),
    "llama3-8b-hsdp": ("llama3-8b", "dgx-h100", 16, 4096, 64, Plan(dp=16, sharding="hsdp", shard_group=8), "bf16"),
    # Per-layer CUDA graphs: an MoE model's attention, router and dispatcher preprocessing (with flex and fp8 on
    # GB200, as NVIDIA's recipes run them), a dense model's attention and MLP under an interleaved pipeline.
    "qwen3-30b-cuda-graphs": ("qwen3-30b-a3b", "gb200-nvl72", 8, 4096, 512,
                              Plan(dp=8, ep=8, micro_batch=4, ep_dispatcher="flex", cuda_graphs=True), "fp8"),
    "llama3-8b-cuda-graphs-vpp": ("llama3-8b", "dgx-h100", 16, 4096, 64,
                                  Plan(tp=2, pp=2, vpp=2, dp=4, sp=True, recompute="selective", cuda_graphs=True),
                                  "bf16"),
}


def _every_kind(root: Path) -> tuple[list[str], dict]:
    specs, requests = [], {}
    for name, (model, cluster, gpus, seq, gbs, plan, precision) in MEGATRON_CASES.items():
        request = _request(model, cluster, gpus, seq, gbs, plan, precision)
        emit(request, "megatron", root / name)
        record = launched(root / name, root)
        requests[str(record)] = request
        specs.append(f"{record}:{request.cluster.gpu.family}")
    return specs, requests


# The same knobs given to `configurator emit` as options (tests/test_cli_knobs.py runs the scripts; here Megatron's
# parser reads each flag back). name -> the command's job and plan options.
_H100_16 = ["--cluster", "dgx-h100", "--num-gpus", "16", "--seq-len", "4096"]
CLI_CASES = {
    "cli-tp-overlap-modules-a2a-p2p": ["--model", "llama3-70b", *_H100_16, "--global-batch", "64", "--tp", "4",
                                       "--cp", "2", "--pp", "2", "--tp-overlap", "--cp-comm", "a2a+p2p",
                                       "--recompute", "selective", "--recompute-modules", "core_attn,mlp"],
    "cli-flex-ep-overlap": ["--model", "qwen3-30b-a3b", *_H100_16, "--global-batch", "256", "--ep", "16",
                            "--ep-dispatcher", "flex", "--ep-overlap"],
    "cli-hsdp-no-overlap": ["--model", "qwen3-30b-a3b", *_H100_16, "--global-batch", "256", "--ep", "8",
                            "--sharding", "hsdp", "--shard-group", "8", "--no-ep-overlap", "--ep-dispatcher", "alltoall"],
    "cli-cuda-graphs": ["--model", "qwen3-30b-a3b", *_H100_16, "--global-batch", "256", "--ep", "8", "--cuda-graphs"],
}


def _cli_options(root: Path) -> tuple[list[str], None]:
    from typer.testing import CliRunner

    from configurator.cli import app

    specs = []
    for name, args in CLI_CASES.items():
        result = CliRunner().invoke(app, ["emit", *args, "--framework", "megatron", "--out", str(root / name)])
        assert result.exit_code == 0, (name, result.output)
        specs.append(f"{launched(root / name, root)}:hopper")
    return specs, None


MEGATRON_REFUSED_PRESETS = {"gpt-oss-120b": "model.features", "gpt-oss-20b": "model.features"}
"""Presets whose network Megatron's arguments as emitted cannot express (GPT-OSS: sliding-window attention,
attention sinks, clamped SwiGLU); the emitter refuses them by field instead of emitting another model."""


def _every_preset(root: Path) -> tuple[list[str], dict]:
    specs, models = [], {}
    for preset in model_names():
        model = load_model(preset)
        if preset in MEGATRON_REFUSED_PRESETS:
            with pytest.raises(InputError) as err:
                emit(EmitRequest(model=model, cluster=load_cluster("dgx-b200", num_gpus=8),
                                 job=JobSpec(global_batch=64, seq_len=4096), plan=Plan(dp=8)),
                     "megatron", root / preset)
            assert err.value.field == MEGATRON_REFUSED_PRESETS[preset]
            continue
        request = EmitRequest(model=model, cluster=load_cluster("dgx-b200", num_gpus=8),
                              job=JobSpec(global_batch=64, seq_len=4096), plan=Plan(dp=8))
        emit(request, "megatron", root / preset)
        record = launched(root / preset, root)
        models[str(record)] = model
        specs.append(f"{record}:blackwell")
    return specs, models


def _bench_plans(root: Path) -> tuple[list[str], None]:
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
            out = root / f"{s.name}-{label}"
            emit(EmitRequest(model=ctx.model, cluster=ctx.cluster, job=ctx.job, plan=plan), "megatron", out)
            specs.append(f"{launched(out, root)}:{ctx.cluster.gpu.family}")
    return specs, None


def _broken_plans(root: Path) -> tuple[list[str], None]:
    request = _request("llama3-8b", "dgx-h100", 8, 4096, 64, Plan(tp=2, pp=2, dp=2, sp=True))
    emit(request, "megatron", root / "ok")
    broken = root / "broken"
    emit(request, "megatron", broken)
    args = (broken / "megatron_args.txt").read_text()
    # 16 layers per stage cannot be cut into virtual stages of 3 layers.
    (broken / "megatron_args.txt").write_text(args + "--num-layers-per-virtual-pipeline-stage\n3\n")
    no_env = root / "no-env"
    emit(request, "megatron", no_env)
    launch = (no_env / "launch_megatron.sh").read_text()
    assert "export CUDA_DEVICE_MAX_CONNECTIONS=1" in launch
    (no_env / "launch_megatron.sh").write_text(launch.replace("export CUDA_DEVICE_MAX_CONNECTIONS=1", "true"))
    # Graphs under full recompute, which this tool never emits (``cuda_graph_conflicts``): Megatron-Core refuses it.
    graphed = root / "graphs-full-recompute"
    emit(_request("llama3-8b", "dgx-h100", 8, 4096, 64, Plan(tp=2, pp=2, dp=2, sp=True, recompute="full")), "megatron",
         graphed)
    args = (graphed / "megatron_args.txt").read_text()
    (graphed / "megatron_args.txt").write_text(args + "--cuda-graph-impl\ntransformer_engine\n--cuda-graph-modules\n"
                                               "attn\nmlp\n")
    return [f"{launched(d, root)}:hopper" for d in (root / "ok", broken, no_env, graphed)], None


@pytest.fixture(scope="module")
def megatron_runs(validators, tmp_path_factory) -> dict[str, tuple[list[dict], object]]:  # type: ignore[no-untyped-def]
    """The Megatron cases this module expects to pass, checked by one validator process (starting one imports
    Megatron-Core and torch), each group's results in its order. The deliberately broken launches get their own
    process (``test_megatron_rejects_a_broken_plan``): after the others, the checker's process state let a
    broken one through."""
    groups = {name: prepare(tmp_path_factory.mktemp(name)) for name, prepare in
              (("kinds", _every_kind), ("presets", _every_preset), ("bench", _bench_plans),
               ("cli", _cli_options))}
    results = run_megatron([spec for specs, _ in groups.values() for spec in specs])
    out, i = {}, 0
    for name, (specs, extra) in groups.items():
        out[name] = (results[i:i + len(specs)], extra)
        assert [r["dir"] for r in out[name][0]] == [spec.rsplit(":", 1)[0] for spec in specs]
        i += len(specs)
    return out


def test_megatron_accepts_what_the_emitted_script_launches_for_plans_of_every_kind(megatron_runs) -> None:  # type: ignore[no-untyped-def]
    results, requests = megatron_runs["kinds"]
    bad = [(r["dir"], r.get("error")) for r in results if not r["ok"]]
    assert not bad, bad
    for r in results:
        request = requests[r["dir"]]
        assert r["world_size"] == request.cluster.num_gpus
        assert_model_equal(r, request.model, request.plan.tp)
    by_name = {Path(r["dir"]).parent.name: r for r in results}
    # Megatron's own rank groups agree with ours (tp-cp-dp-pp, leftmost fastest).
    assert by_name["llama3-70b-tp-cp-vpp"]["groups"]["tp"][0] == [0, 1, 2, 3]
    assert by_name["llama3-70b-tp-cp-vpp"]["groups"]["cp"][0] == [0, 4]
    assert by_name["llama3-70b-tp-cp-vpp"]["groups"]["dp"][0] == [0, 8]
    assert by_name["llama3-70b-tp-cp-vpp"]["groups"]["pp"][0] == [0, 16, 32, 48]
    assert by_name["llama3-70b-tp-cp-vpp"]["cp_comm_type"] == ["p2p"]  # cp_comm unset: Megatron's default
    assert by_name["llama3-70b-offload"]["offload_fraction"] == pytest.approx(0.87)
    assert by_name["mixtral-etp"]["groups"]["ep"][0] == [0, 2, 4, 6, 8, 10, 12, 14]
    knobs = by_name["llama3-70b-tp-overlap-selective"]
    assert knobs["tp_comm_overlap"] and knobs["recompute_modules"] == ["core_attn", "mlp"]
    cp = by_name["llama3-8b-cp-a2a-p2p"]
    assert cp["cp_comm_type"] == ["a2a+p2p"] and cp["hierarchical_context_parallel_sizes"] == [2, 2]
    assert by_name["qwen3-30b-ep-overlap"]["overlap_moe_expert_parallel_comm"]
    assert by_name["qwen3-30b-ep-overlap"]["moe_token_dispatcher_type"] == "alltoall"
    flex = by_name["qwen3-30b-flex-deepep"]
    assert flex["moe_token_dispatcher_type"] == "flex" and flex["moe_flex_dispatcher_backend"] == "deepep"
    assert flex["overlap_moe_expert_parallel_comm"]
    hsdp = by_name["llama3-8b-hsdp"]
    assert hsdp["use_megatron_fsdp"] and hsdp["num_distributed_optimizer_instances"] == 2
    # Every Megatron-FSDP launch builds on the meta device; the distributed optimizer's does not need to.
    assert all(r["init_model_with_meta_device"] == r["use_megatron_fsdp"] for r in by_name.values())
    moe_graphs, dense_graphs = by_name["qwen3-30b-cuda-graphs"], by_name["llama3-8b-cuda-graphs-vpp"]
    assert moe_graphs["cuda_graph_impl"] == dense_graphs["cuda_graph_impl"] == "transformer_engine"
    assert moe_graphs["cuda_graph_modules"] == ["attn", "moe_router", "moe_preprocess"]
    assert dense_graphs["cuda_graph_modules"] == ["attn", "mlp"] and dense_graphs["te_rng_tracker"]
    assert by_name["llama3-8b-hsdp"]["cuda_graph_impl"] == "none"


def test_megatron_reads_back_the_knobs_given_as_emit_options(megatron_runs) -> None:  # type: ignore[no-untyped-def]
    results, _ = megatron_runs["cli"]
    bad = [(r["dir"], r.get("error")) for r in results if not r["ok"]]
    assert not bad, bad
    by_name = {Path(r["dir"]).parent.name: r for r in results}
    dense = by_name["cli-tp-overlap-modules-a2a-p2p"]
    assert dense["tp_comm_overlap"] and dense["recompute_modules"] == ["core_attn", "mlp"]
    assert dense["cp_comm_type"] == ["a2a+p2p"] and dense["hierarchical_context_parallel_sizes"] == [2, 1]
    flex = by_name["cli-flex-ep-overlap"]
    assert flex["moe_token_dispatcher_type"] == "flex" and flex["moe_flex_dispatcher_backend"] == "deepep"
    assert flex["overlap_moe_expert_parallel_comm"]
    hsdp = by_name["cli-hsdp-no-overlap"]
    assert hsdp["moe_token_dispatcher_type"] == "alltoall" and not hsdp["overlap_moe_expert_parallel_comm"]
    assert hsdp["use_megatron_fsdp"] and hsdp["num_distributed_optimizer_instances"] == 2
    assert by_name["cli-cuda-graphs"]["cuda_graph_modules"] == ["attn", "moe_router", "moe_preprocess"]


def test_megatron_parses_back_every_preset_model_as_its_model_spec(megatron_runs) -> None:  # type: ignore[no-untyped-def]
    results, models = megatron_runs["presets"]
    assert len(results) == len(model_names()) - len(MEGATRON_REFUSED_PRESETS) >= 12
    for result in results:
        assert result["ok"], (result["dir"], result.get("error"))
        assert_model_equal(result, models[result["dir"]], 1)


def test_megatron_accepts_the_benchmark_scenarios_best_and_reference_plans(megatron_runs) -> None:  # type: ignore[no-untyped-def]
    results, _ = megatron_runs["bench"]
    bad = [(Path(r["dir"]).parent.name, r.get("error")) for r in results if not r["ok"]]
    assert not bad, bad
    assert len(results) >= 30


def test_megatron_rejects_a_broken_plan(validators, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ok, bad, env, graphed = run_megatron(_broken_plans(tmp_path)[0])
    assert ok["ok"]
    assert not bad["ok"] and "virtual pipeline" in bad["error"]
    assert not env["ok"] and "CUDA_DEVICE_MAX_CONNECTIONS" in env["error"]
    assert not graphed["ok"] and "full recompute is only supported with full iteration" in graphed["error"]
    with pytest.raises(InputError, match="cuda_graphs"):
        check_given_knobs(load_model("llama3-8b"), Plan(tp=2, pp=2, dp=2, sp=True, recompute="full", cuda_graphs=True))


def test_megatron_fsdp_runs_unfused_gradient_accumulation_where_transformer_engine_is_older_than_2_10(
        validators, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Megatron-Core's Megatron-FSDP adapter asserts Transformer Engine >= 2.10 for fused gradient accumulation
    while it builds the model (Megatron's validate_args lets it through): the launch script reads the node's version
    and adds --no-gradient-accumulation-fusion below it. Without that fallback the target container's TE (2.8)
    is refused, which is what the third launch shows."""
    request = _request("llama3-8b", "dgx-h100", 16, 4096, 64, Plan(dp=16, sharding="zero2", micro_batch=2))
    records = {}
    for name, te in (("te-2.10", "2.10.0"), ("te-2.8", "2.8.0+40c69e7")):
        emit(request, "megatron", tmp_path / name)
        proc, launches = run_script(tmp_path / name / "launch_megatron.sh", "0", "10.0.0.1", root=tmp_path,
                                    record=tmp_path / "records" / name, te_version=te)
        assert proc.returncode == 0 and len(launches) == 1, proc.stderr
        fallback = "--no-gradient-accumulation-fusion" in launches[0].argv
        assert fallback == (te != "2.10.0") == ("adding --no-gradient-accumulation-fusion" in proc.stderr), proc.stderr
        records[name] = launches[0].prefix
    fused = tmp_path / "te-2.8-no-fallback"
    emit(request, "megatron", fused)
    script = (fused / "launch_megatron.sh").read_text()
    assert script.count("FSDP_ARGS=(--no-gradient-accumulation-fusion)") == 1
    (fused / "launch_megatron.sh").write_text(script.replace("FSDP_ARGS=(--no-gradient-accumulation-fusion)",
                                                             "FSDP_ARGS=()"))
    records["fused"] = launched(fused, tmp_path, te_version="2.8.0")
    new, old, fused_old = run_megatron([f"{records[k]}:hopper" for k in ("te-2.10", "te-2.8", "fused")])
    assert new["ok"] and old["ok"], (new, old)
    assert new["use_megatron_fsdp"] and old["use_megatron_fsdp"]
    # Built on the meta device, as NVIDIA's Megatron-Bridge performance scripts run Megatron-FSDP: no whole unsharded
    # model partition on the GPU at start-up, which the (steady-state) memory model does not count.
    assert new["init_model_with_meta_device"] and old["init_model_with_meta_device"]
    assert not fused_old["ok"] and "requires Transformer Engine version 2.10" in fused_old["error"], fused_old
    # A plan that is not Megatron-FSDP reads no version and adds nothing.
    emit(_request("llama3-8b", "dgx-h100", 8, 4096, 64, Plan(dp=8)), "megatron", tmp_path / "ddp")
    assert "FSDP_ARGS" not in (tmp_path / "ddp" / "launch_megatron.sh").read_text()


def test_megatron_refuses_the_ep_overlap_under_a_megatron_fsdp_pipeline(validators, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Megatron-Core's combined 1F1B schedule asserts that Megatron-FSDP runs the EP overlap only without an
    interleaved pipeline (``ep_overlap_conflicts``, which keeps such plans out of the search and emit). The check
    applies that condition (read from Megatron's source): the distributed-optimizer plan launches, and the same
    launch switched to Megatron-FSDP by hand is refused."""
    plan = Plan(dp=8, pp=2, vpp=2, ep=2, ep_overlap=True)
    emit(_request("mixtral-8x7b", "dgx-h100", 16, 4096, 64, plan), "megatron", tmp_path / "distopt")
    fsdp = tmp_path / "fsdp"
    emit(_request("mixtral-8x7b", "dgx-h100", 16, 4096, 64, plan), "megatron", fsdp)
    args = (fsdp / "megatron_args.txt").read_text()
    assert args.count("--use-distributed-optimizer\n") == 1
    (fsdp / "megatron_args.txt").write_text(args.replace(
        "--use-distributed-optimizer\n", "--use-megatron-fsdp\n--data-parallel-sharding-strategy\noptim_grads\n"
        "--ckpt-format\nfsdp_dtensor\n--no-gradient-accumulation-fusion\n"))
    distopt, refused = run_megatron([f"{launched(tmp_path / name, tmp_path)}:hopper" for name in ("distopt", "fsdp")])
    assert distopt["ok"] and distopt["overlap_moe_expert_parallel_comm"] and not distopt["use_megatron_fsdp"], distopt
    assert not refused["ok"] and "EP overlap 1F1B with FSDP is not supported" in refused["error"], refused


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
        (tmp_path / name / "hostfile").read_text()
        specs.append(f"{launched_deepspeed_slurm(tmp_path / name, tmp_path)}:{plan.dp}")
    broken = tmp_path / "broken"
    emit(_request("llama3-8b", "dgx-h100", 16, 4096, 64, Plan(tp=2, dp=8, sharding="zero2")), "deepspeed", broken)
    cfg = json.loads((broken / "ds_config.json").read_text())
    cfg["gradient_accumulation_steps"] += 1  # breaks train_batch = micro x accumulation x dp
    (broken / "ds_config.json").write_text(json.dumps(cfg))
    results = run_deepspeed([*specs, f"{launched_deepspeed_slurm(broken, tmp_path)}:8"])
    assert all(r["ok"] for r in results[:-1]), results
    assert not results[-1]["ok"] and "train_batch_size" in results[-1]["error"]
    by_name = {Path(r["dir"]).parent.name: r for r in results}
    assert by_name["zero3-partial-offload"]["offload_ratio"] == pytest.approx(0.4)
    assert by_name["pipeline-zero1"]["gradient_accumulation_steps"] == 32


def launched_deepspeed_slurm(out: Path, root: Path) -> Path:
    """Run launch_deepspeed.sbatch under a stub Slurm; check the launcher's host list and GPU pins."""
    nodes = len((out / "hostfile").read_text().splitlines())
    names = [f"gpu-{i:03d}" for i in range(nodes)]
    proc, launches = run_script(out / "launch_deepspeed.sbatch", root=root, record=root / "records" / out.name,
                                env={"SLURM_JOB_NODELIST": ",".join(names), "SLURM_SUBMIT_DIR": str(out)})
    assert proc.returncode == 0 and len(launches) == 1, proc.stderr
    argv = launches[0].argv
    hostfile = [line.split()[0] for line in Path(option(argv, "--hostfile")).read_text().splitlines()]
    assert hostfile == names  # default placement: Slurm's order
    assert [h.split(":")[0] for h in option(argv, "--include").split("@")] == names
    assert option(argv, "--deepspeed_config") == str(out / "ds_config.json")
    return launches[0].prefix


def test_deepspeed_refuses_what_it_cannot_run() -> None:
    job = JobSpec(global_batch=64, seq_len=8192)
    assert "context parallel" in unsupported(Plan(cp=2, dp=4), job)[0]
    assert "interleaved" in unsupported(Plan(pp=2, vpp=2, dp=4), job)[0]
    assert "ZeRO stage < 2" in unsupported(Plan(pp=2, dp=4, sharding="zero2"), job)[0]
    assert "needs ZeRO-3" in unsupported(Plan(dp=8, sharding="zero1", offload=0.5), job)[0]
    assert "MiCS" in unsupported(Plan(dp=8, sharding="hsdp", shard_group=4), job)[0]
    assert "tp_overlap" in unsupported(Plan(tp=2, dp=4, tp_overlap=True), job)[0]
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


def test_plan_emit_all_searches_each_framework_and_never_overwrites_silently(tmp_path) -> None:
    out = tmp_path / "launch"
    base = ["plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "16", "--seq-len", "4096",
            "--global-batch", "64", "--json", "--time-budget", "4"]
    proc = cli(*base, "--emit", "all", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["MANIFEST", *MEGATRON_FILES, *DEEPSPEED_FILES, *TORCHTITAN_FILES])
    answer = json.loads(proc.stdout)
    held = answer["emitted_plans"]
    assert held["megatron"] == Plan(**{k: (tuple(v) if isinstance(v, list) else v)
                                       for k, v in answer["plans"][0]["plan"].items()
                                       if k in Plan.__dataclass_fields__}).describe()  # the Megatron search's best
    manifest = (out / "MANIFEST").read_text()
    assert f"# megatron: {held['megatron']}" in manifest and f"# deepspeed: {held['deepspeed']}" in manifest
    assert f"# torchtitan: {held['torchtitan']}" in manifest and "zero3" in held["torchtitan"]
    assert os.access(out / "launch_megatron.sh", os.X_OK) and os.access(out / "launch_torchtitan.sh", os.X_OK)
    again = cli(*base, "--emit", "megatron", "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    (out / "notes.txt").write_text("mine")
    assert cli(*base, "--emit", "megatron", "--out", str(out), "--force").returncode == 0
    # --force replaced the Megatron files, removed the stale DeepSpeed/torchtitan ones, kept the user's file.
    assert sorted(p.name for p in out.iterdir()) == sorted(["MANIFEST", "notes.txt", *MEGATRON_FILES])
    lone = cli(*base, "--emit", "megatron")
    assert lone.returncode == 2 and lone.stderr.startswith("error: out=None") and "--out" in lone.stderr
    stray = cli(*base, "--out", str(tmp_path / "x"))
    assert stray.returncode == 2 and stray.stderr.startswith("error: emit=None")


def test_plan_emit_checks_the_folder_before_searching(tmp_path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    import time

    start = time.monotonic()
    proc = cli("plan", "--model", "deepseek-v3", "--cluster", "dgx-h100", "--num-gpus", "2048", "--seq-len", "4096",
               "--global-batch", "8192", "--time-budget", "60", "--emit", "megatron", "--out", str(tmp_path / "full"))
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert time.monotonic() - start < 30  # no 60 s search first


def test_plan_emit_all_says_when_deepspeed_cannot_run_any_plan_and_writes_megatron(tmp_path) -> None:
    out = tmp_path / "moe"
    proc = cli("plan", "--model", "deepseek-v3", "--cluster", "dgx-h100", "--num-gpus", "256", "--seq-len", "4096",
               "--global-batch", "1024", "--method", "optuna", "--trials", "60",
               "--emit", "all", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: deepspeed")]
    assert len(notes) == 1 and "no plan deepspeed can run fits" in notes[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(["MANIFEST", *MEGATRON_FILES])


def _small_request(**kw) -> EmitRequest:  # type: ignore[no-untyped-def]
    return EmitRequest(model=load_model("llama3-8b"), cluster=load_cluster("dgx-h100", num_gpus=32),
                       job=JobSpec(global_batch=64, seq_len=4096), plan=Plan(tp=2, dp=16, sp=False), **kw)


def test_launch_script_rejects_a_bad_node_rank_or_slurm_allocation_in_one_line(tmp_path) -> None:
    out = tmp_path / "e"
    emit(_small_request(), "megatron", out)
    script = out / "launch_megatron.sh"
    cases = {("4", "10.0.0.1"): "NODE_RANK=4 is out of range: this plan has 4 nodes (0..3)",
             ("x1",): "NODE_RANK='x1' must be an integer in 0..3",
             ("0",): "MASTER_ADDR: no host names were given"}
    for args, message in cases.items():
        proc, launches = run_script(script, *args, root=tmp_path, record=tmp_path / f"r{len(args)}{args[0]}")
        assert proc.returncode == 2 and not launches
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    proc, launches = run_script(script, root=tmp_path, record=tmp_path / "slurm",
                                env={"SLURM_JOB_NODELIST": "a,b,c", "SLURM_NODEID": "0"})
    assert proc.returncode == 2 and not launches
    assert "Slurm allocated 3 nodes (a,b,c); the plan needs 4" in proc.stderr
    with pytest.raises(InputError, match="gives 3 hosts; the plan runs on 4 nodes"):
        files_for(_small_request(hosts=("h1", "h2", "h3")), "megatron")


def test_slurm_and_given_hosts_keep_the_placements_node_order(tmp_path) -> None:
    from configurator.placement import Placement

    placement = Placement(node_order=(2, 0, 3, 1), gpu_order=((1, 0, 2, 3, 4, 5, 6, 7),) + ((0, 1, 2, 3, 4, 5, 6, 7),) * 3)
    out = tmp_path / "e"
    emit(_small_request(placement=placement, hosts=("h0", "h1", "h2", "h3")), "all", out, notes=[])
    assert (out / "hostfile").read_text().split()[::2] == ["h2", "h0", "h3", "h1"]
    # Slurm: srun starts one task per node; node i of the allocation is the profile's node i.
    proc, launches = run_script(out / "launch_megatron.sbatch", root=tmp_path, record=tmp_path / "sbatch",
                                env={"SLURM_JOB_NODELIST": "s0,s1,s2,s3", "SLURM_SUBMIT_DIR": str(out)})
    assert proc.returncode == 0, proc.stderr
    by_node = {launch.env["SLURM_NODEID"]: launch for launch in launches}
    assert {k: option(v.argv, "--node-rank") for k, v in by_node.items()} == {"2": "0", "0": "1", "3": "2", "1": "3"}
    assert {option(v.argv, "--master-addr") for v in launches} == {"s2"}
    assert by_node["2"].env["CUDA_VISIBLE_DEVICES"] == "1,0,2,3,4,5,6,7"
    assert by_node["2"].env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    # Bare metal with the given names: node rank 0 is h2.
    proc, launches = run_script(out / "launch_megatron.sh", "1", root=tmp_path, record=tmp_path / "bare")
    assert proc.returncode == 0 and option(launches[0].argv, "--master-addr") == "h2"
    proc, launches = run_script(out / "launch_deepspeed.sh", root=tmp_path, record=tmp_path / "ds")
    assert proc.returncode == 0, proc.stderr
    assert option(launches[0].argv, "--include") == "h2:1,0,2,3,4,5,6,7@h0:0,1,2,3,4,5,6,7@h3:0,1,2,3,4,5,6,7@h1:0,1,2,3,4,5,6,7"


def test_emit_is_atomic_and_never_writes_through_a_planted_symlink(tmp_path, monkeypatch) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    for name in ("megatron_args.txt", "launch_megatron.sh"):
        (tmp_path / f".out.{name}.tmp").symlink_to(victim)
    out.mkdir()
    (out / ".megatron_args.txt.tmp").symlink_to(victim)  # the old writer's temporary name
    with pytest.raises(InputError, match="not empty"):
        emit(_small_request(), "megatron", out)
    (out / ".megatron_args.txt.tmp").unlink()
    emit(_small_request(), "megatron", out)
    assert victim.read_text() == "precious"
    link = tmp_path / "link"
    link.symlink_to(out)
    with pytest.raises(InputError, match="symbolic link"):
        emit(_small_request(), "megatron", link, force=True)
    # A failure part-way leaves the folder as it was and no temporary folder behind.
    before = {p.name: p.read_text() for p in out.iterdir()}
    import configurator.emit.files as files

    real = files._write_new
    calls = []

    def failing(path, text, mode):  # type: ignore[no-untyped-def]
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(path, text, mode)

    monkeypatch.setattr(files, "_write_new", failing)
    with pytest.raises(OSError):
        emit(_small_request(), "all", out, force=True, notes=[])
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.") and p.is_dir()]


def test_force_replaces_only_files_the_tool_wrote(tmp_path) -> None:
    out = tmp_path / "out"
    emit(_small_request(), "all", out, notes=[])
    (out / "README").write_text("mine")
    emit(_small_request(), "megatron", out, force=True)
    assert (out / "README").read_text() == "mine"
    assert not (out / "hostfile").exists() and not (out / "ds_config.json").exists()
    (out / "ds_config.json").write_text("{}")  # not in the MANIFEST now: the user's
    with pytest.raises(InputError, match="configurator did not write it"):
        emit(_small_request(), "all", out, force=True, notes=[])
    assert (out / "ds_config.json").read_text() == "{}"


def test_a_model_field_megatron_cannot_express_is_refused_by_name() -> None:
    from dataclasses import replace

    base = load_model("llama3-8b")
    for field, value, word in (("features", ("logit_softcapping=30",), "logit_softcapping"),
                               ("norm_placement", "sandwich", "sandwich"),
                               ("activation", "gelu_tanh", "GeGLU"),
                               ("qk_norm_full_width", True, "all heads")):
        request = replace(_small_request(), model=replace(base, **{field: value}))
        with pytest.raises(InputError, match=word) as err:
            files_for(request, "megatron")
        assert err.value.field == f"model.{field}"


def test_explain_svg_replaces_a_symlink_instead_of_writing_through_it(tmp_path) -> None:
    from configurator.emit.files import write_file_atomic

    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "step.svg.tmp").symlink_to(victim)
    (tmp_path / "step.svg").symlink_to(victim)
    write_file_atomic(tmp_path / "step.svg", "<svg/>")
    assert victim.read_text() == "precious" and (tmp_path / "step.svg").read_text() == "<svg/>"
    assert not (tmp_path / "step.svg").is_symlink()


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


def test_emit_all_writes_what_can_run_and_says_what_cannot_in_one_line(tmp_path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# our nodes\nn-a slots=8\nn-b slots=8\n\nn-c slots=8\nn-d slots=8\n")
    out = tmp_path / "e"
    proc = cli("emit", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "32", "--seq-len", "8192",
               "--global-batch", "64", "--tp", "2", "--cp", "2", "--framework", "all", "--hostfile", str(hostfile),
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: deepspeed")]
    assert len(notes) == 1 and "context parallel" in notes[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(["MANIFEST", *MEGATRON_FILES])
    assert "HOSTS" not in (out / "launch_megatron.sh").read_text()
    assert "NODES=('n-a' 'n-b' 'n-c' 'n-d')" in (out / "launch_megatron.sh").read_text()
    wrong = cli("emit", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "32", "--seq-len", "8192",
                "--global-batch", "64", "--framework", "megatron", "--hosts", "a,b", "--out", str(tmp_path / "w"))
    assert wrong.returncode == 2 and wrong.stderr.strip().count("\n") == 0
    assert "gives 2 hosts; the plan runs on 4 nodes" in wrong.stderr and not (tmp_path / "w").exists()
