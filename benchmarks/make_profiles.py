"""Write the measured-style cluster profiles the benchmark scenarios use (seeded, reproducible).

Run: ``python benchmarks/make_profiles.py`` (rewrites benchmarks/profiles/*.json). They follow the probe
schema (INTERFACE.md "Probes and measured profiles") but are constructed, not measured: DGX H100 nodes
whose scale-out links run at 48 GB/s payload, with degraded links as named below.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "profiles"
HEALTHY_GBPS = 48.0


def profile(name: str, description: str, nodes: int, slow: dict[tuple[int, int], float]) -> dict:
    links = []
    for a in range(nodes):
        for b in range(nodes):
            if a != b:
                factor = slow.get((min(a, b), max(a, b)), 1.0)
                links.append({"src_node": a, "dst_node": b, "bandwidth_GBps": round(HEALTHY_GBPS * factor, 3),
                              "latency_s": 6e-06, "samples": 5})
    warnings = sorted({f"link node{a:02d}<->node{b:02d} at {HEALTHY_GBPS * f:.1f} GB/s, {f:.0%} of the median"
                       for (a, b), f in slow.items()})
    return {
        "name": name, "description": description, "gpu": "h100-80gb", "gpus_per_node": 8, "nvlink_domain_gpus": 8,
        "intra_domain_link": {"bandwidth_GBps": 450, "latency_s": 3e-06},
        "scale_out_link": {"bandwidth_GBps": HEALTHY_GBPS, "latency_s": 6e-06},
        "host_memory_GiB_per_node": 2048, "host_cpu_cores_per_node": 112, "default_num_nodes": nodes,
        "source": "constructed by benchmarks/make_profiles.py (seeded), in the measured-profile schema",
        "nodes": [{"index": i, "host": f"node{i:02d}", "num_gpus": 8, "gpu": "h100-80gb", "gpu_memory_GiB": 79.6,
                   "host_memory_GiB": 2015.0} for i in range(nodes)],
        "links": links, "warnings": warnings,
        "provenance": {"tool": "benchmarks/make_profiles.py", "seeded": True},
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = random.Random(2026)
    pairs = [(a, b) for a in range(16) for b in range(a + 1, 16)]
    slow_pairs = {p: 0.25 for p in rng.sample(pairs, 12)}  # 10% of the 120 node pairs at 1/4 bandwidth
    one_node = {(min(5, b), max(5, b)): 0.3 for b in range(8) if b != 5}  # node 5's NIC at 30%
    for name, desc, nodes, slow in (
            ("slow-pairs-16-nodes", "16 DGX H100 nodes, 12 of 120 node pairs (10%) at 1/4 bandwidth", 16, slow_pairs),
            ("slow-node-8-nodes", "8 DGX H100 nodes, node 5's links at 30% bandwidth (a degraded NIC)", 8, one_node)):
        (OUT / f"{name}.json").write_text(json.dumps(profile(name, desc, nodes, slow), indent=1) + "\n")


if __name__ == "__main__":
    main()
