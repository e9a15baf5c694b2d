"""Launch files for a plan. One entry point: ``emit(requests, out_dir, force=...)``.

Files (INTERFACE.md "Emitted files"):

* ``megatron``: ``megatron_args.txt``, ``launch_megatron.sh``, ``launch_megatron.sbatch``, ``placement.txt``;
* ``deepspeed``: ``ds_config.json``, ``hostfile``, ``launch_deepspeed.sh``, ``launch_deepspeed.sbatch``
  (plans DeepSpeed cannot run are refused with the reason, see ``deepspeed.unsupported``);
* ``torchtitan``: ``torchtitan_job.py`` (a Python module: torchtitan 0.3.0 reads ``--module/--config``, not
  TOML), ``launch_torchtitan.sh``, ``launch_torchtitan.sbatch`` (see ``torchtitan`` for what is refused);
* ``all``: all three, each for its own request (``plan --emit all`` searches each framework's space);
* always ``MANIFEST``: which plan each file set holds and the files written.

Writing is atomic and never touches what the tool did not write (``files.write_folder``): the files are
built in a fresh temporary folder beside the target and renamed into place; ``--force`` replaces only
the files an earlier ``MANIFEST`` lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from configurator.emit import deepspeed, megatron, rocm, torchtitan
from configurator.emit.files import write_folder
from configurator.emit.shell import check_hosts, sbatch_script
from configurator.errors import InputError
from configurator.placement import Placement
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan

TARGETS = ("megatron", "deepspeed", "torchtitan")
FRAMEWORKS = (*TARGETS, "all")
MEGATRON_FILES = ("megatron_args.txt", "launch_megatron.sh", "launch_megatron.sbatch", "placement.txt")
DEEPSPEED_FILES = ("ds_config.json", "hostfile", "launch_deepspeed.sh", "launch_deepspeed.sbatch")
TORCHTITAN_FILES = ("torchtitan_job.py", "launch_torchtitan.sh", "launch_torchtitan.sbatch")


@dataclass(frozen=True, kw_only=True, slots=True)
class EmitRequest:
    model: ModelSpec
    cluster: ClusterSpec
    job: JobSpec
    plan: Plan
    placement: Placement | None = None
    hosts: tuple[str, ...] = ()
    """Host names of the cluster's nodes in its profile order (--hosts/--hostfile); () = unknown."""


def targets_of(framework: str) -> tuple[str, ...]:
    if framework not in FRAMEWORKS:
        raise InputError("emit", framework, f"must be one of {', '.join(FRAMEWORKS)}")
    return TARGETS if framework == "all" else (framework,)


def check_framework_runs(framework: str, model: ModelSpec, job: JobSpec) -> None:
    """An ``InputError`` naming the field when ``framework`` can run no plan of ``model`` and ``job`` at all
    (torchtitan: a model none of its families builds, or fp16/fp4; DeepSpeed: fp8/fp4). A search for that
    framework's plans is refused before it starts: it would drop every plan and report that nothing fits memory."""
    if framework == "torchtitan":
        torchtitan.family(model)
        reasons = torchtitan.job_refusals(job)
    elif framework == "deepspeed":
        reasons = deepspeed.job_refusals(job)
    else:
        return
    if reasons:
        raise InputError("precision", job.precision, f"{framework} can run no plan of this job: {reasons[0]} "
                         "(framework megatron runs it)")


def files_for(request: EmitRequest, framework: str) -> dict[str, str]:
    """File name -> content, or an ``InputError`` when the framework cannot run the plan or the model."""
    targets = targets_of(framework)
    placement = request.placement or Placement.default(request.cluster)
    names = check_hosts(request.cluster, request.hosts) if request.hosts else ()
    out: dict[str, str] = {}
    if "megatron" in targets:
        args = megatron.megatron_args(request.model, request.cluster, request.job, request.plan)
        out["megatron_args.txt"] = "\n".join(args) + "\n"
        out["launch_megatron.sh"] = megatron.launch_script(request.model, request.cluster, request.plan, placement,
                                                           names)
        out["launch_megatron.sbatch"] = sbatch_script(request.cluster, "Megatron-LM", "launch_megatron.sh",
                                                      per_node=True)
        out["placement.txt"] = megatron.placement_text(request.cluster, request.plan, placement, names)
    if "deepspeed" in targets:
        reasons = deepspeed.unsupported(request.plan, request.job)
        if reasons:
            raise InputError("emit", "deepspeed", f"cannot run {request.plan.describe()}: {reasons[0]}")
        out["ds_config.json"] = deepspeed.ds_config_text(request.model, request.job, request.plan)
        out["hostfile"] = deepspeed.hostfile(request.cluster, placement, names)
        out["launch_deepspeed.sh"] = deepspeed.launch_script(request.cluster, request.plan, placement, names)
        out["launch_deepspeed.sbatch"] = sbatch_script(request.cluster, "DeepSpeed", "launch_deepspeed.sh",
                                                       per_node=False)
    if "torchtitan" in targets:
        out["torchtitan_job.py"] = torchtitan.job_module(request.model, request.job, request.plan)
        out["launch_torchtitan.sh"] = torchtitan.launch_script(request.cluster, request.plan, placement, names)
        out["launch_torchtitan.sbatch"] = sbatch_script(request.cluster, "torchtitan", "launch_torchtitan.sh",
                                                        per_node=True)
    return rocm.adapt(out, request.cluster, request.plan, request.job)  # AMD: RCCL env, refusals by name


def emit(request: EmitRequest | dict[str, EmitRequest], framework: str, out_dir: Path, *,
         force: bool = False, notes: list[str] | None = None) -> list[Path]:
    """Write the files of ``framework`` for ``request`` (one request, or one per target) into ``out_dir``.

    With ``notes`` (a list) and several targets, a target that refuses its plan or model adds one line to
    ``notes`` and the others are still written; without it, or when every target refuses, the refusal raises.
    A dict of requests may hold fewer targets than ``framework`` names (``plan --emit all`` leaves out a
    framework that can run no plan of the job): only those it holds are written."""
    targets = targets_of(framework)
    if isinstance(request, dict):
        requests = request
        targets = tuple(t for t in targets if t in requests)
        if not targets:
            raise InputError("emit", framework, f"no request for it (requests for: {', '.join(requests) or 'none'})")
    else:
        requests = {t: request for t in targets}
    files: dict[str, str] = {}
    held: list[str] = []
    refused: list[InputError] = []
    for target in targets:
        try:
            part = files_for(requests[target], target)
        except InputError as exc:
            if notes is None or len(targets) == 1:
                raise
            refused.append(exc)
            notes.append(f"{target}: {exc}; its files are not written")
            continue
        files.update(part)
        held.append(f"{target}: {requests[target].plan.describe()}: {', '.join(part)}")
    if not files:
        raise refused[0]
    return write_folder(out_dir, files, held, force=force)


__all__ = ["DEEPSPEED_FILES", "EmitRequest", "FRAMEWORKS", "MEGATRON_FILES", "TARGETS", "TORCHTITAN_FILES", "emit", "files_for",
           "targets_of"]
