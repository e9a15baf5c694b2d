"""Device memory the flex MoE token dispatcher (DeepEP / HybridEP) reserves on every EP rank, bytes.

Megatron-Core's ``--moe-token-dispatcher-type flex`` allocates its communication buffers once, outside the
PyTorch caching allocator (``cudaMalloc``, NVSHMEM's symmetric heap, CUDA VMM), so they show in nvidia-smi
but not in ``torch.cuda.max_memory_reserved``/``allocated``. The buffer is built for the dispatcher's group,
expert-TP x EP ranks (``MoEFlexTokenDispatcher``: ``group=self.tp_ep_group``). The backend is the one this
tool emits (``emit/megatron.flex_backend``): DeepEP where the NVLink domain is a node, HybridEP where it
spans nodes (GB200/GB300 NVL72).

**DeepEP** (deepseek-ai/DeepEP v1.2.1, commit 9af0e0d; Megatron-Core 0.19.2
``megatron/core/transformer/moe/fused_a2a.py`` ``get_buffer``): ``Buffer(group, num_nvl_bytes,
num_rdma_bytes)`` with each the larger of ``Buffer.get_dispatch_config(n)`` / ``get_combine_config(n)``'s
``get_nvl_buffer_size_hint`` / ``get_rdma_buffer_size_hint(hidden_bytes, n)``; ``hidden_bytes = hidden x
max(element size, 2)`` (bf16: 2 h; fused_a2a ``get_hidden_bytes``). From ``csrc/config.hpp``, with
``C = num_sms / 2`` channels (Megatron sets ``num_sms`` 20: token_dispatcher.py ``set_deepep_num_sms(
moe_flex_dispatcher_num_sms or 20)``), ``nvl = min(n, 8)``, ``rdma = max(n / 8, 1)`` ranks, ``R`` the
config's ``num_max_nvl_chunked_recv_tokens``, ``Q`` its ``num_max_rdma_chunked_recv_tokens`` rounded up to
a multiple of the RDMA send chunk (``Config``'s constructor), top-k and scale slots ``kNumMaxTopK =
kNumMaxScales = 128``, ``SourceMeta`` 8 bytes (two ints, internode.cu):

* NVLink: ``C nvl (2 rdma + 3) 4 + C nvl R (hidden_bytes + 8 + 128 x 8 + 128 x 4 + 128 x 4)``, rounded up
  to 128 bytes; ``cudaMalloc``'d with 160 bytes of barrier/pointer slots (deep_ep.cpp ``Buffer::Buffer``),
  plus a 32 MiB workspace (``NUM_WORKSPACE_BYTES``, configs.cuh) every Buffer allocates.
* RDMA (only when the group spans nodes, ``n > 8``): ``C rdma (2 x 8 + 2) 2 x 4 + C rdma Q 2 (hidden_bytes
  + 8 + 128 x 8 + 128 x 4 + 128 x 4 + 16)``, rounded up to 128 bytes, from NVSHMEM's symmetric heap
  (``nvshmem_align``). NVSHMEM maps that heap with CUDA VMM in granules of ``NVSHMEM_CUMEM_GRANULARITY``,
  which DeepEP's ``Buffer.__init__`` sets to 2^29 bytes (512 MiB, also NVSHMEM's default), so the device
  memory it takes is the buffer rounded up to whole granules. NVSHMEM's own device state outside the heap
  (IBGDA queue pairs, proxy channels) is not counted: no source found gives its size.

DeepEP's main branch (commit dd758ca, ``csrc/legacy/config.hpp``, ``deep_ep/buffers/legacy.py``) keeps these
formulas, adds configs for 48 and 96 ranks and lowers the RDMA chunks for 24-64 ranks (EP64: a 336 instead of
a 350.5 MiB RDMA buffer, the same one 512 MiB granule); v1.2.1's larger chunks are kept, and a group size
v1.2.1 has no config for (it asserts) takes the next larger size's.

**HybridEP** (DeepEP branch ``hybrid-ep``, commit 94a9f8f; Megatron-Core 0.19.2 ``init_hybrid_ep_buffer``
with ``max_num_of_tokens_per_rank`` = the first dispatch's token count, fp8 dispatch off): ranks per
NVLink domain ``L`` (the group's ranks reachable over NVLink), ``N = n / L`` domains, ``T`` tokens per rank
rounded up to 16 (``update_template_config``), ``E`` local experts, token elements 2 bytes:

* NVLink (``csrc/hybrid_ep/buffer/intranode.cu``, shared dispatch/combine buffers, the default): ``M = T L
  N`` rows of ``2 h`` (tokens) + ``4 E L`` (probabilities) + ``4 h / 128`` (scaling factors) bytes.
* RDMA (``internode_doca.cu``, when ``N > 1``): dispatch ``T (2 h + 4 E L N + 4 h / 128) + T (N - 1) (2 h
  + 4 E L + 4 h / 128)``, combine ``2 T (N - 1) (2 h + 4 E L)``; their flag arrays (a few KiB) are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from configurator.specs.hardware import ClusterSpec

DEEPEP_NUM_SMS = 20
"""SMs Megatron-Core gives DeepEP's normal kernels (``set_deepep_num_sms(moe_flex_dispatcher_num_sms or
20)``, token_dispatcher.py, 0.19.2); channels are half of them."""
NUM_MAX_NVL_PEERS = 8
"""DeepEP's ranks per NVLink node (csrc/kernels/configs.cuh)."""
NUM_WORKSPACE_BYTES = 32 * 1024 * 1024
"""The workspace every DeepEP Buffer ``cudaMalloc``s (configs.cuh)."""
_BARRIER_AND_POINTER_BYTES = NUM_MAX_NVL_PEERS * (4 + 8 + 8)
"""Barrier signals and peer pointers ``cudaMalloc``'d after the NVLink buffer (deep_ep.cpp)."""
NVSHMEM_GRANULE_BYTES = 2 ** 29
"""``NVSHMEM_CUMEM_GRANULARITY`` as DeepEP's ``Buffer.__init__`` sets it (512 MiB)."""
_MAX_TOPK = 128
_MAX_SCALES = 128
_SOURCE_META_BYTES = 8

