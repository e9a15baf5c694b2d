"""Load presets and profiles from ``profiles/`` (models, GPUs, clusters) and measured profiles.

Loaders are strict: an unknown or missing key is an ``InputError`` naming the file and key, so a
typo in a hand-written profile is caught instead of silently ignored. Units in key names
(``_GBps``, ``_GiB``, ``_TFLOPs``) are converted to SI here, once.

The data directory is found in this order: ``$CONFIGURATOR_PROFILES``, the ``profiles/`` folder
beside the package (a source checkout or editable install), then ``<prefix>/share/configurator``.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from configurator.bounds import (MAX_LINK_BANDWIDTH_GBPS, MAX_LINK_LATENCY_S, MAX_PROFILE_NODES,
                                 require_at_most)
from configurator.errors import InputError
from configurator.hf_config import spec_from_hf_dict
from configurator.safe_files import load_json
from configurator.specs.hardware import ClusterSpec, GPUSpec, LinkSpec, NodeInfo, derived_sfu_exp2_per_s
from configurator.specs.model import ModelSpec

GIB = 2**30
GB = 1e9
TERA = 1e12


def profiles_dir() -> Path:
    env = os.environ.get("CONFIGURATOR_PROFILES")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parent.parent / "profiles",
                   Path(sys.prefix) / "share" / "configurator" / "profiles"]
    for path in candidates:
        if (path / "models").is_dir():
            return path
    raise InputError("profiles", str(candidates[0]), "no profiles directory found (set CONFIGURATOR_PROFILES)")


def _read_json(path: Path, field: str) -> dict[str, Any]:
    data = load_json(path, field)
    if not isinstance(data, dict):
        raise InputError(field, str(path), "must hold a JSON object")
    return data


def _check_keys(data: dict[str, Any], where: str, required: set[str], optional: set[str] = frozenset()) -> None:
    unknown = sorted(set(data) - required - optional)
    if unknown:
        raise InputError(f"{where}:{unknown[0]}", data[unknown[0]], "unknown key")
    missing = sorted(required - set(data))
    if missing:
        raise InputError(f"{where}:{missing[0]}", None, "missing required key")


def _number(data: dict[str, Any], key: str, where: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise InputError(f"{where}:{key}", value, "must be a non-negative finite number")
    return float(value)


# ----- models ---------------------------------------------------------------------------------
_MODEL_FIELDS = set(ModelSpec.__dataclass_fields__)  # type: ignore[attr-defined]


def model_names() -> list[str]:
    return sorted(p.stem for p in (profiles_dir() / "models").glob("*.json"))


@lru_cache(maxsize=None)
def _preset_model(name: str) -> tuple[ModelSpec, dict[str, Any], str]:
    path = profiles_dir() / "models" / f"{name}.json"
    data = _read_json(path, "model")
    where = f"profiles/models/{name}.json"
    _check_keys(data, where, {"name", "num_layers", "hidden_size", "ffn_hidden_size",
                              "num_attention_heads", "num_kv_heads", "vocab_size", "mlp", "attention",
                              "source", "published"}, _MODEL_FIELDS)
    fields = {k: v for k, v in data.items() if k not in ("source", "published")}
    try:
        spec = ModelSpec(**fields)
    except InputError as exc:
        raise InputError(f"{where}:{exc.field}", exc.value, exc.problem) from None
    return spec, dict(data["published"]), str(data["source"])


def load_model(model: str) -> ModelSpec:
    """A preset name or a path to a Hugging Face config.json."""
    if model in model_names():
        return _preset_model(model)[0]
    path = Path(model)
    if path.suffix == ".json" or path.exists() or os.sep in model:
        if path.is_dir():  # a checkpoint folder: its config.json
            if not (path / "config.json").exists():
                raise InputError("model", model, "folder holds no config.json")
            path = path / "config.json"
        cfg = load_json(path, "model")
        if not isinstance(cfg, dict):
            raise InputError("model", str(path), "must hold a JSON object")
        return spec_from_hf_dict(cfg, name=str(path))
    raise InputError("model", model, f"unknown preset (known: {', '.join(model_names())}; or a config.json path)")


def model_published(name: str) -> tuple[dict[str, Any], str]:
    """Published parameter totals and the source of a preset (for tests and `models`)."""
    _, published, source = _preset_model(name)
    return published, source


# ----- GPUs: presets, inline specs in a cluster profile, --gpu-spec files -------------------------
_GPU_KEYS = {"key", "name", "family", "memory_GiB", "hbm_bandwidth_TBps", "peak_dense_TFLOPs",
             "nvlink_bandwidth_GBps", "pcie_host_bandwidth_GBps", "tdp_W", "source"}
_GPU_OPTIONAL_KEYS = {"sfu_exp2_Tps", "sustained_matmul_ratio"}
"""``sfu_exp2_Tps``: peak exponentials (MUFU.EX2) per second, in 1e12/s; absent = derived from the 16-bit
peak by the architecture's SFU-to-tensor-core ratio (specs/hardware.py SFU_EXP2_PER_TENSOR_FLOP).
``sustained_matmul_ratio``: share (0, 1] of the rated tensor-core rate that GEMMs sustain relative to the
family's reference part (GPUSpec.sustained_matmul_ratio); absent = 1.0."""
SFU_EXP2_BOUNDS_Tps = (0.1, 100.0)
"""T4's ~1 to a few times Blackwell Ultra's ~10 T exponentials/s."""
GPU_BOUNDS: dict[str, tuple[float, float]] = {
    "memory_GiB": (1.0, 1024.0),
    "hbm_bandwidth_TBps": (0.05, 50.0),
    "nvlink_bandwidth_GBps": (0.0, 10_000.0),
    "pcie_host_bandwidth_GBps": (1.0, 1_000.0),
    "tdp_W": (10.0, 5_000.0),
}
"""Plausible range of each GPU figure in the file's units (inclusive): T4's 0.32 TB/s GDDR6 and 15 GiB
to a rack-scale part's 1 TiB; 0 NVLink means PCIe only (L40S, T4)."""
PEAK_BOUNDS_TFLOPs: dict[str, tuple[float, float]] = {
    "bf16": (1.0, 10_000.0), "fp16": (1.0, 10_000.0), "fp8": (1.0, 20_000.0), "fp4": (1.0, 40_000.0)}
