"""A search raises CPython's young-generation collection threshold while it runs (``optimize.SEARCH_GC_THRESHOLD``)
and gives the process its own back afterwards, also when the search fails."""

from __future__ import annotations

import gc

import pytest

from configurator import JobSpec, load_cluster, load_model
from configurator.search import optimize
from configurator.search.optimize import SEARCH_GC_THRESHOLD, search
from configurator.search.space import SearchContext


def _ctx() -> SearchContext:
    return SearchContext(model=load_model("llama3-8b"), cluster=load_cluster("dgx-h100", num_gpus=8),
                         job=JobSpec(global_batch=64, seq_len=4096))


def test_the_threshold_is_raised_during_a_search_and_restored_after(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    resolve_least = optimize.resolve_least

    def watched(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(gc.get_threshold())
        return resolve_least(*args, **kwargs)
    monkeypatch.setattr(optimize, "resolve_least", watched)
    before = gc.get_threshold()
    try:
        for own in ((700, 10, 10), (123, 4, 5), (2 * SEARCH_GC_THRESHOLD, 7, 3)):
            gc.set_threshold(*own)
            seen.clear()
            assert search(_ctx(), top_k=1).ranked
            assert seen and set(seen) == {(max(own[0], SEARCH_GC_THRESHOLD), *own[1:])}
            assert gc.get_threshold() == own

        def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise RuntimeError("broken")
        monkeypatch.setattr(optimize, "resolve_least", broken)
        gc.set_threshold(700, 10, 10)
        with pytest.raises(RuntimeError):
            search(_ctx(), top_k=1)
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)


def test_the_memos_are_gone_before_the_threshold_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first allocation after the threshold comes back collects the young generation: by then the search's memos
    must be freed, or that collection walks every entry they held (``_search_caches``)."""
    from configurator.memory import ACTIVATION_MEMO
    from configurator.search.resolve import MEMORY_MEMO

    memos_at_restore = []
    set_threshold = gc.set_threshold

    def watched(*args: int) -> None:
        if args[0] < SEARCH_GC_THRESHOLD:  # the restore, not the raise
            memos_at_restore.append((ACTIVATION_MEMO.get(), MEMORY_MEMO.get()))
        set_threshold(*args)
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        monkeypatch.setattr(optimize.gc, "set_threshold", watched)
        assert search(_ctx(), top_k=1).ranked
    finally:
        set_threshold(*before)
    assert memos_at_restore == [(None, None)]
