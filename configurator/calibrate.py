"""``configurator calibrate``: fit the cost model's named constants to measured runs.

The fit minimises the log error of predicted vs measured tokens/s per GPU over every row of a
runs CSV that has a measured throughput and that the model can predict (scipy's
``least_squares``, trust-region reflective, within each constant's physical bounds). Two guards
against fitting noise:

* a robust loss (``soft_l1`` with a 10% scale): rows that are wrong in their source (a
  mis-transcribed micro-batch, a model whose MLP the CSV cannot describe) pull like a 10% error,
  not like their full error;
* a physical prior: each constant also pays ``ROBUST_SCALE * (x - x_default) / prior_width`` (x on
  the fit's scale, log for positive constants; ``prior_width`` and its source per constant in
  ``constants.PARAMETERS``), kept quadratic under the robust loss. A constant one width from its
  physical value costs as much as one row off by the robust scale would under a squared loss,
  so a constant that the rows left in a fit barely inform (A100 flash attention and the per-step
  overhead when MosaicML's rows, nearly all the short-step A100 flash-attention rows, are held
  out) falls back to physics instead of absorbing another mechanism's error (``--prior weak``:
  the old uniform width 2.0 for every constant).

Constants are per GPU family and precision or per mechanism (``constants.PARAMETERS``), never per
row or per source. Overfitting shows in the cross-validation: for each source group the constants
are refitted without that group's rows and the group is predicted with them; the out-of-fold
errors are reported next to the in-sample ones. A source group is a publisher (all of NVIDIA's
NeMo/Megatron-Bridge/DGX-Cloud tables form one, all MosaicML tables another, ...), which is
stricter than leaving out one table while its siblings, measured the same way, stay in.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from configurator.cost.constants import PARAMETERS, CostConstants
from configurator.cost.step import StepInputs, evaluate, prepare
from configurator.runs import RunCase, read_runs
from configurator.validate import Prediction, pair_order, resolve_case, sweep_key, sweep_pair_indices

ROBUST_SCALE = 0.1
WEAK_PRIOR_WIDTH = 2.0
"""``--prior weak``: every constant's prior this wide (log scale: a factor e^2), the fit before the
physical priors (its old ``PRIOR_WEIGHT`` 0.05 = ROBUST_SCALE / 2.0)."""
PRIORS = ("physical", "weak")
PAIR_WEIGHT = 1.0
"""Weight of the within-sweep ranking residuals: for each pair of rows of one sweep measured more
than 5% apart, ``log(pred_i/pred_j) - log(meas_i/meas_j)`` (the difference of their log errors),
scaled by ``PAIR_WEIGHT / sqrt(rows in the sweep)`` so a long sweep does not outweigh the rest.
The search picks between plans, so the fit pays for getting their order wrong, not only for each
row's level."""
SOURCE_GROUPS: tuple[tuple[str, str], ...] = (
    ("mosaicml", "MosaicML llm-foundry"),
    ("nemo", "NVIDIA NeMo / Megatron-Bridge / DGX Cloud"),
    ("dgx cloud", "NVIDIA NeMo / Megatron-Bridge / DGX Cloud"),
    ("megatron-bridge", "NVIDIA NeMo / Megatron-Bridge / DGX Cloud"),
    ("torchtitan", "torchtitan"),
    ("bigscience", "BigScience"),
    ("narayanan", "Narayanan et al. 2021"),
    ("korthikanti", "Korthikanti et al. 2022"),
    ("megatron-moe", "Megatron-Core MoE"),
    ("megatron-core moe", "Megatron-Core MoE"),
)


