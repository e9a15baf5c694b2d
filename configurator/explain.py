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
from configurator.cost.step import StepReport, _all_stage_times, _rates_for, evaluate, prepare
from configurator.cost.comm import LinkEfficiency
from configurator.memory import MemoryReport
from configurator.placement import Placement
from configurator.profiles import GIB
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan

FORWARD, BACKWARD, COMM, TAIL, OPTIM = "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#9c755f"
MEMORY_COLOURS = (("weights", "#4e79a7"), ("grads", "#f28e2b"), ("optimizer", "#e15759"),
                  ("activations", "#76b7b2"), ("overhead", "#bab0ac"))


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

    inputs = prepare(model, cluster, job, plan, placement, runtime=runtime)
    step = evaluate(inputs, constants)
    rates = _rates_for(inputs, constants)
    comm = inputs.comm.with_efficiency(LinkEfficiency(nvlink=constants["link.nvlink"],
                                                      scale_out=constants["link.scale_out"]))
    per_stage = _all_stage_times(inputs, rates, comm, constants)
    per_mb = constants["overhead.microbatch_s"] / plan.vpp
    fwd = [sum(f.values()) + per_mb / 3 for f, _, _ in per_stage]
    bwd = [sum(b.values()) + 2 * per_mb / 3 for _, b, _ in per_stage]
    shares = tuple(((sum(f.values()) - f["compute"]) / fwd[v] if fwd[v] else 0.0,
                    (sum(b.values()) - b["compute"]) / bwd[v] if bwd[v] else 0.0)
                   for v, (f, b, _) in enumerate(per_stage))
    sends = [comm.p2p_stage_s(r, inputs.p2p_bytes) for r in range(plan.pp)]
    result = simulate(pp=plan.pp, vpp=plan.vpp, num_microbatches=inputs.num_microbatches, forward_s=fwd,
                      backward_s=bwd, send_forward_s=sends, send_backward_s=sends, trace=True)
    return Timeline(ops=result.ops, comm_share=shares, makespan_s=result.makespan_s, step=step)


def svg(tl: Timeline, memory: MemoryReport, *, title: str, width: int = 1100) -> str:
    """The two-panel picture (module docstring) as an SVG document."""
    step = tl.step
    terms = dict(step.breakdown_s)
    tail = step.step_s - tl.makespan_s
    ranks = max((op[0] for op in tl.ops), default=0) + 1
    left, top, row_h = 90, 56, 22
    plot_w = width - left - 30
    scale = plot_w / step.step_s if step.step_s else 1.0
    height_tl = top + ranks * (row_h + 6) + 30
    mem_top = height_tl + 40
    stages = memory.stages
    bar_h = 16
    height = mem_top + 30 + len(stages) * (bar_h + 8) + 40
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
    for i in range(6):
        t = step.step_s * i / 5
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
    biggest = max([cap] + [s.total_bytes for s in stages])
    mscale = plot_w / biggest
    out.append(f'<text x="10" y="{mem_top}" font-size="13" font-weight="bold">Memory per GPU by pipeline stage '
               f'(capacity {cap / GIB:.1f} GiB)</text>')
    for i, s in enumerate(stages):
        y = mem_top + 14 + i * (bar_h + 8)
        out.append(f'<text x="10" y="{y + 12}">stage {s.stage}</text>')
        x = float(left)
        parts = {"weights": s.weights_bytes, "grads": s.grads_bytes, "optimizer": s.optimizer_bytes,
                 "activations": s.activations_bytes, "overhead": s.overhead_bytes}
        for name, colour in MEMORY_COLOURS:
            w = parts[name] * mscale
            out.append(f'<rect class="mem {name}" x="{x:.2f}" y="{y}" width="{w:.2f}" height="{bar_h}" fill="{colour}">'
                       f'<title>{name}: {parts[name] / GIB:.2f} GiB</title></rect>')
            x += w
        out.append(f'<text x="{x + 4:.1f}" y="{y + 12}">{s.total_bytes / GIB:.1f} GiB</text>')
    cap_x = left + cap * mscale
    last_y = mem_top + 14 + len(stages) * (bar_h + 8)
    out.append(f'<line class="capacity" x1="{cap_x:.1f}" y1="{mem_top + 8}" x2="{cap_x:.1f}" y2="{last_y}" '
               f'stroke="#d62728" stroke-width="2" stroke-dasharray="4 3"/>')
    lx = left
    for name, colour in MEMORY_COLOURS:
        out.append(f'<rect x="{lx}" y="{last_y + 8}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14}" y="{last_y + 17}">{name}</text>')
        lx += 14 + 7 * len(name) + 20
    out.append("</svg>")
    return "\n".join(out) + "\n"


__all__ = ["Timeline", "svg", "timeline"]
