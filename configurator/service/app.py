"""The HTTP API (FastAPI): plan jobs, synchronous estimates, cluster profiles, models, a plan page.

``create_app(db_url, workers, token, ...)`` builds the app; ``configurator serve`` runs it with uvicorn.
Searches run in supervised worker processes (``workers.py``: a dead or runaway worker fails its job with
the reason, the queue is bounded); the store keeps every job, so after a restart unfinished jobs are
queued again (their request is stored) and none is silently lost. Requests are bounded (body size counted
on the bytes received, every number's range in ``bounds.py``, search time); every 4xx/5xx body is
``{"error", "field"}`` and never a stack trace; storage faults are 503 naming themselves. With a token
configured every request must carry it (``Authorization: Bearer <token>``).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Literal, Optional

import sqlalchemy.exc as sa_exc
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from configurator.errors import InputError
from configurator.service.bounds import (
    MAX_ESTIMATE_MICROBATCHES,
    MAX_GLOBAL_BATCH,
    MAX_GPUS,
    MAX_MICRO_BATCH,
    MAX_NODES,
    MAX_RECOMPUTE_LAYERS,
    MAX_SEED,
    MAX_SEQ_LEN,
    MAX_VERSION,
    MAX_VPP,
    MAX_DEGREE,
    check_measured_gemm,
    check_profile_size,
)
from configurator.service.metrics import ServiceMetrics
from configurator.service.split import MAX_SPLIT
from configurator.service.jobs import build_cluster, cache_key, code_version
from configurator.service.store import Store, StoreError, describe_store_error, is_store_error
from configurator.service.workers import (
    DEFAULT_DRAIN_S,
    DEFAULT_JOB_TIMEOUT_S,
    DEFAULT_LEASE_S,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MEMORY_LIMIT_BYTES,
    PoolStopped,
    QueueFull,
    LOG,
    WorkerPool,
)
from configurator.margin import parse_margin
from configurator.specs.plan import CP_COMMS, EP_DISPATCHERS, RECOMPUTE_MODULES

MAX_BODY_BYTES = 1_000_000
MAX_TIME_BUDGET_S = 60.0


_FINITE = {"allow_inf_nan": False}
_NAME = {"min_length": 1, "max_length": 200}


class _JobFields(BaseModel):
    """What plan and estimate requests share: the model, the cluster and its size, the job. Every number is
    bounded (``bounds.py`` says why each bound is generous)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(**_NAME)
    cluster: str = Field(**_NAME)
    cluster_version: Optional[int] = Field(default=None, ge=1, le=MAX_VERSION)
    num_gpus: Optional[int] = Field(default=None, ge=1, le=MAX_GPUS)
    nodes: Optional[int] = Field(default=None, ge=1, le=MAX_NODES)
    seq_len: int = Field(ge=1, le=MAX_SEQ_LEN)
    global_batch: int = Field(ge=1, le=MAX_GLOBAL_BATCH)
    precision: Literal["bf16", "fp16", "fp8", "fp4"] = "bf16"


class PlanRequest(_JobFields):
    """A plan request: the options of ``configurator plan`` with underscores (INTERFACE.md)."""

    top: int = Field(default=5, ge=1, le=50)
    time_budget: Optional[float] = Field(default=None, gt=0, le=MAX_TIME_BUDGET_S, **_FINITE, description=(
        "Wall-clock seconds the search may take. Default: none; the search is bounded by its work count (as the "
        "CLI), so the answer does not depend on how loaded the workers are."))
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    method: Literal["auto", "exhaustive", "optuna"] = "auto"
    split: int = Field(default=1, ge=1, le=MAX_SPLIT, description=(
        "Jobs the search is split into, each claimed by any worker (service/split.py): an exhaustive search's "
        "structures in blocks, whose merged best plans are exactly the single search's answer; an Optuna search's "
        "seeded studies in one storage (as plan --workers N --storage). 1: one job. With method 'exhaustive' not "
        "part of the cache key (the answer is the same)."))
    framework: Literal["megatron", "deepspeed", "torchtitan"] = "megatron"
    runtime: Optional[str] = Field(default=None, max_length=40)
    memory_margin: Optional[str] = Field(default=None, max_length=32, description=(
        "GPU memory the plan must leave free: GiB ('8') or a percentage of the GPU ('12%'); default: the "
        "larger of the validation report's memory p90 error and the headroom that keeps a plan at the margin "
        "within the request's oom_risk. Plans that fit only without it come back \"tight\": true."))
    objective: Literal["p25", "mean"] = Field(default="p25", description="Order plans by the 25th percentile of "
                                              "the throughput error band or by the model's estimate.")
    oom_risk: float = Field(default=0.05, ge=0.0, le=1.0, description="Most OOM probability (from the memory "
                            "error band) a leading plan may have.")


