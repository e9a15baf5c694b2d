"""Memory headroom the plan search keeps free: ``plan --memory-margin GIB|PCT%``.

A search returns the argmax of (truth + model error): left alone it picks plans that sit at 79.6 of
79.65 GiB, exactly where the memory model's error decides whether the job runs. So the search keeps a
margin free on every GPU: a plan *fits with headroom* when its predicted peak is at most
``capacity - margin``. Plans that fit the GPU only without the margin are kept as **tight** options -
shown and marked, ranked after every plan with headroom, never first silently.

The margin is given in GiB (``8``, ``8GiB``) or as a percentage of the GPU's memory (``12%``). Its
default, recorded with its provenance in ``profiles/memory.json`` (``default_memory_margin_pct``), is the
larger of two figures from the validation data, rounded up to a whole percent: the p90 of |memory error| of
the validation report (``benchmarks/validation/summary.json``, ``memory.p90_abs_error_pct``: a plan whose
prediction is 90% likely to be no more than that fraction under the truth still fits), and the headroom at
which a plan that fills memory to the margin has the OOM risk the ranking allows (``ranking.DEFAULT_OOM_RISK``:
``1 - 1 / memory_headroom``, the memory band's 95th percentile over the model). Without the second, a search
that filled memory to the margin returned plans over the ranking's risk limit. ``tests/test_margin.py`` keeps
the recorded value equal to the larger figure rounded up.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from configurator.errors import InputError
from configurator.profiles import GIB


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryMargin:
    """Headroom kept free per GPU: an absolute amount or a fraction of the GPU's memory."""

    gib: float = 0.0
    fraction: float = 0.0
    source: str = ""
    """Where the value came from (shown in ``plan``'s header)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gib) and self.gib >= 0):
            raise InputError("memory_margin", self.gib, "must be a finite, non-negative GiB amount")
        if not (math.isfinite(self.fraction) and 0 <= self.fraction < 1):
            raise InputError("memory_margin", f"{100 * self.fraction:g}%", "must be a percentage in [0, 100)")

    def bytes_for(self, capacity_bytes: float) -> float:
        """The headroom in bytes on a GPU of ``capacity_bytes``."""
        return self.gib * GIB + self.fraction * capacity_bytes

    def describe(self) -> str:
        text = f"{self.gib:g} GiB" if self.gib else f"{100 * self.fraction:g}% of GPU memory"
        return text + (f" ({self.source})" if self.source else "")


def parse_margin(text: str | float | int | None, oom_risk: float | None = None) -> MemoryMargin:
    """``"12%"`` -> 12% of capacity; ``"8"`` / ``"8GiB"`` / ``8`` -> 8 GiB; None -> the default for ``oom_risk``
    (the ranking's limit; ``default_margin``)."""
    if text is None:
        return default_margin(oom_risk)
    if isinstance(text, bool):
        raise InputError("memory_margin", text, "must be GiB (e.g. 8) or a percentage (e.g. 12%)")
    if isinstance(text, (int, float)):
        return MemoryMargin(gib=float(text), source="given")
    value = text.strip()
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(%|gib|GiB|g|G)?", value)
    if not match:
        raise InputError("memory_margin", text, "must be GiB (e.g. 8) or a percentage (e.g. 12%)")
    number = float(match.group(1))
    if match.group(2) == "%":
        return MemoryMargin(fraction=number / 100, source="given")
    return MemoryMargin(gib=number, source="given")


def default_margin(oom_risk: float | None = None) -> MemoryMargin:
    """The margin recorded in ``profiles/memory.json`` (for the ranking's default 5% OOM-risk limit), or, for a
    stricter ``oom_risk`` (``plan --oom-risk``), the headroom that keeps a plan at the margin within it where that
    is larger (``ErrorModel.memory_headroom``, rounded up to a whole percent): a search that filled memory to a
    margin looser than the limit asks would return only plans the ranking then flags. Never below the recorded
    default, whose p90 |memory error| part holds whatever the risk."""
    from configurator.memory import memory_constants
    from configurator.ranking import DEFAULT_OOM_RISK

    entry = memory_constants()["default_memory_margin_pct"]
    pct = float(entry["value"])
    source = (f"default: {pct:g}%, the larger of the validation report's p90 |memory error| and the headroom for a "
              f"{100 * DEFAULT_OOM_RISK:g}% OOM risk")
    if oom_risk is not None and oom_risk < DEFAULT_OOM_RISK:
        from configurator.uncertainty import load_error_model

        # (no tags: the memory band weights every memory row alike, so its quantiles are the same for every
        # plan; tests/test_margin.py checks a plan at this margin against two plans' tags)
        headroom = load_error_model().memory_headroom({}, oom_risk)
        needed = math.ceil(100 * (1 - 1 / headroom) - 1e-9)
        if needed > pct:
            pct = float(needed)
            source = f"default for a {100 * oom_risk:g}% OOM risk: {pct:g}%, the headroom that keeps it"
    return MemoryMargin(fraction=pct / 100, source=source)


NO_MARGIN = MemoryMargin()


def fits_with_margin(peak_bytes: float, capacity_bytes: float, margin: MemoryMargin) -> bool:
    """Whether a predicted peak leaves the margin free."""
    return peak_bytes <= capacity_bytes - margin.bytes_for(capacity_bytes)


__all__ = ["NO_MARGIN", "MemoryMargin", "default_margin", "fits_with_margin", "parse_margin"]
