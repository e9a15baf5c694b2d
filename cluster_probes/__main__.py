"""Measure a cluster and write its profile: ``torchrun ... -m cluster_probes --out PROFILE.json``.

Run under torchrun on every node (static node ranks), e.g.::

    torchrun --nnodes N --nproc-per-node G --node-rank I --master-addr A --master-port P \\
        -m cluster_probes --out cluster.json [--sizes-mib 1,16,64] [--repeat 2] [--timeout 120]

Backend: NCCL where GPUs exist, gloo otherwise (``GLOO_SOCKET_IFNAME`` picks the interface). Rank 0
writes the profile (the schema of ``profiles/clusters``, which ``configurator plan --cluster`` reads),
after every phase, so a rank that dies or hangs leaves the finished phases on disk with the culprit
named in ``warnings``; the exit status is then 1.

Phases: node discovery (host name, GPU and host memory, from ``torch.cuda.mem_get_info`` and
``/proc/meminfo``); point-to-point bandwidth and latency for every ordered node pair between the nodes'
first ranks, in rounds of disjoint pairs (``measure.round_robin``), at several sizes with an alpha-beta
fit; the same for GPU pairs inside the first node; collectives over all ranks; GEMM curve, pinned
copies and CPU Adam on the first rank. Links under ``SLOW_LINK_FRACTION`` of the median are warnings.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import socket
import statistics
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

SLOW_LINK_FRACTION = 0.5
GIB = 2**30


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cluster_probes", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="profile JSON to write (rank 0)")
    p.add_argument("--sizes-mib", default="1,16,64", help="message sizes for links and collectives, MiB")
    p.add_argument("--repeat", type=int, default=2, help="repeats per measurement (best is kept)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a stuck collective or transfer fails")
    p.add_argument("--name", default="", help="profile name (default: probed-<N>-nodes)")
    p.add_argument("--gpu", default="", help="GPU key of profiles/gpus (default: from the device name)")
    p.add_argument("--nvlink-domain", type=int, default=0, help="GPUs per NVLink domain (default: GPUs per node)")
    p.add_argument("--skip", default="", help="comma list of phases to skip: intra,collectives,compute")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(float(x) * 2**20) for x in args.sizes_mib.split(",") if x.strip()]
    except ValueError:
        p.error(f"--sizes-mib={args.sizes_mib!r}: must be comma-separated numbers")
    if not args.sizes or min(args.sizes) <= 0:
        p.error(f"--sizes-mib={args.sizes_mib!r}: needs positive sizes")
    if args.repeat < 1:
        p.error(f"--repeat={args.repeat}: must be >= 1")
    return args


def _local_ip() -> str:
    """The address this host uses to reach the master (no packet is sent: a UDP connect only routes)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((os.environ.get("MASTER_ADDR", "127.0.0.1"), 9))
            return s.getsockname()[0]
    except OSError:
        return ""


def _read(path: str) -> str:
    """A file's text, or "" where it cannot be read (a container without /proc/cpuinfo)."""
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def host_memory_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemTotal")


NEOVERSE_V2 = ("0x41", "0xd4f")
"""(CPU implementer, CPU part) of Arm Neoverse V2 in /proc/cpuinfo on aarch64 (Arm's MIDR: implementer 0x41 = Arm,
part 0xD4F = Neoverse V2), the cores of NVIDIA's Grace CPU."""
GRACE_HOST_DISPATCH_RATIO = 2.75
"""The profile's ``host_dispatch_ratio`` where every node's host is a Grace CPU: the configurator presets' value for
gb200-nvl72 and gb300-nvl72 (a ``torch.nn.Linear`` forward costs 37.08 us of CPU on GB200 and 13.48 us on a DGX
H100, NVIDIA/TransformerEngine#2053). Recognised from the CPU, not measured here: timing an op's dispatch says
nothing without the reference host to time it on too."""


