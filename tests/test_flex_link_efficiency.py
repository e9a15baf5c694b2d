"""The flex dispatcher (DeepEP/HybridEP) moves tokens at its own benchmarked NVLink efficiency (cost.json
``flex_dispatcher_nvlink_efficiency``), not at the fitted NCCL all-to-all one (``link.alltoall``)."""

from __future__ import annotations

import pytest

from configurator.cost.constants import CostConstants, hardware_default, load_calibration
from configurator.cost.step import estimate_step
from configurator.profiles import load_cluster, load_model
from configurator.specs.job import JobSpec
from configurator.specs.plan import Plan


def _ep_comm(dispatcher: str, alltoall_eff: float) -> float:
    model = load_model("qwen3-30b-a3b")
    cluster = load_cluster("dgx-h100", num_gpus=8)  # EP8 inside one NVLink domain: same bytes either way
    job = JobSpec(global_batch=64, seq_len=4096, precision="bf16")
    plan = Plan(tp=1, pp=1, dp=8, ep=8, micro_batch=1, sharding="distopt", ep_overlap=False,
                ep_dispatcher=dispatcher)
    values = dict(load_calibration().values)
    values["link.alltoall"] = alltoall_eff
    return estimate_step(model, cluster, job, plan, constants=CostConstants.from_dict(values)).term("ep_comm")


def test_flex_all_to_all_runs_at_its_benchmarked_efficiency() -> None:
    flex = hardware_default("flex_dispatcher_nvlink_efficiency")
    assert 0.7 <= flex <= 0.95  # DeepEP V1: 0.77-0.79 of H800 NVLink
    # Inside one domain both dispatchers send the same bytes: at link.alltoall == the flex figure they agree.
    assert _ep_comm("flex", flex) == pytest.approx(_ep_comm("alltoall", flex), rel=1e-12)
    # The flex time does not follow link.alltoall; the alltoall dispatcher's does, inversely (bandwidth term).
    assert _ep_comm("flex", 0.4) == pytest.approx(_ep_comm("flex", flex), rel=1e-12)
    # At half the flex efficiency the alltoall dispatcher's bandwidth term doubles (its latency term does not).
    assert 1.9 * _ep_comm("flex", flex / 2) < _ep_comm("alltoall", flex / 2) < 2.0 * _ep_comm("flex", flex / 2)
