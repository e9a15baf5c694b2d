"""Property-based fuzzing of the command line: any option values, any files, never a traceback.

Hypothesis draws commands and option values -- numbers from negative to 2^70, NaN/inf, garbage text,
mixed-case choices, hostile files (binary, deeply nested, huge numbers, a folder, a FIFO, a header-only
CSV) -- and each run must end with exit status 0, 1, 2 or 3, with any error an ``InputError`` or
``EnvironmentProblem`` (the exceptions ``main`` prints as one line), never anything the last-resort guard
would have to catch. In-process through typer's CliRunner (bounded: ~100 examples in total, no deadline),
plus a few real processes checked for "Traceback" on stderr. Rerun: ``python -m pytest -q tests/test_cli_fuzz.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from configurator.cli import app
from configurator.errors import EnvironmentProblem, InputError

RUNS = Path(__file__).resolve().parents[2] / "shared" / "data" / "published_runs.csv"


def _hostile_files() -> dict[str, Path]:
    """Made at import (strategies sample their names); removed at exit."""
    import atexit
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="configurator-fuzz-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    (root / "binary.json").write_bytes(b"\xff\xfe\x00\x01\x80binary")
    (root / "deep.json").write_text("[" * 50_000 + "]" * 50_000)
    (root / "digits.json").write_text('{"model_type": "llama", "num_hidden_layers": 1' + "0" * 5000 + "}")
    (root / "inf.json").write_text('{"constants": {"x": 1e999}, "name": NaN}')
    (root / "list.json").write_text("[1, 2, 3]")
    (root / "empty.json").write_text("")
    (root / "header.csv").write_text(RUNS.read_text().splitlines()[0] + "\n")
    (root / "nul.csv").write_bytes(b"a,b\n1,\x00\n")
    (root / "folder").mkdir()
    (root / "llama.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 4, "hidden_size": 512, "intermediate_size": 1024,
        "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 1000}))
    (root / "plan.json").write_text(json.dumps({"plans": [{"plan": {
        "tp": 2, "dp": 4, "sp": True, "pipeline_layers": {"a": 1}, "recompute_modules": 7, "tp_overlap": "yes",
        "cp_comm": ["a2a"], "shard_group": -1}, "placement": {"node_order": True, "gpu_order": [[0.5]]},
        "model": {"name": 3}}]}))
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "fifo.json")
    files = {p.name: p for p in root.iterdir()}
    files["missing"] = root / "missing" / "x.json"
    files["sys"] = Path("/sys/forbidden.csv")
    return files


FILES = _hostile_files()


def paths() -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(FILES)).map(lambda name: str(FILES[name]))


INTS = st.integers(-3, 70).map(lambda e: str(2**e) if e >= 0 else str(e))
GARBAGE = st.sampled_from(["nan", "inf", "-inf", "1e9", "1.5", "", "abc", "1_000", "0x10", "８"])
NUMBERS = st.one_of(INTS, INTS, INTS, GARBAGE)  # mostly parseable, so the run gets past typer's parsing
TEXT = st.text(max_size=20)
MODEL = st.one_of(st.sampled_from(["llama3-8b", "mixtral-8x7b", "deepseek-v3", "LLAMA3-8B", "gpt3-175b"]), paths(),
                  paths(), TEXT)
CLUSTER = st.one_of(st.sampled_from(["dgx-h100", "dgx-a100", "gb200-nvl72", "DGX-H100"]),
                    st.sampled_from(["dgx-h100", "dgx-a100"]), paths(), TEXT)
CHOICE = {"--precision": ["bf16", "BF16", "Fp8", "fp4", "fp16", "int8"],
          "--sharding": ["none", "zero1", "zero2", "zero3", "distopt", "hsdp", "ZeRO1"],
          "--recompute": ["none", "selective", "full", "FULL", "all"],
          "--runtime": ["megatron", "deepspeed", "fsdp", "nemo", "torch"],
          "--pipeline-layers": ["1,1", "7,8,8,7", "a,b", "-1,33", "", "1" + ",1" * 2000],
          "--cp-comm": ["p2p", "all_gather", "a2a", "a2a+p2p", "ring", "A2A"],
          "--ep-dispatcher": ["alltoall", "flex", "deepep", "FLEX"],
          "--recompute-modules": ["core_attn", "mlp,moe", "mlp mlp", "x", ",", "mlp," * 500]}
INT_OPTIONS = ["--num-gpus", "--nodes", "--seq-len", "--global-batch", "--micro-batch", "--tp", "--pp", "--vpp",
               "--cp", "--ep", "--etp", "--dp", "--recompute-layers", "--shard-group"]
SWITCHES = ["--tp-overlap", "--no-tp-overlap", "--ep-overlap", "--no-ep-overlap"]


SECONDS_PER_RUN = 60
SLOWEST: list[tuple[float, list[str]]] = []


def check(args: list[str]) -> int:
    """Run in-process; the exit status ``main`` would give. Fails on any other escaping exception, and on a
    run longer than ``SECONDS_PER_RUN`` (the cost of a request is bounded whatever its numbers)."""
    import signal
    import time

    def too_slow(*_):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{args}: still running after {SECONDS_PER_RUN} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(SECONDS_PER_RUN)
    t0 = time.perf_counter()
    try:
        result = CliRunner().invoke(app, args, catch_exceptions=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if isinstance(result.exception, AssertionError) and "still running" in str(result.exception):
        raise result.exception
    SLOWEST.append((time.perf_counter() - t0, args))
    exc = result.exception
    if exc is None or isinstance(exc, SystemExit):
        code = result.exit_code
    elif isinstance(exc, InputError):
        code = 2
    elif isinstance(exc, EnvironmentProblem):
        code = 1
    else:
        raise AssertionError(f"{args}: {type(exc).__name__} would reach the last-resort guard: {exc}") from exc
    assert code in (0, 1, 2, 3), (args, code, result.output[-500:])
    return code


@st.composite
def given_plan_args(draw, command: str) -> list[str]:  # type: ignore[no-untyped-def]
    args = [command, "--model", draw(MODEL), "--cluster", draw(CLUSTER)]
    size = draw(st.sampled_from(["--num-gpus", "--nodes", None]))
    if size:
        args += [size, draw(st.one_of(st.sampled_from(["8", "16", "64"]), NUMBERS))]
    args += ["--seq-len", draw(st.one_of(st.sampled_from(["2048", "4096"]), st.sampled_from(["2048", "4096"]),
                                         NUMBERS)),
             "--global-batch", draw(st.one_of(st.sampled_from(["8", "64", "1024"]), NUMBERS))]
    for option in draw(st.lists(st.sampled_from(INT_OPTIONS[4:]), max_size=4, unique=True)):
        args += [option, draw(st.one_of(st.sampled_from(["1", "2", "4"]), NUMBERS))]
    for option in draw(st.lists(st.sampled_from(sorted(CHOICE)), max_size=3, unique=True)):
        args += [option, draw(st.one_of(st.sampled_from(CHOICE[option]), TEXT))]
    if draw(st.booleans()):
        args += ["--offload", draw(NUMBERS)]
    if draw(st.booleans()):
        args += ["--calibration", draw(paths())]
    args += draw(st.lists(st.sampled_from(SWITCHES), max_size=2))
    if draw(st.booleans()):
        args += ["--plan-json", draw(paths())]
    return args


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@fuzz(45)
@given(st.one_of(given_plan_args("estimate"), given_plan_args("explain")))
def test_estimate_never_escapes_with_a_traceback(args: list[str]) -> None:
    check(args)


@fuzz(12)
@given(st.data())
def test_emit_never_escapes_with_a_traceback(tmp_path_factory, data) -> None:  # type: ignore[no-untyped-def]
    args = data.draw(given_plan_args("emit"))
    out = data.draw(st.one_of(st.just(str(tmp_path_factory.mktemp("emit"))), paths()))
    check([*args, "--framework", data.draw(st.sampled_from(["megatron", "deepspeed", "all", "MEGATRON", "x"])),
           "--out", out])


@fuzz(15)
@given(st.data())
def test_plan_never_escapes_with_a_traceback(data) -> None:  # type: ignore[no-untyped-def]
    # Small searches only (the search's own time budget is another test's subject): <= 16 GPUs, 1 s.
    args = ["plan", "--model", data.draw(MODEL), "--cluster", data.draw(CLUSTER),
            "--num-gpus", data.draw(st.sampled_from(["8", "16", "0", "-8", "3", str(2**70)])),
            "--seq-len", data.draw(st.sampled_from(["4096", "0", str(2**70), "nan"])),
            "--global-batch", data.draw(st.sampled_from(["64", "7", "1000000", str(2**70)])),
            "--time-budget", data.draw(st.sampled_from(["1", "0", "-1", "nan", "inf", "1e300"])),
            "--top", data.draw(st.sampled_from(["1", "3", "0", str(2**70)]))]
    extra = data.draw(st.lists(st.sampled_from(["seed", "method", "storage", "workers", "trials", "framework",
                                                "emit", "precision"]), max_size=3, unique=True))
    values = {"seed": ["0", "-1", str(2**32), str(2**70)], "method": ["auto", "optuna", "EXHAUSTIVE", "x"],
              "storage": ["bogus://", "sqlite:///" + str(FILES["missing"]), "::"],
              "workers": ["0", "100000", "-1"], "trials": ["0", "5", str(2**70)],
              "framework": ["megatron", "deepspeed", "x"], "emit": ["megatron", "x"],
              "precision": CHOICE["--precision"]}
    for name in extra:
        args += [f"--{name}", data.draw(st.sampled_from(values[name]))]
    if "emit" in extra:
        args += ["--out", data.draw(paths())]
    check(args)


@fuzz(15)
@given(st.data())
def test_other_commands_never_escape_with_a_traceback(data) -> None:  # type: ignore[no-untyped-def]
    command = data.draw(st.sampled_from(["models", "clusters", "validate", "probe", "serve", "bench"]))
    if command in ("models", "clusters"):
        args = [command] + data.draw(st.sampled_from([[], ["--json"], ["--bogus"]]))
    elif command == "validate":
        args = [command, "--runs", data.draw(paths()), "--out", data.draw(paths())]
    elif command == "probe":
        args = [command, "--out", "x.json", "--nodes", data.draw(NUMBERS), "--node-rank", data.draw(NUMBERS),
                "--master-addr", data.draw(TEXT), "--nproc-per-node", data.draw(NUMBERS)]
    elif command == "serve":  # only arguments that are refused before the server would start
        args = [command, "--port", data.draw(st.sampled_from(["0", "-1", "70000", str(2**70)]))]
    else:
        args = [command, "--check", "--golden", data.draw(paths()), "--only", "no-such-scenario"]  # no search
    check(args)


@pytest.mark.parametrize("args", [
    ["estimate", "--model", "binary.json", "--cluster", "dgx-h100", "--num-gpus", "8", "--seq-len", "4096",
     "--global-batch", "8"],
    ["estimate", "--model", "llama3-8b", "--cluster", "deep.json", "--num-gpus", "8", "--seq-len", "4096",
     "--global-batch", "8"],
    ["estimate", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "8", "--seq-len", "4096",
     "--global-batch", "8", "--calibration", "folder"],
    ["validate", "--runs", "header.csv"],
    ["validate", "--runs", "nul.csv"],
    ["plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "8", "--seq-len", "4096",
     "--global-batch", "8", "--seed", str(2**64)],
])
def test_real_processes_print_one_line_and_no_traceback(args: list[str]) -> None:
    args = [str(FILES[a]) if a in FILES else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "configurator.cli", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
