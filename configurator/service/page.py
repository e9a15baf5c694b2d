"""The HTML page of a plan job (``GET /plans/{id}``): status, the top-k table, and the best plan drawn as
``configurator explain --svg`` draws it (pipeline timeline, memory per stage against capacity)."""

from __future__ import annotations

from html import escape
from typing import Any

from configurator.service.store import Job, Store


def _best_svg(job: Job, store: Store) -> str:
    from configurator.cost.constants import load_calibration
    from configurator.explain import svg, timeline
    from configurator.memory import estimate_memory
    from configurator.profiles import load_model
    from configurator.service.jobs import build_cluster
    from configurator.specs.job import JobSpec
    from configurator.specs.plan import plan_from_dict

    best = job.result["plans"][0]  # type: ignore[index]
    request = job.request
    found = store.get_cluster(request["cluster"], request.get("cluster_version"))
    model = load_model(request["model"])
    cluster = build_cluster(request, found[1] if found else None)
    spec = JobSpec(global_batch=request["global_batch"], seq_len=request["seq_len"],
                   precision=request.get("precision", "bf16"))
    plan = plan_from_dict(best["plan"])
    runtime = best["time"].get("runtime", "megatron")
    tl = timeline(model, cluster, spec, plan, load_calibration(), runtime=runtime)
    memory = estimate_memory(model, cluster, spec, plan, runtime=runtime)
    return svg(tl, memory, title=f"best plan: {plan.describe()}")


def render_page(job: Job, store: Store) -> str:
    r = job.request
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>plan {escape(job.id)}</title>"
            "<style>body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td.l,th.l{text-align:left}</style>"
            "</head><body>")
    parts = [head, f"<h1>{escape(r['model'])} on {escape(r['cluster'])}</h1>",
             f"<p id='status'>status: <b>{escape(job.status)}</b>, progress {100 * job.progress:.0f}%</p>"]
    if job.error:
        parts.append(f"<p id='error'>{escape(job.error)}</p>")
    if job.truncated:
        budget = ((job.result or {}).get("search") or {}).get("budget_s")
        within = f" of {budget:g} s" if isinstance(budget, (int, float)) else ""
        parts.append("<p id='truncated' style='background:#fff3cd;border:1px solid #e0b000;padding:8px'>"
                     f"<b>Search cut short</b>: it hit its time budget{escape(within)} before it covered every "
                     "candidate, so a better plan may exist. This answer is not cached: the same request runs the "
                     "search again.</p>")
    plans: list[dict[str, Any]] = (job.result or {}).get("plans", [])
    if plans:
        parts.append("<table id='plans'><tr><th>#</th><th class='l'>plan</th><th>tokens/s/GPU</th><th>MFU</th>"
                     "<th>peak GiB</th><th>step s</th><th class='l'>vs best</th></tr>")
        for i, p in enumerate(plans, 1):
            pl = p["plan"]
            desc = (f"TP{pl['tp']} PP{pl['pp']} VPP{pl['vpp']} CP{pl['cp']} DP{pl['dp']} EP{pl['ep']} "
                    f"mb{pl['micro_batch']} {pl['sharding']} rc={pl['recompute']} offload={pl['offload']:g}")
            parts.append(f"<tr><td>{i}</td><td class='l'>{escape(desc)}</td>"
                         f"<td>{p['time']['tokens_per_s_per_gpu']:,.0f}</td><td>{100 * p['time']['mfu']:.1f}%</td>"
                         f"<td>{p['memory']['peak_gib']:.1f}</td><td>{p['time']['step_s']:.3f}</td>"
                         f"<td class='l'>{escape(p.get('vs_best', ''))}</td></tr>")
        parts.append("</table><h2>The best plan's step</h2><div id='timeline'>")
        parts.append(_best_svg(job, store))
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = ["render_page"]
