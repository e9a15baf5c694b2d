"""Megatron-FSDP runs the MoE all-to-all overlap only without pipeline parallelism.

Megatron-Core 0.19's combined 1F1B schedule (``pipeline_parallel/combined_1f1b.py``) asserts "EP overlap 1F1B with
FSDP is not supported for interleaved pipeline parallelism" on the first step, and under pipeline parallelism the
overlap needs the interleaved schedule. Neither ``validate_args`` nor the TransformerConfig sees it, so the launch
validators pass such a plan; ``ep_overlap_conflicts`` carries the rule, so the search never offers it and
``estimate``/``emit`` refuse it by field. Before the rule, Mixtral-8x7B on 64 H100 ranked such a plan second.
"""

from __future__ import annotations

import subprocess
import sys

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.margin import parse_margin
from configurator.search.knobs import knob_variants
from configurator.search.optimize import search
from configurator.search.space import SearchContext
from configurator.specs.plan import MEGATRON_FSDP_SHARDINGS, ep_overlap_conflicts, plan_violations

_JOB = JobSpec(global_batch=1024, seq_len=4096)


def _plan(sharding: str, pp: int, vpp: int) -> Plan:
    return Plan(dp=64 // pp, pp=pp, vpp=vpp, ep=2, sharding=sharding, ep_overlap=True,
                shard_group=8 if sharding == "hsdp" else 0)


def test_the_overlap_conflicts_with_megatron_fsdp_only_under_pipeline_parallelism() -> None:
    model = load_model("mixtral-8x7b")
    for sharding in MEGATRON_FSDP_SHARDINGS:
        why = ep_overlap_conflicts(_plan(sharding, 2, 8))
        assert why == ["cannot run under Megatron-FSDP with pipeline parallelism (pp > 1)"], sharding
        assert any("Megatron-FSDP" in r for r in plan_violations(model, _JOB, _plan(sharding, 2, 8), 64))
        assert ep_overlap_conflicts(_plan(sharding, 1, 1)) == []
    # The distributed optimizer runs it interleaved, as before.
    assert ep_overlap_conflicts(_plan("distopt", 2, 8)) == []
    assert plan_violations(model, _JOB, _plan("distopt", 2, 8), 64) == []


def test_the_search_offers_no_overlap_to_a_megatron_fsdp_pipeline() -> None:
    open_zero2 = Plan(dp=32, pp=2, vpp=8, ep=2, sharding="zero2")
    assert {v.ep_overlap for v in knob_variants(open_zero2, "megatron", 32, True)} == {None}
    open_distopt = Plan(dp=32, pp=2, vpp=8, ep=2, sharding="distopt")
    assert {v.ep_overlap for v in knob_variants(open_distopt, "megatron", 32, True)} == {False, True}

    ctx = SearchContext(model=load_model("mixtral-8x7b"), cluster=load_cluster("dgx-h100", num_gpus=64), job=_JOB,
                        framework="megatron", runtime="megatron", memory_margin=parse_margin(None))
    result = search(ctx, top_k=15)
    plans = [e.plan for e in result.ranked]
    assert len(plans) == 15
    assert not [p.describe() for p in plans
                if p.ep_overlap and p.pp > 1 and p.sharding in MEGATRON_FSDP_SHARDINGS]
    # Megatron-FSDP still overlaps without a pipeline (the bench scenario's top plan is one).
    assert any(p.ep_overlap and p.pp == 1 and p.sharding in MEGATRON_FSDP_SHARDINGS for p in plans)


def test_estimate_and_emit_refuse_the_overlap_under_a_megatron_fsdp_pipeline_by_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    job = ["--model", "mixtral-8x7b", "--cluster", "dgx-h100", "--num-gpus", "64", "--seq-len", "4096",
           "--global-batch", "1024", "--pp", "2", "--vpp", "8", "--ep", "2", "--ep-overlap"]
    out = tmp_path / "out"
    for command in (["estimate"], ["emit", "--framework", "megatron", "--out", str(out)]):
        refused = subprocess.run([sys.executable, "-m", "configurator.cli", *command, *job, "--sharding", "zero2"],
                                 capture_output=True, text=True, timeout=120)
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert len(lines) == 1 and "ep_overlap: cannot run under Megatron-FSDP with pipeline parallelism" in lines[0]
    assert not out.exists()
    ok = subprocess.run([sys.executable, "-m", "configurator.cli", "estimate", *job, "--sharding", "distopt"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
