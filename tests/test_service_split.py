"""A split search through the store, its jobs run one by one in this process (``run_job``, as a worker runs them):
the parent hands its blocks to the store and parks without holding a worker, the last block merges, and the
answer is the single search's (same plans, same order). Also: the re-claim cap. SQLite always, PostgreSQL where
``CONFIGURATOR_TEST_PG_URL`` points at a server (the store fixture of tests/test_store.py)."""

from __future__ import annotations

import time
import uuid

import pytest

pytest.importorskip("sqlalchemy")

from configurator.search.optimize import search  # noqa: E402
from configurator.search.partition import dump_result, load_result, split_search  # noqa: E402
from configurator.service import split  # noqa: E402
from configurator.service.jobs import finish, run_job, search_context, search_kwargs  # noqa: E402
from configurator.service.store import MAX_CLAIMS  # noqa: E402
from test_store import store  # noqa: E402,F401 - the fixture, over every backend

# ~1,000 structures, ~1 s single: enough blocks have plans that the merge has something to choose.
REQUEST = {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 64, "seq_len": 8192, "global_batch": 512,
           "top": 6, "method": "auto"}


def _single_answer(request: dict) -> dict:
    """The plans the unsplit search stores for ``request`` (the same rendering a job uses)."""
    ctx = search_context(request, None)
    stored: dict = {}
    finish(lambda _id, **fields: stored.update(fields), "single", ctx, request,
           search(ctx, **search_kwargs(request)))
    return stored


def _run(store, job_id: str) -> None:  # type: ignore[no-untyped-def]
    lease = str(uuid.uuid4())
    assert store.claim(lease, 30, job_id) is not None
    run_job(store.url, job_id, None, lease=lease)


def test_blocks_of_one_search_merge_to_the_single_answer_in_process() -> None:
    ctx = search_context(REQUEST, None)
    single = search(ctx, top_k=12, method="exhaustive")
    for parts in (2,):
        merged = split_search(ctx, parts, top_k=12, method="exhaustive")
        assert [(e.plan, e.step.step_s, e.tight) for e in merged.ranked] == \
            [(e.plan, e.step.step_s, e.tight) for e in single.ranked]
        assert merged.candidates == single.candidates and not merged.truncated
    roundtrip = load_result(dump_result(single))
    assert [e.plan for e in roundtrip.ranked] == [e.plan for e in single.ranked]


def test_a_stored_block_may_name_only_this_package_classes() -> None:
    import base64
    import pickle

    hostile = base64.b64encode(pickle.dumps(print)).decode()
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        load_result(hostile)


def test_split_job_parks_its_parent_and_the_last_block_merges_the_single_answer(store) -> None:  # type: ignore[no-untyped-def]
    parent = store.create_job("parent-key", {**REQUEST, "split": 3})
    _run(store, parent.id)
    keys = [split.block_key(parent.id, i, 3) for i in range(3)]
    blocks = store.jobs_with_keys(keys)
    assert len(blocks) == 3 and all(b.status == "queued" for b in blocks.values())
    parked = store.get_job(parent.id)
    assert parked.status == "running"  # still in flight: an identical request joins it
    assert store.claim("other", 30) is not None  # the next claim is a block, not the parked parent
    with store.engine.begin() as conn:  # give that block back
        conn.execute(split_sql("UPDATE jobs SET status = 'queued', lease_owner = NULL, attempts = 0 "
                               "WHERE lease_owner = 'other'"))
    assert store.claim("early", 30, parent.id) is None  # parked: not claimable before RECHECK_S
    _expire(store, parent.id)
    _run(store, parent.id)  # re-claimed after RECHECK_S: blocks not done, it parks again, none added
    assert len(store.jobs_with_keys(keys)) == 3 and store.get_job(parent.id).status == "running"
    for key in keys[:2]:
        _run(store, blocks[key].id)
        assert store.get_job(parent.id).status == "running"
    _run(store, blocks[keys[2]].id)
    done = store.get_job(parent.id)
    assert done.status == "done", done.error
    single = _single_answer(REQUEST)
    assert [p["plan"] for p in done.result["plans"]] == [p["plan"] for p in single["result"]["plans"]]
    assert [(p["time"], p["placement"], p["tight"], p["rank"]) for p in done.result["plans"]] == \
        [(p["time"], p["placement"], p["tight"], p["rank"]) for p in single["result"]["plans"]]
    assert done.result["search"]["method"] == "exhaustive (split in 3)"


