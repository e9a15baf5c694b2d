"""The Optuna search's warm start takes structures as the exhaustive search does, under the same bounds
(``resolve.fits_nowhere``, ``bound.options_floor``, the full-recompute bound, ``resolve.costly_terms``,
``resolve.may_keep_margin``), not a looser copy of them: alone (no sampled trials) it makes the same memory checks,
resolutions and evaluations as that search and ends with its ranking."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from configurator import JobSpec, load_cluster, load_model
from configurator.cost import CostConstants
from configurator.margin import parse_margin
from configurator.search import optimize
from configurator.search.optimize import search
from configurator.search.space import SearchContext

COUNTED = ("fits_nowhere", "resolve_least", "costly_terms", "may_keep_margin", "resolve", "resolve_full_recompute",
           "evaluate")
"""The calls counted in ``optimize``: the structure-level skips and bounds, the memory estimates and resolutions, and
the step evaluations."""


def _counting(monkeypatch: pytest.MonkeyPatch, counts: Counter[str]) -> None:
    def wrap(name: str, f: Callable[..., object]) -> Callable[..., object]:
        def counted(*args: object, **kwargs: object) -> object:
            counts[name] += 1
            return f(*args, **kwargs)
        return counted
    for name in COUNTED:
        monkeypatch.setattr(optimize, name, wrap(name, getattr(optimize, name)))


def _ranking(result: optimize.SearchResult) -> list[tuple]:
    return [(e.plan, round(e.step.step_s, 9), e.tight) for e in result.ranked]


@pytest.mark.parametrize("model, gpus, margin", [
    ("qwen3-30b-a3b", 16, None),  # 632 structures; some fit nowhere, most need their memory forms' bounds
    ("mixtral-8x7b", 8, "60%"),  # every plan tight: structures that cannot keep the margin are skipped unresolved
])
def test_warm_start_alone_does_the_exhaustive_searchs_work(monkeypatch: pytest.MonkeyPatch, model: str, gpus: int,
                                                           margin: str | None) -> None:
    ctx = SearchContext(model=load_model(model), cluster=load_cluster("dgx-h100", num_gpus=gpus),
                        job=JobSpec(global_batch=64, seq_len=4096),
                        **({} if margin is None else {"memory_margin": parse_margin(margin)}))
    constants = CostConstants.defaults()
    exhaustive_calls: Counter[str] = Counter()
    warm_calls: Counter[str] = Counter()
    with monkeypatch.context() as m:
        _counting(m, exhaustive_calls)
        exhaustive = search(ctx, top_k=3, method="exhaustive", constants=constants)
    with monkeypatch.context() as m:
        _counting(m, warm_calls)
        m.setattr(optimize, "OPTUNA_WARM_RUN", 10**9)  # no sampled trial while the warm start lasts
        warm = search(ctx, top_k=3, method="optuna", constants=constants)
    assert "exhaustive optimum" in warm.notes[0]  # (proved, or every structure tried: all tight at 60%)
    assert _ranking(warm) == _ranking(exhaustive)
    assert exhaustive_calls["fits_nowhere"] and exhaustive_calls["costly_terms"]
    assert warm_calls == exhaustive_calls


def test_sampled_trials_use_the_same_bounds() -> None:
    """With sampled trials (1 in 4), a structure drawn is worked out under the same bounds: the study resolves few
    more structures than the exhaustive search (before these bounds, Optuna fully resolved 1,237 structures of
    DeepSeek-V3/64 GB200 against the exhaustive search's 85)."""
    ctx = SearchContext(model=load_model("qwen3-30b-a3b"), cluster=load_cluster("dgx-h100", num_gpus=16),
                        job=JobSpec(global_batch=64, seq_len=4096))
    constants = CostConstants.defaults()
    exhaustive = search(ctx, top_k=3, method="exhaustive", constants=constants)
    study = search(ctx, top_k=3, method="optuna", seed=0, constants=constants)
    note = study.notes[0]

    def count(before: str) -> int:
        return int(note.split(before)[0].rsplit(" ", 1)[1].lstrip("("))

    sampled = count(" trials,") - count(" of them the warm start's")
    assert sampled > 0 and "proof" in note
    resolved = count(" structure splits resolved")
    exhaustive_resolved = int(exhaustive.notes[0].split(" structures needed a memory resolution")[0].rsplit(" ", 3)[1])
    assert exhaustive_resolved <= resolved <= exhaustive_resolved + 2 * sampled  # (two splits at most per trial)
    assert _ranking(study) == _ranking(exhaustive)


def test_no_sampled_trial_after_the_warm_starts_proof(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the warm start has proved the optimum the study ends: with no sampled turn while the warm start lasts,
    every trial is the warm start's (one sampled trial ran after the proof before 2026-12-01)."""
    ctx = SearchContext(model=load_model("qwen3-30b-a3b"), cluster=load_cluster("dgx-h100", num_gpus=16),
                        job=JobSpec(global_batch=64, seq_len=4096))
    monkeypatch.setattr(optimize, "OPTUNA_WARM_RUN", 10**9)  # no sampled turn while the warm start lasts
    result = search(ctx, top_k=3, method="optuna", constants=CostConstants.defaults())
    note = result.notes[0]
    trials = int(note.split(" trials,")[0].rsplit(" ", 1)[1])
    warm = int(note.split(" of them the warm start's")[0].rsplit("(", 1)[1])
    assert "proof" in note and trials == warm, note
    assert result.complete  # (the proof: the ranking is the exhaustive optimum)
    capped = search(ctx, top_k=3, method="optuna", constants=CostConstants.defaults(), max_trials=3)
    assert "trial cap" in capped.notes[0] and not capped.complete
