"""Collective and point-to-point times with an alpha-beta model on the links a group really uses.

A group's ranks are mapped to GPUs by the placement; GPUs in one NVLink domain (a node, or a rack
for NVL72) talk over NVLink, others over the scale-out network (InfiniBand/RoCE, one NIC share per
GPU, rail-optimised). Collectives are hierarchical, as NCCL runs them across nodes:

* all-reduce of S bytes, g ranks per domain over D domains:
  ``2(g-1)/g * S / B_nvlink + 2(D-1)/D * (S/g) / B_scaleout`` (intra-domain reduce-scatter, an
  inter-domain all-reduce of each rank's 1/g shard on its own NIC, intra-domain all-gather);
* all-gather / reduce-scatter (S = the full, gathered size): half of that;
* all-to-all of S bytes sent per rank: the NVLink part ``S(g-1)/n / B_nvlink`` and the scale-out
  part ``S(n-g)/n / B_scaleout`` run at once (the slower one counts), and no single pair may be
  slower than its own link allows (``S/n / B_pair``, which is what a slow node pair costs); each link
  at the all-to-all's own efficiency there (``LinkEfficiency.alltoall`` / ``alltoall_scale_out``);
* point-to-point: ``alpha + S / B_link`` of that GPU pair.

Bandwidths are multiplied by the calibrated bus efficiency of their link type. Latency terms follow
NCCL's tuning model (src/graph/tuning.cc): an all-reduce takes the tree's ``2 log2 D`` inter-domain
steps where that is fewer than the ring's; all-gather and reduce-scatter run as a ring, ``n - 1``
steps of which ``D - 1`` cross domains, so their latency grows with the group, not its logarithm -
except with one rank per node (a data-parallel group under TP 8), where NCCL 2.23 and later also
offer PAT (Parallel Aggregated Trees: logarithmic network latency, a smaller linear part, 0.75 of the
ring's bandwidth) and take whichever its tuning model predicts faster; PAT wins for small messages
over many nodes (FSDP gathers of one layer), the ring for large buckets. With a measured node matrix,
the inter-domain bandwidth of a ring is its slowest consecutive node pair, and the time of a kind of
collective is that of its slowest group (all groups of a kind run at once and the step waits for
the last).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from configurator.placement import Placement, group_count, group_first_ranks, group_stride, groups, progression_spread
from configurator.specs.hardware import ClusterSpec
from configurator.specs.plan import Plan


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkEfficiency:
    nvlink: float
    """Achieved / nominal bus bandwidth inside an NVLink domain."""
    scale_out: float
    """Achieved / nominal bus bandwidth over the scale-out network."""
    alltoall: float = 1.0
    """Achieved / nominal bandwidth of an all-to-all over NVLink: its own efficiency (one message per peer,
    no ring), not a fraction of the ring collectives' ``nvlink``."""
    alltoall_scale_out: float | None = None
    """Achieved / nominal bandwidth of an all-to-all's traffic over the scale-out NIC; None: ``alltoall``
    (one figure for both links: NCCL's fitted ``link.alltoall``, cost/constants.py says why). The flex
    dispatcher's kernels set both from DeepEP's benchmark (0.78 of H800 NVLink, 0.87 of the NIC;
    profiles/cost.json, cost/step.py ``flex_link_efficiency``)."""

    @property
    def alltoall_nic(self) -> float:
        """The all-to-all's efficiency on the scale-out NIC (``alltoall_scale_out``, else ``alltoall``)."""
        return self.alltoall if self.alltoall_scale_out is None else self.alltoall_scale_out


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupShape:
    """The communication shape of one group: what its time depends on."""

    size: int
    per_domain: int
    """Ranks of the group in its most crowded NVLink domain."""
    domains: int
    ring_bw_Bps: float
    """Slowest scale-out link between consecutive domains of the ring (inf if one domain)."""
    pair_bw_Bps: float
    """Slowest scale-out link between any two of its domains (inf if one domain)."""
    inter_latency_s: float


