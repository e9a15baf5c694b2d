"""Validate emitted Megatron-LM arguments with Megatron's own code (runs in the validators environment).

Usage: python megatron_check.py DIR:WORLD_SIZE:GPU_FAMILY [...]
For each emitted folder: reads DIR/megatron_args.txt and the USER_ARGS placeholders of
DIR/launch_megatron.sh (and whether it exports CUDA_DEVICE_MAX_CONNECTIONS=1), then runs ``parse_args`` +
``validate_args``, builds the TransformerConfig, the OptimizerConfig and the DDP config as
``pretrain_gpt.py`` would, and Megatron's ``RankGenerator`` groups (order tp-cp-ep-dp-pp). Prints one
JSON object per folder: {"dir": ..., "ok": true, "groups": {...}} or {"dir": ..., "ok": false, "error": ...};
exit 1 if any folder was rejected.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TRANSFORMER_ENGINE_VERSION = "2.8.0"
"""The Transformer Engine of the NGC containers the emitted launch files target (25.10+)."""


def _provided_by_transformer_engine(*args: object, **kwargs: object) -> None:
    raise RuntimeError("stand-in for a Transformer Engine kernel: validation never runs it")


def check(out_dir: Path, world: int) -> dict:
    launch = (out_dir / "launch_megatron.sh").read_text()
    if "export CUDA_DEVICE_MAX_CONNECTIONS=1" in launch:
        os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
    else:
        os.environ.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    os.environ.update(WORLD_SIZE=str(world), RANK="0", LOCAL_RANK="0")
    user = next(line for line in launch.splitlines() if line.startswith("USER_ARGS=("))
    extra = user[len("USER_ARGS=("):-1].split()
    plan_args = (out_dir / "megatron_args.txt").read_text().split()
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
            mcore_utils._te_version = Version(TRANSFORMER_ENGINE_VERSION)
            from megatron.core.models.common.embeddings import rope_utils

            # Fused RoPE kernels come from Transformer Engine on the cluster; stand in for them here.
            for name in ("fused_apply_rotary_pos_emb", "fused_apply_rotary_pos_emb_thd"):
                if getattr(rope_utils, name, None) is None:
                    setattr(rope_utils, name, _provided_by_transformer_engine)
            sys.argv = ["pretrain_gpt.py", *plan_args, *extra]
            args = parse_args()
            validate_args(args)
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
    return {"dir": str(out_dir), "ok": True, "data_parallel_size": args.data_parallel_size,
            "num_layers": config.num_layers, "optimizer": optimizer_config.optimizer,
            "offload_fraction": getattr(optimizer_config, "optimizer_offload_fraction", None), "groups": groups}


def main() -> int:
    import _shims

    specs = [arg.rsplit(":", 2) for arg in sys.argv[1:]]
    installed = None
    failed = 0
    for directory, world, family in specs:
        if installed is None:
            _shims.install(family)
            installed = family
        elif family != installed:
            _shims.set_family(family)
        result = check(Path(directory), int(world))
        failed += not result["ok"]
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
