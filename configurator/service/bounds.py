"""Bounds at the HTTP edge: every number a request carries has a range, and every request a bounded cost.

Why here and not only in the specs: a network client is not a user at a terminal. One ~1 KB request must not
be able to make the server allocate gigabytes (a step simulated per micro-batch, an N x N link matrix built
before it is checked) or raise an overflow deep inside the model. The ranges are generous physical limits
(the largest published training runs are one to two orders of magnitude inside them); the request models in
``app.py`` state them in the OpenAPI schema, and README's "Service" section lists them.
"""

from __future__ import annotations

import math
from typing import Any

from configurator.errors import InputError

MAX_GPUS = 1_048_576
"""2^20 GPUs: ~10x the largest clusters announced (100k-200k GPUs)."""
MAX_NODES = 131_072
MAX_SEQ_LEN = 10_000_000
"""Tokens per sequence: ~10x the longest published training context (1M tokens)."""
MAX_GLOBAL_BATCH = 65_536
"""Sequences per step: 32x Llama 3 405B's 2,048 x 8k and 4x DeepSeek-V3's 15,360 x 4k."""
MAX_MICRO_BATCH = 65_536
MAX_DEGREE = 65_536
"""TP, PP, CP, EP, ETP and DP degrees (each is also checked against the GPU count and the model)."""
MAX_VPP = 1_024
MAX_RECOMPUTE_LAYERS = 100_000
MAX_ESTIMATE_MICROBATCHES = 4_096
"""Micro-batches per pipeline in one ``POST /v1/estimate``: the step is simulated micro-batch by micro-batch,
~1 ms each on one core, so an answer stays within seconds."""
MAX_VERSION = 2**31 - 1
"""Profile versions are INTEGER columns (32-bit in PostgreSQL)."""
MAX_SEED = 2**32 - 1
"""Optuna's samplers take numpy seeds, which must be below 2^32."""

MAX_PROFILE_NODES = 1_024
"""Nodes listed in a measured profile (its ``links`` hold one entry per ordered node pair)."""
MAX_PROFILE_LIST = 100_000
"""Entries in any list of a profile (links, intra_links, collectives, GEMM points)."""
MAX_JSON_DEPTH = 16
GEMM_DIM_MAX = 2**20
GEMM_PEAK_MARGIN = 1.05
"""A measured GEMM may not beat the GPU's dense peak by more than timer noise (5%)."""


KEY_RANGES: dict[str, tuple[float, float]] = {
    "bandwidth_GBps": (1e-3, 1e5),  # 1 MB/s .. 100 TB/s: NVLink5 is 0.9 TB/s per direction
    "latency_s": (0.0, 1.0),
    "gpu_memory_GiB": (1e-3, 1e5),
    "host_memory_GiB": (1e-3, 1e7),
    "host_memory_GiB_per_node": (1e-3, 1e7),
    "host_device_bandwidth_GBps": (1e-3, 1e5),
    "cpu_adam_params_per_s": (1.0, 1e15),
}
"""Physical ranges of the profile's measured numbers (any depth); out of range is a 400 naming the key."""


def _walk(value: Any, where: str, depth: int) -> None:
    """Every number finite and, for the keys of ``KEY_RANGES``, physically possible; containers bounded."""
    if depth > MAX_JSON_DEPTH:
        raise InputError(where, "...", f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(where, value, "must be a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        raise InputError(where, value, "is out of range (|n| < 2^63)")
    if isinstance(value, dict):
        for k, v in value.items():
            bounds = KEY_RANGES.get(k)
            if bounds and isinstance(v, (int, float)) and not isinstance(v, bool) and not bounds[0] <= v <= bounds[1]:
                raise InputError(f"{where}:{k}", v, f"must be in {bounds[0]:g}..{bounds[1]:g}")
            _walk(v, f"{where}:{k}", depth + 1)
    elif isinstance(value, list):
        if len(value) > MAX_PROFILE_LIST:
            raise InputError(where, f"{len(value)} entries", f"must have at most {MAX_PROFILE_LIST}")
        for i, v in enumerate(value):
            _walk(v, f"{where}[{i}]", depth + 1)


def check_profile_size(profile: dict[str, Any]) -> None:
    """Cheap checks before a profile is parsed: sizes, and a links list that matches the node count."""
    _walk(profile, "profile", 0)
    nodes = profile.get("nodes")
    default_nodes = profile.get("default_num_nodes")
    if isinstance(default_nodes, int) and not isinstance(default_nodes, bool) and default_nodes > MAX_NODES:
        raise InputError("profile:default_num_nodes", default_nodes, f"must be at most {MAX_NODES}")
    if isinstance(nodes, list) and len(nodes) > MAX_PROFILE_NODES:
        raise InputError("profile:nodes", f"{len(nodes)} nodes", f"a measured profile lists at most {MAX_PROFILE_NODES}")
    if "links" in profile:
        n = len(nodes) if isinstance(nodes, list) else default_nodes
        if not isinstance(n, int) or isinstance(n, bool) or n > MAX_PROFILE_NODES:
            raise InputError("profile:links", "...", f"a links matrix needs a node count of at most {MAX_PROFILE_NODES}")
        links = profile["links"]
        if not isinstance(links, list) or len(links) != n * (n - 1):
            got = len(links) if isinstance(links, list) else type(links).__name__
            raise InputError("profile:links", f"{got} entries",
                             f"must hold one entry per ordered node pair: {n * (n - 1)} for {n} nodes")


def check_measured_gemm(profile: dict[str, Any], cluster: Any) -> None:
    """Measured GEMM points: positive sizes, and a rate that is positive and within the GPU's dense peak."""
    compute = profile.get("compute")
    if compute is None:
        return
    if not isinstance(compute, dict):
        raise InputError("profile:compute", type(compute).__name__, "must be an object")
    points = compute.get("gemm", [])
    if not isinstance(points, list):
        raise InputError("profile:compute:gemm", type(points).__name__, "must be a list")
    for i, p in enumerate(points):
        where = f"profile:compute:gemm[{i}]"
        if not isinstance(p, dict):
            raise InputError(where, p, "must be an object with precision, m, n, k, tflops")
        for dim in ("m", "n", "k"):
            v = p.get(dim)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= GEMM_DIM_MAX:
                raise InputError(f"{where}:{dim}", v, f"must be a size in 1..{GEMM_DIM_MAX}")
        precision = p.get("precision")
        if not isinstance(precision, str) or not cluster.gpu.supports(precision):
            raise InputError(f"{where}:precision", precision, f"is not a precision {cluster.gpu.key} supports")
        tflops = p.get("tflops")
        peak = cluster.gpu.peak_flops_for(precision) / 1e12
        if isinstance(tflops, bool) or not isinstance(tflops, (int, float)) or not 0 < tflops <= peak * GEMM_PEAK_MARGIN:
            raise InputError(f"{where}:tflops", tflops,
                             f"must be positive and at most the {precision} dense peak ({peak:g} TFLOP/s)")


__all__ = [name for name in dir() if name.startswith(("MAX_", "GEMM_", "check_"))]
