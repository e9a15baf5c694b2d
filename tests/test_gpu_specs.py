"""Bring your own hardware: user GPU specs (inline and --gpu-spec), non-H100 presets, family fallbacks,
the measured GPU section, ROCm launch changes and the probe's GPU measurements on the CPU path."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from configurator.cli import app
from configurator.cost.compute import gpu_rates
from configurator.cost.constants import load_calibration
from configurator.emit import EmitRequest, files_for
from configurator.errors import InputError
from configurator.gpu_figures import gpu_figures
from configurator.memory import load_overhead
from configurator.profiles import (GIB, cluster_from_dict, gpu_families, gpu_names, load_cluster, load_gpu,
                                   profiles_dir)
from configurator.specs.job import JobSpec
from configurator.specs.plan import Plan

runner = CliRunner()
NEW_GPUS = ("mi250x", "mi300x", "mi325x", "mi355x", "h20", "a800-80gb", "l40s", "v100-32gb", "v100-16gb", "t4")
NEW_CLUSTERS = ("mi300x-roce400", "mi325x-roce400", "mi355x-roce400", "frontier-mi250x", "hgx-h20", "hgx-a800",
                "l40s-pcie", "dgx1-v100", "aws-p3-v100-16gb", "aws-g4dn-t4")
GPU = {"key": "my-gpu", "name": "Site GPU", "family": "cdna3", "memory_GiB": 100.0, "hbm_bandwidth_TBps": 4.0,
       "peak_dense_TFLOPs": {"bf16": 500.0, "fp16": 500.0, "fp8": None}, "nvlink_bandwidth_GBps": 300,
       "pcie_host_bandwidth_GBps": 50, "tdp_W": 700, "source": "our own measurements"}


def _profile(gpu=None) -> dict:
    data = json.loads((profiles_dir() / "clusters" / "dgx-h100.json").read_text())
    data["gpu"] = copy.deepcopy(GPU) if gpu is None else gpu
    return data


def _write(tmp_path, data, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


ESTIMATE = ["estimate", "--model", "llama3-8b", "--num-gpus", "8", "--seq-len", "4096", "--global-batch", "32",
            "--tp", "1", "--pp", "1", "--json"]


# ----- inline spec: plan and estimate -------------------------------------------------------------
def test_estimate_on_a_profile_with_an_inline_gpu_spec(tmp_path) -> None:
    res = runner.invoke(app, ESTIMATE + ["--cluster", _write(tmp_path, _profile())])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["cluster"]["gpu"] == "my-gpu"
    # capacity is the spec's 100 GiB; the peak used for MFU is its 500 TFLOP/s bf16
    assert out["memory"]["capacity_gib"] == pytest.approx(100.0, abs=0.01)
    assert out["time"]["mfu"] == pytest.approx(out["time"]["model_tflops_per_gpu"] / 500.0, rel=1e-3)
    spec = out["cluster"]["gpu_spec"]
    assert spec["architecture"] == "cdna3" and spec["constants_family"] == "hopper" and not spec["calibrated"]


def test_plan_on_a_profile_with_an_inline_gpu_spec(tmp_path) -> None:
    res = runner.invoke(app, ["plan", "--model", "llama3-8b", "--cluster", _write(tmp_path, _profile()),
                              "--num-gpus", "8", "--seq-len", "4096", "--global-batch", "32", "--top", "2",
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["plans"] and out["plans"][0]["fits"]
    assert out["gpu_spec"]["key"] == "my-gpu"


def test_gpu_spec_file_replaces_the_clusters_gpu(tmp_path) -> None:
    spec = _write(tmp_path, GPU, "gpu.json")
    res = runner.invoke(app, ESTIMATE + ["--cluster", "dgx-h100", "--gpu-spec", spec])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["memory"]["capacity_gib"] == pytest.approx(100.0, abs=0.01)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point (its error handler turns InputError into one line and exit 2)."""
    return subprocess.run([sys.executable, "-m", "configurator.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_missing_precision_is_refused_by_name(tmp_path) -> None:
    res = _cli(*ESTIMATE, "--cluster", _write(tmp_path, _profile()), "--precision", "fp8")
    assert res.returncode == 2
    assert res.stderr.strip() == "error: precision='fp8': is not supported by my-gpu (dgx-h100)"
    res = _cli(*ESTIMATE, "--cluster", "dgx1-v100")  # V100 has no bf16
    assert res.returncode == 2 and "precision='bf16'" in res.stderr and "v100-32gb" in res.stderr


# ----- every failure mode of a bad spec: one line naming the field, exit 2 --------------------------
def _bad(**change):
    gpu = copy.deepcopy(GPU)
    for k, v in change.items():
        if v is _DROP:
            del gpu[k]
        else:
            gpu[k] = v
    return gpu


_DROP = object()
BAD_SPECS = {
    "unknown key": (_bad(memory_GB=80), "memory_GB.*unknown key"),
    "missing key": (_bad(hbm_bandwidth_TBps=_DROP), "hbm_bandwidth_TBps.*missing required key"),
    "negative memory": (_bad(memory_GiB=-8), "memory_GiB.*between 1 and 1024"),
    "zero memory": (_bad(memory_GiB=0), "memory_GiB.*between 1 and 1024"),
    "memory too large": (_bad(memory_GiB=4096), "memory_GiB.*between 1 and 1024"),
    # NaN/Infinity are refused by the JSON reader itself (configurator/safe_files.py), before the spec checks.
    "NaN bandwidth": (_bad(hbm_bandwidth_TBps=math.nan), "number out of range.*NaN"),
    "infinite peak": (_bad(peak_dense_TFLOPs={"bf16": math.inf}), "number out of range.*Infinity"),
    "string figure": (_bad(tdp_W="700W"), "tdp_W.*finite number"),
    "boolean figure": (_bad(pcie_host_bandwidth_GBps=True), "pcie_host_bandwidth_GBps.*finite number"),
    "implausible peak": (_bad(peak_dense_TFLOPs={"bf16": 50_000.0}), "bf16.*between 1 and 10000"),
    "peak in FLOP/s not TFLOP/s": (_bad(peak_dense_TFLOPs={"bf16": 9.894e14}), "bf16.*between"),
    "unknown precision": (_bad(peak_dense_TFLOPs={"bf16": 500.0, "tf32": 250.0}), "tf32.*unknown precision"),
    "no 16-bit precision": (_bad(peak_dense_TFLOPs={"fp8": 1000.0}), "must give bf16 or fp16"),
    "fp8 below bf16": (_bad(peak_dense_TFLOPs={"bf16": 500.0, "fp8": 250.0}), "fp8.*>= the 16-bit peak"),
    "negative NVLink": (_bad(nvlink_bandwidth_GBps=-1), "nvlink_bandwidth_GBps.*between 0"),
    "unknown architecture": (_bad(family="rdna9"), "family.*unknown architecture"),
    "bad key": (_bad(key="my gpu/../x"), "key.*letters, digits"),
    "empty source": (_bad(source=" "), "source.*non-empty"),
    "not an object": (["h100"], "gpu.*GPU key or an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_inline_spec_is_one_clear_error(case: str, tmp_path) -> None:
    gpu, pattern = BAD_SPECS[case]
    with pytest.raises(InputError, match=pattern):
        load_cluster(_write(tmp_path, _profile(gpu)))


def test_bad_spec_on_the_command_line_exits_2_without_traceback(tmp_path) -> None:
    res = _cli(*ESTIMATE, "--cluster", "dgx-h100", "--gpu-spec", _write(tmp_path, _bad(memory_GiB=0), "g.json"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "memory_GiB=0" in res.stderr and "Traceback" not in res.stderr
    res = _cli(*ESTIMATE, "--cluster", "dgx-h100", "--gpu-spec", str(tmp_path / "none.json"))
    assert res.returncode == 2 and "file not found" in res.stderr


# ----- presets and family fallbacks ----------------------------------------------------------------
@pytest.mark.parametrize("key", NEW_GPUS)
def test_new_gpu_presets_load_with_a_source(key: str) -> None:
    gpu = load_gpu(key)
    assert len(gpu.source) > 100 and gpu.name in gpu.source or "datasheet" in gpu.source.lower()
    assert gpu.supports(gpu.half_precision)


@pytest.mark.parametrize("name", NEW_CLUSTERS)
def test_new_cluster_presets_load_and_size(name: str) -> None:
    cluster = load_cluster(name, nodes=2)
    assert cluster.num_gpus == 2 * cluster.gpus_per_node and cluster.source


def test_datasheet_figures_of_a_few_presets() -> None:
    mi300x, v100, l40s = load_gpu("mi300x"), load_gpu("v100-32gb"), load_gpu("l40s")
    assert mi300x.peak_flops_for("bf16") == pytest.approx(1307.4e12)
    assert mi300x.memory_bytes == 192 * GIB and mi300x.vendor == "amd" and not mi300x.supports("fp4")
    assert load_gpu("mi355x").peak_flops_for("fp4") == pytest.approx(4 * 2516.6e12, rel=1e-4)
    assert not v100.supports("bf16") and v100.half_precision == "fp16"
    assert l40s.nvlink_bandwidth_Bps == 0 and l40s.supports("fp8")


def test_every_architecture_falls_back_to_a_family_with_constants_for_all_its_precisions() -> None:
    constants = load_calibration()
    for key in gpu_names():
        gpu = load_gpu(key)
        load_overhead(gpu.family)  # memory overheads exist for the family used
        for precision, _ in gpu.peak_flops:
            assert 0 < constants.gemm_efficiency(gpu.family, precision) <= 1
        assert gpu.calibrated == gpu_families()[gpu.architecture]["measured_runs"]
        assert gpu.calibrated or "no measured" in gpu.fallback_reason


def test_calibrated_presets_keep_their_family() -> None:
    for key, family in (("a100-80gb", "ampere"), ("h100-80gb", "hopper"), ("gb200", "blackwell")):
        gpu = load_gpu(key)
        assert gpu.family == gpu.architecture == family and gpu.calibrated and gpu.vendor == "nvidia"


# ----- the measured GPU section -------------------------------------------------------------------
def _measured(hbm_TBps=1.5, tflops=(100.0, 300.0, 450.0)):
    data = _profile()
    data["gpu_measured"] = {"name": "Site GPU rev B", "memory_GiB": 99.5, "hbm_copy_TBps": hbm_TBps,
                            "gemm": [{"precision": "bf16", "m": d, "n": d, "k": d, "tflops": t}
                                     for d, t in zip((512, 2048, 8192), tflops)]}
    return data


def test_measured_gpu_section_replaces_datasheet_rates(tmp_path) -> None:
    constants = load_calibration()
    sheet = gpu_rates(load_cluster(_write(tmp_path, _profile(), "a.json")), "bf16", constants)
    measured = gpu_rates(load_cluster(_write(tmp_path, _measured(), "b.json")), "bf16", constants)
    assert sheet.hbm_Bps == pytest.approx(4.0e12 * constants["memory.hbm"])
    assert measured.hbm_Bps == pytest.approx(1.5e12)  # the copy kernel's rate, used as measured
    # the curve is fitted to the measured points, not datasheet x efficiency: it reproduces them
    for d, tflops in ((2048, 300.0), (8192, 450.0)):
        fitted = measured.gemm.max_flops * (d / (d + measured.gemm.half_dim)) ** 3
        assert fitted == pytest.approx(tflops * 1e12, rel=0.1)
    assert sheet.gemm.max_flops == pytest.approx(500e12 * constants.gemm_efficiency("hopper", "bf16"))


def test_measured_section_is_shown_beside_the_datasheet(tmp_path) -> None:
    figures = gpu_figures(load_cluster(_write(tmp_path, _measured())))
    assert figures["datasheet"]["hbm_tbps"] == 4.0 and figures["measured"]["hbm_copy_tbps"] == 1.5
    assert figures["measured"]["best_gemm_tflops"] == {"bf16": 450.0}
    assert "measured" in figures["used"]["gemm"] and "measured" in figures["used"]["hbm"]
    res = runner.invoke(app, ESTIMATE[:-1] + ["--cluster", _write(tmp_path, _measured(), "m.json")])
    assert res.exit_code == 0 and "measured 'Site GPU rev B'" in " ".join(res.output.split())


def test_measurement_above_the_datasheet_is_refused(tmp_path) -> None:
    with pytest.raises(InputError, match="tflops.*exceeds my-gpu's datasheet bf16 peak"):
        load_cluster(_write(tmp_path, _measured(tflops=(100.0, 300.0, 900.0))))
    with pytest.raises(InputError, match="hbm_copy_TBps.*exceeds"):
        load_cluster(_write(tmp_path, _measured(hbm_TBps=9.0)))


def test_service_accepts_an_inline_gpu_spec_in_a_registered_cluster(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from configurator.service.app import create_app

    # As a context manager, so the app's shutdown stops its worker pool (a supervisor thread left running
    # would make every later search in this process refuse to fork: search/parallel.py).
    with TestClient(create_app(f"sqlite:///{tmp_path / 's.db'}", workers=1)) as client:
        ok = client.post("/v1/clusters", json={"name": "site", "profile": _profile()})
        assert ok.status_code == 201, ok.text
        est = client.post("/v1/estimate", json={"model": "llama3-8b", "cluster": "site", "num_gpus": 8,
                                                "seq_len": 4096, "global_batch": 32})
        assert est.status_code == 200, est.text
        assert est.json()["cluster"]["gpu"] == "my-gpu"
        bad = client.post("/v1/clusters", json={"name": "bad", "profile": _profile(_bad(memory_GiB=0))})
    assert 400 <= bad.status_code < 500 and "memory_GiB" in bad.text


# ----- ROCm launch files --------------------------------------------------------------------------
def _files(cluster_name: str, precision: str = "bf16", **plan_args):
    from configurator.profiles import load_model

    cluster = load_cluster(cluster_name, num_gpus=16)
    plan = Plan(tp=2, pp=1, dp=8, sp=True, **plan_args)
    job = JobSpec(global_batch=64, seq_len=4096, precision=precision)
    return files_for(EmitRequest(model=load_model("llama3-8b"), cluster=cluster, job=job, plan=plan), "megatron")


def test_rocm_launch_script_sets_rccl_env_and_nvidia_does_not() -> None:
    amd = _files("mi355x-roce400")["launch_megatron.sh"]
    assert "export HSA_NO_SCRATCH_RECLAIM=1" in amd and "export NCCL_PROTO=Simple" in amd
    assert amd.count("CUDA_DEVICE_MAX_CONNECTIONS=1") == 1  # ROCm reports compute capability 9.x
    assert amd.index("HSA_NO_SCRATCH_RECLAIM") < amd.index("exec torchrun")
    nvidia = _files("dgx-h100")["launch_megatron.sh"]
    assert "HSA_" not in nvidia and "RCCL" not in nvidia


def test_rocm_refuses_te_userbuffers_and_nvfp4_by_name() -> None:
    with pytest.raises(InputError, match="Transformer Engine userbuffers"):
        _files("mi300x-roce400", tp_overlap=True)
    with pytest.raises(InputError, match="NVFP4"):
        _files("mi355x-roce400", precision="fp4")
    assert _files("dgx-b200", precision="fp4")  # NVIDIA keeps fp4


# ----- the probe's GPU measurements, CPU path -----------------------------------------------------
def test_probe_gpu_section_on_the_cpu_feeds_the_planner(tmp_path) -> None:
    from cluster_probes.gpu import gpu_section

    section = gpu_section(torch.device("cpu"), repeat=1, sizes=(32, 64, 128), copy_bytes=1 << 20)
    assert section["name"] == "cpu" and section["backend"] == "cpu" and section["memory_GiB"] > 0
    assert {p["precision"] for p in section["gemm"]} <= {"bf16", "fp16"}  # fp8 needs a GPU: skipped
    assert all(p["tflops"] > 0 for p in section["gemm"]) and section["hbm_copy_TBps"] > 0
    data = _profile()
    data["gpu_measured"] = section
    cluster = load_cluster(_write(tmp_path, data))
    assert gpu_rates(cluster, "bf16", load_calibration()).hbm_Bps == pytest.approx(section["hbm_copy_TBps"] * 1e12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CUDA or ROCm): measured fp8 GEMM and HBM")
def test_probe_gpu_section_on_a_gpu() -> None:
    from cluster_probes.gpu import gpu_section

    section = gpu_section(torch.device("cuda", 0), repeat=3)
    assert section["hbm_copy_TBps"] > 0.1 and max(p["tflops"] for p in section["gemm"]) > 10