"""Dense peak per precision (T4's 65 fp16 to B300's ~15,000 fp4, with headroom)."""
_GPU_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def gpu_names() -> list[str]:
    return sorted(p.stem for p in (profiles_dir() / "gpus").glob("*.json"))


@lru_cache(maxsize=None)
def gpu_families() -> dict[str, dict[str, Any]]:
    """Architecture -> vendor, the family whose constants it uses, and why (profiles/gpu_families.json)."""
    data = _read_json(profiles_dir() / "gpu_families.json", "gpu_families")
    return dict(data["architectures"])


def _bounded(data: dict[str, Any], key: str, where: str, lo: float, hi: float) -> float:
    """A finite number in [lo, hi] (JSON's NaN/Infinity and booleans are rejected)."""
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}:{key}", value, "must be a finite number")
    if not lo <= value <= hi:
        raise InputError(f"{where}:{key}", value, f"must be between {lo:g} and {hi:g}")
    return float(value)


def _peak_flops(peaks: Any, where: str) -> tuple[tuple[str, float], ...]:
    """Dense TFLOP/s per precision -> FLOP/s pairs; null or absent = the GPU does not run it."""
    field = f"{where}:peak_dense_TFLOPs"
    if not isinstance(peaks, dict):
        raise InputError(field, peaks, "must be an object of precision -> TFLOP/s (null = not supported)")
    unknown = sorted(set(peaks) - set(PEAK_BOUNDS_TFLOPs))
    if unknown:
        raise InputError(f"{field}:{unknown[0]}", peaks[unknown[0]],
                         f"unknown precision (known: {', '.join(PEAK_BOUNDS_TFLOPs)})")
    given = {p: _bounded(peaks, p, field, *PEAK_BOUNDS_TFLOPs[p]) for p in PEAK_BOUNDS_TFLOPs
             if peaks.get(p) is not None}
    if "bf16" not in given and "fp16" not in given:
        raise InputError(field, peaks, "must give bf16 or fp16 (the 16-bit GEMMs every plan runs)")
    half = max(given.get("bf16", 0.0), given.get("fp16", 0.0))
    if "fp8" in given and given["fp8"] < half:
        raise InputError(f"{field}:fp8", given["fp8"], f"must be >= the 16-bit peak {half:g} (fp8 runs at least as fast)")
    if "fp4" in given and given["fp4"] < given.get("fp8", half):
        raise InputError(f"{field}:fp4", given["fp4"], "must be >= the fp8 and 16-bit peaks")
    return tuple((p, v * TERA) for p, v in given.items())


