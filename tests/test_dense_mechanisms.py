"""Dense/pipeline step-model mechanisms of issue 12's second half, each against a hand-computed case:
wave quantization of GEMM tiles, interleaved schedules that Megatron refuses, and the embedding/loss-aware
pipeline layouts."""

from __future__ import annotations

import math

from configurator import JobSpec, Plan, load_cluster, load_model, plan_violations
from configurator.cost import CostConstants
from configurator.cost.compute import gpu_rates
from configurator.cost.waves import sm_count, wave_efficiency, wave_slowdown

C = CostConstants.defaults()


def test_a_gemm_runs_in_whole_waves_of_output_tiles() -> None:
    # BLOOM's QKV GEMM at micro-batch 1, TP 8 on an A100 (108 SMs): m = 2048 tokens, n = 3*14336/8, k = 14336.
    m, n, k = 2048, 5376, 14336
    assert sm_count("a100-80gb", "ampere") == 108
    fwd = (16 * 21) / 108    # 3.11 waves run as 4
    dgrad = (16 * 56) / 108  # m x k output: 8.30 waves run as 9
    wgrad = (42 * 56) / 108  # n x k output: 21.8 waves run as 22
    assert math.isclose(wave_efficiency(m, n, 1, 108), fwd / 4, rel_tol=1e-12)
    expected = (4 / fwd + 9 / dgrad + 22 / wgrad) / 3
    assert math.isclose(wave_slowdown(m, n, k, 1, 108), expected, rel_tol=1e-12)
    assert 1.12 < expected < 1.13
    # Four times the tokens (micro-batch 4): 64 x 21 = 1344 tiles, 12.4 waves run as 13 - nearly no loss.
    assert wave_slowdown(4 * m, n, k, 1, 108) < 1.04


def test_grouped_gemm_members_share_waves_and_an_unknown_gpu_has_no_wave_model() -> None:
    # 8 experts of a 256 x 512 output each: 2 x 2 tiles each, 32 tiles on 132 SMs - one wave, a quarter full.
    assert math.isclose(wave_efficiency(256, 512, 8, 132), 32 / 132, rel_tol=1e-12)
    assert wave_slowdown(4096, 4096, 4096, 1, 0) == 1.0
    assert sm_count("no-such-gpu", "no-such-arch") == 0


def test_gemm_time_carries_the_wave_slowdown_of_the_gpu() -> None:
    cluster = load_cluster("dgx-a100", num_gpus=8)
    rates = gpu_rates(cluster, "bf16", C)
    assert rates.sm_count == 108
    m, n, k = 2048, 5376, 14336
    curve = rates.gemm_bf16
    eff = math.prod(d / (d + curve.half_dim) for d in (m, n, k))
    smooth = 2.0 * m * n * k / (curve.max_flops * eff)
    assert math.isclose(rates.gemm_s(m, n, k, 1, True), smooth * wave_slowdown(m, n, k, 1, 108), rel_tol=1e-12)


def test_stream_k_splits_only_the_last_partial_wave_on_hopper_and_blackwell() -> None:
    # 1792 x 2560 output on an H100 (132 SMs): 14 x 10 = 140 tiles, one full wave and 8 tiles left over.
    m, n = 1792, 2560
    assert math.isclose(wave_efficiency(m, n, 1, 132, 4096), (140 / 132) / 2, rel_tol=1e-12)  # Ampere rule
    # Stream-K: the 8 remaining tiles split 16 ways (132 // 8 = 16, 4096 // 256 = 16): 1 + 1/16 waves.
    assert math.isclose(wave_efficiency(m, n, 1, 132, 4096, stream_k=True), (140 / 132) / (1 + 1 / 16), rel_tol=1e-12)
    # A short reduction (k = 1024) allows only 4 slices of >= 256: 1 + 1/4 waves.
    assert math.isclose(wave_efficiency(m, n, 1, 132, 1024, stream_k=True), (140 / 132) / 1.25, rel_tol=1e-12)
    # Whole waves lose nothing either way; under one wave both are split-K.
    assert wave_efficiency(128 * 12, 256 * 11, 1, 132, 4096, stream_k=True) == 1.0
    assert wave_efficiency(256, 512, 8, 132, 1024, True) == wave_efficiency(256, 512, 8, 132, 1024) == 128 / 132
    # The GPU's architecture decides: an H100 gets stream-K, an A100 keeps whole last waves.
    assert gpu_rates(load_cluster("dgx-h100", num_gpus=8), "bf16", C).stream_k
    assert not gpu_rates(load_cluster("dgx-a100", num_gpus=8), "bf16", C).stream_k


