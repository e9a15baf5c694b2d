"""MoE mechanisms beyond the per-layer work counts of ``work.py``.

* **Dropless load imbalance.** Each expert receives ``n`` token-expert pairs on average per
  micro-batch; its load varies with coefficient of variation ``cv_e`` (routing skew, calibrated as
  ``moe.expert_load_cv``) plus the sampling noise ``1/sqrt(n)``. An EP rank holds ``E/ep`` experts,
  whose sum varies with ``cv_rank = sqrt((cv_e^2 + 1/n) / (E/ep))``. All EP ranks meet at the
  combine all-to-all, so the layer waits for the busiest of ``ep`` ranks: ``1 + z(ep) * cv_rank``
  times the mean, with ``z(n)`` the expected maximum of ``n`` standard normals (Blom's
  ``Phi^-1((n - 0.375) / (n + 0.25))``: 0.59, 1.43, 2.34 for n = 2, 8, 64, against the exact 0.56,
  1.42, 2.34; the asymptotic ``sqrt(2 ln n)`` would say 1.18, 2.04, 2.88). With ep = 1 one rank holds every
  expert and there is nothing to wait for (factor 1). Routing with a capacity factor of 1.0 and
  inputs padded to capacity (``JobSpec.moe_routing == "capacity_padded"``: NeMo's token-drop
  callback, which DGX Cloud's v25.05 DeepSeek-V3 recipe turns on) gives every expert exactly the
  mean load, in its GEMMs and in the all-to-all's splits: factor 1 at any ep.
* **Bytes leaving the NVLink domain depend on the dispatcher.** Megatron's ``alltoall`` token
  dispatcher (what this tool emits: ``--moe-token-dispatcher-type alltoall``) permutes one row per
  (token, expert) pair and all-to-alls them, so ``k * (D-1)/D`` hidden vectors per token cross the
  scale-out network, node-limited routing or not. The ``flex`` dispatcher with DeepEP or HybridEP
  (Megatron-Bridge's performance recipes) sends a token once per destination *node* over the NIC and
  fans it out to the experts there over NVLink: with the ``k`` experts drawn evenly among ``E``
  experts on ``D`` domains, a token reaches ``(D-1) * (1 - C(E-E/D, k) / C(E, k))`` remote domains on
  average (hypergeometric: the chance that none of its ``k`` experts sits on a given domain).
* **Node-limited routing** (DeepSeek-V3: at most ``M = 4`` nodes per token) caps that at
  ``M * (D-1)/D`` remote nodes (the token's own node is among the ``M`` with chance ``M/D``) - with
  the flex dispatcher only: the alltoall dispatcher still sends ``k`` copies.
* **The all-to-all overlap needs a partner micro-batch.** Megatron-Core's EP A2A overlap
  (``--overlap-moe-expert-parallel-comm``) runs one micro-batch's forward beside another's backward
  (pipeline_parallel/combined_1f1b.py): a dispatch/combine hides under the other pass's attention and
  expert GEMMs. A pass with no partner hides nothing. Without pipelining the first micro-batch's forward
  runs alone and so does the last one's backward ("Phases 0: 1st microbatch forward ... Phases 4: 4th
  microbatch backward", ``combined_1f1b_schedule_for_no_pipelining``): ``(M - 1) / M`` of the passes are
  paired. Under the interleaved schedule (the only pipelined one the overlap runs with) a rank's warm-up
  forwards and cool-down backwards are unpaired: ``2 (p - r - 1) + (v - 1) g + 1`` of its ``M v`` chunk
  passes (schedules.py ``get_pp_rank_microbatches``: the interleaved warm-up plus the one extra forward the
  overlap schedules; ``g``, the micro-batch group per virtual stage, defaults to ``p``), taken here as the
  mean over the ``p`` ranks: ``(p - 1) + (v - 1) p + 1``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist
from typing import Any

from configurator.cost.constants import _cost_file
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan


@lru_cache(maxsize=64)
def expected_max_normal(n: int) -> float:
    """Expected maximum of ``n`` independent standard normals, by Blom's approximation (within 0.03 of
    the exact value for n >= 2; 0 for n = 1)."""
    if n <= 1:
        return 0.0
    return NormalDist().inv_cdf((n - 0.375) / (n + 0.25))


def busiest_rank_factor(model: ModelSpec, plan: Plan, pairs_per_expert: float, expert_cv: float) -> float:
    """Busiest EP rank's routed load / the mean rank's (module docstring)."""
    if plan.ep <= 1 or pairs_per_expert <= 0:
        return 1.0
    local = model.num_experts / plan.ep
    cv_rank = math.sqrt((expert_cv ** 2 + 1.0 / pairs_per_expert) / local)
    return 1.0 + expected_max_normal(plan.ep) * cv_rank


def expert_load_factor(model: ModelSpec, plan: Plan, job: JobSpec, pairs_per_expert: float,
                       constants: Any) -> float:
    """The MoE layer's pace / the mean EP rank's: 1 under capacity-padded routing (every expert gets
    exactly its capacity, the mean at factor 1.0), else the busiest rank's (``busiest_rank_factor``)."""
    if job.moe_routing == "capacity_padded":
        return 1.0
    return busiest_rank_factor(model, plan, pairs_per_expert, routing_cv(job, constants))


