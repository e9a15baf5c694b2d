"""Memory mechanisms of issue 13, each against a hand count or Megatron-Core's own code.

In-flight micro-batches (replayed schedule), --recompute-modules, --recompute-num-layers per chunk,
DeepSpeed's BF16 optimizer, torchtitan's op-level selective checkpointing, loss and PP gradients,
HSDP, relu2, the runs CSV v2 reader and the memory margin.
"""

from __future__ import annotations

import csv
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from configurator.errors import InputError
from configurator.inflight import inflight_count_sets, peak_inflight, replay, schedule_table, warmup_forwards
from configurator.margin import MemoryMargin, default_margin, fits_with_margin, parse_margin
from configurator.memory import (estimate_memory, layer_activation_parts, layer_kept_bytes, load_runtime,
                                 torchtitan_op_sac_bytes)
from configurator.profiles import GIB, load_cluster, load_model
from configurator.recompute import recompute_shares, selective_module_ladder
from configurator.runs import read_runs
from configurator.specs import JobSpec, ModelSpec, Plan
from validator_env import VALIDATOR_PYTHON, megatron_ready, require

REPO = Path(__file__).resolve().parent.parent
LLAMA8B = load_model("llama3-8b")
LLAMA70B = load_model("llama3-70b")
QWEN_MOE = load_model("qwen3-30b-a3b")
H100x8 = load_cluster("dgx-h100", num_gpus=8)
ONE_TOKEN = JobSpec(global_batch=8, seq_len=1)


# ----- in-flight micro-batches ------------------------------------------------------------------
def test_one_f_one_b_replay_holds_pp_minus_rank() -> None:
    # PP4, 8 micro-batches: rank 0 warms up with 3 forwards, then F,B pairs: at most 4 outstanding.
    ops = replay(4, 1, 8, 0)
    assert [k for k, _, _ in ops[:5]] == ["F", "F", "F", "F", "B"]
    assert [peak_inflight(4, 1, 8, r)[0] for r in range(4)] == [4, 3, 2, 1]
    assert peak_inflight(4, 1, 2, 0)[0] == 2  # fewer micro-batches than stages


def test_interleaved_schedule_table_by_hand() -> None:
    # Megatron's own docstring example: PP2 N3 M5 VP2 -> micro-batches 0 1 2 0 1 2 3 4 3 4, chunks
    # 0 0 0 1 1 1 0 0 1 1.
    table = schedule_table(5, 2, 3)
    assert [mb for mb, _ in table] == [0, 1, 2, 0, 1, 2, 3, 4, 3, 4]
    assert [c for _, c in table] == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]


def test_interleaved_peak_by_hand_replay() -> None:
    # PP2 VPP2 M4 (group 2), rank 0: warm-up (2-0-1)*2 + (2-1)*2 = 4 forwards: (0,c0) (1,c0) (0,c1) (1,c1);
    # steady: F(2,c0) -> 5 outstanding, then B of (0, chunk 1-0=1) -> 4; F(3,c0) -> 5; B(1,c1) -> 4; ...
    assert warmup_forwards(2, 2, 4, 0) == 4
    held, counts = peak_inflight(2, 2, 4, 0)
    assert held == 5 and counts == (3, 2)
    # rank 1: warm-up (0)*2 + 2 = 2, peak 3 chunk-micro-batches.
    assert peak_inflight(2, 2, 4, 1)[0] == 3


def test_interleaved_first_rank_is_megatron_theoretical_factor() -> None:
    # theoretical_memory_usage.py: activations x (1 + (pp - 1) / (pp * vpp)) on the first stage, in
    # units of a whole stage (pp micro-batches): chunks held = pp*vpp + pp - 1.
    for pp, vpp in ((4, 2), (8, 4), (16, 2)):
        held, _ = peak_inflight(pp, vpp, 8 * pp, 0)
        assert held / vpp == pytest.approx(pp * (1 + (pp - 1) / (pp * vpp)))


def test_uneven_chunks_weigh_the_schedule_not_the_average() -> None:
    # A heavier chunk 0 (e.g. more layers) is held more often than chunk 1 at rank 0's peak (3 vs 2 above),
    # so the weighted peak exceeds the average-chunk estimate.
    held, counts = peak_inflight(2, 2, 4, 0, (2.0, 1.0))
    assert counts[0] >= counts[1] and held >= 5 * 1.5


