"""A split search in the service: one search as blocks that workers on any host claim from the store.

A plan request with ``split`` = n > 1 becomes a parent job and n block jobs. An exhaustive search (``method``
"exhaustive", or "auto" on a space of at most ``EXHAUSTIVE_LIMIT`` structures) splits into blocks of structures
(``search/partition.py``: block i holds the structures whose stable hash is i mod n; the merge of the blocks'
best ``top`` is exactly the whole search's best ``top``, in the same order).

No worker waits: the worker that claims the parent creates the blocks' jobs and *parks* the parent
(``Store.park``: still "running", so identical requests keep joining it, but owned by no one) and takes the
next job. Each block job runs in any worker and stores its answer; the one that finds every block done
merges them and stores the parent's outcome (a conditional write: should two finish at once, both compute
the same merge and one write lands). So however many parents are in flight, none holds a worker while its
blocks wait for one: there is no deadlock when every worker would otherwise hold a parent.

A parked parent is claimable again after ``RECHECK_S``: its next claim looks at its blocks (created
already, never twice: their cache keys derive from the parent's id), merges them if all are done (the
merging worker died), fails it if one failed (naming the block's reason), and parks it again otherwise.
Blocks are ordinary jobs: leases, heartbeats and the re-claim cap (``MAX_CLAIMS``) apply to each.

An Optuna search (``method`` "optuna", or "auto" over a larger space) splits into n seeded studies in the service's
database, exactly the processes of ``configurator plan --workers n --storage URL`` (``partition.optuna_block``),
merged the same way; deterministic for a seed (the trial count ends each study).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable

from configurator.search.partition import dump_result, load_result, merge, optuna_block, search_block

RECHECK_S = 60.0
"""How long a parked parent waits before a worker looks at its blocks again (only needed when the block that
should have merged died after storing its own answer, or a block failed)."""
MAX_SPLIT = 16


def is_block(request: dict[str, Any]) -> bool:
    return "split_of" in request


def wants_split(request: dict[str, Any]) -> bool:
    """Whether this request runs as a split search (``split`` > 1)."""
    return int(request.get("split") or 1) > 1


def block_method(request: dict[str, Any], ctx: Any) -> str:
    """The method the whole search would run: "exhaustive" or "optuna" ("auto" counts the structures)."""
    method = request.get("method", "auto")
    if method != "auto":
        return method
    from configurator.search.optimize import EXHAUSTIVE_LIMIT
    from configurator.search.space import enumerate_plans

    count = 0
    for _ in enumerate_plans(ctx):
        count += 1
        if count > EXHAUSTIVE_LIMIT:
            return "optuna"
    return "exhaustive"


def block_key(parent_id: str, index: int, parts: int) -> str:
    """A block job's cache key: derived from its parent's id, so re-claiming the parent never makes it twice."""
    return hashlib.sha256(f"split:{parent_id}:{index}/{parts}".encode()).hexdigest()


def start_or_finish(store: Any, parent: Any, lease: str, ctx: Any) -> None:
    """The parent's turn: create the blocks that do not exist yet, finish the parent if they are all done (or one
    failed), else park it (no worker waits)."""
    parts = min(MAX_SPLIT, int(parent.request["split"]))
    keys = [block_key(parent.id, i, parts) for i in range(parts)]
    blocks = store.jobs_with_keys(keys)
    base = {k: v for k, v in parent.request.items() if k != "split"}
    method = block_method(parent.request, ctx) if len(blocks) < parts else ""
    for i, key in enumerate(keys):
        if key not in blocks:
            store.create_job(key, {**base, "split_of": parent.id, "block": i, "parts": parts, "method": method})
    if _try_finish(store, parent, ctx, parts, lease=lease):
        return
    store.park(parent.id, lease, RECHECK_S)


def run_block(store: Any, update: Callable[..., Any], job: Any, ctx: Any) -> None:
    """One block: its exact best ``top`` under the whole search's budget, stored; then the merge if it is the last."""
    from configurator.service.jobs import search_kwargs

    request = job.request
    index, parts = int(request["block"]), int(request["parts"])
    if request["method"] == "optuna":
        result = optuna_block(ctx, index, parts, storage=store.url, **search_kwargs(request))
    else:
        result = search_block(ctx, index, parts, **search_kwargs(request))
    if not update(job.id, status="done", progress=1.0, result={"search": result.as_dict(),
                                                                "block": dump_result(result)}):
        return  # the lease was lost: the new owner stores and merges
    parent = store.get_job(request["split_of"])
    if parent is not None and parent.status in ("queued", "running"):
        _try_finish(store, parent, ctx, int(request["parts"]))


def _try_finish(store: Any, parent: Any, ctx: Any, parts: int, lease: str | None = None) -> bool:
    """Finish ``parent`` when its blocks allow (all done: the merge; one failed: its reason); False otherwise."""
    from configurator.service.jobs import finish, search_kwargs

    keys = [block_key(parent.id, i, parts) for i in range(parts)]
    blocks = store.jobs_with_keys(keys)
    states = [blocks[k].status if k in blocks else "missing" for k in keys]
    write = (lambda job_id, **f: store.update_job(job_id, lease=lease, **f)) if lease else \
        (lambda job_id, **f: store.update_job(job_id, only_if_unfinished=True, **f))
    failed = [(i, blocks[k]) for i, k in enumerate(keys) if states[i] == "failed"]
    if failed:
        i, block = failed[0]
        write(parent.id, status="failed", progress=1.0,
              error=f"block {i} of {parts} of the split search failed: {block.error}")
        return True
    if any(s != "done" for s in states):
        done = sum(s == "done" for s in states)
        store.update_job(parent.id, progress=min(0.99, done / parts), only_if_unfinished=True)
        return False
    start = time.perf_counter()
    results = [load_result(blocks[k].result["block"]) for k in keys]
    merged = merge(results, search_kwargs(parent.request)["top_k"],
                   seconds=max(r.seconds for r in results) + time.perf_counter() - start)
    finish(write, parent.id, ctx, parent.request, merged)
    return True


__all__ = ["MAX_SPLIT", "RECHECK_S", "block_key", "block_method", "is_block", "run_block", "start_or_finish",
           "wants_split"]
