"""``configurator validate``: predict every row of a runs CSV and score the predictions.

Memory is compared in the unit each source measured (``mem_kind``):

* ``peak-allocated`` (torchtitan's logged peak): the peak stage's allocated tensors,
  ``torch.cuda.max_memory_allocated``;
* ``peak`` (NeMo's ``peak_memory_usage``): allocated plus allocator fragmentation, i.e. reserved;
* ``nvidia-smi`` (BigScience): reserved plus CUDA context and NCCL buffers - everything on the device.

Whether a plan fits always uses the last (device total against the GPU's memory).

Throughput is compared as tokens/s per GPU: the row's ``measured_tokens_per_s_per_gpu``, or, where
only ``measured_step_s`` is given, ``global_batch * seq_len / (step_s * num_gpus)``. The step-time
model runs with the row's framework (``runtime``) and the calibrated constants of
``profiles/calibration.json``. Rows we cannot model carry their reason in ``error``.

Sweeps: rows from one source on one model, system, sequence length and precision that vary the
plan (at least three rows with distinct plans) and whose measured throughputs spread by more than
``SWEEP_MIN_SPREAD`` (twice the sources' +-5% run-to-run noise; below that the measured order is
itself noise). Within each, the Spearman rank correlation of predicted against measured throughput
says whether the model orders plans as reality does; ``concordance`` is the share of row pairs
whose measured throughputs differ by more than 10% that the model orders the same way.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from configurator.cost.constants import CostConstants
from configurator.cost.step import StepReport, estimate_step
from configurator.memory import MemoryReport, estimate_memory
from configurator.profiles import GIB
from configurator.recompute import MEGATRON_RUNTIMES, selective_module_ladder
from configurator.runs import RunCase, read_runs
from configurator.specs.plan import RECOMPUTES, Plan

OUTPUT_COLUMNS = ("run_id", "predicted_tokens_per_s_per_gpu", "predicted_step_s", "predicted_peak_mem_gib",
                  "predicted_fits", "error", "measured_tokens_per_s_per_gpu", "throughput_error_pct", "mem_kind",
                  "measured_mem_gib", "predicted_mem_as_measured_gib", "mem_error_pct", "runtime", "assumptions",
                  "predicted_tokens_per_s_per_gpu_p10", "predicted_tokens_per_s_per_gpu_p90",
                  "predicted_peak_mem_gib_p90")


@dataclass(frozen=True, kw_only=True, slots=True)
class Prediction:
    case: RunCase
    memory: MemoryReport | None
    step: StepReport | None = None

    @property
    def measured_tokens_per_s_per_gpu(self) -> float | None:
        tokens = self.case.measured("measured_tokens_per_s_per_gpu")
        if tokens is not None:
            return tokens
        step = self.case.measured("measured_step_s")
        if step and self.case.job is not None and self.case.plan is not None:
            return self.case.job.tokens_per_step / step / self.case.plan.world_size
        return None

    @property
    def throughput_error_pct(self) -> float | None:
        measured = self.measured_tokens_per_s_per_gpu
        if measured is None or self.step is None or measured <= 0:
            return None
        return 100.0 * (self.step.tokens_per_s_per_gpu - measured) / measured

    @property
    def mem_as_measured_bytes(self) -> float | None:
        if self.memory is None:
            return None
        peak = self.memory.peak
        kind = self.case.mem_measure
        if kind == "allocated":
            return max(s.allocated_bytes for s in self.memory.stages)
        if kind == "reserved":
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
        step = self.step
        tput = self.measured_tokens_per_s_per_gpu
        terr = self.throughput_error_pct
        return {
            "run_id": self.case.run_id,
            "predicted_tokens_per_s_per_gpu": f"{step.tokens_per_s_per_gpu:.1f}" if step else "",
            "predicted_step_s": f"{step.step_s:.4f}" if step else "",
            "predicted_peak_mem_gib": f"{mem.peak_bytes / GIB:.2f}" if mem else "",
            "predicted_fits": ("1" if mem.fits else "0") if mem else "",
            "error": self.case.error,
            "measured_tokens_per_s_per_gpu": "" if tput is None else f"{tput:.1f}",
            "throughput_error_pct": "" if terr is None else f"{terr:.1f}",
            "mem_kind": self.case.mem_kind,
            "measured_mem_gib": "" if measured is None else f"{measured:.2f}",
            "predicted_mem_as_measured_gib": "" if mem is None else f"{self.mem_as_measured_bytes / GIB:.2f}",  # type: ignore[operator]
            "mem_error_pct": "" if err is None else f"{err:.1f}",
            "runtime": self.case.runtime,
            "assumptions": "; ".join(self.case.assumptions),
            **self.band_columns(),
        }

    def band_columns(self) -> dict[str, str]:
        """The error-band columns of ``validate --out`` (``uncertainty.py``; empty where not predicted)."""
        from configurator.uncertainty import band_for

        mem, step, c = self.memory, self.step, self.case
        if mem is None or step is None or not (c.model and c.cluster and c.job and c.plan):
            return {"predicted_tokens_per_s_per_gpu_p10": "", "predicted_tokens_per_s_per_gpu_p90": "",
                    "predicted_peak_mem_gib_p90": ""}
        band = band_for(c.model, c.cluster, c.job, c.plan, c.runtime, step.tokens_per_s_per_gpu, mem.peak_bytes,
                        mem.capacity_bytes)
        return {"predicted_tokens_per_s_per_gpu_p10": f"{band.tokens_per_s_per_gpu_p10:.1f}",
                "predicted_tokens_per_s_per_gpu_p90": f"{band.tokens_per_s_per_gpu_p90:.1f}",
                "predicted_peak_mem_gib_p90": f"{band.peak_gib_p90:.2f}"}


PARTIAL_RECOMPUTE_RUNTIMES = ("megatron", "nemo")
"""Frameworks whose recipes recompute only some layers (Megatron --recompute-num-layers)."""


def recompute_ladder(case: RunCase) -> list[Plan]:
    """Recompute settings from least to most: none, selective, then (Megatron/NeMo) full recompute of
    1, 2, ... layers per pipeline chunk, then all layers."""
    assert case.model and case.plan
    plans = [replace(case.plan, recompute=r, recompute_num_layers=0) for r in RECOMPUTES]
    if case.runtime in PARTIAL_RECOMPUTE_RUNTIMES:
        chunk = min(n for n in case.plan.virtual_stage_layers(case.model) if n > 0)
        partial = [replace(case.plan, recompute="full", recompute_num_layers=k) for k in range(1, chunk)]
        plans = plans[:2] + partial + plans[2:]
    return plans


def _describe(plan: Plan) -> str:
    what = plan.recompute + (f" ({plan.recompute_num_layers} layers per chunk)" if plan.recompute_num_layers else "")
    if plan.recompute_modules:
        what += " (" + ",".join(plan.recompute_modules) + ")"
    return what


def _least_recompute(case: RunCase, base: Plan) -> tuple[Plan, MemoryReport]:
    """The least recompute under which ``base`` fits (the last of the ladder if none does)."""
    assert case.model and case.cluster and case.job
    memory = None
    plan = base
    for plan in recompute_ladder(replace(case, plan=base)):
        memory = estimate_memory(case.model, case.cluster, case.job, plan, runtime=case.memory_layout)
        if memory.fits:
            break
    assert memory is not None
    return plan, memory


def _least_modules(case: RunCase, base: Plan) -> tuple[Plan, MemoryReport]:
    """Selective recompute whose module list is not stated: the first list of Megatron's that fits."""
    assert case.model and case.cluster and case.job
    memory = None
    plan = base
    for modules in selective_module_ladder(case.model, case.job.precision):
        plan = replace(base, recompute_modules=modules)
        memory = estimate_memory(case.model, case.cluster, case.job, plan, runtime=case.memory_layout)
        if memory.fits:
            break
    assert memory is not None
    return plan, memory