def host_cpu(cpuinfo: str, machine: str) -> str:
    """The host CPU as a profile records it: x86's ``model name``; on Arm the implementer and part, named for
    Neoverse V2 (Grace, ``NEOVERSE_V2``); the machine type alone when /proc/cpuinfo says neither."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    if fields.get("model name"):
        return f"{machine} {fields['model name']}"
    implementer, part = fields.get("cpu implementer", "").lower(), fields.get("cpu part", "").lower()
    if (implementer, part) == NEOVERSE_V2:
        return f"{machine} Arm Neoverse V2 (Grace)"
    if part:
        return f"{machine} CPU implementer {implementer or '?'} part {part}"
    return machine or "unknown"


def host_dispatch(cpus: list[str]) -> tuple[float | None, str]:
    """The profile's ``host_dispatch_ratio`` for hosts with these CPUs and what it says of it: (None, "") on x86 (the
    reference: the key stays absent, 1.0); the Grace ratio and a line saying it was recognised where every host is
    Grace; (None, a line saying 1.0 is kept, unmeasured) for any other CPU."""
    if cpus and all(c.endswith("(Grace)") for c in cpus):
        return GRACE_HOST_DISPATCH_RATIO, (
            f"host_dispatch_ratio {GRACE_HOST_DISPATCH_RATIO}: every host is a Grace CPU (Arm Neoverse V2); "
            "NVIDIA/TransformerEngine#2053's GB200 ratio, recognised, not measured here")
    other = sorted({c for c in cpus if not c.startswith(("x86_64", "i686", "AMD64"))})
    if other:
        return None, (f"host CPU {other[0]}: host_dispatch_ratio left at 1.0 (a DGX H100's x86 host); nothing "
                      "measured for this CPU: set it in the profile if its op dispatch is known to differ")
    return None, ""


GPU_KEYS = (("H100", "h100-80gb"), ("H200", "h200"), ("H800", "h800-80gb"), ("A100-SXM4-40GB", "a100-40gb"),
            ("A100", "a100-80gb"), ("GB200", "gb200"), ("GB300", "gb300"), ("B200", "b200"), ("B300", "b300"),
            ("H20", "h20"), ("A800", "a800-80gb"), ("L40S", "l40s"), ("V100-SXM2-32GB", "v100-32gb"),
            ("V100", "v100-16gb"), ("T4", "t4"), ("MI250X", "mi250x"), ("MI300X", "mi300x"), ("MI325X", "mi325x"),
            ("MI355X", "mi355x"))
"""Driver device-name fragments -> GPU presets, first match wins (H200 before H20, the 32 GB V100 first)."""


def gpu_key(name: str) -> str:
    for needle, key in GPU_KEYS:
        if needle in name:
            return key
    return ""


class Writer:
    """Rank 0's profile, rewritten after every phase (atomically: temp file, then rename)."""

    def __init__(self, path: Path, base: dict[str, Any]) -> None:
        self.path = path
        self.data = base

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.path)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch
    import torch.distributed as dist

    from cluster_probes import measure

    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    # A gloo group on the side, for monitored_barrier: after a failure it names the ranks that are gone.
    monitor = dist.new_group(backend="gloo", timeout=timedelta(seconds=args.timeout))
    fault = os.environ.get("CLUSTER_PROBES_FAULT", "")  # fault injection for tests: "<rank>:<phase>"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    num_nodes = world // per_node
    node = rank // per_node
    # ----- discovery -----
    free, total = torch.cuda.mem_get_info(device) if cuda else (0, 0)
    me = {"host": socket.gethostname(), "ip": _local_ip(), "node": node, "local_rank": local_rank,
          "gpu_name": torch.cuda.get_device_name(device) if cuda else "cpu", "gpu_total": total, "gpu_free": free,
          "host_memory": host_memory_bytes(), "cpu_cores": os.cpu_count() or 1,
          "host_cpu": host_cpu(_read("/proc/cpuinfo"), platform.machine())}
    everyone: list[dict] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(everyone, me)
    leaders = [r for r in range(world) if everyone[r]["local_rank"] == 0]
    first = everyone[0]
    key = args.gpu or gpu_key(first["gpu_name"]) or "h100-80gb"
    writer = Writer(args.out, {
        "name": args.name or f"probed-{num_nodes}-nodes",
        "description": f"measured by cluster_probes on {num_nodes} nodes x {per_node} "
                       f"{'GPUs' if cuda else 'CPU ranks'}",
        "gpu": key, "gpus_per_node": per_node, "nvlink_domain_gpus": args.nvlink_domain or per_node,
        "intra_domain_link": {"bandwidth_GBps": 0, "latency_s": 0},
        "scale_out_link": {"bandwidth_GBps": 0, "latency_s": 0},
        "host_memory_GiB_per_node": round(min(e["host_memory"] for e in everyone) / GIB, 2),
        "host_cpu_cores_per_node": min(e["cpu_cores"] for e in everyone),
        "default_num_nodes": num_nodes,
        "source": f"cluster_probes on {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}",
        "nodes": [{"index": i, "host": everyone[leaders[i]]["host"], "num_gpus": per_node, "gpu": key,
                   "gpu_memory_GiB": round(min(e["gpu_total"] for e in everyone if e["node"] == i) / GIB, 2) if cuda
                   else 80.0,
                   "host_memory_GiB": round(everyone[leaders[i]]["host_memory"] / GIB, 2)} for i in range(num_nodes)],
        "links": [], "intra_links": [], "collectives": [], "compute": {}, "warnings": [],
        "provenance": {"tool": "cluster_probes", "torch": torch.__version__,
                       "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
                       "backend": "nccl" if cuda else "gloo", "python": platform.python_version(),
                       "date": _dt.date.today().isoformat(), "command": " ".join(sys.argv),
                       "sizes_bytes": args.sizes, "repeat": args.repeat,
                       "host_cpus": sorted({e["host_cpu"] for e in everyone})},
    })
    ratio, host_note = host_dispatch([everyone[r]["host_cpu"] for r in leaders])
    if ratio is not None:
        writer.data["host_dispatch_ratio"] = ratio
    if host_note:
        writer.data["warnings"].append(host_note)
    if not cuda:
        writer.data["warnings"].append("no GPU: gpu_memory_GiB, the GEMM curve and gpu_measured are not measured "
                                       "(gloo run)")
    elif not args.gpu and not gpu_key(first["gpu_name"]):
        writer.data["warnings"].append(f"GPU {first['gpu_name']!r} matches no preset: the profile names {key}; "
                                       "pass --gpu KEY or replace gpu by an inline GPU spec (README 'Your own GPUs')")
    status = 0
    current = "discovery"
    try:
        if rank == 0:
            writer.write()
        # ----- node pairs (first rank of each node), rounds of disjoint pairs -----
        current = "links"
        for round_pairs in measure.round_robin(num_nodes):
            for a, b in round_pairs:
                ra, rb = leaders[a], leaders[b]
                if rank in (ra, rb):
                    current = f"link {everyone[ra]['host']}<->{everyone[rb]['host']}"
                    for src, dst, s, d in ((ra, rb, a, b), (rb, ra, b, a)):
                        fit = measure.measure_pair(src, dst, args.sizes, args.repeat, device)
                        if rank == src and fit is not None:
                            _report_link(s, d, fit)
            current = "links"
            measured = _sync_links(dist, world)  # collective: every rank takes part
            if rank == 0:
                writer.data["links"] += measured
                writer.write()
        # ----- GPU pairs inside the first node -----
        if "intra" not in args.skip and per_node > 1:
            current = "intra-node links"
            for round_pairs in measure.round_robin(per_node):
                for a, b in round_pairs:
                    if rank in (a, b):
                        for src, dst in ((a, b), (b, a)):
                            fit = measure.measure_pair(src, dst, args.sizes, args.repeat, device)
                            if rank == src and fit is not None:
                                _report_link(src, dst, fit, intra=True)
                measured = _sync_links(dist, world)
                if rank == 0:
                    writer.data["intra_links"] += measured
            if rank == 0:
                writer.write()
        # ----- collectives -----
        if fault == f"{rank}:collectives":
            os._exit(17)  # simulated crash of this rank (tests only)
        if "collectives" not in args.skip:
            current = "collectives"
            results = measure.measure_collectives(args.sizes, args.repeat, device)
            if rank == 0:
                writer.data["collectives"] = results
                writer.write()
        # ----- compute, copies, CPU Adam (first rank) -----
        if "compute" not in args.skip and rank == 0:
            current = "compute"
            writer.data["compute"] = {"gemm": measure.measure_gemm(device, args.repeat),
                                      **measure.measure_host_copy(device, 256 * 2**20, args.repeat)}
            writer.data["cpu_adam_params_per_s"] = round(measure.measure_cpu_adam() * per_node, 1)
            writer.write()
            if cuda:  # the measured GPU section the planner uses in place of the datasheet figures
                from cluster_probes import gpu as gpu_probe

                writer.data["gpu_measured"] = gpu_probe.gpu_section(device, args.repeat)
                writer.write()
        dist.barrier()
    except Exception as exc:  # a rank died or hung: keep what was measured, name where it stopped
        status = 1
        culprits = _missing_hosts(dist, monitor, everyone, min(30.0, args.timeout))
        if rank == 0:
            who = f"; not responding: {', '.join(culprits)}" if culprits else ""
            writer.data["warnings"].append(f"probe stopped during {current}{who} ({type(exc).__name__}: "
                                           f"{str(exc).splitlines()[0] if str(exc) else ''})")
            writer.write()
        else:
            traceback.print_exc()
    if rank == 0:
        _finish(writer)
        writer.write()
        print(f"cluster_probes: wrote {args.out} ({num_nodes} nodes, {len(writer.data['links'])} links, "
              f"{len(writer.data['warnings'])} warnings)")
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - the group may be broken after a failure
        pass
    return status


