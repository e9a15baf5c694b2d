"""GPUSpec and ClusterSpec: the hardware a plan runs on, in SI units.

Data files (``profiles/gpus``, ``profiles/clusters``, probe output) carry units in their key
names (``bandwidth_GBps``, ``memory_GiB``); ``configurator.profiles`` converts them to SI
(bytes, bytes/s, FLOP/s, seconds) once, here nothing is in GB or TB any more.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from configurator.errors import InputError, require, require_positive_int, require_positive_number

Precision = Literal["bf16", "fp16", "fp8", "fp4"]
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp8", "fp4")
GPU_FAMILIES: tuple[str, ...] = ("ampere", "hopper", "blackwell")
"""Families with calibrated constants (profiles/calibration.json, memory.json); other architectures
borrow one of them through ``profiles/gpu_families.json`` (a stated fallback, not a fit)."""
VENDORS: tuple[str, ...] = ("nvidia", "amd")


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkSpec:
    """One direction of a link: payload bandwidth and small-message latency (alpha-beta model)."""

    bandwidth_Bps: float
    latency_s: float

    def __post_init__(self) -> None:
        require_positive_number("bandwidth_GBps", self.bandwidth_Bps)
        require(self.latency_s >= 0, "latency_s", self.latency_s, "must be >= 0")

    def transfer_s(self, num_bytes: float) -> float:
        return self.latency_s + num_bytes / self.bandwidth_Bps


@dataclass(frozen=True, kw_only=True, slots=True)
class GPUSpec:
    key: str
    name: str
    family: str
    """The family whose calibrated constants (memory overheads, efficiencies) this GPU uses: its own
    architecture where runs were measured, else the fallback of ``profiles/gpu_families.json``."""
    memory_bytes: int
    """Device memory as the driver reports it (nvidia-smi total)."""
    hbm_bandwidth_Bps: float
    peak_flops: tuple[tuple[str, float], ...]
    """Dense peak FLOP/s per precision, as (precision, flops) pairs; missing = unsupported."""
    nvlink_bandwidth_Bps: float
    pcie_host_bandwidth_Bps: float
    tdp_W: float
    source: str
    architecture: str = ""
    """The GPU's own architecture (``volta``, ``cdna3``, ...); empty = the same as ``family``."""
    vendor: str = "nvidia"
    fallback_reason: str = ""
    """Why ``family``'s constants stand in for ``architecture`` (non-empty only for a fallback: no
    measured runs of this architecture, so its error band is wider)."""
    sfu_exp2_per_s: float = 0.0
    """Peak base-2 exponentials per second of the special function units (MUFU.EX2): the softmax's
    ``exp`` in flash attention runs here, not on the tensor cores (cost/compute.py). 0 = not modelled
    (attention is then timed on the tensor-core pipe alone)."""
    sustained_matmul_ratio: float = 1.0
    """Tensor-core rate a GEMM sustains on this GPU, as a fraction (0, 1] of what its rated peak implies
    against its family's reference part (the GPU whose measurements set the family's ``gemm.*`` efficiency,
    e.g. B200 for Blackwell). A rating can assume an SM clock that GEMMs do not hold under the power cap
    (GB200: 2,500 TFLOP/s rated, 1.111x B200's, but 1.044x B200's measured best matmul: 0.94). It scales
    every tensor-core precision's GEMM and attention-MMA rate (cost/compute.py ``gpu_rates``), not the peak
    that MFU is reported against, nor a probe's measured GEMM curve (already the sustained rate). 1.0 =
    the rating scales as the reference part's."""

    def __post_init__(self) -> None:
        require(self.family in GPU_FAMILIES, "family", self.family,
                f"must be one of {', '.join(GPU_FAMILIES)}")
        require(self.vendor in VENDORS, "vendor", self.vendor, f"must be one of {', '.join(VENDORS)}")
        require_positive_int("memory_bytes", self.memory_bytes)
        for name in ("hbm_bandwidth_Bps", "pcie_host_bandwidth_Bps"):
            require_positive_number(name, getattr(self, name))
        require(self.nvlink_bandwidth_Bps >= 0, "nvlink_bandwidth_GBps", self.nvlink_bandwidth_Bps,
                "must be >= 0 (0 = no NVLink/xGMI, PCIe only)")
        require(any(p in ("bf16", "fp16") for p, _ in self.peak_flops), "peak_dense_TFLOPs",
                dict(self.peak_flops), "must give bf16 or fp16")
        require(self.sfu_exp2_per_s >= 0, "sfu_exp2_Tps", self.sfu_exp2_per_s, "must be >= 0")
        require(0 < self.sustained_matmul_ratio <= 1, "sustained_matmul_ratio", self.sustained_matmul_ratio,
                "must be in (0, 1] (the share of the rated tensor-core rate GEMMs sustain)")

    @property
    def half_precision(self) -> str:
        """The 16-bit GEMM precision: bf16, or fp16 on GPUs without bf16 (V100, T4)."""
        return "bf16" if self.supports("bf16") else "fp16"

    @property
    def calibrated(self) -> bool:
        """Whether this GPU's architecture has measured runs behind its constants."""
        return not self.fallback_reason

    def peak_flops_for(self, precision: str) -> float:
        """Dense peak for ``precision``; an ``InputError`` if the GPU lacks it (fp8 on A100)."""
        for p, flops in self.peak_flops:
            if p == precision:
                return flops
        raise InputError("precision", precision, f"is not supported by GPU {self.key}")

    def supports(self, precision: str) -> bool:
        return any(p == precision for p, _ in self.peak_flops)