def _sustained_ratio(data: dict[str, Any], where: str) -> float:
    """``sustained_matmul_ratio``: a finite number in (0, 1] (a GPU cannot sustain more than its rating)."""
    value = data["sustained_matmul_ratio"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}:sustained_matmul_ratio", value, "must be a finite number")
    if not 0 < value <= 1:
        raise InputError(f"{where}:sustained_matmul_ratio", value,
                         "must be in (0, 1] (the share of the rated tensor-core rate GEMMs sustain)")
    return float(value)


def gpu_from_dict(data: Any, where: str) -> GPUSpec:
    """A GPU spec (the schema of profiles/gpus/*.json), strictly checked: every key present, no
    unknown key, finite figures in plausible ranges, a known architecture in ``family``."""
    if not isinstance(data, dict):
        raise InputError(where, data, "must be a GPU key or an object with the keys of profiles/gpus/*.json")
    _check_keys(data, where, _GPU_KEYS, _GPU_OPTIONAL_KEYS)
    key = data["key"]
    if not isinstance(key, str) or not 0 < len(key) <= 64 or not set(key) <= _GPU_KEY_CHARS:
        raise InputError(f"{where}:key", key, "must be 1-64 characters of letters, digits, '.', '_', '-'")
    for text in ("name", "source"):
        if not isinstance(data[text], str) or not data[text].strip():
            raise InputError(f"{where}:{text}", data[text], "must be a non-empty string")
    families = gpu_families()
    arch = data["family"]
    if arch not in families:
        raise InputError(f"{where}:family", arch, f"unknown architecture (known: {', '.join(sorted(families))})")
    entry = families[arch]
    figures = {k: _bounded(data, k, where, *bounds) for k, bounds in GPU_BOUNDS.items()}
    exp2_per_s = _bounded(data, "sfu_exp2_Tps", where, *SFU_EXP2_BOUNDS_Tps) * TERA if "sfu_exp2_Tps" in data else None
    sustained = _sustained_ratio(data, where) if "sustained_matmul_ratio" in data else 1.0
    try:
        gpu = GPUSpec(
            key=key, name=data["name"], family=entry["constants_from"], architecture=arch, vendor=entry["vendor"],
            fallback_reason="" if entry["measured_runs"] else entry["reason"],
            memory_bytes=int(figures["memory_GiB"] * GIB),
            hbm_bandwidth_Bps=figures["hbm_bandwidth_TBps"] * TERA,
            peak_flops=_peak_flops(data["peak_dense_TFLOPs"], where), sfu_exp2_per_s=exp2_per_s or 0.0,
            nvlink_bandwidth_Bps=figures["nvlink_bandwidth_GBps"] * GB,
            pcie_host_bandwidth_Bps=figures["pcie_host_bandwidth_GBps"] * GB,
            tdp_W=figures["tdp_W"], source=data["source"], sustained_matmul_ratio=sustained)
    except InputError as exc:
        raise InputError(f"{where}:{exc.field}", exc.value, exc.problem) from None
    if exp2_per_s is None:  # not given: derived from the 16-bit peak by the architecture's SFU ratio
        gpu = replace(gpu, sfu_exp2_per_s=derived_sfu_exp2_per_s(arch, gpu.peak_flops_for(gpu.half_precision)))
    return gpu


