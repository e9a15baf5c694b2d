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
casts); an MoE layer adds ~30 (router GEMM, softmax/top-k, aux loss, permute/unpermute, two
all-to-alls, grouped GEMMs, shared expert).
"""

from __future__ import annotations

DENSE_LAYER_KERNELS = 24
MOE_EXTRA_KERNELS = 30
KERNELS_AFTER_SYNC = 8
BACKWARD_KERNEL_RATIO = 2.0


def exposed_launch_s(gpu_s: float, kernels: float, launch_s: float) -> float:
    """What a run of ``kernels`` launches adds beyond ``gpu_s`` of GPU work."""
    return max(0.0, kernels * launch_s - gpu_s)


def layer_launch_s(fwd_gpu_s: float, bwd_gpu_s: float, moe: bool, launch_s: float, sync_s: float,
                   syncs: int) -> tuple[float, float]:
    """(forward, backward) exposed host time of one layer and micro-batch."""
    kernels = DENSE_LAYER_KERNELS + (MOE_EXTRA_KERNELS if moe else 0)
    f = exposed_launch_s(fwd_gpu_s, kernels, launch_s)
    b = exposed_launch_s(bwd_gpu_s, BACKWARD_KERNEL_RATIO * kernels, launch_s)
    if moe and syncs:
        f += syncs * (sync_s + KERNELS_AFTER_SYNC * launch_s)
    return f, b


__all__ = ["BACKWARD_KERNEL_RATIO", "DENSE_LAYER_KERNELS", "KERNELS_AFTER_SYNC", "MOE_EXTRA_KERNELS",
           "exposed_launch_s", "layer_launch_s"]
