"""The environment in which Megatron-LM's, DeepSpeed's and torchtitan's own code checks what we emit
(``bash .ci/validators.sh`` builds it; ``.ci/run`` sets CONFIGURATOR_REQUIRE_VALIDATORS=1, so in CI its absence
is a failure, elsewhere a skip), and one way to run a checker script in it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VALIDATOR_PYTHON = REPO / ".venv-validators" / "bin" / "python"
MEGATRON_SOURCES = REPO / ".validators" / "megatron-core"


def require(ready: bool, what: str = "validators environment") -> None:
    """Skip (fail in CI) unless ``ready``."""
    if ready:
        return
    message = f"{what} missing: run `bash .ci/validators.sh`"
    if os.environ.get("CONFIGURATOR_REQUIRE_VALIDATORS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def megatron_ready() -> bool:
    return VALIDATOR_PYTHON.exists() and (MEGATRON_SOURCES / "megatron" / "training").is_dir()


def run_checker(script: str, specs: list[str], *, with_megatron: bool = False) -> list[dict]:
    """Run ``tests/validators/<script>`` on ``specs`` (one JSON line out per spec) in the validators env."""
    env = dict(os.environ, PYTHONPATH=str(MEGATRON_SOURCES)) if with_megatron else None
    proc = subprocess.run([str(VALIDATOR_PYTHON), str(REPO / "tests" / "validators" / script), *specs],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(specs), proc.stderr[-3000:]
    return lines
