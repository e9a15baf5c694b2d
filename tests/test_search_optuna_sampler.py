"""The structure sampler of the Optuna search (``search/structure_sampler.py``): TPE's rule for one categorical axis,
drawing only choices under which an untried structure remains, on Optuna's public sampler API."""

from __future__ import annotations

import optuna
import pytest

from configurator import JobSpec, load_cluster, load_model
from configurator.cost import CostConstants
from configurator.search.optimize import search
from configurator.search.space import SearchContext
from configurator.search.structure_sampler import N_STARTUP_TRIALS, StructureSampler, n_good

CHOICES = ("a", "b", "c", "d")
DIST = optuna.distributions.CategoricalDistribution(CHOICES)


def study_with(values: dict[str, list[float]], sampler: StructureSampler) -> optuna.Study:
    """A study whose finished trials set the axis ``x`` to each choice with the given values."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler)
    for choice, vs in values.items():
        for v in vs:
            study.add_trial(optuna.trial.create_trial(params={"x": choice}, distributions={"x": DIST}, value=v))
    return study


def draw(study: optuna.Study) -> str:
    trial = study.ask()
    x = trial.suggest_categorical("x", CHOICES)
    study.tell(trial, 0.5)
    return x  # type: ignore[return-value]


def test_good_share_is_optunas_default_gamma() -> None:
    # min(ceil(0.1 n), 25): the best tenth, at most 25 trials.
    assert [n_good(n) for n in (1, 10, 11, 30, 250, 251, 5000)] == [1, 1, 2, 3, 25, 25, 25]


def test_draws_the_choice_whose_trials_are_good() -> None:
    # 30 trials: "b" three times at 0.0 (the 3 best: n_good(30) = 3), the others nine times each at 1.0 or more.
    # l(b) = (3 + 1/4) / (3 + 1) = 0.81, l(other) = 0.0625; g(b) = (1/4) / 28, g(other) = 9.25 / 28: b's l/g is ~100x
    # the others', and 24 candidates drawn from l miss b with probability 0.1875^24 < 1e-17.
    values = {"a": [1.0 + i for i in range(9)], "b": [0.0] * 3, "c": [2.0] * 9, "d": [3.0] * 9}
    study = study_with(values, StructureSampler(seed=0))
    assert draw(study) == "b"


def test_draws_only_open_choices() -> None:
    # "b" is the good choice, but no untried structure is left under it: the draw is among the open ones only.
    values = {"a": [1.0 + i for i in range(9)], "b": [0.0] * 3, "c": [2.0] * 9, "d": [3.0] * 9}
    study = study_with(values, StructureSampler(seed=0, open_choices=lambda _n, cs: [c in ("c", "d") for c in cs]))
    assert {draw(study) for _ in range(20)} <= {"c", "d"}
    # During the startup trials too (uniform among the open choices).
    fresh = study_with({}, StructureSampler(seed=1, open_choices=lambda _n, cs: [c == "d" for c in cs]))
    assert {draw(fresh) for _ in range(N_STARTUP_TRIALS)} == {"d"}


def test_nothing_open_means_every_choice_is() -> None:
    study = study_with({}, StructureSampler(seed=2, open_choices=lambda _n, cs: [False] * len(cs)))
    assert {draw(study) for _ in range(N_STARTUP_TRIALS)} <= set(CHOICES)


def test_same_seed_same_draws() -> None:
    values = {"a": [1.0, 2.0, 0.5], "b": [0.7, 0.1], "c": [0.9] * 4, "d": [0.3, 4.0]}
    study_a, study_b = study_with(values, StructureSampler(seed=5)), study_with(values, StructureSampler(seed=5))
    assert [draw(study_a) for _ in range(15)] == [draw(study_b) for _ in range(15)]


def test_only_categorical_axes() -> None:
    study = optuna.create_study(sampler=StructureSampler(seed=0))
    trial = study.ask()
    with pytest.raises(ValueError, match="categorical"):
        trial.suggest_float("lr", 0.1, 1.0)


def test_every_optuna_trial_tries_a_new_structure() -> None:
    """Each trial, warm or sampled, is a structure neither costed nor answered by its bound before (measured with
    Optuna's TPE on the same search: 20 of its 120 trials drew a structure already tried)."""
    ctx = SearchContext(model=load_model("mixtral-8x7b"), cluster=load_cluster("dgx-h100", num_gpus=16),
                        job=JobSpec(global_batch=64, seq_len=4096))
    # (22 trials: the warm start proves the optimum after 25 since Megatron-FSDP offloads nothing (session 21), after
    # 28 since it reduces in bf16 (session 20), 34 before, and about 60 before the end-of-step bound took the
    # backward and forward windows apart)
    result = search(ctx, top_k=2, method="optuna", seed=1, max_trials=22, constants=CostConstants.defaults())
    note = result.notes[0]

    def count(before: str) -> int:
        return int(note.split(before)[0].rsplit(" ", 1)[1].lstrip("("))

    assert "structure sampler" in note and "trial cap" in note
    assert count(" sampled trials drew a structure already tried") == 0
    assert count(" trials,") - count(" of them the warm start's") >= 5  # sampled trials among them (1 in 4)


def test_a_study_that_tries_every_structure_ends_with_the_exhaustive_ranking() -> None:
    """Top 1,000 of a 140-structure space: no bound ever reaches the k-th best (it stays infinite), so the warm
    start cannot prove anything; once every structure is tried the study stops (the sampler has nothing new to draw)
    and its ranking is the exhaustive one, every plan of it."""
    ctx = SearchContext(model=load_model("llama3-8b"), cluster=load_cluster("dgx-h100", num_gpus=4),
                        job=JobSpec(global_batch=64, seq_len=4096))
    constants = CostConstants.defaults()
    study = search(ctx, top_k=1000, method="optuna", max_trials=5000, constants=constants)
    exhaustive = search(ctx, top_k=1000, method="exhaustive", constants=constants)
    assert "running out of structures" in study.notes[0] and " 0 sampled trials drew" in study.notes[0]
    assert [(e.plan, e.step.step_s) for e in study.ranked] == [(e.plan, e.step.step_s) for e in exhaustive.ranked]
