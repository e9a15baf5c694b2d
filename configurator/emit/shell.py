"""Bash shared by the emitted launch scripts: which node this is, and where the others are.

Three ways to learn the hosts, in this order:

* Slurm (``SLURM_JOB_NODELIST`` set): ``scontrol show hostnames`` gives the allocation's nodes; node ``i``
  of that list plays the cluster profile's node ``i``, and ``SLURM_NODEID`` says which one this is;
* the names given when emitting (``--hosts`` / ``--hostfile``, or the host names of a measured cluster
  profile), in the cluster profile's node order;
* none: the script needs ``NODE_RANK`` and ``MASTER_ADDR`` on its command line.

The placement maps node rank ``r`` (job slot ``r``, ranks ``r*NPROC ...``) to node ``NODE_ORDER[r]`` of
that list, so its node order survives whichever way the hosts come. A bad ``NODE_RANK`` or a host count
that differs from the plan stops the script with one line on stderr and exit status 2.
"""

from __future__ import annotations

import re
from pathlib import Path

from configurator.errors import InputError
from configurator.placement import Placement
from configurator.specs.hardware import ClusterSpec

HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


def check_hosts(cluster: ClusterSpec, names: tuple[str, ...], field: str = "hosts") -> tuple[str, ...]:
    """Host names for the cluster's nodes (its own order): one per node, plain names, no repeats."""
    if len(names) != cluster.num_nodes:
        raise InputError(field, ",".join(names), f"gives {len(names)} hosts; the plan runs on {cluster.num_nodes} nodes")
    for name in names:
        if not HOST_NAME.match(name):
            raise InputError(field, name, "is not a host name (letters, digits, . _ : -)")
    if len(set(names)) != len(names):
        raise InputError(field, ",".join(names), "names a host twice")
    return names


def read_hostfile(path: Path) -> tuple[str, ...]:
    """Host names from a hostfile: one per line, ``#`` comments, anything after the name (``slots=8``) ignored."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError("hostfile", str(path), f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    return tuple(line.split("#", 1)[0].split()[0] for line in text.splitlines() if line.split("#", 1)[0].strip())


def known_hosts(cluster: ClusterSpec, names: tuple[str, ...]) -> tuple[str, ...]:
    """The given names, else a measured profile's host names, else () (unknown until run time)."""
    if names:
        return names
    return tuple(n.host for n in cluster.nodes) if cluster.nodes else ()


def quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def node_prologue(script: str, cluster: ClusterSpec, placement: Placement, names: tuple[str, ...],
                  gpu_orders: list[list[int]], *, per_node: bool) -> list[str]:
    """Bash that sets NODES, NODE_ORDER, GPU_ORDERS, MASTER_ADDR, MASTER_PORT (and NODE_RANK if per_node)."""
    n = cluster.num_nodes
    lines = [
        "set -euo pipefail",
        'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        f"NNODES={n}",
        f"NPROC={cluster.gpus_per_node}",
        "# Node rank r (ranks r*NPROC ... r*NPROC+NPROC-1) runs on node NODE_ORDER[r] of NODES (the placement).",
        "NODE_ORDER=(" + " ".join(str(i) for i in placement.node_order) + ")",
        "GPU_ORDERS=(" + " ".join('"' + ",".join(map(str, o)) + '"' for o in gpu_orders) + ")",
        "# The cluster's nodes in its profile's order (from --hosts/--hostfile or a measured profile);",
        "# under Slurm they come from SLURM_JOB_NODELIST instead.",
        "NODES=(" + " ".join(quote(h) for h in names) + ")",
        f'die() {{ echo "{script}: error: $*" >&2; exit 2; }}',
        'if [ -n "${SLURM_JOB_NODELIST:-}" ]; then',
        '  mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        '  [ "${#NODES[@]}" -eq "$NNODES" ] || die "Slurm allocated ${#NODES[@]} nodes ($SLURM_JOB_NODELIST);'
        ' the plan needs $NNODES (sbatch --nodes=$NNODES)"',
    ]
    if per_node:
        lines += [
            '  NODE_ID="${SLURM_NODEID:-}"',
            '  case "$NODE_ID" in ""|*[!0-9]*) die "SLURM_NODEID=\'$NODE_ID\' is not a node index: start this script'
            ' with srun (see the .sbatch file)";; esac',
            '  NODE_RANK=""',
            '  for r in "${!NODE_ORDER[@]}"; do [ "${NODE_ORDER[$r]}" != "$((10#$NODE_ID))" ] || NODE_RANK=$r; done',
            '  [ -n "$NODE_RANK" ] || die "SLURM_NODEID=$NODE_ID is not a node of this $NNODES-node plan"',
            '  MASTER_ADDR="${MASTER_ADDR:-${NODES[${NODE_ORDER[0]}]}}"',
            '  MASTER_PORT="${MASTER_PORT:-6000}"',
            "else",
            f'  [ "$#" -ge 1 ] || die "usage: {script} NODE_RANK [MASTER_ADDR] [MASTER_PORT] (or run it under Slurm)"',
            '  NODE_RANK="$1"',
            '  case "$NODE_RANK" in ""|*[!0-9]*) die "NODE_RANK=\'$NODE_RANK\' must be an integer in 0..$((NNODES-1))";; esac',
            '  NODE_RANK=$((10#$NODE_RANK))',
            '  [ "$NODE_RANK" -lt "$NNODES" ] || die "NODE_RANK=$NODE_RANK is out of range: this plan has'
            ' $NNODES nodes (0..$((NNODES-1)))"',
            '  if [ "$#" -ge 2 ]; then MASTER_ADDR="$2"',
            '  elif [ "${#NODES[@]}" -gt 0 ]; then MASTER_ADDR="${NODES[${NODE_ORDER[0]}]}"',
            '  else die "MASTER_ADDR: no host names were given when emitting (--hosts/--hostfile); pass the address'
            ' of node rank 0 as the second argument"; fi',
            '  MASTER_PORT="${3:-6000}"',
            "fi",
        ]
    else:
        lines += [
            "else",
            '  [ "${#NODES[@]}" -gt 0 ] || die "no host names: emit with --hosts or --hostfile, or run under Slurm"',
            "fi",
            'MASTER_ADDR="${MASTER_ADDR:-${NODES[${NODE_ORDER[0]}]}}"',
        ]
    return lines


def sbatch_script(cluster: ClusterSpec, framework: str, launch: str, *, per_node: bool) -> str:
    """``sbatch`` wrapper: allocate the plan's nodes, run ``launch`` once per node (srun) or once."""
    n, g = cluster.num_nodes, cluster.gpus_per_node
    name = launch.rsplit(".", 1)[0].replace("launch_", "")
    lines = [
        "#!/usr/bin/env bash",
        f"# Slurm batch job for the {framework} launch (written by configurator): cd to this folder, then",
        f"#   sbatch {launch.replace('.sh', '.sbatch')}",
        "# Slurm's node list (scontrol show hostnames) stands for the cluster's nodes in profile order; the",
        "# launch script maps node ranks onto it in the placement's order.",
        f"#SBATCH --job-name=configurator-{name}",
        f"#SBATCH --nodes={n}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={g}",
        "#SBATCH --exclusive",
        "set -euo pipefail",
        'HERE="${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")" && pwd)}"',
        f'[ -f "$HERE/{launch}" ] || {{ echo "{launch.replace(".sh", ".sbatch")}: error: $HERE has no {launch};'
        f' submit from the emitted folder" >&2; exit 2; }}',
        'export MASTER_PORT="${MASTER_PORT:-6000}"',
    ]
    if per_node:
        lines.append(f'exec srun --nodes={n} --ntasks-per-node=1 --kill-on-bad-exit=1 bash "$HERE/{launch}"')
    else:
        lines.append("# The DeepSpeed launcher starts every node's workers itself (pdsh/ssh) from this first node.")
        lines.append(f'exec bash "$HERE/{launch}"')
    return "\n".join(lines) + "\n"


__all__ = ["check_hosts", "known_hosts", "node_prologue", "quote", "sbatch_script"]
