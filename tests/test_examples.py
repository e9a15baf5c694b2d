"""Every example script runs and prints a valid estimate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.sh"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", str(script), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    if script.name.startswith("plan"):
        assert out["plans"] and out["plans"][0]["fits"] and out["search"]["evaluated"] > 0
        for path in out.get("emitted", []):
            assert Path(path).read_text()
        return
    if script.name.startswith("validate"):
        assert out["throughput"]["predicted_rows"] > 0 and out["memory"]["rows"] > 0
        return
    assert out["memory"]["peak_gib"] > 0
    assert out["time"]["step_s"] > 0 and 0 < out["time"]["mfu"] < 1
