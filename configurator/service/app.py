"""The HTTP API (FastAPI): plan jobs, synchronous estimates, cluster profiles, models, a plan page.

``create_app(db_url, workers, token)`` builds the app; ``configurator serve`` runs it with uvicorn.
Searches run in a process pool; the store keeps every job, so after a restart unfinished jobs are
queued again (their request is stored) and none is silently lost. Requests are bounded (body size,
search time); bad requests get 4xx with the field named and never a stack trace; with a token
configured every request must carry it (``Authorization: Bearer <token>``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import threading
from typing import Any, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from configurator.errors import InputError
from configurator.service.jobs import build_cluster, cache_key, code_version, run_job
from configurator.service.store import Store

MAX_BODY_BYTES = 1_000_000
MAX_TIME_BUDGET_S = 60.0


class PlanRequest(BaseModel):
    """A plan request: the options of ``configurator plan`` with underscores (INTERFACE.md)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=200)
    cluster: str = Field(min_length=1, max_length=200)
    cluster_version: Optional[int] = Field(default=None, ge=1)
    num_gpus: Optional[int] = Field(default=None, ge=1, le=1_000_000)
    nodes: Optional[int] = Field(default=None, ge=1, le=100_000)
    seq_len: int = Field(ge=1, le=10_000_000)
    global_batch: int = Field(ge=1, le=10_000_000)
    precision: Literal["bf16", "fp16", "fp8", "fp4"] = "bf16"
    top: int = Field(default=5, ge=1, le=50)
    time_budget: float = Field(default=8.0, gt=0, le=MAX_TIME_BUDGET_S)
    seed: int = 0
    method: Literal["auto", "exhaustive", "optuna"] = "auto"
    framework: Literal["megatron", "deepspeed"] = "megatron"
    runtime: Optional[str] = None
    objective: Literal["p25", "mean"] = Field(default="p25", description="Order plans by the 25th percentile of "
                                              "the throughput error band or by the model's estimate.")
    oom_risk: float = Field(default=0.05, ge=0.0, le=1.0, description="Most OOM probability (from the memory "
                            "error band) a leading plan may have.")


class EstimateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    cluster: str
    cluster_version: Optional[int] = Field(default=None, ge=1)
    num_gpus: Optional[int] = Field(default=None, ge=1)
    nodes: Optional[int] = Field(default=None, ge=1)
    seq_len: int = Field(ge=1)
    global_batch: int = Field(ge=1)
    micro_batch: int = Field(default=1, ge=1)
    tp: int = Field(default=1, ge=1)
    pp: int = Field(default=1, ge=1)
    vpp: int = Field(default=1, ge=1)
    cp: int = Field(default=1, ge=1)
    ep: int = Field(default=1, ge=1)
    etp: int = Field(default=1, ge=1)
    dp: Optional[int] = Field(default=None, ge=1)
    sp: Optional[bool] = None
    sharding: Literal["none", "zero1", "zero2", "zero3", "distopt"] = "distopt"
    recompute: Literal["none", "selective", "full"] = "none"
    recompute_layers: int = Field(default=0, ge=0)
    offload: float = Field(default=0.0, ge=0.0, le=1.0)
    precision: Literal["bf16", "fp16", "fp8", "fp4"] = "bf16"
    runtime: str = "megatron"


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


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "field": field})


