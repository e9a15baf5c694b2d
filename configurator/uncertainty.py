"""Error bands: how far to trust a predicted throughput and peak memory.

The step-time and memory models are checked against published runs; their out-of-sample errors are the
only honest measure of how wrong a new prediction may be. ``profiles/error_bands.json`` stores, for every
validation row, the log residual ``log(measured / predicted)`` — for throughput the prediction made with
constants fitted *without the row's publisher* (``configurator calibrate``'s leave-one-publisher-out folds),
for memory the memory model's own prediction (it has no fitted constants) — together with the mechanisms
the row's plan uses (``plan_tags``: GPU family, precision, dense or MoE, expert parallelism across nodes,
context parallelism, ZeRO-3/FSDP, offload, runtime, scale band).

A new plan's band is a *weighted* quantile of those residuals: a row counts ``LAMBDA ** k`` where ``k`` is
the number of tags on which it differs from the plan (a categorical product kernel, Aitchison & Aitken
1976). Rows that use what the plan uses dominate; where few do, the many others still carry weight, so the
band shrinks toward the overall distribution instead of resting on two rows. ``LAMBDA`` is chosen per
quantity by leave-one-out pinball loss at the 10th and 90th percentiles with the one-standard-error rule
(``choose_lambda``).

One kernel weight serves all groups, so where a group's errors are heavier-tailed than the rest (MoE rows:
mostly small residuals and a few very large ones) its band comes out too narrow. Each group of rows sharing a
tag value, with at least ``MIN_GROUP_ROWS`` rows, therefore gets a widening in log units: the 80th
percentile of its rows' leave-one-out conformity scores ``max(p10 - r, r - p90)`` (conformalized quantile
regression, Romano, Patterson & Candes 2019, applied per group as in Mondrian conformal prediction, Vovk et
al. 2005), floored at zero. A plan's p10 and p90 move out by the largest widening among its tags' groups; a
band never narrows below the kernel's. p25/p50 and ``oom_risk`` stay the kernel's.

``predicted x exp(q)`` gives the band: throughput p10/p25/p90 and peak memory p10/p90 (the memory residual
is measured in each source's unit — allocated, reserved or device total — and applied as a ratio to the
device total), and ``oom_risk`` — the weighted share of memory residuals that would put this plan's peak
above the GPU's memory. ``coverage`` rebuilds every row's band from the *other* rows (leave-one-out) and
counts how often the measured value falls inside p10-p90: the target is 80% +- 5%.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from configurator.profiles import GIB, profiles_dir
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan

TAG_NAMES = ("gpu_family", "precision", "moe", "ep_across_nodes", "cp", "zero3", "offload", "runtime", "scale")
"""The mechanisms a residual is conditioned on (module docstring)."""
SCALE_BANDS = ((64, "<=64"), (512, "65-512"), (4096, "513-4096"), (10 ** 9, ">4096"))
"""GPU-count bands: one node pod, a few racks, a large cluster, a frontier run."""
QUANTILES = (0.10, 0.25, 0.50, 0.90)
LAMBDA_GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
TARGET_COVERAGE = 0.80
COVERAGE_TOLERANCE = 0.05
MIN_GROUP_ROWS = 20
"""Fewest rows a tag group needs for its own widening: below that its 80th-percentile score is noise
(binomial s.d. of an 80% share over 20 rows is 9 points)."""
GROUP_TOLERANCE = 0.10
"""How far below 80% a group of ``MIN_GROUP_ROWS`` or more rows may cover (about one binomial s.d. at 20 rows)."""
FSDP_RUNTIMES = ("fsdp", "llm-foundry")


def scale_band(num_gpus: int) -> str:
    return next(name for top, name in SCALE_BANDS if num_gpus <= top)


def plan_tags(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan, runtime: str) -> dict[str, str]:
    """The mechanisms ``plan`` uses, as the categorical tags the residuals are grouped by."""
    moe = model.num_experts > 0
    return {
        "gpu_family": cluster.gpu.family,
        "precision": job.precision,
        "moe": "moe" if moe else "dense",
        "ep_across_nodes": "yes" if moe and plan.ep * plan.etp > cluster.gpus_per_node else "no",
        "cp": "yes" if plan.cp > 1 else "no",
        "zero3": "yes" if plan.sharding in ("zero3", "hsdp") or runtime in FSDP_RUNTIMES else "no",
        "offload": "yes" if plan.offload > 0 else "no",
        "runtime": runtime,
        "scale": scale_band(plan.world_size),
    }


@dataclass(frozen=True, kw_only=True, slots=True)
class ResidualTable:
    """Out-of-sample log residuals ``log(measured / predicted)`` with each row's tags."""

    run_ids: tuple[str, ...]
    groups: tuple[str, ...]
    """Publisher of each row (the cross-validation fold it was left out in)."""
    tags: tuple[dict[str, str], ...]
    log_residuals: np.ndarray
    lam: float
    """The kernel's weight per differing tag (module docstring)."""
    widening: dict[tuple[str, str], float] = field(default_factory=dict)
    """Log-unit widening of p10/p90 per (tag, value) group with enough rows (module docstring)."""

    def __len__(self) -> int:
        return len(self.run_ids)

    def weights(self, tags: dict[str, str], exclude: int | None = None) -> np.ndarray:
        mismatches = np.array([sum(row.get(k) != tags.get(k) for k in TAG_NAMES) for row in self.tags], dtype=float)
        w = self.lam ** mismatches
        if exclude is not None:
            w[exclude] = 0.0
        return w

    def quantiles(self, tags: dict[str, str], qs: tuple[float, ...] = QUANTILES,
                  exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Weighted quantiles of the log residuals for ``tags``, and the weights used."""
        w = self.weights(tags, exclude)
        return weighted_quantiles(self.log_residuals, w, qs), w

    def widening_for(self, tags: dict[str, str]) -> float:
        """How far (log units) a plan's p10 and p90 move out: the largest widening among its tags' groups."""
        return max((self.widening.get((k, tags.get(k, ""))) or 0.0 for k in TAG_NAMES), default=0.0)


def effective_rows(weights: np.ndarray) -> float:
    """Kish's effective sample size of a weighted sample."""
    return float(weights.sum() ** 2 / (weights ** 2).sum())


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles of a weighted sample (midpoint plotting positions, linear interpolation)."""
    order = np.argsort(values)
    v, w = values[order], weights[order]
    keep = w > 0
    v, w = v[keep], w[keep]
    cum = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(qs, cum, v)


def exceed_share(values: np.ndarray, weights: np.ndarray, threshold: float) -> float:
    """Weighted share of ``values`` above ``threshold`` (the same plotting positions as the quantiles)."""
    order = np.argsort(values)
    v, w = values[order], weights[order]
    keep = w > 0
    v, w = v[keep], w[keep]
    cum = (np.cumsum(w) - 0.5 * w) / w.sum()
    if threshold <= v[0]:
        return 1.0 - float(cum[0]) if threshold == v[0] else 1.0
    if threshold >= v[-1]:
        return 0.0
    return float(1.0 - np.interp(threshold, v, cum))


@dataclass(frozen=True, kw_only=True, slots=True)
class Band:
    """One plan's predicted throughput and peak memory with their out-of-sample error bands."""

    tokens_per_s_per_gpu: float
    tokens_per_s_per_gpu_p10: float
    tokens_per_s_per_gpu_p25: float
    tokens_per_s_per_gpu_p90: float
    peak_gib: float
    peak_gib_p10: float
    peak_gib_p90: float
    capacity_gib: float
    oom_risk: float
    """Probability (0..1) that the real peak exceeds the GPU's memory, from the memory residuals."""
    effective_rows: float
    """Kish's effective sample size of the throughput residuals' weights: how many rows the band rests on."""
    tags: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    """Where the plan uses something no validation row measured: the claim is out of the data's reach."""

    def overlaps(self, other: Band) -> bool:
        """Whether the p10-p90 throughput bands of two plans overlap (neither is better beyond the error)."""
        return (self.tokens_per_s_per_gpu_p10 <= other.tokens_per_s_per_gpu_p90
                and other.tokens_per_s_per_gpu_p10 <= self.tokens_per_s_per_gpu_p90)


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorModel:
    time: ResidualTable
    memory: ResidualTable
    provenance: dict[str, Any]

    def band(self, tags: dict[str, str], tokens_per_s_per_gpu: float, peak_gib: float, capacity_gib: float) -> Band:
        tq, tw = self.time.quantiles(tags)
        mq, mw = self.memory.quantiles(tags)
        dt, dm = self.time.widening_for(tags), self.memory.widening_for(tags)
        tq[0], tq[3], mq[0], mq[3] = tq[0] - dt, tq[3] + dt, mq[0] - dm, mq[3] + dm
        oom = exceed_share(self.memory.log_residuals, mw, math.log(capacity_gib / peak_gib)) if peak_gib > 0 else 0.0
        warnings = tuple(f"no validation row measured {name}={value}: the band for it is borrowed from other "
                         f"mechanisms' errors" for name, value in tags.items()
                         if not any(row.get(name) == value for row in self.time.tags))
        return Band(tokens_per_s_per_gpu=tokens_per_s_per_gpu,
                    tokens_per_s_per_gpu_p10=tokens_per_s_per_gpu * math.exp(tq[0]),
                    tokens_per_s_per_gpu_p25=tokens_per_s_per_gpu * math.exp(tq[1]),
                    tokens_per_s_per_gpu_p90=tokens_per_s_per_gpu * math.exp(tq[3]),
                    peak_gib=peak_gib, peak_gib_p10=peak_gib * math.exp(mq[0]),
                    peak_gib_p90=peak_gib * math.exp(mq[3]), capacity_gib=capacity_gib, oom_risk=oom,
                    effective_rows=effective_rows(tw), tags=dict(tags), warnings=warnings)


    def memory_headroom(self, tags: dict[str, str], oom_risk: float) -> float:
        """The factor a plan's predicted peak must stay below capacity by for an OOM risk of at most
        ``oom_risk``: ``peak * factor <= capacity`` (the memory band's ``1 - oom_risk`` quantile). A memory
        margin for the search derived from the validation data rather than picked."""
        q, _ = self.memory.quantiles(tags, (1.0 - oom_risk,))
        return float(math.exp(q[0]))


def _table(data: dict[str, Any], key: str) -> ResidualTable:
    rows = data[key]["rows"]
    return ResidualTable(run_ids=tuple(r["run_id"] for r in rows), groups=tuple(r["group"] for r in rows),
                         tags=tuple({k: r["tags"][k] for k in TAG_NAMES} for r in rows),
                         log_residuals=np.array([r["log_residual"] for r in rows], dtype=float),
                         lam=float(data[key]["lambda"]),
                         widening={(g["tag"], g["value"]): float(g["log_widening"])
                                   for g in data[key].get("group_widening", [])})


def error_bands_path() -> Path:
    return profiles_dir() / "error_bands.json"


def load_error_model_file(path: Path) -> ErrorModel:
    data = json.loads(path.read_text())
    return ErrorModel(time=_table(data, "time"), memory=_table(data, "memory"), provenance=data["provenance"])


@lru_cache(maxsize=1)
def load_error_model() -> ErrorModel:
    """The committed error model (``profiles/error_bands.json``)."""
    return load_error_model_file(error_bands_path())


def band_for(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan, runtime: str,
             tokens_per_s_per_gpu: float, peak_bytes: float, capacity_bytes: float) -> Band:
    tags = plan_tags(model, cluster, job, plan, runtime)
    return load_error_model().band(tags, tokens_per_s_per_gpu, peak_bytes / GIB, capacity_bytes / GIB)


# ----- leave-one-out coverage and the choice of the kernel weight ----------------------------------
def loo_quantiles(table: ResidualTable, qs: tuple[float, ...]) -> np.ndarray:
    """Every row's quantiles from all the other rows (rows x quantiles)."""
    return np.array([table.quantiles(table.tags[i], qs, exclude=i)[0] for i in range(len(table))])


def pinball_losses(residuals: np.ndarray, predicted: np.ndarray, q: float) -> np.ndarray:
    """Per-row pinball (quantile) loss of ``predicted`` as the ``q`` quantile: a proper score for quantiles."""
    diff = residuals - predicted
    return np.maximum(q * diff, (q - 1) * diff)


def choose_lambda(table: ResidualTable) -> float:
    """The kernel weight by leave-one-out pinball loss at the band's two ends, with the one-standard-error
    rule (Breiman et al. 1984; Hastie, Tibshirani & Friedman, ESL 7.10): the most shrinkage (largest
    weight) whose loss is within one standard error of the least loss. A small table whose groups differ
    by no more than noise is pooled instead of split."""
    scores = []
    for lam in LAMBDA_GRID:
        t = ResidualTable(run_ids=table.run_ids, groups=table.groups, tags=table.tags,
                          log_residuals=table.log_residuals, lam=lam)
        q = loo_quantiles(t, (0.10, 0.90))
        losses = pinball_losses(t.log_residuals, q[:, 0], 0.10) + pinball_losses(t.log_residuals, q[:, 1], 0.90)
        scores.append((lam, float(losses.mean()), float(losses.std() / math.sqrt(len(losses)))))
    _, best, se = min(scores, key=lambda s: s[1])
    return max(lam for lam, loss, _ in scores if loss <= best + se)


@dataclass(frozen=True, kw_only=True, slots=True)
class Coverage:
    rows: int
    inside: int
    by_group: tuple[tuple[str, str, int, int], ...]
    """(tag, value, rows, inside p10-p90)."""
    by_publisher: tuple[tuple[str, int, int], ...]

    @property
    def share(self) -> float:
        return self.inside / self.rows if self.rows else float("nan")

    def ok(self) -> bool:
        return abs(self.share - TARGET_COVERAGE) <= COVERAGE_TOLERANCE + 1e-12

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "inside_p10_p90": self.inside, "coverage_pct": round(100 * self.share, 1),
                "target_pct": [100 * (TARGET_COVERAGE - COVERAGE_TOLERANCE), 100 * (TARGET_COVERAGE + COVERAGE_TOLERANCE)],
                "by_group": [{"tag": t, "value": v, "rows": n, "coverage_pct": round(100 * k / n, 1)}
                             for t, v, n, k in self.by_group],
                "by_publisher": [{"publisher": g, "rows": n, "coverage_pct": round(100 * k / n, 1)}
                                 for g, n, k in self.by_publisher]}


