"""Run emitted launch scripts with stub launchers that record what they were asked to start.

``torchrun`` and ``deepspeed`` stubs write their argv and environment (NUL-separated) to
``RECORD/<name>.<n>.argv`` / ``.env`` and exit 0; ``srun`` runs its command once per node with
``SLURM_NODEID`` set (like ``srun --ntasks-per-node=1``); ``scontrol show hostnames A,B`` prints one
name a line. The validators then check the recorded argv, not the files the scripts read.

The scripts run as on a node of an NGC PyTorch container: a ``transformer_engine`` distribution of
``TRANSFORMER_ENGINE_VERSION`` (package metadata only, which is all a launch script reads) is on their
``PYTHONPATH``; ``run_script(te_version=...)`` sets another, None none.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

RECORDER = """#!/usr/bin/env bash
n=$(find "$STUB_RECORD" -name '*.argv' | wc -l)
f="$STUB_RECORD/$(basename "$0").$n"
printf '%s\\0' "$@" > "$f.argv"
env -0 > "$f.env"
"""
SRUN = """#!/usr/bin/env bash
nodes="${SLURM_NNODES:-1}"
while [ $# -gt 0 ]; do
  case "$1" in --nodes=*) nodes="${1#--nodes=}";; -N) shift; nodes="$1";; -*) ;; *) break;; esac
  shift
done
for ((i = 0; i < nodes; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" || exit $?; done
"""
SCONTROL = """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] || { echo "scontrol stub: $*" >&2; exit 1; }
echo "$3" | tr ',' '\\n'
"""


TRANSFORMER_ENGINE_VERSION = "2.8.0"
"""The Transformer Engine of the NGC PyTorch containers the emitted launch files target (25.10+); the Megatron
validator (validators/megatron_check.py) answers Megatron's version queries with the version a record's node had."""


def fake_transformer_engine(root: Path, version: str) -> Path:
    """A folder holding only a ``transformer_engine`` distribution's metadata of ``version`` (for PYTHONPATH)."""
    site = root / f"fake-te-{version}"
    info = site / f"transformer_engine-{version}.dist-info"
    if not info.exists():
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: transformer_engine\nVersion: {version}\n")
    return site


@dataclass(frozen=True)
class Launch:
    launcher: str
    argv: list[str]
    env: dict[str, str]
    prefix: Path
    """RECORD/<name>.<n>: the validators read <prefix>.argv and <prefix>.env."""


def stub_bin(root: Path) -> Path:
    bin_dir = root / "stub-bin"
    if not bin_dir.exists():
        bin_dir.mkdir(parents=True)
        for name, text in (("torchrun", RECORDER), ("deepspeed", RECORDER), ("srun", SRUN), ("scontrol", SCONTROL)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
    return bin_dir


def run_script(script: Path, *args: str, root: Path, env: dict[str, str] | None = None,
               record: Path | None = None, te_version: str | None = TRANSFORMER_ENGINE_VERSION,
               ) -> tuple[subprocess.CompletedProcess[str], list[Launch]]:
    """Run ``bash script args`` with the stubs first on PATH and a Transformer Engine of ``te_version`` on
    PYTHONPATH (module docstring); return the process and what it launched."""
    record = record or (root / f"record-{script.parent.name}-{script.stem}")
    record.mkdir(parents=True, exist_ok=True)
    megatron = root / "Megatron-LM"
    megatron.mkdir(exist_ok=True)
    (megatron / "pretrain_gpt.py").touch()
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_DEVICE_MAX_CONNECTIONS"}
    base.pop("PYTHONPATH", None)
    if te_version is not None:
        base["PYTHONPATH"] = str(fake_transformer_engine(root, te_version))
    full = dict(base, PATH=f"{stub_bin(root)}:{os.environ['PATH']}", STUB_RECORD=str(record),
                MEGATRON_DIR=str(megatron), **(env or {}))
    proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=full, timeout=60,
                          cwd=root)
    return proc, read_launches(record)


def read_launches(record: Path) -> list[Launch]:
    out = []
    for argv_file in sorted(record.glob("*.argv"), key=lambda p: int(p.name.split(".")[1])):
        prefix = argv_file.with_suffix("")
        argv = argv_file.read_bytes().decode().split("\0")[:-1]
        env = dict(item.split("=", 1) for item in Path(f"{prefix}.env").read_bytes().decode()
                   .split("\0") if "=" in item)
        out.append(Launch(prefix.name.split(".")[0], argv, env, prefix))
    return out


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


__all__ = ["Launch", "TRANSFORMER_ENGINE_VERSION", "fake_transformer_engine", "option", "read_launches", "run_script",
           "stub_bin"]
