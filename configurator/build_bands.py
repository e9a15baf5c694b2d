"""``configurator bands``: regenerate ``profiles/error_bands.json`` from a runs CSV and the current models.

Throughput residuals are out-of-sample: the cost model's constants are refitted once without each
publisher (``calibrate.fit``, the folds ``calibrate --cv`` reports) and each row is predicted with the fold
that left its publisher out. That refit is the slow part (minutes per fold); ``--folds FILE`` reuses the
fold constants stored in an earlier ``error_bands.json`` when only the memory model or the runs' tags
changed. Memory residuals use the memory model as is (it has no fitted constants). Each row keeps its
mechanism tags (``uncertainty.plan_tags``), so a band — and the leave-one-out coverage check in the tests —
is rebuilt from this table alone in milliseconds.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from configurator.calibrate import Sample, fit, load_samples, source_group
from configurator.cost.constants import CostConstants, calibration_path, load_calibration
from configurator.profiles import GIB, profiles_dir
from configurator.runs import read_runs
from configurator.uncertainty import (MIN_GROUP_ROWS, TAG_NAMES, ResidualTable, choose_lambda, coverage,
                                      group_widening, plan_tags)
from configurator.validate import Prediction, resolve_case


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def _refit(job: tuple[str, str, dict[str, float]]) -> tuple[str, dict[str, float]]:
    """One fold: the constants refitted without publisher ``group`` (run in a worker process)."""
    runs, group, start = job
    samples, _ = load_samples(Path(runs))
    fitted, _ = fit([s for s in samples if s.group != group], start=start, tolerance=1e-4)
    return group, fitted.as_dict()


def fold_constants(runs: Path, groups: list[str], start: CostConstants, *, workers: int = 1,
                   progress: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
    """Constants refitted without each publisher (the folds of ``calibrate --cv``)."""
    say = progress or (lambda _m: None)
    say(f"refitting the cost constants without each of {len(groups)} publishers, {workers} at a time")
    jobs = [(str(runs), g, start.as_dict()) for g in groups]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            return dict(pool.map(_refit, jobs))
    return dict(_refit(j) for j in jobs)


def time_rows(samples: list[Sample], folds: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    from configurator.cost.step import evaluate

    rows = []
    for s in samples:
        c = s.case
        assert c.model and c.cluster and c.job and c.plan
        predicted = evaluate(s.inputs, CostConstants.from_dict(folds[s.group])).tokens_per_s_per_gpu
        rows.append({"run_id": c.run_id, "group": s.group,
                     "tags": plan_tags(c.model, c.cluster, c.job, c.plan, c.runtime),
                     "predicted_tokens_per_s_per_gpu": round(predicted, 3),
                     "measured_tokens_per_s_per_gpu": round(s.measured_tokens_per_s_per_gpu, 3),
                     "log_residual": round(math.log(s.measured_tokens_per_s_per_gpu / predicted), 6)})
    return rows


def memory_rows(runs: Path) -> list[dict[str, Any]]:
    rows = []
    for case in read_runs(runs):
        resolved, memory = resolve_case(case)
        measured = resolved.measured("measured_mem_gib")
        if memory is None or measured is None or measured <= 0:
            continue
        predicted = Prediction(case=resolved, memory=memory).mem_as_measured_bytes
        assert predicted is not None and resolved.model and resolved.cluster and resolved.job and resolved.plan
        rows.append({"run_id": resolved.run_id, "group": source_group(resolved.source),
                     "tags": plan_tags(resolved.model, resolved.cluster, resolved.job, resolved.plan, resolved.runtime),
                     "mem_kind": resolved.mem_kind, "predicted_gib": round(predicted / GIB, 3),
                     "measured_gib": measured, "log_residual": round(math.log(measured * GIB / predicted), 6)})
    return rows


def _section(rows: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    if len(rows) < 3:
        from configurator.errors import InputError
        raise InputError("runs", f"{len(rows)} rows", f"too few to build the {name} band "
                                                      "(at least 3 rows with a measured value)")
    table = ResidualTable(run_ids=tuple(r["run_id"] for r in rows), groups=tuple(r["group"] for r in rows),
                          tags=tuple(r["tags"] for r in rows),
                          log_residuals=np.array([r["log_residual"] for r in rows]), lam=1.0)
    lam = choose_lambda(table)
    table = ResidualTable(run_ids=table.run_ids, groups=table.groups, tags=table.tags,
                          log_residuals=table.log_residuals, lam=lam)
    widening = [{"tag": k, "value": v, "rows": sum(r["tags"][k] == v for r in rows), "log_widening": d}
                for (k, v), d in group_widening(table).items()]
    return {"residual": what, "lambda": lam, "min_group_rows": MIN_GROUP_ROWS, "group_widening": widening,
            "coverage_loo": coverage(table).as_dict(), "rows": rows}


def build(runs: Path, *, folds: dict[str, dict[str, float]] | None = None, workers: int = 1,
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The error-band data (module docstring) as the JSON object written to ``profiles/error_bands.json``."""
    samples, _ = load_samples(runs)
    groups = sorted({s.group for s in samples})
    reused = folds is not None
    if folds is None:
        folds = fold_constants(runs, groups, load_calibration(), workers=workers, progress=progress)
    missing = [g for g in groups if g not in folds]
    if missing:
        from configurator.errors import InputError
        raise InputError("folds", missing[0], "has no fold constants in the --folds file")
    t_rows = time_rows(samples, folds)
    m_rows = memory_rows(runs)
    return {
        "about": "Out-of-sample residuals of the step-time and memory models with each row's mechanism tags; "
                 "configurator/uncertainty.py turns them into p10-p90 bands. Regenerate with provenance.command "
                 "after any change to the models, the calibration or the runs.",
        "provenance": {
            "command": f"configurator bands --runs {runs} --force",
            "date": _dt.date.today().isoformat(), "runs": str(runs), "runs_sha256": _sha(runs),
            "calibration_sha256": _sha(calibration_path()),
            "memory_profile_sha256": _sha(profiles_dir() / "memory.json"),
            "cost_profile_sha256": _sha(profiles_dir() / "cost.json"),
            "folds": ("reused from an earlier file (--folds)" if reused else
                      "refitted now: calibrate.fit without each publisher, started from profiles/calibration.json"),
            "tags": list(TAG_NAMES),
        },
        "time": {**_section(t_rows, "throughput", "log(measured / predicted) tokens/s/GPU, predicted with the fold that left "
                                    "the row's publisher out"), "fold_constants": folds},
        "memory": _section(m_rows, "memory", "log(measured / predicted) memory in the source's unit (mem_kind); the "
                                   "memory model has no fitted constants"),
    }


def read_folds(path: Path) -> dict[str, dict[str, float]]:
    data = json.loads(path.read_text())
    if "time" in data:
        return data["time"]["fold_constants"]
    return data["folds"]


def write(data: dict[str, Any], out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out)


__all__ = ["build", "fold_constants", "memory_rows", "read_folds", "time_rows", "write"]
