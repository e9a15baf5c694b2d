"""The host's op-dispatch speed (``ClusterSpec.host_dispatch_ratio``): Grace hosts (GB200/GB300 NVL72) take 2.75x a
DGX H100's x86 host to dispatch an eager PyTorch op (NVIDIA/TransformerEngine#2053), so their Python-dispatched
launches cost 2.75x the fitted ``overhead.launch_s`` (the grouped GEMMs' C++ loop does not); nothing else in the
step changes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.cost import CostConstants, estimate_step
from configurator.cost.constants import hardware_default
from configurator.cost.launch import layer_launch_s
from configurator.errors import InputError
from configurator.profiles import cluster_names, profiles_dir

C = CostConstants.defaults()
GRACE = ("gb200-nvl72", "gb300-nvl72")


def _with_launch_s(constants: CostConstants, launch_s: float) -> CostConstants:
    return CostConstants.from_dict({**constants.as_dict(), "overhead.launch_s": launch_s})


def test_grace_presets_dispatch_at_2_75x_and_every_other_preset_at_1() -> None:
    for name in cluster_names():
        expected = 2.75 if name in GRACE else 1.0
        assert load_cluster(name).host_dispatch_ratio == expected, name


def test_a_dense_step_on_a_grace_host_is_the_step_at_2_75x_the_launch_cost() -> None:
    """No grouped GEMMs: every launch goes through Python, so a Grace cluster at its ratio gives the step a ratio-1
    cluster gives with ``overhead.launch_s`` x 2.75 (to rounding), and the other compute details exactly."""
    grace = load_cluster("gb200-nvl72", num_gpus=8)
    x86_host = replace(grace, host_dispatch_ratio=1.0)
    # Llama-3-8B at TP8, micro-batch 1 of 1,024 tokens: ~0.1 ms GEMMs a layer against 24 launches, so exposed.
    llama = load_model("llama3-8b")
    job, plan = JobSpec(global_batch=8, seq_len=1024), Plan(tp=8, micro_batch=1)
    at_ratio = estimate_step(llama, grace, job, plan, runtime="megatron", constants=C)
    scaled = estimate_step(llama, x86_host, job, plan, runtime="megatron",
                           constants=_with_launch_s(C, 2.75 * C["overhead.launch_s"]))
    plain = estimate_step(llama, x86_host, job, plan, runtime="megatron", constants=C)
    assert math.isclose(at_ratio.step_s, scaled.step_s, rel_tol=1e-12)
    launch = dict(at_ratio.compute_detail_s)["launch"]
    assert math.isclose(launch, dict(scaled.compute_detail_s)["launch"], rel_tol=1e-12)
    assert launch > dict(plain.compute_detail_s)["launch"] > 0 and at_ratio.step_s > plain.step_s
    for (name, a), (_, b) in zip(at_ratio.compute_detail_s, plain.compute_detail_s):
        if name != "launch":
            assert a == b, name


def test_an_moe_layer_by_hand_the_grouped_gemms_c_loop_at_the_fitted_cost() -> None:
    """16 local experts (Qwen3-30B-A3B at EP8): 86 forward launches, 32 of them the grouped GEMMs' per-expert cuBLAS
    calls, which Transformer Engine makes from C++; at 10 us and a host ratio of 2.75 the host needs
    (54 x 2.75 + 32) x 10 = 1,805 us forward, 805 exposed over 1 ms of GPU work, plus the dispatcher's sync and
    the 8 launches after it at 27.5 us; backward (108 x 2.75 + 64) x 10 = 3,610 us, 1,610 over 2 ms."""
    sync_s = hardware_default("d2h_sync_s")
    f, b = layer_launch_s(1e-3, 2e-3, True, 10e-6, sync_s, syncs=1, local_experts=16, host_ratio=2.75)
    assert math.isclose(f, 805e-6 + sync_s + 8 * 27.5e-6)
    assert math.isclose(b, 1610e-6)
    # A reference host: every launch at 10 us (86 x 10 = 860 us fits under 1 ms; 1,720 under 2 ms).
    f1, b1 = layer_launch_s(1e-3, 2e-3, True, 10e-6, sync_s, syncs=1, local_experts=16)
    assert math.isclose(f1, sync_s + 8 * 10e-6) and b1 == 0.0
    # Under a full-iteration graph nothing is launched per layer, whatever the host.
    assert layer_launch_s(1e-3, 2e-3, True, 10e-6, sync_s, syncs=0, graphs=("full_iteration",), local_experts=16,
                          host_ratio=2.75) == (0.0, 0.0)


def _profile_with(tmp_path: Path, value: object) -> Path:
    data = json.loads((profiles_dir() / "clusters" / "gb200-nvl72.json").read_text())
    data["host_dispatch_ratio"] = value
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("value", [0.1, 11, -1, "fast", True, None])
def test_a_bad_ratio_in_a_profile_is_refused_by_name(tmp_path: Path, value: object) -> None:
    with pytest.raises(InputError) as err:
        load_cluster(str(_profile_with(tmp_path, value)))
    assert err.value.field.endswith("host_dispatch_ratio"), err.value.field


def test_the_command_line_names_a_bad_ratio_in_one_line_and_exits_2(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "configurator.cli", "estimate", "--model", "llama3-8b", "--cluster",
                          str(_profile_with(tmp_path, 40)), "--num-gpus", "8", "--seq-len", "4096",
                          "--global-batch", "8"], capture_output=True, text=True)
    assert out.returncode == 2 and "host_dispatch_ratio" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


GRACE_CPUINFO = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd4f
CPU revision\t: 0
"""
XEON_CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480C\n"


def test_the_probe_recognises_a_grace_host_and_writes_the_presets_ratio() -> None:
    """``cluster_probes`` names each host's CPU from /proc/cpuinfo; where every host is Grace (Arm Neoverse V2:
    implementer 0x41, part 0xd4f) the profile carries the presets' ratio, with a warning that it was recognised, not
    measured; other Arm parts keep 1.0 and say so; x86 says nothing."""
    from cluster_probes.__main__ import GRACE_HOST_DISPATCH_RATIO, host_cpu, host_dispatch

    assert GRACE_HOST_DISPATCH_RATIO == load_cluster("gb200-nvl72").host_dispatch_ratio  # one value, two places
    grace = host_cpu(GRACE_CPUINFO, "aarch64")
    xeon = host_cpu(XEON_CPUINFO, "x86_64")
    other_arm = host_cpu(GRACE_CPUINFO.replace("0xd4f", "0xd0c"), "aarch64")  # Neoverse N1
    assert grace == "aarch64 Arm Neoverse V2 (Grace)" and xeon == "x86_64 Intel(R) Xeon(R) Platinum 8480C"
    assert other_arm == "aarch64 CPU implementer 0x41 part 0xd0c" and host_cpu("", "riscv64") == "riscv64"
    ratio, said = host_dispatch([grace, grace])
    assert ratio == 2.75 and said.startswith("host_dispatch_ratio 2.75") and "not measured" in said
    assert host_dispatch([xeon]) == (None, "")
    for mixed in ([grace, other_arm], [other_arm]):  # not every host is Grace
        ratio, said = host_dispatch(mixed)
        assert ratio is None and "left at 1.0" in said
