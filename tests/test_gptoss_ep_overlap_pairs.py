"""Megatron-Core's EP all-to-all overlap hides a micro-batch's dispatch/combine only under another micro-batch's
pass (combined 1F1B): the passes with no partner - the first forward and last backward without pipelining, the
warm-up forwards and cool-down backwards of the interleaved schedule - hide nothing (issue 12; cost/moe.py
``ep_overlap_paired_share``). Worked by hand from combined_1f1b.py and schedules.py's warm-up count."""

from __future__ import annotations

from dataclasses import replace

import pytest

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.cost.constants import CostConstants, load_calibration
from configurator.cost.moe import ep_overlap_paired_share
from configurator.cost.step import estimate_step


def test_without_pipelining_the_first_forward_and_last_backward_run_alone() -> None:
    # GPT-OSS 120B on 64 GB200, GBS 1280, mb 4, DP 64: 1280 / (64 x 4) = 5 micro-batches, 4 of 5 passes paired.
    assert ep_overlap_paired_share(1, 1, 5) == pytest.approx(4 / 5)
    assert ep_overlap_paired_share(1, 1, 1) == 0.0  # one micro-batch: nothing to pair with
    assert ep_overlap_paired_share(1, 1, 100) == pytest.approx(0.99)


def test_interleaved_warm_up_and_cool_down_passes_are_unpaired() -> None:
    # PP8 VPP4, 128 micro-batches: rank r warms up 2 (7 - r) + 3 x 8 + 1 chunk passes; the mean over the 8 ranks
    # is 7 + 24 + 1 = 32 of 128 x 4 = 512, so 480 / 512 are paired.
    assert ep_overlap_paired_share(8, 4, 128) == pytest.approx(480 / 512)
    # PP8 VPP2, 64 micro-batches: 7 + 8 + 1 = 16 of 128.
    assert ep_overlap_paired_share(8, 2, 64) == pytest.approx(112 / 128)
    # PP4 VPP2 with 2 micro-batches: every rank's warm-up (at least 0 + 4 + 1 = 5) covers its 4 passes.
    assert ep_overlap_paired_share(4, 2, 2) == 0.0


def test_the_step_hides_only_the_paired_share_of_the_all_to_all() -> None:
    model = load_model("gpt-oss-120b")
    cluster = load_cluster("gb200-nvl72", num_gpus=64)
    job = JobSpec(global_batch=1280, seq_len=4096)
    plan = Plan(ep=64, dp=64, micro_batch=4)
    c = CostConstants.from_dict({**load_calibration().as_dict(), "overlap.ep": 0.5})
    off = estimate_step(model, cluster, job, replace(plan, ep_overlap=False), constants=c)
    on = estimate_step(model, cluster, job, replace(plan, ep_overlap=True), constants=c)
    assert off.num_microbatches == 5
    # Exposed all-to-all: 1 - 0.5 x 4/5 = 0.6 of it, not the 0.5 a whole-step hidden share would leave.
    assert on.term("ep_comm") == pytest.approx(off.term("ep_comm") * (1 - 0.5 * 4 / 5), rel=1e-9)
