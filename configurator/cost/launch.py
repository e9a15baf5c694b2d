"""Host launch model: kernels cost host time, which the GPU sees only where it is not busier.

Eager PyTorch issues a layer's kernels one after another (``overhead.launch_s`` each). The host runs
ahead of the GPU, so a layer costs ``max(GPU work, launches)``: launches are exposed only when the
layer's kernels are shorter than their launch (small hidden sizes, small micro-batches, thin
experts). Megatron's all-to-all MoE dispatcher copies the token counts to the host once per MoE
layer forward, draining the queue: the GPU then idles for the sync round trip plus the launches of
the kernels before the next large one (permutation, the all-to-all, the grouped GEMM set-up).

Kernel counts per layer and micro-batch (forward; backward launches about twice as many), from
Megatron-Core with Transformer Engine: a dense layer runs ~24 (two norms, QKV / projection /
FC1 / FC2 GEMMs, rotary, attention, activation, two residual adds, bias/dropout fusions, fp8
casts), about half of them in the attention block; an MoE layer adds ~30 (router GEMM,
softmax/top-k, aux loss, permute/unpermute, two all-to-alls, grouped GEMMs, shared expert), of
which ~8 are the router and ~6 the dispatcher's preprocessing (per-expert counts, splits, the
count all-gather). The grouped GEMMs are not one kernel each: Transformer Engine's grouped linear
(``multi_stream_cublas_gemm`` behind ``general_grouped_gemm``) launches one cuBLAS GEMM per local
expert, round-robin on 4 streams, so each of FC1 and FC2 adds one launch per expert on the rank
forward and two backward (data and weight gradients): 16 local experts (Qwen3-30B-A3B at EP8) add
32 launches forward and 64 backward to the ~54 of the layer.

CUDA graphs (Megatron-Core ``--cuda-graph-impl transformer_engine --cuda-graph-scope attn moe_router
moe_preprocess``, as NVIDIA's Megatron-Bridge performance recipes set per model and GPU; runs.py
``recipe_cuda_graphs``): Transformer Engine's ``make_graphed_callables`` captures each scope's
forward and backward, so the host replays one graph per scope and pass instead of launching its
kernels; a replay costs about two eager launches (the copy of the inputs into the graph's static
buffers and ``cudaGraphLaunch``, each a few µs like a kernel launch: ~4-6 µs per launch, NVIDIA's
"Getting Started with CUDA Graphs" blog). ``full_iteration`` (``--cuda-graph-impl full_iteration``,
the 26.08 MXFP8 recipes) captures the whole forward-backward: no per-layer launches at all, and no
dispatcher sync either, since those recipes size the dispatch buffers statically
(``moe_expert_rank_capacity_factor`` 1.5).

The host's speed: ``overhead.launch_s`` is fitted on rows whose hosts are x86 (most are DGX H100s); a Grace host
(GB200/GB300 NVL72) dispatches an eager op in 2.75x that time (``ClusterSpec.host_dispatch_ratio``, measured in
NVIDIA/TransformerEngine#2053), so its Python-dispatched launches and the launches after each sync cost that much
more; the grouped GEMMs' C++ loop is left at the fitted cost (``layer_launch_s``).

A clamped GLU (GPT-OSS) syncs once more per MoE layer (``activation_syncs``): Megatron-Core's fused
activation makes a device tensor of a Python float on every call, a blocking host-to-device copy that waits
for the fc1 GEMMs to finish before the host launches the activation and fc2.
"""

from __future__ import annotations

