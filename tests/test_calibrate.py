"""Calibration: the fitter recovers constants that generated the data, and constant files load strictly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from configurator.calibrate import error_stats, fit, load_samples, log_errors, source_group
from configurator.cost.constants import PARAMETERS, CostConstants, load_calibration
from configurator.cost.step import evaluate
from configurator.errors import InputError


def test_fit_recovers_the_throughput_of_known_constants(published_runs) -> None:
    samples, _ = load_samples(published_runs)
    # A spread of rows: every 8th usable row (dense and MoE, A100/H100/Blackwell, with and without PP).
    subset = samples[::8]
    truth = CostConstants.from_dict({**CostConstants.defaults().as_dict(), "gemm.hopper.bf16": 0.55,
                                     "gemm.ampere.bf16": 0.62, "link.nvlink": 0.5, "overhead.step_s": 0.3,
                                     "attention.fa2.hopper": 0.3, "memory.hbm": 0.45})
    for s in subset:
        s.measured_tokens_per_s_per_gpu = evaluate(s.inputs, truth).tokens_per_s_per_gpu
    before = error_stats(log_errors(subset, CostConstants.defaults()))
    # The weak prior: these constants are 1-2.4 physical widths from their defaults, and 38 rows do not
    # outweigh the physical prior entirely (1.4% median error with it); the machinery is tested here.
    fitted, _ = fit(subset, prior="weak")
    after = error_stats(log_errors(subset, fitted))
    assert before["median_abs_error_pct"] > 5.0
    assert after["median_abs_error_pct"] < 1.0, after
    assert fitted["gemm.hopper.bf16"] == pytest.approx(0.55, rel=0.1)


def test_log_errors_are_zero_for_self_generated_data(published_runs) -> None:
    samples, skipped = load_samples(published_runs)
    assert len(samples) >= 270 and all(reason for _, reason in skipped)
    some = samples[:5]
    for s in some:
        s.measured_tokens_per_s_per_gpu = evaluate(s.inputs, CostConstants.defaults()).tokens_per_s_per_gpu
    assert np.allclose(log_errors(some, CostConstants.defaults()), 0.0)


def test_source_groups_are_publishers() -> None:
    assert source_group("MosaicML llm-foundry MPT training benchmarks [A100 40GB]") == "MosaicML llm-foundry"
    assert source_group("Megatron-Bridge performance summary (NeMo 25.11 container)") == \
        source_group("NVIDIA DGX Cloud Benchmarking recipe (llama3.1)")
    assert source_group("some lab's blog") == "some lab's blog"


def test_shipped_calibration_is_complete_and_within_bounds() -> None:
    constants = load_calibration()
    for p in PARAMETERS:
        assert p.lower <= constants[p.name] <= p.upper, p.name


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda d: d["constants"].pop("link.nvlink"), "link.nvlink"),
    (lambda d: d["constants"].__setitem__("gemm.volta.bf16", 0.5), "gemm.volta.bf16"),
    (lambda d: d["constants"].__setitem__("memory.hbm", "fast"), "memory.hbm"),
])
def test_calibration_loader_is_strict(tmp_path, edit, needle) -> None:  # type: ignore[no-untyped-def]
    data = {"constants": {p.name: p.default for p in PARAMETERS}}
    edit(data)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=needle.replace(".", r"\.")):
        load_calibration(path)


def test_calibration_loader_reports_bad_json(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        load_calibration(path)
    assert math.isfinite(CostConstants.defaults()["gemm.half_dim"])


def _soft_l1_cost(r: np.ndarray, f: float) -> float:
    """scipy least_squares' cost of residuals r under loss='soft_l1' with f_scale f."""
    z = (r / f) ** 2
    return float(0.5 * f * f * np.sum(2.0 * (np.sqrt(1.0 + z) - 1.0)))


def test_physical_prior_costs_a_squared_row_at_the_robust_scale_per_width() -> None:
    from configurator.calibrate import ROBUST_SCALE, _to_x, prior_residuals, prior_widths

    widths = prior_widths("physical")
    defaults = {p.name: p.default for p in PARAMETERS}
    assert np.allclose(prior_residuals(_to_x(defaults), widths), 0.0)
    i = [p.name for p in PARAMETERS].index("attention.ampere")
    width = PARAMETERS[i].prior_width
    assert width == widths[i] == 0.2
    for distance in (1.0, 2.0, -3.0):
        # attention.ampere is positive: the fit's scale is log, so one width is a factor e^0.2.
        values = {**defaults, "attention.ampere": defaults["attention.ampere"] * math.exp(distance * width)}
        r = prior_residuals(_to_x(values), widths)
        assert np.count_nonzero(r) == 1 and np.sign(r[i]) == np.sign(distance)
        # Quadratic (Gaussian) despite the robust loss: 0.5 * (0.1 * distance)^2.
        assert _soft_l1_cost(r, ROBUST_SCALE) == pytest.approx(0.5 * (ROBUST_SCALE * distance) ** 2, rel=1e-9)


def test_every_narrow_prior_names_its_source_and_the_weak_prior_is_uniform() -> None:
    from configurator.calibrate import WEAK_PRIOR_WIDTH, prior_widths

    for p in PARAMETERS:
        assert p.prior_width > 0
        assert p.prior_width >= WEAK_PRIOR_WIDTH or p.prior_source, p.name
        assert p.lower <= p.default <= p.upper, p.name
    assert np.all(prior_widths("weak") == WEAK_PRIOR_WIDTH)
    with pytest.raises(InputError, match="prior"):
        prior_widths("strong")
