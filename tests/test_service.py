"""The search service, driven over HTTP: the server runs in a subprocess on loopback (SQLite store)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the service needs the service extra: pip install -e '.[service]'")

from service_helpers import free_port, postgres_url  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PLAN = {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 16, "seq_len": 4096, "global_batch": 64}


class Server:
    def __init__(self, db: Path | str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        url = db if isinstance(db, str) else f"sqlite:///{db}"
        self.proc = subprocess.Popen([sys.executable, "-m", "configurator.cli", "serve", "--port", str(self.port),
                                      "--db", url, "--workers", "2", *extra], cwd=REPO,
                                     env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(self.base + "/healthz", timeout=1, headers=self.headers(extra)).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.kill()
        raise AssertionError(f"server did not start: {self.proc.stdout.read() if self.proc.stdout else ''}")

    @staticmethod
    def headers(extra: tuple[str, ...]) -> dict[str, str]:
        if "--token" in extra:
            return {"Authorization": f"Bearer {extra[extra.index('--token') + 1]}"}
        return {}

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One server for the module (a start costs seconds); tests that need a fresh store make their own."""
    s = Server(tmp_path_factory.mktemp("service") / "store.db")
    yield s
    s.kill()


def wait_done(base: str, job_id: str, timeout: float = 120, headers: dict[str, str] | None = None) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = httpx.get(f"{base}/v1/plans/{job_id}", headers=headers or {}, timeout=10).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not finished: {job}")


def test_plan_job_runs_and_identical_requests_come_from_the_store(server) -> None:  # type: ignore[no-untyped-def]
    body = {**PLAN, "seed": 11}  # a request no other test of the module sends
    first = httpx.post(server.base + "/v1/plans", json=body, timeout=30)
    assert first.status_code == 202 and first.json()["status"] == "queued"
    job = wait_done(server.base, first.json()["id"])
    assert job["status"] == "done" and job["plans"] and job["search"]["evaluated"] > 0
    assert job["plans"][0]["fits"] and set(job["plans"][0]["time"]) >= {"step_s", "tokens_per_s_per_gpu", "mfu"}
    again = httpx.post(server.base + "/v1/plans", json=body, timeout=30).json()
    assert again == {"id": first.json()["id"], "status": "done", "cached": True}
    page = httpx.get(f"{server.base}/plans/{first.json()['id']}", timeout=30)
    assert page.status_code == 200 and "<svg" in page.text and "id='plans'" in page.text


def test_estimate_models_and_health(server) -> None:  # type: ignore[no-untyped-def]
    est = httpx.post(server.base + "/v1/estimate", json={**PLAN, "tp": 2, "pp": 2}, timeout=30).json()
    assert est["plan"]["dp"] == 4 and est["time"]["step_s"] > 0 and est["fits"]
    assert "tp_overlap=off (the megatron runtime's default)" in est["chosen"]  # an unset knob, reported
    models = httpx.get(server.base + "/v1/models", timeout=30).json()
    assert any(m["name"] == "deepseek-v3" for m in models)


