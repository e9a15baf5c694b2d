"""Megatron-LM legality rules: each rule can reject a plan, and the message names the values."""

from __future__ import annotations

import pytest

from configurator.errors import InputError
from configurator.profiles import load_model
from configurator.specs import JobSpec, Plan, check_plan, plan_violations, resolve_plan
from configurator.specs.plan import balanced_layout

LLAMA8B = load_model("llama3-8b")
MIXTRAL = load_model("mixtral-8x7b")
JOB = JobSpec(global_batch=64, seq_len=4096)


def test_legal_plan_has_no_violations() -> None:
    assert plan_violations(LLAMA8B, JOB, Plan(tp=2, pp=2, dp=2, sp=True), 8) == []


@pytest.mark.parametrize("plan, model, needle", [
    (Plan(tp=3, dp=1), LLAMA8B, "num_attention_heads"),
    (Plan(tp=16, dp=1), LLAMA8B, "key/value heads"),
    (Plan(pp=3, dp=1), LLAMA8B, "num_layers=32"),
    (Plan(pp=2, vpp=3, dp=1), LLAMA8B, "pp*vpp"),
    (Plan(vpp=2, dp=1), LLAMA8B, "needs pp > 1"),
    (Plan(cp=3, dp=1), LLAMA8B, "2*cp"),
    (Plan(ep=2, dp=2), LLAMA8B, "MoE model"),
    (Plan(ep=3, dp=3), MIXTRAL, "num_experts=8"),
    (Plan(ep=4, dp=2), MIXTRAL, "ep*etp"),
    (Plan(dp=3), LLAMA8B, "global_batch=64"),
    (Plan(sp=True), LLAMA8B, "sequence parallel needs tp > 1"),
    (Plan(sharding="none", offload=0.5), LLAMA8B, "offload"),
    (Plan(pp=2, vpp=2, dp=8, micro_batch=8), LLAMA8B, "interleaved"),
])
def test_illegal_plans_are_rejected_with_reason(plan: Plan, model, needle: str) -> None:
    reasons = plan_violations(model, JOB, plan)
    assert any(needle in r for r in reasons), reasons


def test_world_size_must_match_gpus() -> None:
    reasons = plan_violations(LLAMA8B, JOB, Plan(tp=2, dp=2), num_gpus=8)
    assert any("must equal the 8 GPUs" in r for r in reasons)


def test_check_plan_raises_input_error() -> None:
    with pytest.raises(InputError, match="num_attention_heads"):
        check_plan(LLAMA8B, JOB, Plan(tp=3))


@pytest.mark.parametrize("kwargs, field", [
    ({"tp": 0}, "tp"), ({"dp": -1}, "dp"), ({"micro_batch": 1.5}, "micro_batch"),
    ({"sharding": "zero4"}, "sharding"), ({"recompute": "some"}, "recompute"),
    ({"offload": 1.2}, "offload"), ({"recompute_num_layers": 2}, "recompute_num_layers"),
    ({"pp": 2, "pipeline_layers": (32,)}, "pipeline_layers"),
])
def test_plan_fields_self_validate(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        Plan(**kwargs)
    assert err.value.field == field


def test_llama405b_meta_split_is_expressible_and_balanced() -> None:
    model = load_model("llama3-405b")
    layout = balanced_layout(model.num_layers, 16)
    assert layout == (7,) + (8,) * 14 + (7,)
    plan = Plan(tp=8, pp=16, dp=128, sp=True, pipeline_layers=layout)
    job = JobSpec(global_batch=2048, seq_len=8192)
    assert plan_violations(model, job, plan, 16384) == []
    assert plan.stage_layers(model)[0] == 7 and plan.stage_layers(model)[1] == 8


def test_uneven_split_must_sum_to_layers() -> None:
    plan = Plan(pp=2, dp=1, pipeline_layers=(15, 16))
    assert any("sum to 31" in r for r in plan_violations(LLAMA8B, JOB, plan))


def test_virtual_layout_assigns_chunks_round_robin() -> None:
    plan = Plan(pp=2, vpp=2, dp=1, pipeline_layers=(7, 9, 9, 7))
    assert plan.stage_layers(LLAMA8B) == (16, 16)


def test_resolve_plan_fills_megatron_defaults() -> None:
    plan, chosen = resolve_plan(16, tp=2, pp=2)
    assert (plan.dp, plan.sp, plan.sharding) == (4, True, "distopt")
    assert any("dp=4" in c for c in chosen) and any("sp=on" in c for c in chosen)
    with pytest.raises(InputError):
        resolve_plan(12, tp=8)


def test_expert_dp_folds_tp_cp_dp() -> None:
    assert Plan(tp=2, dp=8, ep=8, etp=1).expert_dp == 2


@pytest.mark.parametrize("changes", [
    {"ep_overlap": False},
    {"sharding": "zero3", "shard_group": 0},
    {"tp_overlap": True, "ep_overlap": None, "cp_comm": "a2a", "ep_dispatcher": "flex"},
    {"pipeline_layers": (7, 9)},
])
def test_positional_replacer_builds_the_plan_dataclasses_replace_builds(changes: dict) -> None:
    """``unchecked_replacer(*names)(plan, *values)`` is ``replace_unchecked(plan, **changes)`` and, for valid values,
    ``dataclasses.replace``: every field copied, the named ones changed (equal, hash-equal, all fields set)."""
    from dataclasses import replace

    from configurator.specs.plan import PLAN_FIELDS, replace_unchecked, unchecked_replacer

    plan = Plan(tp=2, pp=2, dp=4, ep=4, sp=True, micro_batch=2, recompute="selective",
                recompute_modules=("core_attn",), offload=0.5)
    built = unchecked_replacer(*changes)(plan, *changes.values())
    assert built == replace(plan, **changes) == replace_unchecked(plan, **changes)
    assert hash(built) == hash(replace(plan, **changes))
    assert all(getattr(built, f) == changes.get(f, getattr(plan, f)) for f in PLAN_FIELDS)


def test_positional_replacer_rejects_unknown_and_repeated_fields() -> None:
    from configurator.specs.plan import unchecked_replacer

    with pytest.raises(TypeError, match="no field 'tensor'"):
        unchecked_replacer("tp", "tensor")
    with pytest.raises(TypeError, match="named twice"):
        unchecked_replacer("tp", "tp")
