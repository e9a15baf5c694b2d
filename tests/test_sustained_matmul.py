"""A GPU's sustained tensor-core rate (GPUSpec.sustained_matmul_ratio, profiles/gpus/*.json).

GB200's rating (2,500 bf16 TFLOP/s) is 1.111x B200's (2,250), but its best measured matmul is 1.044x
(stas00/ml-engineering MAMF table: bf16 1,822 vs 1,745 TFLOP/s; fp8 3,615.6 vs 3,432.5): GEMMs sustain
(1822/1745)/(2500/2250) = 0.940 of what the rating implies against B200, on whose measurements the
Blackwell family's GEMM efficiency is set. The ratio scales the modelled GEMM and attention-MMA rates; the
MFU is still reported against the rating, a probe's measured GEMM curve is used as measured, and the SFU's
exponential rate (a measured figure) is left alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from configurator.cli import app
from configurator.cost.compute import gpu_rates
from configurator.cost.constants import CostConstants
from configurator.cost.waves import sm_count, wave_slowdown
from configurator.errors import InputError
from configurator.gpu_figures import gpu_figures
from configurator.profiles import load_cluster, load_gpu, profiles_dir

MAMF_BF16_TFLOPS = {"b200": 1745.0, "gb200": 1822.0}
RATED_BF16_TFLOPS = {"b200": 2250.0, "gb200": 2500.0}


def _gb200_profile(**gpu_change) -> dict:
    """The gb200-nvl72 cluster with gb200.json inlined and ``gpu_change`` applied to it."""
    data = json.loads((profiles_dir() / "clusters" / "gb200-nvl72.json").read_text())
    gpu = json.loads((profiles_dir() / "gpus" / "gb200.json").read_text())
    gpu.update(gpu_change)
    data["gpu"] = gpu
    return data


def _write(tmp_path, data, name="c.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_gb200_ratio_is_the_mamf_ratio_over_the_ratings_ratio():
    measured = MAMF_BF16_TFLOPS["gb200"] / MAMF_BF16_TFLOPS["b200"]
    rated = RATED_BF16_TFLOPS["gb200"] / RATED_BF16_TFLOPS["b200"]
    assert measured / rated == pytest.approx(0.940, abs=1e-3)
    assert load_gpu("gb200").sustained_matmul_ratio == pytest.approx(measured / rated, abs=0.005)
    assert (3615.6 / 3432.5) / (5000 / 4500) == pytest.approx(0.948, abs=1e-3)  # fp8 agrees within 1%


def test_gb200_gemm_time_against_b200_by_hand():
    defaults = CostConstants.defaults()
    b200 = gpu_rates(load_cluster("dgx-b200"), "bf16", defaults, measured={})
    gb200 = gpu_rates(load_cluster("gb200-nvl72"), "bf16", defaults, measured={})
    eff = defaults.gemm_efficiency("blackwell", "bf16")
    assert b200.gemm.max_flops == pytest.approx(2.25e15 * eff)
    assert gb200.gemm.max_flops == pytest.approx(2.5e15 * 0.94 * eff)
    m, n, k = 8192, 8192, 8192
    size = (8192 / (8192 + defaults["gemm.half_dim"])) ** 3
    for key, rates, rate in (("b200", b200, 2.25e15 * eff), ("gb200", gb200, 2.5e15 * 0.94 * eff)):
        waves = wave_slowdown(m, n, k, 1, sm_count(key, "blackwell"), stream_k=True)
        assert rates.gemm_s(m, n, k, 1, True) == pytest.approx(2 * m * n * k / (rate * size) * waves, rel=1e-9)
    # Beside B200, GB200's GEMM rate is 2,500 x 0.94 / 2,250 = 1.044x (the MAMF ratio), not the ratings' 1.111x.
    assert gb200.gemm.max_flops / b200.gemm.max_flops == pytest.approx(1.0444, abs=1e-4)


def test_ratio_scales_every_tensor_core_rate_but_not_the_sfu():
    cluster = load_cluster("gb200-nvl72")
    rated = replace(cluster, gpu=replace(cluster.gpu, sustained_matmul_ratio=1.0))
    defaults = CostConstants.defaults()
    for precision, fp8_attention in (("bf16", False), ("fp8", True), ("fp4", False)):
        held = gpu_rates(cluster, precision, defaults, measured={}, fp8_attention=fp8_attention)
        full = gpu_rates(rated, precision, defaults, measured={}, fp8_attention=fp8_attention)
        assert held.gemm.max_flops == pytest.approx(0.94 * full.gemm.max_flops)
        assert held.gemm_bf16.max_flops == pytest.approx(0.94 * full.gemm_bf16.max_flops)
        assert held.attention_flops == pytest.approx(0.94 * full.attention_flops)
        assert held.exp2_per_s == full.exp2_per_s == pytest.approx(4.88e12)


def test_absent_field_defaults_to_the_rating(tmp_path):
    for key in ("b200", "b300", "h100-80gb", "a100-80gb", "mi300x"):
        assert load_gpu(key).sustained_matmul_ratio == 1.0
    data = _gb200_profile()
    del data["gpu"]["sustained_matmul_ratio"]
    gpu = load_cluster(_write(tmp_path, data)).gpu
    assert gpu.sustained_matmul_ratio == 1.0
    rates = gpu_rates(load_cluster(_write(tmp_path, data)), "bf16", CostConstants.defaults(), measured={})
    assert rates.gemm.max_flops == pytest.approx(2.5e15 * CostConstants.defaults().gemm_efficiency("blackwell", "bf16"))


def test_a_measured_gemm_curve_is_not_scaled_again(tmp_path):
    """A probe's GEMM points are already the sustained rate: the ratio must not count twice."""
    points = [{"precision": "bf16", "m": d, "n": d, "k": d, "tflops": t}
              for d, t in ((512, 400.0), (2048, 1200.0), (8192, 1700.0))]
    curves = {}
    for ratio in (0.94, 1.0):
        data = _gb200_profile(sustained_matmul_ratio=ratio)
        data["gpu_measured"] = {"name": "NVIDIA GB200", "memory_GiB": 185.0, "hbm_copy_TBps": 7.0, "gemm": points}
        curves[ratio] = gpu_rates(load_cluster(_write(tmp_path, data)), "bf16", CostConstants.defaults()).gemm
    assert curves[0.94] == curves[1.0]


