"""Validate emitted Megatron-LM arguments with Megatron's own code (runs in the validators environment).

Usage: python megatron_check.py RECORD:GPU_FAMILY [...]
RECORD.argv / RECORD.env are what the emitted launch_megatron.sh passed to ``torchrun`` (recorded by a stub
launcher, NUL-separated): the world size is torchrun's ``--nnodes x --nproc-per-node``, the arguments are
the words after ``pretrain_gpt.py``, and CUDA_DEVICE_MAX_CONNECTIONS is set exactly as the script exported
it. Then ``parse_args`` + ``validate_args`` run, the TransformerConfig, the OptimizerConfig and the DDP
config are built as ``pretrain_gpt.py`` would, and Megatron's ``RankGenerator`` groups (order
tp-cp-ep-dp-pp); Megatron-FSDP's adapter requirement on the node's Transformer Engine (``node_te_version``,
``fsdp_fusion_requirement``) and its combined 1F1B schedule's refusal of the EP overlap under a pipeline
(``fsdp_refuses_pipelined_ep_overlap``) are applied to the parsed arguments. Prints one JSON object per record:
{"dir": RECORD, "ok": true, "groups": {...}, "model": {...}} or {"dir": ..., "ok": false, "error": ...};
exit 1 if any was rejected.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests/: launch_stubs (standard library only)

from launch_stubs import TRANSFORMER_ENGINE_VERSION  # noqa: E402

FSDP_ADAPTER = "megatron/core/distributed/fsdp/mcore_fsdp_adapter.py"
COMBINED_1F1B = "megatron/core/pipeline_parallel/combined_1f1b.py"
_FSDP_EP_OVERLAP_REFUSED = "EP overlap 1F1B with FSDP is not supported for interleaved"  # (one literal there)
_FSDP_FUSION_NEEDS = re.compile(r'if config\.gradient_accumulation_fusion:\s*assert is_te_min_version\("([0-9.]+)"\)')


def node_te_version(env: dict[str, str]) -> str:
    """The Transformer Engine version the launch script's node had: a ``transformer_engine`` distribution on the
    recorded PYTHONPATH (launch_stubs.fake_transformer_engine), else the target containers' version."""
    import importlib.metadata

    paths = [p for p in env.get("PYTHONPATH", "").split(":") if p]
    found = [d.version for d in importlib.metadata.distributions(path=paths)
             if (d.metadata["Name"] or "").replace("-", "_").lower() == "transformer_engine"] if paths else []
    return found[0] if found else TRANSFORMER_ENGINE_VERSION


def _megatron_source(relative: str) -> str:
    """The text of one of Megatron's source files ("" where this Megatron has none)."""
    import megatron

    source = Path(next(iter(megatron.__path__))).resolve().parent / relative  # (a namespace package)
    return source.read_text() if source.is_file() else ""


def fsdp_fusion_requirement() -> str | None:
    """The Transformer Engine version Megatron-FSDP's adapter asserts for fused gradient accumulation, read from
    Megatron-Core's own source (None where this Megatron has no such check). The adapter runs while the model is
    built on GPUs, which this check cannot do, so its condition is applied to the parsed arguments here."""
    match = _FSDP_FUSION_NEEDS.search(_megatron_source(FSDP_ADAPTER))
    return match.group(1) if match else None


def fsdp_refuses_pipelined_ep_overlap() -> bool:
    """Whether Megatron-Core's combined 1F1B schedule asserts that Megatron-FSDP runs the EP all-to-all overlap
    only without an interleaved pipeline (which pipeline parallelism needs for the overlap), read from its own
    source. The schedule asserts on the first step, on GPUs, so the condition is applied to the parsed arguments."""
    return _FSDP_EP_OVERLAP_REFUSED in _megatron_source(COMBINED_1F1B)


def _provided_by_transformer_engine(*args: object, **kwargs: object) -> None:
    raise RuntimeError("stand-in for a Transformer Engine kernel: validation never runs it")