def create_app(db_url: str, *, workers: int = 2, token: str | None = None) -> FastAPI:
    store = Store(db_url)
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="configurator", version=code_version(), lifespan=lifespan,
                  description="Parallelism plans for LLM training: search, estimate, cluster profiles.")
    app.state.store = store
    app.state.pool = pool
    creating = threading.Lock()  # look-up + insert of a job is one step, so identical requests share one job

    def profile_for(name: str, version: int | None) -> tuple[int | None, dict[str, Any] | None]:
        from configurator.profiles import cluster_names

        found = store.get_cluster(name, version)
        if found is None and name not in cluster_names():
            # Never a file path from the network: presets and registered profiles only.
            raise InputError("cluster", name, "is neither a preset nor a registered cluster profile")
        if found is None:
            if version is not None:
                raise InputError("cluster_version", version, f"cluster {name!r} has no such registered version")
            return None, None
        return found

    def submit(job_id: str, profile: dict[str, Any] | None) -> None:
        pool.submit(run_job, db_url, job_id, profile)

    # Jobs that a previous run of the service left unfinished are queued again (their requests are stored).
    for job in store.unfinished_jobs():
        try:
            _, profile = profile_for(job.request["cluster"], job.request.get("cluster_version"))
        except InputError as exc:
            store.update_job(job.id, status="failed", error=f"not resumed after restart: {exc}")
            continue
        store.update_job(job.id, status="queued", progress=0.0)
        submit(job.id, profile)

    @app.middleware("http")
    async def guard(request: Request, call_next):  # type: ignore[no-untyped-def]
        if token is not None and request.headers.get("authorization") != f"Bearer {token}":
            return _error(401, "authorization", "missing or wrong bearer token")
        length = request.headers.get("content-length")
        if length is not None and int(length) > MAX_BODY_BYTES:
            return _error(413, "body", f"request body over {MAX_BODY_BYTES} bytes")
        try:
            return await call_next(request)
        except InputError as exc:
            return _error(400, exc.field, str(exc))
        except Exception as exc:  # noqa: BLE001 - never a stack trace in a response
            return _error(500, "server", f"internal error ({type(exc).__name__})")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error(422, field, f"{field}: {first.get('msg', 'invalid')}")

    @app.exception_handler(InputError)
    async def bad_input(_: Request, exc: InputError) -> JSONResponse:
        return _error(400, exc.field, str(exc))

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "code_version": code_version()}

    @app.get("/v1/models")
    def models() -> list[dict[str, Any]]:
        from configurator.profiles import load_model as load, model_names

        specs = [load(n) for n in model_names()]
        return [{"name": m.name, "total_params": m.total_params, "active_params": m.active_params} for m in specs]

    @app.post("/v1/plans", status_code=202)
    def create_plan(req: PlanRequest) -> dict[str, Any]:
        request = req.model_dump()
        version, profile = profile_for(req.cluster, req.cluster_version)
        # Fail fast on what can be checked without searching (unknown model or cluster, sizes).
        _check_model(req.model)
        build_cluster(request, profile)
        key = cache_key(request, version)
        with creating:
            reusable = store.find_reusable(key)
            if reusable is not None:
                return {"id": reusable.id, "status": reusable.status, "cached": True}
            job = store.create_job(key, request)
        submit(job.id, profile)
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
        from configurator.render import estimate_dict
        from configurator.specs.job import JobSpec
        from configurator.specs.plan import check_plan, resolve_plan

        spec = _check_model(req.model)
        _, profile = profile_for(req.cluster, req.cluster_version)
        hw = build_cluster(req.model_dump(), profile)
        job = JobSpec(global_batch=req.global_batch, seq_len=req.seq_len, precision=req.precision)
        plan, chosen = resolve_plan(hw.num_gpus, tp=req.tp, pp=req.pp, cp=req.cp, dp=req.dp, sp=req.sp, vpp=req.vpp,
                                    ep=req.ep, etp=req.etp, sharding=req.sharding, recompute=req.recompute,
                                    recompute_num_layers=req.recompute_layers, micro_batch=req.micro_batch,
                                    offload=req.offload)
        check_plan(spec, job, plan, hw.num_gpus)
        memory = estimate_memory(spec, hw, job, plan, runtime=req.runtime)
        step = estimate_step(spec, hw, job, plan, runtime=req.runtime)
        return estimate_dict(spec, hw, job, plan, memory, chosen, step)

    @app.post("/v1/clusters", status_code=201)
    def register_cluster(reg: ClusterRegistration) -> dict[str, Any]:
        from configurator.profiles import cluster_from_dict

        cluster_from_dict(reg.profile, f"cluster {reg.name}")  # strict: the same checks as a profile file
        return {"name": reg.name, "version": store.add_cluster(reg.name, reg.profile)}

    @app.get("/v1/clusters")
    def list_clusters() -> list[dict[str, Any]]:
        return store.list_clusters()

    @app.get("/v1/clusters/{name}")
    def get_cluster(name: str, version: Optional[int] = None) -> JSONResponse:
        found = store.get_cluster(name, version)
        if found is None:
            return _error(404, "name", f"name={name!r}: no registered cluster profile (version {version})")
        return JSONResponse({"name": name, "version": found[0], "profile": found[1]})

    @app.get("/plans/{job_id}", response_class=HTMLResponse)
    def plan_page(job_id: str) -> HTMLResponse:
        from configurator.service.page import render_page

        job = store.get_job(job_id)
        if job is None:
            return HTMLResponse("<h1>No such plan job</h1>", status_code=404)
        return HTMLResponse(render_page(job, store))

    return app


__all__ = ["ClusterRegistration", "EstimateRequest", "MAX_BODY_BYTES", "PlanRequest", "create_app"]
