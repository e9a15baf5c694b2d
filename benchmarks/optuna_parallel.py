"""Parallel Optuna (``--workers 2 --storage sqlite:///...``) against one in-memory study, same trial count.

Run: ``python benchmarks/optuna_parallel.py MODEL CLUSTER GPUS TRIALS`` (e.g. ``mixtral-8x7b dgx-h100 64 200``).
Prints the CPU seconds of one process, of each of the two studies run in this process on a SQLite storage (what
each worker runs, without its start-up), of ``workers=2`` (its children), its wall time, the best step of each,
and whether two ``workers=2`` runs give the same answer.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time

from configurator import JobSpec, load_cluster, load_model
from configurator.cost.constants import load_calibration
from configurator.search import optimize
from configurator.search.space import SearchContext


def main() -> None:
    model, cluster, n, trials = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ctx = SearchContext(model=load_model(model), cluster=load_cluster(cluster, num_gpus=n),
                        job=JobSpec(global_batch=max(512, n), seq_len=4096))
    c = load_calibration()
    t = time.process_time()
    one = optimize.search(ctx, top_k=5, method="optuna", max_trials=trials, constants=c)
    print(f"1 process: {time.process_time() - t:.1f} CPU s, best {one.ranked[0].step.step_s:.4f} s")
    d = tempfile.mkdtemp()
    storage = f"sqlite:///{d}/s.db"
    optimize._create_storage(storage)
    cpus = []
    for i in range(2):  # what worker i runs, here (no process start-up)
        t = time.process_time()
        optimize._optuna_worker(ctx, c, 5, None, i, trials // 2, storage, f"w{i}", i, 2)
        cpus.append(time.process_time() - t)
    print(f"2 studies of {trials // 2} trials: CPU {cpus[0]:.1f} + {cpus[1]:.1f} s (slowest {max(cpus):.1f})")
    wall, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    two = optimize.search(ctx, top_k=5, method="optuna", max_trials=trials, workers=2,
                          storage=f"sqlite:///{d}/p.db", constants=c)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"--workers 2: wall {time.perf_counter() - wall:.1f} s, children CPU "
          f"{c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime:.1f} s, best {two.ranked[0].step.step_s:.4f} s")
    again = optimize.search(ctx, top_k=5, method="optuna", max_trials=trials, workers=2,
                            storage=f"sqlite:///{d}/q.db", constants=c)
    same = [(e.plan, e.step.step_s) for e in two.ranked] == [(e.plan, e.step.step_s) for e in again.ranked]
    print("deterministic:", same)


if __name__ == "__main__":
    main()
