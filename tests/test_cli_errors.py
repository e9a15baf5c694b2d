"""Every way a user (or an attacker) got a traceback from the CLI now ends in one line naming the field.

Exit 2 for bad input, 1 for the environment (an unwritable folder, an unreachable database). Most cases
run in-process (typer's CliRunner): the exception that reaches ``main`` must be an ``InputError`` or an
``EnvironmentProblem`` with the right field -- never something the last-resort guard has to catch. A few
run as real processes to see stderr and the exit status a user sees.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from configurator.cli import app
from configurator.errors import EnvironmentProblem, InputError

RUNS = Path(__file__).resolve().parents[2] / "shared" / "data" / "published_runs.csv"
SIZE = ["--cluster", "dgx-h100", "--num-gpus", "8", "--seq-len", "4096", "--global-batch", "8"]
EST = ["estimate", "--model", "llama3-8b", *SIZE]


def invoke(*args: str) -> tuple[int, BaseException | None, str]:
    """(exit status as ``main`` would return it, the exception that reached it, stdout)."""
    result = CliRunner().invoke(app, list(args))
    exc = result.exception
    if exc is None or isinstance(exc, SystemExit):
        return result.exit_code, None, result.output
    if isinstance(exc, InputError):
        return 2, exc, result.output
    if isinstance(exc, EnvironmentProblem):
        return 1, exc, result.output
    raise AssertionError(f"{type(exc).__name__} escaped to the last-resort guard: {exc}") from exc


def field_of(*args: str) -> str:
    code, exc, _ = invoke(*args)
    assert code == 2 and exc is not None, (code, exc)
    return exc.field  # type: ignore[attr-defined]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "configurator.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture()
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_bytes(b"\xff\xfe\x00\x01binary")
    return path


def test_non_utf8_model_is_one_line_naming_model(binary: Path) -> None:
    one_line_error(run("estimate", "--model", str(binary), *SIZE), 2, "model=", "not UTF-8")


def test_non_utf8_cluster_calibration_and_runs_name_their_option(binary: Path) -> None:
    assert field_of("estimate", "--model", "llama3-8b", "--cluster", str(binary), *SIZE[2:]) == "cluster"
    assert field_of(*EST, "--calibration", str(binary)) == "calibration"
    assert field_of("validate", "--runs", str(binary)) == "runs"


def test_deeply_nested_json_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert field_of("estimate", "--model", str(deep), *SIZE) == "model"
    assert field_of("estimate", "--model", "llama3-8b", "--cluster", str(deep), *SIZE[2:]) == "cluster"
    assert field_of(*EST, "--calibration", str(deep)) == "calibration"


def test_huge_numbers_in_files_are_refused(tmp_path: Path) -> None:
    digits = tmp_path / "digits.json"
    digits.write_text('{"model_type": "llama", "num_hidden_layers": 1' + "0" * 5000 + "}")
    assert field_of("estimate", "--model", str(digits), *SIZE) == "model"
    overflow = tmp_path / "overflow.json"
    overflow.write_text('{"constants": {"x": 1e999}}')
    assert field_of(*EST, "--calibration", str(overflow)) == "calibration"
    layers = tmp_path / "layers.json"
    layers.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 10**30, "hidden_size": 4096,
                                  "intermediate_size": 14336, "num_attention_heads": 32,
                                  "num_key_value_heads": 8, "vocab_size": 128256}))
    code, exc, _ = invoke("estimate", "--model", str(layers), *SIZE)
    assert code == 2 and "num_layers" in str(exc)


@pytest.mark.parametrize("option,field", [("--num-gpus", "num_gpus"), ("--global-batch", "global_batch"),
                                          ("--seq-len", "seq_len"), ("--vpp", "vpp"), ("--tp", "tp"),
                                          ("--micro-batch", "micro_batch")])
def test_huge_numbers_on_the_command_line_name_their_option(option: str, field: str) -> None:
    args = [*EST]
    if option in args:
        args[args.index(option) + 1] = str(2**70)
    else:
        args += [option, str(2**70)]
    assert field_of(*args) == field


def test_runs_csv_with_only_a_header_is_refused(tmp_path: Path) -> None:
    header = tmp_path / "runs.csv"
    header.write_text(RUNS.read_text().splitlines()[0] + "\n")
    code, exc, _ = invoke("validate", "--runs", str(header))
    assert code == 2 and exc.field == "runs" and "no data rows" in str(exc)  # type: ignore[union-attr]
    assert field_of("calibrate", "--runs", str(header), "--out", str(tmp_path / "c.json")) == "runs"


def test_a_folder_as_calibration_is_refused(tmp_path: Path) -> None:
    code, exc, _ = invoke(*EST, "--calibration", str(tmp_path))
    assert code == 2 and exc.field == "calibration" and "folder" in str(exc)  # type: ignore[union-attr]


def test_missing_output_folder_is_bad_input_before_any_work(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "predictions.csv"
    t0 = time.perf_counter()
    code, exc, _ = invoke("validate", "--runs", str(RUNS), "--out", str(missing))
    assert code == 2 and exc.field == "out"  # type: ignore[union-attr]
    assert time.perf_counter() - t0 < 5  # refused before predicting 300 rows
    assert field_of(*EST, "--svg", str(missing.with_suffix(".svg"))) == "svg"


def test_read_only_output_folder_is_an_environment_error(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import tempfile

    def read_only(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, exc, _ = invoke("validate", "--runs", str(RUNS), "--out", str(tmp_path / "p.csv"))
    assert code == 1 and exc.field == "out" and "not writable" in str(exc)  # type: ignore[union-attr]
    code, exc, _ = invoke("emit", "--model", "llama3-8b", *SIZE, "--framework", "megatron",
                          "--out", str(tmp_path / "launch"))
    assert code == 1 and exc.field == "out"  # type: ignore[union-attr]
    code, exc, _ = invoke("plan", "--model", "llama3-8b", *SIZE, "--emit", "megatron",
                          "--out", str(tmp_path / "launch"))
    assert code == 1 and exc.field == "out"  # type: ignore[union-attr]


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs Linux /sys (a folder nobody may write)")
def test_unwritable_output_folder_exits_1_as_a_process() -> None:
    one_line_error(run("validate", "--runs", str(RUNS), "--out", "/sys/predictions.csv"), 1, "out=", "not writable")


def test_optuna_seed_must_fit_32_bits() -> None:
    assert field_of("plan", "--model", "llama3-8b", *SIZE, "--seed", str(2**32), "--method", "optuna") == "seed"
    assert field_of("plan", "--model", "llama3-8b", *SIZE, "--seed", "-1") == "seed"


def test_bad_storage_urls_are_bad_input_and_unreachable_ones_environment(tmp_path: Path) -> None:
    assert field_of("plan", "--model", "llama3-8b", *SIZE, "--storage", "bogus://x") == "storage"
    assert field_of("plan", "--model", "llama3-8b", *SIZE, "--storage", "not a url") == "storage"
    code, exc, _ = invoke("plan", "--model", "llama3-8b", *SIZE, "--storage",
                          f"sqlite:///{tmp_path}/missing/dir/study.db")
    assert code == 1 and exc.field == "storage"  # type: ignore[union-attr]
    assert field_of("serve", "--db", "bogus://x") == "db"


def test_bad_storage_url_as_a_process_hides_the_password() -> None:
    proc = run("plan", "--model", "llama3-8b", *SIZE, "--storage", "nosuchdb://user:secret@host/db")
    one_line_error(proc, 2, "storage=")
    assert "secret" not in proc.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_model_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    one_line_error(run("estimate", "--model", str(fifo), *SIZE, timeout=60), 2, "model=", "not a regular file")


def test_profile_of_8000_nodes_without_links_fails_fast_and_small(tmp_path: Path) -> None:
    import resource

    preset = json.loads((Path(__file__).resolve().parents[1] / "profiles" / "clusters" / "dgx-h100.json").read_text())
    for nodes in (8000, 3000):
        profile = dict(preset, default_num_nodes=nodes, links=[])
        path = tmp_path / f"p{nodes}.json"
        path.write_text(json.dumps(profile))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        code, exc, _ = invoke("estimate", "--model", "llama3-8b", "--cluster", str(path), "--seq-len", "4096",
                              "--global-batch", "8")
        assert code == 2 and exc.field.endswith(("nodes", "links"))  # type: ignore[union-attr]
        assert time.perf_counter() - t0 < 2
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: no 9M-cell matrix


def test_global_batch_of_a_million_is_estimated_in_seconds() -> None:
    t0 = time.perf_counter()
    code, exc, out = invoke("estimate", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "16",
                            "--seq-len", "4096", "--global-batch", "1000000", "--pp", "2", "--json")
    assert code == 0, exc
    assert json.loads(out)["time"]["step_s"] > 0
    assert time.perf_counter() - t0 < 20  # was 20 s and 1.4 GB of the schedule alone


# ----- small things a new user hit ------------------------------------------------------------------
def test_version() -> None:
    from configurator import __version__

    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"configurator {__version__}"


def test_precision_is_case_insensitive() -> None:
    code, exc, out = invoke(*EST, "--precision", "BF16", "--json")
    assert code == 0, exc
    assert json.loads(out)["plan"]["precision"] == "bf16"


def test_plan_on_a_preset_without_a_size_names_both_options() -> None:
    code, exc, _ = invoke("plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--seq-len", "4096",
                          "--global-batch", "8")
    assert code == 2 and "--num-gpus" in str(exc) and "--nodes" in str(exc)


def test_model_may_be_a_checkpoint_folder_holding_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}))
    code, exc, out = invoke("estimate", "--model", str(tmp_path), *SIZE, "--json")
    assert code == 0, exc
    empty = tmp_path / "empty"
    empty.mkdir()
    code, exc, _ = invoke("estimate", "--model", str(empty), *SIZE)
    assert code == 2 and "config.json" in str(exc)


def test_emit_and_out_errors_name_the_missing_option(tmp_path: Path) -> None:
    code, exc, _ = invoke("plan", "--model", "llama3-8b", *SIZE, "--out", str(tmp_path))
    assert exc.field == "emit"  # type: ignore[union-attr]
    code, exc, _ = invoke("plan", "--model", "llama3-8b", *SIZE, "--emit", "megatron")
    assert exc.field == "out"  # type: ignore[union-attr]


def test_preset_names_are_not_cut_at_80_columns() -> None:
    from configurator.profiles import cluster_names, model_names

    env = dict(os.environ, COLUMNS="80")
    for command, names in (("models", model_names()), ("clusters", cluster_names())):
        proc = subprocess.run([sys.executable, "-m", "configurator.cli", command], capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "…" not in proc.stdout
        assert all(len(line) <= 80 for line in proc.stdout.splitlines())
        for name in names:
            assert name in proc.stdout, name


def test_last_resort_guard_prints_one_line_for_anything_unexpected(capsys) -> None:  # type: ignore[no-untyped-def]
    from configurator.cli import guarded

    def boom(exc: BaseException):  # type: ignore[no-untyped-def]
        def run() -> None:
            raise exc
        return run

    assert guarded(boom(RecursionError("deep"))) == 2
    assert guarded(boom(PermissionError(13, "Permission denied", "/x"))) == 1
    assert guarded(boom(KeyError("surprise"))) == 1
    assert guarded(boom(SystemExit(3))) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "internal error (KeyError" in err[2] and "/x: Permission denied" in err[1]


@pytest.mark.parametrize(("args", "needle"), [
    (("plan", "--model", "llama3-8b", "--cluster", "dgx-h100"), "Missing option '--seq-len'"),
    (("plan", "--model", "llama3-8b", *SIZE[:-1], "many"), "'--global-batch'"),
    (("plan", "--no-such-flag"), "--no-such-flag"),
    (("no-such-command",), "no-such-command"),
])
def test_usage_errors_are_one_line_naming_the_option(args: tuple[str, ...], needle: str) -> None:
    # Typer's standalone mode printed these as a multi-line panel (exit 2 all the same).
    one_line_error(run(*args), 2, needle)


def test_no_arguments_prints_the_help_and_exits_2() -> None:
    proc = run()
    assert proc.returncode == 2 and "plan" in proc.stdout and "Traceback" not in proc.stderr


def test_error_lines_stay_short_whatever_the_value() -> None:
    # A 100,000-element list from a hostile profile, an integer past Python's 4,300-digit repr limit.
    assert len(str(InputError("cluster:nodes", list(range(100_000)), "must be a list of objects"))) < 260
    assert str(InputError("num_layers", 10**5000, "too big")) == "num_layers=<16610-bit integer>: too big"


def test_calibrate_names_a_bad_prior_or_an_unknown_cv_group_before_fitting(tmp_path: Path) -> None:
    import csv

    rows = [r for r in csv.DictReader(RUNS.open()) if r["measured_tokens_per_s_per_gpu"]][:6]
    runs = tmp_path / "runs.csv"
    with runs.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = str(tmp_path / "c.json")
    assert field_of("calibrate", "--runs", str(runs), "--out", out, "--prior", "strong") == "prior"
    assert field_of("calibrate", "--runs", str(runs), "--out", out, "--cv-group", "Nobody") == "cv-group"
    assert not (tmp_path / "c.json").exists()