@pytest.mark.parametrize("value, problem", [(0, "in \\(0, 1\\]"), (1.2, "in \\(0, 1\\]"), (-0.5, "in \\(0, 1\\]"),
                                            ("0.94", "finite number"), (True, "finite number")])
def test_bad_value_is_refused_by_name(value, problem, tmp_path):
    with pytest.raises(InputError, match=f"sustained_matmul_ratio.*{problem}"):
        load_cluster(_write(tmp_path, _gb200_profile(sustained_matmul_ratio=value)))


def test_bad_value_on_the_command_line_exits_2_in_one_line(tmp_path):
    cluster = _write(tmp_path, _gb200_profile(sustained_matmul_ratio=1.2))
    res = subprocess.run([sys.executable, "-m", "configurator.cli", "estimate", "--model", "llama3-8b",
                          "--cluster", cluster, "--num-gpus", "8", "--seq-len", "4096", "--global-batch", "32",
                          "--tp", "1", "--pp", "1"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "sustained_matmul_ratio" in lines[0] and "1.2" in lines[0]
    assert "Traceback" not in res.stderr


def test_mfu_stays_against_the_rated_peak(tmp_path):
    """A slower sustained clock lengthens the step; the MFU it reports is still model FLOP/s / 2,500."""
    out = {}
    for ratio in (0.94, 1.0):
        cluster = _write(tmp_path, _gb200_profile(sustained_matmul_ratio=ratio), f"c{ratio}.json")
        res = CliRunner().invoke(app, ["estimate", "--model", "llama3-8b", "--cluster", cluster, "--num-gpus", "8",
                                       "--seq-len", "4096", "--global-batch", "32", "--tp", "1", "--pp", "1",
                                       "--json"])
        assert res.exit_code == 0, res.output
        out[ratio] = json.loads(res.stdout)["time"]
    for t in out.values():
        assert t["mfu"] == pytest.approx(t["model_tflops_per_gpu"] / 2500.0, rel=1e-3)
    assert out[0.94]["step_s"] > out[1.0]["step_s"]
    assert out[0.94]["mfu"] < out[1.0]["mfu"]
    # Not all of a step is tensor-core time, so it lengthens by less than 1/0.94.
    assert out[0.94]["step_s"] / out[1.0]["step_s"] < 1 / 0.94


def test_gpu_figures_show_the_ratio_where_it_is_used():
    figures = gpu_figures(load_cluster("gb200-nvl72"))
    assert figures["datasheet"]["sustained_matmul_ratio"] == 0.94
    assert figures["used"]["gemm"] == "datasheet peak x sustained_matmul_ratio 0.94 x calibrated efficiency"
    assert gpu_figures(load_cluster("dgx-b200"))["used"]["gemm"] == "datasheet peak x calibrated efficiency"