def test_interleaving_needs_a_multiple_of_pp_microbatches_as_megatron_checks() -> None:
    # Megatron-Core's interleaved schedule (microbatch_group_size_per_vp_stage = pp) raises unless the
    # micro-batches are a multiple of pp: 8 sequences over dp 1 at pp 4 is fine, 6 is refused, 2 is refused.
    model = load_model("llama3-8b")
    plan = Plan(tp=1, pp=4, vpp=2, dp=1)
    assert not plan_violations(model, JobSpec(global_batch=8, seq_len=4096), plan, 4)
    for gbs in (6, 2):
        v = plan_violations(model, JobSpec(global_batch=gbs, seq_len=4096), plan, 4)
        assert any("interleaved schedule" in s for s in v), v
    # The non-interleaved 1F1B runs any count.
    assert not plan_violations(model, JobSpec(global_batch=6, seq_len=4096), Plan(tp=1, pp=4, dp=1), 4)


def test_the_lm_head_counts_as_layers_by_its_flops() -> None:
    from configurator.layouts import head_units

    # Llama-3-8B at 8K: per token a layer's GEMMs are 2 * h * (q + 2 kv + o + 3 ffn) and its causal attention
    # 2 * s * heads * (d_qk + d_v) / 2; the head is 2 * h * vocab.
    h, s = 4096, 8192
    layer = 2 * h * (4096 + 2 * 1024 + 4096 + 3 * 14336) + 2 * s * 32 * (128 + 128) / 2
    head = 2 * h * 128256
    assert math.isclose(head_units(load_model("llama3-8b"), s), head / layer, rel_tol=1e-9)


def test_head_aware_split_evens_layers_plus_head_over_the_stages() -> None:
    from configurator.layouts import head_aware_layout

    # 32 layers over 4 stages with a head of 2.09 layers: the even split loads the last stage 8 + 2.09;
    # the best whole-layer split has a busiest stage of 9 = ceil((32 + 2.09) / 4), the last stage 6 + 2.09.
    layout = head_aware_layout(32, 4, 2.09)
    assert sum(layout) == 32 and layout[-1] == 6
    assert max(n + (2.09 if v == 3 else 0) for v, n in enumerate(layout)) == 9
    assert layout == (8, 9, 9, 6)  # ties go to the later stage: the first holds the most micro-batches in flight
    assert head_aware_layout(3, 4, 1.0) == ()


def test_search_offers_the_head_aware_split_it_is_faster_and_emitted_as_a_layout() -> None:
    from configurator.cost import estimate_step
    from configurator.emit.megatron import _layout
    from configurator.search.space import SearchContext, enumerate_plans

    model, cluster, job = load_model("llama3-8b"), load_cluster("dgx-h100", num_gpus=8), JobSpec(global_batch=64, seq_len=8192)
    ctx = SearchContext(model=model, cluster=cluster, job=job)
    splits = [p.pipeline_layers for p in enumerate_plans(ctx)
              if (p.tp, p.pp, p.vpp, p.cp, p.micro_batch) == (1, 4, 1, 1, 1)]
    assert splits == [(), (8, 9, 9, 6)]
    even = estimate_step(model, cluster, job, Plan(tp=1, pp=4, dp=2))
    aware = estimate_step(model, cluster, job, Plan(tp=1, pp=4, dp=2, pipeline_layers=(8, 9, 9, 6)))
    assert aware.step_s < 0.95 * even.step_s  # the last stage no longer carries 8 layers + the head
    assert _layout(Plan(tp=1, pp=4, dp=2, pipeline_layers=(8, 9, 9, 6)), model) == "E,t*8|t*9|t*9|t*6,L"
    # Small gains (< 3% of the busiest rank's work) are not offered: the search would cost the structure twice.
    big = SearchContext(model=load_model("gpt3-175b"), cluster=load_cluster("dgx-a100", num_gpus=64),
                        job=JobSpec(global_batch=64, seq_len=2048))
    assert all(not p.pipeline_layers for p in enumerate_plans(big) if p.pp > 1 and 96 % (p.pp * p.vpp) == 0)


