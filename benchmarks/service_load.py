"""A bounded load test of `configurator serve`: N concurrent plan requests, mostly identical (served from the
store), some distinct; every request must be answered and no job lost. Reports latency percentiles; not a
timed test (shared machines are noisy).

Run: python benchmarks/service_load.py [--requests 200] [--distinct 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--distinct", type=int, default=4, help="distinct requests among them (the rest repeat)")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.TemporaryDirectory()
    server = subprocess.Popen([sys.executable, "-m", "configurator.cli", "serve", "--port", str(port), "--db",
                               f"sqlite:///{tmp.name}/load.db", "--workers", "2"], cwd=REPO, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        bodies = [{"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 8 * (1 + i % args.distinct),
                   "seq_len": 4096, "global_batch": 64 * (1 + i % args.distinct)} for i in range(args.requests)]

        async def one(client: httpx.AsyncClient, body: dict) -> tuple[float, int, str]:
            start = time.perf_counter()
            r = await client.post(base + "/v1/plans", json=body)
            return time.perf_counter() - start, r.status_code, r.json().get("id", "")

        async def run() -> list[tuple[float, int, str]]:
            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as client:
                return await asyncio.gather(*(one(client, b) for b in bodies))

        results = asyncio.run(run())
        latencies = sorted(t for t, _, _ in results)
        ok = [r for r in results if r[1] == 202]
        ids = {i for _, _, i in ok}
        lost = [i for i in ids if httpx.get(f"{base}/v1/plans/{i}", timeout=30).status_code != 200]
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print(f"{len(results)} requests: {len(ok)} accepted, {len(ids)} distinct jobs, {len(lost)} lost; "
              f"latency p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
              f"max {latencies[-1] * 1000:.0f} ms")
        return 0 if len(ok) == len(results) and not lost and len(ids) == args.distinct else 1
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
