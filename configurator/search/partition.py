"""One exhaustive search split into blocks of structures, and the exact merge of the blocks' best plans.

Why it is exact: ``search(..., partition=(i, n))`` returns the exact best ``top_k`` of block ``i`` (branch and
bound over that block's structures alone, ``optimize.in_partition``). Every plan of the whole search's best
``top_k`` is among the best ``top_k`` of its own block (fewer than ``top_k`` plans of that block beat it), so
the best ``top_k`` of the union of the blocks' answers is the whole search's best ``top_k``. The blocks are
ranked the way the whole search keeps its heap: plans with headroom before "tight" ones, then by step time
before placement (a link-aware placement re-costs only the kept plans, after the heap), then by step time
after placement, which is the final order.

Budgets: each block runs under the whole search's work budget (a count of resolutions + evaluations), so a
block is never cut shorter than the whole search; the merge is truncated when any block was. A block's
branch and bound prunes against its own k-th best, which is weaker than the whole search's, so a block can
do more work on its structures than the whole search did on them: the sum of the blocks' work exceeds the
single search's (``benchmarks/scaleout.py`` reports both).

The pieces run anywhere: in-process (``split_search``), in a process pool (``benchmarks/scaleout.py``), or as
sub-jobs of the service claimed by workers on any host (``service/split.py``); a block's answer travels as
``dump_result`` text (pickle, read back by an unpickler that admits only this package's classes).
"""

from __future__ import annotations

import base64
import io
import pickle
from collections import Counter
from typing import Any

from configurator.search.optimize import Evaluated, SearchResult, search
from configurator.search.space import SearchContext

NOTHING_FITS = "nothing fits memory even with full recompute and optimizer offload"
"""The one pruning reason counted per block (the others come from enumerating the whole space, in every block)."""


def _pre_placement_key(e: Evaluated) -> tuple[bool, float]:
    return (e.tight, e.default_placement_step_s if e.default_placement_step_s is not None else e.step.step_s)


def merge(parts: list[SearchResult], top_k: int, *, seconds: float | None = None) -> SearchResult:
    """The whole search's answer from its blocks' answers (``parts`` in block order)."""
    pool = [(e, i, j) for i, part in enumerate(parts) for j, e in enumerate(part.ranked)]
    kept = sorted(pool, key=lambda t: (_pre_placement_key(t[0]), t[1], t[2]))[:top_k]
    ranked = sorted((e for e, _, _ in kept), key=lambda e: (e.tight, e.step.step_s))
    pruned: Counter[str] = Counter()
    for reason, count in (parts[0].pruned if parts else ()):
        if reason != NOTHING_FITS:
            pruned[reason] += count
    for part in parts:
        pruned[NOTHING_FITS] += dict(part.pruned).get(NOTHING_FITS, 0)
    pruned = +pruned
    needs = [p.smallest_need_bytes for p in parts if p.smallest_need_bytes]
    notes = [f"split search: {len(parts)} blocks of structures (a stable hash of the structure key), each "
             f"searched exhaustively for its best {top_k}, merged exactly"]
    for i, part in enumerate(parts):
        notes.extend(f"block {i}: {n}" for n in part.notes)
    studies = bool(parts) and all(p.method == "optuna" for p in parts)  # each block saw the whole space
    if studies:
        notes[0] = f"split search: {len(parts)} seeded Optuna studies in one storage, their best {top_k} merged"
    return SearchResult(ranked=tuple(ranked),
                        method=f"optuna (split in {len(parts)} studies)" if studies else
                        f"exhaustive (split in {len(parts)})",
                        candidates=parts[0].candidates if studies else sum(p.candidates for p in parts), feasible=sum(p.feasible for p in parts),
                        options=sum(p.options for p in parts), evaluated=sum(p.evaluated for p in parts),
                        seconds=seconds if seconds is not None else sum(p.seconds for p in parts),
                        pruned=tuple(pruned.most_common()), smallest_need_bytes=min(needs) if needs else 0.0,
                        notes=tuple(notes), truncated=any(p.truncated for p in parts),
                        budget_s=parts[0].budget_s if parts else None,
                        work_budget=parts[0].work_budget if parts else None,
                        complete=bool(parts) and all(p.complete for p in parts))


def search_block(ctx: SearchContext, index: int, parts: int, **kwargs: Any) -> SearchResult:
    """Block ``index`` of ``parts``: ``search`` with the same arguments as the whole search (top_k, budgets)."""
    return search(ctx, partition=(index, parts), **kwargs)


def split_search(ctx: SearchContext, parts: int, **kwargs: Any) -> SearchResult:
    """The whole exhaustive search as ``parts`` blocks run one after the other here, merged (for tests)."""
    results = [search_block(ctx, i, parts, **kwargs) for i in range(parts)]
    return merge(results, kwargs.get("top_k", 5))


def optuna_block(ctx: SearchContext, index: int, parts: int, *, storage: str, top_k: int = 5, seed: int = 0,
                 max_trials: int | None = None, time_budget_s: float | None = None, **_: Any) -> SearchResult:
    """Study ``index`` of ``parts`` of an Optuna search whose studies share one RDB ``storage``: exactly what
    process ``index`` of ``search(..., workers=parts, storage=storage)`` runs (seed + index, its share of the
    trials, the best-bounded structures of its block of the space to start from), so the merge of the blocks is
    that search's answer. Its best plans get their placement here (the exhaustive blocks' ``search`` does the same)."""
    import time

    from configurator.cost.constants import load_calibration
    from configurator.search import optimize
    from configurator.search.space import enumerate_plans

    start = time.perf_counter()
    constants = load_calibration()
    trials = optimize.DEFAULT_TRIALS if max_trials is None else max_trials
    optimize._create_storage(storage)
    name = f"{optimize._study_name(ctx, seed)}-w{index}"
    ranked, evaluated, feasible = optimize._optuna_worker(ctx, constants, top_k, time_budget_s, seed + index,
                                                          max(1, trials // parts), storage, name, index, parts)
    placed = sorted((optimize._with_placement(ctx, e, constants) for e in ranked), key=lambda e: (e.tight, e.step.step_s))
    return SearchResult(ranked=tuple(placed), method="optuna", candidates=sum(1 for _ in enumerate_plans(ctx)),
                        feasible=feasible, options=0, evaluated=evaluated, seconds=time.perf_counter() - start,
                        pruned=(), notes=(f"optuna study {name} ({max(1, trials // parts)} trials)",),
                        budget_s=time_budget_s)


class _PackageUnpickler(pickle.Unpickler):
    """Reads back only what ``dump_result`` writes: this package's result classes and plain containers, so a
    block's stored answer cannot name any other callable."""

    _BUILTINS = frozenset({"tuple", "list", "dict", "set", "frozenset", "float", "int", "str", "bool", "complex"})

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("configurator.") or (module == "builtins" and name in self._BUILTINS):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a block's answer may not name {module}.{name}")


def dump_result(result: SearchResult) -> str:
    """A block's answer as text (for a JSON column)."""
    return base64.b64encode(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")


def load_result(text: str) -> SearchResult:
    result = _PackageUnpickler(io.BytesIO(base64.b64decode(text))).load()
    if not isinstance(result, SearchResult):
        raise pickle.UnpicklingError("a block's answer is not a search result")
    return result


__all__ = ["dump_result", "load_result", "merge", "optuna_block", "search_block", "split_search"]