def conformity_scores(table: ResidualTable, q: np.ndarray | None = None) -> np.ndarray:
    """Each row's distance outside its leave-one-out kernel band, ``max(p10 - r, r - p90)`` (negative inside)."""
    q = loo_quantiles(table, (0.10, 0.90)) if q is None else q
    return np.maximum(q[:, 0] - table.log_residuals, table.log_residuals - q[:, 1])


def _group_members(table: ResidualTable) -> dict[tuple[str, str], np.ndarray]:
    members: dict[tuple[str, str], list[int]] = {}
    for i, tags in enumerate(table.tags):
        for name in TAG_NAMES:
            members.setdefault((name, tags[name]), []).append(i)
    return {g: np.array(ix) for g, ix in members.items()}


def _widening(scores: np.ndarray) -> float:
    """The shift that puts 80% of a group's scores inside (same plotting positions as the bands), >= 0."""
    return max(0.0, float(weighted_quantiles(scores, np.ones(len(scores)), (TARGET_COVERAGE,))[0]))


def group_widening(table: ResidualTable, scores: np.ndarray | None = None) -> dict[tuple[str, str], float]:
    """Per (tag, value) group with at least ``MIN_GROUP_ROWS`` rows, the log-unit widening of p10/p90 that
    brings its leave-one-out coverage to 80% (module docstring); groups needing none are left out."""
    scores = conformity_scores(table) if scores is None else scores
    out = {g: _widening(scores[ix]) for g, ix in _group_members(table).items() if len(ix) >= MIN_GROUP_ROWS}
    return {g: round(d, 6) for g, d in sorted(out.items()) if d > 0.0}


