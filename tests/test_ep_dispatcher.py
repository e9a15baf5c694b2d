"""The MoE token dispatcher as a plan knob (issue 12): Megatron's ``alltoall`` or ``flex`` (DeepEP/HybridEP).

Costed (fewer bytes across nodes, ``cost/moe.py``; the flex kernels' SMs slow the compute they hide
under, ``cost/knobs.py``), searched where Megatron runs it, emitted as Megatron spells it, and read from
the published rows' notes so each row is costed with the dispatcher it ran.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.cost.constants import CostConstants, hardware_default, load_calibration, load_runtime_cost
from configurator.cost.knobs import effective_knobs, flex_overlap_compute_slowdown, megatron_warnings
from configurator.cost.step import _rates_for, _stage_times, evaluate, link_efficiency, prepare
from configurator.emit.megatron import megatron_args
from configurator.ep_buffers import flex_backend
from configurator.errors import InputError
from configurator.runs import dispatcher_from_notes, read_runs, recipe_dispatcher
from configurator.search.knobs import best_knobs, dispatcher_choices, knob_lower_bound, knob_variants
from configurator.cost.step import busy_lower_bound
from configurator.specs.plan import balanced_layout, plan_from_dict, plan_violations

C = load_calibration()
RUNS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "published_runs.csv"


def _stage0(model, cluster, job, plan, c=C):  # type: ignore[no-untyped-def]
    inp = prepare(model, cluster, job, plan)
    rates = _rates_for(inp, c)
    comm = inp.comm.with_efficiency(link_efficiency(c))
    return _stage_times(inp, rates, comm, c, 0)


def test_flex_kernels_slow_the_compute_they_hide_under_by_their_share_of_the_sms() -> None:
    # DeepEP holds 20 SMs (Megatron's default): 20/132 on Hopper, 20/148 on Blackwell.
    assert hardware_default("flex_dispatcher_sms") == 20
    assert flex_overlap_compute_slowdown(132) == pytest.approx(20 / 132)
    assert flex_overlap_compute_slowdown(148) == pytest.approx(20 / 148)
    # EP8 inside one H100 node: both dispatchers send the same bytes (one NVLink domain), and with the NCCL
    # all-to-all at the flex kernels' link efficiency (cost.json flex_dispatcher_nvlink_efficiency) the same
    # time, so with the all-to-all hidden the only difference is the compute slowdown: (20/132 - 0.1) of
    # the hidden time.
    same = CostConstants.from_dict({**dict(C.values),
                                    "link.alltoall": hardware_default("flex_dispatcher_nvlink_efficiency")})
    model = load_model("qwen3-30b-a3b")
    cluster = load_cluster("dgx-h100", num_gpus=8)
    job = JobSpec(global_batch=64, seq_len=4096)
    base = Plan(dp=8, ep=8, ep_overlap=True)
    f_a, b_a, _ = _stage0(model, cluster, job, Plan(dp=8, ep=8, ep_overlap=True, ep_dispatcher="alltoall"), same)
    f_x, b_x, _ = _stage0(model, cluster, job, Plan(dp=8, ep=8, ep_overlap=True, ep_dispatcher="flex"), same)
    assert f_x["ep_comm"] == pytest.approx(f_a["ep_comm"]) and f_a["ep_comm"] > 0
    hidden_share = same["overlap.ep"] * 7 / 8  # GBS 64 over DP 8: 8 micro-batches, 7 of 8 passes paired
    hidden_f = f_a["ep_comm"] * hidden_share / (1 - hidden_share)  # exposed = raw * (1 - share)
    extra = (20 / 132 - hardware_default("nccl_overlap_compute_slowdown")) * hidden_f
    assert f_x["compute"] - f_a["compute"] == pytest.approx(extra, rel=1e-9)
    assert b_x["compute"] - b_a["compute"] == pytest.approx(extra, rel=1e-9)  # no recompute: once more
    assert effective_knobs(base, load_runtime_cost("megatron")).ep_dispatcher == "alltoall"  # the default


def test_flex_sends_fewer_bytes_across_nodes_and_the_search_picks_it_there() -> None:
    model = load_model("qwen3-235b-a22b")
    cluster = load_cluster("dgx-h100", num_gpus=256)
    job = JobSpec(global_batch=2048, seq_len=4096)
    # r543's plan: EP32 over 4 nodes.
    plan = Plan(tp=2, pp=8, vpp=4, dp=16, ep=32, sp=True, recompute="selective",
                pipeline_layers=balanced_layout(94, 8, 4))
    assert not plan_violations(model, job, plan, 256)
    a2a = evaluate(prepare(model, cluster, job, replace(plan, ep_dispatcher="alltoall")), C)
    flex = evaluate(prepare(model, cluster, job, replace(plan, ep_dispatcher="flex")), C)
    assert flex.term("ep_comm") < 0.5 * a2a.term("ep_comm")
    chosen, report = best_knobs(prepare(model, cluster, job, plan), C)
    assert chosen.plan.ep_dispatcher == "flex" and report.step_s < a2a.step_s
    # The bound the search prunes with stays below every knob setting, flex included.
    inputs = prepare(model, cluster, job, plan)
    bound = knob_lower_bound(inputs, C)
    variants = knob_variants(plan, "megatron", model.num_attention_heads, True, cluster)
    assert {v.ep_dispatcher for v in variants} == {"alltoall", "flex"}
    for v in variants:
        assert bound <= busy_lower_bound(prepare(model, cluster, job, v), C) + 1e-12


def test_inside_one_node_the_search_tries_both_dispatchers_and_keeps_the_faster() -> None:
    """Inside one NVLink domain both dispatchers send the same bytes, but at different efficiencies (DeepEP's
    benchmarked one for flex, the fitted NCCL all-to-all for alltoall): the search tries both, keeps the faster,
    and at an all-to-all efficiency equal to flex's, flex (which also slows the compute it overlaps) cannot win."""
    model = load_model("qwen3-30b-a3b")
    cluster = load_cluster("dgx-h100", num_gpus=8)
    job = JobSpec(global_batch=64, seq_len=4096)
    plan = Plan(dp=8, ep=8)
    assert dispatcher_choices(plan, "megatron", True, cluster) == ["alltoall", "flex"]
    flex_eff = hardware_default("flex_dispatcher_nvlink_efficiency")
    for a2a_eff in (0.4, flex_eff):
        constants = CostConstants.from_dict({**C.as_dict(), "link.alltoall": a2a_eff})
        chosen, report = best_knobs(prepare(model, cluster, job, plan), constants)
        for d in ("alltoall", "flex"):
            other = evaluate(prepare(model, cluster, job, replace(chosen.plan, ep_dispatcher=d)), constants)
            assert report.step_s <= other.step_s + 1e-12
        if a2a_eff == flex_eff:
            assert chosen.plan.ep_dispatcher == "alltoall"
        else:
            assert chosen.plan.ep_dispatcher == "flex"


