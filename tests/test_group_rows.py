"""``placement.group_first_ranks`` / ``group_stride``: the sampled rows of a group kind worked out arithmetically are
exactly the rows of ``groups`` (the O(world size) array the default placement's group shapes no longer build), and
the shapes a communication model derives from them are those of the full array."""

import itertools

import numpy as np
import pytest

from configurator import load_cluster
from configurator.cost.comm import SAMPLED_GROUPS, CommModel, LinkEfficiency
from configurator.placement import (GROUP_KINDS, Placement, group_count, group_first_ranks, group_stride, groups,
                                    progression_spread)
from configurator.specs.plan import Plan


def _plans():
    for tp, cp, dp, pp, ep, etp in itertools.product((1, 2, 4), (1, 2), (1, 3, 8), (1, 2, 3), (1, 2, 4), (1, 2)):
        if (tp * cp * dp) % (ep * etp) == 0:
            yield Plan(tp=tp, cp=cp, dp=dp, pp=pp, ep=ep, etp=etp)


def _rows(plan: Plan, kind: str, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of ``groups(plan, kind)`` from their first ranks and the kind's stride."""
    stride, members = group_stride(plan, kind)
    return group_first_ranks(plan, kind, rows)[:, None] + stride * np.arange(members)[None, :]


@pytest.mark.parametrize("kind", GROUP_KINDS)
def test_arithmetic_rows_are_the_rows_of_groups(kind):
    for plan in _plans():
        full = groups(plan, kind)
        assert group_count(plan, kind) == len(full)
        every = np.arange(len(full))
        assert np.array_equal(_rows(plan, kind, every), full)
        some = every[1::3]
        assert np.array_equal(_rows(plan, kind, some), full[some])


def test_default_placement_shapes_equal_the_full_arrays_shapes():
    """At 4,096 GPUs (more groups than ``SAMPLED_GROUPS``), the arithmetic rows give the shapes the identity
    placement (same ranks, built through the per-rank GPU array) gives."""
    cluster = load_cluster("dgx-h100", num_gpus=4096)
    identity = Placement(node_order=tuple(range(cluster.num_nodes)), gpu_order=())
    eff = LinkEfficiency(nvlink=1.0, scale_out=1.0)
    for plan in (Plan(tp=2, cp=2, dp=256, pp=4, ep=8, etp=1), Plan(tp=8, cp=1, dp=64, pp=8, ep=16, etp=2),
                 Plan(tp=1, cp=4, dp=128, pp=8, ep=4, etp=1)):
        for kind in GROUP_KINDS:
            assert group_count(plan, kind) > SAMPLED_GROUPS or kind in ("pp", "dp", "dp_cp", "edp")
            fast = CommModel(cluster, plan, None, eff).shapes(kind)
            slow = CommModel(cluster, plan, identity, eff).shapes(kind)
            assert sorted(map(repr, fast)) == sorted(map(repr, slow)), (plan, kind)


def test_unknown_kind_is_refused():
    for call in (lambda: group_first_ranks(Plan(), "xp", np.arange(1)), lambda: group_stride(Plan(), "xp"),
                 lambda: group_count(Plan(), "xp")):
        with pytest.raises(ValueError, match="unknown group kind"):
            call()


def test_group_first_ranks_are_the_rows_first_ranks():
    for plan in _plans():
        for kind in GROUP_KINDS:
            full = groups(plan, kind)
            rows = np.arange(len(full))
            assert np.array_equal(group_first_ranks(plan, kind, rows), full[:, 0])


@pytest.mark.parametrize(("preset", "gpus", "plans"), [
    # 8-GPU domains: the distinct shapes come in the order of their first sampled group, as from the full array (a
    # shape list's order reaches ``max`` over the shapes only through ties, but it is kept the same anyway).
    ("dgx-h100", 1536, (Plan(tp=2, cp=1, dp=96, pp=8, ep=4, etp=1), Plan(tp=1, cp=3, dp=64, pp=8, ep=8, etp=1),
                        Plan(tp=4, cp=1, dp=3, pp=128, ep=4, etp=1), Plan(tp=1, cp=1, dp=12, pp=128, ep=4, etp=3))),
    # 72-GPU NVLink domains: strides that do not divide the domain, groups cut across racks.
    ("gb200-nvl72", 2304, (Plan(tp=4, cp=1, dp=72, pp=8, ep=8, etp=1), Plan(tp=1, cp=3, dp=96, pp=8, ep=32, etp=1),
                           Plan(tp=2, cp=2, dp=18, pp=16, ep=4, etp=2), Plan(tp=8, cp=1, dp=9, pp=32, ep=8, etp=1))),
])
def test_default_placement_shapes_are_the_numpy_ones_in_order(preset, gpus, plans):
    """The default placement's arithmetic shapes are the identity placement's, which counts each sampled row's GPUs
    with numpy, in the same order."""
    cluster = load_cluster(preset, num_gpus=gpus)
    identity = Placement(node_order=tuple(range(cluster.num_nodes)), gpu_order=())
    eff = LinkEfficiency(nvlink=1.0, scale_out=1.0)
    several = 0
    for plan in plans:
        for kind in GROUP_KINDS:
            fast = CommModel(cluster, plan, None, eff).shapes(kind)
            slow = CommModel(cluster, plan, identity, eff).shapes(kind)
            assert list(map(repr, fast)) == list(map(repr, slow)), (plan, kind)
            several += len(fast) > 1
    assert several  # some group kind spreads over the domains in more than one way


def _spread_of_numpy(first: int, stride: int, members: int, domain: int) -> tuple[int, int]:
    """(most members in one domain, domains) by counting every member's domain."""
    _, counts = np.unique((first + np.arange(members) * stride) // domain, return_counts=True)
    return int(counts.max()), len(counts)


def test_progression_spread_counts_every_member():
    """Strides that divide the domain, that do not (NVL72's 72-GPU domains), longer than it, and first ranks cut
    anywhere in a domain: the O(domain) count equals counting each member's domain."""
    for domain in (1, 4, 8, 36, 72):
        for stride in (1, 2, 3, 5, 7, 8, 16, 24, 48, 71, 72, 96):
            for members in (1, 2, 3, 9, 64, 130):
                for first in range(0, 2 * domain + 1, max(1, domain // 7)):
                    assert progression_spread(first, stride, members, domain) == \
                        _spread_of_numpy(first, stride, members, domain), (first, stride, members, domain)


@pytest.mark.parametrize("kind", GROUP_KINDS)
def test_group_stride_gives_the_rows_of_groups(kind):
    for plan in _plans():
        full = groups(plan, kind)
        stride, members = group_stride(plan, kind)
        assert full.shape[1] == members
        assert np.array_equal(full, full[:, :1] + stride * np.arange(members)[None, :])
