"""Why one plan is modelled faster than another: the step terms that separate them.

Used where the search's top plan beats a published plan by more than ``EXPLAIN_GAP`` (15%): a gap that
large is either a real finding or a model artefact, and the reader needs the mechanism to judge which.
"""

from __future__ import annotations

from configurator.cost.step import StepReport

EXPLAIN_GAP = 0.15


def separating_terms(best: StepReport, other: StepReport, top: int = 2) -> list[tuple[str, float]]:
    """The step terms where ``other`` spends the most seconds more than ``best`` (plans of one job train
    the same tokens per step on the same GPUs, so step terms compare directly)."""
    b, o = dict(best.breakdown_s), dict(other.breakdown_s)
    return sorted(((k, o[k] - b[k]) for k in b), key=lambda kv: -kv[1])[:top]


def gap_line(best: StepReport, other: StepReport, label: str = "the published plan") -> str | None:
    """One line saying why ``best`` beats ``other`` when it does by more than ``EXPLAIN_GAP``; else None."""
    speedup = best.tokens_per_s_per_gpu / max(other.tokens_per_s_per_gpu, 1e-30) - 1.0
    if speedup <= EXPLAIN_GAP:
        return None
    parts = [f"{name} {d:+.2f} s" for name, d in separating_terms(best, other) if d > 0]
    return (f"{100 * speedup:.0f}% faster than {label} (modelled): it loses "
            + (", ".join(parts) if parts else "no single term") + f" per step ({other.step_s:.2f} s vs {best.step_s:.2f} s)")


__all__ = ["EXPLAIN_GAP", "gap_line", "separating_terms"]