SAMPLED_GROUPS = 64

PAT_BANDWIDTH_SHARE = 0.75
"""NCCL's PAT bus bandwidth as a share of the ring's (tuning.cc ``if (a == NCCL_ALGO_PAT) busBw *= .75``;
0.85 in NCCL 2.23): its all-gather/reduce-scatter time is ``S / (0.75 B)`` where the ring's is
``(n-1)/n S / B``."""
PAT_LOG_STEP_DIVISOR = 3.5
"""PAT's logarithmic latency: ``log2(nNodes) * interLat / 3.5`` (tuning.cc)."""
PAT_LINEAR_STEP_SHARE = 2.8 / 14.0
"""PAT's linear latency, ``nRanks * 2.8 us``, as a share of NCCL's per-step network latency with one rank
per node (14 us: the Simple protocol's tree latency that tuning.cc uses when ppn = 1)."""


class ShapeCache:
    """Group shapes shared by the plans of one search (bounded, least recently used out first).

    Keyed on the degrees, the domain size, the links and the placement's *kind* (Megatron's default
    order, or one explicit placement) — never on per-GPU tuples, so an entry is small whatever the GPU
    count. A search installs one with ``SHAPE_CACHE.set`` for its duration; outside a search each
    ``CommModel`` keeps only its own shapes (nothing module-global grows in a long-lived service)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[object, list[GroupShape]]] = OrderedDict()

    def get(self, key: tuple) -> tuple[object, list[GroupShape]] | None:
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
        return hit

    def put(self, key: tuple, value: tuple[object, list[GroupShape]]) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


SHAPE_CACHE: ContextVar[ShapeCache | None] = ContextVar("configurator_shape_cache", default=None)


class CommModel:
    """Times of the collectives of one plan on one placed cluster. Caches group shapes."""

    def __init__(self, cluster: ClusterSpec, plan: Plan, placement: Placement | None,
                 efficiency: LinkEfficiency) -> None:
        self.cluster = cluster
        self.plan = plan
        self.placement = placement
        """None: Megatron's default order (rank r on global GPU r), worked out arithmetically."""
        self.eff = efficiency
        self._gpu: np.ndarray | None = None
        domain = cluster.nvlink_domain_gpus if cluster.node_links is None else cluster.gpus_per_node
        self.domain_size = max(domain, 1)
        self._shapes: dict[str, list[GroupShape]] = {}
        self._p2p: dict[int, tuple[bool, list[tuple[float, float]]]] = {}
        self.nv_bw = cluster.intra_domain_link.bandwidth_Bps * efficiency.nvlink
        self.nv_raw = cluster.intra_domain_link.bandwidth_Bps
        """Nominal NVLink bandwidth per GPU (all-to-alls take their own efficiency on it)."""
        self.nv_lat = cluster.intra_domain_link.latency_s

    def with_efficiency(self, efficiency: LinkEfficiency) -> CommModel:
        """The same placed plan under other link efficiencies; group shapes are shared (calibration)."""
        other = object.__new__(CommModel)
        other.__dict__.update(self.__dict__)
        other.eff = efficiency
        other.nv_bw = self.cluster.intra_domain_link.bandwidth_Bps * efficiency.nvlink
        return other

    @property
    def gpu(self) -> np.ndarray:
        """Global GPU index of every rank (built only when a group's shape is not cached)."""
        if self._gpu is None:
            if self.placement is None:
                self._gpu = np.arange(self.plan.world_size)
            else:
                self._gpu = self.placement.gpu_ids(self.cluster, self.plan.world_size)
        return self._gpu

    def release_gpu_map(self) -> None:
        """Drop the per-rank GPU array (O(GPUs)) of a model kept for later use; ``gpu`` rebuilds it on demand."""
        self._gpu = None

    # ----- group shapes ---------------------------------------------------------------------
    def _node_link(self, a: int, b: int) -> tuple[float, float]:
        """(bandwidth, latency) from node a to node b over the scale-out network."""
        links = self.cluster.node_links
        if links is not None:
            link = links[a][b]
            if link is not None:
                return link.bandwidth_Bps, link.latency_s
        so = self.cluster.scale_out_link
        return so.bandwidth_Bps, so.latency_s

    def shapes(self, kind: str) -> list[GroupShape]:
        """Distinct shapes of all groups of ``kind`` (usually one on a homogeneous cluster)."""
        if kind in self._shapes:
            return self._shapes[kind]
        measured = self.cluster.node_links is not None
        # The shapes depend only on the degrees, the placement, the domain size and the links: remember
        # them across the thousands of plans a search costs (keyed by the link matrix object itself).
        plan = self.plan
        placed = "default" if self.placement is None else (self.placement.node_order, self.placement.gpu_order)
        key = (kind, plan.tp, plan.cp, plan.dp, plan.pp, plan.ep, plan.etp, self.domain_size,
               self.cluster.gpus_per_node, placed, self.cluster.scale_out_link, id(self.cluster.node_links))
        cache = SHAPE_CACHE.get()
        hit = cache.get(key) if cache is not None else None
        if hit is not None and hit[0] is self.cluster.node_links:
            self._shapes[kind] = hit[1]
            return hit[1]
        seen: dict[tuple, GroupShape] = {}
        so = self.cluster.scale_out_link

        def add(size: int, sig: tuple) -> None:
            """A group shape of signature (per domain, domains, ring B/s, pair B/s, latency), each once, in order."""
            if sig not in seen:
                seen[sig] = GroupShape(size=size, per_domain=sig[0], domains=sig[1], ring_bw_Bps=sig[2],
                                       pair_bw_Bps=sig[3], inter_latency_s=sig[4])

        def uniform(per_domain: int, n_dom: int) -> tuple:
            """The signature on homogeneous links: inside one domain, or across domains on the scale-out link."""
            return (per_domain, 1, math.inf, math.inf, 0.0) if n_dom == 1 else \
                (per_domain, n_dom, so.bandwidth_Bps, so.bandwidth_Bps, so.latency_s)

        if not measured and self.placement is None:
            # Megatron's order on consecutive GPUs (rank r on GPU r): only the sampled rows, each an arithmetic
            # progression (``group_stride``) whose spread over the domains is worked out in O(domain) steps
            # (``progression_spread``), nothing that grows with the GPU count. It depends on the first rank only
            # modulo the domain, and the shapes come in the order of their first sampled row (as from ``groups``).
            n_rows = group_count(plan, kind)
            pick = np.unique(np.linspace(0, n_rows - 1, SAMPLED_GROUPS).astype(int)) if n_rows > SAMPLED_GROUPS \
                else np.arange(n_rows)
            stride, size = group_stride(plan, kind)
            spread: set[int] = set()
            for first in (group_first_ranks(plan, kind, pick) % self.domain_size).tolist():
                if first not in spread:
                    spread.add(first)
                    add(size, uniform(*progression_spread(first, stride, size, self.domain_size)))
        elif not measured:
            rows = self.gpu[groups(self.plan, kind)]
            if len(rows) > SAMPLED_GROUPS:
                # Homogeneous links: groups differ only in how they spread over NVLink domains, and with
                # Megatron's strided groups that pattern repeats; an even sample of groups (first and last
                # included) finds every pattern without sorting tens of thousands of rows.
                pick = np.unique(np.linspace(0, len(rows) - 1, SAMPLED_GROUPS).astype(int))
                rows = rows[pick]
            # Vectorised tally (a ring has up to N/tp ranks): sorted domains, so a domain's count is its run.
            d = np.sort(rows // self.domain_size, axis=1)
            size = d.shape[1]
            # Every row at once: where a run of one domain starts, each position's distance from its run's
            # start, so the longest run (the GPUs per domain) and the number of runs (domains) per row.
            starts = np.ones(d.shape, dtype=bool)
            starts[:, 1:] = d[:, 1:] != d[:, :-1]
            position = np.arange(size)
            run_start = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
            longest = (position - run_start + 1).max(axis=1)
            for per_domain, n_dom in zip(longest.tolist(), starts.sum(axis=1).tolist()):
                add(size, uniform(per_domain, n_dom))
        else:
            rows = self.gpu[groups(self.plan, kind)]
            size = rows.shape[1]
            for ring in (rows // self.domain_size).tolist():
                tally = Counter(ring)
                ds = list(tally)
                per_domain = max(tally.values())
                if len(ds) == 1:
                    add(size, (per_domain, 1, math.inf, math.inf, 0.0))
                    continue
                ring_links = [self._node_link(ds[i], ds[(i + 1) % len(ds)]) for i in range(len(ds))]
                ring_bw = min(bw for bw, _ in ring_links)
                lat = max(lt for _, lt in ring_links)
                pair_bw = min(self._node_link(a, b)[0] for a in ds for b in ds if a != b) \
                    if len(ds) <= 64 else ring_bw
                add(size, (per_domain, len(ds), ring_bw, pair_bw, lat))
        shapes = list(seen.values())
        self._shapes[kind] = shapes
        if cache is not None:
            cache.put(key, (self.cluster.node_links, shapes))  # holding the matrix keeps its id unique
        return shapes

    # ----- collectives ----------------------------------------------------------------------
    def _allreduce_one(self, s: GroupShape, num_bytes: float, factor: float, pat: bool = True) -> float:
        """``factor`` = 2 for all-reduce, 1 for all-gather / reduce-scatter; ``pat``: NCCL may run the latter
        as PAT (one rank per node; not for a reduce-scatter that divides in the collective)."""
        if s.size == 1 or num_bytes <= 0:
            return 0.0
        g, d = s.per_domain, s.domains
        t = factor * (g - 1) / g * num_bytes / self.nv_bw
        if d > 1:
            t += factor * (d - 1) / d * (num_bytes / g) / (s.ring_bw_Bps * self.eff.scale_out)
        if factor == 2.0:
            # All-reduce: NCCL's tree across domains, 2 log2(D) inter-domain steps (or the ring's, if fewer).
            steps = min(d - 1, 2 * math.ceil(math.log2(d))) if d > 1 else 0
            return t + 2 * (g - 1) * self.nv_lat + 2 * steps * s.inter_latency_s
        # All-gather / reduce-scatter run as NCCL's ring: n - 1 steps, of which D - 1 cross domains.
        ring = t + d * (g - 1) * self.nv_lat + (d - 1) * s.inter_latency_s
        if pat and g == 1 and d > 1:
            # One rank per node (a DP group under TP 8): NCCL >= 2.23 may take PAT instead, whichever its
            # tuning model predicts faster (module docstring).
            return min(ring, self._pat_s(d, num_bytes, s))
        return ring

    def _pat_s(self, d: int, num_bytes: float, s: GroupShape) -> float:
        """NCCL's PAT all-gather / reduce-scatter over ``d`` ranks, one per node (src/graph/tuning.cc, NCCL
        2.23 on): bus bandwidth ``PAT_BANDWIDTH_SHARE`` of the ring's, taken without the ring's
        ``n / (n - 1)`` algorithm-bandwidth credit, and latency ``log2(d)`` steps of 1/3.5 of a network
        step (``interLat / 3.5``) plus a part linear in the ranks (``nRanks * 2.8 us``, a fifth of NCCL's
        14 us per network ring step): both scaled to this link's own per-step latency."""
        bandwidth = num_bytes / (PAT_BANDWIDTH_SHARE * s.ring_bw_Bps * self.eff.scale_out)
        latency = (math.log2(d) / PAT_LOG_STEP_DIVISOR + PAT_LINEAR_STEP_SHARE * d) * s.inter_latency_s
        return bandwidth + latency

    def allreduce_s(self, kind: str, num_bytes: float) -> float:
        return max((self._allreduce_one(s, num_bytes, 2.0) for s in self.shapes(kind)), default=0.0)

    def allgather_s(self, kind: str, num_bytes: float) -> float:
        """All-gather (or reduce-scatter) whose gathered buffer is ``num_bytes`` per rank."""
        return max((self._allreduce_one(s, num_bytes, 1.0) for s in self.shapes(kind)), default=0.0)

    def reduce_scatter_s(self, kind: str, num_bytes: float, average: bool = False) -> float:
        """Reduce-scatter of a ``num_bytes`` buffer per rank. ``average``: the collective divides
        (``ReduceOp.AVG`` / ``PREMUL_SUM``, NCCL's PreMulSum/SumPostDiv: FSDP2's bf16/fp32 gradients), which
        NCCL never runs as PAT (enqueue.cc skips PAT for those ops), so only the ring is taken."""
        return max((self._allreduce_one(s, num_bytes, 1.0, pat=not average) for s in self.shapes(kind)),
                   default=0.0)

    def alltoall_s(self, kind: str, num_bytes: float, scale_out_share: float | None = None) -> float:
        """All-to-all where every rank sends ``num_bytes`` in total (its share to itself included).

        ``scale_out_share``: the share of ``num_bytes`` that leaves the NVLink domain when the traffic
        is not spread evenly over all ranks (node-limited MoE routing); default ``(n - g) / n``."""
        worst = 0.0
        a2a = self.eff.alltoall
        for s in self.shapes(kind):
            n, g = s.size, s.per_domain
            if n == 1 or num_bytes <= 0:
                continue
            t = num_bytes * (g - 1) / n / (self.nv_raw * a2a) + (g - 1) * self.nv_lat
            if s.domains > 1:
                so = self.eff.alltoall_nic
                share = (n - g) / n if scale_out_share is None else min(scale_out_share, (n - g) / n)
                inter = max(num_bytes * share / (s.ring_bw_Bps * so), num_bytes / n / (s.pair_bw_Bps * so))
                t = max(t, inter + s.inter_latency_s * min(s.domains - 1, 2 * math.ceil(math.log2(s.domains))))
            worst = max(worst, t)
        return worst

    def ring_hop_s(self, kind: str, num_bytes: float) -> float:
        """One step of a ring in which every rank of each ``kind`` group sends ``num_bytes`` to the next
        at once: paced by the slowest hop, which is an inter-domain one (on that GPU's own NIC share)
        as soon as the group spans domains."""
        worst = 0.0
        for s in self.shapes(kind):
            if s.size == 1 or num_bytes <= 0:
                continue
            if s.domains > 1:
                t = s.inter_latency_s + num_bytes / (s.ring_bw_Bps * self.eff.scale_out)
            else:
                t = self.nv_lat + num_bytes / self.nv_bw
            worst = max(worst, t)
        return worst

    def cp_ranks_per_domain(self) -> int:
        """Ranks of a CP group in one NVLink domain (the a2a part of ``a2a+p2p``)."""
        return min((s.per_domain for s in self.shapes("cp")), default=1)

    def alltoall_within_domain_s(self, num_bytes: float, ranks: int) -> float:
        """All-to-all over ``ranks`` GPUs of one NVLink domain, ``num_bytes`` sent per rank."""
        if ranks <= 1 or num_bytes <= 0:
            return 0.0
        return num_bytes * (ranks - 1) / ranks / (self.nv_raw * self.eff.alltoall) + (ranks - 1) * self.nv_lat

    def subgroup_allgather_s(self, kind: str, num_bytes: float, size: int, outer: bool, pat: bool = True) -> float:
        """All-gather over part of a ``kind`` group: with ``outer=False`` its ``size`` consecutive
        ranks (an HSDP shard group), with ``outer=True`` the ``n/size`` ranks one per such block (the
        replica group). Domains are filled as the whole group fills them. ``pat=False``: a reduce-scatter
        that divides in the collective, or half of an all-reduce (neither runs as PAT)."""
        worst = 0.0
        for s in self.shapes(kind):
            n = s.size
            if n <= 1 or size <= 0:
                continue
            g = s.per_domain
            if outer:
                members = n // size
                per_dom = max(1, g // size) if size < g else 1
            else:
                members = size
                per_dom = min(size, g)
            if members <= 1:
                continue
            domains = -(-members // per_dom)
            sub = GroupShape(size=members, per_domain=per_dom, domains=domains,
                             ring_bw_Bps=s.ring_bw_Bps, pair_bw_Bps=s.pair_bw_Bps,
                             inter_latency_s=s.inter_latency_s if domains > 1 else 0.0)
            worst = max(worst, self._allreduce_one(sub, num_bytes, 1.0, pat=pat))
        return worst

    def _default_p2p(self, stage: int) -> tuple[bool, list[tuple[float, float]]]:
        """``p2p_stage_s``'s (some pipeline's send stays in an NVLink domain, the scale-out links used)
        for Megatron's order on consecutive GPUs of a homogeneous cluster, worked out arithmetically
        instead of from every pipeline (16,384 of them at 131,072 GPUs: it grew with the GPU count).

        Rank ``pp_i * S + j`` (``S = tp * cp * dp``, ``j < S``) runs on GPU of the same number, so the send
        from stage ``s`` goes ``delta = (s' - s) * S`` GPUs on; it stays in its domain of ``D`` GPUs iff
        ``0 <= r + delta < D`` for ``r`` the sender's index in its domain, and the senders' indices are
        every residue mod D when ``S >= D``, else the ``S`` consecutive ones from ``s * S mod D``."""
        plan = self.plan
        per_stage = plan.world_size // plan.pp
        d = self.domain_size
        delta = ((stage + 1) % plan.pp - stage) * per_stage
        residues = range(d) if per_stage >= d else [(stage * per_stage + j) % d for j in range(per_stage)]
        inside = [0 <= r + delta < d for r in residues]
        so = self.cluster.scale_out_link
        return any(inside), ([(so.bandwidth_Bps, so.latency_s)] if not all(inside) else [])

    def p2p_stage_s(self, stage: int, num_bytes: float) -> float:
        """Send from pipeline rank ``stage`` to ``stage + 1`` (wrapping), slowest of all pipelines."""
        if self.plan.pp == 1 or num_bytes <= 0:
            return 0.0
        if stage not in self._p2p and self.placement is None and self.cluster.node_links is None:
            self._p2p[stage] = self._default_p2p(stage)
        if stage not in self._p2p:
            pipes = self.gpu[groups(self.plan, "pp")]
            src, dst = pipes[:, stage], pipes[:, (stage + 1) % self.plan.pp]
            same = (src // self.domain_size) == (dst // self.domain_size)
            cross = ~same
            if not cross.any():
                links = []
            elif self.cluster.node_links is None:
                # Every node pair has the scale-out link: one, not one per pair (16,384 pipelines at 131,072
                # GPUs made this the search's slowest step).
                so = self.cluster.scale_out_link
                links = [(so.bandwidth_Bps, so.latency_s)]
            else:
                g = self.cluster.gpus_per_node
                pairs = set(zip((src[cross] // g).tolist(), (dst[cross] // g).tolist()))
                links = [self._node_link(a, b) for a, b in pairs]
            self._p2p[stage] = (bool(same.any()), links)
        any_same, links = self._p2p[stage]
        worst = self.nv_lat + num_bytes / self.nv_bw if any_same else 0.0
        for bw, lat in links:
            worst = max(worst, lat + num_bytes / (bw * self.eff.scale_out))
        return worst


__all__ = ["SHAPE_CACHE", "CommModel", "GroupShape", "LinkEfficiency", "ShapeCache"]
