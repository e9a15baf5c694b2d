"""An all-to-all runs at its own efficiency on each link kind (issue 12): NCCL's (Megatron's alltoall dispatcher)
at ``link.alltoall`` on NVLink and ``link.alltoall_scale_out`` on the NIC, DeepEP/HybridEP's (flex) at its
benchmarked figures (cost.json ``flex_dispatcher_nvlink_efficiency`` / ``flex_dispatcher_rdma_efficiency``).
Times below are worked by hand from the DGX H100 profile (450 GB/s NVLink, 50 GB/s NIC per GPU)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.cost.constants import PARAMETERS, CostConstants, hardware_default, load_calibration
from configurator.cost.step import flex_link_efficiency, link_efficiency, prepare
from configurator.errors import InputError

MODEL = load_model("mixtral-8x22b")
JOB = JobSpec(global_batch=64, seq_len=4096)
S = 1e9  # bytes each rank sends in one all-to-all


def _constants(nvlink_a2a: float, nic_a2a: float) -> CostConstants:
    return CostConstants.from_dict({**load_calibration().as_dict(), "link.alltoall": nvlink_a2a,
                                    "link.alltoall_scale_out": nic_a2a})


def _a2a_s(num_gpus: int, constants: CostConstants, flex: bool = False) -> float:
    cluster = load_cluster("dgx-h100", num_gpus=num_gpus)
    eff = link_efficiency(constants)
    comm = prepare(MODEL, cluster, JOB, Plan(ep=num_gpus, dp=num_gpus)).comm
    return comm.with_efficiency(flex_link_efficiency(eff) if flex else eff).alltoall_s("ep", S)


def test_inside_one_node_the_all_to_all_runs_at_the_nvlink_figure_only() -> None:
    # EP8 on one node: 7/8 of the bytes leave each GPU over NVLink at 0.82 x 450 GB/s, plus 7 steps of 3 us.
    expect = S * 7 / 8 / (450e9 * 0.82) + 7 * 3e-6  # 2.392 ms
    assert _a2a_s(8, _constants(0.82, 0.9)) == pytest.approx(expect, rel=1e-9)
    assert _a2a_s(8, _constants(0.82, 0.3)) == pytest.approx(expect, rel=1e-9)  # the NIC figure plays no part


def test_across_two_nodes_the_nic_share_runs_at_the_scale_out_figure() -> None:
    # EP16 on 2 nodes: 8/16 of the bytes cross the GPU's NIC at 0.9 x 50 GB/s (11.1 ms), 7/16 stay on NVLink
    # (1.2 ms); the slower part counts, plus one inter-node latency step (5 us).
    nic = S * 8 / 16 / (50e9 * 0.9) + 5e-6
    nvlink = S * 7 / 16 / (450e9 * 0.82) + 7 * 3e-6
    assert nic > nvlink
    assert _a2a_s(16, _constants(0.82, 0.9)) == pytest.approx(nic, rel=1e-9)
    assert _a2a_s(16, _constants(0.5, 0.9)) == pytest.approx(nic, rel=1e-9)  # NVLink's figure not on the path
    assert _a2a_s(16, _constants(0.82, 0.45)) == pytest.approx(S * 8 / 16 / (50e9 * 0.45) + 5e-6, rel=1e-9)
    # Same bytes per rank: the two-node all-to-all takes 11.116 / 2.392 = 4.65x the one-node one at these figures.
    assert _a2a_s(16, _constants(0.82, 0.9)) / _a2a_s(8, _constants(0.82, 0.9)) == pytest.approx(4.65, abs=0.01)


def test_the_flex_dispatcher_runs_at_deepeps_own_figures_per_link() -> None:
    nv, rdma = hardware_default("flex_dispatcher_nvlink_efficiency"), hardware_default("flex_dispatcher_rdma_efficiency")
    # DeepEP V1 (docs/legacy.md): 153/158 of 200 GB/s NVLink; 43-45 of 50 GB/s on the wire over RDMA.
    assert nv == pytest.approx(0.78) and rdma == pytest.approx(0.87)
    for c in (_constants(0.82, 0.9), _constants(0.5, 0.5)):  # NCCL's fitted figures do not reach flex
        assert _a2a_s(8, c, flex=True) == pytest.approx(S * 7 / 8 / (450e9 * nv) + 7 * 3e-6, rel=1e-9)
        assert _a2a_s(16, c, flex=True) == pytest.approx(S * 8 / 16 / (50e9 * rdma) + 5e-6, rel=1e-9)


def test_link_efficiency_without_a_nic_figure_uses_the_nvlink_one() -> None:
    eff = link_efficiency(_constants(0.7, 0.9))
    assert (eff.alltoall, eff.alltoall_nic) == (0.7, 0.9)
    assert replace(eff, alltoall_scale_out=None).alltoall_nic == 0.7


def test_a_calibration_fitted_before_a_constant_existed_loads_it_at_its_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    values = load_calibration().as_dict()
    del values["link.alltoall_scale_out"]
    old = tmp_path / "calibration.json"
    old.write_text(json.dumps({"constants": values}))
    default = next(p.default for p in PARAMETERS if p.name == "link.alltoall_scale_out")
    assert load_calibration(old)["link.alltoall_scale_out"] == default
    # A name the model does not know is still refused.
    old.write_text(json.dumps({"constants": {**values, "link.bogus": 0.5}}))
    with pytest.raises(InputError, match="link.bogus"):
        load_calibration(old)


def test_the_priors_are_inside_their_bounds_and_the_sourced_ranges() -> None:
    by_name = {p.name: p for p in PARAMETERS}
    nv, nic = by_name["link.alltoall"], by_name["link.alltoall_scale_out"]
    assert nv.lower < nv.default < nv.upper and nic.lower < nic.default < nic.upper
    assert math.isclose(nv.default, 370 / 450, abs_tol=0.01)  # NCCL's effective H100 NVLink bandwidth
    assert nic.default <= 49 / 50 and nic.upper <= 0.97  # a CX7 NIC's 48-49 of 50 GB/s at best
