"""Cluster probes, run for real: torch.distributed across real processes, and an emulated cluster of
network namespaces whose links are shaped to known rates (cluster_probes/testbed.sh, needs root).

Without root the emulated-cluster tests fail loudly; set CONFIGURATOR_NO_NETNS=1 to skip them on a
machine that cannot create namespaces (CI runs as root and runs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.search.placement import place
from configurator.search.space import SearchContext

pytest.importorskip("torch", reason="the probes need torch: pip install -e '.[probe]'")

from cluster_probes.measure import fit_alpha_beta, round_robin  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TESTBED = REPO / "cluster_probes" / "testbed.sh"
HEADER_FACTOR = 0.956
"""TCP/IP/Ethernet payload share of the shaped line rate (1448 of 1514 bytes per full frame)."""


@pytest.mark.parametrize("n", range(2, 10))
def test_round_robin_covers_every_pair_once_in_disjoint_rounds(n: int) -> None:
    rounds = round_robin(n)
    seen = [pair for r in rounds for pair in r]
    assert sorted(seen) == list(combinations(range(n), 2))
    for r in rounds:
        nodes = [x for pair in r for x in pair]
        assert len(nodes) == len(set(nodes))
    assert len(rounds) == (n - 1 if n % 2 == 0 else n)


def test_alpha_beta_fit_recovers_bandwidth_and_latency() -> None:
    sizes = [2**20, 2**22, 2**24]
    times = [5e-5 + s / 2.5e9 for s in sizes]
    bandwidth, latency = fit_alpha_beta(sizes, times)
    assert bandwidth == pytest.approx(2.5e9, rel=1e-6) and latency == pytest.approx(5e-5, rel=1e-6)


def _torchrun(n: int, out: Path, extra: list[str], env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    port = str(29500 + os.getpid() % 400)
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(n), "--node-rank", str(i),
               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port,
               "-m", "cluster_probes", "--out", str(out), *extra]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, **(env or {})),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def test_probe_across_real_processes_writes_a_loadable_profile(tmp_path) -> None:
    out = tmp_path / "local.json"
    procs = _torchrun(3, out, ["--sizes-mib", "1,2", "--repeat", "1", "--gpu", "h100-80gb", "--timeout", "60"])
    logs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-2000:]
    data = json.loads(out.read_text())
    assert len(data["links"]) == 6 and {(x["src_node"], x["dst_node"]) for x in data["links"]} == \
        {(a, b) for a in range(3) for b in range(3) if a != b}
    assert {c["op"] for c in data["collectives"]} >= {"all_reduce", "all_gather"}
    assert data["cpu_adam_params_per_s"] > 0 and data["provenance"]["backend"] == "gloo"
    cpus = data["provenance"]["host_cpus"]  # each host's CPU, named from /proc/cpuinfo
    assert cpus and all(isinstance(c, str) and c for c in cpus)
    assert ("host_dispatch_ratio" in data) == all(c.endswith("(Grace)") for c in cpus)
    cluster = load_cluster(str(out))  # the planner reads what the probe wrote
    assert cluster.num_nodes == 3 and cluster.node_links is not None


@pytest.fixture(scope="module")
def root_netns() -> None:
    if os.environ.get("CONFIGURATOR_NO_NETNS") == "1":
        pytest.skip("CONFIGURATOR_NO_NETNS=1: emulated-cluster tests skipped on request")
    missing = [tool for tool in ("ip", "tc", "unshare") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.fail("the emulated-cluster probe test needs root and iproute2/util-linux "
                    f"(euid {os.geteuid()}, missing {missing}); set CONFIGURATOR_NO_NETNS=1 to skip it explicitly")


def _testbed(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(["bash", str(TESTBED), *args], capture_output=True, text=True, timeout=timeout, env=full_env)


RATE_MBIT = 1000
SLOW = {(1, 2): 250, (2, 1): 250, (0, 3): 700}


def _cpu_ticks() -> tuple[int, int]:
    """(all ticks, steal ticks) from /proc/stat's first line: a VM's stolen CPU shows as steal."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), (fields[7] if len(fields) > 7 else 0)


STARVED_STEAL = 0.05
"""CPU steal (the share of this VM's CPU time its host gave to others) above which a probe cannot check link rates:
misses were seen at 6%, 13% and 17% steal (CI, 2026-12-01: every link at 0.6-0.9 of its rate, both probes), clean
probes at 0-2%."""


