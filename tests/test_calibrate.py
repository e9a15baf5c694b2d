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
    fitted, _ = fit(subset)
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