def test_long_replay_is_shortened_without_changing_the_counts() -> None:
    assert set(inflight_count_sets(4, 2, 1000, 0)) == set(inflight_count_sets(4, 2, 40, 0))


def _megatron_schedule(cases: list[list[int]]) -> list[dict]:
    require(megatron_ready())
    proc = subprocess.run([str(VALIDATOR_PYTHON), str(REPO / "tests/validators/schedule_check.py"), json.dumps(cases)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_warmup_and_order_match_megatron_core_schedules() -> None:
    """Megatron-Core 0.19.2's get_pp_rank_microbatches and get_schedule_table themselves."""
    cases = [[4, 1, 8, 4], [4, 2, 8, 4], [2, 2, 5, 3], [4, 3, 12, 6], [8, 2, 16, 8], [3, 2, 7, 4]]
    for got in _megatron_schedule(cases):
        pp, vpp, m, group = got["case"]
        assert got["warmup"] == [warmup_forwards(pp, vpp, m, r, group if vpp > 1 else None) for r in range(pp)]
        if vpp > 1:
            assert [list(x) for x in schedule_table(m, vpp, group)] == got["table"]


def test_estimate_uses_the_replayed_inflight_count() -> None:
    plan = Plan(tp=2, pp=4, vpp=2, dp=1, sp=True)
    report = estimate_memory(LLAMA8B, H100x8, JobSpec(global_batch=16, seq_len=4096), plan)
    # rank 0: warm-up 3*2 + 4 = 10, + 1 -> 11 chunks = 5.5 stages' worth
    assert report.stages[0].inflight_microbatches == pytest.approx(5.5)
    assert report.stages[3].inflight_microbatches == pytest.approx((0 + 4 + 1) / 2)


# ----- recompute modules and layers -------------------------------------------------------------
def test_layernorm_and_moe_act_drop_their_hand_counted_bytes() -> None:
    plan = Plan(recompute="selective")
    full = layer_activation_parts(QWEN_MOE, ONE_TOKEN, plan, 1)
    rt = load_runtime("megatron")
    base = layer_kept_bytes(QWEN_MOE, ONE_TOKEN, plan, 1, rt)  # Megatron's default (core_attn)
    h, k, f = QWEN_MOE.hidden_size, QWEN_MOE.moe_topk, QWEN_MOE.moe_ffn_hidden_size
    ln = layer_kept_bytes(QWEN_MOE, ONE_TOKEN, replace(plan, recompute_modules=("layernorm",)), 1, rt)
    assert base - ln == pytest.approx(2 * 2 * h)  # the QKV and router/fc1 GEMM inputs, bf16
    both = layer_kept_bytes(QWEN_MOE, ONE_TOKEN, replace(plan, recompute_modules=("layernorm", "moe_act")), 1, rt)
    assert ln - both == pytest.approx(k * 2 * f)  # fc2's input of every routed (token, expert) pair
    moe = layer_kept_bytes(QWEN_MOE, ONE_TOKEN, replace(plan, recompute_modules=("moe",)), 1, rt)
    assert sum(full.values()) - moe == pytest.approx(
        sum(full[p] for p in ("router", "shared", "routed_in", "routed_fc1_out", "routed_act_out", "routed_probs")))


def test_module_ladder_saves_memory_step_by_step() -> None:
    job = JobSpec(global_batch=64, seq_len=4096)
    cluster = load_cluster("dgx-h100", num_gpus=8)
    plan = Plan(dp=8, ep=8, recompute="selective")
    peaks = [estimate_memory(QWEN_MOE, cluster, job, replace(plan, recompute_modules=m)).peak_bytes
             for m in selective_module_ladder(QWEN_MOE)]
    assert peaks == sorted(peaks, reverse=True) and peaks[0] > peaks[-1]


def test_recompute_cost_shares() -> None:
    plan = Plan(recompute="selective", recompute_modules=("mlp",))
    share = recompute_shares(LLAMA8B, ONE_TOKEN, plan, 0)
    # Llama-3-8B: attention GEMMs 2h(q+2kv)+2qh = 2*4096*6144 + 2*4096*4096; MLP 2h*2f + 2fh = 6hf.
    h, f = 4096, 14336
    attn, mlp = 2 * h * (h + 2 * 1024) + 2 * h * h, 6 * h * f
    assert share.gemm == pytest.approx(mlp / (attn + mlp))
    assert share.attention == 0.0
    assert recompute_shares(LLAMA8B, ONE_TOKEN, Plan(recompute="selective"), 0).attention == 1.0
    moe = recompute_shares(QWEN_MOE, ONE_TOKEN, Plan(ep=8, dp=8, recompute="selective", recompute_modules=("moe",)), 1)
    assert moe.ep_comm == 1.0 and 0 < moe.gemm < 1


def test_recompute_num_layers_counts_per_chunk() -> None:
    # 4 chunks of 2/3/3/2 layers on PP2 VPP2; --recompute-num-layers 2 recomputes the first two layers of
    # every chunk: rank 0 holds chunks of 2 and 3 layers -> 2 + 2 recomputed, 1 full layer.
    model = replace(LLAMA8B, num_layers=10)
    job = JobSpec(global_batch=2, seq_len=4096)
    plan = Plan(pp=2, vpp=2, dp=1, micro_batch=1, pipeline_layers=(2, 3, 3, 2), recompute="full",
                recompute_num_layers=2)
    from configurator.memory import _chunk_activations, _per_kind, chunk_layer_indices, layer_input_bytes
    kinds = _per_kind(model, job, plan, load_runtime("megatron"))
    chunks = chunk_layer_indices(model, plan, 0)
    assert chunks == [[0, 1], [5, 6, 7]]
    full = kinds[False][0]
    kept = layer_input_bytes(model, job, plan)
    assert _chunk_activations(model, job, plan, kinds, chunks[0])[0] == pytest.approx(2 * kept)
    assert _chunk_activations(model, job, plan, kinds, chunks[1])[0] == pytest.approx(2 * kept + full)


# ----- framework layouts ------------------------------------------------------------------------
def test_deepspeed_bf16_optimizer_adds_an_fp32_gradient_accumulator() -> None:
    bloom = LLAMA70B  # any shape: the layouts differ per parameter
    cluster = load_cluster("dgx-a100", num_gpus=384)
    job = JobSpec(global_batch=2048, seq_len=2048)
    plan = Plan(tp=4, pp=12, dp=8, sp=False, sharding="zero1", recompute="full")
    zero1 = estimate_memory(bloom, cluster, job, plan, runtime="deepspeed").stages[1]
    bf16 = estimate_memory(bloom, cluster, job, plan, runtime="deepspeed-bf16").stages[1]
    params = zero1.params
    # +4 B/param unsharded (fp32 accumulator), the 1e9-byte IPG bucket gone, the fp32 grad partition
    # (4/dp) now a view of the accumulator.
    assert bf16.grads_bytes - zero1.grads_bytes == pytest.approx(4 * params - 1e9, rel=1e-6)
    assert zero1.optimizer_bytes - bf16.optimizer_bytes == pytest.approx(4 * params / 8, rel=1e-6)


def test_torchtitan_op_sac_keeps_every_second_matmul() -> None:
    # Llama-3-8B per token: input 2h + wq 2q + wv 2kv + w1 2f + w2 2h + SDPA out 2q + lse 4*heads
    h, q, kv, f = 4096, 4096, 1024, 14336
    expected = 2 * h + 2 * q + 2 * kv + 2 * f + 2 * h + 2 * q + 4 * 32
    assert expected == 63616
    assert torchtitan_op_sac_bytes(LLAMA8B, ONE_TOKEN, Plan()) == pytest.approx(expected)
    rt = load_runtime("fsdp")
    assert layer_kept_bytes(LLAMA8B, ONE_TOKEN, Plan(recompute="selective"), 0, rt) == pytest.approx(expected)


def test_torchtitan_pp_holds_fp32_unsharded_grads() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=16)
    job = JobSpec(global_batch=16, seq_len=2048)
    plan = Plan(pp=2, dp=8, sharding="zero3", recompute="full")
    fsdp = load_runtime("fsdp")
    stage = estimate_memory(LLAMA8B, cluster, job, plan, runtime=fsdp).stages[0]
    bf16 = estimate_memory(LLAMA8B, cluster, job, plan, runtime=replace(fsdp, pp_unsharded_grad_bytes=2.0)).stages[0]
    # FSDP2 accumulates the unsharded gradient in its fp32 reduce dtype: 2 B/param more than bf16
    assert stage.grads_bytes - bf16.grads_bytes == pytest.approx(2 * stage.params, rel=1e-6)
    assert fsdp.pp_unsharded_grad_bytes == 4


def test_torchtitan_zero2_holds_the_whole_bf16_stage_beside_its_fp32_shards() -> None:
    """FSDP2's ZeRO-2 (reshard_after_forward never) keeps every layer's bf16 copy from its forward to its backward,
    beside the fp32 shard that is its master (there is no other: ``master_bytes`` 0); under pipeline parallelism
    PyTorch's stage turns gradient sync off but on the last micro-batch, so the gradients accumulate unsharded
    (fp32, FSDP2's reduce dtype) as under ZeRO-3. Hand-computed per parameter of the stage, dp 8."""
    cluster = load_cluster("dgx-h100", num_gpus=16)
    job = JobSpec(global_batch=16, seq_len=2048)
    fsdp = load_runtime("fsdp")
    assert fsdp.master_bytes == 0 and fsdp.zero2_param_bytes == 4 and fsdp.fsdp_pp_unsharded
    flat = estimate_memory(LLAMA8B, cluster, job, Plan(dp=16, sharding="zero2"), runtime=fsdp).stages[0]
    assert flat.weights_bytes == pytest.approx((2 + 4 / 16) * flat.params, rel=1e-6)
    assert flat.grads_bytes == pytest.approx(4 / 16 * flat.params, rel=1e-6)
    piped = estimate_memory(LLAMA8B, cluster, job, Plan(pp=2, dp=8, sharding="zero2"), runtime=fsdp).stages[0]
    assert piped.weights_bytes == pytest.approx((2 + 4 / 8) * piped.params, rel=1e-6)
    assert piped.grads_bytes == pytest.approx((4 / 8 + 4) * piped.params, rel=1e-6)
    # Megatron-FSDP's ZeRO-2 keeps its fp32 master with the optimizer and reduce-scatters every micro-batch.
    megatron = estimate_memory(LLAMA8B, cluster, job, Plan(pp=2, dp=8, sharding="zero2")).stages[0]
    assert megatron.weights_bytes == pytest.approx(2 * megatron.params, rel=1e-6)
    assert megatron.grads_bytes == pytest.approx(2 / 8 * megatron.params, rel=1e-6)


def test_hsdp_shards_inside_the_group_only() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=64)
    job = JobSpec(global_batch=64, seq_len=4096)
    zero3 = estimate_memory(LLAMA8B, cluster, job, Plan(dp=64, sharding="zero3")).stages[0]
    hsdp = estimate_memory(LLAMA8B, cluster, job, Plan(dp=64, sharding="hsdp", shard_group=8)).stages[0]
    zero3_8 = estimate_memory(LLAMA8B, load_cluster("dgx-h100", num_gpus=8), job,
                              Plan(dp=8, sharding="zero3")).stages[0]
    assert hsdp.optimizer_bytes == pytest.approx(zero3_8.optimizer_bytes)
    assert hsdp.optimizer_bytes == pytest.approx(8 * zero3.optimizer_bytes)