def test_under_one_wave_the_reduction_is_split_to_fill_the_sms() -> None:
    # The wgrad of a 768-wide model's QKV (n x k = 2304 x 768 output, reducing 65,536 tokens): 18 x 3 = 54
    # tiles on 108 SMs; split-K in two fills them. With a 300-long reduction only one 256-slice fits: half idle.
    assert wave_efficiency(2304, 768, 1, 108, reduction=65536) == 1.0
    assert math.isclose(wave_efficiency(2304, 768, 1, 108, reduction=300), 54 / 108, rel_tol=1e-12)
    # At one wave or more nothing is split (BLOOM's 3.1 waves stay 3.1 / 4 however long the reduction).
    assert math.isclose(wave_efficiency(2048, 5376, 1, 108, reduction=14336), (336 / 108) / 4, rel_tol=1e-12)


def test_search_offers_hsdp_inside_the_node_before_zero3_across_it() -> None:
    from configurator.search.resolve import resolve
    from configurator.search.space import SearchContext, framework_shardings, hsdp_shard_group

    model = load_model("llama3-8b")
    ctx = SearchContext(model=model, cluster=load_cluster("dgx-h100", num_gpus=64),
                        job=JobSpec(global_batch=256, seq_len=16384))
    # 8 GPUs per node: at tp 2 a node holds 4 of the 32 data-parallel ranks; at tp 1, 8 of 64.
    assert hsdp_shard_group(ctx, Plan(tp=2, dp=32)) == 4
    assert hsdp_shard_group(ctx, Plan(tp=1, dp=64)) == 8
    assert hsdp_shard_group(ctx, Plan(tp=8, dp=8)) == 0  # one rank per node: nothing to shard inside
    one_node = SearchContext(model=model, cluster=load_cluster("dgx-h100", num_gpus=8), job=ctx.job)
    assert hsdp_shard_group(one_node, Plan(tp=1, dp=8)) == 0  # the whole group is in the node: that is ZeRO-3
    assert framework_shardings(ctx, Plan(tp=1, dp=64)) == ("distopt", "zero2", "hsdp", "zero3")
    hsdp = [o.plan for o in resolve(ctx, Plan(tp=1, dp=64)).options if o.plan.sharding == "hsdp"]
    assert hsdp and all(p.shard_group == 8 for p in hsdp)


def test_fit_report_splits_dense_and_moe_rows() -> None:
    from types import SimpleNamespace

    import numpy as np

    from configurator.calibrate import ranking_stats

    def sample(run: str, moe: bool, measured: float) -> SimpleNamespace:
        row = {"model": run, "system": "s", "seq_len": "4096", "precision": "bf16"}
        case = SimpleNamespace(model=SimpleNamespace(is_moe=moe), row=row, source="src", plan=run)
        return SimpleNamespace(case=case, measured_tokens_per_s_per_gpu=measured)

    samples = [sample("a", False, 100.0), sample("b", False, 100.0), sample("c", True, 100.0)]
    # Predicted 10% and 20% too fast on the dense rows, 50% too slow on the MoE row.
    errs = np.log(np.array([1.1, 1.2, 0.5]))
    out = ranking_stats(samples, errs)  # type: ignore[arg-type]
    assert out["dense"]["rows"] == 2 and math.isclose(out["dense"]["median_abs_error_pct"], 15.0, abs_tol=0.01)
    assert out["moe"]["rows"] == 1 and math.isclose(out["moe"]["median_abs_error_pct"], 50.0, abs_tol=0.01)


