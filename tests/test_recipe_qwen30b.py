"""Qwen3-30B-A3B's Megatron-Bridge performance rows get the settings their container's recipe ran (issue 12): the
token dispatcher of each release (runs.py ``_qwen3_30b_dispatcher``: no backend, hence alltoall, on 25.11's B200
and H100 configs) and, where a summary table lists a layout its release does not ship, the shipped one
(runs.py ``shipped_layout``: 26.02.01's H100 row)."""

from __future__ import annotations

from configurator.runs import case_from_row, recipe_dispatcher, shipped_layout

QWEN30B = "Qwen3_30B_a3B"


def _src(container: str) -> str:
    return f"Megatron-Bridge performance summary (NeMo {container} container)"


def _row(container: str, system: str, gpus: int, tp: int, pp: int, vpp: int, ep: int, dp: int, mb: int,
         gbs: int) -> dict[str, str]:
    return {"run_id": "t", "source": _src(container), "model": QWEN30B, "layers": "48", "hidden": "2048",
            "ffn_hidden": "768", "heads": "32", "kv_heads": "4", "vocab": "151936", "seq_len": "4096",
            "mlp": "swiglu", "attention": "gqa", "moe_experts": "128", "moe_topk": "8", "moe_ffn_hidden": "768",
            "moe_shared_experts": "0", "system": system, "num_gpus": str(gpus), "tp": str(tp), "pp": str(pp),
            "vpp": str(vpp), "cp": "1", "ep": str(ep), "dp": str(dp), "sp": "0", "sharding": "distopt",
            "micro_batch": str(mb), "global_batch": str(gbs), "precision": "fp8",
            "notes": "MoE: token distribution force-balanced, dropless."}


def test_qwen3_30b_dispatcher_follows_each_containers_recipe() -> None:
    # 25.11 (v0.2.x): hybridep on GB200/GB300 only; B200 and H100 set no backend -> the provider's alltoall.
    assert recipe_dispatcher(_src("25.11"), QWEN30B, "gb200-nvl72", "fp8") == "flex"
    assert recipe_dispatcher(_src("25.11"), QWEN30B, "gb300-nvl72", "fp8") == "flex"
    assert recipe_dispatcher(_src("25.11"), QWEN30B, "dgx-b200", "fp8") == "alltoall"
    assert recipe_dispatcher(_src("25.11"), QWEN30B, "dgx-h100", "fp8") == "alltoall"
    # 26.02 (v0.3.0): H100 deepep and B300 hybridep (flex), B200 still none.
    assert recipe_dispatcher(_src("26.02"), QWEN30B, "dgx-h100", "fp8") == "flex"
    assert recipe_dispatcher(_src("26.02"), QWEN30B, "dgx-b300", "fp8") == "flex"
    assert recipe_dispatcher(_src("26.02"), QWEN30B, "dgx-b200", "fp8") == "alltoall"
    # 26.02.01 (v0.3.1) on: the pretrain script sets flex on every GPU.
    for container in ("26.02.01", "26.04", "26.08"):
        assert recipe_dispatcher(_src(container), QWEN30B, "dgx-b200", "fp8") == "flex"
        assert recipe_dispatcher(_src(container), QWEN30B, "dgx-h100", "fp8") == "flex"
    # Other sources are not read from Megatron-Bridge's recipes.
    assert recipe_dispatcher("Megatron-MoE-ModelZoo", QWEN30B, "dgx-b200", "fp8") is None


def test_a_25_11_b200_row_runs_the_alltoall_dispatcher() -> None:
    case = case_from_row(_row("25.11", "dgx-b200", 8, 1, 1, 1, 8, 8, 1, 512))
    assert not case.error
    assert case.plan.ep_dispatcher == "alltoall"
    assert not any("dispatcher flex" in a for a in case.assumptions)


def test_the_26_02_01_h100_row_runs_the_shipped_ep16_layout() -> None:
    # The table lists TP1 PP2 VP12 EP8; v0.3.1's H100 config is EP16 without PP, so 16 GPUs / (1 * 1 * 1) = dp 16.
    assert shipped_layout(_src("26.02.01"), QWEN30B, "dgx-h100", (1, 2, 12, 8)) == (1, 1, 1, 16)
    case = case_from_row(_row("26.02.01", "dgx-h100", 16, 1, 2, 12, 8, 8, 1, 1024))
    assert not case.error
    plan = case.plan
    assert (plan.tp, plan.pp, plan.vpp, plan.ep, plan.dp) == (1, 1, 1, 16, 16)
    assert plan.ep_overlap is None  # v0.3.1 sets moe_a2a_overlap=False
    assert plan.ep_dispatcher == "flex"  # hybridep
    assert any("shipped config" in a and "1/2/12/8" in a for a in case.assumptions)


