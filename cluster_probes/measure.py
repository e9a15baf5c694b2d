"""The measurements: point-to-point links, collectives, GEMMs, copies, CPU Adam.

Every function runs inside an initialised ``torch.distributed`` process group and returns plain data.
Timing: each measurement is repeated and the best (shortest) time is kept — on shared machines a single
run occasionally drops to ~0.6 of the rate, and the best of a few fixes that; the median is kept too.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


def round_robin(n: int) -> list[list[tuple[int, int]]]:
    """Rounds of disjoint node pairs covering every unordered pair once (circle method; any n).

    With an odd n one node sits each round out. Within a round the pairs run at once (they share no
    node, so they do not contend); each pair measures both directions one after the other.
    """
    nodes = list(range(n)) + ([-1] if n % 2 else [])
    m = len(nodes)
    rounds = []
    for _ in range(m - 1):
        pairs = [(nodes[i], nodes[m - 1 - i]) for i in range(m // 2)]
        rounds.append([(a, b) if a < b else (b, a) for a, b in pairs if a >= 0 and b >= 0])
        nodes = [nodes[0], nodes[-1], *nodes[1:-1]]
    return rounds


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkFit:
    bandwidth_Bps: float
    latency_s: float
    samples: int
    best_times_s: tuple[float, ...]


def fit_alpha_beta(sizes_bytes: list[int], times_s: list[float]) -> tuple[float, float]:
    """Least-squares ``t = alpha + bytes / bandwidth``; (bandwidth B/s, latency s), latency >= 0."""
    x = np.asarray(sizes_bytes, dtype=float)
    y = np.asarray(times_s, dtype=float)
    if len(x) == 1:
        return float(x[0] / y[0]), 0.0
    slope, intercept = np.polyfit(x, y, 1)
    if slope <= 0:  # noise on tiny transfers: fall back to the largest size
        return float(x[-1] / y[-1]), 0.0
    return float(1.0 / slope), float(max(0.0, intercept))


def _timed_send_recv(src: int, dst: int, tensor: torch.Tensor, me: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if me == src:
        dist.send(tensor, dst)
    elif me == dst:
        dist.recv(tensor, src)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_pair(src: int, dst: int, sizes_bytes: list[int], repeat: int, device: torch.device) -> LinkFit | None:
    """Bandwidth and latency from rank ``src`` to rank ``dst`` (only those two ranks call this).

    The receiver's time is the transfer time (it waits for the last byte); it sends its timings back."""
    me = dist.get_rank()
    tensors = [torch.empty(size // 4, dtype=torch.float32, device=device) for size in sizes_bytes]
    # Warm the connection with one untimed transfer of each full size, not a few bytes: TCP (gloo) likely restarts
    # slow start after idle, so the first timed transfer of a size otherwise pays the window's growth (on
    # shaped 1000 Mbit test links, 0.61-0.88 of the rate on some links with a 4-byte warm-up), as
    # nccl-tests' untimed warm-up iterations at full size avoid it.
    for tensor in tensors:
        _timed_send_recv(src, dst, tensor, me, device)
    # The repeats cycle through the sizes rather than timing one size's repeats back to back: a slow spell of
    # the host (another process, stolen CPU) then costs one sample of each size, which the best-of keeps out,
    # instead of every sample of the size it falls on, which would bend the bandwidth fit.
    times: list[list[float]] = [[] for _ in sizes_bytes]
    for _ in range(repeat):
        for i, tensor in enumerate(tensors):
            times[i].append(_timed_send_recv(src, dst, tensor, me, device))
    best = [min(t) for t in times]
    result = torch.tensor(best, dtype=torch.float64)
    if device.type == "cuda":
        result = result.to(device)
    if me == dst:
        dist.send(result, src)
    else:
        dist.recv(result, dst)
    times_s = result.cpu().tolist()
    bandwidth, latency = fit_alpha_beta(sizes_bytes, times_s)
    return LinkFit(bandwidth_Bps=bandwidth, latency_s=latency, samples=repeat * len(sizes_bytes),
                   best_times_s=tuple(times_s))


def bus_bandwidth(op: str, size_bytes: int, world: int, seconds: float) -> float:
    """nccl-tests' bus bandwidth: what the slowest link carries, comparable across ops and sizes."""
    algo = size_bytes / seconds
    if op == "all_reduce":
        return algo * 2 * (world - 1) / world
    return algo * (world - 1) / world


def measure_collectives(sizes_bytes: list[int], repeat: int, device: torch.device) -> list[dict]:
    world = dist.get_world_size()
    out = []
    if world == 1:
        return out
    for op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        for size in sizes_bytes:
            n = max(world, size // 4 // world * world)
            full = torch.ones(n, dtype=torch.float32, device=device)
            shard = torch.ones(n // world, dtype=torch.float32, device=device)

            def run() -> None:
                if op == "all_reduce":
                    dist.all_reduce(full)
                elif op == "all_gather":
                    dist.all_gather_into_tensor(full, shard)
                elif op == "reduce_scatter":
                    dist.reduce_scatter_tensor(shard, full)
                else:
                    dist.all_to_all_single(full.clone(), full)

            try:
                run()
            except (RuntimeError, NotImplementedError) as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if isinstance(exc, RuntimeError) and "support" not in message.lower():
                    raise  # a peer failure, not a backend without this collective
                out.append({"op": op, "group_size": world, "size_bytes": n * 4, "error": message})
                break
            times = []
            for _ in range(repeat):
                dist.barrier()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            t = min(times)
            out.append({"op": op, "group_size": world, "size_bytes": n * 4,
                        "bus_bandwidth_GBps": round(bus_bandwidth(op, n * 4, world, t) / 1e9, 4),
                        "median_s": statistics.median(times), "best_s": t})
    return out


def measure_gemm(device: torch.device, repeat: int) -> list[dict]:
    """GEMM TFLOP/s by size and precision (GPU only): the curve the cost model fits (compute.py)."""
    if device.type != "cuda":
        return []
    out = []
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    for precision, dtype in dtypes.items():
        for d in (256, 512, 1024, 2048, 4096, 8192):
            a = torch.randn(d, d, dtype=dtype, device=device)
            b = torch.randn(d, d, dtype=dtype, device=device)
            for _ in range(3):
                a @ b
            torch.cuda.synchronize()
            times = []
            for _ in range(max(repeat, 5)):
                start = time.perf_counter()
                a @ b
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            out.append({"precision": precision, "m": d, "n": d, "k": d,
                        "tflops": round(2 * d ** 3 / min(times) / 1e12, 2)})
    return out


def measure_host_copy(device: torch.device, size_bytes: int, repeat: int) -> dict:
    """Pinned host<->device copy bandwidth (GPU only), per direction."""
    if device.type != "cuda":
        return {}
    host = torch.empty(size_bytes, dtype=torch.uint8).pin_memory()
    gpu = torch.empty(size_bytes, dtype=torch.uint8, device=device)
    res = {}
    for name, (dst, src) in (("h2d", (gpu, host)), ("d2h", (host, gpu))):
        times = []
        for _ in range(max(repeat, 3)):
            torch.cuda.synchronize()
            start = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        res[f"{name}_GBps"] = round(size_bytes / min(times) / 1e9, 2)
    return res


def measure_cpu_adam(num_params: int = 4_000_000, steps: int = 3) -> float:
    """Parameters per second that torch's CPU Adam updates on this host (the offload model's rate)."""
    param = torch.nn.Parameter(torch.zeros(num_params))
    param.grad = torch.randn(num_params)
    opt = torch.optim.Adam([param], lr=1e-3, foreach=True)
    opt.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return num_params / min(times)


__all__ = ["LinkFit", "bus_bandwidth", "fit_alpha_beta", "measure_collectives", "measure_cpu_adam",
           "measure_gemm", "measure_host_copy", "measure_pair", "round_robin"]