def test_relu2_keeps_what_gelu_keeps() -> None:
    shape = dict(name="x", num_layers=2, hidden_size=1024, ffn_hidden_size=4096, num_attention_heads=8,
                 num_kv_heads=8, vocab_size=32000, attention="mha")
    relu2 = layer_activation_parts(ModelSpec(mlp="relu2", **shape), ONE_TOKEN, Plan(), 0)["mlp"]
    gelu = layer_activation_parts(ModelSpec(mlp="gelu", **shape), ONE_TOKEN, Plan(), 0)["mlp"]
    swiglu = layer_activation_parts(ModelSpec(mlp="swiglu", **shape), ONE_TOKEN, Plan(), 0)["mlp"]
    assert relu2 == gelu == (2 + 2) * 4096  # relu(x)**2 saves its input (fc1's output) and fc2's input
    assert swiglu == (4 + 2) * 4096


# ----- runs CSV version 2 -----------------------------------------------------------------------
def _write(tmp_path: Path, rows: list[dict[str, str]], drop: tuple[str, ...] = ()) -> Path:
    path = tmp_path / "runs.csv"
    fields = [k for k in rows[0] if k not in drop]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_runs_reader_maps_columns_by_name(tmp_path, published_runs) -> None:
    rows = list(csv.DictReader(published_runs.open()))
    row = next(r for r in rows if r["tp_overlap"] == "yes")
    # reordered and without optional columns: still read
    shuffled = {k: row[k] for k in reversed(list(row)) if k not in ("notes", "ep_overlap", "measured_tflops_per_gpu")}
    case = read_runs(_write(tmp_path, [shuffled]))[0]
    assert case.error == "" and case.plan is not None and case.plan.tp_overlap is True
    assert case.plan.ep_overlap is None
    with pytest.raises(InputError, match="global_batch"):
        read_runs(_write(tmp_path, [row], drop=("global_batch",)))


