"""Plan search: the space (``space``), per-structure resolution of recompute and offload
(``evaluate``), the optimiser (``optimize``) and link-aware placement (``placement``)."""
