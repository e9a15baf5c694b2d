"""What a search shares while it costs plans (``cost/step.py`` ``_shared_work``, ``_rates_for``; ``cost/compute.py``
``time_work``/``expert_gemms_s`` found by identity) changes no number: every plan costed inside a search's memo,
after many others that share its works, gets the very report and bound it gets alone."""

from __future__ import annotations

import itertools

from configurator.cost import step
from configurator.cost.compute import WORK_TIME_MEMO
from configurator.cost.constants import load_calibration
from configurator.cost.schedule import SCHEDULE_MEMO
from configurator.cost.step import busy_lower_bound, evaluate, prepare
from configurator.profiles import load_cluster, load_model
from configurator.specs.job import JobSpec
from configurator.specs.plan import Plan, check_plan
from configurator.errors import InputError


def _plans(model, job) -> list[Plan]:  # type: ignore[no-untyped-def]
    """Options and knob variants of a few structures: what a search costs one after another."""
    out = []
    for (tp, pp, vpp, ep), sharding, offload, rc, (tpo, epo), disp in itertools.product(
            ((2, 2, 2, 2), (1, 4, 1, 4), (2, 1, 1, 8)), ("distopt", "zero1", "zero2", "zero3", "hsdp"), (0.0, 0.5),
            (("none", ()), ("selective", ("layernorm", "moe_act")), ("full", ())), ((True, True), (False, None)),
            (None, "alltoall")):
        dp = 64 // (tp * pp)
        plan = Plan(tp=tp, pp=pp, vpp=vpp, dp=dp, ep=ep, sp=tp > 1, sharding=sharding,
                    shard_group=8 if sharding == "hsdp" else 0, offload=offload, recompute=rc[0], recompute_modules=rc[1],
                    tp_overlap=tpo if tp > 1 else None, ep_overlap=epo if ep > 1 and epo else None,
                    ep_dispatcher=disp, micro_batch=1)
        try:
            check_plan(model, job, plan, num_gpus=64)
        except (InputError, ValueError):
            continue
        out.append(plan)
    return out


def test_timings_shared_across_plans_change_no_report() -> None:
    model, cluster = load_model("mixtral-8x7b"), load_cluster("dgx-h100", num_gpus=64)
    job = JobSpec(global_batch=256, seq_len=4096)
    constants = load_calibration()
    plans = _plans(model, job)
    assert len(plans) >= 40
    alone = [(evaluate(prepare(model, cluster, job, p), constants), busy_lower_bound(prepare(model, cluster, job, p),
                                                                                    constants)) for p in plans]
    tokens = (WORK_TIME_MEMO.set({}), SCHEDULE_MEMO.set({}))
    try:
        # twice over, in reverse the second time: later plans hit what earlier ones left
        for order in (range(len(plans)), reversed(range(len(plans)))):
            for i in order:
                inp = prepare(model, cluster, job, plans[i])
                assert (evaluate(inp, constants), busy_lower_bound(inp, constants)) == alone[i], plans[i]
        # one object per equal work and per rates: the timings are found by identity
        a, b = prepare(model, cluster, job, plans[0]), prepare(model, cluster, job, plans[0])
        assert all(x[0] is y[0] for sa, sb in zip(a.stages, b.stages) for x, y in zip(sa.works, sb.works))
        assert step._rates_for(a, constants) is step._rates_for(b, constants)
    finally:
        WORK_TIME_MEMO.reset(tokens[0])
        SCHEDULE_MEMO.reset(tokens[1])