# (num_max_nvl_chunked_send_tokens, _recv_tokens, num_max_rdma_chunked_send_tokens, _recv_tokens) by group
# size: deep_ep/buffer.py v1.2.1 get_dispatch_config / get_combine_config.
_DISPATCH_CONFIGS: dict[int, tuple[int, int, int, int]] = {
    2: (24, 256, 6, 128), 4: (6, 256, 6, 128), 8: (6, 256, 6, 128), 16: (36, 288, 20, 128),
    24: (8, 288, 32, 128), 32: (32, 288, 32, 128), 64: (20, 288, 28, 128), 128: (20, 560, 32, 128),
    144: (32, 720, 12, 128), 160: (28, 720, 12, 128)}
_COMBINE_CONFIGS: dict[int, tuple[int, int, int, int]] = {
    2: (10, 256, 6, 128), 4: (9, 256, 6, 128), 8: (4, 256, 6, 128), 16: (4, 288, 12, 128),
    24: (1, 288, 8, 128), 32: (1, 288, 8, 128), 64: (1, 288, 20, 128), 128: (1, 560, 12, 128),
    144: (2, 720, 8, 128), 160: (2, 720, 8, 128)}


DEEPEP_GROUP_SIZES: frozenset[int] = frozenset(_DISPATCH_CONFIGS)
"""Group sizes DeepEP v1.2.1 runs: ``Buffer.get_dispatch_config`` / ``get_combine_config`` assert
``num_ranks in config_map`` ("Unsupported number of EP ranks"), and Megatron-Core's ``fused_a2a.get_buffer``
calls both with the group's size. (DeepEP's main branch adds 48 and 96; v1.2.1's set runs on both.)"""


def flex_backend(cluster: ClusterSpec) -> str:
    """The flex dispatcher's backend on ``cluster``, as ``emit/megatron`` emits it: HybridEP where the NVLink
    domain spans nodes (GB200/GB300 NVL72: Megatron-Core's TransformerConfig says "Currently only 'hybridep'
    backend supports the MNNVL case", ``moe_flex_dispatcher_backend``), DeepEP otherwise."""
    return "hybridep" if cluster.nvlink_domain_gpus > cluster.gpus_per_node else "deepep"


def flex_group_supported(backend: str, group_ranks: int) -> bool:
    """Whether the flex dispatcher can run a group of ``group_ranks`` (expert-TP x EP) ranks on ``backend``:
    DeepEP only at the sizes it has a config for (``DEEPEP_GROUP_SIZES``; any other asserts at the first
    dispatch); HybridEP sizes itself from the group and its NVLink domains (no such table)."""
    return backend != "deepep" or group_ranks in DEEPEP_GROUP_SIZES