MODEL_FIELDS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
    "normalization", "layernorm_epsilon", "layernorm_zero_centered_gamma", "gated_linear_unit", "add_bias_linear",
    "add_qkv_bias", "qk_layernorm", "multi_latent_attention", "q_lora_rank", "kv_lora_rank", "qk_head_dim",
    "qk_pos_emb_head_dim", "v_head_dim", "rotary_scaling_factor", "mscale", "mscale_all_dim", "rope_type",
    "original_max_position_embeddings", "num_moe_experts", "moe_router_topk", "moe_ffn_hidden_size",
    "moe_shared_expert_intermediate_size", "moe_layer_freq", "moe_router_score_function",
    "moe_router_enable_expert_bias", "moe_router_num_groups", "moe_router_group_topk",
    "moe_router_topk_scaling_factor", "moe_aux_loss_coeff", "moe_router_load_balancing_type",
    "moe_router_pre_softmax", "mtp_num_layers", "attention_dropout", "hidden_dropout",
)
ARG_FIELDS = ("position_embedding_type", "rotary_base", "rotary_percent", "use_rope_scaling", "rope_scaling_factor",
              "rotary_seq_len_interpolation_factor", "yarn_original_max_position_embeddings",
              "untie_embeddings_and_output_weights", "swiglu", "squared_relu", "vocab_size",
              "make_vocab_size_divisible_by", "max_position_embeddings", "seq_length")


def _jsonable(value: object) -> object:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return getattr(value, "__name__", None) or str(value)


def _model_fields(args, config) -> dict:  # type: ignore[no-untyped-def]
    """What Megatron will build, read back from its parsed args and TransformerConfig."""
    out = {f: _jsonable(getattr(config, f, None)) for f in MODEL_FIELDS}
    out.update({f: _jsonable(getattr(args, f, None)) for f in ARG_FIELDS})
    out["activation_func"] = _jsonable(config.activation_func)
    out["padded_vocab_size"] = _padded_vocab(args)
    return out


