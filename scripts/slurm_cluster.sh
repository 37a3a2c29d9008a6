#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the SLURM tests and for trying the slurm/
# scripts: Debian's slurm-wlm + munge, every file under one directory.
#
#   scripts/slurm_cluster.sh start DIR [--nodes N]   start munged, slurmctld and N slurmd; print the env to use
#   scripts/slurm_cluster.sh stop DIR                stop them, remove what start created (DIR stays, with the logs)
#
# One node (the default) is this machine at 127.0.0.1. With --nodes N (2 to 9) each node is a
# network namespace of its own with its own address and host name (node1, node2, ...), joined
# by a bridge whose address is the controller's: a multi-node cluster on one machine, for
# trying rendezvous, interfaces and ports across nodes. Every node sees the same filesystem
# (a shared filesystem, as on a real cluster). Inside a node the interface is called vt0:
# GLOO_SOCKET_IFNAME=vt0 names it, and visiontrain finds it by itself (docs/cluster.md).
# DIR/nodes lists each node's name, network namespace and address; to run a command on node 2
# (its network, host name and /etc/hosts): nsenter -t "$(cat DIR/slurmd-node2.pid)" -n -u -m COMMAND
#
# Then: export SLURM_CONF=DIR/slurm.conf; sbatch ... Needs root (slurmd runs jobs as
# their users; namespaces) and the packages `slurm-wlm munge iproute2` (make setup-dev installs them as root).
# SLURM_TEST_PORT (16817) sets the controller's port; names and the subnet derive from it,
# so two clusters with different ports can run side by side.
set -euo pipefail

