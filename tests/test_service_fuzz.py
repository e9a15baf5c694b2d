"""Property-based fuzzing of the HTTP API (hypothesis): whatever the body, method or path, the service answers
below 500, every error body is ``{"error", "field"}``, and no stack trace leaks.

The app runs in-process (``TestClient``); the worker pool's ``submit`` only records, so accepted plan requests
are checked up to the queue and no search runs (the workers are covered by test_service_faults.py). Bodies
start from valid requests and swap fields for hostile values (huge, negative, non-finite, wrong types), so
the checks behind the schema (model, cluster, plan legality, cost bounds) are reached too. Bounded time: a
fixed example count per endpoint, no deadline per example (the machine is shared).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs the service extra: pip install -e '.[service]'")
hypothesis = pytest.importorskip("hypothesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PLAN = {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 16, "seq_len": 4096, "global_batch": 64}
PROFILE = json.loads((REPO / "examples/profiles/measured_8_nodes.json").read_text())
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

HOSTILE = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 3, 7, 8, 1024, 2**31, 2**32, 2**40, 2**63 - 1, 2**63, 2**64, 10**18, 10**39, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1e-308, 0.0, -0.0, 0.5]),
    st.text(max_size=12),
    st.sampled_from(["", "dgx-h100", "llama3-8b", "/etc/passwd", "../x", "\x00", "é" * 300]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
DEGREE = st.one_of(st.sampled_from([1, 2, 4, 8, 16, 3, 64, 1024, 65536]), HOSTILE)
PLAN_FIELDS = {"model": st.sampled_from(["llama3-8b", "llama3-70b", "deepseek-v3", "mixtral-8x7b", "nope"]),
               "cluster": st.sampled_from(["dgx-h100", "dgx-a100", "h800-ib", "gb200-nvl72", "lab", "nope"]),
               "cluster_version": HOSTILE, "num_gpus": DEGREE, "nodes": DEGREE,
               "seq_len": st.one_of(st.sampled_from([1, 4096, 131072, 10_000_000]), HOSTILE),
               "global_batch": st.one_of(st.sampled_from([1, 64, 4096, 65536, 10**18]), HOSTILE),
               "precision": st.sampled_from(["bf16", "fp8", "fp4", "fp16", "int3"]), "top": HOSTILE,
               "time_budget": HOSTILE, "seed": HOSTILE, "method": st.sampled_from(["auto", "optuna", "x"]),
               "framework": st.sampled_from(["megatron", "deepspeed", "torchtitan"]),
               "runtime": st.sampled_from([None, "megatron", "deepspeed", "x" * 50])}
ESTIMATE_FIELDS = {**{k: v for k, v in PLAN_FIELDS.items() if k not in ("top", "time_budget", "seed", "method",
                                                                          "framework")},
                   "micro_batch": DEGREE, "tp": DEGREE, "pp": DEGREE, "vpp": DEGREE, "cp": DEGREE, "ep": DEGREE,
                   "etp": DEGREE, "dp": DEGREE, "sp": st.one_of(st.booleans(), HOSTILE),
                   "sharding": st.sampled_from(["none", "zero1", "zero3", "distopt", "hsdp"]),
                   "recompute": st.sampled_from(["none", "selective", "full", "some"]),
                   "recompute_layers": DEGREE, "offload": HOSTILE,
                   "runtime": st.sampled_from(["megatron", "deepspeed", "torchtitan", "x"]),
                   "shard_group": DEGREE, "tp_overlap": st.one_of(st.booleans(), HOSTILE),
                   "ep_overlap": st.one_of(st.booleans(), HOSTILE),
                   "cp_comm": st.one_of(st.sampled_from(["p2p", "all_gather", "a2a", "a2a+p2p", "ring"]), HOSTILE),
                   "ep_dispatcher": st.one_of(st.sampled_from(["alltoall", "flex", "deepep"]), HOSTILE),
                   "recompute_modules": st.one_of(st.lists(st.sampled_from(["mlp", "core_attn", "moe", "x"]),
                                                           max_size=4), HOSTILE)}


@pytest.fixture(scope="module")
def client(tmp_path_factory):  # type: ignore[no-untyped-def]
    from configurator.service.app import create_app

    app = create_app(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}", workers=1, max_queue=4,
                     claim_from_store=False)
    app.state.pool.submit = lambda job_id, profile, bounded=True: None  # the HTTP edge only: no searches
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def check(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert "Traceback" not in response.text
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        assert set(body) >= {"error", "field"} and isinstance(body["error"], str), body


def mutated(base: dict, fields: dict, data: st.DataObject) -> dict:  # type: ignore[type-arg]
    body = dict(base)
    for key in data.draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True)):
        body[key] = data.draw(fields[key])
    if data.draw(st.booleans()) and body:
        body.pop(data.draw(st.sampled_from(sorted(body))))
    return body


@FUZZ
@given(data=st.data())
def test_plan_requests_never_5xx(client, data) -> None:  # type: ignore[no-untyped-def]
    check(client.post("/v1/plans", json=mutated(PLAN, PLAN_FIELDS, data)))


@FUZZ
@given(data=st.data())
def test_estimates_never_5xx_and_stay_bounded(client, data) -> None:  # type: ignore[no-untyped-def]
    body = mutated({**PLAN, "tp": 2, "pp": 2}, ESTIMATE_FIELDS, data)
    check(client.post("/v1/estimate", json=body))


@st.composite
def in_range_estimate(draw: st.DrawFn) -> dict:  # type: ignore[type-arg]
    """A legal-looking plan (the GPU count is the product of the degrees, the batch divides), with sizes drawn up
    to the stated bounds: reaches the memory and step models rather than the plan checks."""
    tp, pp, cp, dp = (draw(st.sampled_from(v)) for v in ([1, 2, 8], [1, 2, 4, 1024], [1, 2], [1, 8, 256]))
    micro = draw(st.sampled_from([1, 2, 64]))
    gpus = tp * pp * cp * dp
    if gpus % 8:
        dp *= 8 // (gpus % 8) if 8 % gpus == 0 else 8
        gpus = tp * pp * cp * dp
    per_step = dp * micro
    return {"model": draw(st.sampled_from(["llama3-8b", "llama3-405b", "deepseek-v3", "mixtral-8x7b"])),
            "cluster": draw(st.sampled_from(["dgx-h100", "dgx-a100", "gb200-nvl72"])), "num_gpus": gpus,
            "seq_len": draw(st.sampled_from([1, 3, 4096, 131072, 10_000_000])),
            "global_batch": min(65536, per_step * draw(st.sampled_from([1, 4, 4096]))), "micro_batch": micro,
            "tp": tp, "pp": pp, "cp": cp, "vpp": draw(st.sampled_from([1, 1, 1, 2, 1024])),
            "ep": draw(st.sampled_from([1, 1, 8])), "recompute": draw(st.sampled_from(["none", "selective", "full"])),
            "offload": draw(st.sampled_from([0.0, 0.5, 1.0])), "precision": draw(st.sampled_from(["bf16", "fp8"])),
            "sharding": draw(st.sampled_from(["none", "zero1", "zero3", "distopt"]))}


IN_RANGE_ESTIMATE = in_range_estimate()


@FUZZ
@given(body=IN_RANGE_ESTIMATE)
def test_in_range_estimates_never_5xx(client, body) -> None:  # type: ignore[no-untyped-def]
    """Every field within its stated bounds, at the edges too: the model answers or names the field."""
    check(client.post("/v1/estimate", json=body))


PROFILE_PATHS = ["default_num_nodes", "gpus_per_node", "nvlink_domain_gpus", "gpu", "host_cpu_cores_per_node",
                 "intra_domain_link.bandwidth_GBps", "scale_out_link.latency_s", "nodes", "links",
                 "nodes.0.gpu_memory_GiB", "links.0.bandwidth_GBps", "links.0.src_node", "compute", "warnings"]


def _set(profile: dict, path: str, value: object) -> None:  # type: ignore[type-arg]
    """Set ``value`` at a dotted path; a path an earlier mutation already replaced is left alone."""
    *parents, last = path.split(".")
    node: object = profile
    for p in parents:
        if isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        elif isinstance(node, dict) and p in node:
            node = node[p]
        else:
            return
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value


@FUZZ
@given(data=st.data())
def test_cluster_registrations_never_5xx(client, data) -> None:  # type: ignore[no-untyped-def]
    profile = copy.deepcopy(PROFILE)
    for path in data.draw(st.lists(st.sampled_from(PROFILE_PATHS), max_size=3, unique=True)):
        _set(profile, path, data.draw(HOSTILE))
    if data.draw(st.booleans()):
        profile["compute"] = {"gemm": [{"precision": data.draw(st.sampled_from(["bf16", "fp8", "fp4", "x"])),
                                        "m": data.draw(DEGREE), "n": 4096, "k": 4096, "tflops": data.draw(HOSTILE)}
                                       for _ in range(3)]}
    name = data.draw(st.sampled_from(["lab", "dgx-h100", "lab-2", "bad name", "x" * 201]))
    r = client.post("/v1/clusters", json={"name": name, "profile": profile})
    check(r)
    if r.status_code == 201:
        check(client.post("/v1/plans", json={**PLAN, "cluster": name, "num_gpus": None}))
        check(client.post("/v1/estimate", json={**PLAN, "cluster": name, "num_gpus": None}))


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
       path=st.one_of(st.sampled_from(["/v1/plans", "/v1/estimate", "/v1/clusters", "/v1/clusters/lab", "/healthz",
                                       "/v1/models", "/v1/plans/x", "/plans/x", "/", "/v2/x", "/v1/clusters/dgx-h100",
                                       "/v1/clusters/lab?version=99999999999999999999"]),
                      st.text(alphabet="abc/?=%.-_0123456789", max_size=20).map(lambda t: "/" + t)),
       body=st.one_of(st.binary(max_size=200), st.just(b"[" * 5000), st.just(b"[" * 5000 + b"]" * 5000), st.just(b'{"model": NaN}'),
                      st.just(b"\xff\xfe not utf-8")))
def test_any_method_path_and_bytes_get_an_error_object(client, method, path, body) -> None:  # type: ignore[no-untyped-def]
    check(client.request(method, path, content=body, headers={"content-type": "application/json"}))


def test_hostile_examples_from_the_issue(client) -> None:
    """The requests that broke the service before: each is a 4xx naming its field, in bounded time."""
    r = client.post("/v1/estimate", json={**PLAN, "global_batch": 10**18})
    assert r.status_code == 422 and r.json()["field"] == "global_batch"
    r = client.post("/v1/estimate", json={**PLAN, "num_gpus": 8, "global_batch": 65536})
    assert r.status_code == 400 and r.json()["field"] == "global_batch" and "micro-batches" in r.json()["error"]
    r = client.post("/v1/plans", json={**PLAN, "global_batch": 10**7})
    assert r.status_code == 422 and r.json()["field"] == "global_batch"
    for field, value in (("cluster_version", 2**63), ("seq_len", 1e39), ("seed", 2**32)):
        r = client.post("/v1/plans", json={**PLAN, field: value})
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    r = client.post("/v1/plans", json={**PLAN, "runtime": "bogus"})
    assert r.status_code == 400 and r.json()["field"] == "runtime"
    r = client.post("/v1/estimate", json={**PLAN, "vpp": 2**40})
    assert r.status_code == 422 and r.json()["field"] == "vpp"
    huge = {**PROFILE, "default_num_nodes": 8000, "links": []}
    huge.pop("nodes")
    r = client.post("/v1/clusters", json={"name": "huge", "profile": huge})
    assert r.status_code == 400 and r.json()["field"] == "profile:links", r.text
    for tflops in (0, -5, 1e308):
        gemm = [{"precision": "bf16", "m": 4096, "n": 4096, "k": 4096, "tflops": tflops}] * 3
        r = client.post("/v1/clusters", json={"name": "g", "profile": {**PROFILE, "compute": {"gemm": gemm}}})
        assert r.status_code == 400 and r.json()["field"] == "profile:compute:gemm[0]:tflops", r.text
    r = client.post("/v1/clusters", json={"name": "dgx-h100", "profile": PROFILE})
    assert r.status_code == 409 and r.json()["field"] == "name"
    r = client.post("/v1/plans", content=b'{"model": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body" and "malformed JSON" in r.json()["error"]
    assert client.get("/nope").json() == {"error": "no such route: /nope", "field": "path"}
    assert client.put("/v1/plans").json()["field"] == "method"

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b" " * 100_000

    r = client.post("/v1/plans", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_registered_clusters_are_listed_versioned_and_deleted(client) -> None:
    for _ in range(2):
        assert client.post("/v1/clusters", json={"name": "del-me", "profile": PROFILE}).status_code == 201
    assert client.get("/v1/clusters/del-me").json()["versions"] == [1, 2]
    assert client.delete("/v1/clusters/del-me?version=2").json() == {"name": "del-me", "deleted_versions": 1}
    assert client.get("/v1/clusters/del-me").json()["version"] == 1
    assert client.delete("/v1/clusters/del-me").json()["deleted_versions"] == 1
    assert client.get("/v1/clusters/del-me").status_code == 404
    assert all(c["name"] != "del-me" for c in client.get("/v1/clusters").json())
    again = client.post("/v1/clusters", json={"name": "del-me", "profile": PROFILE}).json()
    assert again["version"] == 3  # a version number is never reused (cached answers are keyed on it)
    assert client.delete("/v1/clusters/dgx-h100").status_code == 409
