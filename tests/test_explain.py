"""`explain --svg`: the simulated schedule as a picture that agrees with the numbers."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from configurator import JobSpec, Plan, estimate_memory, load_cluster, load_model
from configurator.cost import CostConstants
from configurator.explain import svg, timeline

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(("pp", "vpp", "gbs"), [(1, 1, 16), (4, 1, 32), (4, 2, 32)])
def test_timeline_is_the_simulated_schedule(pp: int, vpp: int, gbs: int) -> None:
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", num_gpus=8)
    job = JobSpec(global_batch=gbs, seq_len=4096)
    plan = Plan(tp=2, pp=pp, vpp=vpp, dp=8 // (2 * pp), sp=True)
    tl = timeline(model, cluster, job, plan, CostConstants.defaults())
    m = plan.num_microbatches(job)
    assert len(tl.ops) == 2 * m * pp * vpp
    for rank in range(pp):
        spans = sorted((s, e) for r, _, _, _, s, e in tl.ops if r == rank)
        assert all(a[1] <= b[0] + 1e-12 for a, b in zip(spans, spans[1:]))  # one op at a time per rank
        busy = sum(e - s for s, e in spans)
        assert busy == pytest.approx(tl.step.stage_busy_s[rank], rel=1e-9)
    assert max(e for *_, e in tl.ops) == pytest.approx(tl.makespan_s)
    assert tl.makespan_s <= tl.step.step_s


def test_svg_draws_every_operation_lane_and_stage() -> None:
    model, cluster = load_model("llama3-70b"), load_cluster("dgx-h100", num_gpus=64)
    job = JobSpec(global_batch=64, seq_len=8192)
    plan = Plan(tp=4, pp=4, vpp=5, cp=2, dp=2, sp=True)
    constants = CostConstants.defaults()
    tl = timeline(model, cluster, job, plan, constants)
    root = ET.fromstring(svg(tl, estimate_memory(model, cluster, job, plan), title="t"))
    rects = root.findall(f"{SVG}rect")
    ops = [r for r in rects if r.get("class", "").startswith("op ")]
    assert len(ops) == len(tl.ops)
    assert len([r for r in rects if r.get("class") == "lane"]) == 4
    assert len([r for r in rects if r.get("class", "").startswith("mem ")]) == 5 * 4
    assert root.findall(f"{SVG}line[@class='capacity']")
    assert any(r.get("class") == "comm" for r in rects)  # TP/CP communication that is not hidden


def test_explain_writes_the_svg_and_keeps_existing_files(tmp_path) -> None:
    out = tmp_path / "step.svg"
    args = [sys.executable, "-m", "configurator.cli", "explain", "--model", "llama3-8b", "--cluster", "dgx-h100",
            "--num-gpus", "8", "--seq-len", "4096", "--global-batch", "32", "--tp", "2", "--pp", "2", "--svg", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ET.parse(out)
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--force" in again.stderr
