"""CUDA graphs in the host launch model (cost/launch.py) and the recipes' graph scopes (runs.py)."""

from __future__ import annotations

import math

import pytest

from configurator.cost.launch import dispatcher_syncs, layer_launch_s, layer_launches
from configurator.errors import InputError
from configurator.runs import graphs_from_notes, recipe_cuda_graphs
from configurator.specs.job import JobSpec

ALL_SCOPES = ("attn", "moe_router", "moe_preprocess")


def test_eager_layers_launch_every_kernel() -> None:
    # dense 24 kernels forward, twice as many backward; an MoE layer 24 + 30
    assert layer_launches(False) == (24, 48)
    assert layer_launches(True) == (54, 108)


def test_captured_scopes_cost_one_replay_each_instead_of_their_kernels() -> None:
    # MoE layer, attn (12) + router (8) + preprocess (6) captured: 54 - 26 = 28 eager kernels forward,
    # 56 backward, plus 3 replays of 2 launch-equivalents in each pass
    assert layer_launches(True, ALL_SCOPES) == (28 + 6, 56 + 6)
    # a dense layer has no router or dispatcher to capture
    assert layer_launches(False, ("moe_router", "moe_preprocess")) == (24, 48)
    assert layer_launches(False, ALL_SCOPES) == (12 + 2, 24 + 2)
    assert layer_launches(True, ("full_iteration",)) == (0.0, 0.0)


def test_one_moe_layer_launch_term_with_and_without_graphs() -> None:
    launch_s, sync_s = 10e-6, 20e-6
    # 100 us of forward GPU work, 200 us backward, one dispatcher sync
    f, b = layer_launch_s(100e-6, 200e-6, True, launch_s, sync_s, syncs=1)
    assert math.isclose(f, 54 * 10e-6 - 100e-6 + 20e-6 + 8 * 10e-6)  # 440 + 100 us
    assert math.isclose(b, 108 * 10e-6 - 200e-6)  # 880 us
    f, b = layer_launch_s(100e-6, 200e-6, True, launch_s, sync_s, syncs=1, graphs=ALL_SCOPES)
    assert math.isclose(f, 34 * 10e-6 - 100e-6 + 20e-6 + 8 * 10e-6)  # 240 + 100 us
    assert math.isclose(b, 62 * 10e-6 - 200e-6)  # 420 us
    assert layer_launch_s(100e-6, 200e-6, True, launch_s, sync_s, syncs=0, graphs=("full_iteration",)) == (0.0, 0.0)


def test_dispatcher_syncs_only_for_dropless_dynamic_buffers() -> None:
    assert dispatcher_syncs(True, 8, "learned") == 1
    assert dispatcher_syncs(True, 8, "force_balanced", ALL_SCOPES) == 1  # the graph does not remove the D2H
    assert dispatcher_syncs(True, 8, "capacity_padded") == 0
    assert dispatcher_syncs(True, 8, "learned", ("full_iteration",)) == 0
    assert dispatcher_syncs(True, 1, "learned") == 0
    assert dispatcher_syncs(False, 8, "learned") == 0


def test_published_rows_take_their_recipe_graph_scopes() -> None:
    bridge = "Megatron-Bridge performance summary (NeMo {} container)"
    assert recipe_cuda_graphs(bridge.format("26.08"), "Qwen3_235B_a22B", "gb200-nvl72", "fp8") == ("full_iteration",)
    assert recipe_cuda_graphs(bridge.format("25.11"), "Qwen3_30B_a3B", "dgx-h100", "fp8") == ()
    assert recipe_cuda_graphs(bridge.format("25.11"), "Qwen3_30B_a3B", "dgx-h100", "bf16") == ("moe_router",
                                                                                             "moe_preprocess")
    assert recipe_cuda_graphs(bridge.format("25.11"), "DeepSeekV3", "gb200-nvl72", "bf16") == ("moe_router",
                                                                                              "moe_preprocess")
    assert recipe_cuda_graphs(bridge.format("26.04.01"), "GPT OSS 120B", "gb300-nvl72", "bf16") == ALL_SCOPES
    assert recipe_cuda_graphs("MosaicML llm-foundry MPT training benchmarks", "MPT-7B", "dgx-h100", "bf16") == ()
    assert graphs_from_notes("HybridEP, CUDA graphs (attn, router, preprocess). NNODES=64") == ALL_SCOPES
    assert graphs_from_notes("Dispatcher DeepEP; cross-node EP") is None


def test_unknown_graph_scope_is_refused_by_name() -> None:
    with pytest.raises(InputError, match="cuda_graphs"):
        JobSpec(global_batch=8, seq_len=1024, cuda_graphs=("mamba",))  # (Megatron's, for Mamba layers: not modelled)


def test_grouped_gemms_launch_once_per_local_expert() -> None:
    # Transformer Engine's grouped linear launches one cuBLAS GEMM per local expert: 16 local experts
    # add 2 x 16 forward (FC1, FC2) and 4 x 16 backward launches; none when the layer is not MoE
    assert layer_launches(True, (), local_experts=16) == (54 + 32, 108 + 64)
    assert layer_launches(True, ALL_SCOPES, local_experts=16) == (28 + 32 + 6, 56 + 64 + 6)
    assert layer_launches(False, (), local_experts=16) == (24, 48)
    assert layer_launches(True, ("full_iteration",), local_experts=16) == (0.0, 0.0)
