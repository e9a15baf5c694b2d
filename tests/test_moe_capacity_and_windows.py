"""Capacity-padded MoE routing (DGX Cloud's token-drop recipe) and sliding-window attention (GPT-OSS)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from configurator.cost.constants import load_calibration
from configurator.cost.moe import busiest_rank_factor, expert_load_factor, routing_cv
from configurator.cost.step import evaluate, prepare
from configurator.cost.work import attended_keys, layer_work
from configurator.profiles import load_cluster, load_model
from configurator.runs import case_from_row, recipe_routing
from configurator.specs import JobSpec, Plan

CONSTANTS = load_calibration()


def test_capacity_padded_routing_runs_every_expert_at_the_mean() -> None:
    model = load_model("mixtral-8x7b")
    plan = Plan(dp=8, ep=8)
    padded = JobSpec(global_batch=8, seq_len=4096, moe_routing="capacity_padded")
    learned = JobSpec(global_batch=8, seq_len=4096)
    assert expert_load_factor(model, plan, padded, 1024, CONSTANTS) == 1.0
    # learned routing still waits for the busiest of 8 ranks
    assert expert_load_factor(model, plan, learned, 1024, CONSTANTS) == busiest_rank_factor(
        model, plan, 1024, routing_cv(learned, CONSTANTS)) > 1.0


def test_dgx_cloud_v25_05_deepseek_recipe_pads_to_capacity_with_its_own_split() -> None:
    source = "NVIDIA DGX Cloud Benchmarking recipe (deepseek_v3)"
    # 64 // pp - 1 layers first, 64 // pp - 2 last: PP4 -> 15/16/16/14 (61 layers)
    assert recipe_routing(source, "v25.05 release", 4, 61) == ("capacity_padded", (15, 16, 16, 14))
    assert recipe_routing(source, "v25.05 release", 16, 61)[1] == (3,) + (4,) * 14 + (2,)
    assert recipe_routing(source, "v25.10 release", 4, 61) == (None, ())
    assert recipe_routing("Megatron-Bridge performance summary", "v25.05", 4, 61) == (None, ())


DGXC_DEEPSEEK_ROW = {"run_id": "x", "source": "NVIDIA DGX Cloud Benchmarking recipe (deepseek_v3)",
                     "model": "Deepseek V3", "layers": "61", "hidden": "7168", "ffn_hidden": "18432", "heads": "128",
                     "vocab": "129280", "seq_len": "4096", "mlp": "swiglu", "attention": "mla", "moe_experts": "256",
                     "moe_topk": "8", "moe_ffn_hidden": "2048", "moe_shared_experts": "1", "system": "gb200-nvl72",
                     "num_gpus": "256", "tp": "2", "pp": "4", "vpp": "1", "cp": "1", "ep": "64", "micro_batch": "1",
                     "global_batch": "2048", "precision": "bf16", "notes": "v25.05 release"}
"""A DGX Cloud v25.05 DeepSeek-V3 GB200 row (r237's plan) as the runs CSV gives it (tests/test_nvlink_domains.py too)."""


def test_published_token_drop_rows_take_capacity_routing_and_alltoall() -> None:
    row = dict(DGXC_DEEPSEEK_ROW)
    case = case_from_row(row)
    assert case.error == "" and case.job is not None and case.plan is not None
    assert case.job.moe_routing == "capacity_padded"
    assert case.plan.ep_dispatcher == "alltoall"
    assert case.plan.pipeline_layers == (15, 16, 16, 14)


def test_sliding_window_keys_by_hand() -> None:
    # query i (1..s) sees min(i, w) keys: mean = w - w(w-1)/(2s) = 128 - 128*127/8192
    assert attended_keys(4096, 128) == pytest.approx(126.015625)
    assert attended_keys(4096, 0) == 2048.0  # causal half
    assert attended_keys(4096, 8192) == 2048.0  # a window wider than the sequence changes nothing
    assert attended_keys(4096, 4096) == pytest.approx(4096.5 / 2, rel=1e-3)  # the two forms meet


def test_gpt_oss_alternates_windowed_and_full_layers() -> None:
    model = load_model("gpt-oss-120b")
    assert model.kv_channels == 64  # q width 4096 > hidden 2880
    assert [model.attention_window(i) for i in range(4)] == [128, 0, 128, 0]
    job = JobSpec(global_batch=64, seq_len=4096)
    plan = Plan(dp=8, ep=8)
    windowed, full = layer_work(model, job, plan, 0), layer_work(model, job, plan, 1)
    # forward attention FLOPs: 2 * t * keys * heads * (d_qk + d_v), t = 4096, 64 heads of 64
    assert full.attention_flops == pytest.approx(2 * 4096 * 2048 * 64 * 128)
    assert windowed.attention_flops == pytest.approx(2 * 4096 * 126.015625 * 64 * 128)
    assert windowed.attention_kv_len == 128 and full.attention_kv_len == 4096
    assert windowed.gemms == full.gemms  # the window changes attention only
    # the step costs the two kinds of layer separately: faster than if every layer were full (at micro-batch
    # 4, where the layers' GPU work, not their host launches, sets their time)
    cluster = load_cluster("dgx-h100", num_gpus=8)
    all_full = replace(model, features=tuple(f for f in model.features if not f.startswith("sliding_window")))
    plan = Plan(dp=8, ep=8, micro_batch=4)
    fast = evaluate(prepare(model, cluster, job, plan), CONSTANTS).step_s
    slow = evaluate(prepare(all_full, cluster, job, plan), CONSTANTS).step_s
    assert fast < slow


def test_gpt_oss_rows_take_the_presets_attention_shape() -> None:
    row = {"run_id": "x", "source": "Megatron-Bridge performance summary (NeMo 26.04.01 container)",
           "model": "GPT OSS 120B", "layers": "36", "hidden": "2880", "ffn_hidden": "2880", "heads": "64",
           "kv_heads": "8", "vocab": "201088", "seq_len": "4096", "mlp": "swiglu", "attention": "gqa",
           "moe_experts": "128", "moe_topk": "4", "moe_ffn_hidden": "2880", "system": "dgx-h100", "num_gpus": "64",
           "tp": "1", "pp": "4", "ep": "8", "micro_batch": "1", "global_batch": "1280", "precision": "bf16",
           "notes": "MoE: token distribution force-balanced, dropless."}
    case = case_from_row(row)
    assert case.error == "" and case.model is not None
    assert case.model.kv_channels == 64  # not hidden / heads = 45
    assert case.model.attention_window(0) == 128 and case.model.attention_window(1) == 0
    assert case.model.linear_bias
    assert any("head_dim 64 from preset gpt-oss-120b" in a for a in case.assumptions)


def test_hf_configs_say_which_layers_are_windowed() -> None:
    import json
    from pathlib import Path

    from configurator.hf_config import spec_from_hf_dict

    fixture = json.loads((Path(__file__).parent / "fixtures" / "hf" / "gpt-oss-20b.json").read_text())
    oss = spec_from_hf_dict(fixture, name="gpt-oss-20b")  # no layer_types: the config's default alternation
    assert [oss.attention_window(i) for i in range(4)] == [128, 0, 128, 0]
    assert oss.kv_channels == load_model("gpt-oss-20b").kv_channels == 64
    assert oss.total_params == load_model("gpt-oss-20b").total_params
    gemma3 = spec_from_hf_dict(json.loads((Path(__file__).parent / "fixtures" / "hf" / "gemma3-1b.json").read_text()),
                               name="gemma3-1b")
    windows = [gemma3.attention_window(i) for i in range(12)]
    assert windows[5] == windows[11] == 0 and all(w > 0 for i, w in enumerate(windows) if i not in (5, 11))
    mixed = dict(fixture, layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 8)
    every_third = spec_from_hf_dict(mixed, name="x")
    assert [every_third.attention_window(i) for i in range(3)] == [128, 128, 0]