def test_estimate_takes_the_plan_knobs_and_names_a_bad_one(server) -> None:  # type: ignore[no-untyped-def]
    """The knobs ``plan`` chooses can be estimated by hand over HTTP too (as ``estimate --tp-overlap ...``)."""
    from configurator import JobSpec, load_cluster, load_model
    from configurator.cost.step import estimate_step
    from configurator.specs.plan import plan_from_dict

    knobs = {"dp": 16, "ep": 8, "sharding": "hsdp", "shard_group": 8, "ep_overlap": False, "ep_dispatcher": "alltoall",
             "micro_batch": 2}
    body = {"model": "qwen3-30b-a3b", "cluster": "dgx-h100", "num_gpus": 16, "seq_len": 4096, "global_batch": 256,
            **knobs}
    answer = httpx.post(server.base + "/v1/estimate", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    plan = plan_from_dict(knobs)
    assert plan_from_dict(answer.json()["plan"]) == plan
    expected = estimate_step(load_model("qwen3-30b-a3b"), load_cluster("dgx-h100", num_gpus=16),
                             JobSpec(global_batch=256, seq_len=4096), plan).step_s
    assert answer.json()["time"]["step_s"] == pytest.approx(expected, abs=5e-7)
    for change, status, field in (({"sharding": "distopt"}, 400, "shard_group"), ({"cp_comm": "ring"}, 422, "cp_comm"),
                                  ({"recompute_modules": ["mlp"]}, 400, "recompute_modules"),
                                  ({"model": "llama3-8b", "ep": 1, "sharding": "distopt", "shard_group": 0},
                                   400, "ep_dispatcher")):
        refused = httpx.post(server.base + "/v1/estimate", json={**body, **change}, timeout=30)
        assert (refused.status_code, refused.json()["field"]) == (status, field), refused.text


@pytest.mark.parametrize(("body", "status", "field"), [
    ({**PLAN, "model": "nope"}, 400, "model"),
    ({**PLAN, "model": "/etc/passwd"}, 400, "model"),
    ({**PLAN, "cluster": "/etc/hosts"}, 400, "cluster"),
    ({**PLAN, "seq_len": 0}, 422, "seq_len"),
    ({**PLAN, "time_budget": 3600}, 422, "time_budget"),
    ({**PLAN, "unknown": 1}, 422, "unknown"),
    ({**PLAN, "num_gpus": 12}, 400, "num_gpus"),
    # Frameworks that can run no plan of the job: refused before a job is queued, not a search dropping every plan.
    ({**PLAN, "framework": "deepspeed", "precision": "fp8"}, 400, "precision"),
    ({**PLAN, "framework": "torchtitan", "precision": "fp16"}, 400, "precision"),
    ({**PLAN, "framework": "torchtitan", "model": "qwen3-30b-a3b"}, 400, "model.moe_aux_loss_coeff"),
])
def test_bad_requests_name_the_field_without_a_trace(server, body, status, field) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(server.base + "/v1/plans", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and "Traceback" not in r.text


def test_body_size_is_bounded(server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(server.base + "/v1/plans", content=b"{" + b" " * 2_000_000 + b"}",
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413


def test_cluster_profiles_are_versioned_and_usable(server) -> None:  # type: ignore[no-untyped-def]
    profile = json.loads((REPO / "examples/profiles/measured_8_nodes.json").read_text())
    v1 = httpx.post(server.base + "/v1/clusters", json={"name": "lab", "profile": profile}, timeout=30).json()
    profile["description"] += " (re-probed)"
    v2 = httpx.post(server.base + "/v1/clusters", json={"name": "lab", "profile": profile}, timeout=30).json()
    assert (v1["version"], v2["version"]) == (1, 2)
    assert httpx.get(server.base + "/v1/clusters/lab?version=1", timeout=30).json()["version"] == 1
    assert httpx.get(server.base + "/v1/clusters", timeout=30).json() == [{"name": "lab", "latest_version": 2,
                                                                            "versions": 2}]
    bad = dict(profile)
    bad.pop("gpu")
    r = httpx.post(server.base + "/v1/clusters", json={"name": "lab", "profile": bad}, timeout=30)
    assert r.status_code == 400 and "gpu" in r.json()["error"]
    job = httpx.post(server.base + "/v1/plans", json={"model": "llama3-8b", "cluster": "lab", "seq_len": 4096,
                                                      "global_batch": 128}, timeout=30).json()
    assert wait_done(server.base, job["id"])["status"] == "done"


def test_token_is_required_when_configured(tmp_path) -> None:
    s = Server(tmp_path / "t.db", "--token", "s3cret")
    try:
        assert httpx.get(s.base + "/healthz", timeout=10).status_code == 401
        ok = httpx.get(s.base + "/healthz", headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert ok.status_code == 200
    finally:
        s.kill()
    refused = subprocess.run([sys.executable, "-m", "configurator.cli", "serve", "--host", "0.0.0.0", "--port",
                              str(free_port())], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "CONFIGURATOR_TOKEN"})
    assert refused.returncode == 2 and "token" in refused.stderr


def test_openapi_contract_is_committed(tmp_path) -> None:
    from configurator.service.app import create_app

    app = create_app(f"sqlite:///{tmp_path / 'o.db'}", workers=1)
    try:
        spec = app.openapi()
    finally:
        app.state.pool.stop(0)
    spec["info"]["version"] = "see /healthz code_version"
    committed = REPO / "configurator" / "service" / "openapi.json"
    if os.environ.get("CONFIGURATOR_UPDATE_GOLDEN") == "1":
        committed.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    assert json.loads(committed.read_text()) == json.loads(json.dumps(spec)), \
        "the API changed: review it, then CONFIGURATOR_UPDATE_GOLDEN=1 rewrites configurator/service/openapi.json"


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_plan_page_renders_in_a_real_browser(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("CONFIGURATOR_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed: apt-get install chromium")
    job_id = httpx.post(server.base + "/v1/plans", json=PLAN, timeout=30).json()["id"]
    assert wait_done(server.base, job_id)["status"] == "done"
    url = f"{server.base}/plans/{job_id}"
    profile = tmp_path / "chrome-profile"
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "status: <b>done</b>" in html
    assert html.count("<tr>") >= 2  # header + at least one plan row
    assert "<svg" in html and html.count('class="op ') >= 2 and 'class="capacity"' in html
    shot = tmp_path / "page.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                    "--window-size=1280,1400", url], capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000  # a drawn page, not a blank one


def test_service_runs_on_postgresql(tmp_path) -> None:
    server = Server(postgres_url())
    base = server.base
    try:
        body = {**PLAN, "seed": int(time.time())}  # a fresh request: not served from an earlier run's store
        job_id = httpx.post(base + "/v1/plans", json=body, timeout=30).json()["id"]
        assert wait_done(base, job_id)["status"] == "done"
        optuna_job = httpx.post(base + "/v1/plans", json={**body, "method": "optuna", "time_budget": 5},
                                timeout=30).json()["id"]
        assert wait_done(base, optuna_job)["status"] == "done"  # its study lives in PostgreSQL
    finally:
        server.kill()


def test_metrics_report_queue_depth_jobs_by_state_and_cache_hits(tmp_path) -> None:
    """Prometheus text: the queue and jobs by state come from the store, cache hits from this server."""
    from fastapi.testclient import TestClient

    from configurator.service.app import create_app

    app = create_app(f"sqlite:///{tmp_path / 'm.db'}", workers=1, claim_from_store=False)
    app.state.pool.submit = lambda job_id, profile, bounded=True: None  # no worker runs: the jobs stay queued
    with TestClient(app) as client:
        first = client.post("/v1/plans", json=PLAN).json()
        client.post("/v1/plans", json=PLAN)  # identical: a cache hit (joins the queued job)
        client.post("/v1/plans", json=PLAN)
        client.post("/v1/plans", json={**PLAN, "seed": 1})  # distinct: a second job
        app.state.store.update_job(first["id"], status="done", progress=1.0, result={"plans": [], "search": {}})
        app.state.metrics.job_finished(first["id"], "exited", 1.5)
        r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = set(r.text.splitlines())
    assert "configurator_queue_depth 1.0" in lines
    assert 'configurator_jobs{state="queued"} 1.0' in lines and 'configurator_jobs{state="done"} 1.0' in lines
    assert "configurator_plan_requests_total 4.0" in lines and "configurator_plan_cache_hits_total 2.0" in lines
    assert 'configurator_search_seconds_bucket{le="2.0",outcome="exited"} 1.0' in lines
    assert 'configurator_search_seconds_bucket{le="1.0",outcome="exited"} 0.0' in lines
    assert "configurator_store_up 1.0" in lines


def test_a_torchtitan_request_searches_what_torchtitan_runs_with_the_fsdp_runtime() -> None:
    from configurator.service.jobs import search_context

    base = {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 16, "global_batch": 64, "seq_len": 4096}
    ctx = search_context({**base, "framework": "torchtitan"}, None)
    assert (ctx.framework, ctx.runtime) == ("torchtitan", "fsdp")
    assert search_context({**base, "framework": "deepspeed"}, None).runtime == "deepspeed"
    assert search_context(base, None).runtime == "megatron"