def loo_bands(table: ResidualTable) -> np.ndarray:
    """Every row's widened p10/p90 (rows x 2) from the other rows alone: the kernel quantiles without the row,
    and the group widenings from the other rows' scores (a group counts if it has ``MIN_GROUP_ROWS`` other
    rows). The other rows' scores come from bands that saw this row: one row among the dozens each rests on."""
    q = loo_quantiles(table, (0.10, 0.90))
    scores = conformity_scores(table, q)
    members = [(g, ix) for g, ix in _group_members(table).items() if len(ix) - 1 >= MIN_GROUP_ROWS]
    shift = np.zeros(len(table))
    for _, ix in members:
        for i in ix:
            shift[i] = max(shift[i], _widening(scores[ix[ix != i]]))
    return np.column_stack([q[:, 0] - shift, q[:, 1] + shift])


def coverage(table: ResidualTable) -> Coverage:
    """Share of rows whose residual lies inside the widened p10-p90 band built from the other rows."""
    q = loo_bands(table)
    inside = (table.log_residuals >= q[:, 0]) & (table.log_residuals <= q[:, 1])
    groups: dict[tuple[str, str], list[bool]] = {}
    pubs: dict[str, list[bool]] = {}
    for i, tags in enumerate(table.tags):
        for name in TAG_NAMES:
            groups.setdefault((name, tags[name]), []).append(bool(inside[i]))
        pubs.setdefault(table.groups[i], []).append(bool(inside[i]))
    return Coverage(rows=len(table), inside=int(inside.sum()),
                    by_group=tuple((t, v, len(x), sum(x)) for (t, v), x in sorted(groups.items())),
                    by_publisher=tuple((g, len(x), sum(x)) for g, x in sorted(pubs.items())))


