"""Placement: which GPU runs which rank, and the communication groups a plan forms.

Ranks follow Megatron-LM's order ``tp-cp-dp-pp`` (leftmost fastest) for the dense part:
``rank = tp_i + tp * (cp_i + cp * (dp_i + dp * pp_i))``; the routed experts regroup each pipeline
stage's ``tp * cp * dp`` ranks as ``etp-ep-edp`` (MoE parallel folding). A ``Placement`` maps rank
``r`` to job slot ``r // gpus_per_node`` and local index ``r % gpus_per_node``, then slot to a
physical node (``node_order``) and local index to a physical GPU (``gpu_order``). The default is
the identity: Megatron's order on consecutive GPUs, which is what torchrun with static node ranks
gives. The placement search (a later stage) only permutes these two orders; the emitters realise
them with static node ranks and ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from configurator.errors import InputError
from configurator.specs.hardware import ClusterSpec
from configurator.specs.plan import Plan

GROUP_KINDS: tuple[str, ...] = ("tp", "cp", "dp", "pp", "ep", "etp", "dp_cp", "edp")


@dataclass(frozen=True, kw_only=True, slots=True)
class Placement:
    """Node order and per-node GPU order of a job (both permutations)."""

    node_order: tuple[int, ...]
    """Physical node index of job slot i (slot i holds ranks i*gpus_per_node ...)."""
    gpu_order: tuple[tuple[int, ...], ...] = ()
    """Per slot, the physical local GPU of each local rank; empty = identity on every node."""

    @staticmethod
    def default(cluster: ClusterSpec) -> Placement:
        return Placement(node_order=tuple(range(cluster.num_nodes)))

    def check(self, cluster: ClusterSpec) -> None:
        if sorted(self.node_order) != list(range(cluster.num_nodes)):
            raise InputError("placement.node_order", list(self.node_order),
                             f"must be a permutation of the {cluster.num_nodes} nodes")
        if self.gpu_order:
            if len(self.gpu_order) != cluster.num_nodes:
                raise InputError("placement.gpu_order", len(self.gpu_order),
                                 f"must give one GPU order per node ({cluster.num_nodes})")
            for order in self.gpu_order:
                if sorted(order) != list(range(cluster.gpus_per_node)):
                    raise InputError("placement.gpu_order", list(order),
                                     f"must be a permutation of the {cluster.gpus_per_node} GPUs of a node")

    def gpu_ids(self, cluster: ClusterSpec, world_size: int) -> np.ndarray:
        """Global GPU index (node * gpus_per_node + local) of every rank."""
        g = cluster.gpus_per_node
        ranks = np.arange(world_size)
        slots, local = ranks // g, ranks % g
        nodes = np.asarray(self.node_order)[slots]
        if self.gpu_order:
            local = np.asarray(self.gpu_order)[slots, local]
        return nodes * g + local

    def as_dict(self, cluster: ClusterSpec) -> dict[str, object]:
        return {"node_order": list(self.node_order),
                "gpu_order": [list(o) for o in self.gpu_order] or None,
                "rank_order": "tp-cp-dp-pp (Megatron, leftmost fastest); experts etp-ep-edp-pp",
                "gpus_per_node": cluster.gpus_per_node}


def rank_grid(plan: Plan) -> np.ndarray:
    """Ranks as an array indexed [pp, dp, cp, tp] (Megatron's order read from the right)."""
    return np.arange(plan.world_size).reshape(plan.pp, plan.dp, plan.cp, plan.tp)


def groups(plan: Plan, kind: str) -> np.ndarray:
    """All groups of one kind as a 2-D array of ranks (one row per group, in ring order).

    ``dp_cp`` is the distributed optimizer's group (DP x CP); ``ep``/``etp``/``edp`` are the expert
    groups of MoE parallel folding inside each stage's ``tp*cp*dp`` ranks.
    """
    grid = rank_grid(plan)
    if kind == "tp":
        return grid.reshape(-1, plan.tp)
    if kind == "cp":
        return grid.transpose(0, 1, 3, 2).reshape(-1, plan.cp)
    if kind == "dp":
        return grid.transpose(0, 2, 3, 1).reshape(-1, plan.dp)
    if kind == "dp_cp":
        return grid.transpose(0, 3, 1, 2).reshape(-1, plan.dp * plan.cp)
    if kind == "pp":
        return grid.transpose(1, 2, 3, 0).reshape(-1, plan.pp)
    per_stage = plan.tp * plan.cp * plan.dp
    edp = per_stage // (plan.ep * plan.etp)
    expert = np.arange(plan.world_size).reshape(plan.pp, edp, plan.ep, plan.etp)
    if kind == "etp":
        return expert.reshape(-1, plan.etp)
    if kind == "ep":
        return expert.transpose(0, 1, 3, 2).reshape(-1, plan.ep)
    if kind == "edp":
        return expert.transpose(0, 2, 3, 1).reshape(-1, edp)
    raise ValueError(f"unknown group kind {kind!r}")


_GROUP_AXES: dict[str, tuple[bool, tuple[int, ...], int]] = {
    # kind: (expert grid?, the grid's axes in row order (outer axes first, then the group's), group axes)
    "tp": (False, (0, 1, 2, 3), 1), "cp": (False, (0, 1, 3, 2), 1), "dp": (False, (0, 2, 3, 1), 1),
    "dp_cp": (False, (0, 3, 1, 2), 2), "pp": (False, (1, 2, 3, 0), 1),
    "etp": (True, (0, 1, 2, 3), 1), "ep": (True, (0, 1, 3, 2), 1), "edp": (True, (0, 2, 3, 1), 1),
}
"""``groups``' transposes as data, for ``group_first_ranks`` and ``group_stride``."""


def group_count(plan: Plan, kind: str) -> int:
    """Rows of ``groups(plan, kind)`` (groups of that kind), without building them."""
    order, n_group, sizes, _ = _grid(plan, kind)
    return plan.world_size // math.prod(sizes[a] for a in order[-n_group:])


def _grid_sizes(plan: Plan, expert: bool) -> tuple[int, int, int, int]:
    if not expert:
        return plan.pp, plan.dp, plan.cp, plan.tp
    edp = plan.tp * plan.cp * plan.dp // (plan.ep * plan.etp)
    return plan.pp, edp, plan.ep, plan.etp


def _grid(plan: Plan, kind: str) -> tuple[tuple[int, ...], int, tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(the grid's axes in row order, how many of the last are the group's, the grid's sizes, its C-order strides)
    of ``kind``'s grid (``_GROUP_AXES``)."""
    if kind not in _GROUP_AXES:
        raise ValueError(f"unknown group kind {kind!r}")
    expert, order, n_group = _GROUP_AXES[kind]
    sizes = _grid_sizes(plan, expert)
    return order, n_group, sizes, (sizes[1] * sizes[2] * sizes[3], sizes[2] * sizes[3], sizes[3], 1)


def group_first_ranks(plan: Plan, kind: str, rows: np.ndarray) -> np.ndarray:
    """``groups(plan, kind)[rows, 0]``: each row's first rank (every other member is it plus multiples of
    ``group_stride``), from the row index's digits over the grid's outer axes."""
    order, n_group, sizes, strides = _grid(plan, kind)
    base = np.zeros(len(rows), dtype=np.int64)
    rest = np.asarray(rows, dtype=np.int64)
    for axis in reversed(order[:-n_group]):  # the last outer axis varies fastest
        base += (rest % sizes[axis]) * strides[axis]
        rest = rest // sizes[axis]
    return base


def group_stride(plan: Plan, kind: str) -> tuple[int, int]:
    """(stride, members) of every group of ``kind``: row ``j`` of ``groups(plan, kind)`` is ``first + i x stride`` for
    ``i < members`` (``first``: ``group_first_ranks``). Every kind's group axes are adjacent in the grid and taken in
    C order (``dp_cp``'s dp, cp: dp's stride is cp x cp's), so a row is one arithmetic progression; with the domain
    size that is all ``progression_spread`` needs to tell how a group spreads over NVLink domains."""
    order, n_group, sizes, strides = _grid(plan, kind)
    inner = order[-n_group:]
    for outer_axis, inner_axis in zip(inner, inner[1:]):  # contiguous: one progression (every kind is)
        if strides[outer_axis] != sizes[inner_axis] * strides[inner_axis]:
            raise ValueError(f"group kind {kind!r} is not one arithmetic progression")
    return strides[inner[-1]], math.prod(sizes[a] for a in inner)


def progression_spread(first: int, stride: int, members: int, domain: int) -> tuple[int, int]:
    """(most members in one domain, domains spanned) of the ranks ``first + i x stride`` (``i < members``) on
    consecutive GPUs cut into NVLink domains of ``domain`` GPUs, in O(domain) steps whatever the group size.

    A stride of at least a domain puts every member in its own domain. A shorter one never skips a domain, so the
    domains are the last member's minus the first's plus one; domain ``k`` holds the members in ``[k D, (k + 1) D)``,
    ``ceil(((k + 1) D - first) / s) - ceil((k D - first) / s)`` of them where the group covers it whole, which depends
    on ``k`` only through ``k D mod s`` (period ``s / gcd(s, D)`` in ``k``): the first and last (cut) domains and
    one period of the whole ones give the most."""
    if members <= 1:
        return 1, 1
    if stride >= domain:
        return 1, members
    low = first // domain
    high = (first + (members - 1) * stride) // domain
    if low == high:
        return members, 1

    def count(k: int) -> int:  # members in domain k: i from ceil((kD - first)/s) to ceil(((k+1)D - first)/s)
        begin = max(0, -((first - k * domain) // stride))
        end = min(members, -((first - (k + 1) * domain) // stride))
        return end - begin

    period = stride // math.gcd(stride, domain)
    most = max(count(low), count(high))
    for k in range(low + 1, min(high, low + 1 + period)):
        most = max(most, count(k))
    return most, high - low + 1


__all__ = ["GROUP_KINDS", "Placement", "group_count", "group_first_ranks", "group_stride", "groups",
           "progression_spread", "rank_grid"]