@lru_cache(maxsize=None)
def load_gpu(key: str) -> GPUSpec:
    if key not in gpu_names():
        raise InputError("gpu", key, f"unknown GPU (known: {', '.join(gpu_names())}; or an inline GPU object)")
    where = f"profiles/gpus/{key}.json"
    gpu = gpu_from_dict(_read_json(profiles_dir() / "gpus" / f"{key}.json", "gpu"), where)
    if gpu.key != key:
        raise InputError(f"{where}:key", gpu.key, f"must equal the file name {key}")
    return gpu


def load_gpu_spec(path: str | Path) -> GPUSpec:
    """A user's GPU spec file (``--gpu-spec FILE``): the schema of profiles/gpus/*.json."""
    return gpu_from_dict(_read_json(Path(path), "gpu_spec"), str(path))


def cluster_gpu(value: Any, where: str) -> GPUSpec:
    """A cluster profile's ``gpu``: a preset key or an inline GPU spec object."""
    if isinstance(value, str):
        return load_gpu(value)
    return gpu_from_dict(value, f"{where}:gpu")


_GPU_MEASURED_KEYS = {"name", "memory_GiB", "gemm", "hbm_copy_TBps"}
_GPU_MEASURED_OPTIONAL = {"backend", "copy_size_bytes", "repeat", "device_count"}
MEASURED_OVER_PEAK = 1.1
"""A measured GEMM or copy may exceed the datasheet figure by clock boost and timer noise, not more:
above 1.1 x the profile's GPU is not the GPU that was measured."""


def check_gpu_measured(data: Any, gpu: GPUSpec, where: str) -> dict[str, Any]:
    """A probe's measured GPU section, strictly checked against the profile's (datasheet) GPU."""
    where = f"{where}:gpu_measured"
    if not isinstance(data, dict):
        raise InputError(where, data, "must be an object (cluster_probes writes it)")
    _check_keys(data, where, _GPU_MEASURED_KEYS, _GPU_MEASURED_OPTIONAL)
    if not isinstance(data["name"], str) or not data["name"]:
        raise InputError(f"{where}:name", data["name"], "must be the driver's device name")
    _bounded(data, "memory_GiB", where, *GPU_BOUNDS["memory_GiB"])
    hbm = _bounded(data, "hbm_copy_TBps", where, 1e-9, GPU_BOUNDS["hbm_bandwidth_TBps"][1])
    if hbm * TERA > MEASURED_OVER_PEAK * gpu.hbm_bandwidth_Bps:
        raise InputError(f"{where}:hbm_copy_TBps", hbm,
                         f"exceeds {gpu.key}'s datasheet {gpu.hbm_bandwidth_Bps / TERA:g} TB/s: not the measured GPU")
    if not isinstance(data["gemm"], list):
        raise InputError(f"{where}:gemm", data["gemm"], "must be a list of {precision, m, n, k, tflops}")
    for i, point in enumerate(data["gemm"]):
        w = f"{where}:gemm[{i}]"
        if not isinstance(point, dict):
            raise InputError(w, point, "must be an object")
        _check_keys(point, w, {"precision", "m", "n", "k", "tflops"})
        if point["precision"] not in PEAK_BOUNDS_TFLOPs:
            raise InputError(f"{w}:precision", point["precision"], f"must be one of {', '.join(PEAK_BOUNDS_TFLOPs)}")
        for dim in ("m", "n", "k"):
            if isinstance(point[dim], bool) or not isinstance(point[dim], int) or point[dim] <= 0:
                raise InputError(f"{w}:{dim}", point[dim], "must be a positive integer")
        tflops = _bounded(point, "tflops", w, 1e-6, PEAK_BOUNDS_TFLOPs[point["precision"]][1])
        if gpu.supports(point["precision"]) and \
                tflops * TERA > MEASURED_OVER_PEAK * gpu.peak_flops_for(point["precision"]):
            raise InputError(f"{w}:tflops", tflops, f"exceeds {gpu.key}'s datasheet {point['precision']} peak "
                             f"{gpu.peak_flops_for(point['precision']) / TERA:g}: not the measured GPU")
    return data


# ----- clusters -------------------------------------------------------------------------------
_CLUSTER_KEYS = {"name", "description", "gpu", "gpus_per_node", "nvlink_domain_gpus", "intra_domain_link",
                 "scale_out_link", "host_memory_GiB_per_node", "host_cpu_cores_per_node",
                 "default_num_nodes", "source"}
