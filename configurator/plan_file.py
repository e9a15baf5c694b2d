"""A plan read back from JSON (``estimate --plan-json`` / ``emit --plan-json``), so that the exact plan ``plan``
chose -- its knobs and placement included -- can be estimated again or written as launch files by hand.

Accepted shapes, all of them this tool's own output (INTERFACE.md):
* ``plan --json`` output ``{"plans": [...], ...}``: its first (best) plan;
* one ``plans`` entry or an ``estimate --json`` object ``{"plan": {...}, "placement": {...}?, "model": ...}``;
* a bare plan object ``{"tp": .., "pp": .., ...}`` (missing keys take ``Plan``'s defaults).

The file's job (``global_batch``, ``precision``, ``num_gpus``; the model's name where the object carries it)
must be the command's: a plan is only meaningful for the job it was made for. Plan options given on the
command line replace the file's fields; the fields derived from a replaced one (``DERIVED_FROM``) go back
to their defaults, so ``--tp 4`` on a TP8 plan re-derives dp and SP instead of failing on the old dp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configurator.errors import InputError, shown
from configurator.placement import Placement
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import PLAN_FIELDS, Plan, plan_from_dict

FIELD = "plan_json"

DERIVED_FROM: dict[str, tuple[str, ...]] = {
    "dp": ("tp", "pp", "cp"),
    "sp": ("tp",),
    "pipeline_layers": ("pp", "vpp"),
    "shard_group": ("sharding",),
    "recompute_num_layers": ("recompute",),
    "recompute_modules": ("recompute",),
    "tp_overlap": ("tp", "sp"),
    "cp_comm": ("cp",),
    "ep_overlap": ("ep", "pp", "vpp", "recompute"),
    "ep_dispatcher": ("ep", "etp"),
    "cuda_graphs": ("recompute", "recompute_modules", "sharding", "ep_overlap"),
}
"""Plan field -> the fields it was chosen for. ``dp`` and ``sp`` are re-derived as Megatron would
(``resolve_plan``); the rest return to ``Plan``'s default (even split, no HSDP, the runtime's knobs)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanFile:
    plan: Plan
    """The file's plan, as written (checked field by field, not yet against the model or cluster)."""
    placement: dict[str, Any] | None
    """The file's ``placement`` object (node and GPU order), if it has one."""
    made_for: dict[str, Any]
    """What the file says the plan was made for: global_batch, precision, num_gpus, model (where present)."""


def read_plan_file(path: Path) -> PlanFile:
    """The plan object in ``path`` (one of the shapes above), or an ``InputError`` naming ``plan_json``."""
    from configurator.safe_files import load_json

    data = load_json(path, FIELD)
    if isinstance(data, dict) and "plans" in data:
        plans = data["plans"]
        if not isinstance(plans, list) or not plans:
            raise InputError(FIELD, str(path), "its \"plans\" list is empty (the search found no plan that fits)")
        data = plans[0]
    if not isinstance(data, dict):
        raise InputError(FIELD, str(path), "must hold a JSON object (a plan, an estimate, or plan --json output)")
    fields = data.get("plan", data)
    if not isinstance(fields, dict) or not any(k in fields for k in PLAN_FIELDS):
        raise InputError(FIELD, str(path), "holds no plan object (keys such as tp, pp, dp, sharding)")
    for name in ("pipeline_layers", "recompute_modules"):
        if fields.get(name) is not None and not isinstance(fields[name], list):
            raise InputError(FIELD, str(path), f"its plan's {name} must be a list (got {shown(fields[name])})")
    try:
        plan = plan_from_dict(fields)
    except InputError as exc:
        raise InputError(FIELD, str(path), f"its plan is not valid: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise InputError(FIELD, str(path), f"its plan is not valid ({exc})") from None
    made_for = {k: fields[k] for k in ("global_batch", "precision", "num_gpus") if k in fields}
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        made_for["model"] = model["name"]
    placement = data.get("placement")
    return PlanFile(plan=plan, placement=placement if isinstance(placement, dict) else None, made_for=made_for)


def check_made_for(plan_file: PlanFile, path: Path, model: ModelSpec, cluster: ClusterSpec, job: JobSpec) -> None:
    """The file's plan was made for this command's job (a plan for another batch or size is not this one)."""
    ours = {"global_batch": job.global_batch, "precision": job.precision, "num_gpus": cluster.num_gpus,
            "model": model.name}
    option = {"global_batch": "--global-batch", "precision": "--precision", "num_gpus": "--num-gpus/--nodes",
              "model": "--model"}
    for key, theirs in plan_file.made_for.items():
        if theirs != ours[key]:
            raise InputError(FIELD, str(path), f"holds a plan for {key}={theirs!r}, not {ours[key]!r} "
                             f"(give {option[key]} as the plan was made)")


def placement_of(plan_file: PlanFile, path: Path, cluster: ClusterSpec) -> Placement | None:
    """The file's node/GPU order, checked against the cluster; None where the file has none."""
    raw = plan_file.placement
    if raw is None:
        return None
    node_order = raw.get("node_order") or list(range(cluster.num_nodes))
    gpu_order = raw.get("gpu_order") or []
    if not (_int_list(node_order) and isinstance(gpu_order, list) and all(_int_list(o) for o in gpu_order)):
        raise InputError(FIELD, str(path), "its placement's node_order/gpu_order must be lists of integers")
    placement = Placement(node_order=tuple(node_order), gpu_order=tuple(tuple(o) for o in gpu_order))
    placement.check(cluster)
    return placement


def merged_fields(plan: Plan, given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The file's plan fields with the command line's ``given`` ones replacing them, and the fields derived
    from a replaced one dropped (``DERIVED_FROM``); with a note per dropped field for ``chosen``."""
    fields: dict[str, Any] = {k: getattr(plan, k) for k in PLAN_FIELDS}
    fields.update(given)
    notes = []
    for name, sources in DERIVED_FROM.items():
        changed = [s for s in sources if s in given and given[s] != getattr(plan, s)]
        if name in given or not changed:
            continue
        default = None if name in ("dp", "sp") else Plan.__dataclass_fields__[name].default
        if fields[name] != default:
            notes.append(f"{name}: the file's {_shown(fields[name])} dropped (--{changed[0].replace('_', '-')} changed)")
            fields[name] = default
    return fields, notes


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "()"
    return str(value)


__all__ = ["DERIVED_FROM", "PlanFile", "check_made_for", "merged_fields", "placement_of", "read_plan_file"]
