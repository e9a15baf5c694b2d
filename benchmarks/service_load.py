"""A bounded load test of `configurator serve`: concurrent identical and distinct plan requests, the queue bound,
and the memory of each worker. Every request must be answered (202, or 429 with Retry-After past the queue
bound) and every accepted job must end done; nothing is lost. Not a timed test (shared machines are noisy):
it prints what it measured, for README's "Reliability" section.

Run: python benchmarks/service_load.py [--identical 200] [--distinct 8] [--flood 40] [--workers 2] [--max-queue 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def body(i: int, seed: int = 0) -> dict:
    """Distinct small searches: Llama-3 8B on 8..64 H100s with different batches."""
    return {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 8 * (1 + i % 8), "seq_len": 4096,
            "global_batch": 64 * (1 + i // 8), "seed": seed}


async def post_all(base: str, bodies: list[dict]) -> list[tuple[float, httpx.Response]]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as client:
        async def one(b: dict) -> tuple[float, httpx.Response]:
            start = time.perf_counter()
            r = await client.post(base + "/v1/plans", json=b)
            return time.perf_counter() - start, r
        return await asyncio.gather(*(one(b) for b in bodies))


def wait_all(base: str, ids: set[str], timeout: float) -> dict[str, str]:
    deadline = time.time() + timeout
    status: dict[str, str] = {}
    while time.time() < deadline:
        status = {i: httpx.get(f"{base}/v1/plans/{i}", timeout=30).json()["status"] for i in ids}
        if all(s in ("done", "failed") for s in status.values()):
            break
        time.sleep(0.5)
    return status


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[int(q * (len(values) - 1))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identical", type=int, default=200, help="concurrent copies of one request")
    parser.add_argument("--distinct", type=int, default=8, help="concurrent distinct requests (<= workers + queue)")
    parser.add_argument("--flood", type=int, default=40, help="distinct requests sent at once to hit the queue bound")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.TemporaryDirectory()
    server = subprocess.Popen([sys.executable, "-m", "configurator.cli", "serve", "--port", str(port), "--db",
                               f"sqlite:///{tmp.name}/load.db", "--workers", str(args.workers), "--max-queue",
                               str(args.max_queue), "--drain", "0"], cwd=REPO, start_new_session=True,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    peak_worker_mib = [0.0]
    peak_server_mib = [0.0]
    sampling = threading.Event()

    def sample() -> None:  # the workers' resident memory, from the pids /healthz reports
        while not sampling.is_set():
            try:
                pids = httpx.get(base + "/healthz", timeout=5).json()["pool"]["worker_pids"]
            except (httpx.HTTPError, KeyError, ValueError):
                pids = []
            for pid in pids:
                peak_worker_mib[0] = max(peak_worker_mib[0], rss_mib(pid) or 0.0)
            peak_server_mib[0] = max(peak_server_mib[0], rss_mib(server.pid) or 0.0)
            time.sleep(0.1)

    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        threading.Thread(target=sample, daemon=True).start()
        figures: dict[str, object] = {"workers": args.workers, "max_queue": args.max_queue}
        ok = True

        # 1. identical requests at once: one job, every answer names it
        results = asyncio.run(post_all(base, [body(0)] * args.identical))
        ids = {r.json().get("id") for _, r in results if r.status_code == 202}
        lat = [t for t, _ in results]
        status = wait_all(base, ids, 300)
        figures["identical"] = {"requests": args.identical, "accepted": sum(r.status_code == 202 for _, r in results),
                                "jobs": len(ids), "p50_ms": round(pct(lat, 0.5)), "p95_ms": round(pct(lat, 0.95)),
                                "done": sum(s == "done" for s in status.values())}
        ok &= len(ids) == 1 and all(r.status_code == 202 for _, r in results) and set(status.values()) == {"done"}
        # 1b. the same burst once the answer is stored: every request is answered from the store
        results = asyncio.run(post_all(base, [body(0)] * args.identical))
        lat = [t for t, _ in results]
        cached = sum(r.status_code == 202 and r.json().get("cached") is True for _, r in results)
        figures["identical_stored"] = {"requests": args.identical, "cached": cached, "p50_ms": round(pct(lat, 0.5)),
                                       "p95_ms": round(pct(lat, 0.95))}
        ok &= cached == args.identical

        # 2. distinct requests at once (within workers + queue): all accepted, all done
        start = time.perf_counter()
        results = asyncio.run(post_all(base, [body(i, seed=1) for i in range(args.distinct)]))
        ids = {r.json().get("id") for _, r in results if r.status_code == 202}
        status = wait_all(base, ids, 600)
        wall = time.perf_counter() - start
        figures["distinct"] = {"requests": args.distinct, "accepted": len(ids),
                               "done": sum(s == "done" for s in status.values()), "all_done_s": round(wall, 1),
                               "jobs_per_min": round(60 * len(ids) / wall, 1)}
        ok &= len(ids) == args.distinct and set(status.values()) == {"done"}

        # 3. a flood past the queue bound: the excess gets 429 with Retry-After, nothing else fails
        results = asyncio.run(post_all(base, [body(i, seed=2) for i in range(args.flood)]))
        codes = [r.status_code for _, r in results]
        retry = [r.headers.get("retry-after") for _, r in results if r.status_code == 429]
        ids = {r.json().get("id") for _, r in results if r.status_code == 202}
        status = wait_all(base, ids, 900)
        figures["flood"] = {"requests": args.flood, "accepted": codes.count(202), "rejected_429": codes.count(429),
                            "other": len(codes) - codes.count(202) - codes.count(429),
                            "retry_after_s": sorted({int(r) for r in retry if r})[:3],
                            "accepted_done": sum(s == "done" for s in status.values())}
        ok &= (codes.count(202) + codes.count(429) == len(codes) and all(retry)
               and codes.count(429) > 0 and set(status.values()) <= {"done"})
        sampling.set()
        figures["peak_worker_rss_mib"] = round(peak_worker_mib[0])
        figures["peak_server_rss_mib"] = round(peak_server_mib[0])
        i, d, f = figures["identical"], figures["distinct"], figures["flood"]
        c = figures["identical_stored"]
        print(f"identical: {i['requests']} requests -> {i['jobs']} job, p50 {i['p50_ms']} ms, p95 {i['p95_ms']} ms; "
              f"again once stored: {c['cached']} cached, p50 {c['p50_ms']} ms, p95 {c['p95_ms']} ms; "
              f"distinct: {d['requests']} jobs done in {d['all_done_s']} s ({d['jobs_per_min']} jobs/min on "
              f"{args.workers} workers); flood: {f['requests']} at once -> {f['accepted']} accepted, "
              f"{f['rejected_429']} x 429 (Retry-After {f['retry_after_s']} s), {f['other']} other; "
              f"peak RSS per worker {figures['peak_worker_rss_mib']} MiB, server {figures['peak_server_rss_mib']} MiB"
              f"{'' if ok else ' -- FAILED'}")
        if args.json:
            print(json.dumps(figures))
        return 0 if ok else 1
    finally:
        sampling.set()
        os.killpg(server.pid, signal.SIGKILL)
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
