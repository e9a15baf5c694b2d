"""``configurator explain``: where a plan's step goes, as text and as an SVG picture.

The SVG has two panels: the pipeline schedule as a timeline (one row per pipeline rank; forward and
backward operations per micro-batch, the communication each operation cannot hide drawn darker at its
end, idle gaps are the bubble; after the last operation the exposed data-parallel communication and the
optimizer step), and the memory of every pipeline stage against the GPU's capacity. It is the same
schedule the cost model simulates (``cost/schedule.py`` with ``trace=True``), so the picture and the
numbers agree. Plain SVG, no dependencies; the service page embeds the same markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from configurator.cost.constants import CostConstants
from configurator.cost.step import StepReport, operation_times, prepare
from configurator.memory import MemoryReport
from configurator.placement import Placement
from configurator.profiles import GIB
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan
from configurator.uncertainty import Band, risk_pct

FORWARD, BACKWARD, COMM, TAIL, OPTIM = "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#9c755f"
MEMORY_COLOURS = (("weights", "#4e79a7"), ("grads", "#f28e2b"), ("optimizer", "#e15759"),
                  ("activations", "#76b7b2"), ("overhead", "#bab0ac"), ("ep_buffers", "#edc948"))


@dataclass(frozen=True, kw_only=True, slots=True)
class Timeline:
    """The simulated step: operations per rank, and what follows them."""

    ops: tuple[tuple[int, int, int, int, float, float], ...]
    """(rank, is_backward, micro_batch, virtual_stage, start_s, end_s)."""
    comm_share: tuple[tuple[float, float], ...]
    """Per virtual stage: share of the forward and of the backward operation that is exposed communication."""
    makespan_s: float
    step: StepReport


def timeline(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan, constants: CostConstants,
             placement: Placement | None = None, runtime: str = "megatron") -> Timeline:
    from configurator.cost.schedule import simulate

    times = operation_times(prepare(model, cluster, job, plan, placement, runtime=runtime), constants)
    result = simulate(pp=plan.pp, vpp=plan.vpp, num_microbatches=times.num_microbatches,
                      forward_s=list(times.forward_s), backward_s=list(times.backward_s),
                      send_forward_s=list(times.send_s), send_backward_s=list(times.send_s), trace=True)
    step, shares = times.step, times.exposed_comm_share
    return Timeline(ops=result.ops, comm_share=shares, makespan_s=result.makespan_s, step=step)


def svg(tl: Timeline, memory: MemoryReport, *, title: str, width: int = 1100, band: Band | None = None) -> str:
    """The two-panel picture (module docstring) as an SVG document; with ``band`` (``uncertainty.Band``)
    the step time's and the peak memory's p10-p90 error bands are drawn as whiskers, with the OOM risk."""
    step = tl.step
    terms = dict(step.breakdown_s)
    tail = step.step_s - tl.makespan_s
    ranks = max((op[0] for op in tl.ops), default=0) + 1
    left, top, row_h = 90, 56, 22
    plot_w = width - left - 30
    # Step time at the throughput band's ends: the slow end (p10 throughput) may lie past the model's step.
    fast_s = step.step_s * band.tokens_per_s_per_gpu / band.tokens_per_s_per_gpu_p90 if band else step.step_s
    slow_s = step.step_s * band.tokens_per_s_per_gpu / band.tokens_per_s_per_gpu_p10 if band else step.step_s
    span_s = max(step.step_s, slow_s)
    scale = plot_w / span_s if span_s else 1.0
    height_tl = top + ranks * (row_h + 6) + 30 + (22 if band else 0)
    mem_top = height_tl + 40
    stages = memory.stages
    bar_h = 16
    height = mem_top + 30 + len(stages) * (bar_h + 8) + 40 + (20 if band else 0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<title>{escape(title)}</title>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
           f'<text x="10" y="38">step {step.step_s:.3f} s, {step.tokens_per_s_per_gpu:,.0f} tokens/s per GPU, '
           f'MFU {100 * step.mfu:.1f}%, bubble {100 * step.bubble_fraction:.1f}%, '
           f'{step.num_microbatches} micro-batches</text>']
    for r in range(ranks):
        y = top + r * (row_h + 6)
        out.append(f'<text x="10" y="{y + 15}">stage {r}</text>')
        out.append(f'<rect class="lane" x="{left}" y="{y}" width="{plot_w:.1f}" height="{row_h}" fill="#f4f4f4"/>')
    for rank, is_bwd, mb, v, start, end in tl.ops:
        y = top + rank * (row_h + 6)
        x0, w = left + start * scale, max((end - start) * scale, 0.3)
        share = tl.comm_share[v][is_bwd]
        colour = BACKWARD if is_bwd else FORWARD
        kind = "backward" if is_bwd else "forward"
        out.append(f'<rect class="op {kind}" x="{x0:.2f}" y="{y}" width="{w * (1 - share):.2f}" height="{row_h}" '
                   f'fill="{colour}"><title>{kind} micro-batch {mb}, virtual stage {v}: {end - start:.4f} s'
                   f'</title></rect>')
        if share > 0:
            out.append(f'<rect class="comm" x="{x0 + w * (1 - share):.2f}" y="{y}" width="{w * share:.2f}" '
                       f'height="{row_h}" fill="{COMM}"><title>exposed communication of that operation</title></rect>')
        if w > 14:
            out.append(f'<text x="{x0 + 2:.1f}" y="{y + 15}" fill="white">{mb}</text>')
    if tail > 0:
        dp_end = terms["dp_comm"]
        x = left + tl.makespan_s * scale
        for r in range(ranks):
            y = top + r * (row_h + 6)
            out.append(f'<rect class="tail" x="{x:.2f}" y="{y}" width="{tail * scale:.2f}" height="{row_h}" '
                       f'fill="{TAIL}" opacity="0.8"><title>after the pipeline: data-parallel communication, '
                       f'optimizer ({terms["optimizer"] + terms["offload"]:.4f} s), overhead; dp_comm total '
                       f'{dp_end:.4f} s</title></rect>')
    axis_y = top + ranks * (row_h + 6) + 4
    if band is not None:
        y = axis_y + 8
        x0, x1, xm = left + fast_s * scale, left + slow_s * scale, left + step.step_s * scale
        out.append(f'<g class="band step-band"><title>step time p10-p90 from the validation runs\' out-of-sample '
                   f'errors: {fast_s:.3f}-{slow_s:.3f} s ({band.tokens_per_s_per_gpu_p90:,.0f}-'
                   f'{band.tokens_per_s_per_gpu_p10:,.0f} tokens/s per GPU)</title>'
                   f'<line x1="{x0:.1f}" y1="{y}" x2="{x1:.1f}" y2="{y}" stroke="#333" stroke-width="2"/>'
                   f'<line x1="{x0:.1f}" y1="{y - 5}" x2="{x0:.1f}" y2="{y + 5}" stroke="#333" stroke-width="2"/>'
                   f'<line x1="{x1:.1f}" y1="{y - 5}" x2="{x1:.1f}" y2="{y + 5}" stroke="#333" stroke-width="2"/>'
                   f'<circle cx="{xm:.1f}" cy="{y}" r="3" fill="#333"/></g>')
        out.append(f'<text x="{x0 - 6:.1f}" y="{y + 4}" text-anchor="end">step p10-p90 {fast_s:.2f}-{slow_s:.2f} s '
                   f'({band.tokens_per_s_per_gpu_p10:,.0f}-{band.tokens_per_s_per_gpu_p90:,.0f} tokens/s per GPU)</text>')
        axis_y += 22
    for i in range(6):
        t = span_s * i / 5
        x = left + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 5}" stroke="#333"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 17}" text-anchor="middle">{t:.2f} s</text>')
    legend = ((FORWARD, "forward"), (BACKWARD, "backward (+recompute)"), (COMM, "exposed communication"),
              (TAIL, "DP communication, optimizer, overhead"))
    lx = left
    for colour, label in legend:
        out.append(f'<rect x="{lx}" y="{axis_y + 24}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14}" y="{axis_y + 33}">{label}</text>')
        lx += 14 + 7 * len(label) + 20
    # Memory panel.
    cap = memory.capacity_bytes
    biggest = max([cap] + [s.total_bytes for s in stages] + ([band.peak_gib_p90 * GIB] if band else []))
    mscale = (plot_w - 70) / biggest  # room for the total's label after the longest bar or whisker
    out.append(f'<text x="10" y="{mem_top}" font-size="13" font-weight="bold">Memory per GPU by pipeline stage '
               f'(capacity {cap / GIB:.1f} GiB)</text>')
    # (the flex dispatcher's buffers are drawn, and named in the legend, only where the plan has them)
    colours = [(n, c) for n, c in MEMORY_COLOURS if n != "ep_buffers" or memory.flex_buffers is not None]
    for i, s in enumerate(stages):
        y = mem_top + 14 + i * (bar_h + 8)
        out.append(f'<text x="10" y="{y + 12}">stage {s.stage}</text>')
        x = float(left)
        parts = {"weights": s.weights_bytes, "grads": s.grads_bytes, "optimizer": s.optimizer_bytes,
                 "activations": s.activations_bytes, "overhead": s.overhead_bytes, "ep_buffers": s.ep_buffer_bytes}
        for name, colour in colours:
            w = parts[name] * mscale
            out.append(f'<rect class="mem {name}" x="{x:.2f}" y="{y}" width="{w:.2f}" height="{bar_h}" fill="{colour}">'
                       f'<title>{name}: {parts[name] / GIB:.2f} GiB</title></rect>')
            x += w
        label_x = x if band is None or s.stage != memory.peak.stage else max(x, left + band.peak_gib_p90 * GIB * mscale)
        out.append(f'<text x="{label_x + 4:.1f}" y="{y + 12}">{s.total_bytes / GIB:.1f} GiB</text>')
    if band is not None:
        i = next(k for k, s in enumerate(stages) if s.stage == memory.peak.stage)
        y = mem_top + 14 + i * (bar_h + 8) + bar_h / 2
        x0, x1 = left + band.peak_gib_p10 * GIB * mscale, left + band.peak_gib_p90 * GIB * mscale
        out.append(f'<g class="band memory-band"><title>peak memory p10-p90 {band.peak_gib_p10:.1f}-'
                   f'{band.peak_gib_p90:.1f} GiB; OOM risk {risk_pct(band.oom_risk)}</title>'
                   f'<line x1="{x0:.1f}" y1="{y}" x2="{x1:.1f}" y2="{y}" stroke="#111" stroke-width="2"/>'
                   f'<line x1="{x0:.1f}" y1="{y - 6}" x2="{x0:.1f}" y2="{y + 6}" stroke="#111" stroke-width="2"/>'
                   f'<line x1="{x1:.1f}" y1="{y - 6}" x2="{x1:.1f}" y2="{y + 6}" stroke="#111" stroke-width="2"/></g>')
        out.append(f'<text x="10" y="{mem_top + 14 + len(stages) * (bar_h + 8) + 36}">peak p10-p90 '
                   f'{band.peak_gib_p10:.1f}-{band.peak_gib_p90:.1f} GiB, OOM risk {risk_pct(band.oom_risk)} '
                   f'(out-of-sample memory errors of the validation runs)</text>')
    cap_x = left + cap * mscale
    last_y = mem_top + 14 + len(stages) * (bar_h + 8)
    out.append(f'<line class="capacity" x1="{cap_x:.1f}" y1="{mem_top + 8}" x2="{cap_x:.1f}" y2="{last_y}" '
               f'stroke="#d62728" stroke-width="2" stroke-dasharray="4 3"/>')
    lx = left
    for name, colour in colours:
        out.append(f'<rect x="{lx}" y="{last_y + 8}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14}" y="{last_y + 17}">{name}</text>')
        lx += 14 + 7 * len(name) + 20
    out.append("</svg>")
    return "\n".join(out) + "\n"


__all__ = ["Timeline", "svg", "timeline"]
