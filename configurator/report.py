"""``configurator validate --report DIR``: a Markdown page and PNG plots people can read.

Writes ``DIR/validation.md`` (summary, error per source, per GPU, per model family, per parallelism
feature, the worst rows with their reasons, the calibration's in-sample and cross-validated errors),
``DIR/throughput.png`` and ``DIR/memory.png`` (predicted vs measured, log-log, coloured by source),
``DIR/error_by_group.png`` and ``DIR/summary.json`` (the ``validate --json`` summary, which the test
suite uses as the committed baseline: CI fails when the median throughput error grows by more than
one point over it). matplotlib is an optional extra (``pip install -e '.[report]'``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from configurator.calibrate import source_group
from configurator.errors import InputError
from configurator.validate import Prediction, ValidationSummary

REPORT_FILES = ("validation.md", "throughput.png", "memory.png", "error_by_group.png", "summary.json")


def _family(p: Prediction) -> str:
    model = p.case.model
    if model is None:
        return "?"
    if model.attention == "mla":
        return "MoE (MLA)"
    if model.is_moe:
        return "MoE"
    return "dense GPT (GELU)" if model.mlp == "gelu" else "dense Llama-style"


def _features(p: Prediction) -> list[str]:
    plan = p.case.plan
    if plan is None:
        return []
    out = []
    if plan.tp > 1:
        out.append("TP")
    if plan.pp > 1:
        out.append("PP interleaved" if plan.vpp > 1 else "PP 1F1B")
    if plan.cp > 1:
        out.append("CP")
    if plan.ep > 1:
        out.append("EP")
    if plan.sharding == "zero3":
        out.append("ZeRO-3/FSDP")
    if plan.recompute == "full":
        out.append("full recompute")
    if p.case.job is not None and p.case.job.precision in ("fp8", "fp4"):
        out.append(p.case.job.precision.upper())
    if not out:
        out.append("data parallel only")
    return out


def _group_table(title: str, groups: dict[str, list[float]]) -> list[str]:
    lines = [f"### {title}", "", "| group | rows | median abs error % | median signed error % |", "|---|---:|---:|---:|"]
    for name, errs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"| {name} | {len(errs)} | {statistics.median(abs(e) for e in errs):.1f} | "
                     f"{statistics.median(errs):+.1f} |")
    return lines + [""]


def _plots(predictions: list[Prediction], out: Path, groups: dict[str, dict[str, list[float]]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("report", str(out), "needs matplotlib: pip install -e '.[report]'") from None
    sources = sorted({source_group(p.case.source) for p in predictions})
    cmap = plt.get_cmap("tab10")
    colour = {s: cmap(i % 10) for i, s in enumerate(sources)}
    for kind, fname in (("throughput", "throughput.png"), ("memory", "memory.png")):
        fig, ax = plt.subplots(figsize=(7.5, 6.5))
        lo, hi = float("inf"), 0.0
        for s in sources:
            xs, ys = [], []
            for p in predictions:
                if source_group(p.case.source) != s:
                    continue
                if kind == "throughput":
                    measured = p.measured_tokens_per_s_per_gpu
                    predicted = p.step.tokens_per_s_per_gpu if p.step else None
                else:
                    measured = p.case.measured("measured_mem_gib")
                    mem = p.mem_as_measured_bytes
                    predicted = mem / 2**30 if mem is not None else None
                if measured and predicted:
                    xs.append(measured)
                    ys.append(predicted)
            if xs:
                ax.scatter(xs, ys, s=16, color=colour[s], label=f"{s} ({len(xs)})", alpha=0.85)
                lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
        if hi > 0:
            ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
            ax.plot([lo, hi], [lo * 1.1, hi * 1.1], color="grey", lw=0.6, ls="--")
            ax.plot([lo, hi], [lo / 1.1, hi / 1.1], color="grey", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        unit = "tokens/s per GPU" if kind == "throughput" else "GiB per GPU"
        ax.set_xlabel(f"measured {unit}")
        ax.set_ylabel(f"predicted {unit}")
        ax.set_title(f"{kind}: predicted vs measured (dashed: +-10%)")
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    for ax, (title, table) in zip(axes, groups.items()):
        names = sorted(table, key=lambda k: -len(table[k]))
        med = [statistics.median(abs(e) for e in table[n]) for n in names]
        ax.barh(range(len(names)), med, color="tab:blue")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([f"{n} ({len(table[n])})" for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(10, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("median abs throughput error %")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / "error_by_group.png", dpi=110)
    plt.close(fig)


def write_report(predictions: list[Prediction], summary: ValidationSummary, out: Path, *, runs: Path,
                 calibration: dict[str, Any] | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with_err = [p for p in predictions if p.throughput_error_pct is not None]
    by_gpu: dict[str, list[float]] = {}
    by_family: dict[str, list[float]] = {}
    by_feature: dict[str, list[float]] = {}
    by_source: dict[str, list[float]] = {}
    for p in with_err:
        e = p.throughput_error_pct
        assert e is not None and p.case.cluster is not None
        by_gpu.setdefault(p.case.cluster.gpu.key, []).append(e)
        by_family.setdefault(_family(p), []).append(e)
        by_source.setdefault(p.case.source, []).append(e)
        for f in _features(p):
            by_feature.setdefault(f, []).append(e)
    groups = {"by GPU": by_gpu, "by model family": by_family, "by parallelism feature": by_feature}
    _plots(predictions, out, groups)
    t = summary.throughput.as_dict()
    d = summary.as_dict()
    lines = [
        "# Validation against published training runs",
        "",
        f"Generated by `configurator validate --runs {runs} --report {out}`; rerun that command to "
        "regenerate this page, the plots and `summary.json` (the CI baseline: the test suite fails when the "
        "median throughput error grows by more than one point over it).",
        "",
        "## Summary",
        "",
        f"- Rows: {summary.rows}; modelled {summary.predicted} (the rest carry their reason in the `error` column "
        "of `validate --out`).",
        f"- **Throughput** (tokens/s per GPU): {t['predicted_rows']} of {t['measured_rows']} measured rows predicted; "
        f"median absolute error **{t['median_abs_error_pct']}%**, 90th percentile {t['p90_abs_error_pct']}%, "
        f"median signed error {t['median_error_pct']:+}%.",
        f"- **Memory**: {d['memory']['rows']} rows with a measurement; median absolute error "
        f"{d['memory']['median_abs_error_pct']}%, 90th percentile {d['memory']['p90_abs_error_pct']}%. "
        f"Fit: {d['fit']['oom_predicted_not_fit']}/{d['fit']['oom_rows']} OOM rows predicted not to fit, "
        f"{d['fit']['ran_predicted_fit']}/{d['fit']['ran_rows']} rows that ran predicted to fit.",
        f"- **Sweeps** (same source, model, system, sequence length and precision; >= 3 plans; measured spread "
        f"> 10%): {len(t['sweeps'])}; Spearman below 0.9 in {t['sweeps_below_0_9']}.",
        f"- **Within-sweep pairs** (rows differing only in the plan, measured > 5% apart): "
        f"{t['pairs_over_5pct']['ordered_right']} of {t['pairs_over_5pct']['pairs']} ordered right"
        f" ({100 * (t['pairs_over_5pct']['share'] or 0):.1f}%).",
        "",
    ]
    if calibration:
        fit = calibration.get("fit", {})
        ins, cv = fit.get("in_sample"), fit.get("cross_validated")
        lines += ["## Calibration (`profiles/calibration.json`)", ""]
        if ins:
            lines.append(f"- In-sample ({ins['rows']} rows): median abs error {ins['median_abs_error_pct']}%, "
                         f"p90 {ins['p90_abs_error_pct']}%.")
        if ins and "pairs" in ins:
            lines.append(f"- In-sample within-sweep pairs > 5% apart ordered right: {ins['pairs_right']} of "
                         f"{ins['pairs']}; MoE rows: median {ins.get('moe', {}).get('median_abs_error_pct')}%, "
                         f"p90 {ins.get('moe', {}).get('p90_abs_error_pct')}%.")
        if cv:
            lines.append(f"- Cross-validated ({cv['method']}): median abs error {cv['median_abs_error_pct']}%, "
                         f"p90 {cv['p90_abs_error_pct']}%.")
            if "pairs" in cv:
                lines.append(f"- Cross-validated within-sweep pairs ordered right: {cv['pairs_right']} of "
                             f"{cv['pairs']}; MoE rows: median {cv.get('moe', {}).get('median_abs_error_pct')}%, "
                             f"p90 {cv.get('moe', {}).get('p90_abs_error_pct')}%.")
            lines += ["", "| left-out group | rows | median abs error % | p90 % | median signed % |",
                      "|---|---:|---:|---:|---:|"]
            for g in cv.get("by_group", []):
                lines.append(f"| {g['group']} | {g['rows']} | {g['median_abs_error_pct']} | {g['p90_abs_error_pct']} | "
                             f"{g['median_error_pct']:+} |")
        lines.append("")
    from configurator.uncertainty import coverage_markdown

    lines += coverage_markdown()
    lines += ["## Plots", "", "![throughput](throughput.png)", "", "![memory](memory.png)", "",
              "![errors by group](error_by_group.png)", "", "## Throughput error by group", ""]
    lines += _group_table("By source", by_source)
    for title, table in groups.items():
        lines += _group_table(title.capitalize(), table)
    lines += ["## Sweeps (rank order of plans)", "",
              "| source | model | rows | Spearman | concordance of pairs > 10% apart |", "|---|---|---:|---:|---:|"]
    for s in t["sweeps"]:
        lines.append(f"| {s['source']} | {s['model']} | {len(s['rows'])} | {s['spearman']} | {s['concordance']} |")
    lines += ["", "## The 20 largest throughput errors", "",
              "| run | source | plan | measured | predicted | error % | assumptions |", "|---|---|---|---:|---:|---:|---|"]
    worst = sorted(with_err, key=lambda p: -abs(p.throughput_error_pct or 0))[:20]
    for p in worst:
        assert p.step is not None and p.case.plan is not None
        lines.append(f"| {p.case.run_id} | {p.case.source[:48]} | {p.case.plan.describe()} | "
                     f"{p.measured_tokens_per_s_per_gpu:.0f} | {p.step.tokens_per_s_per_gpu:.0f} | "
                     f"{p.throughput_error_pct:+.1f} | {'; '.join(p.case.assumptions)[:160]} |")
    lines.append("")
    lines += family_coverage_lines([p.case.cluster.gpu for p in with_err if p.case.cluster is not None])
    (out / "validation.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2) + "\n")


def family_coverage_lines(row_gpus: list[Any]) -> list[str]:
    """Which GPU architectures these rows measured, and which borrow another family's constants.

    Architectures without rows here have no evidence behind their throughput: their error band is wider
    than the figures above (profiles/gpu_families.json gives each fallback and why)."""
    from configurator.profiles import gpu_families, gpu_names, load_gpu

    rows: dict[str, int] = {}
    for gpu in row_gpus:
        arch = gpu.architecture or gpu.family
        rows[arch] = rows.get(arch, 0) + 1
    presets: dict[str, list[str]] = {}
    for key in gpu_names():
        gpu = load_gpu(key)
        presets.setdefault(gpu.architecture or gpu.family, []).append(key)
    lines = ["## GPU families: measured here or a fallback", "",
             "Constants are per family. Architectures with no rows below borrow a calibrated family's "
             "constants (`profiles/gpu_families.json`: the fallback and its reason): no measured run backs "
             "them, so read their predictions with a wider error band than this report's, or measure the GPU "
             "with `cluster_probes` (its GEMM curve and HBM copy bandwidth replace the borrowed efficiencies).",
             "", "| architecture | vendor | constants from | rows with a measured throughput | presets |",
             "|---|---|---|---:|---|"]
    for arch, entry in sorted(gpu_families().items(), key=lambda kv: (not kv[1]["measured_runs"], kv[0])):
        lines.append(f"| {arch} | {entry['vendor']} | {entry['constants_from']}"
                     f"{'' if entry['measured_runs'] else ' (fallback)'} | {rows.get(arch, 0)} | "
                     f"{', '.join(presets.get(arch, []))} |")
    lines.append("")
    return lines


__all__ = ["REPORT_FILES", "family_coverage_lines", "write_report"]