BOUND_REASONS: dict[str, str] = {
    "gemm.half_dim": "lower bound: the loss of thin GEMMs across tiles is the wave model's (cost/waves.py: partly "
                     "filled last waves, split-K under one wave); within a tile the rows (layers of >= 1B-parameter "
                     "models, >= ~250 tokens per expert) show none, and 32 is the physical floor (a one-tile GEMM "
                     "cannot run faster).",
    "memory.hbm": "upper bound: the counted memory-bound traffic is an upper bound (Transformer Engine fuses norms, "
                  "casts, bias-activation and permutes into fewer passes than counted), so the fit takes the "
                  "achievable streaming bandwidth.",
    "link.scale_out": "upper bound: held there by the Megatron-Core MoE rows (session 7: at 0.85 instead of 0.97 "
                      "their summed squared log error grows 0.165 -> 0.246, while BigScience's falls 0.089 -> "
                      "0.080 and the rest barely move); in-network reduction (SHARP/NVLS) is not modelled, and "
                      "NCCL's PAT only for all-gather/reduce-scatter with one rank per node.",
    "link.alltoall": "bound: NCCL's all-to-all (Megatron's alltoall dispatcher, Ulysses CP) is informed only by rows "
                     "whose notes or recipe name that dispatcher (runs.py; the runs CSV has no dispatcher column), "
                     "among them over-predicted ones whose cause is not modelled (DGX Cloud's GB200 DeepSeek-V3 "
                     "r237/r238, GPT-OSS on GB200/GB300), so at a bound the fit stands in for them.",
    "attention.blackwell": "upper bound: few Blackwell rows, all NVIDIA recipes at 4K-8K with cuDNN attention; the "
                           "backward factor is shared with Hopper, so Blackwell's own attention takes the slack.",
    "gemm.blackwell.fp8": "upper bound: fp8 at the full 2x peak ratio over Blackwell's bf16 efficiency, which the fit "
                          "puts low; the fp8/bf16 speed-up stays within the hardware's ratio by construction.",
    "overhead.launch_s": "upper bound: the eager small-expert rows at micro-batch 1 (Qwen3-30B-A3B on B200, NeMo "
                         "25.11, r135: 16 local experts, router + preprocess graphed) want more host time per "
                         "layer than 40 us per launch gives, while the H100 mb1 row (r104) wants less; per-layer "
                         "Python work that does not scale with kernel count (hooks, token bookkeeping) is not "
                         "modelled, and the bound keeps the constant from standing in for it.",
    "overhead.microbatch_s": "upper bound: DeepSpeed's pipeline engine (BLOOM rows) pays more per micro-batch than "
                             "Megatron's schedule; one constant serves both runtimes.",
    "moe.expert_load_cv": "bound: few MoE rows ran learned routing (runs.py: most NVIDIA recipe rows and the "
                          "Megatron-MoE model zoo's H100 Qwen3-235B commands force-balance the router, DGX Cloud's "
                          "DeepSeek-V3 rows pad experts to capacity); Megatron-Core MoE's dropless Mixtral 8x7B row is "
                          "all that informs it, against the physical prior (constants.PARAMETERS: aux-loss MaxVio "
                          "~0.5-0.7 on 64 experts, cv ~0.2).",
    "attention.bwd_factor": "bound: flash-attention backward / forward time at the limit of the measured range.",
}
"""Why a fitted constant sits at a bound (the fit's report lists every constant within 1% of one,
with its reason here or 'no reason recorded', which the tests reject)."""


def at_bound(values: dict[str, float]) -> list[dict[str, Any]]:
    """Constants within 1% (of the range, on the fit's scale) of a bound, with the written reason."""
    out = []
    for p in PARAMETERS:
        v = values[p.name]
        if p.lower > 0:
            lo, hi, x = math.log(p.lower), math.log(p.upper), math.log(v)
        else:
            lo, hi, x = p.lower, p.upper, v
        if x <= lo + 0.01 * (hi - lo) or x >= hi - 0.01 * (hi - lo):
            out.append({"name": p.name, "value": round(v, 6),
                        "bound": "lower" if x <= lo + 0.01 * (hi - lo) else "upper",
                        "reason": BOUND_REASONS.get(p.name, "no reason recorded")})
    return out


def source_group(source: str) -> str:
    s = source.lower()
    for needle, group in SOURCE_GROUPS:
        if needle in s:
            return group
    return source


@dataclass(kw_only=True, slots=True)
class Sample:
    case: RunCase
    inputs: StepInputs
    measured_tokens_per_s_per_gpu: float
    group: str