SFU_EXP2_PER_TENSOR_FLOP: dict[str, float] = {
    "volta": 16 / 1024, "turing": 16 / 1024, "ampere": 16 / 2048, "ada": 16 / 1024,
    "hopper": 16 / 4096, "blackwell": 16 / 8192,
}
"""Exponentials per dense 16-bit tensor-core FLOP, per clock and SM, by architecture: the SFU issues 16
``ex2`` per clock per SM from Volta to Blackwell (CUDA C++ Programming Guide, arithmetic instruction
throughput: 16 results per clock per SM for exp2f/__expf on compute capability 7.x-9.0; FlashAttention-4,
Zadouri et al. 2026: 'MUFU 16 ops/clock/SM' on B200), against 1,024 dense fp16 FLOPs per clock per SM on
Volta/Turing/Ada, 2,048 on Ampere (A100: 312 TFLOP/s = 108 SMs x 1.41 GHz x 2,048), 4,096 on Hopper
(989 TFLOP/s = 132 x 1.83 GHz x 4,096) and 8,192 on Blackwell (FlashAttention-4: '8192 ops/clock/SM').
So a GPU's exponential rate is its 16-bit dense peak times this ratio (H100: 989 TFLOP/s x 16/4096 = 3.9
T/s, the FlashAttention-3 paper's '3.9 TFLOPS of special functions'); a GPU profile's ``sfu_exp2_Tps``
overrides it (Blackwell Ultra doubles the SFU rate: 32 per clock per SM). AMD architectures: not listed,
not modelled (0)."""


def derived_sfu_exp2_per_s(architecture: str, half_peak_flops: float) -> float:
    """Exponentials/s of an NVIDIA GPU from its 16-bit dense peak (``SFU_EXP2_PER_TENSOR_FLOP``); 0 where
    the architecture's SFU rate is not known."""
    return half_peak_flops * SFU_EXP2_PER_TENSOR_FLOP.get(architecture, 0.0)


def job_domain_gpus(domain_gpus: int, gpus_per_node: int, num_nodes: int, per_node: int) -> int:
    """NVLink domain size as a job of ``num_nodes`` nodes sees it.

    A rack-scale domain (NVL72: 18 nodes of 4) is cut into equal segments by the scheduler (Slurm
    ``--segment``): a job takes the largest node count up to the rack's that divides its own node
    count, so 64 nodes of GB200 use 16-node (64-GPU) NVLink segments, not 72-GPU racks with ranks
    straddling them. This is the rule NVIDIA's launchers apply: NeMo's scripts/performance ``slurm_executor``
    (commit 7a8f1cc, the one DGX Cloud Benchmarking v25.05 pins) passes ``--segment`` = the largest of 18..1
    that divides the node count for 4-GPU nodes beyond one rack (tests/test_nvlink_domains.py). Node-sized
    domains are simply the node (or the part of it the job uses).
    """
    if domain_gpus <= gpus_per_node:
        return min(domain_gpus, per_node)
    rack_nodes = domain_gpus // gpus_per_node
    if num_nodes <= rack_nodes:
        return num_nodes * per_node
    segment = max(n for n in range(1, rack_nodes + 1) if num_nodes % n == 0)
    return segment * per_node


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeInfo:
    """A measured node (probe profiles): where it is and what it reported."""

    index: int
    host: str
    num_gpus: int
    gpu_memory_bytes: int
    host_memory_bytes: int