def resolve_case(case: RunCase) -> tuple[RunCase, MemoryReport | None]:
    """The row with its unstated memory choices taken as the least that fits, each one said in
    ``assumptions``: recompute (none, selective, partial, full); for Megatron-Core rows, the
    ``--recompute-modules`` of a "selective" row (the CSV has no column for them), and Megatron-FSDP
    when the default distributed optimizer cannot hold the row at all."""
    if case.error:
        return case, None
    assert case.model and case.cluster and case.job and case.plan
    memory = estimate_memory(case.model, case.cluster, case.job, case.plan, runtime=case.memory_layout)
    notes: list[str] = []
    plan = case.plan
    megatron = case.runtime in MEGATRON_RUNTIMES
    if case.recompute_unknown:
        plan, memory = _least_recompute(case, case.plan)
        notes.append(f"recompute not stated: {_describe(plan)} is the least that fits" if memory.fits
                     else "recompute not stated: does not fit even with full recompute")
    elif megatron and plan.recompute == "selective" and not memory.fits:
        plan, memory = _least_modules(case, plan)
        if memory.fits:
            notes.append(f"recompute modules not stated: {','.join(plan.recompute_modules) or 'core_attn'} "
                         "is the least list that fits")
    if megatron and case.sharding_unknown and not memory.fits:
        fsdp = replace(plan, sharding="zero3")
        plan2, memory2 = (_least_recompute(case, replace(fsdp, recompute="none", recompute_num_layers=0,
                                                          recompute_modules=()))
                          if case.recompute_unknown else (fsdp, estimate_memory(
                              case.model, case.cluster, case.job, fsdp, runtime=case.memory_layout)))
        if memory2.fits:
            plan, memory = plan2, memory2
            notes.append("sharding not stated and the distributed optimizer cannot fit: Megatron-FSDP (zero3)"
                         + (f" with {_describe(plan)}" if case.recompute_unknown else ""))
    if notes:
        case = replace(case, plan=plan, assumptions=case.assumptions + tuple(notes))
    return case, memory


