"""Context-parallel attention communication, by ``cp_comm`` type (Megatron's ``--cp-comm-type``).

Per layer and micro-batch on one rank, ``t`` of its tokens, ``kv`` = its K and V bytes, ``A`` = its
flash-attention forward time (the backward runs ``bwd_factor * A``):

* ``p2p`` - a ring of ``cp`` steps; each step passes ``kv`` to the next rank while the attention of
  the block in hand runs. All ranks send at once, so a step lasts as long as its *slowest hop*
  (the inter-node one, on the GPU's own NIC, once the ring leaves a node): not a hierarchical
  all-gather spread over all NICs of a node. Exposed: ``(cp - 1) * max(0, hop - A/cp)`` forward,
  and K,V plus their gradients (2 kv) per hop backward.
* ``all_gather`` - K and V all-gathered before attention (Llama 3 at 128K), their gradients
  reduce-scattered after; not overlapped (exposed entirely).
* ``a2a`` - Ulysses: Q, K, V all-to-all from a sequence to a head split and the output back;
  the same in backward; exposed. Needs cp | heads per TP rank (legality).
* ``a2a+p2p`` - all-to-all inside an NVLink domain (``a`` = cp ranks of the group per domain), then a
  p2p ring of ``cp/a`` steps across domains whose blocks are ``a`` times larger and whose attention
  per step is ``A/(cp/a)``.
"""

from __future__ import annotations

from configurator.cost.comm import CommModel
from configurator.cost.work import LayerWork


def cp_times_s(kind: str, work: LayerWork, cp: int, comm: CommModel, attention_s: float,
               bwd_factor: float) -> tuple[float, float, float]:
    """(exposed forward, exposed backward, hidden) seconds of one layer's CP exchange."""
    if cp <= 1 or not work.cp_bytes:
        return 0.0, 0.0, 0.0
    kv = work.cp_bytes
    attn_b = bwd_factor * attention_s
    if kind == "all_gather":
        f = comm.allgather_s("cp", kv * cp)
        return f, f, 0.0
    if kind == "a2a":
        f = comm.alltoall_s("cp", work.cp_a2a_bytes)
        return f, f, 0.0
    if kind == "a2a+p2p":
        a = max(1, min(cp, comm.cp_ranks_per_domain()))
        steps = cp // a
        a2a = comm.alltoall_within_domain_s(work.cp_a2a_bytes, a)
        if steps <= 1:
            return a2a, a2a, 0.0
        hop = comm.ring_hop_s("cp", kv * a)
        f = (steps - 1) * max(0.0, hop - attention_s / steps)
        b = (steps - 1) * max(0.0, 2 * hop - attn_b / steps)
        hidden = (steps - 1) * (hop + 2 * hop) - f - b
        return a2a + f, a2a + b, max(0.0, hidden)
    hop = comm.ring_hop_s("cp", kv)
    f = (cp - 1) * max(0.0, hop - attention_s / cp)
    b = (cp - 1) * max(0.0, 2 * hop - attn_b / cp)
    hidden = (cp - 1) * 3 * hop - f - b
    return f, b, max(0.0, hidden)


__all__ = ["cp_times_s"]