class EstimateRequest(_JobFields):
    """One plan's estimate. Its cost is bounded too: at most ``MAX_ESTIMATE_MICROBATCHES`` micro-batches
    (global_batch / (micro_batch x dp)) are simulated."""

    micro_batch: int = Field(default=1, ge=1, le=MAX_MICRO_BATCH)
    tp: int = Field(default=1, ge=1, le=MAX_DEGREE)
    pp: int = Field(default=1, ge=1, le=MAX_DEGREE)
    vpp: int = Field(default=1, ge=1, le=MAX_VPP)
    cp: int = Field(default=1, ge=1, le=MAX_DEGREE)
    ep: int = Field(default=1, ge=1, le=MAX_DEGREE)
    etp: int = Field(default=1, ge=1, le=MAX_DEGREE)
    dp: Optional[int] = Field(default=None, ge=1, le=MAX_GPUS)
    sp: Optional[bool] = None
    sharding: Literal["none", "zero1", "zero2", "zero3", "distopt", "hsdp"] = "distopt"
    shard_group: int = Field(default=0, ge=0, le=MAX_GPUS, description="With sharding hsdp: GPUs per shard group.")
    recompute: Literal["none", "selective", "full"] = "none"
    recompute_layers: int = Field(default=0, ge=0, le=MAX_RECOMPUTE_LAYERS)
    recompute_modules: list[Literal[RECOMPUTE_MODULES]] = Field(  # type: ignore[valid-type]
        default_factory=list, max_length=len(RECOMPUTE_MODULES), description=(
            "With recompute selective: Megatron-Core's --recompute-modules; empty = Megatron's default (core_attn)."))
    offload: float = Field(default=0.0, ge=0.0, le=1.0, **_FINITE)
    tp_overlap: Optional[bool] = Field(default=None, description="TP communication/GEMM overlap; null = the "
                                       "runtime's default.")
    ep_overlap: Optional[bool] = Field(default=None, description="MoE all-to-all overlap; null = the runtime's "
                                       "default.")
    cp_comm: Optional[Literal[CP_COMMS]] = Field(  # type: ignore[valid-type]
        default=None, description="Context-parallel exchange (Megatron --cp-comm-type); null = the runtime's default.")
    ep_dispatcher: Optional[Literal[EP_DISPATCHERS]] = Field(  # type: ignore[valid-type]
        default=None, description="MoE token dispatcher (alltoall | flex); null = the runtime's default.")
    cuda_graphs: Optional[bool] = Field(default=None, description="Per-layer CUDA graphs (Megatron --cuda-graph-impl "
                                        "transformer_engine); null = off.")
    runtime: str = Field(default="megatron", max_length=40)


class ClusterRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    profile: dict[str, Any]


def _check_model(name: str):  # type: ignore[no-untyped-def]
    """A model preset (never a file path from the network)."""
    from configurator.profiles import load_model, model_names

    if name not in model_names():
        raise InputError("model", name, f"is not a preset (known: {', '.join(model_names())})")
    return load_model(name)


def _error(status: int, field: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "field": field}, headers=headers)


