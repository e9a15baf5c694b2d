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
