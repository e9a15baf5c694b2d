"""The plan knobs added for the 2026-11-29 INTERFACE additions: validated on construction, round-trip
through JSON, and legality rules that need the model/job."""

import pytest

from configurator.errors import InputError
from configurator.profiles import load_model
from configurator.specs.job import JobSpec
from configurator.specs.plan import Plan, plan_from_dict, plan_violations


def test_new_knobs_round_trip_through_the_plan_object():
    plan = Plan(tp=2, dp=4, cp=2, sharding="hsdp", shard_group=4, recompute="selective",
                recompute_modules=("core_attn", "moe_act"), tp_overlap=True, ep_overlap=False, cp_comm="a2a")
    assert plan_from_dict(plan.as_dict()) == plan
    assert "hsdp4" in plan.describe() and "cp_comm=a2a" in plan.describe()


@pytest.mark.parametrize("kw, field", [
    ({"sharding": "hsdp"}, "shard_group"),
    ({"sharding": "hsdp", "shard_group": 1}, "shard_group"),
    ({"shard_group": 4}, "shard_group"),
    ({"recompute": "full", "recompute_modules": ("mlp",)}, "recompute_modules"),
    ({"recompute": "selective", "recompute_modules": ("attention",)}, "recompute_modules"),
    ({"recompute": "selective", "recompute_modules": ("mlp", "mlp")}, "recompute_modules"),
    ({"tp_overlap": "yes"}, "tp_overlap"),
    ({"cp_comm": "ring"}, "cp_comm"),
    ({"ep_dispatcher": "deepep"}, "ep_dispatcher"),
])
def test_bad_knob_values_name_their_field(kw, field):
    with pytest.raises(InputError) as err:
        Plan(**kw)
    assert err.value.field == field


def test_legality_of_the_knobs_depends_on_the_model_and_job():
    model = load_model("llama3-8b")
    job = JobSpec(global_batch=64, seq_len=8192, precision="bf16")
    assert plan_violations(model, job, Plan(dp=8, sharding="hsdp", shard_group=8)) == []
    assert any("shard_group=3" in r for r in plan_violations(model, job, Plan(dp=8, sharding="hsdp", shard_group=3)))
    assert any("needs cp > 1" in r for r in plan_violations(model, job, Plan(dp=8, cp_comm="a2a")))
    # Ulysses-style a2a splits the 32 heads over cp=3: they do not divide.
    reasons = plan_violations(model, JobSpec(global_batch=64, seq_len=8196, precision="bf16"),
                              Plan(dp=2, cp=3, cp_comm="a2a"))
    assert any("cp_comm=a2a" in r for r in reasons)
    assert any("ep_overlap needs an MoE model" in r for r in plan_violations(model, job, Plan(dp=8, ep_overlap=True)))


def test_megatron_refusals_of_the_ep_overlap_and_fp8_module_recompute_are_legality_rules():
    """Megatron-Core's TransformerConfig asserts these (found by its validator on a searched plan)."""
    from configurator.search.knobs import knob_variants

    moe = load_model("mixtral-8x7b")
    job = JobSpec(global_batch=64, seq_len=4096, precision="bf16")
    ok = Plan(dp=8, ep=8, pp=1, ep_overlap=True)
    assert plan_violations(moe, job, ok) == []
    for bad, words in ((Plan(dp=8, ep=8, recompute="full", ep_overlap=True), "full recompute"),
                       (Plan(dp=4, pp=2, ep=4, ep_overlap=True), "interleaved"),
                       (Plan(dp=8, ep=1, ep_overlap=True), "ep > 1"),
                       (Plan(dp=8, ep=8, recompute="selective", recompute_modules=("moe",), ep_overlap=True),
                        "moe module")):
        assert any(words in r for r in plan_violations(moe, job, bad)), bad.describe()
    # The search never offers the overlap where it cannot run.
    full = Plan(dp=8, ep=8, recompute="full")
    assert {v.ep_overlap for v in knob_variants(full, "megatron", moe.num_attention_heads, True)} == {None}
    assert {v.ep_overlap for v in knob_variants(Plan(dp=8, ep=8), "megatron", moe.num_attention_heads, True)} \
        == {False, True}
    fp8 = JobSpec(global_batch=64, seq_len=4096, precision="fp8")
    plan = Plan(dp=8, ep=8, recompute="selective", recompute_modules=("layernorm", "moe_act"))
    assert plan_violations(moe, job, plan) == []
    assert any("delayed scaling" in r for r in plan_violations(moe, fp8, plan))


def test_a_runtime_default_overlap_applies_only_where_megatron_can_run_it():
    from configurator.cost.constants import load_runtime_cost
    from configurator.cost.knobs import effective_knobs

    from dataclasses import replace as dc_replace

    # Megatron-Bridge's recipes leave the EP all-to-all overlap off unless a workload config turns it on
    assert not load_runtime_cost("nemo").ep_comm_overlap
    nemo = dc_replace(load_runtime_cost("nemo"), ep_comm_overlap=True)  # a runtime whose default is on
    assert effective_knobs(Plan(dp=8, ep=8), nemo).ep_overlap
    assert not effective_knobs(Plan(dp=8, ep=8, recompute="full"), nemo).ep_overlap