def test_unknown_vpp_and_micro_batch_take_the_recipe_choice(tmp_path, published_runs) -> None:
    rows = list(csv.DictReader(published_runs.open()))
    row = dict(next(r for r in rows if r["run_id"] == "r469"))
    case = read_runs(_write(tmp_path, [row]))[0]
    # torchtitan: local batch 64/8 = 8 split into pp=8 micro-batches
    assert case.plan.micro_batch == 1 and any("pp=8 micro-batches" in a for a in case.assumptions)
    nemo = dict(next(r for r in rows if r["pp"] == "4" and r["layers"] == "80" and "NeMo" in r["source"]))
    nemo["vpp"] = ""
    case = read_runs(_write(tmp_path, [nemo]))[0]
    assert case.plan.vpp == 5  # 80 layers on PP4: most chunks with >= 4 layers each (the 70B recipe's VPP5)


# ----- memory margin ----------------------------------------------------------------------------
def test_margin_parses_gib_and_percent() -> None:
    assert parse_margin("8").bytes_for(80 * GIB) == 8 * GIB
    assert parse_margin("8GiB").bytes_for(80 * GIB) == 8 * GIB
    assert parse_margin("10%").bytes_for(80 * GIB) == pytest.approx(8 * GIB)
    assert parse_margin(None) == default_margin()
    for bad in ("-3", "abc", "100%"):
        with pytest.raises(InputError, match="memory_margin"):
            parse_margin(bad)
    assert fits_with_margin(70 * GIB, 80 * GIB, MemoryMargin(gib=10))
    assert not fits_with_margin(70.1 * GIB, 80 * GIB, MemoryMargin(gib=10))


