"""Dump each ``search_speed.py`` grid job's top plans, to diff two trees' answers (an exact speed change keeps them).

Run: ``python benchmarks/search_topk_dump.py [--tree DIR] [--only SUBSTR] [--workers N] > OUT`` then ``diff`` two
outputs. One line per ranked plan: the job, rank, the plan's description, its step time (``repr``: every digit),
its predicted peak memory, whether it is tight, and why its memory choices were made. ``--tree``: import
``configurator`` from DIR (e.g. ``git archive BASE | tar -x -C DIR``) instead of this checkout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", type=Path, default=REPO)
    ap.add_argument("--only", help="jobs whose name contains this")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--top-k", type=int, default=5)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(args.tree.resolve()))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import configurator
    from configurator.search.optimize import search
    from search_speed import grid, job_context

    if not str(Path(configurator.__file__).resolve()).startswith(str(args.tree.resolve())):
        raise SystemExit(f"imported {configurator.__file__}, not {args.tree}")
    for job in grid():
        if args.only and args.only not in job["name"]:
            continue
        ctx = job_context(job)
        cpu = time.process_time()
        r = search(ctx, top_k=args.top_k, workers=args.workers)
        print(f"# {job['name']}: {len(r.ranked)} plans, truncated={r.truncated}, "
              f"{time.process_time() - cpu:.2f} CPU s", file=sys.stderr, flush=True)
        if not r.ranked:
            print(f"{job['name']}\t-\tnothing fits")
        for i, e in enumerate(r.ranked):
            print(f"{job['name']}\t{i}\t{e.plan.describe()}\t{e.step.step_s!r}\t{e.memory.peak_bytes!r}\t"
                  f"tight={e.tight}\t{e.why}\t{e.plan!r}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
