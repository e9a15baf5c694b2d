"""Plan requests: validation into specs, the cache key, and the worker that runs a search.

A worker runs in its own process (the search is CPU-bound Python), opens the store itself and writes
progress and the result there, so the API process only enqueues and reads. The cache key covers the
request, the version of a registered cluster profile and the code version (package version plus the
profile data files), so identical requests are answered from the store only while nothing that could
change the answer has changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from typing import Any

from configurator import __version__
from configurator.cost.constants import calibration_path
from configurator.errors import InputError
from configurator.profiles import cluster_from_dict, load_cluster, load_model
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec


_DATA_DIGESTS: dict[tuple, str] = {}


def data_digest() -> str:
    """A digest of every data file an answer depends on: the whole profiles directory (calibration.json,
    error_bands.json, cost.json, memory.json, gpu_families.json, the GPU, model and cluster presets). Read again
    only when a file's size or modification time changed (a request computes it)."""
    root = calibration_path().parent  # the profiles directory in use (CONFIGURATOR_PROFILES or the package's)
    files = sorted(p for p in root.rglob("*.json") if p.is_file())
    signature = tuple((str(p.relative_to(root)), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    if signature not in _DATA_DIGESTS:
        digest = hashlib.sha256()
        for path in files:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
        _DATA_DIGESTS.clear()
        _DATA_DIGESTS[signature] = digest.hexdigest()[:12]
    return _DATA_DIGESTS[signature]


def code_version() -> str:
    return f"{__version__}+data.{data_digest()}"


def cache_key(request: dict[str, Any], profile_version: int | None) -> str:
    canonical = json.dumps({"request": request, "profile_version": profile_version, "code": code_version()},
                           sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_cluster(request: dict[str, Any], profile: dict[str, Any] | None) -> ClusterSpec:
    if profile is not None:
        cluster = cluster_from_dict(profile, f"cluster {request['cluster']}")
        return cluster.sized(num_gpus=request.get("num_gpus"), nodes=request.get("nodes"))
    return load_cluster(request["cluster"], num_gpus=request.get("num_gpus"), nodes=request.get("nodes"))


def near_memory_limit(fraction: float = 0.9) -> bool:
    """Whether this process's peak address space reached its ``RLIMIT_AS``: an allocation failure inside C code
    (numpy, scipy) surfaces as an arbitrary exception (``SystemError``...), and this names it for what it is."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return False
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmPeak:"):
                    return int(line.split()[1]) * 1024 >= fraction * soft
    except (ImportError, OSError, ValueError):
        return False
    return False


def search_context(request: dict[str, Any], profile: dict[str, Any] | None) -> Any:
    """The ``SearchContext`` of a stored request (``InputError`` names a bad field)."""
    from configurator.margin import parse_margin
    from configurator.search.space import FRAMEWORK_RUNTIME, SearchContext

    model = load_model(request["model"])
    cluster = build_cluster(request, profile)
    spec = JobSpec(global_batch=request["global_batch"], seq_len=request["seq_len"],
                   precision=request.get("precision", "bf16"))
    if not cluster.gpu.supports(spec.precision):
        raise InputError("precision", spec.precision, f"is not supported by {cluster.gpu.key}")
    framework = request.get("framework") or "megatron"
    runtime = request.get("runtime") or FRAMEWORK_RUNTIME[framework]
    return SearchContext(model=model, cluster=cluster, job=spec, runtime=runtime, framework=framework,
                         memory_margin=parse_margin(request.get("memory_margin"), request.get("oom_risk")))


def search_kwargs(request: dict[str, Any]) -> dict[str, Any]:
    """``search``'s arguments from a request. Without a ``time_budget`` the search is bounded by its work count
    (``DEFAULT_WORK_BUDGET``, as the CLI), so an answer does not depend on how loaded the workers are. Like
    ``plan``, it keeps the ``ranking.ranking_pool(top)`` fastest plans for the risk-aware ranking to choose ``top``
    from (``finish``), so the service and the CLI name the same leader for the same request."""
    from configurator.ranking import ranking_pool

    return {"top_k": ranking_pool(request.get("top", 5)), "time_budget_s": request.get("time_budget"),
            "seed": request.get("seed", 0), "method": request.get("method", "auto")}


def finish(update: Any, job_id: str, ctx: Any, request: dict[str, Any], result: Any) -> None:
    """Store a search's outcome: its plans in the risk-aware order, or "failed" naming why nothing fits."""
    from configurator.anchor import measured_job_for
    from configurator.render import conventional_for, search_plans_dicts

    objective, oom_risk = request.get("objective", "p25"), request.get("oom_risk", 0.05)
    payload = {"plans": search_plans_dicts(ctx.model, ctx.cluster, ctx.job, list(result.ranked),
                                           objective=objective, oom_risk=oom_risk, top=request.get("top", 5)),
               "conventional": conventional_for(ctx, list(result.ranked), objective=objective, oom_risk=oom_risk),
               "search": result.as_dict(),
               "measured_job": measured_job_for(ctx, list(result.ranked), objective=objective, oom_risk=oom_risk)}
    if not result.ranked:
        update(job_id, status="failed", progress=1.0, result=payload,
               error=result.no_plan_message(float(ctx.cluster.gpu_memory_bytes)))
        return
    update(job_id, status="done", progress=1.0, result=payload)


def run_job(db_url: str, job_id: str, profile: dict[str, Any] | None, lease: str | None = None) -> None:
    """Worker entry point: run the search of a stored job and store the outcome (never raises).

    With ``lease`` (the job was claimed through the store) every write is conditional on still holding it:
    a worker whose lease expired and was taken over never stores a second outcome. A request with
    ``split`` > 1 (and a lease) is a split search: this process hands its blocks to the store and returns
    (``split.py``); a block of one runs here."""
    from configurator.search.optimize import search
    from configurator.service import split
    from configurator.service.store import Store, is_store_error

    store = Store(db_url)
    job = store.get_job(job_id)
    if job is None:
        return
    update = functools.partial(store.update_job, lease=lease) if lease else store.update_job
    if lease:
        update(job_id, progress=0.0)
    else:
        store.update_job(job_id, status="running", progress=0.0)
    request = job.request
    try:
        ctx = search_context(request, profile)
        if split.is_block(request):
            split.run_block(store, update, job, ctx)
            return
        if lease and split.wants_split(request):
            split.start_or_finish(store, job, lease, ctx)
            return
        last = [0.0]

        def progress(fraction: float, _message: str) -> None:
            now = time.monotonic()
            if now - last[0] > 0.5:
                last[0] = now
                update(job_id, progress=min(0.99, fraction))

        method = request.get("method", "auto")
        # Optuna searches keep their study in the service's database: a job resumed after a restart
        # continues the same study instead of starting over.
        result = search(ctx, progress=progress, storage=db_url if method == "optuna" else None,
                        **search_kwargs(request))
        finish(update, job_id, ctx, request, result)
    except InputError as exc:
        update(job_id, status="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a job fails with its reason, never a stack trace
        if is_store_error(exc):
            raise  # the store cannot take the outcome: the supervisor records the fault (workers.py)
        if isinstance(exc, MemoryError) or near_memory_limit():
            raise MemoryError from exc  # the worker's memory limit: the supervisor names it
        update(job_id, status="failed", error=f"internal error: {type(exc).__name__}")


__all__ = ["build_cluster", "cache_key", "code_version", "finish", "near_memory_limit", "run_job", "search_context",
           "search_kwargs"]
