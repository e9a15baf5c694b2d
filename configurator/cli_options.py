"""Shared pieces of the command line: option types, the console, request helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from configurator.errors import InputError
from configurator.profiles import load_cluster, load_model
from configurator.specs.job import JobSpec

console = Console()

ModelOpt = Annotated[str, typer.Option("--model", help="Preset name (see `models`) or a Hugging Face config.json path.")]
ClusterOpt = Annotated[str, typer.Option("--cluster", help="Preset name (see `clusters`) or a cluster profile JSON path.")]
NumGpusOpt = Annotated[Optional[int], typer.Option("--num-gpus", help="Cluster size in GPUs (presets).")]
NodesOpt = Annotated[Optional[int], typer.Option("--nodes", help="Cluster size in nodes (presets).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")]
GlobalBatchOpt = Annotated[int, typer.Option("--global-batch", help="Sequences per optimizer step.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="bf16|fp16|fp8|fp4.")]
CalibrationOpt = Annotated[Optional[Path], typer.Option(
    "--calibration", help="Cost-model constants file (default: profiles/calibration.json).")]


def _constants(path: Path | None):  # type: ignore[no-untyped-def]
    from configurator.cost.constants import load_calibration

    return load_calibration(path)


def _parse_layers(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise InputError("pipeline_layers", text, "must be comma-separated integers") from None


def _job(model: str, cluster: str, num_gpus: int | None, nodes: int | None, global_batch: int, seq_len: int,
         precision: str):  # type: ignore[no-untyped-def]
    """The model, the sized cluster and the job of a request (each checked)."""
    spec = load_model(model)
    hw = load_cluster(cluster, num_gpus=num_gpus, nodes=nodes)
    job = JobSpec(global_batch=global_batch, seq_len=seq_len, precision=precision)
    if not hw.gpu.supports(precision):
        raise InputError("precision", precision, f"is not supported by {hw.gpu.key} ({hw.name})")
    return spec, hw, job