def _align(value: int, to: int) -> int:
    return -(-value // to) * to


def _config(table: dict[int, tuple[int, int, int, int]], num_ranks: int) -> tuple[int, int, int, int]:
    """DeepEP's recommended config for ``num_ranks``; a size it has no entry for (DeepEP asserts) takes the
    next larger entry's chunk sizes (the largest, 160 ranks, beyond it: DeepEP's limit is 8 x 20 ranks)."""
    keys = [k for k in sorted(table) if k >= num_ranks]
    return table[keys[0] if keys else max(table)]


def _rdma_recv_tokens(config: tuple[int, int, int, int]) -> int:
    """The RDMA receive chunk rounded up to a multiple of the send chunk (``Config``'s constructor)."""
    return _align(config[3], config[2])


def deepep_nvl_buffer_bytes(hidden_bytes: int, num_ranks: int, num_sms: int = DEEPEP_NUM_SMS) -> int:
    """``max(dispatch, combine config).get_nvl_buffer_size_hint(hidden_bytes, num_ranks)`` (config.hpp)."""
    channels = num_sms // 2
    nvl = min(num_ranks, NUM_MAX_NVL_PEERS)
    rdma = max(num_ranks // NUM_MAX_NVL_PEERS, 1)
    per_token = hidden_bytes + _SOURCE_META_BYTES + _MAX_TOPK * 8 + _MAX_TOPK * 4 + _MAX_SCALES * 4
    out = 0
    for table in (_DISPATCH_CONFIGS, _COMBINE_CONFIGS):
        recv = _config(table, num_ranks)[1]
        size = channels * nvl * (2 * rdma + 3) * 4 + channels * nvl * recv * per_token
        out = max(out, _align(size, 128))
    return out


def deepep_rdma_buffer_bytes(hidden_bytes: int, num_ranks: int, num_sms: int = DEEPEP_NUM_SMS) -> int:
    """``max(dispatch, combine config).get_rdma_buffer_size_hint(hidden_bytes, num_ranks)`` (config.hpp):
    0 inside one node (``num_ranks <= 8``)."""
    if num_ranks <= NUM_MAX_NVL_PEERS:
        return 0
    channels = num_sms // 2
    rdma = num_ranks // NUM_MAX_NVL_PEERS
    per_token = hidden_bytes + _SOURCE_META_BYTES + _MAX_TOPK * 8 + _MAX_TOPK * 4 + _MAX_SCALES * 4 + 16
    out = 0
    for table in (_DISPATCH_CONFIGS, _COMBINE_CONFIGS):
        recv = _rdma_recv_tokens(_config(table, num_ranks))
        size = channels * rdma * (NUM_MAX_NVL_PEERS * 2 + 2) * 2 * 4 + channels * rdma * recv * per_token * 2
        out = max(out, _align(size, 128))
    return out


def hybridep_nvl_buffer_bytes(hidden: int, tokens_per_rank: int, local_experts: int, ranks_per_domain: int,
                              domains: int) -> int:
    """HybridEP's NVLink-side buffers (intranode.cu, shared dispatch/combine): ``T L N`` rows."""
    rows = _align(tokens_per_rank, 16) * ranks_per_domain * domains
    return rows * (2 * hidden + 4 * local_experts * ranks_per_domain + 4 * (hidden // 128))


def hybridep_rdma_buffer_bytes(hidden: int, tokens_per_rank: int, local_experts: int, ranks_per_domain: int,
                               domains: int) -> int:
    """HybridEP's RDMA-side buffers (internode_doca.cu): 0 inside one NVLink domain."""
    if domains <= 1:
        return 0
    t = _align(tokens_per_rank, 16)
    probs = 4 * local_experts * ranks_per_domain
    scales = 4 * (hidden // 128)
    dispatch = t * (2 * hidden + probs * domains + scales) + t * (domains - 1) * (2 * hidden + probs + scales)
    combine = 2 * t * (domains - 1) * (2 * hidden + probs)
    return dispatch + combine


@dataclass(frozen=True, kw_only=True, slots=True)
class FlexBuffers:
    """What one EP rank's flex-dispatcher buffers take on the device, bytes."""

    backend: str
    """``deepep`` or ``hybridep``."""
    nvl_bytes: float
    """The NVLink buffer (DeepEP: with its barrier slots and 32 MiB workspace)."""
    rdma_bytes: float
    """The RDMA buffer as the device holds it (DeepEP: whole NVSHMEM granules); 0 inside one NVLink domain."""

    @property
    def total_bytes(self) -> float:
        return self.nvl_bytes + self.rdma_bytes


@lru_cache(maxsize=4096)
def flex_buffers(backend: str, hidden: int, group_ranks: int, tokens_per_rank: int, local_experts: int,
                 nvlink_domain_gpus: int) -> FlexBuffers:
    """The buffers of a flex dispatcher group of ``group_ranks`` (expert-TP x EP) ranks."""
    if backend == "deepep":
        hidden_bytes = 2 * hidden  # bf16 activations: hidden x max(element size, 2)
        nvl = deepep_nvl_buffer_bytes(hidden_bytes, group_ranks) + _BARRIER_AND_POINTER_BYTES + NUM_WORKSPACE_BYTES
        rdma = _align(deepep_rdma_buffer_bytes(hidden_bytes, group_ranks), NVSHMEM_GRANULE_BYTES)
        return FlexBuffers(backend=backend, nvl_bytes=float(nvl), rdma_bytes=float(rdma))
    # The group's ranks are consecutive (Megatron's expert order puts expert-TP then EP innermost), so each
    # NVLink domain holds gcd(group, domain) of them (HybridEP asserts the group divides into domains).
    per_domain = math.gcd(group_ranks, max(nvlink_domain_gpus, 1))
    domains = group_ranks // per_domain
    args = (hidden, tokens_per_rank, local_experts, per_domain, domains)
    return FlexBuffers(backend=backend, nvl_bytes=float(hybridep_nvl_buffer_bytes(*args)),
                       rdma_bytes=float(hybridep_rdma_buffer_bytes(*args)))


__all__ = ["DEEPEP_GROUP_SIZES", "FlexBuffers", "deepep_nvl_buffer_bytes", "deepep_rdma_buffer_bytes", "flex_backend",
           "flex_buffers", "flex_group_supported", "hybridep_nvl_buffer_bytes", "hybridep_rdma_buffer_bytes"]
