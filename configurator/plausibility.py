"""Plausibility of a plan's predicted MFU against what anyone has measured.

The search returns the plan the model gets most wrong, so a top plan whose predicted MFU is well above
the best MFU measured on the same GPU family and precision in the published runs is more likely a
model artefact than a discovery. ``measured_mfu_table`` computes, from a runs CSV, the best measured
MFU (INTERFACE.md's convention: model FLOPs per token x tokens/s over the precision's dense peak) per
(GPU family, precision); ``benchmarks/measured_mfu.json`` holds it for ``bench`` (regenerate with
``python -m configurator.plausibility --runs ../shared/data/published_runs.csv``). ``bench`` flags a
scenario whose top plan is more than ``MAX_EXCESS_MFU`` (5 points) above it, and ``--check`` fails.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

MAX_EXCESS_MFU = 0.05


def measured_mfu_table(runs: Path) -> dict[str, dict[str, Any]]:
    """``"family/precision" -> {"mfu", "run_id", "source"}``: the best measured MFU per group."""
    from configurator.cost.work import model_flops_per_token
    from configurator.runs import read_runs
    from configurator.validate import Prediction

    best: dict[str, dict[str, Any]] = {}
    for case in read_runs(runs):
        if case.model is None or case.cluster is None or case.job is None or case.plan is None:
            continue
        tps = Prediction(case=case, memory=None).measured_tokens_per_s_per_gpu
        if not tps:
            continue
        gpu = case.cluster.gpu
        precision = "bf16" if case.job.precision == "fp16" else case.job.precision
        mfu = tps * model_flops_per_token(case.model, case.job.seq_len) / gpu.peak_flops_for(case.job.precision)
        key = f"{gpu.family}/{precision}"
        if key not in best or mfu > best[key]["mfu"]:
            best[key] = {"mfu": round(mfu, 4), "run_id": case.run_id, "source": case.source}
    return dict(sorted(best.items()))


def check_mfu(family: str, precision: str, predicted_mfu: float,
              table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The plausibility verdict of one predicted MFU."""
    key = f"{family}/{'bf16' if precision == 'fp16' else precision}"
    ref = table.get(key)
    if ref is None:
        return {"group": key, "predicted_mfu": round(predicted_mfu, 4), "best_measured_mfu": None,
                "flagged": False, "note": "no measured run for this GPU family and precision"}
    excess = predicted_mfu - ref["mfu"]
    return {"group": key, "predicted_mfu": round(predicted_mfu, 4), "best_measured_mfu": ref["mfu"],
            "best_measured_run": ref["run_id"], "excess_points": round(100 * excess, 2),
            "flagged": excess > MAX_EXCESS_MFU}


def load_table(path: Path) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text())["best_measured_mfu"]


def main(runs: Path) -> int:
    """Rebuild the table from the runs CSV ``runs`` (``python -m configurator.plausibility --runs RUNS.csv``)."""
    out = Path(__file__).resolve().parent.parent / "benchmarks" / "measured_mfu.json"
    data = {"about": "Best measured MFU per GPU family and precision in the runs CSV (configurator/"
                     "plausibility.py); bench flags top plans more than 5 points above it.",
            "runs": str(runs), "runs_sha256": hashlib.sha256(runs.read_bytes()).hexdigest(),
            "best_measured_mfu": measured_mfu_table(runs)}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out)
    print(json.dumps(data["best_measured_mfu"], indent=1))
    return 0


if __name__ == "__main__":
    from configurator.errors import run_tool

    raise SystemExit(run_tool(main, sys.argv[1:], "plausibility"))