def _probe_emulated_cluster(prefix: str, out: Path) -> tuple[dict, dict[tuple[int, int], float], float, str]:
    """One probe over the shaped 4-host testbed: (profile, measured/true rate per link, CPU steal, machine state)."""
    ticks0, steal0 = _cpu_ticks()
    start = time.perf_counter()
    try:
        up = _testbed("up", prefix, "4", str(RATE_MBIT), *(f"{a}:{b}:{r}" for (a, b), r in SLOW.items()))
        assert up.returncode == 0, up.stderr[-2000:]
        # Links only: the collectives and compute phases (checked by the unshaped probe above) would take half
        # of each ~45 s probe here, most of it all-reduces paced by the shaped links.
        run = _testbed("run", prefix, "4", str(out), "--sizes-mib", "1,4,16", "--repeat", "5", "--gpu", "h100-80gb",
                       "--skip", "collectives,compute")
        logs = "\n".join(Path(f"/tmp/{prefix}-probe-{i}.log").read_text()[-1500:] for i in range(4))
        assert run.returncode == 0, logs
    finally:
        _testbed("down", prefix, "4")
    ticks1, steal1 = _cpu_ticks()
    data = json.loads(out.read_text())
    ratios = {}
    for link in data["links"]:
        rate = SLOW.get((link["src_node"], link["dst_node"]), RATE_MBIT)
        truth_GBps = rate * 1e6 / 8 * HEADER_FACTOR / 1e9
        ratios[(link["src_node"], link["dst_node"])] = link["bandwidth_GBps"] / truth_GBps
    steal = (steal1 - steal0) / max(1, ticks1 - ticks0)
    state = (f"{time.perf_counter() - start:.1f} s, CPU steal {steal:.0%}, "
             f"load {Path('/proc/loadavg').read_text().split()[0]}")
    return data, ratios, steal, state


def test_emulated_cluster_links_are_recovered_and_slow_ones_named(root_netns, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every shaped link is recovered within 10% of its rate (after the header factor), the slow ones are named, and
    the planner keeps the slow pair off the pipeline's stage boundaries.

    Up to three probes: the first whose links all land within 10% is checked. A probe on a starved host measures the
    host, not the links (``STARVED_STEAL``), so where every probe missed under that much steal, the rates cannot be
    checked on this machine and the test says so and skips, after the checks that do not depend on them (12 links,
    the host names, the fake host memory). A miss with the host not starved fails: the probe is wrong. A probe wrong
    by mechanism (the header factor mutated to 0.8) misses every time on a healthy host and fails.
    """
    prefix = f"cfgt{os.getpid() % 1000}"
    misses, steals = [], []
    for attempt in range(3):
        out = tmp_path / f"emulated{attempt}.json"
        data, ratios, steal, state = _probe_emulated_cluster(prefix, out)
        assert len(ratios) == 12
        assert [n["host"] for n in data["nodes"]] == ["node0", "node1", "node2", "node3"]
        assert [n["host_memory_GiB"] for n in data["nodes"]] == [16.0, 17.0, 18.0, 19.0]  # the fake /proc/meminfo
        off = {k: round(v, 3) for k, v in ratios.items() if not 0.9 <= v <= 1.1}
        if not off:
            break
        misses.append(f"attempt {attempt + 1} ({state}): {off}")
        steals.append(steal)
        print(f"emulated-cluster probe missed: {misses[-1]}")
    if off and min(steals) >= STARVED_STEAL:
        pytest.skip(f"the host was starved in every probe (CPU steal {', '.join(f'{x:.0%}' for x in steals)} >= "
                    f"{STARVED_STEAL:.0%}): link rates cannot be checked on this machine now; {misses}")
    assert not off, f"links off by more than 10% after the header factor, the host not starved: {misses}"
    slow_warnings = [w for w in data["warnings"] if w.startswith("slow link")]
    assert {w.split(":")[0] for w in slow_warnings} == {"slow link node1->node2", "slow link node2->node1"}
    print(f"emulated-cluster probe ({state}); link ratios {sorted(round(v, 3) for v in ratios.values())}")
    # End to end: the planner keeps the slow pair off the pipeline's stage boundaries.
    cluster = load_cluster(str(out))
    ctx = SearchContext(model=load_model("llama3-8b"), cluster=cluster, job=JobSpec(global_batch=16, seq_len=4096))
    result = place(ctx, Plan(pp=4, dp=1, recompute="full"))
    order = result.placement.node_order
    boundaries = {frozenset((order[s], order[s + 1])) for s in range(3)}
    assert frozenset((1, 2)) not in boundaries, order
    assert result.excess_s < result.default_excess_s  # Megatron's order 0-1-2-3 crosses 1<->2


def test_a_dead_rank_leaves_partial_results_and_is_named(root_netns, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prefix = f"cfgf{os.getpid() % 1000}"
    out = tmp_path / "partial.json"
    try:
        assert _testbed("up", prefix, "3", "1000").returncode == 0
        run = _testbed("run", prefix, "3", str(out), "--sizes-mib", "1,2", "--repeat", "1", "--timeout", "20",
                       "--gpu", "h100-80gb", env={"CLUSTER_PROBES_FAULT": "2:collectives"})
    finally:
        _testbed("down", prefix, "3")
    assert run.returncode != 0
    data = json.loads(out.read_text())
    assert len(data["links"]) == 6  # the finished phase survives
    stopped = [w for w in data["warnings"] if w.startswith("probe stopped")]
    assert stopped and "during collectives" in stopped[0] and "node2" in stopped[0], data["warnings"]
    assert np.isfinite(load_cluster(str(out)).scale_out_link.bandwidth_Bps)
