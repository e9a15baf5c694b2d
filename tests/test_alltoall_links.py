"""An all-to-all's time on NVLink and across nodes, by hand (issue 12): NCCL's (Megatron's alltoall dispatcher) at the
one fitted ``link.alltoall`` on both links, DeepEP/HybridEP's (flex) at its benchmarked figure per link (cost.json
``flex_dispatcher_nvlink_efficiency`` / ``flex_dispatcher_rdma_efficiency``). Times are worked from the DGX H100
profile: 450 GB/s NVLink and 50 GB/s NIC per GPU, 3 us / 5 us per step."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.cost.constants import PARAMETERS, CostConstants, hardware_default, load_calibration
from configurator.cost.step import flex_link_efficiency, link_efficiency, prepare

MODEL = load_model("mixtral-8x22b")
JOB = JobSpec(global_batch=64, seq_len=4096)
S = 1e9  # bytes each rank sends in one all-to-all


def _constants(a2a: float) -> CostConstants:
    return CostConstants.from_dict({**load_calibration().as_dict(), "link.alltoall": a2a})


def _a2a_s(num_gpus: int, constants: CostConstants, flex: bool = False) -> float:
    cluster = load_cluster("dgx-h100", num_gpus=num_gpus)
    eff = link_efficiency(constants)
    comm = prepare(MODEL, cluster, JOB, Plan(ep=num_gpus, dp=num_gpus)).comm
    return comm.with_efficiency(flex_link_efficiency(eff) if flex else eff).alltoall_s("ep", S)


def test_nccl_all_to_all_on_nvlink_and_across_nodes_by_hand() -> None:
    # EP8 on one node: 7/8 of the bytes leave each GPU over NVLink at 0.6 x 450 GB/s, plus 7 steps of 3 us.
    one_node = S * 7 / 8 / (450e9 * 0.6) + 7 * 3e-6  # 3.262 ms
    assert _a2a_s(8, _constants(0.6)) == pytest.approx(one_node, rel=1e-9)
    # EP16 on 2 nodes: 8/16 cross the GPU's NIC at 0.6 x 50 GB/s (16.67 ms) while 7/16 stay on NVLink (1.6 ms);
    # the slower part counts, plus one inter-node step (5 us).
    two_nodes = S * 8 / 16 / (50e9 * 0.6) + 5e-6
    assert _a2a_s(16, _constants(0.6)) == pytest.approx(two_nodes, rel=1e-9)
    # The same bytes per rank take 16.672 / 3.262 = 5.11x as long once half of them cross the NIC.
    assert two_nodes / one_node == pytest.approx(5.11, abs=0.01)
    # One figure on both links: each bandwidth term scales inversely with it.
    assert _a2a_s(16, _constants(0.3)) == pytest.approx(S * 8 / 16 / (50e9 * 0.3) + 5e-6, rel=1e-9)


def test_the_flex_dispatcher_runs_at_deepeps_own_figure_per_link() -> None:
    nv = hardware_default("flex_dispatcher_nvlink_efficiency")
    rdma = hardware_default("flex_dispatcher_rdma_efficiency")
    # DeepEP V1 (docs/legacy.md): 153/158 of H800's 200 GB/s NVLink; 43-45 of 50 GB/s on the wire over RDMA.
    assert nv == pytest.approx(0.78) and rdma == pytest.approx(0.87)
    for c in (_constants(0.6), _constants(0.3)):  # NCCL's fitted figure does not reach flex
        assert _a2a_s(8, c, flex=True) == pytest.approx(S * 7 / 8 / (450e9 * nv) + 7 * 3e-6, rel=1e-9)
        assert _a2a_s(16, c, flex=True) == pytest.approx(S * 8 / 16 / (50e9 * rdma) + 5e-6, rel=1e-9)


def test_one_nccl_figure_serves_both_links_unless_a_nic_figure_is_given() -> None:
    eff = link_efficiency(_constants(0.6))
    assert eff.alltoall_scale_out is None and eff.alltoall_nic == 0.6
    assert replace(eff, alltoall_scale_out=0.9).alltoall_nic == 0.9


def test_the_prior_sits_below_nccls_large_message_figures() -> None:
    a2a = next(p for p in PARAMETERS if p.name == "link.alltoall")
    assert a2a.lower < a2a.default < a2a.upper
    assert a2a.default < min(370 / 450, 48 / 50)  # H100 NVLink busBw (nccl-tests#212), CX7 NIC (nccl-tests#267)
    assert math.exp(a2a.prior_width) * a2a.default >= 370 / 450  # the large-message NVLink figure within one width