DENSE_LAYER_KERNELS = 24
MOE_EXTRA_KERNELS = 30
ATTN_KERNELS = 12
"""Of a layer's DENSE_LAYER_KERNELS: input norm, QKV GEMM, rotary, core attention, output projection,
bias-dropout-add, fp8 casts: what the ``attn`` graph scope captures."""
MLP_KERNELS = DENSE_LAYER_KERNELS - ATTN_KERNELS
"""Of a dense layer's DENSE_LAYER_KERNELS: the pre-MLP norm, FC1, activation, FC2, bias-dropout-add and fp8 casts:
what the ``mlp`` graph scope captures (Megatron-Core captures it for dense layers only)."""
PLAN_SCOPES_MOE = ("attn", "moe_router", "moe_preprocess")
"""What ``Plan.cuda_graphs`` captures in an MoE model: NVIDIA's Megatron-Bridge GB200 recipes' scopes (runs.py
``recipe_cuda_graphs``: Qwen3-235B-A22B, DeepSeek-V3 from 26.02, Qwen3-30B-A3B in bf16); the experts' grouped GEMMs
and the all-to-all stay eager (their token counts change every step). Megatron-Bridge's CUDA-graph guide starts
dropless MoE models there too ("dropless MoE: attn moe_router moe_preprocess")."""
PLAN_SCOPES_DENSE = ("attn", "mlp")
"""What ``Plan.cuda_graphs`` captures in a dense model: the whole layer as two graphs (the scopes of NVIDIA's
Llama-3 70B GB200 run in NVIDIA/TransformerEngine#3427, ``cuda_graph_modules=[mlp, attn]``; Megatron-Bridge's
CUDA-graph guide: "dense models: attn, then optionally mlp")."""
ROUTER_KERNELS = 8
"""Of MOE_EXTRA_KERNELS: router GEMM, softmax/sigmoid, top-k, score normalisation, aux/z losses."""
PREPROCESS_KERNELS = 6
"""Of MOE_EXTRA_KERNELS: the dispatcher's per-expert counts, splits and the count all-gather (Megatron's
``moe_preprocess`` scope; the device-to-host copy it starts is not removed by the graph)."""
KERNELS_AFTER_SYNC = 8
EXPERT_GEMM_LAUNCHES = 2
"""Forward GEMM launches per local expert (FC1 and FC2; the backward launches twice as many)."""
BACKWARD_KERNEL_RATIO = 2.0
GRAPH_REPLAY_LAUNCHES = 2.0
"""Host cost of replaying one captured scope, in eager launches (static-input copy + cudaGraphLaunch)."""
FULL_ITERATION = "full_iteration"
GLU_SYNC_KERNELS_AFTER = 2
"""Launches between the clamped GLU's sync and the next long kernel: the activation itself (one
``torch.compile``'d kernel) and the first cuBLAS GEMM of the grouped fc2 (``activation_syncs``)."""


def exposed_launch_s(gpu_s: float, kernels: float, launch_s: float) -> float:
    """What a run of ``kernels`` launches adds beyond ``gpu_s`` of GPU work."""
    return max(0.0, kernels * launch_s - gpu_s)


def layer_launches(moe: bool, graphs: tuple[str, ...] = (), local_experts: float = 0.0,
                   extra: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)) -> tuple[float, float]:
    """(forward, backward) host launches of one layer and micro-batch, in eager-launch units: the
    kernels outside captured scopes one launch each (the grouped GEMMs one per local expert and
    linear, ``EXPERT_GEMM_LAUNCHES``), each captured scope one replay per pass. ``extra``: kernels a
    model's unfused operations add, (attention forward, attention backward, experts forward, experts
    backward) (``LayerWork.extra_kernels``); the attention ones are inside the ``attn`` scope."""
    if FULL_ITERATION in graphs:
        return 0.0, 0.0
    eager = DENSE_LAYER_KERNELS + (MOE_EXTRA_KERNELS + EXPERT_GEMM_LAUNCHES * local_experts if moe else 0)
    captured = {"attn": ATTN_KERNELS, "mlp": 0 if moe else MLP_KERNELS, "moe_router": ROUTER_KERNELS if moe else 0,
                "moe_preprocess": PREPROCESS_KERNELS if moe else 0}
    replays = 0
    for scope in set(graphs):
        if captured.get(scope):
            eager -= captured[scope]
            replays += 1
    attn_f, attn_b = (0.0, 0.0) if "attn" in graphs else extra[:2]
    return (eager + attn_f + extra[2] + GRAPH_REPLAY_LAUNCHES * replays,
            BACKWARD_KERNEL_RATIO * eager + attn_b + extra[3] + GRAPH_REPLAY_LAUNCHES * replays)


def plan_graph_scopes(is_moe: bool) -> tuple[str, ...]:
    """The scopes ``Plan.cuda_graphs`` captures (``PLAN_SCOPES_MOE`` / ``PLAN_SCOPES_DENSE``)."""
    return PLAN_SCOPES_MOE if is_moe else PLAN_SCOPES_DENSE


def dispatcher_syncs(moe: bool, ep: int, moe_routing: str, graphs: tuple[str, ...] = ()) -> int:
    """Device-to-host syncs of one MoE layer's forward. Dropless routing needs the per-expert counts
    on the host to size the all-to-all (Megatron-Core token_dispatcher.py: the alltoall dispatcher's
    ``cuda_sync_point`` "before_ep_alltoall"; HybridEP "sizes buffers dynamically (CPU sync in
    dispatch)" unless ``moe_expert_rank_capacity_factor`` bounds them). None when every expert's input
    is padded to capacity (``drop_and_pad``: the counts are known on the host) or the whole iteration
    is one graph (those recipes set the rank capacity factor)."""
    if not moe or ep <= 1 or moe_routing == "capacity_padded" or FULL_ITERATION in graphs:
        return 0
    return 1