def test_a_failed_block_fails_its_parent_with_the_reason(store) -> None:  # type: ignore[no-untyped-def]
    parent = store.create_job("parent-key-2", {**REQUEST, "split": 2})
    _run(store, parent.id)
    first = store.jobs_with_keys([split.block_key(parent.id, 0, 2)])[split.block_key(parent.id, 0, 2)]
    store.update_job(first.id, status="failed", error="worker process died (SIGKILL)")
    _expire(store, parent.id)
    _run(store, parent.id)  # its next look at the blocks
    failed = store.get_job(parent.id)
    assert failed.status == "failed" and "block 0 of 2" in failed.error and "SIGKILL" in failed.error


def test_a_job_whose_worker_keeps_dying_is_failed_after_the_claim_cap(store) -> None:  # type: ignore[no-untyped-def]
    job = store.create_job("k-cap", {"model": "x"})
    for attempt in range(MAX_CLAIMS):
        claimed = store.claim(f"lease-{attempt}", 0.01)  # the holder dies: the lease lapses at once
        assert claimed is not None and claimed.id == job.id
        time.sleep(0.05)
    assert store.claim("lease-last", 30) is None
    failed = store.get_job(job.id)
    assert failed.status == "failed" and f"{MAX_CLAIMS} times" in failed.error


def _expire(store, job_id: str) -> None:  # type: ignore[no-untyped-def]
    """As if ``RECHECK_S`` had passed."""
    with store.engine.begin() as conn:
        conn.execute(split_sql("UPDATE jobs SET lease_expires = 0 WHERE id = :i").bindparams(i=job_id))


def split_sql(text: str):  # type: ignore[no-untyped-def]
    import sqlalchemy

    return sqlalchemy.text(text)


def test_an_optuna_request_splits_into_the_studies_of_a_parallel_optuna_search(tmp_path, monkeypatch) -> None:
    """Optuna blocks share the service's database; merged, they answer what ``search(workers=2, storage=...)`` does."""
    from configurator.search import optimize
    from configurator.service.store import Store

    monkeypatch.setattr(optimize, "DEFAULT_TRIALS", 16)  # the service's trial count, small for a test
    local = Store(f"sqlite:///{tmp_path / 'store.db'}")
    request = {**REQUEST, "method": "optuna", "seed": 5}
    parent = local.create_job("optuna-parent", {**request, "split": 2})
    _run(local, parent.id)
    blocks = local.jobs_with_keys([split.block_key(parent.id, i, 2) for i in range(2)])
    assert {b.request["method"] for b in blocks.values()} == {"optuna"}
    for block in blocks.values():
        _run(local, block.id)
    done = local.get_job(parent.id)
    assert done.status == "done", done.error
    assert done.result["search"]["method"] == "optuna (split in 2 studies)" and done.result["plans"]
    import optuna

    names = {s.study_name for s in optuna.get_all_study_summaries(local.url)}
    assert len(names) == 2 and all(n.endswith(("-w0", "-w1")) for n in names)
    # The same studies as `plan --workers 2 --storage URL` runs (its processes, in another storage): same plans.
    ctx = search_context(request, None)
    parallel = search(ctx, top_k=search_kwargs(request)["top_k"], seed=5, method="optuna", max_trials=16, workers=2,
                      storage=f"sqlite:///{tmp_path / 'parallel.db'}")
    stored: dict = {}
    finish(lambda _id, **fields: stored.update(fields), "parallel", ctx, request, parallel)
    assert [(p["plan"], p["time"]) for p in done.result["plans"]] == \
        [(p["plan"], p["time"]) for p in stored["result"]["plans"]]


def test_the_cache_key_changes_with_every_data_file_an_answer_depends_on(tmp_path, monkeypatch) -> None:
    """Not only calibration.json: the error bands (plan ranking), cost and memory constants, presets."""
    import shutil

    from configurator.service.jobs import cache_key
    from configurator.profiles import profiles_dir

    copy = tmp_path / "profiles"
    shutil.copytree(profiles_dir(), copy)
    monkeypatch.setenv("CONFIGURATOR_PROFILES", str(copy))
    keys = {cache_key(REQUEST, None)}
    for name in ("error_bands.json", "cost.json", "memory.json", "calibration.json", "models/llama3-8b.json"):
        path = copy / name
        path.write_text(path.read_text() + "\n")  # the same data, other bytes: a new key (conservative)
        keys.add(cache_key(REQUEST, None))
    assert len(keys) == 6
    assert cache_key(REQUEST, None) == cache_key(REQUEST, None)
