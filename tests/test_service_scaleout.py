"""The service scaled out on one PostgreSQL store: 3 HTTP-only servers (``serve --workers 0``) and 2 worker hosts
(``configurator worker``), 200 requests spread over the servers (50 distinct), one worker host killed (its whole
process group, as a host dies) while it holds a job, and one search split in blocks that the workers claim.
Every distinct request must yield exactly one job, and every job must end done: the killed host's job is taken
over once its lease expires; the split search's plans must be the single-process search's, in the same order.

Runs on its own database (``<test db>_scaleout``, dropped and created afresh) of the server that
``CONFIGURATOR_TEST_PG_URL`` names; skipped without one (CI sets ``CONFIGURATOR_REQUIRE_POSTGRES=1``)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
sa = pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi", reason="the service needs the service extra: pip install -e '.[service]'")

from service_helpers import free_ports, fresh_postgres_database, session_processes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


LEASE_S = 3
# Cheap exhaustive searches (~0.3 s each, under the default work budget): 50 distinct requests.
DISTINCT = [{"model": model, "cluster": "dgx-h100", "num_gpus": gpus, "seq_len": seq, "global_batch": gb,
             "method": "exhaustive"}
            for model in ("llama3-8b", "llama2-7b") for gpus in (4, 8) for seq in (2048, 4096)
            for gb in (16, 32, 48, 64, 96, 128, 256)][:50]
# The victim: a longer search (~5 s on a loaded 2-core machine), so the kill lands mid-job.
VICTIM = {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 16, "seq_len": 4096, "global_batch": 64,
          "method": "exhaustive"}
# The split search: ~1,000 structures in 3 blocks, claimed by the workers like any job.
SPLIT = {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 64, "seq_len": 8192, "global_batch": 512,
         "top": 6, "split": 3}
REQUESTS = 200


@pytest.fixture()
def pg_url():  # type: ignore[no-untyped-def]
    yield fresh_postgres_database("scaleout")


def _start(log_dir: Path, *args: str) -> subprocess.Popen:
    """``configurator ARGS`` in its own session, its stderr in a file of ``log_dir`` (``_stderr``): a pipe that
    nobody reads while the test runs would block the process once it holds 64 KB, and a server writes a JSON line
    for every request."""
    log = log_dir / f"{len(list(log_dir.iterdir()))}-{args[0]}.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "configurator.cli", *args], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=True)
    proc.log_path = log  # type: ignore[attr-defined]
    return proc


def _stderr(proc: subprocess.Popen) -> str:
    """What the process has written to its stderr so far (``_start``)."""
    return proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]


def _wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 90, path: str = "/healthz") -> None:
    """Until ``base + path`` answers 200: a server's health, a worker host's ``/metrics`` (it serves them once its
    pool is up). A process that exited fails here with its stderr, not later as jobs nobody runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(base + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args[3]} exited ({proc.returncode}): {_stderr(proc)[-2000:]}") from None
        time.sleep(0.3)
    raise AssertionError(f"{proc.args[3]} did not start within {timeout:.0f} s")


def _alive(proc: subprocess.Popen) -> None:
    """The process still runs, else its exit status and the end of its stderr."""
    if proc.poll() is not None:
        raise AssertionError(f"{' '.join(proc.args[3:5])} exited ({proc.returncode}): {_stderr(proc)[-2000:]}")


def single_process_answer(request: dict) -> dict:
    """What the unsplit search stores for ``request``, computed here in one process."""
    from configurator.search.optimize import search
    from configurator.service.jobs import finish, search_context, search_kwargs

    body = {k: v for k, v in request.items() if k != "split"}
    ctx = search_context(body, None)
    stored: dict = {}
    finish(lambda _id, **fields: stored.update(fields), "single", ctx, body, search(ctx, **search_kwargs(body)))
    return stored["result"]