def load_samples(runs: Path) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Rows usable for fitting, and (run_id, reason) for measured rows that are not."""
    samples, skipped = [], []
    for case in read_runs(runs):
        resolved, memory = resolve_case(case)
        pred = Prediction(case=resolved, memory=memory)
        measured = pred.measured_tokens_per_s_per_gpu if memory is not None else None
        if memory is None:
            if case.measured("measured_tokens_per_s_per_gpu") or case.measured("measured_step_s"):
                skipped.append((case.run_id, case.error))
            continue
        if measured is None or measured <= 0:
            continue
        assert resolved.model and resolved.cluster and resolved.job and resolved.plan
        inputs = prepare(resolved.model, resolved.cluster, resolved.job, resolved.plan, runtime=resolved.runtime)
        samples.append(Sample(case=resolved, inputs=inputs, measured_tokens_per_s_per_gpu=measured,
                              group=source_group(resolved.source)))
    return samples, skipped


# ----- parameter transform: log for strictly positive constants, linear for shares that may be 0 --
def _to_x(values: dict[str, float]) -> np.ndarray:
    return np.array([math.log(values[p.name]) if p.lower > 0 else values[p.name] for p in PARAMETERS])


def _from_x(x: np.ndarray) -> dict[str, float]:
    return {p.name: (math.exp(v) if p.lower > 0 else float(v)) for p, v in zip(PARAMETERS, x)}


def _bounds() -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([math.log(p.lower) if p.lower > 0 else p.lower for p in PARAMETERS])
    hi = np.array([math.log(p.upper) if p.lower > 0 else p.upper for p in PARAMETERS])
    return lo, hi


def log_errors(samples: list[Sample], constants: CostConstants) -> np.ndarray:
    """log(predicted / measured) per sample."""
    return np.array([math.log(evaluate(s.inputs, constants).tokens_per_s_per_gpu / s.measured_tokens_per_s_per_gpu)
                     for s in samples])


def prior_widths(prior: str = "physical") -> np.ndarray:
    """Each constant's prior width on the fit's scale (``ParamDef.prior_width``, or the weak one)."""
    if prior not in PRIORS:
        from configurator.errors import InputError
        raise InputError("prior", prior, f"must be one of {', '.join(PRIORS)}")
    return np.array([p.prior_width if prior == "physical" else WEAK_PRIOR_WIDTH for p in PARAMETERS])


def prior_residuals(x: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Residuals whose soft_l1 cost is exactly ``0.5 * (ROBUST_SCALE * (x - default) / width)^2``.

    least_squares applies the robust loss to every residual; a prior must stay Gaussian (its pull
    grows with the distance), so the residual ``r`` is chosen with ``rho(r^2/f^2) f^2 = p^2`` for
    ``p = ROBUST_SCALE * (x - default) / width``, i.e. ``r = f * sqrt((1 + p^2 / (2 f^2))^2 - 1)``."""
    defaults = _to_x({p.name: p.default for p in PARAMETERS})
    p = ROBUST_SCALE * (x - defaults) / widths
    f = ROBUST_SCALE
    return np.sign(p) * f * np.sqrt((1.0 + p * p / (2.0 * f * f)) ** 2 - 1.0)