def test_flex_is_offered_only_where_megatron_runs_it() -> None:
    plan = Plan(dp=16, ep=16)
    h100, b200, a100 = (load_cluster(c, num_gpus=16) for c in ("dgx-h100", "dgx-b200", "dgx-a100"))
    assert dispatcher_choices(plan, "megatron", True, h100) == ["alltoall", "flex"]
    assert dispatcher_choices(plan, "nemo", True, b200) == ["alltoall", "flex"]
    assert dispatcher_choices(plan, "megatron", True, a100) == [None]  # DeepEP needs Hopper or later
    assert dispatcher_choices(plan, "fsdp", True, h100) == [None]
    assert dispatcher_choices(plan, "deepspeed", True, h100) == [None]
    assert dispatcher_choices(Plan(dp=16), "megatron", True, h100) == [None]  # no EP
    assert dispatcher_choices(Plan(dp=16, ep=8, etp=2), "megatron", True, h100) == [None]
    # EP8 inside one 8-GPU node or one 16-GPU NVL72 segment: the same bytes either way, but flex runs at
    # DeepEP's own efficiency, so it is tried there too (best_knobs keeps the faster).
    assert dispatcher_choices(Plan(dp=16, ep=8), "megatron", True, h100) == ["alltoall", "flex"]
    assert dispatcher_choices(Plan(dp=16, ep=8), "megatron", True, load_cluster("gb200-nvl72", num_gpus=16)) \
        == ["alltoall", "flex"]
    # DeepEP asserts on group sizes it has no config for (6, 256: deep_ep/buffer.py config_map); HybridEP
    # (NVL72) sizes itself from the group.
    assert dispatcher_choices(Plan(dp=24, ep=6), "megatron", True, load_cluster("dgx-h100", num_gpus=24)) == [None]
    assert dispatcher_choices(Plan(dp=256, ep=256), "megatron", True, load_cluster("dgx-h100", num_gpus=256)) \
        == [None]
    assert dispatcher_choices(Plan(dp=256, ep=128), "megatron", True, load_cluster("dgx-h100", num_gpus=256)) \
        == ["alltoall", "flex"]
    assert dispatcher_choices(Plan(dp=256, ep=256), "megatron", True, load_cluster("gb200-nvl72", num_gpus=256)) \
        == ["alltoall", "flex"]
    assert dispatcher_choices(Plan(dp=16, ep=16, ep_dispatcher="alltoall"), "megatron", True, h100) == ["alltoall"]
    assert knob_variants(plan, "megatron", 32, True) == knob_variants(plan, "megatron", 32, True, None)
    assert len(knob_variants(plan, "megatron", 32, True, h100)) == 2 * len(knob_variants(plan, "megatron", 32, True))
    assert megatron_warnings(Plan(dp=16, ep=16, ep_dispatcher="flex"), "ampere")


