"""Each published row's throughput error when its publisher is held out (leave-one-publisher-out), MoE rows flagged.

Run from the repository root: ``python benchmarks/heldout_rows.py ../shared/data/published_runs.csv [--all]``
(~1-4 min on 2 cores: one refit per publisher, started from ``profiles/calibration.json``, two at a time). Prints
the MoE rows (every row with ``--all``) by their held-out error, largest first, then the MoE rows' and all rows'
error statistics (``calibrate.error_stats``: the figures the README's accuracy table quotes per row and for the
MoE p90)."""

from __future__ import annotations

import json
import multiprocessing
import sys
from pathlib import Path

import numpy as np

from configurator.calibrate import _fold, error_stats, load_samples, log_errors
from configurator.cost.constants import CostConstants


def main(argv: list[str]) -> int:
    if not argv or not Path(argv[0]).is_file():
        print("usage: python benchmarks/heldout_rows.py RUNS_CSV [--all]", file=sys.stderr)
        return 2
    runs, show_all = argv[0], "--all" in argv[1:]
    start = json.loads(Path("profiles/calibration.json").read_text())["constants"]
    samples, _ = load_samples(Path(runs))
    groups = sorted({s.group for s in samples})
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        folds = pool.map(_fold, [(runs, g, start, "physical") for g in groups])
    errs = np.zeros(len(samples))
    for group, (values, _) in zip(groups, folds):
        idx = [i for i, s in enumerate(samples) if s.group == group]
        errs[idx] = log_errors([samples[i] for i in idx], CostConstants.from_dict(values))
    rows = []
    for s, e in zip(samples, errs):
        moe = (getattr(s.inputs.model, "num_experts", 0) or 0) > 1
        rows.append((s.case.run_id, moe, (np.exp(e) - 1) * 100, s.group))
    for run_id, moe, pct, group in sorted(rows, key=lambda r: -abs(r[2])):
        if moe or show_all:
            print(f"{run_id:8s} {'MoE' if moe else '   '} {pct:+8.1f}  {group}")
    print("MoE", error_stats(np.array([e for (_, moe, _, _), e in zip(rows, errs) if moe])))
    print("all", error_stats(errs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
