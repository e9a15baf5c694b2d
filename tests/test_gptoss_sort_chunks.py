"""The alltoall dispatcher's second sort (cost/work.py ``sort_chunks_bytes``).

Hand-computed for GPT-OSS-120B (hidden 2,880, top-4, 128 experts): at EP64 a rank holds 2 experts, so the
pairs that arrive from the 64 ranks are copied into expert order and back (Megatron-Core
``sort_chunks_by_idxs``): 2 copies x (read + write) x 2 B x 2,880 = 23,040 B per pair, 4 pairs per token:
92,160 B per token at TP 1; a micro-batch of 4 x 4,096 tokens moves 1.51 GB more each forward.
"""

from __future__ import annotations

import pytest

from configurator.cost.work import layer_work, sort_chunks_bytes
from configurator.profiles import load_model
from configurator.specs.job import JobSpec
from configurator.specs.plan import Plan

GPT_OSS = load_model("gpt-oss-120b")


def test_two_local_experts_sort_their_pairs() -> None:
    assert sort_chunks_bytes(GPT_OSS, Plan(dp=64, ep=64)) == pytest.approx(4 * 2 * 2 * 2880 * 2)
    assert sort_chunks_bytes(GPT_OSS, Plan(dp=64, ep=64)) == pytest.approx(92160.0)


def test_no_sort_with_one_local_expert_the_flex_dispatcher_or_no_experts() -> None:
    assert sort_chunks_bytes(GPT_OSS, Plan(dp=128, ep=128)) == 0.0
    assert sort_chunks_bytes(GPT_OSS, Plan(dp=64, ep=64, ep_dispatcher="flex")) == 0.0
    assert sort_chunks_bytes(load_model("llama3-8b"), Plan(dp=8)) == 0.0


def test_the_sort_enters_the_layers_memory_traffic() -> None:
    job = JobSpec(global_batch=1280, seq_len=4096)
    alltoall = layer_work(GPT_OSS, job, Plan(dp=64, ep=64, micro_batch=4), 1)
    flex = layer_work(GPT_OSS, job, Plan(dp=64, ep=64, micro_batch=4, ep_dispatcher="flex"), 1)
    assert alltoall.elementwise_bytes - flex.elementwise_bytes == pytest.approx(4 * 4096 * 92160.0)
    assert alltoall.gemms == flex.gemms
