"""Presets load; strict loaders reject unknown/missing keys; measured profiles keep their matrix."""

from __future__ import annotations

import json

import pytest

from configurator.errors import InputError
from configurator.profiles import GIB, cluster_names, gpu_names, load_cluster, load_gpu, profiles_dir

INTERFACE_PRESETS = {"dgx-a100", "dgx-a100-40gb", "a100-40gb-roce1600", "a100-80gb-roce1600", "jeanzay-a100",
                     "dgx-h100", "dgx-h200", "grand-teton-h100", "meta-h100-roce", "h800-ib", "dgx-b200",
                     "dgx-b300", "gb200-nvl72", "gb300-nvl72"}


def test_every_interface_preset_ships() -> None:
    assert INTERFACE_PRESETS <= set(cluster_names())


@pytest.mark.parametrize("name", sorted(INTERFACE_PRESETS))
def test_preset_loads_and_sizes(name: str) -> None:
    cluster = load_cluster(name)
    sized = load_cluster(name, nodes=4)
    assert sized.num_gpus == 4 * cluster.gpus_per_node
    assert cluster.source and cluster.gpu.source


@pytest.mark.parametrize("key", gpu_names())
def test_gpu_peaks_are_plausible(key: str) -> None:
    gpu = load_gpu(key)
    assert 50e12 < gpu.peak_flops_for(gpu.half_precision) < 5000e12  # T4's 65 fp16 to B300's 2,500 bf16
    assert 14 * GIB < gpu.memory_bytes < 300 * GIB  # T4's 15 GiB to MI355X's 288


def test_a100_has_no_fp8() -> None:
    assert not load_gpu("a100-80gb").supports("fp8")
    with pytest.raises(InputError, match="fp8"):
        load_gpu("a100-80gb").peak_flops_for("fp8")


def test_partial_node_and_bad_sizes() -> None:
    assert load_cluster("dgx-h100", num_gpus=4).num_gpus == 4
    with pytest.raises(InputError, match="multiple of the 8 GPUs"):
        load_cluster("dgx-h100", num_gpus=12)
    with pytest.raises(InputError, match="either"):
        load_cluster("dgx-h100", num_gpus=8, nodes=1)
    with pytest.raises(InputError, match="positive integer"):
        load_cluster("dgx-h100", nodes=0)


def _preset_dict(name: str = "dgx-h100") -> dict:
    return json.loads((profiles_dir() / "clusters" / f"{name}.json").read_text())


def test_unknown_key_is_rejected(tmp_path) -> None:
    data = _preset_dict() | {"bandwith_GBps": 1}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="bandwith_GBps.*unknown key"):
        load_cluster(str(path))


def test_missing_key_is_rejected(tmp_path) -> None:
    data = _preset_dict()
    del data["scale_out_link"]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="scale_out_link"):
        load_cluster(str(path))


def _measured(tmp_path, nodes: int = 3, drop_link: bool = False):
    data = _preset_dict()
    data["nodes"] = [{"index": i, "host": f"node{i}", "num_gpus": 8, "gpu": "h100-80gb",
                      "gpu_memory_GiB": 79.1, "host_memory_GiB": 1000.0} for i in range(nodes)]
    data["links"] = [{"src_node": i, "dst_node": j, "bandwidth_GBps": 12.5 if (i, j) == (0, 2) else 48.0,
                      "latency_s": 6e-6, "samples": 3}
                     for i in range(nodes) for j in range(nodes) if i != j]
    if drop_link:
        data["links"].pop()
    data["warnings"] = ["link 0->2 at 26% of the median"]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return path


def test_measured_profile_keeps_matrix_and_memory(tmp_path) -> None:
    cluster = load_cluster(str(_measured(tmp_path)))
    assert cluster.num_nodes == 3 and cluster.num_gpus == 24
    assert cluster.node_links[0][2].bandwidth_Bps == pytest.approx(12.5e9)
    assert cluster.node_links[2][0].bandwidth_Bps == pytest.approx(48e9)
    assert cluster.gpu_memory_bytes == pytest.approx(79.1 * GIB, rel=1e-6)
    assert cluster.warnings


def test_measured_profile_cannot_be_resized(tmp_path) -> None:
    path = _measured(tmp_path)
    assert load_cluster(str(path), num_gpus=24).num_gpus == 24
    with pytest.raises(InputError, match="cannot be resized"):
        load_cluster(str(path), num_gpus=16)


def test_incomplete_matrix_is_rejected(tmp_path) -> None:
    with pytest.raises(InputError, match="every ordered node pair"):
        load_cluster(str(_measured(tmp_path, drop_link=True)))


def test_corrupt_profile_is_one_clear_error(tmp_path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{\"name\": ")
    with pytest.raises(InputError, match="not valid JSON"):
        load_cluster(str(path))