_MEASURED_KEYS = {"nodes", "links", "intra_links", "collectives", "compute", "provenance", "warnings",
                  "host_device_bandwidth_GBps", "cpu_adam_params_per_s", "gpu_measured", "host_dispatch_ratio"}
"""Optional keys: a probe's measurements, and ``host_dispatch_ratio`` (``ClusterSpec``; 1.0 where absent)."""


def cluster_names() -> list[str]:
    return sorted(p.stem for p in (profiles_dir() / "clusters").glob("*.json"))


def _link(obj: Any, where: str) -> LinkSpec:
    if not isinstance(obj, dict):
        raise InputError(where, obj, "must be an object with bandwidth_GBps and latency_s")
    _check_keys(obj, where, {"bandwidth_GBps", "latency_s"}, {"src_node", "dst_node", "samples",
                                                             "src_gpu", "dst_gpu", "node"})
    bw = _number(obj, "bandwidth_GBps", where)
    if bw <= 0:
        raise InputError(f"{where}:bandwidth_GBps", bw, "must be positive")
    require_at_most(f"{where}:bandwidth_GBps", bw, MAX_LINK_BANDWIDTH_GBPS, "GB/s (a unit mistake?)")
    latency = _number(obj, "latency_s", where)
    require_at_most(f"{where}:latency_s", latency, MAX_LINK_LATENCY_S, "seconds")
    return LinkSpec(bandwidth_Bps=bw * GB, latency_s=latency)


