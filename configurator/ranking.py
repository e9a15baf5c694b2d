"""Ranking that survives the error band: a risk-aware order of the search's best plans, and ties.

The search ranks by the model's point estimate of the step time. A user buying a plan cares about what
it will *likely* deliver and whether it will run at all, so the k best are re-ordered (a post-pass, the
branch and bound is untouched):

* ``objective="p25"`` (default) orders by the 25th percentile of the throughput band — a plan whose
  mechanisms the validation runs measured badly (a wide band) yields to one almost as fast that they
  measured well; ``"mean"`` keeps the model's point estimate;
* a plan whose probability of running out of memory (``Band.oom_risk``, from the memory band) is above
  ``oom_risk`` cannot lead: it is listed after every plan under the limit, flagged;
* a plan whose p10-p90 throughput band overlaps the leader's is ``tied_with_best``: the data cannot say
  which of the two is faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.uncertainty import Band, band_for, risk_pct

OBJECTIVES = ("p25", "mean")
DEFAULT_OBJECTIVE = "p25"
DEFAULT_OOM_RISK = 0.05


@dataclass(frozen=True, kw_only=True, slots=True)
class RankedPlan:
    evaluated: Any
    """The search's ``Evaluated`` (plan, memory, step, why, placement)."""
    band: Band
    score: float
    """Tokens/s/GPU under the objective (p25 of the band, or the point estimate)."""
    over_oom_limit: bool
    tied_with_best: bool


def band_of(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, evaluated: Any) -> Band:
    e = evaluated
    return band_for(model, cluster, job, e.plan, e.memory.runtime, e.step.tokens_per_s_per_gpu,
                    e.memory.peak_bytes, e.memory.capacity_bytes)


def score(band: Band, objective: str) -> float:
    if objective == "p25":
        return band.tokens_per_s_per_gpu_p25
    if objective == "mean":
        return band.tokens_per_s_per_gpu
    raise ValueError(f"objective={objective!r}: must be one of {', '.join(OBJECTIVES)}")


def order_by_band(bands: Sequence[Band], objective: str = DEFAULT_OBJECTIVE,
                  oom_risk: float = DEFAULT_OOM_RISK, tight: Sequence[bool] = ()) -> list[tuple[int, float, bool, bool]]:
    """(index, score, over the OOM limit, tied with the leader) of each band, in the risk-aware order:
    plans that keep the memory margin (not ``tight``) first, then those under the OOM limit, then by score.
    Stable: equal scores keep the search's order."""
    is_tight = list(tight) or [False] * len(bands)
    keyed = sorted(range(len(bands)), key=lambda i: (is_tight[i], bands[i].oom_risk > oom_risk,
                                                     -score(bands[i], objective)))
    if not keyed:
        return []
    leader = bands[keyed[0]]
    return [(i, score(bands[i], objective), bands[i].oom_risk > oom_risk,
             n > 0 and bands[i].overlaps(leader)) for n, i in enumerate(keyed)]


def rank_plans(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, ranked: Sequence[Any], *,
               objective: str = DEFAULT_OBJECTIVE, oom_risk: float = DEFAULT_OOM_RISK,
               top: int | None = None) -> list[RankedPlan]:
    """The search's plans re-ordered by ``objective`` under the OOM-risk limit (module docstring)."""
    bands = [band_of(model, cluster, job, e) for e in ranked]
    order = order_by_band(bands, objective, oom_risk, [bool(getattr(e, "tight", False)) for e in ranked])[:top]
    return [RankedPlan(evaluated=ranked[i], band=bands[i], score=s, over_oom_limit=over, tied_with_best=tied)
            for i, s, over, tied in order]


RANKING_POOL = 10
"""Fewest plans (the search's fastest by the model's step) the ranking chooses the leader from, whatever ``top``
is. With ``2 * top`` alone, ``plan --top 1`` ranked only the two fastest plans: on Llama-3-70B/64 H100 at seq
8192 both had an OOM risk of 5.3% (over the 5% limit), so one of them was named best where ``--top 5`` named a
plan at 0%. Every ``top`` up to 5 now ranks the same ten; a larger ``top`` ranks ``2 * top`` and may find a plan
under the limit further down, which then leads."""


def ranking_pool(top: int) -> int:
    """Plans the search keeps for the ranking to choose ``top`` from: twice ``top``, at least ``RANKING_POOL``."""
    return max(2 * top, RANKING_POOL)


def vs_best(r: RankedPlan, best: RankedPlan, oom_risk: float, objective: str) -> str:
    """Why ``r`` is not first, in words."""
    if r is best:
        return "best"
    if r.over_oom_limit and not best.over_oom_limit:
        return f"OOM risk {risk_pct(r.band.oom_risk)} is above the {100 * oom_risk:g}% limit"
    slower = best.evaluated.step.tokens_per_s_per_gpu / r.evaluated.step.tokens_per_s_per_gpu - 1.0
    if slower < 0:
        text = (f"{-100 * slower:.1f}% faster by the model, but its {objective} under the error band is lower "
                f"({r.score:,.0f} vs {best.score:,.0f})")
    else:
        best_terms = dict(best.evaluated.step.breakdown_s)
        delta, term = max((v - best_terms[k], k) for k, v in r.evaluated.step.breakdown_s)
        text = (f"{100 * (r.evaluated.step.step_s / best.evaluated.step.step_s - 1):.1f}% slower, mostly "
                f"{term.replace('_', ' ')} (+{delta:.3f} s)")
    return text


__all__ = ["DEFAULT_OBJECTIVE", "DEFAULT_OOM_RISK", "OBJECTIVES", "RANKING_POOL", "RankedPlan", "band_of",
           "order_by_band", "rank_plans", "ranking_pool", "score", "vs_best"]