def fit(samples: list[Sample], start: dict[str, float] | None = None, *,
        progress: Callable[[str], None] | None = None, tolerance: float = 1e-6,
        prior: str = "physical") -> tuple[CostConstants, Any]:
    """Least-squares fit of all constants on ``samples`` (module docstring)."""
    from scipy.optimize import least_squares

    defaults = _to_x({p.name: p.default for p in PARAMETERS})
    widths = prior_widths(prior)
    keys = [sweep_key(s.case) for s in samples]
    pairs = sweep_pair_indices(keys, [s.measured_tokens_per_s_per_gpu for s in samples],
                               plans=[s.case.plan for s in samples])
    sizes = {k: keys.count(k) for k in set(keys)}
    pi = np.array([i for i, _ in pairs], dtype=int)
    pj = np.array([j for _, j in pairs], dtype=int)
    pw = np.array([PAIR_WEIGHT / math.sqrt(sizes[keys[i]]) for i, _ in pairs])
    x0 = _to_x(start) if start else defaults.copy()
    lo, hi = _bounds()
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
    calls = [0]

    def residual(x: np.ndarray) -> np.ndarray:
        calls[0] += 1
        constants = CostConstants.from_dict(_from_x(x))
        data = log_errors(samples, constants)
        penalty = prior_residuals(x, widths)
        if len(pi):
            penalty = np.concatenate([pw * (data[pi] - data[pj]), penalty])
        if progress and calls[0] % 25 == 0:
            progress(f"{calls[0]} evaluations, median |log err| {np.median(np.abs(data)):.4f}")
        return np.concatenate([data, penalty])

    sol = least_squares(residual, x0, bounds=(lo, hi), loss="soft_l1", f_scale=ROBUST_SCALE,
                        diff_step=1e-3, x_scale=1.0, max_nfev=60 * len(PARAMETERS), xtol=tolerance, ftol=tolerance)
    return CostConstants.from_dict(_from_x(sol.x)), sol


def ranking_stats(samples: list[Sample], log_errs: np.ndarray) -> dict[str, Any]:
    """Error statistics plus within-sweep pair order and the MoE and dense rows' errors."""
    measured = [s.measured_tokens_per_s_per_gpu for s in samples]
    predicted = [m * math.exp(e) for m, e in zip(measured, log_errs)]
    n, right = pair_order([sweep_key(s.case) for s in samples], measured, predicted,
                          plans=[s.case.plan for s in samples])
    moe = np.array([e for s, e in zip(samples, log_errs) if s.case.model is not None and s.case.model.is_moe])
    out: dict[str, Any] = {**error_stats(log_errs), "pairs": n, "pairs_right": right,
                           "pairs_right_share": round(right / n, 4) if n else None}
    if len(moe):
        out["moe"] = error_stats(moe)
        dense = np.array([e for s, e in zip(samples, log_errs) if not (s.case.model is not None and s.case.model.is_moe)])
        if len(dense):  # a held-out group of MoE rows only (--cv-group "Megatron-Core MoE") has none
            out["dense"] = error_stats(dense)
    return out


def error_stats(log_errs: np.ndarray) -> dict[str, float]:
    """Absolute percentage errors of tokens/s from log errors."""
    ape = 100.0 * np.abs(np.exp(log_errs) - 1.0)
    return {"rows": int(len(ape)), "median_abs_error_pct": round(float(np.median(ape)), 2),
            "p90_abs_error_pct": round(float(np.percentile(ape, 90)), 2),
            "median_error_pct": round(float(np.median(100.0 * (np.exp(log_errs) - 1.0))), 2)}


@dataclass(frozen=True, kw_only=True, slots=True)
class CalibrationResult:
    constants: CostConstants
    in_sample: dict[str, float]
    cross_validated: dict[str, Any] | None
    rows: int
    skipped: tuple[tuple[str, str], ...]
    runs_path: str
    runs_sha256: str
    prior: str = "physical"

    def as_dict(self) -> dict[str, Any]:
        values = self.constants.as_dict()
        return {
            "about": "Cost-model constants fitted by `configurator calibrate` (configurator/calibrate.py) to the "
                     "measured tokens/s/GPU of a runs CSV. Per GPU family and precision or per mechanism; "
                     "never per row or source. Regenerate with the command under fit.command.",
            "constants": {p.name: round(values[p.name], 6) for p in PARAMETERS},
            "fit": {
                "command": f"configurator calibrate --runs {self.runs_path} --force"
                           + ("" if self.prior == "physical" else f" --prior {self.prior}"),
                "runs": self.runs_path, "runs_sha256": self.runs_sha256,
                "date": _dt.date.today().isoformat(), "rows": self.rows,
                "loss": f"soft_l1 on log(predicted/measured) and on within-sweep pair log ratios (weight "
                        f"{PAIR_WEIGHT}/sqrt(sweep rows)), scale {ROBUST_SCALE}; {self.prior} prior "
                        f"(ROBUST_SCALE x distance from the physical default / width)",
                "in_sample": self.in_sample,
                "cross_validated": self.cross_validated,
                "skipped": [{"run_id": r, "reason": why} for r, why in self.skipped],
            },
            "at_bound": at_bound(values),
            "parameters": [{"name": p.name, "value": round(values[p.name], 6), "default": p.default,
                            "lower": p.lower, "upper": p.upper, "meaning": p.doc} for p in PARAMETERS],
        }


