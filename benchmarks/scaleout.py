"""One large exhaustive search on 1, 2 and 4 worker processes of one machine, through the service's store.

For each count N: a fresh SQLite store, one ``configurator worker --workers N`` host, one plan job with
``split`` = N (N = 1: the unsplit search in one process). The wall time runs from the job's creation to its
answer (claims, the blocks' jobs, their merge: everything a team's request goes through, less HTTP). The
answers must be identical (same plans, same order, same step times); the table says whether they are.

Speed-up is bounded by the machine's cores (``os.cpu_count()``, printed): on a 2-core machine 4 workers
cannot beat 2. Each block enumerates the whole space and bounds its own structures, and prunes against its own
k-th best (weaker than the whole search's), so the blocks together do more work than the single search: the
"evaluated" column is the sum of costed options over the blocks. A second table, load-independent, runs the
single search and each block alone in this process and reports their CPU seconds: single / slowest block is the
speed-up that as many idle cores would give.

    python benchmarks/scaleout.py [--counts 1,2,4] [--out benchmarks/scaleout.txt] [--cpu-only]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUEST = {"model": "deepseek-v3", "cluster": "h800-ib", "num_gpus": 8192, "seq_len": 4096, "global_batch": 16384,
           "method": "exhaustive", "top": 5}


def run_once(count: int, request: dict, timeout_s: float) -> dict:
    """The job's answer and wall time on one worker host of ``count`` processes."""
    from configurator.service.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/store.db"
        store = Store(url)
        worker = subprocess.Popen([sys.executable, "-m", "configurator.cli", "worker", "--db", url, "--workers",
                                   str(count), "--job-timeout", str(timeout_s), "--drain", "0"], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        try:
            assert worker.stderr is not None
            worker.stderr.readline()  # "configurator worker: N workers claiming jobs ..." once it is up
            start = time.perf_counter()
            job = store.create_job(f"bench-{count}", {**request, "split": count})
            deadline = start + timeout_s
            while time.perf_counter() < deadline:
                found = store.get_job(job.id)
                if found is not None and found.status in ("done", "failed"):
                    break
                time.sleep(0.2)
            wall = time.perf_counter() - start
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        if found is None or found.status != "done":
            raise SystemExit(f"{count} workers: the job did not finish: {found.error if found else 'missing'}")
        store.engine.dispose()
    return {"count": count, "wall_s": wall, "plans": found.result["plans"], "search": found.result["search"]}


def cpu_accounting(request: dict, counts: list[int]) -> list[str]:
    """CPU seconds of the single search and of each block, run one after another in this process: the load of the
    machine does not enter, so ``single / slowest block`` is the wall-clock speed-up that ``count`` idle cores
    would give (less the claims and the merge, about a second)."""
    from configurator.search.optimize import search
    from configurator.search.partition import search_block
    from configurator.service.jobs import search_context, search_kwargs

    ctx = search_context(request, None)
    kwargs = search_kwargs(request)
    search(search_context({**request, "num_gpus": 64, "global_batch": 512}, None), **kwargs)  # warm the imports
    start = time.process_time()
    search(ctx, **kwargs)
    single = time.process_time() - start
    lines = ["", "CPU seconds, each search alone in one process (load-independent):",
             f"{'blocks':>7} {'CPU sum s':>9} {'slowest block s':>15} {'ideal speed-up on that many idle cores':>39}",
             f"{1:>7} {single:>9.1f} {single:>15.1f} {1.0:>39.2f}"]
    for count in counts:
        if count == 1:
            continue
        cpu = []
        for index in range(count):
            start = time.process_time()
            search_block(ctx, index, count, **kwargs)
            cpu.append(time.process_time() - start)
        lines.append(f"{count:>7} {sum(cpu):>9.1f} {max(cpu):>15.1f} {single / max(cpu):>39.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="1,2,4")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cpu-only", action="store_true", help="only the CPU accounting (no worker processes)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.cpu_only:
        text = "\n".join(cpu_accounting(REQUEST, counts)) + "\n"
        print(text, end="")
        if args.out is not None:
            args.out.write_text(text)
        return
    runs = [run_once(c, REQUEST, args.timeout) for c in counts]
    base = runs[0]

    def signature(run: dict) -> list:
        return [(p["plan"], p["time"], p["tight"]) for p in run["plans"]]

    lines = [f"scale-out benchmark: {json.dumps(REQUEST)}",
             f"machine: {os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.1f} "
             "(other work on the machine slows every row alike only if it stays constant)",
             "",
             f"{'workers':>7} {'blocks':>6} {'wall s':>8} {'speed-up':>8} {'evaluated':>9} {'truncated':>9}  identical",
             ]
    for run in runs:
        lines.append(f"{run['count']:>7} {run['count'] if run['count'] > 1 else '-':>6} {run['wall_s']:>8.1f} "
                     f"{base['wall_s'] / run['wall_s']:>8.2f} {run['search']['evaluated']:>9} "
                     f"{str(run['search']['truncated']):>9}  {signature(run) == signature(base)}")
    best = base["plans"][0]
    lines += ["", f"best plan (every row): {best['plan']}",
              f"identical answers across {', '.join(map(str, counts))} workers: "
              f"{all(signature(r) == signature(base) for r in runs)}"]
    lines += cpu_accounting(REQUEST, counts)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