def test_tables_that_match_their_release_keep_their_layout() -> None:
    # 26.02 (v0.3.0) did ship PP2 VP12 EP8 for H100; 26.04's table already lists EP16.
    assert shipped_layout(_src("26.02"), QWEN30B, "dgx-h100", (1, 2, 12, 8)) is None
    assert shipped_layout(_src("26.04"), QWEN30B, "dgx-h100", (1, 1, 1, 16)) is None
    assert shipped_layout("torchtitan", QWEN30B, "dgx-h100", (1, 2, 12, 8)) is None
    case = case_from_row(_row("26.02", "dgx-h100", 16, 1, 2, 12, 8, 8, 1, 1024))
    assert (case.plan.pp, case.plan.vpp, case.plan.ep, case.plan.dp) == (2, 12, 8, 8)


def test_mxfp8_recipes_capture_the_full_iteration_from_26_06() -> None:
    from configurator.runs import recipe_cuda_graphs, recipe_ep_overlap, recipe_fused_expert_mlp

    # v0.5.0 (26.06): GB200/GB300/B300 MXFP8 configs run full_iteration + moe_a2a_overlap + the fused grouped MLP.
    for gpu in ("gb200-nvl72", "gb300-nvl72", "dgx-b300"):
        assert recipe_cuda_graphs(_src("26.06"), QWEN30B, gpu, "fp8") == ("full_iteration",)
        assert recipe_ep_overlap(_src("26.06"), QWEN30B, gpu, "fp8", (1, 1, 1, 8), 512)
        assert recipe_fused_expert_mlp(_src("26.06"), QWEN30B, gpu, "fp8")
    # B200 joins in v0.5.1 (26.06.01); 26.04.01 (v0.4.2) still captured only router + preprocess on GB200.
    assert recipe_cuda_graphs(_src("26.06"), QWEN30B, "dgx-b200", "fp8") == ("attn", "moe_router", "moe_preprocess")
    assert recipe_cuda_graphs(_src("26.06.01"), QWEN30B, "dgx-b200", "fp8") == ("full_iteration",)
    assert recipe_cuda_graphs(_src("26.08"), QWEN30B, "dgx-b200", "fp8") == ("full_iteration",)
    assert recipe_cuda_graphs(_src("26.04.01"), QWEN30B, "gb200-nvl72", "fp8") == ("moe_router", "moe_preprocess")
    assert not recipe_fused_expert_mlp(_src("26.04.01"), QWEN30B, "gb200-nvl72", "fp8")
    # bf16 and H100's FP8-CS never do.
    assert recipe_cuda_graphs(_src("26.08"), QWEN30B, "gb200-nvl72", "bf16") != ("full_iteration",)
    assert recipe_cuda_graphs(_src("26.08"), QWEN30B, "dgx-h100", "fp8") == ()


def test_deepseek_v3_rows_recompute_their_recipes_modules() -> None:
    from configurator.runs import recipe_recompute_modules

    ds = "DeepSeekV3"
    # 25.11 (v0.2.x): one config per GPU; GB300's moe_act only for bf16 rows (the plan check refuses it under fp8).
    assert recipe_recompute_modules(_src("25.11"), "", ds, "gb200-nvl72", "bf16", (1, 4, 4, 64)) == ("mla_up_proj",)
    assert recipe_recompute_modules(_src("25.11"), "", ds, "gb300-nvl72", "bf16", (1, 2, 4, 32)) == ("moe_act",)
    assert recipe_recompute_modules(_src("25.11"), "", ds, "gb300-nvl72", "fp8", (1, 2, 4, 32)) == ()
    # 26.04.01 (v0.4.2): B200 V1 (PP16 EP8) mla_up_proj; the MXFP8 V2 config (PP8 VP2 EP32) adds mlp.
    assert recipe_recompute_modules(_src("26.04.01"), "", ds, "dgx-b200", "fp8", (1, 16, 1, 8)) == ("mla_up_proj",)
    assert recipe_recompute_modules(_src("26.04.01"), "", ds, "dgx-b200", "fp8", (1, 8, 2, 32)) == ("mla_up_proj",
                                                                                                    "mlp")
    # 26.04 (v0.4.0) had no PP8 VP2 EP32 B200 config; a layout no config ships takes nothing.
    assert recipe_recompute_modules(_src("26.04"), "", ds, "dgx-b200", "fp8", (1, 8, 2, 32)) == ()
    # 26.08 (v0.6.0): GB200 fp8mx PP4 VP4 EP64 mla_up_proj; GB300 fp8mx none.
    assert recipe_recompute_modules(_src("26.08"), "", ds, "gb200-nvl72", "fp8", (1, 4, 4, 64)) == ("mla_up_proj",)
    assert recipe_recompute_modules(_src("26.08"), "", ds, "gb300-nvl72", "fp8", (1, 2, 8, 32)) == ()
    # Other models and sources take nothing from this table.
    assert recipe_recompute_modules(_src("25.11"), "", QWEN30B, "gb200-nvl72", "bf16", (1, 1, 1, 8)) == ()
    assert recipe_recompute_modules("DGX Cloud", "", ds, "gb200-nvl72", "bf16", (1, 4, 4, 64)) == ()
