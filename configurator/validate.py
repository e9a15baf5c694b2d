"""``configurator validate``: predict every row of a runs CSV and score the predictions.

Memory is compared in the unit each source measured (``mem_kind``):

* ``peak-allocated`` (torchtitan's logged peak): the peak stage's allocated tensors,
  ``torch.cuda.max_memory_allocated``;
* ``peak`` (NeMo's ``peak_memory_usage``): allocated plus allocator fragmentation, i.e. reserved;
* ``nvidia-smi`` (BigScience): reserved plus CUDA context and NCCL buffers - everything on the device.

Whether a plan fits always uses the last (device total against the GPU's memory). Throughput
columns stay empty until the step-time model exists; rows we cannot model carry their reason in
``error``.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from configurator.memory import MemoryReport, estimate_memory
from configurator.profiles import GIB
from configurator.runs import RunCase, read_runs
from configurator.specs.plan import RECOMPUTES

OUTPUT_COLUMNS = ("run_id", "predicted_tokens_per_s_per_gpu", "predicted_step_s", "predicted_peak_mem_gib",
                  "predicted_fits", "error", "mem_kind", "measured_mem_gib", "predicted_mem_as_measured_gib",
                  "mem_error_pct", "runtime", "assumptions")


@dataclass(frozen=True, kw_only=True, slots=True)
class Prediction:
    case: RunCase
    memory: MemoryReport | None

    @property
    def mem_as_measured_bytes(self) -> float | None:
        if self.memory is None:
            return None
        peak = self.memory.peak
        kind = self.case.mem_kind
        if kind == "peak-allocated":
            return max(s.allocated_bytes for s in self.memory.stages)
        if kind == "peak":
            return max(s.reserved_bytes for s in self.memory.stages)
        return peak.total_bytes

    @property
    def mem_error_pct(self) -> float | None:
        measured = self.case.measured("measured_mem_gib")
        predicted = self.mem_as_measured_bytes
        if measured is None or predicted is None:
            return None
        return 100.0 * (predicted / GIB - measured) / measured

    def row(self) -> dict[str, Any]:
        mem = self.memory
        err = self.mem_error_pct
        measured = self.case.measured("measured_mem_gib")
        return {
            "run_id": self.case.run_id,
            "predicted_tokens_per_s_per_gpu": "",
            "predicted_step_s": "",
            "predicted_peak_mem_gib": f"{mem.peak_bytes / GIB:.2f}" if mem else "",
            "predicted_fits": ("1" if mem.fits else "0") if mem else "",
            "error": self.case.error,
            "mem_kind": self.case.mem_kind,
            "measured_mem_gib": "" if measured is None else f"{measured:.2f}",
            "predicted_mem_as_measured_gib": "" if mem is None else f"{self.mem_as_measured_bytes / GIB:.2f}",  # type: ignore[operator]
            "mem_error_pct": "" if err is None else f"{err:.1f}",
            "runtime": self.case.runtime,
            "assumptions": "; ".join(self.case.assumptions),
        }


def predict(case: RunCase) -> Prediction:
    """Estimate one row; an unknown recompute setting becomes the least recompute that fits."""
    if case.error:
        return Prediction(case=case, memory=None)
    assert case.model and case.cluster and case.job and case.plan
    memory = estimate_memory(case.model, case.cluster, case.job, case.plan, runtime=case.runtime)
    if case.recompute_unknown:
        for recompute in RECOMPUTES:
            plan = replace(case.plan, recompute=recompute)
            memory = estimate_memory(case.model, case.cluster, case.job, plan, runtime=case.runtime)
            if memory.fits:
                break
        note = (f"recompute not stated: {plan.recompute} is the least that fits" if memory.fits
                else "recompute not stated: does not fit even with full recompute")
        case = replace(case, plan=plan, assumptions=case.assumptions + (note,))
    return Prediction(case=case, memory=memory)


@dataclass(frozen=True, kw_only=True, slots=True)
class ValidationSummary:
    rows: int
    predicted: int
    memory_rows: int
    memory_median_abs_error_pct: float | None
    memory_p90_abs_error_pct: float | None
    oom_rows: int
    oom_predicted_not_fit: int
    ran_rows: int
    ran_predicted_fit: int
    misfits: tuple[str, ...]
    """run_ids whose fit/no-fit prediction is wrong."""
    recompute_inferred: int
    """Rows whose recompute was not stated and was taken as the least that fits."""
    memory_error_by_source: tuple[tuple[str, int, float], ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "predicted": self.predicted,
            "memory": {"rows": self.memory_rows,
                       "median_abs_error_pct": self.memory_median_abs_error_pct,
                       "p90_abs_error_pct": self.memory_p90_abs_error_pct,
                       "by_source": [{"source": s, "rows": n, "median_abs_error_pct": e}
                                     for s, n, e in self.memory_error_by_source]},
            "fit": {"oom_rows": self.oom_rows, "oom_predicted_not_fit": self.oom_predicted_not_fit,
                    "ran_rows": self.ran_rows, "ran_predicted_fit": self.ran_predicted_fit,
                    "wrong": list(self.misfits), "recompute_inferred_rows": self.recompute_inferred},
        }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(predictions: list[Prediction]) -> ValidationSummary:
    errors = [(p.case.source, abs(p.mem_error_pct)) for p in predictions if p.mem_error_pct is not None]
    abs_errors = [e for _, e in errors]
    by_source: dict[str, list[float]] = {}
    for source, e in errors:
        by_source.setdefault(source, []).append(e)
    modelled = [p for p in predictions if p.memory is not None]
    oom = [p for p in modelled if p.case.oom]
    ran = [p for p in modelled if not p.case.oom and p.case.row.get("oom", "").strip() == "0"]
    misfits = tuple(p.case.run_id for p in oom if p.memory.fits) + \
        tuple(p.case.run_id for p in ran if not p.memory.fits)  # type: ignore[union-attr]
    return ValidationSummary(
        rows=len(predictions), predicted=len(modelled), memory_rows=len(abs_errors),
        memory_median_abs_error_pct=round(statistics.median(abs_errors), 2) if abs_errors else None,
        memory_p90_abs_error_pct=round(_percentile(abs_errors, 0.9), 2) if abs_errors else None,
        oom_rows=len(oom), oom_predicted_not_fit=sum(1 for p in oom if not p.memory.fits),  # type: ignore[union-attr]
        ran_rows=len(ran), ran_predicted_fit=sum(1 for p in ran if p.memory.fits),  # type: ignore[union-attr]
        misfits=misfits,
        recompute_inferred=sum(1 for p in modelled if p.case.recompute_unknown),
        memory_error_by_source=tuple(sorted((s, len(v), round(statistics.median(v), 2))
                                            for s, v in by_source.items())))


def validate_runs(runs: Path) -> list[Prediction]:
    return [predict(case) for case in read_runs(runs)]


def write_predictions(predictions: list[Prediction], out: Path) -> None:
    """Write to a temporary file first so a failure never leaves a half-written ``out``."""
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=OUTPUT_COLUMNS)
        writer.writeheader()
        for p in predictions:
            writer.writerow(p.row())
    tmp.replace(out)