def risk_pct(risk: float) -> str:
    """An OOM risk as a percentage, with a decimal below 10% so a risk just over the ranking's 5% limit does not
    read as 5%."""
    return f"{100 * risk:.1f}%" if risk < 0.1 else f"{100 * risk:.0f}%"


__all__ = ["Band", "Coverage", "ErrorModel", "MIN_GROUP_ROWS", "ResidualTable", "TAG_NAMES", "band_for",
           "choose_lambda", "coverage", "error_bands_path", "group_widening", "loo_bands", "load_error_model",
           "load_error_model_file", "plan_tags", "risk_pct", "scale_band"]


def coverage_markdown(model: ErrorModel | None = None) -> list[str]:
    """The validation report's section on the error bands: leave-one-out coverage overall and per group."""
    model = model or load_error_model()
    cov = {"time": coverage(model.time), "memory": coverage(model.memory)}
    prov = model.provenance
    lines = ["## Error bands (`profiles/error_bands.json`)", "",
             f"Every prediction carries a p10-p90 band built from the out-of-sample residuals of these runs "
             f"(configurator/uncertainty.py; regenerate with `{prov.get('command', 'configurator bands')}`, "
             f"{prov.get('date', '')}). Coverage: each row's band rebuilt from the *other* rows (leave-one-out) "
             f"and the share of rows whose measured value falls inside; target 80% +- 5%, checked in CI "
             "(tests/test_uncertainty.py).", ""]
    for name, c in cov.items():
        table = model.time if name == "time" else model.memory
        lines.append(f"- **{'Throughput' if name == 'time' else 'Peak memory'}**: {100 * c.share:.1f}% of {c.rows} "
                     f"rows inside p10-p90 (kernel weight per differing tag {table.lam:g}; p10/p90 widened for "
                     f"{len(table.widening)} tag groups of {MIN_GROUP_ROWS}+ rows whose errors are heavier-tailed: "
                     + (", ".join(f"{t}={v} {100 * (math.exp(d) - 1):.1f}%" for (t, v), d in table.widening.items())
                        or "none") + ").")
    lines.append("")
    for name, c in cov.items():
        lines += [f"### {'Throughput' if name == 'time' else 'Peak memory'} coverage by group", "",
                  "| tag | value | rows | inside p10-p90 % |", "|---|---|---:|---:|"]
        lines += [f"| {t} | {v} | {n} | {100 * k / n:.1f} |" for t, v, n, k in c.by_group]
        lines += [f"| publisher | {g} | {n} | {100 * k / n:.1f} |" for g, n, k in c.by_publisher]
        lines.append("")
    return lines
