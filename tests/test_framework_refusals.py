"""A framework that can run no plan of a job (DeepSpeed and fp8/fp4, torchtitan and fp16/fp4 or a model none of
its families builds) is refused before the search, naming the field. Before, the search dropped every plan as
unsupported and said that nothing fits memory (exit 3), sending the user after memory that was never the
problem."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from configurator.cli import app
from configurator.emit import check_framework_runs, deepspeed, torchtitan
from configurator.errors import InputError
from configurator.profiles import load_model
from configurator.specs.job import JobSpec
from configurator.specs.plan import Plan

JOB = ["--cluster", "gb200-nvl72", "--num-gpus", "8", "--seq-len", "4096", "--global-batch", "64"]


@pytest.mark.parametrize(("framework", "precision", "refused"), [
    ("deepspeed", "fp8", True), ("deepspeed", "fp4", True), ("deepspeed", "fp16", False),
    ("deepspeed", "bf16", False), ("torchtitan", "fp16", True), ("torchtitan", "fp4", True),
    ("torchtitan", "fp8", False), ("torchtitan", "bf16", False), ("megatron", "fp8", False),
    ("megatron", "fp4", False),
])
def test_the_job_check_agrees_with_every_plans_refusals(framework: str, precision: str, refused: bool) -> None:
    model, job = load_model("llama3-8b"), JobSpec(global_batch=64, seq_len=4096, precision=precision)
    plan = Plan(dp=8, sharding="zero3")  # a plan both DeepSpeed and torchtitan run in bf16
    if refused:
        with pytest.raises(InputError) as exc:
            check_framework_runs(framework, model, job)
        assert exc.value.field == "precision"
    else:
        check_framework_runs(framework, model, job)
    # The plan-level refusals carry the same reason, so the search and the emitters cannot disagree.
    if framework == "deepspeed":
        assert bool(deepspeed.unsupported(plan, job)) == refused
    elif framework == "torchtitan":
        assert bool(torchtitan.unsupported(model, plan, job)) == refused


@pytest.mark.parametrize(("framework", "precision", "model", "field"), [
    ("deepspeed", "fp8", "llama3-8b", "precision"),
    ("torchtitan", "fp16", "llama3-8b", "precision"),
    ("torchtitan", "bf16", "qwen3-30b-a3b", "model.moe_aux_loss_coeff"),
])
def test_plan_refuses_before_searching(framework: str, precision: str, model: str, field: str) -> None:
    result = CliRunner().invoke(app, ["plan", "--model", model, *JOB, "--precision", precision,
                                      "--framework", framework])
    assert isinstance(result.exception, InputError), (result.exit_code, result.output)
    assert result.exception.field == field


def test_plan_emit_all_notes_the_framework_that_cannot_run_the_precision(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "fp8"
    proc = subprocess.run([sys.executable, "-m", "configurator.cli", "plan", "--model", "llama3-8b", *JOB,
                           "--precision", "fp8", "--emit", "all", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: deepspeed")]
    assert len(notes) == 1 and "precision='fp8'" in notes[0] and "Transformer Engine" in notes[0], proc.stderr
    written = {p.name for p in out.iterdir()}
    assert "launch_megatron.sh" in written and "torchtitan_job.py" in written and "ds_config.json" not in written


def test_plan_emit_all_writes_the_other_two_when_torchtitan_cannot_build_the_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One framework left out of ``--emit all`` (torchtitan: the preset's auxiliary loss) while the other two
    have plans: before, the writer still asked for torchtitan's request and the CLI died with an internal
    KeyError, writing nothing."""
    out = tmp_path / "moe"
    proc = subprocess.run([sys.executable, "-m", "configurator.cli", "plan", "--model", "qwen3-30b-a3b", "--cluster",
                           "dgx-h100", "--num-gpus", "16", "--seq-len", "4096", "--global-batch", "64",
                           "--emit", "all", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "internal error" not in proc.stderr, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: torchtitan")]
    assert len(notes) == 1 and "moe_aux_loss_coeff" in notes[0], proc.stderr
    written = {p.name for p in out.iterdir()}
    assert {"launch_megatron.sh", "ds_config.json", "MANIFEST"} <= written and "torchtitan_job.py" not in written
    manifest = (out / "MANIFEST").read_text()
    assert "# megatron: " in manifest and "# deepspeed: " in manifest and "torchtitan" not in manifest
