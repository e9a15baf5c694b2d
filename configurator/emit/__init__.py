"""Launch files for a plan. One entry point: ``emit(request, framework, out_dir, force=...)``.

Files (INTERFACE.md "Emitted files"):

* ``megatron``: ``megatron_args.txt``, ``launch_megatron.sh``, ``placement.txt``;
* ``deepspeed``: ``ds_config.json``, ``hostfile``, ``launch_deepspeed.sh`` (plans DeepSpeed cannot run
  are refused with the reason, see ``deepspeed.unsupported``);
* ``all``: both.

An existing folder holding other files is never overwritten silently: refused unless ``force``;
files are written to a temporary name first, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from configurator.emit import deepspeed, megatron, rocm
from configurator.errors import InputError
from configurator.placement import Placement
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan

FRAMEWORKS = ("megatron", "deepspeed", "all")
MEGATRON_FILES = ("megatron_args.txt", "launch_megatron.sh", "placement.txt")
DEEPSPEED_FILES = ("ds_config.json", "hostfile", "launch_deepspeed.sh")


@dataclass(frozen=True, kw_only=True, slots=True)
class EmitRequest:
    model: ModelSpec
    cluster: ClusterSpec
    job: JobSpec
    plan: Plan
    placement: Placement | None = None


def files_for(request: EmitRequest, framework: str) -> dict[str, str]:
    """File name -> content, or an ``InputError`` when the framework cannot run the plan."""
    if framework not in FRAMEWORKS:
        raise InputError("emit", framework, f"must be one of {', '.join(FRAMEWORKS)}")
    placement = request.placement or Placement.default(request.cluster)
    out: dict[str, str] = {}
    if framework in ("megatron", "all"):
        args = megatron.megatron_args(request.model, request.cluster, request.job, request.plan)
        out["megatron_args.txt"] = "\n".join(args) + "\n"
        out["launch_megatron.sh"] = megatron.launch_script(request.model, request.cluster, request.plan, placement)
        out["placement.txt"] = megatron.placement_text(request.cluster, request.plan, placement)
    if framework in ("deepspeed", "all"):
        reasons = deepspeed.unsupported(request.plan, request.job)
        if reasons:
            raise InputError("emit", "deepspeed", f"cannot run {request.plan.describe()}: {reasons[0]}")
        out["ds_config.json"] = deepspeed.ds_config_text(request.model, request.job, request.plan)
        out["hostfile"] = deepspeed.hostfile(request.cluster, placement)
        out["launch_deepspeed.sh"] = deepspeed.launch_script(request.cluster, request.plan, placement)
    return rocm.adapt(out, request.cluster, request.plan, request.job)  # AMD: RCCL env, refusals by name


def emit(request: EmitRequest, framework: str, out_dir: Path, *, force: bool = False) -> list[Path]:
    files = files_for(request, framework)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("out", str(out_dir), "is a file, not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise InputError("out", str(out_dir), "is not empty; pass --force to overwrite the emitted files")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = out_dir / name
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        if name.endswith(".sh"):
            os.chmod(tmp, 0o755)
        tmp.replace(path)
        written.append(path)
    return written


__all__ = ["DEEPSPEED_FILES", "EmitRequest", "FRAMEWORKS", "MEGATRON_FILES", "emit", "files_for"]