def test_pytorch_eager_moves_norm_rotary_and_swiglu_tensors_once_per_op() -> None:
    # Llama-3-8B (h 4096, q 4096, kv 1024, ffn 14336), one 8192-token sequence on one rank. Per token, eager
    # adds to the fused count: two RMSNorms at 36 - 4 B per element, rotary on q and k at 20 B plus the GQA
    # copies at 4 B, minus the fused 2 (q + 2kv) bf16, and SwiGLU's 10 - 6 B per ffn element.
    from configurator.cost.work import layer_work
    from configurator.runs import runs_eager

    model = load_model("llama3-8b")
    plan = Plan(tp=1, pp=1, dp=1, micro_batch=1)
    fused = layer_work(model, JobSpec(global_batch=1, seq_len=8192), plan, 0)
    eager = layer_work(model, JobSpec(global_batch=1, seq_len=8192, compiled=False), plan, 0)
    per_token = 2 * 32 * 4096 + (24 * (4096 + 1024) - 4 * (4096 + 2 * 1024)) + 4 * 14336
    assert per_token == 417_792
    assert math.isclose(eager.elementwise_bytes - fused.elementwise_bytes, 8192 * per_token, rel_tol=1e-12)
    assert eager.gemms == fused.gemms  # the GEMMs and attention kernels are the same kernels
    # Which torchtitan rows ran eager: the table says so, or nothing needing compile is named.
    assert runs_eager("fsdp", "bf16", "Technique: FSDP.")
    assert not runs_eager("fsdp", "bf16", "Technique: FSDP + torch.compile.")
    assert not runs_eager("fsdp", "fp8", "4D FSDP+TP+PP+CP")  # torchao float8 needs compile
    assert runs_eager("fsdp", "bf16", "Optimizations: none (bf16). Float8 MFU footnote")
    assert not runs_eager("nemo", "bf16", "")


def test_all_gather_latency_is_the_rings_and_all_reduce_keeps_the_tree() -> None:
    # 64 ranks, 8 per node over 8 DGX-H100 nodes, 1 byte. NCCL runs all-gather/reduce-scatter only as a ring:
    # 63 steps, 7 of them across nodes; an all-reduce takes the tree, 2 log2(8) = 6 < 7 inter-node steps each way.
    from configurator.cost.comm import CommModel, LinkEfficiency

    cluster = load_cluster("dgx-h100", num_gpus=64)
    comm = CommModel(cluster, Plan(dp=64), None, LinkEfficiency(nvlink=1.0, scale_out=1.0))
    nv, so = cluster.intra_domain_link, cluster.scale_out_link
    bw = 7 / 8 / nv.bandwidth_Bps + 7 / 8 / 8 / so.bandwidth_Bps  # per byte gathered
    assert math.isclose(comm.allgather_s("dp_cp", 1.0), bw + 8 * 7 * nv.latency_s + 7 * so.latency_s, rel_tol=1e-12)
    assert math.isclose(comm.allreduce_s("dp_cp", 1.0), 2 * bw + 2 * 7 * nv.latency_s + 2 * 6 * so.latency_s,
                        rel_tol=1e-12)


def test_one_rank_per_node_gathers_take_nccl_pat_when_it_is_faster_than_the_ring() -> None:
    # DP 128 under TP 8 on 1,024 DGX-H100 GPUs: one rank per node, 50 GB/s x 0.8 = 40 GB/s, 5 us per network step.
    # Ring: 127/128 S / 40e9 + 127 x 5 us. PAT (NCCL >= 2.23): S / (0.75 x 40e9) + (log2(128) / 3.5 + 0.2 x 128) x 5 us
    # = S / 30e9 + 27.6 x 5 us = S / 30e9 + 138 us.
    from configurator.cost.comm import CommModel, LinkEfficiency

    cluster = load_cluster("dgx-h100", num_gpus=1024)
    comm = CommModel(cluster, Plan(tp=8, dp=128), None, LinkEfficiency(nvlink=1.0, scale_out=0.8))
    # 1 MB (an FSDP layer shard): ring 24.8 + 635 = 659.8 us; PAT 33.3 + 138 = 171.3 us.
    assert math.isclose(comm.allgather_s("dp_cp", 1e6), 1e6 / 30e9 + 138e-6, rel_tol=1e-9)
    assert math.isclose(comm.reduce_scatter_s("dp_cp", 1e6), 1e6 / 30e9 + 138e-6, rel_tol=1e-9)
    # FSDP2 divides in the collective (ReduceOp.AVG), which NCCL never runs as PAT: the ring's 659.8 us.
    assert math.isclose(comm.reduce_scatter_s("dp_cp", 1e6, average=True), 127 / 128 * 1e6 / 40e9 + 127 * 5e-6,
                        rel_tol=1e-9)
    from configurator.cost.constants import load_runtime_cost

    assert load_runtime_cost("fsdp").reduce_scatter_avg and not load_runtime_cost("megatron").reduce_scatter_avg
    # 4 GB (a Megatron bucket at this DP): ring 99.22 + 0.64 = 99.86 ms beats PAT's 133.47 ms.
    assert math.isclose(comm.allgather_s("dp_cp", 4e9), 127 / 128 * 4e9 / 40e9 + 127 * 5e-6, rel_tol=1e-9)
    # Two ranks per node (TP 4): NCCL does not enable PAT; the hierarchical ring as before.
    two = CommModel(cluster, Plan(tp=4, dp=256), None, LinkEfficiency(nvlink=1.0, scale_out=0.8))
    nv = cluster.intra_domain_link
    ring = 1e6 / 2 / nv.bandwidth_Bps + 127 / 128 * 1e6 / 2 / 40e9 + 128 * nv.latency_s + 127 * 5e-6
    assert math.isclose(two.allgather_s("dp_cp", 1e6), ring, rel_tol=1e-9)
    # All-reduce never takes PAT: the tree's 2 log2(128) = 14 network steps each way.
    assert math.isclose(comm.allreduce_s("dp_cp", 1e6), 2 * 127 / 128 * 1e6 / 40e9 + 2 * 14 * 5e-6, rel_tol=1e-9)


