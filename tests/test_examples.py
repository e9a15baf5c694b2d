"""Every example script runs and prints a valid estimate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.sh"))
PARALLEL = 2
"""Examples run at once: each is one mostly single-threaded process, and CI has 2 cores (the rest of the suite
runs one test at a time), so two at a time about halves this module's wall time."""


def _run_example(script: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(["bash", str(script), "--json"], capture_output=True, text=True, env=env, timeout=240)


@pytest.fixture(scope="module")
def example_runs(request: pytest.FixtureRequest) -> dict[Path, subprocess.CompletedProcess]:
    """The collected examples' runs, ``PARALLEL`` at a time (the searching ``plan_*`` ones first: they are the
    longest). Each test reads its own script's run."""
    scripts = [item.callspec.params["script"] for item in request.session.items
               if item.module is request.module and hasattr(item, "callspec")]
    scripts.sort(key=lambda p: (not p.name.startswith("plan"), p.name))
    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(scripts, pool.map(_run_example, scripts)))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path, example_runs: dict[Path, subprocess.CompletedProcess]) -> None:
    proc = example_runs[script]
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
