"""Addresses and network interfaces: which interface gloo binds to across nodes, and a free local port."""

from __future__ import annotations

import os
import socket
from typing import MutableMapping

from visiontrain.infra.errors import UsageError
from visiontrain.parallel.launchers import LaunchInfo, spans_nodes


def route_to(host: str) -> tuple[str, str]:
    """(local address, interface name) this machine uses to reach `host` (no packet is sent)."""
    try:
        address = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except socket.gaierror as err:
        raise UsageError(f"the rendezvous address MASTER_ADDR={host!r} does not resolve on {socket.gethostname()} "
                         f"({err.strerror}): set MASTER_ADDR to the head node's address") from None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))
            local = probe.getsockname()[0]
    except OSError as err:
        raise UsageError(f"no route from {socket.gethostname()} to the rendezvous address MASTER_ADDR={host!r} "
                         f"({address}: {err.strerror}): set MASTER_ADDR to an address of the head node this node "
                         "reaches") from None
    interface = interface_of(local)
    if not interface:
        raise UsageError(f"cannot tell which network interface carries {local} (the route to MASTER_ADDR={host!r}): "
                         "set GLOO_SOCKET_IFNAME")
    return local, interface


def interface_of(address: str) -> str:
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addresses):
            return name
    return ""


def outward_interface() -> tuple[str, str]:
    """(address, interface) other machines reach this one through: the default route's interface,
    else the only interface that is up besides loopback."""
    import psutil

    try:
        with open("/proc/net/route") as table:
            default = [line.split()[0] for line in table.readlines()[1:] if line.split()[1] == "00000000"]
    except OSError:
        default = []
    stats = psutil.net_if_stats()
    up = [name for name, st in stats.items() if st.isup and name != "lo" and ipv4_of(name)]
    candidates = [name for name in default if name in up] or up
    if len(set(candidates)) != 1:
        raise UsageError("this node runs the rendezvous but cannot tell which network interface the other nodes "
                         f"reach it through (up: {', '.join(up) or 'none'}): set GLOO_SOCKET_IFNAME (and "
                         "NCCL_SOCKET_IFNAME) to it")
    return ipv4_of(candidates[0]), candidates[0]


def ipv4_of(interface: str) -> str:
    import psutil

    return next((a.address for a in psutil.net_if_addrs().get(interface, []) if a.family == socket.AF_INET), "")


def choose_socket_interface(info: LaunchInfo,
                            environ: MutableMapping[str, str] = os.environ) -> tuple[str, str | None] | None:
    """For a world that spans nodes, point gloo at the interface that reaches the other nodes.

    Left alone, gloo binds to whatever this host's name resolves to, often 127.0.1.1 (Debian's and
    Ubuntu's /etc/hosts), and ranks on other nodes then wait for a connection that never comes. On
    a node that reaches the head node over the network, that is the interface of the route to it;
    on the head node itself (MASTER_ADDR may resolve to loopback there), the interface that carries
    the default route, or the only one that is up. An interface given in GLOO_SOCKET_IFNAME is kept.
    Returns (this node's address, interface), None within one node."""
    if not spans_nodes(info) or "MASTER_ADDR" not in environ:
        return None
    if environ.get("GLOO_SOCKET_IFNAME"):
        return ipv4_of(environ["GLOO_SOCKET_IFNAME"].split(",")[0]) or None, environ["GLOO_SOCKET_IFNAME"]
    local, interface = route_to(environ["MASTER_ADDR"])
    if local.startswith("127."):
        local, interface = outward_interface()
    environ["GLOO_SOCKET_IFNAME"] = interface
    return local, interface


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it), for a rendezvous within this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
