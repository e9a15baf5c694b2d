"""The six practitioner jobs of issue 12: the search's top plan against a published plan, both modelled
alike (memory choices and communication knobs resolved the same way), and the mechanism that separates
them. Prints the README's markdown table.

    python benchmarks/practitioner_jobs.py [--budget 60] [--calibration FILE] [--only SUBSTRING]

``--calibration`` takes a refit's constants file (e.g. ``calibrate --out``) instead of
profiles/calibration.json; ``--only`` keeps the jobs whose title contains the text.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from configurator.bench import modelled_alike, reference_plan
from configurator.cost.constants import load_calibration
from configurator.cost.gap import gap_line, separating_terms
from configurator.profiles import load_cluster, load_model
from configurator.search.optimize import search
from configurator.margin import default_margin
from configurator.search.space import SearchContext
from configurator.specs.job import JobSpec

JOBS = [
    ("Qwen3-30B-A3B, 16 H100, fp8, GBS 1024", "qwen3-30b-a3b", "dgx-h100", 16, 4096, 1024, "fp8",
     {"tp": 1, "pp": 2, "vpp": 12, "ep": 8, "micro_batch": 2, "source": "Megatron-Bridge recipe (r141 family)"}),
    ("DeepSeek-V3, 2048 H800, fp8, GBS 15360", "deepseek-v3", "h800-ib", 2048, 4096, 15360, "fp8",
     # One layer on the last stage, which also runs the MTP module and two output heads + losses (about
     # three MoE layers' work; Megatron-Bridge's DeepSeek-V3 layouts give MTP and the loss their own
     # pipeline slot): 4 layers on every other stage (the first: 3 dense + 1 MoE + the embedding).
     {"tp": 1, "pp": 16, "ep": 64, "pipeline_layers": [4] * 15 + [1],
      "source": "DeepSeek-V3 report: PP16 EP64"}),
    ("Mixtral-8x22B, 256 H100, GBS 1024", "mixtral-8x22b", "dgx-h100", 256, 4096, 1024, "bf16",
     {"tp": 2, "pp": 4, "ep": 8, "source": "hand-tuned TP2 PP4 EP8"}),
    ("Llama-3-70B at 128K, 256 H100, GBS 32", "llama3-70b", "dgx-h100", 256, 131072, 32, "bf16",
     {"tp": 8, "pp": 4, "cp": 8, "source": "hand-tuned TP8 PP4 CP8 (long-context recipe shape)"}),
    ("Llama-3-70B, 64 H100, GBS 128", "llama3-70b", "dgx-h100", 64, 8192, 128, "bf16",
     {"tp": 4, "pp": 4, "vpp": 5, "cp": 2, "source": "DGX Cloud recipe (r153)"}),
    ("GPT-3 175B, 1024 A100, GBS 1536", "gpt3-175b", "dgx-a100", 1024, 2048, 1536, "fp16",
     {"tp": 8, "pp": 16, "vpp": 3, "source": "Narayanan et al. 2021"}),
]


def main(budget: float, calibration: Path | None = None, only: str = "") -> None:
    constants = load_calibration(calibration)
    print("| job | top plan (modelled tok/s/GPU, MFU) | published plan (modelled tok/s/GPU, MFU) | what separates them |")
    print("|---|---|---|---|")
    for title, model, cluster, gpus, seq, gbs, precision, ref in JOBS:
        if only.lower() not in title.lower():
            continue
        ctx = SearchContext(model=load_model(model), cluster=load_cluster(cluster, num_gpus=gpus),
                            job=JobSpec(global_batch=gbs, seq_len=seq, precision=precision),
                            memory_margin=default_margin())  # as `plan` keeps it
        t0 = time.perf_counter()
        result = search(ctx, top_k=1, constants=constants, time_budget_s=budget)
        top = result.ranked[0] if result.ranked else None
        published = modelled_alike(ctx, reference_plan(ctx, ref), constants)
        cells = [title]
        cells.append(f"{top.plan.describe()} ({top.step.tokens_per_s_per_gpu:,.0f}, {100 * top.step.mfu:.1f}%)"
                     if top else "none fits")
        if published:
            option, step = published
            cells.append(f"{ref['source']}: {option.plan.describe()} ({step.tokens_per_s_per_gpu:,.0f}, "
                         f"{100 * step.mfu:.1f}%)")
            if top:
                why = gap_line(top.step, step, best_plan=top.plan, other_plan=option.plan)
                if why is None:
                    terms = ", ".join(f"{k} {d:+.2f} s" for k, d in separating_terms(top.step, step))
                    why = f"within 15% ({100 * (top.step.tokens_per_s_per_gpu / step.tokens_per_s_per_gpu - 1):+.0f}%); largest terms: {terms}"
                cells.append(why)
            else:
                cells.append("-")
        else:
            cells += [f"{ref['source']}: does not fit or is illegal", "-"]
        print("| " + " | ".join(cells) + " |", flush=True)
        print(f"<!-- {title}: {time.perf_counter() - t0:.0f} s -->", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of search per job")
    parser.add_argument("--calibration", type=Path, default=None, help="constants file (default: the shipped fit)")
    parser.add_argument("--only", default="", help="run the jobs whose title contains this text")
    args = parser.parse_args()
    main(args.budget, args.calibration, args.only)