usage() { echo "usage: $0 start DIR [--nodes N] | stop DIR" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
action="$1"
dir="$(mkdir -p "$2" && cd "$2" && pwd)"
shift 2
nodes=1
if [[ "$action" == start && $# -gt 0 ]]; then
    [[ $# -eq 2 && "$1" == --nodes ]] || usage
    nodes="$2"
    [[ "$nodes" =~ ^[1-9]$ ]] || { echo "error: --nodes $nodes: give 1 to 9" >&2; exit 2; }
elif [[ $# -gt 0 ]]; then
    usage
fi
port_base="${SLURM_TEST_PORT:-16817}"  # slurmctld; slurmd uses the next port
bridge="vtb$port_base"
subnet="${SLURM_TEST_SUBNET:-10.$((port_base % 200 + 20)).$((port_base / 200 % 250))}"  # the first three octets

namespace() { echo "vt$port_base-node$1"; }

remove_network() {
    # Only what start created, as recorded in DIR/network.
    [[ -f "$dir/network" ]] || return 0
    local kind name
    while read -r kind name; do
        case "$kind" in
            netns)
                ip netns pids "$name" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
                ip netns delete "$name" 2>/dev/null || true ;;
            bridge|link) ip link delete "$name" 2>/dev/null || true ;;
        esac
    done < "$dir/network"
    rm -f "$dir/network"
}

create_network() {
    rm -f "$dir/nodes"
    if ip link show "$bridge" &>/dev/null; then
        echo "error: bridge $bridge exists: a cluster with SLURM_TEST_PORT=$port_base is up; stop it with" \
             "'$0 stop ITS_DIR', or choose another SLURM_TEST_PORT" >&2
        exit 2
    fi
    if ip -4 route show match "$subnet.1" | grep -qv '^default'; then
        echo "error: $subnet.0/24 is already routed on this machine: set SLURM_TEST_SUBNET to a free" \
             "10.x.y (the first three octets)" >&2
        exit 2
    fi
    # nf_call_iptables 0: firewalls (Docker's FORWARD policy DROP) must not filter node-to-node traffic.
    ip link add "$bridge" type bridge nf_call_iptables 0
    echo "bridge $bridge" >> "$dir/network"
    ip addr add "$subnet.1/24" dev "$bridge"
    ip link set "$bridge" up
    local k ns
    for k in $(seq "$nodes"); do
        ns="$(namespace "$k")"
        ip netns add "$ns"
        echo "netns $ns" >> "$dir/network"
        ip link add "vth$port_base$k" type veth peer name "vtp$port_base$k"
        echo "link vth$port_base$k" >> "$dir/network"
        ip link set "vth$port_base$k" master "$bridge" up
        ip link set "vtp$port_base$k" netns "$ns"
        ip -n "$ns" link set "vtp$port_base$k" name vt0
        ip -n "$ns" addr add "$subnet.$((10 + k))/24" dev vt0
        ip -n "$ns" link set vt0 up
        ip -n "$ns" link set lo up
        echo "node$k $ns $subnet.$((10 + k))" >> "$dir/nodes"  # name, network namespace, address
    done
}

stop() {
    local pidfile
    for pidfile in "$dir"/slurmd*.pid "$dir/slurmctld.pid" "$dir/munged.pid"; do
        [[ -f "$pidfile" ]] && { kill "$(cat "$pidfile")" 2>/dev/null || true; }
    done
    sleep 1
    for pidfile in "$dir"/slurmd*.pid "$dir/slurmctld.pid" "$dir/munged.pid"; do
        if [[ -f "$pidfile" ]]; then
            kill -9 "$(cat "$pidfile")" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
    remove_network
}

start() {
    for tool in munged slurmctld slurmd sbatch; do
        command -v "$tool" >/dev/null || { echo "error: $tool not found: install slurm-wlm and munge (make setup)" >&2; exit 2; }
    done
    [[ $(id -u) -eq 0 ]] || { echo "error: the test cluster runs its daemons as root" >&2; exit 2; }
    stop
    # A start that fails at any point stops what it started (daemons, namespaces, bridge).
    trap 'status=$?; ((status == 0)) || stop' EXIT
    mkdir -p "$dir/state" "$dir/munge"
    chmod 700 "$dir/munge"
    if [[ ! -f "$dir/munge/munge.key" ]]; then
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$dir/munge/munge.key"
    fi
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed"

    local host cpus memory controller node_lines k
    host="$(hostname -s)"
    cpus="$(nproc)"
    memory="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    if ((nodes == 1)); then
        controller=127.0.0.1
        node_lines="NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN"
    else
        command -v ip >/dev/null || { echo "error: ip not found: install iproute2" >&2; exit 2; }
        create_network
        controller="$subnet.1"
        node_lines=""
        for k in $(seq "$nodes"); do
            node_lines+="NodeName=node$k NodeAddr=$subnet.$((10 + k)) CPUs=$cpus RealMemory=$memory State=UNKNOWN"$'\n'
        done
    fi
    cat > "$dir/slurm.conf" <<EOF
ClusterName=visiontrain-test
SlurmctldHost=$host($controller)
SlurmctldPort=$port_base
SlurmdPort=$((port_base + 1))
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool-%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=30
$node_lines
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld
    if ((nodes == 1)); then
        slurmd -N "$host"
    else
        # Each slurmd in its node's network namespace, with its node's host name (a UTS namespace)
        # and /etc/hosts (a mount namespace); not `ip netns exec`: it remounts /sys, where slurmd
        # looks for cgroups. Each node's /etc/hosts names the other nodes by their addresses and
        # its own name as 127.0.1.1, as Debian and Ubuntu install it: the line that sends naive
        # rendezvous code to the loopback interface.
        for k in $(seq "$nodes"); do
            { grep -vE "\snode[0-9]+(\s|$)" /etc/hosts || true
              echo "127.0.1.1 node$k"
              awk -v self="node$k" '$1 != self {print $3, $1}' "$dir/nodes"; } > "$dir/hosts-node$k"
            # shellcheck disable=SC2016  # $1 and $2 are the inner shell's arguments
            nsenter --net="/run/netns/$(namespace "$k")" unshare --uts --mount --propagation private \
                sh -c 'mount --bind "$1" /etc/hosts && hostname "$2" && exec slurmd -N "$2"' sh \
                "$dir/hosts-node$k" "node$k"
        done
    fi
    for _ in $(seq 60); do
        if sinfo -h -N -o %t 2>/dev/null | grep -q . &&
           ! sinfo -h -N -o %t 2>/dev/null | grep -qvE '^(idle|mix|alloc)$'; then
            echo "export SLURM_CONF=$dir/slurm.conf"
            return 0
        fi
        sleep 0.5
    done
    echo "error: the nodes did not become idle; see $dir/slurmctld.log and $dir/slurmd-*.log" >&2
    sinfo -N >&2 || true
    exit 1
}

case "$action" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