def activation_syncs(clamped_glu: bool, recompute_act: bool, graphs: tuple[str, ...] = ()) -> tuple[int, int]:
    """(forward, backward) host syncs of one MoE layer's clamped GLU, for a Megatron-Core layer whose experts
    clamp outside a fused grouped MLP (``work.expert_glu_clamp_unfused``). ``weighted_bias_quick_geglu_impl``
    (megatron/core/fusions/fused_bias_geglu.py, the same in the 25.11 and 26.04 containers' pins, Megatron-LM
    0d8e0714 and 2edffadb) runs ``torch.tensor(linear_offset, dtype=input.dtype, device=input.device)`` on
    every call. A tensor made from a Python scalar on the GPU is a blocking copy: PyTorch's
    ``internal_new_from_data`` (torch/csrc/utils/tensor_new.cpp) moves it with ``.to(device,
    non_blocking=false)``, which ``copy_kernel_cuda`` (aten/src/ATen/native/cuda/Copy.cu) runs as
    ``memcpy_and_sync``: ``cudaMemcpyAsync`` then ``cudaStreamSynchronize``. The host waits for the fc1 GEMMs
    and the clamps, then launches the activation and fc2 while the GPU idles. Once per forward, and once in
    the backward where the activation is recomputed (``--recompute-modules moe_act`` or ``moe``:
    ``CheckpointWithoutOutput`` calls ``bias_act_func`` again); full recompute repeats the forward's launches
    (step.py). None under a full-iteration graph, which launches nothing per layer."""
    if not clamped_glu or FULL_ITERATION in graphs:
        return 0, 0
    return 1, 1 if recompute_act else 0


def layer_launch_s(fwd_gpu_s: float, bwd_gpu_s: float, moe: bool, launch_s: float, sync_s: float,
                   syncs: int, graphs: tuple[str, ...] = (), local_experts: float = 0.0,
                   extra: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
                   act_syncs: tuple[int, int] = (0, 0), host_ratio: float = 1.0) -> tuple[float, float]:
    """(forward, backward) exposed host time of one layer and micro-batch: the launches the GPU work does not
    cover, each dispatcher sync's round trip and the ``KERNELS_AFTER_SYNC`` launches before the next large
    kernel, and each clamped-GLU sync's (``activation_syncs``) round trip and ``GLU_SYNC_KERNELS_AFTER``
    launches.

    ``host_ratio`` (``ClusterSpec.host_dispatch_ratio``): the host's op-dispatch time over the reference host's
    (a DGX H100's x86), applied to the launches that go through Python and ATen one op at a time, not to the
    grouped GEMMs' per-expert cuBLAS launches, which Transformer Engine issues from one C++ loop
    (``multi_stream_cublas_gemm``) with no Python in between: the measured ratio is of Python-dispatched ops
    (NVIDIA/TransformerEngine#2053), and a C++ loop's launches on Grace were not measured."""
    fwd_launches, bwd_launches = layer_launches(moe, graphs, local_experts, extra)
    if host_ratio == 1.0:
        f = exposed_launch_s(fwd_gpu_s, fwd_launches, launch_s)
        b = exposed_launch_s(bwd_gpu_s, bwd_launches, launch_s)
    else:
        expert_f = EXPERT_GEMM_LAUNCHES * local_experts if moe and FULL_ITERATION not in graphs else 0.0
        expert_b = BACKWARD_KERNEL_RATIO * expert_f
        f = max(0.0, ((fwd_launches - expert_f) * host_ratio + expert_f) * launch_s - fwd_gpu_s)
        b = max(0.0, ((bwd_launches - expert_b) * host_ratio + expert_b) * launch_s - bwd_gpu_s)
    if moe and syncs:
        f += syncs * (sync_s + KERNELS_AFTER_SYNC * launch_s * host_ratio)
    if moe and any(act_syncs):
        glu_s = sync_s + GLU_SYNC_KERNELS_AFTER * launch_s * host_ratio
        f += act_syncs[0] * glu_s
        b += act_syncs[1] * glu_s
    return f, b


__all__ = ["ATTN_KERNELS", "BACKWARD_KERNEL_RATIO", "DENSE_LAYER_KERNELS", "EXPERT_GEMM_LAUNCHES", "FULL_ITERATION",
           "GRAPH_REPLAY_LAUNCHES", "GLU_SYNC_KERNELS_AFTER", "KERNELS_AFTER_SYNC", "MLP_KERNELS", "MOE_EXTRA_KERNELS",
           "PLAN_SCOPES_DENSE", "PLAN_SCOPES_MOE", "PREPROCESS_KERNELS", "ROUTER_KERNELS", "activation_syncs",
           "dispatcher_syncs", "exposed_launch_s", "layer_launch_s", "layer_launches", "plan_graph_scopes"]