def _fold(job: tuple[str, str, dict[str, float], str]) -> tuple[dict[str, float], str]:
    """Refit without one source group (run in a worker process)."""
    runs, group, start, prior = job
    samples, _ = load_samples(Path(runs))
    train = [s for s in samples if s.group != group]
    fitted, _ = fit(train, start=start, tolerance=1e-4, prior=prior)
    return fitted.as_dict(), group


def calibrate(runs: Path, *, cross_validate: bool = True, workers: int = 2,
              progress: Callable[[str], None] | None = None, prior: str = "physical",
              cv_group: str | None = None) -> CalibrationResult:
    """Fit on every row; with ``cross_validate``, refit once without each source group (or only
    without ``cv_group``, a quicker check of one group; the overall CV figures then cover its rows
    only) and predict the group left out."""
    from configurator.errors import InputError

    prior_widths(prior)
    samples, skipped = load_samples(runs)
    if not samples:
        raise InputError("runs", str(runs), "has no row with a measured throughput the model can predict")
    all_groups = sorted({s.group for s in samples})
    if cv_group is not None and cv_group not in all_groups:
        raise InputError("cv-group", cv_group, f"must be one of: {'; '.join(all_groups)}")
    say = progress or (lambda _msg: None)
    say(f"fitting {len(PARAMETERS)} constants to {len(samples)} rows ({prior} prior)")
    constants, _ = fit(samples, progress=progress, prior=prior)
    in_sample = ranking_stats(samples, log_errors(samples, constants))
    say(f"in-sample median |error| {in_sample['median_abs_error_pct']}%")
    cv: dict[str, Any] | None = None
    if cross_validate:
        groups = [cv_group] if cv_group is not None else all_groups
        say(f"cross-validation: {len(groups)} refits, one without each source group, {workers} at a time")
        jobs = [(str(runs), g, constants.as_dict(), prior) for g in groups]
        if workers > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                folds = pool.map(_fold, jobs)
        else:
            folds = [_fold(job) for job in jobs]
        out_of_fold = np.zeros(len(samples))
        by_group = []
        held: list[int] = []
        for g, (fold_values, _) in zip(groups, folds):
            test_idx = [i for i, s in enumerate(samples) if s.group == g]
            errs = log_errors([samples[i] for i in test_idx], CostConstants.from_dict(fold_values))
            out_of_fold[test_idx] = errs
            held += test_idx
            by_group.append({"group": g, **error_stats(errs)})
            say(f"  without {g}: {len(test_idx)} rows, median |error| {by_group[-1]['median_abs_error_pct']}%")
        method = "leave-one-source-group-out (a group is a publisher; see configurator/calibrate.py)"
        if cv_group is not None:
            method = f"one source group left out ({cv_group}); figures cover its rows only"
        held.sort()
        cv = {"method": method, **ranking_stats([samples[i] for i in held], out_of_fold[held]),
              "by_group": by_group}
    digest = hashlib.sha256(runs.read_bytes()).hexdigest()
    return CalibrationResult(constants=constants, in_sample=in_sample, cross_validated=cv, rows=len(samples),
                             skipped=tuple(skipped), runs_path=str(runs), runs_sha256=digest, prior=prior)


def write_calibration(result: CalibrationResult, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    tmp.replace(out)


__all__ = ["BOUND_REASONS", "CalibrationResult", "at_bound", "prior_residuals", "prior_widths", "Sample", "calibrate", "error_stats", "fit", "load_samples", "log_errors",
           "source_group", "write_calibration"]
