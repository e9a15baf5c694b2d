"""The service's plan page (``GET /plans/{id}``, configurator/service/page.py) shows the measured-job line that
``plan`` prints and the service's JSON carries (configurator/anchor.py): escaped, and marked when unproven."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("jinja2")

from markupsafe import escape  # noqa: E402

from configurator.search.optimize import search  # noqa: E402
from configurator.service.jobs import finish, search_context, search_kwargs  # noqa: E402
from configurator.service.page import render_page  # noqa: E402
from configurator.service.store import Job, Store  # noqa: E402

# Llama 3 8B on 8 H100 at seq 8192, GBS 128, bf16: published as r143 (the shipped table), a search of a second
REQUEST = {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 8, "seq_len": 8192, "global_batch": 128, "top": 1}


@pytest.fixture(scope="module")
def result() -> dict:
    ctx = search_context(REQUEST, None)
    stored: dict = {}
    finish(lambda _id, **fields: stored.update(fields), "job", ctx, REQUEST, search(ctx, **search_kwargs(REQUEST)))
    assert stored["status"] == "done"
    return stored["result"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(f"sqlite:///{tmp_path_factory.mktemp('page') / 'store.db'}")


def _page(result: dict, store: Store) -> str:
    job = Job(id="j1", cache_key="k", status="done", progress=1.0, request=REQUEST, result=result, error=None)
    return render_page(job, store)


def test_the_page_shows_the_measured_job_line_as_the_answer_carries_it(result: dict, store: Store) -> None:
    m = result["measured_job"]
    assert m is not None and m["run_id"] == "r143" and not m["unproven"]
    html = _page(result, store)
    assert "id='measured-job' class='measured'>" in html
    assert str(escape(m["line"])) in html and "measured on this job: 10,682 tok/s/GPU (r143" in html
    assert "UNPROVEN" not in html


def test_an_unproven_line_is_marked_and_its_text_escaped(result: dict, store: Store) -> None:
    flagged = copy.deepcopy(result)
    flagged["measured_job"].update(unproven=True, line="measured <script>alert(1)</script> & 'more': unproven")
    html = _page(flagged, store)
    assert "id='measured-job' class='measured unproven'><b class='flag'>UNPROVEN</b>: " in html
    assert "measured &lt;script&gt;alert(1)&lt;/script&gt; &amp; &#39;more&#39;: unproven" in html
    assert "<script>" not in html


def test_a_stored_answer_without_the_unproven_field_is_marked_by_beyond_band(result: dict, store: Store) -> None:
    """Answers stored before ``unproven`` existed carry only ``beyond_band``, which then was the flag."""
    old = copy.deepcopy(result)
    del old["measured_job"]["unproven"]
    old["measured_job"]["beyond_band"] = True
    assert "class='measured unproven'><b class='flag'>UNPROVEN</b>" in _page(old, store)
    old["measured_job"]["beyond_band"] = False
    assert "UNPROVEN" not in _page(old, store)


def test_no_measured_run_means_no_line(result: dict, store: Store) -> None:
    html = _page({**result, "measured_job": None}, store)
    assert "id='measured-job'" not in html and "id='plans'" in html


def test_a_ranking_the_search_did_not_prove_says_so_and_a_complete_one_does_not(result: dict, store: Store) -> None:
    assert result["search"]["complete"] is True and "id='not-proven'" not in _page(result, store)
    capped = copy.deepcopy(result)
    capped["search"].update(complete=False, method="optuna")
    assert "id='not-proven'" in _page(capped, store) and "search (optuna) ended" in _page(capped, store)
    older = copy.deepcopy(result)
    del older["search"]["complete"]  # (a job stored before the field: nothing is claimed either way)
    assert "id='not-proven'" not in _page(older, store)