def predict(case: RunCase, constants: CostConstants | None = None) -> Prediction:
    """Memory and step time of one row."""
    case, memory = resolve_case(case)
    if memory is None:
        return Prediction(case=case, memory=None)
    assert case.model and case.cluster and case.job and case.plan
    step = estimate_step(case.model, case.cluster, case.job, case.plan, runtime=case.runtime,
                         constants=constants)
    return Prediction(case=case, memory=memory, step=step)


SWEEP_MIN_SPREAD = 1.10


@dataclass(frozen=True, kw_only=True, slots=True)
class Sweep:
    source: str
    model: str
    run_ids: tuple[str, ...]
    spearman: float
    concordance: float
    """Share of clearly different pairs (measured > 10% apart) ordered correctly."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ThroughputSummary:
    """Tokens/s/GPU: predicted against measured."""

    measured_rows: int
    """Rows with a measured throughput (tokens/s/GPU or step time)."""
    predicted_rows: int
    """Of those, rows the model predicted (the rest carry their reason in ``error``)."""
    median_abs_error_pct: float | None
    p90_abs_error_pct: float | None
    median_error_pct: float | None
    """Signed: > 0 means the model is optimistic."""
    by_source: tuple[tuple[str, int, float, float], ...]
    """(source, rows, median |error| %, median signed error %)."""
    sweeps: tuple[Sweep, ...]
    pairs: tuple[int, int] = (0, 0)
    """Within-sweep pairs more than 5% apart, and how many of them the model orders right."""

    def as_dict(self) -> dict[str, Any]:
        spearmans = [s.spearman for s in self.sweeps]
        n, right = self.pairs
        return {
            "pairs_over_5pct": {"pairs": n, "ordered_right": right,
                                "share": round(right / n, 4) if n else None},
            "measured_rows": self.measured_rows, "predicted_rows": self.predicted_rows,
            "median_abs_error_pct": self.median_abs_error_pct, "p90_abs_error_pct": self.p90_abs_error_pct,
            "median_error_pct": self.median_error_pct,
            "by_source": [{"source": s, "rows": n, "median_abs_error_pct": a, "median_error_pct": e}
                          for s, n, a, e in self.by_source],
            "sweeps": [{"source": s.source, "model": s.model, "rows": list(s.run_ids),
                        "spearman": round(s.spearman, 3), "concordance": round(s.concordance, 3)}
                       for s in self.sweeps],
            "sweeps_min_spearman": round(min(spearmans), 3) if spearmans else None,
            "sweeps_below_0_9": sum(1 for x in spearmans if x < 0.9),
        }


def sweeps(predictions: list[Prediction]) -> tuple[Sweep, ...]:
    """Plan sweeps (module docstring) with the rank correlation of predicted vs measured."""
    from scipy.stats import spearmanr

    groups: dict[tuple[str, ...], list[Prediction]] = {}
    for p in predictions:
        if p.step is None or p.measured_tokens_per_s_per_gpu is None:
            continue
        r = p.case.row
        key = (p.case.source, r["model"].strip(), r["system"].strip(), r["seq_len"].strip(),
               r["precision"].strip() or "bf16")
        groups.setdefault(key, []).append(p)
    out = []
    for key, members in sorted(groups.items()):
        plans = {m.case.plan for m in members}
        measured = [m.measured_tokens_per_s_per_gpu for m in members]
        if len(members) < 3 or len(plans) < 3 or max(measured) < SWEEP_MIN_SPREAD * min(measured):  # type: ignore[type-var, operator]
            continue
        predicted = [m.step.tokens_per_s_per_gpu for m in members]  # type: ignore[union-attr]
        rho = float(spearmanr(predicted, measured).statistic)
        pairs = right = 0
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                a, b = measured[i], measured[j]
                if max(a, b) > 1.10 * min(a, b):  # type: ignore[type-var, operator]
                    pairs += 1
                    right += (a > b) == (predicted[i] > predicted[j])  # type: ignore[operator]
        out.append(Sweep(source=key[0], model=key[1], run_ids=tuple(m.case.run_id for m in members),
                         spearman=rho if rho == rho else 0.0, concordance=right / pairs if pairs else 1.0))
    return tuple(out)


PAIR_MIN_GAP = 1.05
"""Within-sweep pairs count when their measured throughputs differ by more than 5% (the sources'
run-to-run noise is about that)."""


def sweep_key(case: RunCase) -> tuple[str, ...]:
    """Rows with one key differ only in the plan: same source (release), model, system, sequence
    length and precision."""
    r = case.row
    return (case.source, r["model"].strip(), r["system"].strip(), r["seq_len"].strip(),
            r["precision"].strip() or "bf16")


def sweep_pair_indices(keys: list[tuple[str, ...]], measured: list[float],
                       min_gap: float = PAIR_MIN_GAP, plans: list[object] | None = None) -> list[tuple[int, int]]:
    """Index pairs (i, j) of rows in one sweep whose measured throughputs differ by more than
    ``min_gap``, the faster one first. With ``plans``, pairs of rows with the same plan (repeated
    runs: their difference is noise no model can order) are left out."""
    by_key: dict[tuple[str, ...], list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    out = []
    for members in by_key.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                i, j = members[a], members[b]
                if plans is not None and plans[i] == plans[j]:
                    continue
                if measured[i] < measured[j]:
                    i, j = j, i
                if measured[i] > min_gap * measured[j]:
                    out.append((i, j))
    return out


def pair_order(keys: list[tuple[str, ...]], measured: list[float], predicted: list[float],
               min_gap: float = PAIR_MIN_GAP, plans: list[object] | None = None) -> tuple[int, int]:
    """(pairs of different plans more than ``min_gap`` apart, of those ordered right by the prediction)."""
    pairs = sweep_pair_indices(keys, measured, min_gap, plans)
    return len(pairs), sum(1 for i, j in pairs if predicted[i] > predicted[j])


def summarize_throughput(predictions: list[Prediction]) -> ThroughputSummary:
    measured = [p for p in predictions if p.measured_tokens_per_s_per_gpu is not None]
    errors = [(p.case.source, p.throughput_error_pct) for p in measured if p.throughput_error_pct is not None]
    abs_errors = [abs(e) for _, e in errors if e is not None]
    by_source: dict[str, list[float]] = {}
    for source, e in errors:
        by_source.setdefault(source, []).append(e)  # type: ignore[arg-type]
    return ThroughputSummary(
        measured_rows=len(measured), predicted_rows=len(errors),
        median_abs_error_pct=round(statistics.median(abs_errors), 2) if abs_errors else None,
        p90_abs_error_pct=round(_percentile(abs_errors, 0.9), 2) if abs_errors else None,
        median_error_pct=round(statistics.median([e for _, e in errors]), 2) if errors else None,  # type: ignore[type-var]
        by_source=tuple(sorted((s, len(v), round(statistics.median([abs(x) for x in v]), 2),
                                round(statistics.median(v), 2)) for s, v in by_source.items())),
        sweeps=sweeps(predictions), pairs=_pairs(predictions))


def _pairs(predictions: list[Prediction]) -> tuple[int, int]:
    done = [p for p in predictions if p.step is not None and p.measured_tokens_per_s_per_gpu is not None]
    return pair_order([sweep_key(p.case) for p in done], [p.measured_tokens_per_s_per_gpu for p in done],  # type: ignore[misc]
                      [p.step.tokens_per_s_per_gpu for p in done],  # type: ignore[union-attr]
                      plans=[p.case.plan for p in done])


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
    throughput: ThroughputSummary

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "predicted": self.predicted,
            "throughput": self.throughput.as_dict(),
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
                                            for s, v in by_source.items())),
        throughput=summarize_throughput(predictions))


def validate_runs(runs: Path, constants: CostConstants | None = None) -> list[Prediction]:
    return [predict(case, constants) for case in read_runs(runs)]


def write_predictions(predictions: list[Prediction], out: Path) -> None:
    """Write to a temporary file first so a failure never leaves a half-written ``out``."""
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=OUTPUT_COLUMNS)
        writer.writeheader()
        for p in predictions:
            writer.writerow(p.row())
    tmp.replace(out)