def routing_cv(job: JobSpec, constants: Any) -> float:
    """The experts' load variation beyond sampling noise: the fitted ``moe.expert_load_cv`` for learned
    routing; 0 under Megatron's ``--moe-router-force-load-balancing`` (router.py replaces the logits with
    random ones, so every expert is equally likely and only the ``1/sqrt(n)`` sampling noise is left)."""
    return 0.0 if job.moe_routing == "force_balanced" else float(constants["moe.expert_load_cv"])


@lru_cache(maxsize=None)
def _node_limits() -> tuple[tuple[tuple[int, int, int, int], int], ...]:
    """((layers, hidden, experts, top-k) of a preset, max nodes per token) for every model in
    cost.json's ``moe_routing`` table: a model built from a runs-CSV row ("DeepSeekV3") has the
    preset's routing when it has the preset's shape."""
    from configurator.profiles import load_model

    table: dict[str, Any] = _cost_file().get("moe_routing", {})
    out = []
    for name, entry in table.items():
        if not isinstance(entry, dict):
            continue
        spec = load_model(name)
        out.append(((spec.num_layers, spec.hidden_size, spec.num_experts, spec.moe_topk),
                    int(entry["max_nodes_per_token"])))
    return tuple(out)


def max_nodes_per_token(model: ModelSpec) -> int:
    """Node-limited routing's ``M`` for this model (0 = none), by preset name or shape."""
    table: dict[str, Any] = _cost_file().get("moe_routing", {})
    entry = table.get(model.name)
    if isinstance(entry, dict):
        return int(entry["max_nodes_per_token"])
    shape = (model.num_layers, model.hidden_size, model.num_experts, model.moe_topk)
    return next((m for s, m in _node_limits() if s == shape), 0)


def remote_domains_per_token(num_experts: int, topk: int, domains: int) -> float:
    """Mean number of other NVLink domains a token's ``topk`` experts sit on, experts spread evenly
    over ``domains`` and drawn without replacement (module docstring)."""
    if domains <= 1 or topk <= 0 or num_experts <= 0:
        return 0.0
    per_domain = num_experts / domains
    miss = 1.0
    for i in range(min(topk, num_experts)):
        miss *= max(0.0, num_experts - per_domain - i) / (num_experts - i)
    return (domains - 1) * (1.0 - miss)


def ep_scale_out_share(model: ModelSpec, topk: int, ep_domains: int, dispatcher: str = "alltoall") -> float | None:
    """Share of the dispatch bytes (``k`` copies per token) that leaves the NVLink domain; None = the
    all-to-all's own ``(n-g)/n`` (the alltoall dispatcher, or EP inside one domain)."""
    if dispatcher != "flex" or ep_domains <= 1 or topk <= 0:
        return None
    remote = remote_domains_per_token(model.num_experts, topk, ep_domains)
    limit = max_nodes_per_token(model)
    if limit:
        remote = min(remote, min(limit, ep_domains) * (ep_domains - 1) / ep_domains)
    return min(1.0, remote / topk)


@lru_cache(maxsize=4096)
def ep_overlap_paired_share(pp: int, vpp: int, num_microbatches: int) -> float:
    """Share of a pipeline rank's forward (and backward) chunk passes that Megatron-Core's combined 1F1B
    pairs with a pass of another micro-batch, so that their all-to-alls can hide (module docstring): the
    rest run alone. Mean over the pipeline ranks' warm-up counts, each capped at the rank's passes.
    Remembered: ``_stage_times`` asks for it on every stage of every costed plan, with a handful of shapes."""
    total = num_microbatches * max(1, vpp)
    if total <= 0:
        return 0.0
    if pp <= 1:
        warmup = 1.0
    else:
        warmup = sum(min(total, 2 * (pp - r - 1) + (max(1, vpp) - 1) * pp + 1) for r in range(pp)) / pp
    return max(0.0, (total - warmup) / total)


__all__ = ["busiest_rank_factor", "ep_overlap_paired_share", "ep_scale_out_share", "expected_max_normal", "expert_load_factor", "max_nodes_per_token", "remote_domains_per_token",
           "routing_cv"]