def _metric(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, (name, text)
    return values[0]


def _kill_session(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
    for pid in session_processes(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_servers_and_worker_hosts_share_one_postgres_store_split_a_search_and_survive_a_dead_host(
        pg_url, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from configurator.service.store import Store

    Store(pg_url).engine.dispose()  # migrate once up front, so the servers start on a ready schema
    procs: list[subprocess.Popen] = []
    try:
        bases = []
        *server_ports, metrics_a, metrics_b = free_ports(5)  # (distinct: a clash would leave a host dead at start)
        for port in server_ports:
            procs.append(_start(tmp_path, "serve", "--port", str(port), "--db", pg_url, "--workers", "0",
                                "--lease", str(LEASE_S)))
            bases.append(f"http://127.0.0.1:{port}")
        metrics_ports = [metrics_a, metrics_b]
        workers = [_start(tmp_path, "worker", "--db", pg_url, "--workers", "2", "--lease", str(LEASE_S), "--drain", "0",
                          "--metrics-port", str(port)) for port in metrics_ports]
        procs += workers
        for base, proc in zip(bases, procs):
            _wait_healthy(base, proc)
        for port, proc in zip(metrics_ports, workers):  # both hosts up before any job: the kill must leave one
            _wait_healthy(f"http://127.0.0.1:{port}", proc, path="/metrics")
        engine = sa.create_engine(pg_url)

        victim = httpx.post(bases[0] + "/v1/plans", json=VICTIM, timeout=30).json()["id"]
        deadline, holder = time.time() + 90, None
        while holder is None and time.time() < deadline:
            with engine.connect() as conn:
                holder = conn.execute(sa.text("SELECT claimed_by FROM jobs WHERE id = :i AND status = 'running'"),
                                      {"i": victim}).scalar()
            time.sleep(0.05)
        assert holder, "no worker host claimed the victim job"
        dead = next(w for w in workers if holder.endswith(f":{w.pid}"))
        os.killpg(dead.pid, signal.SIGKILL)  # the host dies with its job processes
        survivor = next(w for w in workers if w is not dead)

        split_id = httpx.post(bases[1] + "/v1/plans", json=SPLIT, timeout=30).json()["id"]
        # 200 requests, 50 distinct, spread round-robin over the 3 servers, 12 at a time.
        bodies = [DISTINCT[i % len(DISTINCT)] for i in range(REQUESTS)]
        with concurrent.futures.ThreadPoolExecutor(12) as ex:
            answers = list(ex.map(lambda ib: httpx.post(bases[ib[0] % 3] + "/v1/plans", json=ib[1], timeout=60),
                                  enumerate(bodies)))
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers if a.status_code != 202]
        ids_by_request: dict[int, set[str]] = {}
        for i, a in enumerate(answers):
            ids_by_request.setdefault(i % len(DISTINCT), set()).add(a.json()["id"])
        assert all(len(ids) == 1 for ids in ids_by_request.values()), ids_by_request  # one job per distinct request

        # The drain ends as soon as no job is open (~70 s alone); the deadline only bounds a stuck run. One
        # surviving host with 2 workers runs 52 jobs and 3 blocks, so a loaded CI machine once needed more than 240 s.
        deadline = time.time() + 480
        while time.time() < deadline:
            with engine.connect() as conn:
                open_jobs = conn.execute(sa.text("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"))
                if not open_jobs.scalar():
                    break
            _alive(survivor)  # (a dead survivor leaves the jobs open: say so, not a count of them 480 s later)
            time.sleep(0.5)
        with engine.connect() as conn:
            every = conn.execute(sa.text("SELECT id, cache_key, status, error, attempts, claimed_by, request "
                                         "FROM jobs")).all()
        rows = [r for r in every if "split_of" not in json.loads(r.request)]
        blocks = [r for r in every if json.loads(r.request).get("split_of") == split_id]
        assert len(rows) == len(DISTINCT) + 2, rows  # nothing ran as a second job
        assert len(blocks) == 3 and len(every) == len(rows) + 3, every
        assert all(r.status == "done" for r in blocks), [(r.id, r.status, r.error) for r in blocks]
        assert len({r.cache_key for r in rows}) == len(rows)
        assert all(r.status == "done" for r in rows), [(r.id, r.status, r.error) for r in rows]
        taken_over = next(r for r in rows if r.id == victim)
        assert taken_over.attempts == 2 and taken_over.claimed_by != holder, taken_over
        _alive(survivor)
        plans = httpx.get(f"{bases[2]}/v1/plans/{victim}", timeout=30).json()
        assert plans["status"] == "done" and plans["plans"], plans
        engine.dispose()
        # The split search's answer is the single-process search's: same plans, same order, same estimates.
        split_answer = httpx.get(f"{bases[0]}/v1/plans/{split_id}", timeout=30).json()
        single = single_process_answer(SPLIT)
        assert split_answer["search"]["method"] == "exhaustive (split in 3)", split_answer["search"]
        assert [(p["plan"], p["time"], p["tight"]) for p in split_answer["plans"]] == \
            [(p["plan"], p["time"], p["tight"]) for p in single["plans"]]

        # Metrics: 202 requests made 52 jobs, so the servers answered 150 from existing jobs, summed over servers;
        # every server sees the same store (52 jobs + 3 blocks done, none queued); the surviving host timed its jobs.
        texts = [httpx.get(b + "/metrics", timeout=30).text for b in bases]
        hits = sum(_metric(t, "configurator_plan_cache_hits_total") for t in texts)
        assert hits == REQUESTS - len(DISTINCT), hits
        assert all(_metric(t, 'configurator_jobs{state="done"}') == len(every) for t in texts)
        assert all(_metric(t, "configurator_queue_depth") == 0 for t in texts)
        survivor_port = metrics_ports[workers.index(survivor)]
        timed = httpx.get(f"http://127.0.0.1:{survivor_port}/metrics", timeout=30).text
        assert _metric(timed, 'configurator_search_seconds_count{outcome="exited"}') >= 1
        for proc in procs:
            _kill_session(proc)
        # Structured logs: every job's id is a field of the JSON line its server wrote when it queued it.
        logged = set()
        for proc in procs[:3]:
            for line in _stderr(proc).splitlines():
                if line.startswith("{"):
                    record = json.loads(line)
                    if record["event"].startswith("job queued"):
                        logged.add(record["job_id"])
        assert logged == {r.id for r in rows}
    finally:
        for proc in procs:
            _kill_session(proc)
