"""Every plan field can be set by hand: ``estimate``/``emit`` take the knobs ``plan`` chooses (``--tp-overlap``,
``--ep-overlap``, ``--cp-comm``, ``--ep-dispatcher``, ``--shard-group``, ``--recompute-modules``) and ``--plan-json``
reads a ``plan --json`` answer back, so the exact plan the search chose can be re-estimated and emitted.

Round trips: the plan's JSON turned into options, or read with ``--plan-json``, gives the search's step time to the
digit, and the library's ``estimate_step`` on the same Plan (so each option reaches the cost model). Emitted files
carry each knob as its framework spells it and run under the stub launchers (tests/launch_stubs.py); Megatron's own
parser reads them back in tests/test_emit.py. Runs in-process (CliRunner) except the one real-process error check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from configurator import JobSpec, load_cluster, load_model
from configurator.cli import app
from configurator.cost.step import estimate_step
from configurator.emit import EmitRequest, files_for
from configurator.placement import Placement
from configurator.specs.plan import plan_from_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch_stubs import run_script  # noqa: E402
from test_cli_errors import invoke, one_line_error  # noqa: E402

LLAMA = ["--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "8", "--seq-len", "4096",
         "--global-batch", "64"]
MIXTRAL = ["--model", "mixtral-8x7b", "--cluster", "dgx-h100", "--num-gpus", "32", "--seq-len", "4096",
           "--global-batch", "256"]
QWEN_2_NODES = ["--model", "qwen3-30b-a3b", "--cluster", "dgx-h100", "--num-gpus", "16", "--seq-len", "4096",
                "--global-batch", "256"]

# Hand-written plans that set every knob (each legal for its job): the options a user copies from a plan.
KNOB_PLANS = {
    "mixtral-tp-overlap-modules": (MIXTRAL, {"tp": 2, "pp": 4, "vpp": 8, "cp": 2, "dp": 2, "etp": 2, "sp": True,
                                             "sharding": "zero2", "recompute": "selective",
                                             "recompute_modules": ["layernorm", "moe_act"], "micro_batch": 4,
                                             "tp_overlap": True, "cp_comm": "a2a+p2p"}),
    "qwen-flex-ep-overlap": (QWEN_2_NODES, {"dp": 16, "ep": 16, "ep_overlap": True, "ep_dispatcher": "flex",
                                            "micro_batch": 2}),
    "qwen-hsdp-alltoall": (QWEN_2_NODES, {"dp": 16, "ep": 8, "sharding": "hsdp", "shard_group": 8,
                                          "ep_overlap": False, "ep_dispatcher": "alltoall", "micro_batch": 2}),
}


def cli_json(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def options_of(plan: dict) -> list[str]:
    """A plan JSON object as the estimate/emit options a user would type (what the README shows)."""
    out = []
    for key in ("tp", "pp", "vpp", "cp", "ep", "etp", "dp", "micro_batch", "sharding", "shard_group", "recompute",
                "offload"):
        if plan.get(key) not in (None, 0, 0.0):
            out += [f"--{key.replace('_', '-')}", str(plan[key])]
    if plan.get("recompute_num_layers"):
        out += ["--recompute-layers", str(plan["recompute_num_layers"])]
    out.append("--sp" if plan.get("sp") else "--no-sp")
    if plan.get("recompute_modules"):
        out += ["--recompute-modules", ",".join(plan["recompute_modules"])]
    if plan.get("pipeline_layers"):
        out += ["--pipeline-layers", ",".join(map(str, plan["pipeline_layers"]))]
    for knob in ("tp_overlap", "ep_overlap", "cuda_graphs"):
        if plan.get(knob) is not None:
            out.append(f"--{'' if plan[knob] else 'no-'}{knob.replace('_', '-')}")
    for knob in ("cp_comm", "ep_dispatcher"):
        if plan.get(knob) is not None:
            out += [f"--{knob.replace('_', '-')}", plan[knob]]
    return out


def job_of(args: list[str]) -> tuple:  # type: ignore[type-arg]
    given = dict(zip(args[::2], args[1::2]))
    model = load_model(given["--model"])
    cluster = load_cluster(given["--cluster"], num_gpus=int(given["--num-gpus"]))
    return model, cluster, JobSpec(global_batch=int(given["--global-batch"]), seq_len=int(given["--seq-len"]))


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[Path, dict, Path]:  # type: ignore[type-arg]
    """One real search (Llama-3-8B on 8 H100s, ~2 s): its JSON file, answer and the launch files it emitted."""
    root = tmp_path_factory.mktemp("searched")
    answer = cli_json("plan", *LLAMA, "--top", "2", "--emit", "megatron", "--out", str(root / "plan-emit"))
    path = root / "plan.json"
    path.write_text(json.dumps(answer))
    return path, answer, root / "plan-emit"


def test_the_searched_plan_read_back_or_typed_as_options_gives_the_searchs_step_time(searched) -> None:  # type: ignore[no-untyped-def]
    path, answer, _ = searched
    best = answer["plans"][0]
    from_file = cli_json("estimate", *LLAMA, "--plan-json", str(path))
    typed = cli_json("estimate", *LLAMA, *options_of(best["plan"]))
    second = path.with_name("second.json")
    second.write_text(json.dumps(answer["plans"][1]))  # one `plans` entry (jq '.plans[1]')
    assert from_file["plan"] == typed["plan"] == best["plan"]
    assert from_file["time"]["step_s"] == typed["time"]["step_s"] == best["time"]["step_s"]
    assert cli_json("estimate", *LLAMA, "--plan-json", str(second))["time"]["step_s"] == \
        answer["plans"][1]["time"]["step_s"]
    assert from_file["chosen"][0] == f"plan from {path}"


def test_emit_from_the_plan_json_writes_the_files_plan_emit_wrote(searched, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path, _, emitted = searched
    out = tmp_path / "again"
    result = CliRunner().invoke(app, ["emit", *LLAMA, "--plan-json", str(path), "--framework", "megatron",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("megatron_args.txt", "launch_megatron.sh", "launch_megatron.sbatch", "placement.txt"):
        assert (out / name).read_text() == (emitted / name).read_text(), name


@pytest.mark.parametrize("name", sorted(KNOB_PLANS))
def test_every_knob_typed_as_an_option_reaches_the_cost_model(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    job_args, fields = KNOB_PLANS[name]
    typed = cli_json("estimate", *job_args, *options_of(fields))
    plan = plan_from_dict(fields)
    assert plan_from_dict(typed["plan"]) == plan
    model, cluster, job = job_of(job_args)
    assert typed["time"]["step_s"] == pytest.approx(estimate_step(model, cluster, job, plan).step_s, abs=5e-7)  # JSON: 6 decimals
    (tmp_path / "p.json").write_text(json.dumps({"plan": typed["plan"]}))
    assert cli_json("estimate", *job_args, "--plan-json", str(tmp_path / "p.json"))["time"] == typed["time"]


def test_a_knob_option_changes_the_estimate_it_names() -> None:
    """Not silently dropped: TP overlap hides TP traffic, the flex dispatcher sends fewer bytes across two nodes."""
    tp8 = ["--tp", "8", "--sp"]
    on, off = (cli_json("estimate", *LLAMA, *tp8, flag)["time"] for flag in ("--tp-overlap", "--no-tp-overlap"))
    assert on["breakdown_s"]["tp_comm"] < off["breakdown_s"]["tp_comm"] and on["step_s"] < off["step_s"]
    ep16 = ["--ep", "16", "--micro-batch", "2"]
    flex, a2a = (cli_json("estimate", *QWEN_2_NODES, *ep16, "--ep-dispatcher", d)["time"] for d in ("flex", "alltoall"))
    assert flex["breakdown_s"]["ep_comm"] != a2a["breakdown_s"]["ep_comm"]
    unset = cli_json("estimate", *QWEN_2_NODES, *ep16)
    assert unset["time"] == a2a and "ep_dispatcher=alltoall (the megatron runtime's default)" in unset["chosen"]


def test_options_beside_plan_json_replace_its_fields_and_rederive_what_depended_on_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, fields = KNOB_PLANS["mixtral-tp-overlap-modules"]
    (tmp_path / "p.json").write_text(json.dumps({"plan": fields}))
    got = cli_json("estimate", *MIXTRAL, "--plan-json", str(tmp_path / "p.json"), "--tp", "1")
    # dp re-derived (32 / (1*4*2)), SP and TP overlap back to their defaults; the rest kept from the file.
    assert (got["plan"]["tp"], got["plan"]["dp"], got["plan"]["sp"], got["plan"]["tp_overlap"]) == (1, 4, False, None)
    assert got["plan"]["recompute_modules"] == ["layernorm", "moe_act"] and got["plan"]["cp_comm"] == "a2a+p2p"
    assert any(c.startswith("tp_overlap: the file's True dropped") for c in got["chosen"])


def test_the_placement_in_a_plan_json_reaches_the_estimate_and_the_launch_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fields = {"dp": 16, "ep": 16, "ep_dispatcher": "flex", "micro_batch": 2}
    (tmp_path / "p.json").write_text(json.dumps({"plan": fields, "placement": {"node_order": [1, 0]}}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["emit", *QWEN_2_NODES, "--plan-json", str(tmp_path / "p.json"),
                                      "--framework", "megatron", "--out", str(out), "--hosts", "gpu-a,gpu-b"])
    assert result.exit_code == 0, result.output
    model, cluster, job = job_of(QWEN_2_NODES)
    expected = files_for(EmitRequest(model=model, cluster=cluster, job=job, plan=plan_from_dict(fields),
                                     placement=Placement(node_order=(1, 0)), hosts=("gpu-a", "gpu-b")), "megatron")
    assert (out / "placement.txt").read_text() == expected["placement.txt"]
    estimated = cli_json("estimate", *QWEN_2_NODES, "--plan-json", str(tmp_path / "p.json"))
    assert estimated["placement"]["node_order"] == [1, 0]  # kept, so this output reads back in turn
    assert estimated["time"]["step_s"] == pytest.approx(
        estimate_step(model, cluster, job, plan_from_dict(fields), Placement(node_order=(1, 0))).step_s, abs=5e-7)
    proc, launches = run_script(out / "launch_megatron.sh", "0", root=tmp_path)
    assert proc.returncode == 0, proc.stderr
    argv = launches[0].argv
    assert argv[argv.index("--moe-token-dispatcher-type") + 1] == "flex"
    assert argv[argv.index("--master-addr") + 1] == "gpu-b"  # node rank 0 runs on the second host


@pytest.mark.parametrize(("name", "flags"), [
    ("mixtral-tp-overlap-modules", {"--tp-comm-overlap": [], "--recompute-modules": ["layernorm", "moe_act"],
                                    "--cp-comm-type": ["a2a+p2p"]}),
    ("qwen-flex-ep-overlap", {"--moe-token-dispatcher-type": ["flex"], "--moe-flex-dispatcher-backend": ["deepep"],
                              "--overlap-moe-expert-parallel-comm": []}),
    ("qwen-hsdp-alltoall", {"--moe-token-dispatcher-type": ["alltoall"], "--num-distributed-optimizer-instances": ["2"],
                            "--use-megatron-fsdp": [], "--grad-reduce-in-bf16": []}),
])
def test_emit_options_put_each_knob_in_the_megatron_launch(name: str, flags: dict, tmp_path) -> None:  # type: ignore[type-arg]
    job_args, fields = KNOB_PLANS[name]
    out = tmp_path / name
    result = CliRunner().invoke(app, ["emit", *job_args, *options_of(fields), "--framework", "megatron",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    proc, launches = run_script(out / "launch_megatron.sh", "0", "10.0.0.1", root=tmp_path)
    assert proc.returncode == 0 and len(launches) == 1, proc.stderr
    argv = launches[0].argv
    for flag, values in flags.items():
        at = argv.index(flag)
        assert argv[at + 1:at + 1 + len(values)] == values, (flag, argv[at:at + 4])
    assert ("--overlap-moe-expert-parallel-comm" in argv) == bool(fields.get("ep_overlap"))


def test_torchtitan_runs_async_tp_and_refuses_by_name_the_knobs_it_cannot_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = ["emit", *LLAMA, "--tp", "2", "--sharding", "zero3", "--framework", "torchtitan"]
    result = CliRunner().invoke(app, [*base, "--tp-overlap", "--out", str(tmp_path / "tt")])
    assert result.exit_code == 0, result.output
    assert "enable_async_tensor_parallel=True" in (tmp_path / "tt" / "torchtitan_job.py").read_text()
    proc, launches = run_script(tmp_path / "tt" / "launch_torchtitan.sh", "0", "10.0.0.1", root=tmp_path)
    assert proc.returncode == 0 and launches[0].launcher == "torchrun", proc.stderr
    for extra, needle in ((["--cp", "2", "--cp-comm", "a2a"], "cp_comm a2a"),
                          (["--recompute", "selective", "--recompute-modules", "mlp"], "recompute modules")):
        code, exc, _ = invoke(*base, *extra, "--out", str(tmp_path / "refused"))
        assert code == 2 and needle in str(exc), exc


@pytest.mark.parametrize(("args", "field", "needle"), [
    ([*LLAMA, "--cp-comm", "ring"], "cp_comm", "must be one of"),
    ([*LLAMA, "--cp-comm", "a2a"], "plan", "cp_comm=a2a needs cp > 1"),
    ([*LLAMA, "--ep-dispatcher", "alltoall"], "ep_dispatcher", "not an MoE model"),
    ([*MIXTRAL, "--ep-dispatcher", "flex"], "plan", "ep_dispatcher=flex needs"),
    ([*MIXTRAL, "--ep-dispatcher", "deepep"], "ep_dispatcher", "must be one of"),
    ([*LLAMA, "--tp-overlap"], "tp_overlap", "needs sequence parallelism"),
    ([*LLAMA, "--tp", "2", "--no-sp", "--tp-overlap"], "tp_overlap", "needs sequence parallelism"),
    ([*MIXTRAL, "--ep-overlap"], "plan", "ep_overlap: needs expert parallelism"),
    ([*LLAMA, "--recompute-modules", "mlp"], "recompute_modules", "needs recompute=selective"),
    ([*LLAMA, "--recompute", "selective", "--recompute-modules", "mlp,attn"], "recompute_modules", "distinct names"),
    ([*LLAMA, "--shard-group", "4"], "shard_group", "needs sharding=hsdp"),
    ([*LLAMA, "--sharding", "hsdp"], "shard_group", "must be > 1"),
    ([*LLAMA, "--sharding", "hsdp", "--shard-group", "3"], "plan", "shard_group=3 must divide"),
])
def test_a_bad_knob_is_one_error_naming_it(args: list[str], field: str, needle: str) -> None:
    code, exc, _ = invoke("estimate", *args)
    assert code == 2 and exc is not None and exc.field == field and needle in str(exc), exc  # type: ignore[attr-defined]


def test_a_bad_plan_json_is_one_error_naming_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = {"plan": {"tp": 2, "dp": 4, "sp": True, "global_batch": 64, "precision": "bf16", "num_gpus": 8}}
    cases = {
        "missing.json": (None, "plan_json", "file not found"),
        "empty-search.json": ({"plans": [], "search": {}}, "plan_json", "plans\" list is empty"),
        "not-a-plan.json": ({"hello": 1}, "plan_json", "holds no plan object"),
        "bad-degree.json": ({"plan": {"tp": "two"}}, "plan_json", "tp='two'"),
        "bad-layers.json": ({"plan": {"tp": 1, "pipeline_layers": 5}}, "plan_json", "pipeline_layers must be a list"),
        "other-batch.json": ({"plan": {**good["plan"], "global_batch": 128}}, "plan_json", "global_batch=128"),
        "other-model.json": ({**good, "model": {"name": "llama3-70b"}}, "plan_json", "model='llama3-70b'"),
        "bad-placement.json": ({**good, "placement": {"node_order": [3]}}, "placement.node_order", "permutation"),
    }
    for name, (content, field, needle) in cases.items():
        if content is not None:
            (tmp_path / name).write_text(json.dumps(content))
        code, exc, _ = invoke("estimate", *LLAMA, "--plan-json", str(tmp_path / name))
        assert code == 2 and exc is not None and exc.field == field and needle in str(exc), (name, exc)  # type: ignore[attr-defined]
    (tmp_path / "good.json").write_text(json.dumps(good))
    assert cli_json("estimate", *LLAMA, "--plan-json", str(tmp_path / "good.json"))["plan"]["tp"] == 2


def test_a_bad_knob_is_one_line_on_stderr_and_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "configurator.cli", "emit", *MIXTRAL, "--ep-dispatcher", "flex",
                           "--framework", "megatron", "--out", "/nonexistent-never-written"],
                          capture_output=True, text=True, timeout=120)
    one_line_error(proc, 2, "ep_dispatcher=flex")
