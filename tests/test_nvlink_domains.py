"""NVLink-domain semantics of rack-scale clusters (GB200 NVL72), by hand: the scheduler's segment size,
which expert-parallel groups stay inside one segment under Megatron's rank order, and that a group which
crosses a segment (or straddles a rack boundary) is costed on the scale-out NIC; plus the DGX Cloud v25.05
DeepSeek-V3 recipe's selective-recompute modules."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from configurator import Plan, load_cluster
from configurator.cost.comm import CommModel, LinkEfficiency
from configurator.runs import case_from_row, recipe_recompute_modules
from configurator.specs.hardware import job_domain_gpus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_moe_capacity_and_windows import DGXC_DEEPSEEK_ROW  # noqa: E402

EFF = LinkEfficiency(nvlink=0.75, scale_out=0.8, alltoall=0.7)
S = 1e9  # bytes each rank sends in the all-to-all


def _nemo_segment_nodes(nodes: int) -> int:
    """NeMo scripts/performance/utils.py slurm_executor (commit 7a8f1cc, DGX Cloud v25.05): for 4-GPU nodes
    and more than 18 nodes, ``--segment`` is the largest of 18..1 that divides the node count."""
    return next(s for s in range(18, 0, -1) if nodes % s == 0)


def test_segment_size_is_nemos_sbatch_segment() -> None:
    for nodes in (19, 32, 36, 64, 72, 96, 128, 256):
        assert job_domain_gpus(72, 4, nodes, 4) == 4 * _nemo_segment_nodes(nodes)
    assert job_domain_gpus(72, 4, 64, 4) == 64  # DGX Cloud's 256-GPU DeepSeek-V3 job: 16-tray segments
    assert job_domain_gpus(72, 4, 10, 4) == 40  # within one rack: the whole job
    assert job_domain_gpus(8, 8, 64, 8) == 8  # node-sized domain (DGX H100)
    assert load_cluster("gb200-nvl72", num_gpus=512).nvlink_domain_gpus == 64


def _ep_shapes(cluster_gpus: int, plan: Plan) -> tuple[CommModel, list[tuple[int, int, int]]]:
    cluster = load_cluster("gb200-nvl72", num_gpus=cluster_gpus)
    comm = CommModel(cluster, plan, None, EFF)
    return comm, sorted((s.size, s.per_domain, s.domains) for s in comm.shapes("ep"))


def test_tp2_ep64_expert_group_is_one_stage_inside_one_segment() -> None:
    # DGX Cloud v25.05 DeepSeek-V3 on 256 GB200: TP2 PP4 DP32 EP64 ETP1. MoE parallel folding regroups each
    # stage's 64 ranks (tp*dp) as etp-ep-edp = 1 x 64 x 1, so the EP group is the stage: 64 consecutive ranks
    # from 64*s, exactly one 16-tray segment. It does not span 128 ranks (that would need ETP2).
    comm, shapes = _ep_shapes(256, Plan(tp=2, pp=4, dp=32, ep=64))
    assert shapes == [(64, 64, 1)]
    nv = comm.cluster.intra_domain_link
    assert math.isclose(comm.alltoall_s("ep", S), S * 63 / 64 / (nv.bandwidth_Bps * 0.7) + 63 * nv.latency_s)
    _, shapes512 = _ep_shapes(512, Plan(tp=2, pp=4, dp=64, ep=64))  # two EP groups per 128-rank stage
    assert shapes512 == [(64, 64, 1)]


def test_expert_group_crossing_a_segment_sends_the_other_half_over_the_nic() -> None:
    # ETP2 x EP64 = 128 ranks per expert group: rank 2j of the stage is EP rank j, so 32 EP ranks sit in each of
    # two 64-GPU segments and half of every rank's bytes leave its segment on its own 400 Gb/s NIC share.
    comm, shapes = _ep_shapes(256, Plan(tp=2, pp=2, dp=64, ep=64, etp=2))
    assert shapes == [(64, 32, 2)]
    so, nv = comm.cluster.scale_out_link, comm.cluster.intra_domain_link
    nvlink = S * 31 / 64 / (nv.bandwidth_Bps * 0.7) + 31 * nv.latency_s
    nic = S * 32 / 64 / (so.bandwidth_Bps * 0.7) + so.latency_s  # 2 domains: one inter-domain step
    assert nic > nvlink
    assert math.isclose(comm.alltoall_s("ep", S), nic)
    # TP1 EP128: 128 consecutive ranks, the same two segments of 64
    _, shapes = _ep_shapes(256, Plan(tp=1, pp=2, dp=128, ep=128))
    assert shapes == [(128, 64, 2)]


def test_group_straddling_a_rack_boundary_paces_the_all_to_all() -> None:
    # 36 trays: two 18-tray (72-GPU) segments. EP48 groups are [0, 48), [48, 96), [96, 144): the middle one has
    # 24 ranks in each rack, and every EP group of the step waits for it.
    comm, shapes = _ep_shapes(144, Plan(dp=144, ep=48))
    assert comm.domain_size == 72
    assert (48, 24, 2) in shapes and (48, 48, 1) in shapes
    so = comm.cluster.scale_out_link
    assert math.isclose(comm.alltoall_s("ep", S), S * 24 / 48 / (so.bandwidth_Bps * 0.7) + so.latency_s)


DGXC_ROW = DGXC_DEEPSEEK_ROW


def test_dgx_cloud_v25_05_deepseek_rows_recompute_the_recipes_modules() -> None:
    source = DGXC_ROW["source"]
    assert recipe_recompute_modules(source, "v25.05 release", "Deepseek V3", "gb200-nvl72") == ("core_attn",)
    assert recipe_recompute_modules(source, "v25.05 release", "Deepseek V3", "dgx-h100") == ("mla_up_proj",)
    assert recipe_recompute_modules(source, "v25.10 release", "Deepseek V3", "gb200-nvl72") == ()
    assert recipe_recompute_modules("Megatron-Bridge performance summary", "v25.05", "Deepseek V3", "gb200-nvl72") == ()
    case = case_from_row(DGXC_ROW)
    assert case.plan is not None and not case.recompute_unknown
    assert (case.plan.recompute, case.plan.recompute_modules) == ("selective", ("core_attn",))
    stated = case_from_row({**DGXC_ROW, "recompute": "full"})  # a row that says wins over the lookup
    assert stated.plan is not None and stated.plan.recompute == "full" and stated.plan.recompute_modules == ()