class BodyGuard:
    """ASGI middleware: the bearer token, and the body cap counted on the bytes received, so a chunked upload
    (no Content-Length) is bounded too. The body is read here (at most ``MAX_BODY_BYTES``) and replayed."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            await _error(401, "authorization", "missing or wrong bearer token")(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _error(413, "body", f"request body over {MAX_BODY_BYTES} bytes (or a bad Content-Length)")(
                scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _error(413, "body", f"request body over {MAX_BODY_BYTES} bytes")(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(db_url: str, *, workers: int = 2, token: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
               job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S,
               memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
               drain_s: float = DEFAULT_DRAIN_S, lease_s: float = DEFAULT_LEASE_S,
               claim_from_store: bool = True) -> FastAPI:
    """The app, its store and its worker pool. A store that cannot be opened or written raises ``StoreError``
    (one line naming the fault: ``serve`` prints it and exits 1).

    ``workers=0`` serves HTTP only: jobs wait in the store for ``configurator worker`` processes (any host).
    ``claim_from_store``: the pool also claims jobs queued by other servers or left by a dead host."""
    try:
        store = Store(db_url)
        store.check_writable()
    except Exception as exc:  # noqa: BLE001 - classified below, never a trace
        if isinstance(exc, (sa_exc.ArgumentError, sa_exc.NoSuchModuleError)):
            raise InputError("db", db_url, "is not a database URL (sqlite:///FILE or postgresql://...)") from None
        if is_store_error(exc):
            raise StoreError(describe_store_error(exc)) from None
        raise
    metrics = ServiceMetrics(store)
    pool = WorkerPool(db_url, workers=workers, max_queue=max_queue, job_timeout_s=job_timeout_s,
                      memory_limit_bytes=memory_limit_bytes, mark_job=store.update_job, store=store,
                      lease_s=lease_s, claim_from_store=claim_from_store, on_finished=metrics.job_finished)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        yield
        # SIGTERM/SIGINT: uvicorn stops accepting, then this drains the pool and stops every worker.
        pool.stop(drain_s)
        store.engine.dispose()

    app = FastAPI(title="configurator", version=code_version(), lifespan=lifespan,
                  description="Parallelism plans for LLM training: search, estimate, cluster profiles. Every error "
                              "is {\"error\", \"field\"}; limits are stated on each field.")
    app.state.store = store
    app.state.pool = pool
    app.state.metrics = metrics
    creating = threading.Lock()  # look-up + insert of a job is one step, so identical requests share one job
    optuna_ready = threading.Lock()
    optuna_done = [False]

    def prepare_optuna(request: dict[str, Any]) -> None:
        """Optuna's tables are created once, here, before any worker opens the study: two workers creating
        them at once on a fresh store race ("table studies already exists")."""
        if request.get("method") != "optuna" or optuna_done[0]:
            return
        with optuna_ready:
            if optuna_done[0]:
                return
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            storage = optuna.storages.RDBStorage(db_url)
            storage.engine.dispose()
            optuna_done[0] = True

    def profile_for(name: str, version: int | None) -> tuple[int | None, dict[str, Any] | None]:
        from configurator.profiles import cluster_names

        if name in cluster_names():
            if version is not None:
                raise InputError("cluster_version", version, f"{name!r} is a preset: presets have no versions")
            return None, None
        found = store.get_cluster(name, version)
        if found is None:
            # Never a file path from the network: presets and registered profiles only.
            if version is not None and store.get_cluster(name) is not None:
                raise InputError("cluster_version", version, f"cluster {name!r} has no such registered version")
            raise InputError("cluster", name, "is neither a preset nor a registered cluster profile")
        return found

    def resolve_profile(job: Any) -> dict[str, Any] | None:
        """A job claimed from the store (queued by any server, or left by a dead host): its stored request names
        the exact profile version it was keyed on."""
        _, profile = profile_for(job.request["cluster"], job.request.get("cluster_version"))
        prepare_optuna(job.request)
        return profile

    # Jobs that a previous run of the service left unfinished stay in the store: the pool claims the queued
    # ones, and running ones once their lease expires (their worker died with that run).
    pool.resolve_profile = resolve_profile
    pool.start()

    app.add_middleware(BodyGuard, token=token)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return _error(422, "body", f"body: malformed JSON ({first.get('ctx', {}).get('error', 'invalid')})")
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error(422, field, f"{field}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        field = {404: "path", 405: "method"}.get(exc.status_code, "body")
        detail = exc.detail if isinstance(exc.detail, str) else "invalid request"
        if exc.status_code == 404:
            detail = f"no such route: {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        return _error(exc.status_code, field, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(InputError)
    async def bad_input(_: Request, exc: InputError) -> JSONResponse:
        return _error(400, exc.field, str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return _error(429, "queue", f"the job queue is full: {exc}; retry later",
                      headers={"Retry-After": str(pool.retry_after_s())})

    @app.exception_handler(PoolStopped)
    async def stopped(_: Request, exc: PoolStopped) -> JSONResponse:
        return _error(503, "pool", str(exc), headers={"Retry-After": "30"})

    @app.exception_handler(StoreError)
    async def store_fault(_: Request, exc: StoreError) -> JSONResponse:
        return _error(503, "store", str(exc), headers={"Retry-After": "10"})

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        if is_store_error(exc):
            return _error(503, "store", describe_store_error(exc), headers={"Retry-After": "10"})
        if isinstance(exc, RecursionError):
            return _error(400, "body", "body: nested too deeply")
        return _error(500, "server", f"internal error ({type(exc).__name__})")

    for kind in (sa_exc.SQLAlchemyError, OSError):
        app.add_exception_handler(kind, internal)  # type: ignore[arg-type]

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 when the worker pool and the store are healthy; 503 naming which one is not."""
        pool_health = pool.health()
        try:
            store.check_writable()
            store_state = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            store_state = describe_store_error(exc)
        body: dict[str, Any] = {"status": "ok", "code_version": code_version(), "pool": pool_health.as_dict(),
                                "store": store_state}
        if store_state != "ok":
            body.update(status="degraded", error=store_state, field="store")
        elif not pool_health.ok:
            body.update(status="degraded", error=pool_health.problem, field="pool")
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics_text() -> Response:
        """Prometheus text format: queue depth and jobs by state (from the store), plan requests, cache hits and
        job seconds (this server). Guarded by the token like every route."""
        body, content_type = metrics.render()
        return Response(content=body, media_type=content_type)

    @app.get("/v1/models")
    def models() -> list[dict[str, Any]]:
        from configurator.profiles import load_model as load, model_names

        specs = [load(n) for n in model_names()]
        return [{"name": m.name, "total_params": m.total_params, "active_params": m.active_params} for m in specs]

    @app.post("/v1/plans", status_code=202, responses={429: {"description": "queue full (Retry-After)"}})
    def create_plan(req: PlanRequest) -> dict[str, Any]:
        """Queue a search (or answer from the store: an identical, untruncated earlier search)."""
        request = req.model_dump()
        version, profile = profile_for(req.cluster, req.cluster_version)
        # An exhaustive search's answer does not depend on its split (search/partition.py): one cache entry.
        keyed = {k: v for k, v in request.items() if k != "split" or req.method != "exhaustive"}
        key = cache_key(keyed, version)
        # An identical request (same profile version, same code) was checked when its job was made: answer it
        # without loading the model again, so a burst of identical requests stays cheap.
        metrics.plan_requests.inc()
        reusable = store.find_reusable(key)
        if reusable is not None:
            metrics.cache_hits.inc()
            return {"id": reusable.id, "status": reusable.status, "cached": True}
        # Fail fast on what can be checked without searching (unknown model, cluster or runtime, sizes).
        from configurator.memory import RUNTIMES

        if req.runtime is not None and req.runtime not in RUNTIMES:
            raise InputError("runtime", req.runtime, f"must be one of {', '.join(RUNTIMES)}")
        spec = _check_model(req.model)
        from configurator.emit import check_framework_runs
        from configurator.specs.job import JobSpec

        # A framework that can run no plan of this model or precision: a named 400, not a search that drops
        # every plan.
        check_framework_runs(req.framework, spec, JobSpec(global_batch=req.global_batch, seq_len=req.seq_len,
                                                          precision=req.precision))
        build_cluster(request, profile)
        prepare_optuna(request)
        parse_margin(req.memory_margin)
        if pool.workers == 0:  # HTTP only: the bound is the store's queue, shared by every server
            queued = store.count_by_status()["queued"]
            if queued >= max_queue:
                raise QueueFull(f"{queued} jobs are queued in the store (the limit is {max_queue})")
        # The stored request names the profile version the key covers, so any worker host runs exactly it.
        stored = {**request, "cluster_version": version} if version is not None else request
        with creating:
            reusable = store.find_reusable(key)
            if reusable is not None:
                metrics.cache_hits.inc()
                return {"id": reusable.id, "status": reusable.status, "cached": True}
            # Another server may insert the same key at the same moment: the store's unique index on in-flight
            # keys lets one win; this request then joins that job.
            job, created = store.create_or_join(key, stored)
            if not created:
                metrics.cache_hits.inc()
                return {"id": job.id, "status": job.status, "cached": True}
            LOG.info(f"job queued: {req.model} on {req.cluster}", extra={"job_id": job.id})
            try:
                pool.submit(job.id, profile)
            except (QueueFull, PoolStopped) as exc:
                store.update_job(job.id, status="failed", error=f"not queued: {exc}", only_if_unfinished=True)
                raise
        return {"id": job.id, "status": job.status, "cached": False}

    @app.get("/v1/plans/{job_id}")
    def get_plan(job_id: str) -> JSONResponse:
        job = store.get_job(job_id)
        if job is None:
            return _error(404, "id", f"id={job_id!r}: no such plan job")
        return JSONResponse(job.as_dict())

    @app.post("/v1/estimate")
    def estimate(req: EstimateRequest) -> dict[str, Any]:
        from configurator.cost.step import estimate_step
        from configurator.memory import estimate_memory
        from configurator.render import estimate_dict, knob_defaults
        from configurator.specs.job import JobSpec
        from configurator.specs.plan import check_given_knobs, check_plan, resolve_plan

        spec = _check_model(req.model)
        _, profile = profile_for(req.cluster, req.cluster_version)
        hw = build_cluster(req.model_dump(), profile)
        job = JobSpec(global_batch=req.global_batch, seq_len=req.seq_len, precision=req.precision)
        plan, chosen = resolve_plan(hw.num_gpus, tp=req.tp, pp=req.pp, cp=req.cp, dp=req.dp, sp=req.sp, vpp=req.vpp,
                                    ep=req.ep, etp=req.etp, sharding=req.sharding, recompute=req.recompute,
                                    recompute_num_layers=req.recompute_layers, micro_batch=req.micro_batch,
                                    offload=req.offload, shard_group=req.shard_group,
                                    recompute_modules=tuple(req.recompute_modules), tp_overlap=req.tp_overlap,
                                    ep_overlap=req.ep_overlap, cp_comm=req.cp_comm, ep_dispatcher=req.ep_dispatcher,
                                    cuda_graphs=req.cuda_graphs)
        check_plan(spec, job, plan, hw.num_gpus)
        check_given_knobs(spec, plan)
        microbatches = req.global_batch // max(1, req.micro_batch * plan.dp)
        if microbatches > MAX_ESTIMATE_MICROBATCHES:
            raise InputError("global_batch", req.global_batch,
                             f"gives {microbatches} micro-batches per pipeline (global_batch / (micro_batch x dp)); "
                             f"an estimate simulates at most {MAX_ESTIMATE_MICROBATCHES}: raise micro_batch or dp")
        memory = estimate_memory(spec, hw, job, plan, runtime=req.runtime)
        step = estimate_step(spec, hw, job, plan, runtime=req.runtime)
        return estimate_dict(spec, hw, job, plan, memory, chosen + knob_defaults(spec, plan, req.runtime), step)

    @app.post("/v1/clusters", status_code=201, responses={409: {"description": "a preset's name"}})
    def register_cluster(reg: ClusterRegistration) -> JSONResponse:
        """Register a measured cluster profile (a new version each time). Preset names are read-only."""
        from configurator.profiles import cluster_from_dict, cluster_names

        if reg.name in cluster_names():
            return _error(409, "name", f"name={reg.name!r}: is a preset (read-only); register under another name")
        check_profile_size(reg.profile)  # before any parsing: no N x N matrix for a hostile node count
        cluster = cluster_from_dict(reg.profile, f"cluster {reg.name}")  # strict: the checks of a profile file
        check_measured_gemm(reg.profile, cluster)
        return JSONResponse({"name": reg.name, "version": store.add_cluster(reg.name, reg.profile)}, status_code=201)

    @app.get("/v1/clusters")
    def list_clusters() -> list[dict[str, Any]]:
        return store.list_clusters()

    @app.get("/v1/clusters/{name}")
    def get_cluster(name: str, version: Optional[int] = Query(default=None, ge=1, le=MAX_VERSION)) -> JSONResponse:
        found = store.get_cluster(name, version)
        if found is None:
            return _error(404, "name", f"name={name!r}: no registered cluster profile (version {version})")
        return JSONResponse({"name": name, "version": found[0], "profile": found[1],
                             "versions": store.cluster_versions(name)})

    @app.delete("/v1/clusters/{name}", responses={409: {"description": "a preset's name"}})
    def delete_cluster(name: str, version: Optional[int] = Query(default=None, ge=1, le=MAX_VERSION)) -> JSONResponse:
        """Delete one version, or every version, of a registered profile (the service's token guards this as
        every request). Version numbers are never reused; jobs already stored keep their answers."""
        from configurator.profiles import cluster_names

        if name in cluster_names():
            return _error(409, "name", f"name={name!r}: is a preset (read-only)")
        deleted = store.delete_cluster(name, version)
        if not deleted:
            return _error(404, "name", f"name={name!r}: no registered cluster profile (version {version})")
        return JSONResponse({"name": name, "deleted_versions": deleted})

    @app.get("/plans/{job_id}", response_class=HTMLResponse)
    def plan_page(job_id: str) -> HTMLResponse:
        from configurator.service.page import render_page

        job = store.get_job(job_id)
        if job is None:
            return _error(404, "id", f"id={job_id!r}: no such plan job")  # type: ignore[return-value]
        return HTMLResponse(render_page(job, store))

    return app


__all__ = ["BodyGuard", "ClusterRegistration", "EstimateRequest", "MAX_BODY_BYTES", "PlanRequest", "create_app"]
