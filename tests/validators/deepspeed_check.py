"""Validate an emitted ds_config.json with DeepSpeed's own ``DeepSpeedConfig`` (validators environment).

Usage: python deepspeed_check.py RECORD:DATA_PARALLEL_SIZE [...]
RECORD.argv is what the emitted launch_deepspeed.sh passed to the ``deepspeed`` launcher (recorded by a stub,
NUL-separated); the config checked is the file its ``--deepspeed_config`` names.
DeepSpeed falls back to world size 1 unless ``deepspeed.comm`` works, so a one-process gloo group is
started, and an ``mpu`` reports the data-parallel size so the batch equation
``train_batch_size = micro_batch x accumulation x dp`` is checked for the real cluster. Prints one JSON
object per folder {"dir": ..., "ok": ...}; exit 1 if any was rejected.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import socket
import sys
from pathlib import Path


class _MPU:
    def __init__(self, dp: int) -> None:
        self.dp = dp

    def get_data_parallel_world_size(self) -> int:
        return self.dp

    def get_data_parallel_rank(self) -> int:
        return 0

    def get_model_parallel_world_size(self) -> int:
        return 1

    def get_model_parallel_rank(self) -> int:
        return 0

    def get_sequence_parallel_world_size(self) -> int:
        return 1

    def get_sequence_data_parallel_world_size(self) -> int:
        return self.dp


def main() -> int:
    specs = [arg.rsplit(":", 1) for arg in sys.argv[1:]]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    with contextlib.redirect_stdout(io.StringIO()):
        import deepspeed
        from deepspeed.runtime.config import DeepSpeedConfig

        # The CPU backend JIT-compiles its shared-memory all-reduce kernel (a C++ build of 40-140 s on 2 cores,
        # redone for every checkout path) when the group starts; the config check never reduces anything.
        # (``deepspeed.comm.torch`` as an attribute is PyTorch, re-exported: the backend module is patched by name.)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        deepspeed.init_distributed(dist_backend="gloo")
    failed = 0
    for directory, dp in specs:
        try:
            argv = Path(f"{directory}.argv").read_bytes().decode().split("\0")[:-1]
            config_path = Path(argv[argv.index("--deepspeed_config") + 1])
            with contextlib.redirect_stdout(io.StringIO()):
                config = json.loads(config_path.read_text())
                parsed = DeepSpeedConfig(config, mpu=_MPU(int(dp)))
        except BaseException as exc:  # noqa: BLE001 - report every rejection as data
            failed += 1
            print(json.dumps({"dir": directory, "ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        offload = parsed.zero_config.offload_optimizer
        print(json.dumps({"dir": directory, "ok": True, "train_batch_size": parsed.train_batch_size,
                          "gradient_accumulation_steps": parsed.gradient_accumulation_steps,
                          "zero_stage": int(parsed.zero_config.stage),
                          "offload_ratio": getattr(offload, "ratio", None) if offload else None}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