_pending: list[dict] = []


def _report_link(src: int, dst: int, fit, intra: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Remember a link this rank measured as the sender (gathered on rank 0 after the round)."""
    entry = {"src_node" if not intra else "src_gpu": src, "dst_node" if not intra else "dst_gpu": dst,
             "bandwidth_GBps": round(fit.bandwidth_Bps / 1e9, 4), "latency_s": round(fit.latency_s, 7),
             "samples": fit.samples}
    _pending.append(entry)


def _missing_hosts(dist, group, everyone: list[dict], timeout_s: float) -> list[str]:  # type: ignore[no-untyped-def]
    """Hosts whose ranks do not reach a monitored barrier (gloo names them) after a failure."""
    import re

    try:
        dist.monitored_barrier(group=group, timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
    except Exception as exc:  # noqa: BLE001 - the message lists the missing ranks
        text = str(exc)
        found = re.search(r"Ranks? ([\d, ]+) failed to pass", text)  # ranks that hang
        ranks = sorted({int(r) for r in re.findall(r"\d+", found.group(1))}) if found else []
        # A rank that crashed closes its connections: gloo names its address instead.
        for address in re.findall(r"peer \[([0-9.]+)\]", text):
            ranks += [r for r, e in enumerate(everyone) if e.get("ip") == address and r not in ranks]
        return [f"{everyone[r]['host']} (rank {r}, {everyone[r].get('ip', '?')})" for r in ranks if r < len(everyone)]
    return []


def _sync_links(dist, world: int) -> list[dict]:  # type: ignore[no-untyped-def]
    """Every rank's links measured since the last call, on every rank (a collective)."""
    gathered: list[list[dict]] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(gathered, list(_pending))
    _pending.clear()
    return [e for part in gathered for e in part]


def _finish(writer: Writer) -> None:
    """Median links as the tiers; slow links as warnings."""
    data = writer.data
    links = data["links"]
    if links:
        med_bw = statistics.median(link["bandwidth_GBps"] for link in links)
        med_lat = statistics.median(link["latency_s"] for link in links)
        data["scale_out_link"] = {"bandwidth_GBps": round(med_bw, 4), "latency_s": med_lat}
        hosts = {n["index"]: n["host"] for n in data["nodes"]}
        for link in links:
            if link["bandwidth_GBps"] < SLOW_LINK_FRACTION * med_bw:
                data["warnings"].append(
                    f"slow link {hosts[link['src_node']]}->{hosts[link['dst_node']]}: {link['bandwidth_GBps']:.3f} GB/s, "
                    f"{link['bandwidth_GBps'] / med_bw:.0%} of the median {med_bw:.3f} GB/s")
    else:
        data["scale_out_link"] = {"bandwidth_GBps": 1e-3, "latency_s": 0.0}
        data.pop("links")
    intra = data.get("intra_links") or []
    if intra:
        data["intra_domain_link"] = {"bandwidth_GBps": round(statistics.median(x["bandwidth_GBps"] for x in intra), 4),
                                     "latency_s": statistics.median(x["latency_s"] for x in intra)}
    else:
        # One rank per node: no intra-node link exists; the tier is filled so the profile stays valid.
        data["intra_domain_link"] = dict(data["scale_out_link"])
        if data["gpus_per_node"] > 1:
            data["warnings"].append("intra-node links not measured (skipped): intra_domain_link copies the scale-out "
                                    "tier")


if __name__ == "__main__":
    sys.exit(main())