def _padded_vocab(args) -> int:  # type: ignore[no-untyped-def]
    multiple = args.make_vocab_size_divisible_by * args.tensor_model_parallel_size
    return -(-args.vocab_size // multiple) * multiple


def read_record(prefix: Path) -> tuple[list[str], dict[str, str]]:
    argv = Path(f"{prefix}.argv").read_bytes().decode().split("\0")[:-1]
    env = dict(item.split("=", 1) for item in Path(f"{prefix}.env").read_bytes().decode().split("\0") if "=" in item)
    return argv, env


def check(record: Path) -> dict:
    argv, env = read_record(record)
    script = next(i for i, word in enumerate(argv) if word.endswith("pretrain_gpt.py"))
    launcher = argv[:script]
    world = int(launcher[launcher.index("--nnodes") + 1]) * int(launcher[launcher.index("--nproc-per-node") + 1])
    if "CUDA_DEVICE_MAX_CONNECTIONS" in env:
        os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] = env["CUDA_DEVICE_MAX_CONNECTIONS"]
    else:
        os.environ.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    os.environ.update(WORLD_SIZE=str(world), RANK="0", LOCAL_RANK="0")
    out_dir = record
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from megatron.core.distributed import DistributedDataParallelConfig
            from megatron.core.parallel_state import RankGenerator
            from megatron.training.argument_utils import core_transformer_config_from_args
            from megatron.training.arguments import parse_args, validate_args
            from megatron.training.training import get_megatron_optimizer_config

            import megatron.core.utils as mcore_utils
            from packaging.version import Version

            # The cluster runs an NGC PyTorch container with Transformer Engine; Megatron only asks for
            # its version while validating (fused RoPE, fp8/fp4 recipes), so answer with that version.
            mcore_utils._te_version = Version(node_te_version(env))
            from megatron.core.models.common.embeddings import rope_utils

            # Fused RoPE kernels come from Transformer Engine on the cluster; stand in for them here.
            for name in ("fused_apply_rotary_pos_emb", "fused_apply_rotary_pos_emb_thd"):
                if getattr(rope_utils, name, None) is None:
                    setattr(rope_utils, name, _provided_by_transformer_engine)
            sys.argv = ["pretrain_gpt.py", *argv[script + 1:]]
            args = parse_args()
            validate_args(args)
            needs = fsdp_fusion_requirement() if args.use_megatron_fsdp else None
            if needs and args.gradient_accumulation_fusion and not mcore_utils.is_te_min_version(needs):
                raise AssertionError(f"Megatron-FSDP with gradient_accumulation_fusion requires Transformer Engine "
                                     f"version {needs} or higher ({FSDP_ADAPTER}; the node has "
                                     f"{node_te_version(env)})")
            if (args.use_megatron_fsdp and args.overlap_moe_expert_parallel_comm
                    and args.pipeline_model_parallel_size > 1 and fsdp_refuses_pipelined_ep_overlap()):
                raise AssertionError(f"{_FSDP_EP_OVERLAP_REFUSED} pipeline parallelism ({COMBINED_1F1B})")
            config = core_transformer_config_from_args(args)
            optimizer_config, _ = get_megatron_optimizer_config(args)
            ddp_kwargs = {f: getattr(args, f) for f in DistributedDataParallelConfig.__dataclass_fields__
                          if hasattr(args, f)}
            DistributedDataParallelConfig(**ddp_kwargs)
            dense = RankGenerator(tp=args.tensor_model_parallel_size, ep=1, dp=args.data_parallel_size,
                                  pp=args.pipeline_model_parallel_size, cp=args.context_parallel_size,
                                  order="tp-cp-ep-dp-pp")
            groups = {kind: dense.get_ranks(kind)[:4] for kind in ("tp", "cp", "dp", "pp")}
            if args.num_experts:
                etp, ep = args.expert_tensor_parallel_size, args.expert_model_parallel_size
                edp = world // (args.pipeline_model_parallel_size * ep * etp)
                expert = RankGenerator(tp=etp, ep=ep, dp=edp, pp=args.pipeline_model_parallel_size, cp=1,
                                       order="tp-cp-ep-dp-pp")
                groups["ep"] = expert.get_ranks("ep")[:4]
                groups["etp"] = expert.get_ranks("tp")[:4]
    except BaseException as exc:  # noqa: BLE001 - report every rejection as data
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
        return {"dir": str(out_dir), "ok": False, "error": f"{type(exc).__name__}: {exc}{where}"}
    return {"dir": str(out_dir), "ok": True, "world_size": world, "data_parallel_size": args.data_parallel_size,
            "model": _model_fields(args, config),
            "cp_comm_type": _jsonable(args.cp_comm_type), "tp_comm_overlap": args.tp_comm_overlap,
            "overlap_moe_expert_parallel_comm": args.overlap_moe_expert_parallel_comm,
            "moe_token_dispatcher_type": getattr(config, "moe_token_dispatcher_type", None),
            "moe_flex_dispatcher_backend": getattr(config, "moe_flex_dispatcher_backend", None),
            "recompute_modules": _jsonable(args.recompute_modules),
            "hierarchical_context_parallel_sizes": _jsonable(args.hierarchical_context_parallel_sizes),
            "num_distributed_optimizer_instances": args.num_distributed_optimizer_instances,
            "use_megatron_fsdp": args.use_megatron_fsdp,
            "init_model_with_meta_device": bool(args.init_model_with_meta_device),
            "cuda_graph_impl": config.cuda_graph_impl,
            "cuda_graph_modules": [getattr(m, "name", str(m)) for m in config.cuda_graph_modules],
            "te_rng_tracker": bool(getattr(args, "te_rng_tracker", False)),
            "num_layers": config.num_layers, "optimizer": optimizer_config.optimizer,
            "offload_fraction": getattr(optimizer_config, "optimizer_offload_fraction", None), "groups": groups}


def main() -> int:
    import _shims

    specs = [arg.rsplit(":", 1) for arg in sys.argv[1:]]
    installed = None
    failed = 0
    for record, family in specs:
        if installed is None:
            _shims.install(family)
            installed = family
        elif family != installed:
            _shims.set_family(family)
        result = check(Path(record))
        failed += not result["ok"]
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
