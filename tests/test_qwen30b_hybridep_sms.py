"""HybridEP's SMs in Megatron-Bridge's recipes (issue 12): every release sets ``moe_hybridep_num_sms = 32`` for the
HybridEP backend, the only flex backend on GB200/GB300, so compute hidden under the flex all-to-all runs on
(S - 32) / S of the SMs, not on DeepEP's (S - 20) / S (runs.py ``recipe_flex_sms``, cost/knobs.py
``flex_overlap_compute_slowdown``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from configurator.cost.knobs import flex_overlap_compute_slowdown
from configurator.cost.step import estimate_step
from configurator.errors import InputError
from configurator.runs import HYBRIDEP_RECIPE_SMS, case_from_row, recipe_flex_sms
from configurator.specs.job import JobSpec

QWEN30B = "Qwen3_30B_a3B"


def _src(container: str) -> str:
    return f"Megatron-Bridge performance summary (NeMo {container} container)"


def test_the_compute_slowdown_is_the_dispatchers_share_of_the_sms() -> None:
    # GB200: 152 SMs. HybridEP's 32 -> 32/152 = 0.2105; DeepEP's default 20 -> 20/152 = 0.1316.
    assert flex_overlap_compute_slowdown(152, 32) == pytest.approx(32 / 152)
    assert flex_overlap_compute_slowdown(152) == pytest.approx(20 / 152)
    assert flex_overlap_compute_slowdown(152, 0) == pytest.approx(20 / 152)
    # Unknown SM count: NCCL's generic share, whatever the dispatcher holds.
    assert flex_overlap_compute_slowdown(0, 32) == pytest.approx(0.1)


def test_megatron_bridge_hybridep_rows_hold_32_sms() -> None:
    assert HYBRIDEP_RECIPE_SMS == 32
    assert recipe_flex_sms(_src("26.08"), "DeepSeekV3", "gb200-nvl72", "flex") == 32
    assert recipe_flex_sms(_src("25.11"), QWEN30B, "gb300-nvl72", "flex") == 32
    # Qwen3-30B's configs are all hybridep from 26.02.01 (v0.3.1); 26.02's H100 one was DeepEP.
    assert recipe_flex_sms(_src("26.02.01"), QWEN30B, "dgx-h100", "flex") == 32
    assert recipe_flex_sms(_src("26.02"), QWEN30B, "dgx-h100", "flex") == 0
    # Off NVL72 other models' backends vary (DeepEP on 26.04.01's B200 DeepSeek-V3 V2): the default.
    assert recipe_flex_sms(_src("26.04.01"), "DeepSeekV3", "dgx-b200", "flex") == 0
    assert recipe_flex_sms(_src("26.08"), QWEN30B, "gb200-nvl72", "alltoall") == 0
    assert recipe_flex_sms("Megatron-MoE-ModelZoo GB200 table", QWEN30B, "gb200-nvl72", "flex") == 0


def _row(container: str, system: str) -> dict[str, str]:
    return {"run_id": "t", "source": _src(container), "model": QWEN30B, "layers": "48", "hidden": "2048",
            "ffn_hidden": "768", "heads": "32", "kv_heads": "4", "vocab": "151936", "seq_len": "4096",
            "mlp": "swiglu", "attention": "gqa", "moe_experts": "128", "moe_topk": "8", "moe_ffn_hidden": "768",
            "moe_shared_experts": "0", "system": system, "num_gpus": "8", "tp": "1", "pp": "1", "vpp": "1",
            "cp": "1", "ep": "8", "dp": "8", "sp": "0", "sharding": "distopt", "micro_batch": "4",
            "global_batch": "512", "precision": "fp8",
            "notes": "MoE: token distribution force-balanced, dropless."}


def test_the_recipes_sms_slow_only_the_compute_hidden_under_the_all_to_all() -> None:
    case = case_from_row(_row("26.08", "gb200-nvl72"))  # full-iteration graphs + the paired EP overlap
    assert not case.error
    assert case.job.flex_dispatcher_sms == 32 and case.plan.ep_overlap
    assert any("HybridEP on 32 SMs" in a for a in case.assumptions)
    with32 = estimate_step(case.model, case.cluster, case.job, case.plan, runtime=case.runtime)
    default = estimate_step(case.model, case.cluster, replace(case.job, flex_dispatcher_sms=0), case.plan,
                            runtime=case.runtime)
    assert with32.step_s > default.step_s
    # Without the overlap nothing hides under the all-to-all, so the SM count changes nothing.
    plan = replace(case.plan, ep_overlap=False)
    a = estimate_step(case.model, case.cluster, case.job, plan, runtime=case.runtime)
    b = estimate_step(case.model, case.cluster, replace(case.job, flex_dispatcher_sms=0), plan, runtime=case.runtime)
    assert a.step_s == pytest.approx(b.step_s, rel=1e-12)


def test_a_negative_sm_count_is_refused_naming_the_field() -> None:
    with pytest.raises(InputError, match="flex_dispatcher_sms"):
        JobSpec(global_batch=8, seq_len=128, flex_dispatcher_sms=-1)
