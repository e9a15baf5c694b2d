"""The measured anchor of a ``plan``: what top teams measured on the very job the user asks about.

Users cannot check a predicted throughput themselves, and the search returns the plan the model gets most
wrong, so a top plan predicted far above what anyone measured on the same job is a bug until a mechanism
the data supports explains it. ``plan`` therefore looks the job up among the published runs and prints one
line: the best measured throughput of that job (run id, its plan, source), the ratio of the top plan's
predicted tokens/s/GPU to it, and whether that ratio lies beyond the throughput error band.

A run is the same job when it trains the same model shape (the architecture columns of the runs CSV:
layers, hidden, FFN, heads, KV heads, vocabulary, MLP and attention kinds, experts, top-k, expert FFN,
shared experts; never the model's name), on the same GPU type, at the same sequence length and precision
(fp16 counts as bf16: the same tensor-core rate on every GPU the presets hold). GPU count and global batch
should be equal; where no run has both, the nearest run is reported and the line says how far it is.

A run at another scale judges the claim only within reach (``REACH_GPU_RATIO``, ``batch_per_gpu_allowance``):
per-GPU throughput legitimately changes with scale, so a far run neither supports nor refutes a prediction.
The nearest run within reach anchors the claim; where none is, the nearest run is printed as context, with
no flag, and the line says it is too far to judge the claim.

The flag: the error band (``uncertainty.py``) says the top plan's measured throughput would lie within
p10-p90 of the prediction. When even its p10 is above the best measured throughput of the job -- the
ratio above ``predicted / p10``, the band's upper edge of predicted over measured -- the model's error
cannot explain the gain, and no measured run supports it: the line says "unproven". A run within reach at a
smaller batch per GPU than the job's widens that edge by the gain the larger batch can buy
(``batch_per_gpu_allowance``).

Where the job is measured exactly (same GPU count and global batch), the measured run's own plan is
modelled as it ran (its recipe's plan and job flags, its system, one ``estimate_step``), so the user sees
whether the model gets the measured plan right.

The runs CSV lives outside the repository (``../shared/data/published_runs.csv``), so the lookup table is
derived from it once and shipped as ``profiles/measured_jobs.json``; regenerate it with
``python -m configurator.anchor --runs ../shared/data/published_runs.csv``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from configurator.cost.constants import CostConstants
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec

TABLE_NAME = "measured_jobs.json"

SHAPE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_kv_heads",
                "vocab_size", "mlp", "attention", "num_experts", "moe_topk", "moe_ffn_hidden_size",
                "num_shared_experts")
"""The ``ModelSpec`` fields the runs CSV states (its ``layers .. moe_shared_experts`` columns): what makes
two models the same shape for a throughput comparison."""

VOCAB_PADDING = 128 * 8
"""Vocabularies compare padded to a multiple of 1,024: Megatron pads the embedding table to a multiple of
``--make-vocab-size-divisible-by`` (128) x the tensor-parallel size (``_vocab_size_with_padding``, TP at
most 8 within a node), and sources list either the tokenizer's size or the padded one (GPT-3's 50,257 is
51,200 in the Megatron rows)."""

REACH_GPU_RATIO = 2.0
"""A run at another GPU count judges the claim only within one doubling of the job's GPU count (either way).
At an equal batch per GPU, the GPU count changes per-GPU throughput through what it does to the plan: the
data-parallel degree ``d`` at a given model-parallel layout sets the training state per GPU (Megatron's
distributed optimizer: 6 + 12/``d`` bytes per parameter with bf16 weights and fp32 gradients, its
``docs/source/api-guide/dist_optimizer.md``), hence which recompute, sharding and TP/PP degrees fit, and the
gradient reduction (``2(d-1)/d`` of the gradient bytes per GPU) and the nodes the groups span. One doubling
changes that state by at most 1.5x (18 -> 12 bytes, ``d`` 1 -> 2); sixteen times the GPUs is a plan of another
kind: GPT-3 175B on 64 A100 (r013) ran DP1 at TP8 x PP8 with recompute, 175e9 x 18 bytes / 64 = 49 GB of state
per GPU, where 1,024 GPUs at that layout shard the optimizer 16 ways (175e9 x 6.75 / 64 = 18 GB). Where the plan
stays the same, the published weak-scaling sweeps at a fixed batch per GPU are flat, within 1% per doubling and
over 8x (GPT-3 175B at 2 sequences per GPU on H100: 487.2 on 256 GPUs, 484.6 on 1,024, 482.4 on 2,048,
r178/r180/r181; Llama 3 8B at 16 per GPU: 10,682 on 8 H100 to 10,630 on 64, r143-r146): the reach is bounded by
the plan a GPU count allows, not by those."""

RECIPE_JOB_FIELDS = ("moe_routing", "compiled", "cuda_graphs", "fused_expert_mlp", "fp8_attention",
                     "flex_dispatcher_sms")
"""The ``JobSpec`` fields a published run's recipe sets (runs.py) beyond seq, batch and precision: needed to
model the measured run as it ran."""


def shape_of(model: ModelSpec) -> dict[str, Any]:
    """The model's architecture as the runs CSV states it (``SHAPE_FIELDS``), the vocabulary padded
    (``VOCAB_PADDING``). An MoE model's dense FFN width is left out: the sources disagree on what
    ``ffn_hidden`` means for one (Megatron-Bridge's Qwen3-30B-A3B rows list the expert width, 768, where the
    model's config has a dense 6144 no layer uses); the expert width, its own column, is kept."""
    shape = {name: getattr(model, name) for name in SHAPE_FIELDS}
    shape["vocab_size"] = -(-model.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
    if model.num_experts:
        shape["ffn_hidden_size"] = None
    return shape


def same_precision(precision: str) -> str:
    """fp16 and bf16 run at the same tensor-core rate on every preset GPU: one precision for matching."""
    return "bf16" if precision == "fp16" else precision


def measured_jobs_table(runs: Path) -> list[dict[str, Any]]:
    """Every run of the CSV with a measured throughput whose job, model and plan build, best first within
    each exact job (shape, GPU, seq, precision, GPU count, global batch); only the best run of a job is kept.
    The plan is the one ``validate`` models (unstated recompute resolved as the least that fits)."""
    from configurator.runs import read_runs
    from configurator.validate import Prediction, resolve_case

    best: dict[str, dict[str, Any]] = {}
    for case in read_runs(runs):
        if case.error or case.model is None or case.cluster is None or case.job is None or case.plan is None:
            continue
        tps = Prediction(case=case, memory=None).measured_tokens_per_s_per_gpu
        if not tps or case.oom:
            continue
        resolved, memory = resolve_case(case)
        assert resolved.plan is not None and resolved.job is not None
        job = resolved.job
        entry = {"run_id": case.run_id, "source": case.source, "model": case.row.get("model", ""),
                 "published_plan": published_plan(case.row),
                 "shape": shape_of(case.model), "gpu": case.cluster.gpu.key, "system": case.row.get("system", ""),
                 "num_gpus": case.cluster.num_gpus, "global_batch": job.global_batch, "seq_len": job.seq_len,
                 "precision": job.precision, "measured_tokens_per_s_per_gpu": round(tps, 1),
                 "plan": resolved.plan.as_dict(), "plan_text": resolved.plan.describe(), "runtime": resolved.runtime,
                 "job": {f: (list(getattr(job, f)) if isinstance(getattr(job, f), tuple) else getattr(job, f))
                         for f in RECIPE_JOB_FIELDS}}
        key = json.dumps([entry["shape"], entry["gpu"], entry["seq_len"], same_precision(job.precision),
                          entry["num_gpus"], entry["global_batch"]], sort_keys=True)
        if key not in best or tps > best[key]["measured_tokens_per_s_per_gpu"]:
            best[key] = entry
    return sorted(best.values(), key=lambda e: e["run_id"])


def published_plan(row: dict[str, str]) -> str:
    """The plan as the source lists it (the CSV's degree columns), e.g. ``TP1 PP2 VPP12 EP8 mb1``: what a
    reader can find in the source. The modelled plan can differ (runs.py: a release's shipped config, an
    unstated recompute resolved), and is given beside it."""
    parts = [f"TP{row.get('tp') or 1}", f"PP{row.get('pp') or 1}"]
    parts += [f"{name.upper()}{row[name]}" for name in ("vpp", "cp", "ep")
              if (row.get(name) or "1").strip() not in ("", "1")]
    if (row.get("micro_batch") or "").strip():
        parts.append(f"mb{row['micro_batch'].strip()}")
    return " ".join(parts)


def table_path() -> Path:
    from configurator.profiles import profiles_dir

    return profiles_dir() / TABLE_NAME


def load_measured_jobs(path: Path | None = None) -> list[dict[str, Any]]:
    """The shipped table's rows; none when the file is absent (a profiles directory of the user's own)."""
    from configurator.errors import InputError
    from configurator.safe_files import load_json

    path = path or table_path()
    if not path.is_file():
        return []
    data = load_json(path, "measured_jobs")
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise InputError("measured_jobs", str(path),
                         "has no 'jobs' list (regenerate it: python -m configurator.anchor --runs RUNS.csv)")
    return list(data["jobs"])


@dataclass(frozen=True, kw_only=True, slots=True)
class Match:
    """The measured run that anchors a job, and how near its job is to the one asked about."""

    row: dict[str, Any]
    exact: bool
    """Same GPU count and global batch: the very job."""
    distance: float
    """``|log2(GPUs ratio)| + |log2(global batch ratio)|``: 0 for the very job."""
    gpu_ratio: float
    """The larger GPU count over the smaller (the run's and the job's): 1 for the very job."""
    batch_per_gpu_ratio: float
    """The job's global batch per GPU over the run's: above 1 when the job gives each GPU more sequences."""

    @property
    def judges(self) -> bool:
        """Near enough to support or refute the claim: GPU counts within ``REACH_GPU_RATIO``."""
        return self.gpu_ratio <= REACH_GPU_RATIO

    @property
    def allowance(self) -> float:
        """``batch_per_gpu_allowance`` for this run."""
        return batch_per_gpu_allowance(self.batch_per_gpu_ratio)


def batch_per_gpu_allowance(batch_per_gpu_ratio: float) -> float:
    """How much faster per GPU the job may run than a run at a smaller batch per GPU, ``r`` = the job's batch per
    GPU over the run's: at most ``r`` (1 when the job's batch is not larger). At one plan the step is ``m`` x
    ``t`` + ``c`` for ``m`` micro-batches per data-parallel rank, ``t`` a micro-batch's time and ``c`` what the
    step pays once whatever ``m`` is (the pipeline fill and drain, the gradient reduction, the optimizer step);
    per-GPU throughput ``m / (m t + c)`` grows with ``m`` but by at most ``r`` when ``m`` grows ``r``-fold (all
    of ``c`` amortized), and the memory does not grow (1F1B keeps at most ``pp`` micro-batches in flight). So
    any plan of the job runs the run's job, with ``1/r`` of its micro-batches, at least ``1/r`` as fast, and a
    job at a smaller batch per GPU than the run's runs no faster than the run's job can: no allowance."""
    return max(1.0, batch_per_gpu_ratio)


def find_measured(rows: list[dict[str, Any]], model: ModelSpec, gpu_key: str, job: JobSpec,
                  num_gpus: int) -> Match | None:
    """The best measured run of the same job, or where none has the same GPU count and global batch, the
    best run of the nearest within reach (``Match.judges``), or where none is within reach, of the nearest
    (shape, GPU, seq and precision always equal); None if no run matches."""
    shape = shape_of(model)
    precision = same_precision(job.precision)
    same = [r for r in rows if r["shape"] == shape and r["gpu"] == gpu_key and r["seq_len"] == job.seq_len
            and same_precision(r["precision"]) == precision]
    if not same:
        return None

    def match(r: dict[str, Any]) -> Match:
        d = abs(math.log2(r["num_gpus"] / num_gpus)) + abs(math.log2(r["global_batch"] / job.global_batch))
        return Match(row=r, exact=d == 0.0, distance=d,
                     gpu_ratio=max(r["num_gpus"], num_gpus) / min(r["num_gpus"], num_gpus),
                     batch_per_gpu_ratio=(job.global_batch / num_gpus) / (r["global_batch"] / r["num_gpus"]))

    return min((match(r) for r in same),
               key=lambda m: (not m.judges, m.distance, -m.row["measured_tokens_per_s_per_gpu"], m.row["run_id"]))


def predict_measured(model: ModelSpec, match: Match, constants: CostConstants | None) -> float | None:
    """The model's tokens/s/GPU for the measured run's plan as it ran (its system, recipe job flags and
    runtime): one ``estimate_step``. None when the plan is not legal for this model (a preset differing in
    what the CSV does not state, e.g. its dense first layers) or its system is not a preset."""
    from configurator.cost.step import estimate_step
    from configurator.errors import InputError
    from configurator.profiles import load_cluster
    from configurator.specs.plan import plan_from_dict, plan_violations

    row = match.row
    try:
        cluster = load_cluster(row["system"], num_gpus=row["num_gpus"])
        flags = {f: (tuple(v) if isinstance(v, list) else v) for f, v in row["job"].items()}
        job = replace(JobSpec(global_batch=row["global_batch"], seq_len=row["seq_len"], precision=row["precision"]),
                      **flags)
        plan = plan_from_dict(row["plan"])
    except (InputError, ValueError, TypeError, KeyError):
        return None
    if plan_violations(model, job, plan, cluster.num_gpus):
        return None
    return estimate_step(model, cluster, job, plan, runtime=row["runtime"], constants=constants).tokens_per_s_per_gpu


def measured_job(model: ModelSpec, cluster: Any, job: JobSpec, top: Any, constants: CostConstants | None = None,
                 rows: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """``plan``'s ``measured_job`` object for its top plan ``top`` (an evaluated plan: ``plan``, ``step``,
    ``memory``), or None when no published run has the same job (module docstring). ``line`` is what
    ``plan`` prints."""
    from configurator.uncertainty import band_for

    match = find_measured(load_measured_jobs() if rows is None else rows, model, cluster.gpu.key, job,
                          cluster.num_gpus)
    if match is None:
        return None
    row = match.row
    measured = float(row["measured_tokens_per_s_per_gpu"])
    predicted = top.step.tokens_per_s_per_gpu
    band = band_for(model, cluster, job, top.plan, top.memory.runtime, predicted, top.memory.peak_bytes,
                    top.memory.capacity_bytes)
    upper = predicted / band.tokens_per_s_per_gpu_p10
    ratio = predicted / measured
    allowed = upper * match.allowance
    modelled = predict_measured(model, match, constants) if match.exact else None
    out = {"run_id": row["run_id"], "source": row["source"], "model": row["model"],
           "published_plan": row["published_plan"], "modelled_plan": row["plan_text"],
           "system": row["system"], "num_gpus": row["num_gpus"], "global_batch": row["global_batch"],
           "seq_len": row["seq_len"], "precision": row["precision"], "exact": match.exact,
           "measured_tokens_per_s_per_gpu": measured, "top_plan_tokens_per_s_per_gpu": round(predicted, 1),
           "ratio": round(ratio, 3), "band_upper_ratio": round(upper, 3), "beyond_band": ratio > upper,
           "measured_plan_predicted_tokens_per_s_per_gpu": None if modelled is None else round(modelled, 1),
           "recipe_differences": recipe_differences(row["job"], job),
           "gpu_ratio": round(match.gpu_ratio, 3), "batch_per_gpu_ratio": round(match.batch_per_gpu_ratio, 3),
           "judges_claim": match.judges, "allowed_ratio": round(allowed, 3),
           "unproven": match.judges and ratio > allowed}
    out["line"] = anchor_line(out, cluster.num_gpus, job.global_batch)
    return out


def recipe_differences(run_job: dict[str, Any], job: JobSpec) -> dict[str, Any]:
    """The recipe's job flags (``RECIPE_JOB_FIELDS``) where the measured run differs from the job asked about,
    as the run had them: e.g. NVIDIA's MoE benchmarks force-balance the router and capture CUDA graphs, which
    a learned-routing job without graphs does not get, so its plans are modelled slower than the run."""
    out = {}
    for name in RECIPE_JOB_FIELDS:
        ran = run_job[name]
        if (tuple(ran) if isinstance(ran, list) else ran) != getattr(job, name):
            out[name] = ran
    return out


def measured_job_for(ctx: Any, ranked: list[Any], constants: CostConstants | None = None, *,
                     objective: str = "p25", oom_risk: float = 0.05) -> dict[str, Any] | None:
    """``measured_job`` for a search's plans, against the risk-aware leader ``plan`` names (the service's
    answer); None when nothing was found or no published run has the job."""
    from configurator.ranking import rank_plans

    if not ranked:
        return None
    leader = rank_plans(ctx.model, ctx.cluster, ctx.job, ranked, objective=objective, oom_risk=oom_risk)[0].evaluated
    return measured_job(ctx.model, ctx.cluster, ctx.job, leader, constants)


def anchor_line(m: dict[str, Any], num_gpus: int, global_batch: int) -> str:
    """The one line ``plan`` prints for a ``measured_job`` object."""
    where = "this job" if m["exact"] else (f"the nearest job, {m['num_gpus']:,} GPUs and global batch "
                                           f"{m['global_batch']:,} (this one: {num_gpus:,}, {global_batch:,})")
    differs = m["recipe_differences"]
    recipe = ("; its recipe, unlike this job: " + ", ".join(
        f"{f}={'+'.join(v) if isinstance(v, list) else v}" for f, v in differs.items())) if differs else ""
    line = (f"measured on {where}: {m['measured_tokens_per_s_per_gpu']:,.0f} tok/s/GPU ({m['run_id']}, "
            f"{m['published_plan']}, {m['system']}, {m['source']}{recipe}); the top plan's "
            f"{m['top_plan_tokens_per_s_per_gpu']:,.0f} is {m['ratio']:.2f}x it")
    upper = f"x{m['band_upper_ratio']:.2f}"
    allowed = (f"x{m['allowed_ratio']:.2f} with the gain this job's {m['batch_per_gpu_ratio']:.2f}x larger batch "
               f"per GPU allows")
    if not m["judges_claim"]:
        line += (f"; too far from this job to judge the claim: {m['gpu_ratio']:.3g}x apart in GPU count (a run "
                 f"judges it within {REACH_GPU_RATIO:.0f}x: the GPU count changes which plans fit), shown as "
                 f"context only")
    elif m["unproven"]:
        line += (f", beyond the error band ({upper} at most"
                 f"{', ' + allowed if m['allowed_ratio'] > m['band_upper_ratio'] else ''}): unproven - no measured "
                 f"run supports a gain this large")
    elif m["ratio"] <= 1.0:
        line += ", no gain over it claimed"
    elif m["beyond_band"]:
        line += f", beyond the error band ({upper}) but within {allowed}"
    else:
        line += f", within the error band (up to {upper})"
    modelled = m["measured_plan_predicted_tokens_per_s_per_gpu"]
    if modelled is not None:
        err = modelled / m["measured_tokens_per_s_per_gpu"] - 1
        line += (f"; the model predicts {modelled:,.0f} for {m['run_id']} as it ran ({m['modelled_plan']}): "
                 f"{100 * err:+.0f}% vs measured, in-sample: the constants were fitted to the published runs")
    return line


def main(runs: Path) -> int:
    """Rebuild the table from the runs CSV ``runs`` (``python -m configurator.anchor --runs RUNS.csv``)."""
    out = Path(__file__).resolve().parent.parent / "profiles" / TABLE_NAME
    data = {"about": "Best measured throughput per published job (model shape, GPU, seq, precision, GPU count, "
                     "global batch) in the runs CSV, with the run's resolved plan (configurator/anchor.py); plan "
                     "prints its top plan's prediction against it.",
            "runs": str(runs), "runs_sha256": hashlib.sha256(runs.read_bytes()).hexdigest(),
            "jobs": measured_jobs_table(runs)}
    tmp = out.with_name(out.name + ".tmp")
    # one line per job: small diffs when the CSV changes
    head = json.dumps({k: v for k, v in data.items() if k != "jobs"}, indent=1)[:-2]
    tmp.write_text(head + ',\n "jobs": [\n' + ",\n".join(json.dumps(j) for j in data["jobs"]) + "\n ]\n}\n")
    tmp.replace(out)
    print(f"{len(data['jobs'])} measured jobs -> {out}")
    return 0


if __name__ == "__main__":
    from configurator.errors import run_tool

    raise SystemExit(run_tool(main, sys.argv[1:], "anchor"))
