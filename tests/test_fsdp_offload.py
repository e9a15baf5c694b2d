"""Megatron-LM offloads the optimizer only with the distributed optimizer, never under Megatron-FSDP.

Megatron-Core 0.19's ``HybridDeviceOptimizer`` copies every parameter with ``.cpu().pin_memory()``, which fails on
Megatron-FSDP's sharded DTensor parameters while the optimizer is built (NVIDIA/Megatron-LM#1986;
``search.space.offload_runs``). So the search gives Megatron-LM no ZeRO-2/3/HSDP option with an offload fraction,
``emit`` refuses one by field, ``estimate`` warns (text and JSON), and DeepSpeed (whose ZeRO offloads) keeps them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.cost.knobs import megatron_warnings
from configurator.margin import parse_margin
from configurator.render import search_plans_dicts
from configurator.search.optimize import search
from configurator.search.resolve import resolve
from configurator.search.space import MEGATRON_FSDP_SHARDINGS, SearchContext, max_offload, offload_runs


def _ctx(framework: str, runtime: str, gpus: int, batch: int, seq: int, model: str = "llama3-70b") -> SearchContext:
    return SearchContext(model=load_model(model), cluster=load_cluster("dgx-h100", num_gpus=gpus),
                         job=JobSpec(global_batch=batch, seq_len=seq), framework=framework, runtime=runtime,
                         memory_margin=parse_margin(None))


def test_only_the_distributed_optimizer_offloads_under_megatron() -> None:
    megatron, nemo = _ctx("megatron", "megatron", 8, 32, 4096), _ctx("megatron", "nemo", 8, 32, 4096)
    deepspeed, torchtitan = _ctx("deepspeed", "deepspeed", 8, 32, 4096), _ctx("torchtitan", "fsdp", 8, 32, 4096)
    for ctx in (megatron, nemo):
        assert offload_runs(ctx, "distopt") and max_offload(ctx, "distopt") == 1.0
        assert not any(offload_runs(ctx, s) for s in MEGATRON_FSDP_SHARDINGS)
        assert max_offload(ctx, "zero3") == 0.0
    for ctx in (deepspeed, torchtitan):
        assert all(offload_runs(ctx, s) for s in ("zero1", "zero2", "zero3"))
    assert not any(offload_runs(ctx, "none") for ctx in (megatron, deepspeed))


def test_a_structure_that_fits_only_by_offloading_under_zero3_has_no_megatron_option() -> None:
    """Llama-3-70B on 8 H100 with DP8: only ZeRO-3 with full recompute and most of the optimizer on the host fits.
    DeepSpeed runs that (ZeRO-Offload); Megatron-LM would run it as Megatron-FSDP, which cannot offload, so the
    structure has no Megatron option and the reason says so (the quick exit's most frugal forms keep ZeRO-3's
    optimizer on the GPU)."""
    structure = Plan(dp=8)
    deepspeed = resolve(_ctx("deepspeed", "deepspeed", 8, 32, 4096), structure).options
    assert [(o.plan.sharding, o.plan.recompute) for o in deepspeed] == [("zero3", "full")]
    assert 0.5 < deepspeed[0].plan.offload < 1.0
    megatron = resolve(_ctx("megatron", "megatron", 8, 32, 4096), structure)
    assert megatron.options == () and "even with full recompute" in (megatron.reason or "")
    # With tensor parallelism the distributed optimizer (which does offload) fits: Megatron-LM's plan offloads there.
    tp8 = resolve(_ctx("megatron", "megatron", 8, 32, 4096), Plan(tp=8, dp=1, sp=True)).options
    assert tp8 and all(o.plan.sharding == "distopt" for o in tp8) and any(o.plan.offload > 0 for o in tp8)


def test_the_search_never_offloads_under_megatron_fsdp() -> None:
    """The README's first job (Llama-3-70B on 64 H100, seq 8,192, global batch 256) led with ZeRO-2 and 88% of the
    optimizer offloaded, a plan Megatron-Core fails to build; its top plans now offload only with the distributed
    optimizer, if at all, and the Megatron-FSDP ones among them hold their whole optimizer."""
    result = search(_ctx("megatron", "megatron", 64, 256, 8192), top_k=10)
    plans = [e.plan for e in result.ranked]
    assert plans and any(p.sharding in MEGATRON_FSDP_SHARDINGS for p in plans)
    assert not [p.describe() for p in plans if p.sharding in MEGATRON_FSDP_SHARDINGS and p.offload > 0]


def test_deepspeed_plans_carry_no_megatron_warnings() -> None:
    """DeepSpeed's ZeRO-2/3 offload (ZeRO-Offload): the plan list must not tell its users that Megatron-FSDP cannot
    (``search_plans_dicts`` added Megatron's warnings to every runtime's plans)."""
    ctx = _ctx("deepspeed", "deepspeed", 8, 32, 4096)
    plans = search_plans_dicts(ctx.model, ctx.cluster, ctx.job, list(search(ctx, top_k=5).ranked))
    assert any(d["plan"]["sharding"] in ("zero2", "zero3") and d["plan"]["offload"] > 0 for d in plans)
    assert not [d["runtime_warnings"] for d in plans if "runtime_warnings" in d]
    # Under Megatron's runtime, a Megatron-FSDP plan with TP or CP before Blackwell carries Megatron's warning, ZeRO-2
    # (Megatron-FSDP's optim_grads) as well as ZeRO-3: the README job's leader is a TP4 CP2 ZeRO-2 plan.
    megatron = _ctx("megatron", "megatron", 64, 256, 8192)
    dicts = search_plans_dicts(megatron.model, megatron.cluster, megatron.job,
                               list(search(megatron, top_k=10).ranked))
    for d in dicts:
        plan = d["plan"]
        fsdp_tp = plan["sharding"] in MEGATRON_FSDP_SHARDINGS and (plan["tp"] > 1 or plan["cp"] > 1)
        assert fsdp_tp == any("CUDA_DEVICE_MAX_CONNECTIONS" in w for w in d.get("runtime_warnings", [])), plan
    assert any(d["plan"]["sharding"] == "zero2" and d.get("runtime_warnings") for d in dicts)


def test_estimate_warns_and_emit_refuses_offload_under_megatron_fsdp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plan = Plan(dp=16, sharding="zero2", offload=0.5)
    assert any("Megatron-LM#1986" in w for w in megatron_warnings(plan, "hopper"))
    assert not any("#1986" in w for w in megatron_warnings(Plan(dp=16, offload=0.5), "hopper"))
    job = ["--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "16", "--seq-len", "4096",
           "--global-batch", "64", "--sharding", "zero2", "--offload", "0.5"]
    # ``estimate`` says so, in its text and its JSON (``runtime_warnings``, the key ``plan``'s JSON uses), under
    # Megatron's runtimes only: DeepSpeed's ZeRO-2 offloads.
    for runtime, expected in (("megatron", True), ("deepspeed", False)):
        est = subprocess.run([sys.executable, "-m", "configurator.cli", "estimate", *job, "--runtime", runtime, "--json"],
                             capture_output=True, text=True, timeout=120)
        assert est.returncode == 0, est.stderr
        warned = json.loads(est.stdout).get("runtime_warnings", [])
        assert any("#1986" in w for w in warned) == expected, (runtime, warned)
    text = subprocess.run([sys.executable, "-m", "configurator.cli", "estimate", *job], capture_output=True, text=True,
                          timeout=120)
    assert text.returncode == 0 and "Megatron-FSDP" in text.stdout.replace("\n", " "), text.stdout
    out = tmp_path / "out"
    args = ["emit", *job, "--framework", "megatron", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "configurator.cli", *args], capture_output=True, text=True,
                          timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and "plan.offload='0.5'" in lines[0] and "distopt" in lines[0], proc.stderr
    assert not out.exists()
    # The distributed optimizer offloads: the same plan with sharding distopt is written.
    ok = subprocess.run([sys.executable, "-m", "configurator.cli", *[a if a != "zero2" else "distopt" for a in args]],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "--optimizer-cpu-offload" in (out / "megatron_args.txt").read_text()


def test_the_services_estimate_warns_of_offload_under_megatron_fsdp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``POST /v1/estimate`` builds its answer as ``estimate`` does (``render.estimate_dict``): the same
    ``runtime_warnings``."""
    from fastapi.testclient import TestClient

    from configurator.service.app import create_app

    body = {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 16, "seq_len": 4096, "global_batch": 64,
            "sharding": "zero2", "offload": 0.5}
    with TestClient(create_app(f"sqlite:///{tmp_path / 's.db'}", workers=1)) as client:
        est = client.post("/v1/estimate", json=body)
        plain = client.post("/v1/estimate", json={**body, "sharding": "distopt"})
    assert est.status_code == 200 and plain.status_code == 200, (est.text, plain.text)
    assert any("#1986" in w for w in est.json()["runtime_warnings"])
    assert not any("#1986" in w for w in plain.json().get("runtime_warnings", []))


def test_plan_text_shows_the_best_plans_megatron_warnings() -> None:
    """``plan``'s text output names what Megatron warns about for the best plan (before, only its JSON did): the
    README job's leader is Megatron-FSDP with TP and CP on Hopper, which Megatron warns against."""
    job = ["--model", "llama3-70b", "--cluster", "dgx-h100", "--num-gpus", "64", "--seq-len", "8192",
           "--global-batch", "256", "--workers", "1"]
    out = subprocess.run([sys.executable, "-m", "configurator.cli", "plan", *job], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 0, out.stderr
    best = next(line for line in out.stdout.splitlines() if line.startswith("best: "))
    warned = [line for line in out.stdout.splitlines() if "warning: Megatron-FSDP" in line]
    fsdp = re.search(r" (zero2|zero3|hsdp\d+) ", best) is not None  # (describe() writes HSDP as hsdp<group>)
    fsdp_tp_cp = fsdp and ("TP1 " not in best or "CP1 " not in best)
    assert bool(warned) == fsdp_tp_cp, out.stdout
    assert all("CUDA_DEVICE_MAX_CONNECTIONS" in line for line in warned)
