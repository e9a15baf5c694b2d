"""MoE mechanisms beyond the per-layer work counts of ``work.py``.

* **Dropless load imbalance.** Each expert receives ``n`` token-expert pairs on average per
  micro-batch; its load varies with coefficient of variation ``cv_e`` (routing skew, calibrated as
  ``moe.expert_load_cv``) plus the sampling noise ``1/sqrt(n)``. An EP rank holds ``E/ep`` experts,
  whose sum varies with ``cv_rank = sqrt((cv_e^2 + 1/n) / (E/ep))``. All EP ranks meet at the
  combine all-to-all, so the layer waits for the busiest of ``ep`` ranks: by the Gaussian
  maximum, ``1 + sqrt(2 ln ep) * cv_rank`` times the mean. With ep = 1 one rank holds every
  expert and there is nothing to wait for (factor 1).
* **Node-limited routing** (DeepSeek-V3: at most 4 nodes per token): the dispatcher sends one copy
  of a token per destination node, so the bytes leaving a node per token are at most
  ``max_nodes * (D-1)/D`` hidden vectors instead of ``k * (n-g)/n``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from configurator.cost.constants import _cost_file
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan


def busiest_rank_factor(model: ModelSpec, plan: Plan, pairs_per_expert: float, expert_cv: float) -> float:
    """Busiest EP rank's routed load / the mean rank's (module docstring)."""
    if plan.ep <= 1 or pairs_per_expert <= 0:
        return 1.0
    local = model.num_experts / plan.ep
    cv_rank = math.sqrt((expert_cv ** 2 + 1.0 / pairs_per_expert) / local)
    return 1.0 + math.sqrt(2.0 * math.log(plan.ep)) * cv_rank


def routing_cv(job: JobSpec, constants: Any) -> float:
    """The experts' load variation beyond sampling noise: the fitted ``moe.expert_load_cv`` for learned
    routing; 0 under Megatron's ``--moe-router-force-load-balancing`` (router.py replaces the logits with
    random ones, so every expert is equally likely and only the ``1/sqrt(n)`` sampling noise is left)."""
    return 0.0 if job.moe_routing == "force_balanced" else float(constants["moe.expert_load_cv"])


@lru_cache(maxsize=None)
def max_nodes_per_token(model_name: str) -> int:
    table: dict[str, Any] = _cost_file().get("moe_routing", {})
    entry = table.get(model_name)
    return int(entry["max_nodes_per_token"]) if isinstance(entry, dict) else 0


def ep_scale_out_share(model: ModelSpec, topk: int, ep_domains: int) -> float | None:
    """Share of the dispatch bytes (``k`` copies per token) leaving the NVLink domain under
    node-limited routing; None = spread evenly (the all-to-all's own ``(n-g)/n``)."""
    limit = max_nodes_per_token(model.name)
    if not limit or ep_domains <= 1 or topk <= 0:
        return None
    remote_nodes = min(limit, ep_domains) * (ep_domains - 1) / ep_domains
    return min(1.0, remote_nodes / topk)


__all__ = ["busiest_rank_factor", "ep_scale_out_share", "max_nodes_per_token", "routing_cv"]