def test_flex_needs_expert_parallelism_and_a_known_name() -> None:
    model = load_model("qwen3-30b-a3b")
    job = JobSpec(global_batch=64, seq_len=4096)
    assert any("ep_dispatcher=flex" in r for r in plan_violations(model, job, Plan(dp=8, ep_dispatcher="flex"), 8))
    assert not plan_violations(model, job, Plan(dp=8, ep=8, ep_dispatcher="flex"), 8)
    with pytest.raises(InputError, match="ep_dispatcher"):
        Plan(dp=8, ep=8, ep_dispatcher="deepep")
    # Plans written before the field existed still load, and the field survives a JSON round trip.
    old = Plan(dp=8, ep=8).as_dict()
    del old["ep_dispatcher"]
    assert plan_from_dict(old).ep_dispatcher is None
    flex = Plan(dp=8, ep=8, ep_dispatcher="flex")
    assert plan_from_dict(flex.as_dict()) == flex and "ep_dispatcher=flex" in flex.describe()


def test_megatron_args_name_the_dispatcher_and_its_backend() -> None:
    model = load_model("qwen3-30b-a3b")
    job = JobSpec(global_batch=256, seq_len=4096)

    def args(cluster: str, gpus: int, plan: Plan) -> list[str]:
        return megatron_args(model, load_cluster(cluster, num_gpus=gpus), job, plan)

    flex = args("dgx-h100", 16, Plan(dp=16, ep=16, ep_dispatcher="flex"))
    i = flex.index("--moe-token-dispatcher-type")
    assert flex[i + 1] == "flex" and flex[flex.index("--moe-flex-dispatcher-backend") + 1] == "deepep"
    plain = args("dgx-h100", 16, Plan(dp=16, ep=16))
    assert plain[plain.index("--moe-token-dispatcher-type") + 1] == "alltoall"
    assert "--moe-flex-dispatcher-backend" not in plain
    # A rack-wide NVLink domain (GB200 NVL72): Megatron says only HybridEP supports multi-node NVLink.
    assert flex_backend(load_cluster("gb200-nvl72", num_gpus=16)) == "hybridep"
    assert flex_backend(load_cluster("dgx-b200", num_gpus=16)) == "deepep"
    # A DeepEP group size DeepEP has no config for is refused by name, not emitted to assert at the first step.
    with pytest.raises(InputError, match="plan.ep"):
        args("dgx-h100", 24, Plan(dp=24, ep=6, ep_dispatcher="flex"))
    # The other emitters refuse a flex plan by name instead of writing a different dispatcher.
    from configurator.emit import deepspeed, torchtitan

    flex_plan = Plan(dp=16, ep=16, sharding="zero3", ep_dispatcher="flex")
    assert any("flex" in r for r in torchtitan.unsupported(model, flex_plan, job))
    assert deepspeed.unsupported(flex_plan, job)  # DeepSpeed's EP lives in model code: refused already


def test_the_dispatcher_each_published_row_ran_is_read_from_its_notes() -> None:
    assert dispatcher_from_notes("Dispatcher DeepEP; cross-node EP, +1f1b A2A overlap") == "flex"
    assert dispatcher_from_notes("Dispatcher A2A; intra-node EP") == "alltoall"
    assert dispatcher_from_notes("HybridEP, CUDA graphs (attn, router, preprocess)") == "flex"
    assert dispatcher_from_notes("+1f1b A2A overlap") is None  # an overlap, not a dispatcher
    assert dispatcher_from_notes("token distribution force-balanced, dropless") is None
    if not RUNS.exists():
        pytest.skip("shared/data/published_runs.csv not present")
    cases = {c.run_id: c for c in read_runs(RUNS)}
    got = {rid: cases[rid].plan.ep_dispatcher for rid in ("r029", "r543", "r544", "r545", "r546", "r547", "r556")}
    assert got == {"r029": "alltoall", "r543": "flex", "r544": "flex", "r545": "flex", "r546": "alltoall",
                   "r547": "flex", "r556": "flex"}
    # Megatron-Bridge performance rows whose notes do not say: the recipe's (every DeepSeek-V3 and Qwen3-30B
    # workload config runs flex; Qwen3-235B only on GB200/GB300); GPT-OSS keeps the runtime's default.
    assert cases["r088"].plan.ep_dispatcher == "flex"  # DeepSeek-V3 B200 FP8_MX: deepep
    assert cases["r142"].plan.ep_dispatcher == "alltoall" and cases["r066"].plan.ep_dispatcher == "flex"
    assert cases["r093"].plan.ep_dispatcher is None
    assert recipe_dispatcher("NVIDIA DGX Cloud Benchmarking recipe (deepseek_v3)", "Deepseek V3", "dgx-h100") is None
    assert all(c.plan.ep_dispatcher is None for c in cases.values() if c.plan is not None and not c.model.is_moe)
