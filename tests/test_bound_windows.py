"""A structure's bound times each kind of attention layer it has, and stays a lower bound of its step.

GPT-OSS alternates 128-key sliding-window layers with full-attention ones (``ModelSpec.attention_window``), and
``prepare`` gives the two kinds their own works. ``StructureBounds`` timed one layer per MoE-ness, the first (a
windowed one), for all 36 layers: at 131,072 tokens, where the full layers' attention is most of the step, its
bound was about half of every plan's step, so the search costed 26,680 options of this job before the bound of
what was left reached the 5th best step. Each kind is now timed and counted per virtual stage (``_layout``), so
the bound is the step model's own ``busy_lower_bound`` again, and is still below every evaluated step."""

from __future__ import annotations

import random

import pytest

from configurator import JobSpec, load_cluster, load_model
from configurator.cost.constants import load_calibration
from configurator.cost.step import busy_lower_bound, evaluate, prepare
from configurator.search.bound import StructureBounds
from configurator.search.knobs import optimistic_inputs
from configurator.search.space import SearchContext, enumerate_plans
from configurator.specs.plan import Plan, replace_unchecked

CONSTANTS = load_calibration()


def _long_ctx(seq_len: int = 131072) -> SearchContext:
    """The long-context job ``benchmarks/search_speed.py`` times: GPT-OSS-120B on 64 GB200, 64 sequences."""
    return SearchContext(model=load_model("gpt-oss-120b"), cluster=load_cluster("gb200-nvl72", num_gpus=64),
                         job=JobSpec(global_batch=64, seq_len=seq_len))


def _sample(ctx: SearchContext, n: int) -> list[Plan]:
    plans = [p for p in enumerate_plans(ctx)]
    sample = random.Random(0).sample(plans, min(n, len(plans)))
    # Pipelines first split the alternating layers unevenly (odd chunks); recompute forms time the kinds too.
    sample += [p for p in plans if p.pp > 1][:10]
    sample += [replace_unchecked(p, recompute="full", recompute_num_layers=k) for p in sample[:10] for k in (0, 1)]
    sample += [replace_unchecked(p, recompute="selective") for p in sample[:5]]
    return sample


def test_the_layout_counts_windowed_and_full_attention_layers_apart() -> None:
    """GPT-OSS-120B's 36 MoE layers: 18 windowed (even indices, the first MoE layer's kind) and 18 full; a
    virtual stage of an odd number of layers starting at layer 0 has one more windowed layer. At a sequence no
    longer than the window every layer attends alike: one kind."""
    bounds = StructureBounds(_long_ctx(), CONSTANTS)
    virtual, _ = bounds._layout(Plan(pp=4, vpp=3, dp=16))  # 36 / 12 = 3 layers per virtual stage
    assert virtual[0] == (0, 2, 0, 1) and virtual[1] == (0, 1, 0, 2)
    assert [sum(col) for col in zip(*virtual)] == [0, 18, 0, 18]
    short = StructureBounds(_long_ctx(128), CONSTANTS)
    assert short._layout(Plan(pp=4, vpp=3, dp=16))[0][0] == (0, 3, 0, 0)


def test_the_bound_is_the_step_models_and_below_every_step_of_the_long_context_job() -> None:
    """Every knob variant the search evaluates of a sample of the job's structures (pipelines, CP, TP, recompute):
    the bound equals ``busy_lower_bound`` (to rounding) and, with ``end_of_step_bound``, never exceeds the
    evaluated step; and it is close: on the pipeline-free plans (no bubble to leave out) within 10% of the step
    (so a bound 1.3x too high, or the old windowed-only one at ~0.5x, fails here)."""
    ctx = _long_ctx()
    bounds = StructureBounds(ctx, CONSTANTS)
    checked = 0
    closest = 0.0
    for plan in _sample(ctx, 40):
        inputs = prepare(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime)
        for variant in optimistic_inputs(inputs):
            p = variant.plan
            if bounds.needs_preparation(p):
                continue
            own = bounds.bound(p)
            assert own == pytest.approx(busy_lower_bound(variant, CONSTANTS), rel=1e-11), p.describe()
            step = evaluate(variant, CONSTANTS).step_s
            assert own + bounds.end_of_step_bound(p) <= step, p.describe()
            if p.pp == 1:
                closest = max(closest, own / step)
            checked += 1
    assert checked >= 60
    assert closest > 0.9


def test_a_familys_bounds_stay_below_its_members_on_the_long_context_job() -> None:
    """A family's shared bound (the whole model's layers of each kind, ``_model_s``) and its lazy bound stay below
    each member's own bound; on a family without a pipeline (its mean rank is its busiest) they are equal to
    rounding, so a family bound that counted a kind's layers twice would fail here."""
    ctx = _long_ctx()
    bounds = StructureBounds(ctx, CONSTANTS)
    families: dict[tuple, list[Plan]] = {}
    for plan in enumerate_plans(ctx):
        key = bounds.family_key(plan)
        if key is not None:
            families.setdefault(key, []).append(plan)
    flat = 0
    for key in random.Random(1).sample(sorted(families, key=repr), 30):
        members = families[key]
        shared = bounds.family_bound(members)
        least = min(bounds.bound(p) for p in members)
        assert bounds.lazy_family_bound(members) <= shared < least, members[0].describe()
        if all(p.pp == 1 for p in members):
            assert shared == pytest.approx(least, rel=1e-8)
            flat += 1
    assert flat >= 3
