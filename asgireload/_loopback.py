"""Whether the server listens only on this machine: the bind's address decides, not how it was given.

`--host 127.0.0.1`, a Unix socket (`--uds`), and an inherited socket (`--fd`) bound to a loopback
address or a Unix path all serve this machine alone: tracebacks show and live reload runs. An
inherited socket is judged by its bound address (getsockname), as the kernel reports it.
"""

from __future__ import annotations

import ipaddress
import os
import socket

__all__ = ["address_is_loopback", "bind_is_loopback", "host_is_loopback"]


def bind_is_loopback(host: str, uds: str | None, fd: int | None) -> bool:
    if uds is not None:
        return True
    if fd is not None:
        return _fd_is_loopback(fd)
    return host_is_loopback(host)


def host_is_loopback(host: str) -> bool:
    """--host as a name or an address: localhost, 127.0.0.0/8, ::1, or ::ffff:127.x.y.z."""
    if host.lower() in ("localhost", "localhost."):
        return True
    return address_is_loopback(socket.AF_INET6 if ":" in host else socket.AF_INET, host.strip("[]"))


def address_is_loopback(family: int, address: str | tuple[object, ...]) -> bool:
    """A socket address (getsockname's form) that only this machine can reach."""
    if family == socket.AF_UNIX:
        return True
    if family not in (socket.AF_INET, socket.AF_INET6):
        return False
    host = address if isinstance(address, str) else str(address[0])
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])  # fe80::1%eth0: the zone is no part of it
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _fd_is_loopback(fd: int) -> bool:
    """An inherited socket's bound address; not loopback when it cannot be read (bind() says why)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    with sock:
        try:
            return address_is_loopback(sock.family, sock.getsockname())
        except OSError:
            return False
