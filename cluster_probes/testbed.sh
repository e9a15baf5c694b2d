#!/usr/bin/env bash
# An emulated cluster on one machine, for testing the probes against links with known rates.
#
#   testbed.sh up   PREFIX N RATE_MBIT [SRC:DST:RATE_MBIT ...]   hosts PREFIX0..PREFIX{N-1} + bridge PREFIXbr
#   testbed.sh run  PREFIX N OUT [probe args...]                  one probe rank per host, rank 0 writes OUT
#   testbed.sh down PREFIX N
#
# Each "host" is a network namespace with one veth (eth0, 10.77.0.<i+1>/24) whose peer sits on a bridge in
# its own namespace: nothing is created in the root namespace and no traffic leaves the namespaces. Every
# directed link i->j is shaped on i's eth0 egress by an HTB class per destination (RATE_MBIT, or the rate
# given for SRC:DST). `run` starts torchrun in each namespace with static node ranks, gloo on eth0, a host
# name node<i> (UTS namespace) and a fake /proc/meminfo of (16 + i) GiB bind-mounted (a known truth).
# Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); `up` fails loudly without it.
set -euo pipefail

cmd="${1:?usage: testbed.sh up|run|down PREFIX N ...}"
prefix="${2:?prefix}"
n="${3:?number of hosts}"
ip_of() { echo "10.77.0.$(( $1 + 1 ))"; }

down() {
  set +e
  for i in $(seq 0 $((n - 1))); do ip netns del "${prefix}${i}" 2>/dev/null; done
  ip netns del "${prefix}br" 2>/dev/null
  rm -f "/tmp/${prefix}-meminfo-"* 2>/dev/null
  return 0
}

up() {
  local rate="$1"; shift
  declare -A slow=()
  for spec in "$@"; do
    IFS=: read -r s d r <<<"$spec"
    slow["$s:$d"]="$r"
  done
  trap 'down' ERR INT TERM
  ip netns add "${prefix}br"
  ip -n "${prefix}br" link set lo up
  ip -n "${prefix}br" link add br0 type bridge
  ip -n "${prefix}br" link set br0 up
  for i in $(seq 0 $((n - 1))); do
    ip netns add "${prefix}${i}"
    ip -n "${prefix}${i}" link set lo up
    ip -n "${prefix}${i}" link add eth0 type veth peer name "p${i}" netns "${prefix}br"
    ip -n "${prefix}br" link set "p${i}" master br0 up
    ip -n "${prefix}${i}" addr add "$(ip_of "$i")/24" dev eth0
    ip -n "${prefix}${i}" link set eth0 up
    tc -n "${prefix}${i}" qdisc add dev eth0 root handle 1: htb default 999
    tc -n "${prefix}${i}" class add dev eth0 parent 1: classid 1:999 htb rate 10gbit
    for j in $(seq 0 $((n - 1))); do
      [ "$i" = "$j" ] && continue
      r="${slow[$i:$j]:-$rate}"
      tc -n "${prefix}${i}" class add dev eth0 parent 1: classid "1:$((j + 10))" htb rate "${r}mbit" ceil "${r}mbit"
      tc -n "${prefix}${i}" filter add dev eth0 parent 1: protocol ip prio 1 u32 \
        match ip dst "$(ip_of "$j")/32" flowid "1:$((j + 10))"
    done
  done
  trap - ERR INT TERM
}

run() {
  local out="$1"; shift
  local port=$(( 29000 + RANDOM % 1000 ))
  local pids=() rc=0
  for i in $(seq 0 $((n - 1))); do
    sed "s/^MemTotal:.*/MemTotal:       $(( (16 + i) * 1024 * 1024 )) kB/" /proc/meminfo > "/tmp/${prefix}-meminfo-${i}"
    ip netns exec "${prefix}${i}" unshare --uts --mount sh -c "
      hostname node${i}
      mount --bind /tmp/${prefix}-meminfo-${i} /proc/meminfo
      GLOO_SOCKET_IFNAME=eth0 exec \"${PYTHON:-python3}\" -m torch.distributed.run --nnodes ${n} --node-rank ${i} \
        --nproc-per-node 1 --master-addr $(ip_of 0) --master-port ${port} -m cluster_probes --out '${out}' $*
    " > "/tmp/${prefix}-probe-${i}.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}

case "$cmd" in
  up) up "${@:4}" ;;
  run) run "${@:4}" ;;
  down) down ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
