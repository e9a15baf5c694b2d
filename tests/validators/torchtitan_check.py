"""Validate emitted torchtitan jobs with torchtitan 0.3.0's own code (runs in the validators environment).

Usage: python torchtitan_check.py RECORD:GPU_FAMILY [...]
RECORD.argv / RECORD.env are what the emitted launch_torchtitan.sh passed to ``torchrun`` (recorded by a
stub launcher): the world size is ``--nnodes x --nproc-per-node``, the arguments are the words after
``-m torchtitan.train``, and the job module is imported from the script's own ``PYTHONPATH``. Then, as
``torchtitan.train`` / ``Trainer.__init__`` would, on CPU:

* ``ConfigManager().parse_args(argv)`` (imports ``--module``, calls ``--config``, applies the tyro
  overrides, validates);
* ``ParallelDims.from_config(parallelism, world_size)`` (degrees multiply to the world size) and the
  device mesh built on a fake process group of that size (``build_mesh``: dense and sparse/EP meshes);
* the trainer's sequence-length divisibility check (copied: it sits inline in ``Trainer.__init__``);
* ``model_config.update_from_config`` (TP divides heads, RoPE length, MTP with PP/CP, ...);
* the model built on the meta device (``verify_module_protocol``, parameter count with
  ``get_nparams_and_flops``); with PP, every name in ``module_fqns_per_model_part`` is a module of that
  model and the parts cover each layer exactly once; the schedule class exists and is looped iff there
  are more parts than pipeline ranks.

Not run: anything that needs a GPU or real communication (parallelize_fn, FSDP wrapping, the schedule's
execution, torch.compile / async TP, Float8 kernels). Prints one JSON object per record; exit 1 if any
was rejected.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _read(prefix: str) -> tuple[list[str], dict[str, str]]:
    argv = Path(f"{prefix}.argv").read_bytes().decode().split("\0")[:-1]
    env = dict(item.split("=", 1) for item in Path(f"{prefix}.env").read_bytes().decode().split("\0") if "=" in item)
    return argv, env


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _model_fields(config, nparams: int) -> dict:  # type: ignore[no-untyped-def]
    from torchtitan.models.common import RMSNorm

    m = config.model_spec.model
    layers = list(m.layers)
    attn = layers[0].attention
    rope = attn.rope
    out: dict = {
        "family": config.model_spec.name, "dim": m.dim, "vocab_size": m.vocab_size, "n_layers": len(layers),
        "tied_embeddings": m.enable_weight_tying, "n_heads": attn.n_heads,
        "rope_theta": float(rope.theta), "rope_scaling": rope.scaling, "rope_max_seq_len": rope.max_seq_len,
        "params": nparams, "mtp_layers": len(getattr(m, "mtp_layers", None) or []),
    }
    if rope.scaling == "llama":
        out.update(rope_scaling_factor=rope.scaling_factor, rope_original=rope.original_max_position_embeddings,
                   rope_low_freq=rope.low_freq_factor, rope_high_freq=rope.high_freq_factor)
    elif rope.scaling == "yarn":
        out.update(rope_scaling_factor=rope.rope_factor, rope_original=rope.original_seq_len)
    if hasattr(attn, "kv_lora_rank"):
        out.update(q_lora_rank=attn.q_lora_rank, kv_lora_rank=attn.kv_lora_rank,
                   qk_nope_head_dim=attn.qk_nope_head_dim, qk_rope_head_dim=attn.qk_rope_head_dim,
                   v_head_dim=attn.v_head_dim, mscale=attn.mscale, qk_norm=False)
    else:
        out.update(n_kv_heads=attn.n_kv_heads or attn.n_heads, head_dim=attn.qkv_linear.head_dim,
                   qk_norm=attn.qk_norm is not None)
    dense = [layer for layer in layers if getattr(layer, "moe", None) is None]
    moe_layers = [layer for layer in layers if getattr(layer, "moe", None) is not None]
    if dense:
        out["ffn_hidden"] = dense[0].feed_forward.w1.out_features
    out["first_dense_layers"] = next((i for i, layer in enumerate(layers) if layer.moe is not None), len(layers)) \
        if moe_layers else 0
    out["moe_layers"] = len(moe_layers)
    if moe_layers:
        moe = moe_layers[0].moe
        r = moe.router
        experts = moe.routed_experts
        inner = experts.inner_experts
        out.update(num_experts=moe.num_experts, top_k=r.top_k, score_func=r.score_func, route_norm=r.route_norm,
                   route_scale=r.route_scale, num_expert_groups=r.num_expert_groups,
                   num_limited_groups=r.num_limited_groups, expert_bias=moe.load_balance_coeff is not None,
                   moe_hidden=inner.hidden_dim,
                   shared_hidden=moe.shared_experts.w1.out_features if moe.shared_experts is not None else 0)
        same = all((x.moe.router.score_func, x.moe.router.top_k, x.moe.load_balance_coeff, x.moe.router.route_scale)
                   == (r.score_func, r.top_k, moe.load_balance_coeff, r.route_scale) for x in moe_layers)
        out["moe_layers_alike"] = same
    eps = set()
    stack = [m]
    seen = set()
    import dataclasses

    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, (list, tuple)):
            stack.extend(node)
        elif dataclasses.is_dataclass(node) and not isinstance(node, type):
            if isinstance(node, RMSNorm.Config):
                eps.add(node.eps)
            stack.extend(getattr(node, f.name) for f in dataclasses.fields(node))
    out["norm_eps"] = sorted(eps)
    return out


def _fake_world(world: int) -> None:
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)


def check(prefix: str, family: str) -> dict:
    import _shims

    _shims.set_family(family)
    import torch
    import torchtitan.components.quantization.float8 as float8

    # Float8's hardware check asks the CUDA runtime; answer for the target family like the Megatron shims.
    float8.has_cuda_capability = lambda major, minor: torch.cuda.get_device_capability() >= (major, minor)
    from torch.distributed.pipelining.schedules import PipelineScheduleMulti, get_schedule_class
    from torchtitan.config import ConfigManager
    from torchtitan.distributed import ParallelDims

    argv, env = _read(prefix)
    world = int(_option(argv, "--nnodes")) * int(_option(argv, "--nproc-per-node"))
    at = argv.index("-m")
    assert argv[at + 1] == "torchtitan.train", argv[at:at + 2]
    args = argv[at + 2:]
    folder = env["PYTHONPATH"].split(":")[0]
    sys.path.insert(0, folder)
    try:
        name = _option(args, "--module")
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        with contextlib.redirect_stdout(io.StringIO()):
            config = ConfigManager().parse_args(args)
    finally:
        sys.path.remove(folder)
    p = config.parallelism
    dims = ParallelDims.from_config(p, world)
    with contextlib.redirect_stdout(io.StringIO()):
        _fake_world(world)
        dims.build_mesh()
    divisor = (dims.tp if p.enable_sequence_parallel else 1) * (2 * dims.cp if dims.cp > 1 else 1)
    if config.training.seq_len % divisor:
        raise ValueError(f"seq_len {config.training.seq_len} not divisible by {divisor} (Trainer.__init__)")
    model_config = config.model_spec.model
    model_config.update_from_config(config=config)
    config._validate_cuda_graphs()
    with torch.device("meta"):
        model = model_config.build()
    model.verify_module_protocol()
    nparams, _ = model_config.get_nparams_and_flops(model, config.training.seq_len)
    parts = p.module_fqns_per_model_part
    pipeline = None
    if dims.pp > 1:
        schedule = get_schedule_class(p.pipeline_parallel_schedule)
        looped = issubclass(schedule, PipelineScheduleMulti)
        assert parts and len(parts) % dims.pp == 0, f"{len(parts or [])} model parts for pp={dims.pp}"
        assert looped == (len(parts) > dims.pp), f"{schedule.__name__} with {len(parts)} parts on pp={dims.pp}"
        names = [n for part in parts for n in part]
        for n in names:
            model.get_submodule(n)  # raises if the name is not a module of the model
        layers = [n for n in names if n.startswith("layers.")]
        assert sorted(layers) == sorted(f"layers.{i}" for i in range(len(model_config.layers))) \
            and len(set(names)) == len(names), "model parts do not cover each layer exactly once"
        assert parts[0][0] == "tok_embeddings" and parts[-1][-2:] == ["norm", "lm_head"]
        pipeline = {"schedule": p.pipeline_parallel_schedule,
                    "layers_per_part": [sum(n.startswith("layers.") for n in part) for part in parts]}
    return {
        "dir": prefix, "ok": True, "world_size": world,
        "degrees": {"dp_replicate": dims.dp_replicate, "dp_shard": dims.dp_shard, "tp": dims.tp, "cp": dims.cp,
                    "pp": dims.pp, "ep": dims.ep},
        "sequence_parallel": p.enable_sequence_parallel, "reshard_after_forward": p.fsdp_reshard_after_forward,
        "pipeline": pipeline, "microbatch_size": p.pipeline_parallel_microbatch_size,
        "training": {"local_batch_size": config.training.local_batch_size,
                     "global_batch_size": config.training.global_batch_size, "seq_len": config.training.seq_len,
                     "cpu_offload": config.training.enable_cpu_offload},
        "activation_checkpoint": None if config.activation_checkpoint is None
        else type(config.activation_checkpoint).__qualname__,
        "async_tp": config.compile.enable_async_tensor_parallel and config.compile.enable,
        "float8": any(type(x).__name__.startswith("Float8") for x in model.modules()),
        "loss": type(config.loss).__qualname__,
        "model": _model_fields(config, nparams),
    }


def main() -> int:
    import _shims

    _shims.install("hopper")
    os.environ.setdefault("TORCHTITAN_LOG_LEVEL", "WARNING")
    failed = False
    for spec in sys.argv[1:]:
        prefix, family = spec.rsplit(":", 1)
        start = time.perf_counter()
        try:
            result = check(prefix, family)
        except BaseException as exc:  # noqa: BLE001 - report any rejection, keep checking the others
            failed = True
            result = {"dir": prefix, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "trace": traceback.format_exc()[-2000:]}
        result["seconds"] = round(time.perf_counter() - start, 2)
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
