"""The service answers a plan request with the plans ``configurator plan`` prints for the same job: both search
twice ``top`` fastest plans and let the risk-aware ranking choose ``top`` of them (an answer that depended on the
entry point would make CI's and the job launcher's plans disagree)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sqlalchemy")

from typer.testing import CliRunner  # noqa: E402

from configurator.cli import app  # noqa: E402
from configurator.search.optimize import search  # noqa: E402
from configurator.service.jobs import finish, search_context, search_kwargs  # noqa: E402

# Many near-equal plans (8B on 64 GPUs): the risk-aware leader is not the fastest plan (before both searched 2 x top,
# the service named a different leader here).
REQUEST = {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 64, "seq_len": 8192, "global_batch": 512,
           "top": 3, "method": "exhaustive"}


def _plans(payload: dict) -> list[str]:
    return [json.dumps(p["plan"], sort_keys=True) for p in payload["plans"]]


def test_the_service_and_the_cli_name_the_same_plans_in_the_same_order() -> None:
    ctx = search_context(REQUEST, None)
    stored: dict = {}
    finish(lambda _id, **fields: stored.update(fields), "job", ctx, REQUEST, search(ctx, **search_kwargs(REQUEST)))
    result = CliRunner().invoke(app, ["plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "64",
                                      "--seq-len", "8192", "--global-batch", "512", "--top", "3",
                                      "--method", "exhaustive", "--json"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    assert len(stored["result"]["plans"]) == 3
    assert _plans(stored["result"]) == _plans(cli)
    assert stored["result"]["conventional"] == cli["conventional"]


def test_the_service_and_the_cli_give_the_same_measured_job() -> None:
    """Qwen3-30B-A3B on 16 H100 at GBS 1024, fp8: published as r104; both answers anchor their leader to it."""
    request = {"model": "qwen3-30b-a3b", "cluster": "dgx-h100", "num_gpus": 16, "seq_len": 4096,
               "global_batch": 1024, "precision": "fp8", "top": 1}
    ctx = search_context(request, None)
    stored: dict = {}
    finish(lambda _id, **fields: stored.update(fields), "job", ctx, request, search(ctx, **search_kwargs(request)))
    result = CliRunner().invoke(app, ["plan", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100", "--num-gpus", "16",
                                      "--seq-len", "4096", "--global-batch", "1024", "--precision", "fp8", "--top", "1",
                                      "--json"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    assert stored["result"]["measured_job"]["run_id"] == "r104"
    assert stored["result"]["measured_job"] == cli["measured_job"]