def test_dgx_cloud_nemotron_340b_rows_run_the_launch_scripts_twelve_virtual_stages() -> None:
    # v25.04.01's README table says VP "NA" for Nemotron-4 340B; its launch.sh runs it with -vp 12.
    from pathlib import Path

    import pytest

    from configurator.runs import read_runs, recipe_vpp

    assert recipe_vpp("NVIDIA DGX Cloud Benchmarking recipe (nemotron)", "Nemotron4 340b") == 12
    assert recipe_vpp("NVIDIA DGX Cloud Benchmarking recipe (nemotron)", "Nemotron4 15b") is None
    assert recipe_vpp("Megatron-Bridge performance summary", "Nemotron4 340b") is None
    runs = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "published_runs.csv"
    if not runs.exists():
        pytest.skip("shared/data/published_runs.csv not present")
    cases = {c.run_id: c for c in read_runs(runs)}
    assert [cases[r].plan.vpp for r in ("r204", "r205", "r208", "r209")] == [12, 12, 12, 12]
    assert cases["r013"].plan.vpp == 3  # a stated count elsewhere is kept


def test_megatron_buckets_fill_backwards_and_the_embedding_closes_the_last() -> None:
    # Llama-3-8B, TP1 PP1, dp 1024: buckets of max(40M, 1M x 1024) = 1.024e9 parameters, filled from the LM head
    # (128256 x 4096 + the final norm's 4096 = 525.34M) backwards over layers of 218.112M each.
    from configurator.cost.step import input_bucket

    model = load_model("llama3-8b")
    head, layer, embedding = 128256 * 4096 + 4096, 218_112_000, 128256 * 4096
    assert head + 2 * layer < 1.024e9 <= head + 3 * layer  # head + layers 31..29 close the first bucket
    assert 4 * layer < 1.024e9 <= 5 * layer                # then five layers a bucket: 28..4 in five buckets
    params, count = input_bucket(model, Plan(dp=1024))
    assert count == 1 + 5 + 1
    assert params == 4 * layer + embedding                 # layers 3..0 and the embedding
    # At dp 16 the 40M minimum closes a bucket after the head and after every layer: the embedding is reduced
    # alone, last (head, 32 layers, embedding: 34 buckets).
    assert input_bucket(model, Plan(dp=16)) == (embedding, 1 + 32 + 1)


def test_the_embedding_bucket_is_exposed_on_both_ends_of_a_megatron_step() -> None:
    # Nothing hides the input-side bucket: its reduce-scatter follows the backward, its all-gather precedes the
    # forward. A runtime without Megatron's buckets hides the whole (smaller-than-backward) reduction.
    from configurator.cost.step import estimate_step, link_efficiency, prepare

    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", num_gpus=256)
    job, plan = JobSpec(global_batch=512, seq_len=8192), Plan(dp=256, micro_batch=1)
    inp = prepare(model, cluster, job, plan, runtime="megatron")
    params, _ = inp.input_bucket
    comm = inp.comm.with_efficiency(link_efficiency(C))
    floor = comm.reduce_scatter_s("dp_cp", params * 4) + comm.allgather_s("dp_cp", params * 2)
    assert floor > 0.01
    assert estimate_step(model, cluster, job, plan, constants=C).term("dp_comm") >= floor * (1 - 1e-9)
    assert estimate_step(model, cluster, job, plan, runtime="llm-foundry", constants=C).term("dp_comm") < floor