def test_default_margin_is_never_below_the_validation_reports_memory_p90() -> None:
    """(tests/test_margin.py checks the whole rule: the larger of this p90 and the OOM-risk headroom, rounded up.)"""
    p90 = json.loads((REPO / "benchmarks" / "validation" / "summary.json").read_text())["memory"]["p90_abs_error_pct"]
    pct = default_margin().fraction * 100
    assert p90 <= pct, f"profiles/memory.json's default margin {pct}% vs the report's p90 {p90}%"


def test_search_keeps_the_margin_and_marks_tight_plans() -> None:
    from configurator.search.resolve import resolve
    from configurator.search.space import SearchContext

    cluster = load_cluster("dgx-h100", num_gpus=8)
    job = JobSpec(global_batch=8, seq_len=8192)
    structure = Plan(tp=8, dp=1, sp=True, micro_batch=1)
    base = SearchContext(model=LLAMA70B, cluster=cluster, job=job)
    free = resolve(base, structure).options
    peak = min(o.memory.peak_bytes for o in free)
    roomy = resolve(replace(base, memory_margin=MemoryMargin(gib=1.0)), structure).options
    assert roomy and all(not o.tight and o.memory.peak_bytes <= cluster.gpu_memory_bytes - GIB for o in roomy)
    # a margin nothing can keep: the options that fit the GPU come back marked tight
    huge = MemoryMargin(gib=(cluster.gpu_memory_bytes - peak) / GIB + 40)
    tight = resolve(replace(base, memory_margin=huge), structure).options
    assert tight and all(o.tight and "tight" in o.why for o in tight)


def test_tight_plans_rank_after_plans_with_headroom() -> None:
    from configurator.search.optimize import _TopK

    class _Step:
        def __init__(self, s: float) -> None:
            self.step_s = s

    class _E:
        def __init__(self, s: float, tight: bool) -> None:
            self.step, self.tight = _Step(s), tight

    top = _TopK(2)
    for e in (_E(1.0, True), _E(3.0, False), _E(2.0, False)):
        top.push(e)  # type: ignore[arg-type]
    assert [(e.step.step_s, e.tight) for e in top.ranked()] == [(2.0, False), (3.0, False)]


def test_plan_rejects_a_bad_memory_margin_in_one_line() -> None:
    import sys

    proc = subprocess.run([sys.executable, "-m", "configurator.cli", "plan", "--model", "llama3-8b", "--cluster", "dgx-h100",
                           "--num-gpus", "8", "--seq-len", "4096", "--global-batch", "8", "--memory-margin", "lots"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: memory_margin='lots': must be GiB (e.g. 8) or a percentage (e.g. 12%)"]
