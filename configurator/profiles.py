"""Load presets and profiles from ``profiles/`` (models, GPUs, clusters) and measured profiles.

Loaders are strict: an unknown or missing key is an ``InputError`` naming the file and key, so a
typo in a hand-written profile is caught instead of silently ignored. Units in key names
(``_GBps``, ``_GiB``, ``_TFLOPs``) are converted to SI here, once.

The data directory is found in this order: ``$CONFIGURATOR_PROFILES``, the ``profiles/`` folder
beside the package (a source checkout or editable install), then ``<prefix>/share/configurator``.
"""

from __future__ import annotations

import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from configurator.bounds import (MAX_LINK_BANDWIDTH_GBPS, MAX_LINK_LATENCY_S, MAX_PROFILE_NODES,
                                 require_at_most)
from configurator.errors import InputError
from configurator.hf_config import spec_from_hf_dict
from configurator.safe_files import load_json
from configurator.specs.hardware import ClusterSpec, GPUSpec, LinkSpec, NodeInfo
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


# ----- GPUs -----------------------------------------------------------------------------------
_GPU_KEYS = {"key", "name", "family", "memory_GiB", "hbm_bandwidth_TBps", "peak_dense_TFLOPs",
             "nvlink_bandwidth_GBps", "pcie_host_bandwidth_GBps", "tdp_W", "source"}


def gpu_names() -> list[str]:
    return sorted(p.stem for p in (profiles_dir() / "gpus").glob("*.json"))


@lru_cache(maxsize=None)
def load_gpu(key: str) -> GPUSpec:
    if key not in gpu_names():
        raise InputError("gpu", key, f"unknown GPU (known: {', '.join(gpu_names())})")
    where = f"profiles/gpus/{key}.json"
    data = _read_json(profiles_dir() / "gpus" / f"{key}.json", "gpu")
    _check_keys(data, where, _GPU_KEYS)
    peaks = data["peak_dense_TFLOPs"]
    if not isinstance(peaks, dict):
        raise InputError(f"{where}:peak_dense_TFLOPs", peaks, "must be an object of precision -> TFLOP/s")
    peak_flops = tuple((p, float(v) * TERA) for p, v in peaks.items() if v is not None)
    try:
        return GPUSpec(
            key=data["key"], name=data["name"], family=data["family"],
            memory_bytes=int(_number(data, "memory_GiB", where) * GIB),
            hbm_bandwidth_Bps=_number(data, "hbm_bandwidth_TBps", where) * TERA,
            peak_flops=peak_flops,
            nvlink_bandwidth_Bps=_number(data, "nvlink_bandwidth_GBps", where) * GB,
            pcie_host_bandwidth_Bps=_number(data, "pcie_host_bandwidth_GBps", where) * GB,
            tdp_W=_number(data, "tdp_W", where), source=str(data["source"]))
    except InputError as exc:
        raise InputError(f"{where}:{exc.field}", exc.value, exc.problem) from None


# ----- clusters -------------------------------------------------------------------------------
_CLUSTER_KEYS = {"name", "description", "gpu", "gpus_per_node", "nvlink_domain_gpus", "intra_domain_link",
                 "scale_out_link", "host_memory_GiB_per_node", "host_cpu_cores_per_node",
                 "default_num_nodes", "source"}
_MEASURED_KEYS = {"nodes", "links", "intra_links", "collectives", "compute", "provenance", "warnings",
                  "host_device_bandwidth_GBps", "cpu_adam_params_per_s"}


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
    gpu = load_gpu(data["gpu"]) if isinstance(data["gpu"], str) else None
    if gpu is None:
        raise InputError(f"{where}:gpu", data["gpu"], "must be a GPU key")
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
    try:
        return ClusterSpec(
            name=str(data["name"]), description=str(data["description"]), gpu=gpu, num_nodes=num_nodes,
            gpus_per_node=data["gpus_per_node"], nvlink_domain_gpus=data["nvlink_domain_gpus"],
            intra_domain_link=_link(data["intra_domain_link"], f"{where}:intra_domain_link"),
            scale_out_link=_link(data["scale_out_link"], f"{where}:scale_out_link"),
            host_memory_bytes_per_node=int(_number(data, "host_memory_GiB_per_node", where) * GIB),
            host_cpu_cores_per_node=data["host_cpu_cores_per_node"], source=str(data["source"]),
            node_links=node_links, nodes=nodes, warnings=tuple(str(w) for w in warnings),
            measured=measured)
    except InputError as exc:
        raise InputError(f"{where}:{exc.field}", exc.value, exc.problem) from None


def load_cluster(cluster: str, *, num_gpus: int | None = None, nodes: int | None = None) -> ClusterSpec:
    """A preset name or a profile JSON path, sized by ``num_gpus`` or ``nodes``."""
    if cluster in cluster_names():
        spec = cluster_from_dict(_read_json(profiles_dir() / "clusters" / f"{cluster}.json", "cluster"),
                                 f"profiles/clusters/{cluster}.json")
    else:
        path = Path(cluster)
        if not (path.suffix == ".json" or path.exists() or os.sep in cluster):
            raise InputError("cluster", cluster,
                             f"unknown preset (known: {', '.join(cluster_names())}; or a profile JSON path)")
        spec = cluster_from_dict(_read_json(path, "cluster"), str(path))
    return spec.sized(num_gpus=num_gpus, nodes=nodes)