MIN_HOST_DISPATCH_RATIO, MAX_HOST_DISPATCH_RATIO = 0.25, 10.0
"""Bounds of ``ClusterSpec.host_dispatch_ratio``: a host 4x faster or 10x slower at dispatching ops than a DGX H100's
(the Grace hosts measured 2.5-2.75x) is a unit mistake, not a CPU."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterSpec:
    """A cluster of identical nodes, sized; links as tiers or as a measured node matrix."""

    name: str
    description: str
    gpu: GPUSpec
    num_nodes: int
    gpus_per_node: int
    nvlink_domain_gpus: int
    """GPUs that reach each other over NVLink: a node (8) or a rack (NVL72)."""
    intra_domain_link: LinkSpec
    """Per GPU, per direction, inside the NVLink domain."""
    scale_out_link: LinkSpec
    """Per GPU, per direction, between NVLink domains (InfiniBand/RoCE NIC share)."""
    host_memory_bytes_per_node: int
    host_cpu_cores_per_node: int
    source: str
    node_links: tuple[tuple[LinkSpec | None, ...], ...] | None = None
    """Optional per-ordered-node-pair scale-out links (measured), per GPU; ``[i][i]`` is None."""
    nodes: tuple[NodeInfo, ...] = ()
    warnings: tuple[str, ...] = ()
    measured: tuple[tuple[str, object], ...] = field(default=())
    """Probe extras kept verbatim (collectives, compute curve, provenance) for later stages."""
    host_dispatch_ratio: float = 1.0
    """The host CPU's time to dispatch one eager PyTorch op (Python, ATen and the CUDA launch), over that of the host
    the fitted ``overhead.launch_s`` describes (the x86 Xeon Platinum 8480C of a DGX H100, like most rows'). Grace
    hosts (GB200/GB300 NVL72) take 2.75x: a ``torch.nn.Linear`` forward (bf16, hidden 2,048, 8,192 tokens) costs
    37.08 us of CPU on GB200 and 13.48 us on a DGX H100 (33.17 on GH200), measured by one user with the same
    software on each (NVIDIA/TransformerEngine#2053, 2025-08; Transformer Engine's own modules 99.66 / 90.53 us on
    GB200 / GH200). It matters only where launches are exposed (``cost/launch.py``: thin layers, and the kernels
    after an MoE dispatcher's device-to-host sync), and only for ops dispatched through Python: the grouped GEMMs'
    per-expert cuBLAS calls, which Transformer Engine makes from one C++ loop, keep the fitted cost."""

    def __post_init__(self) -> None:
        for name in ("num_nodes", "gpus_per_node", "nvlink_domain_gpus", "host_cpu_cores_per_node"):
            require_positive_int(name, getattr(self, name))
        require_positive_int("host_memory_bytes_per_node", self.host_memory_bytes_per_node)
        require(isinstance(self.host_dispatch_ratio, (int, float)) and not isinstance(self.host_dispatch_ratio, bool)
                and MIN_HOST_DISPATCH_RATIO <= self.host_dispatch_ratio <= MAX_HOST_DISPATCH_RATIO,
                "host_dispatch_ratio", self.host_dispatch_ratio,
                f"must be a number from {MIN_HOST_DISPATCH_RATIO:g} to {MAX_HOST_DISPATCH_RATIO:g} (the host's "
                "op-dispatch time over a DGX H100's x86 host's)")
        from configurator.bounds import check_cluster_bounds

        check_cluster_bounds(self)
        if self.node_links is not None:
            require(len(self.node_links) == self.num_nodes
                    and all(len(row) == self.num_nodes for row in self.node_links),
                    "links", f"{len(self.node_links)} rows",
                    f"must form a {self.num_nodes}x{self.num_nodes} node matrix")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def gpu_memory_bytes(self) -> int:
        """Smallest device memory over the nodes (measured) or the GPU's nominal memory."""
        if self.nodes:
            return min(n.gpu_memory_bytes for n in self.nodes)
        return self.gpu.memory_bytes

    @property
    def host_memory_bytes(self) -> int:
        """Host memory per node (smallest measured node where measured)."""
        if self.nodes:
            return min(n.host_memory_bytes for n in self.nodes)
        return self.host_memory_bytes_per_node

    def sized(self, *, num_gpus: int | None = None, nodes: int | None = None) -> ClusterSpec:
        """This cluster with ``num_gpus`` GPUs or ``nodes`` nodes.

        A measured profile describes real machines and cannot be resized, only confirmed. Fewer
        GPUs than one node is allowed (a single partial node, e.g. 4 of 8 GPUs).
        """
        if num_gpus is not None and nodes is not None:
            raise InputError("num_gpus", num_gpus, "give either --num-gpus or --nodes, not both")
        if num_gpus is None and nodes is None:
            return self
        from configurator.bounds import MAX_GPUS, require_at_most

        if nodes is not None:
            require_positive_int("nodes", nodes)
            require_at_most("nodes", nodes, MAX_GPUS // self.gpus_per_node,
                            f"nodes of {self.gpus_per_node} GPUs ({MAX_GPUS:,} GPUs)")
            num_nodes, per_node = nodes, self.gpus_per_node
        else:
            require_positive_int("num_gpus", num_gpus)
            assert num_gpus is not None
            require_at_most("num_gpus", num_gpus, MAX_GPUS)
            if num_gpus < self.gpus_per_node:
                num_nodes, per_node = 1, num_gpus
            else:
                require(num_gpus % self.gpus_per_node == 0, "num_gpus", num_gpus,
                        f"must be a multiple of the {self.gpus_per_node} GPUs per node of {self.name}")
                num_nodes, per_node = num_gpus // self.gpus_per_node, self.gpus_per_node
        if self.node_links is not None or self.nodes:
            if num_nodes != self.num_nodes or per_node != self.gpus_per_node:
                raise InputError("num_gpus" if num_gpus is not None else "nodes",
                                 num_gpus if num_gpus is not None else nodes,
                                 f"measured profile {self.name} has {self.num_nodes} nodes x "
                                 f"{self.gpus_per_node} GPUs and cannot be resized")
            return self
        return replace(self, num_nodes=num_nodes, gpus_per_node=per_node,
                       nvlink_domain_gpus=job_domain_gpus(self.nvlink_domain_gpus, self.gpus_per_node,
                                                         num_nodes, per_node))