def cluster_from_dict(data: dict[str, Any], where: str) -> ClusterSpec:
    """A preset or a measured profile (presets and probes share one schema)."""
    _check_keys(data, where, _CLUSTER_KEYS, _MEASURED_KEYS)
    for key in ("gpus_per_node", "nvlink_domain_gpus", "default_num_nodes", "host_cpu_cores_per_node"):
        if isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] <= 0:
            raise InputError(f"{where}:{key}", data[key], "must be a positive integer")
    gpu = cluster_gpu(data["gpu"], where)
    num_nodes = data["default_num_nodes"]
    nodes: tuple[NodeInfo, ...] = ()
    if "nodes" in data:
        raw_nodes = data["nodes"]
        if not isinstance(raw_nodes, list) or not raw_nodes:
            raise InputError(f"{where}:nodes", raw_nodes, "must be a non-empty list")
        require_at_most(f"{where}:nodes", len(raw_nodes), MAX_PROFILE_NODES, "nodes in a measured profile")
        parsed = []
        for i, n in enumerate(raw_nodes):
            w = f"{where}:nodes[{i}]"
            if not isinstance(n, dict):
                raise InputError(w, n, "must be an object")
            _check_keys(n, w, {"index", "host", "num_gpus", "gpu", "gpu_memory_GiB", "host_memory_GiB"})
            if n["index"] != i:
                raise InputError(f"{w}:index", n["index"], f"must be {i} (nodes listed in index order)")
            if n["num_gpus"] != data["gpus_per_node"]:
                raise InputError(f"{w}:num_gpus", n["num_gpus"],
                                 f"must equal gpus_per_node={data['gpus_per_node']} (nodes must be alike)")
            parsed.append(NodeInfo(index=i, host=str(n["host"]), num_gpus=n["num_gpus"],
                                   gpu_memory_bytes=int(_number(n, "gpu_memory_GiB", w) * GIB),
                                   host_memory_bytes=int(_number(n, "host_memory_GiB", w) * GIB)))
        nodes = tuple(parsed)
        num_nodes = len(nodes)
    node_links = None
    if "links" in data:
        # Sizes first: nothing of num_nodes^2 is built before the list is known to hold every pair once.
        require_at_most(f"{where}:default_num_nodes" if "nodes" not in data else f"{where}:nodes", num_nodes,
                        MAX_PROFILE_NODES, "nodes in a measured profile")
        if not isinstance(data["links"], list):
            raise InputError(f"{where}:links", f"{type(data['links']).__name__}", "must be a list")
        pairs = num_nodes * (num_nodes - 1)
        if len(data["links"]) != pairs:
            raise InputError(f"{where}:links", f"{len(data['links'])} entries",
                             f"must list every ordered node pair once ({pairs:,} for {num_nodes} nodes)")
        matrix: list[list[LinkSpec | None]] = [[None] * num_nodes for _ in range(num_nodes)]
        for k, entry in enumerate(data["links"]):
            w = f"{where}:links[{k}]"
            link = _link(entry, w)
            src, dst = entry.get("src_node"), entry.get("dst_node")
            if not (isinstance(src, int) and isinstance(dst, int) and 0 <= src < num_nodes
                    and 0 <= dst < num_nodes and src != dst):
                raise InputError(w, (src, dst), f"src_node/dst_node must be distinct nodes in 0..{num_nodes - 1}")
            matrix[src][dst] = link
        missing = [(i, j) for i in range(num_nodes) for j in range(num_nodes) if i != j and matrix[i][j] is None]
        if missing:
            raise InputError(f"{where}:links", f"{missing[0][0]}->{missing[0][1]}",
                             "missing: a measured matrix needs every ordered node pair")
        node_links = tuple(tuple(row) for row in matrix)
    warnings = data.get("warnings", [])
    if not isinstance(warnings, list):
        raise InputError(f"{where}:warnings", warnings, "must be a list of strings")
    measured = tuple((k, data[k]) for k in ("intra_links", "collectives", "compute", "provenance",
                                              "host_device_bandwidth_GBps", "cpu_adam_params_per_s")
                     if k in data)
    if "gpu_measured" in data:
        measured += (("gpu_measured", check_gpu_measured(data["gpu_measured"], gpu, where)),)
    try:
        return ClusterSpec(
            name=str(data["name"]), description=str(data["description"]), gpu=gpu, num_nodes=num_nodes,
            gpus_per_node=data["gpus_per_node"], nvlink_domain_gpus=data["nvlink_domain_gpus"],
            intra_domain_link=_link(data["intra_domain_link"], f"{where}:intra_domain_link"),
            scale_out_link=_link(data["scale_out_link"], f"{where}:scale_out_link"),
            host_memory_bytes_per_node=int(_number(data, "host_memory_GiB_per_node", where) * GIB),
            host_cpu_cores_per_node=data["host_cpu_cores_per_node"], source=str(data["source"]),
            node_links=node_links, nodes=nodes, warnings=tuple(str(w) for w in warnings),
            measured=measured, host_dispatch_ratio=data.get("host_dispatch_ratio", 1.0))
    except InputError as exc:
        raise InputError(f"{where}:{exc.field}", exc.value, exc.problem) from None


def load_cluster(cluster: str, *, num_gpus: int | None = None, nodes: int | None = None,
                 gpu_spec: str | Path | None = None) -> ClusterSpec:
    """A preset name or a profile JSON path, sized by ``num_gpus`` or ``nodes``; ``gpu_spec`` (a GPU
    spec file) replaces the profile's GPU."""
    if cluster in cluster_names():
        spec = cluster_from_dict(_read_json(profiles_dir() / "clusters" / f"{cluster}.json", "cluster"),
                                 f"profiles/clusters/{cluster}.json")
    else:
        path = Path(cluster)
        if not (path.suffix == ".json" or path.exists() or os.sep in cluster):
            raise InputError("cluster", cluster,
                             f"unknown preset (known: {', '.join(cluster_names())}; or a profile JSON path)")
        spec = cluster_from_dict(_read_json(path, "cluster"), str(path))
    if gpu_spec is not None:
        spec = with_gpu_spec(spec, gpu_spec)
    return spec.sized(num_gpus=num_gpus, nodes=nodes)


def with_gpu_spec(spec: ClusterSpec, gpu_spec: str | Path) -> ClusterSpec:
    """The cluster with the GPU of a ``--gpu-spec`` file (a measured GPU section is re-checked)."""
    gpu = load_gpu_spec(gpu_spec)
    measured = dict(spec.measured)
    if "gpu_measured" in measured:
        check_gpu_measured(measured["gpu_measured"], gpu, str(gpu_spec))
    return replace(spec, gpu=gpu)
