"""The listening socket: bound once, before the first worker, held until the end."""

from __future__ import annotations

import errno
import os
import socket
import stat

from ..config import Config
from ..errors import StartupError

BACKLOG = 2048


def bind(config: Config) -> socket.socket:
    """Bind and listen as the config says; every failure is a StartupError with advice."""
    if config.fd is not None:
        return _adopt_fd(config.fd)
    if config.uds is not None:
        try:
            return _bind_unix(config.uds, config.backlog)
        except StartupError as exc:
            raise StartupError(str(exc), option="uds") from None
    return _bind_tcp(config.host, config.port, config.backlog)


def _bind_tcp(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot bind to host {host!r}: {exc.strerror}; pass --host with an address.", option="host"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use: stop the other server, "
                "or pass --port with another number (--port 0 picks a free one).",
                option="port",
            ) from None
        if exc.errno == errno.EACCES:
            raise StartupError(
                f"no permission to bind port {port} on {host}: ports below 1024 need privileges; "
                "pass --port 8000 or another port above 1023.",
                option="port",
            ) from None
        raise StartupError(f"cannot bind {host}:{port}: {exc.strerror}.", option="host") from None
    return sock


def _bind_unix(path: str, backlog: int = BACKLOG) -> socket.socket:
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise StartupError(f"cannot create the socket {path}: the folder {directory} does not exist.")
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise StartupError(f"cannot create the socket {path}: a file that is not a socket is in the way.")
        _remove_if_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot create the socket {path}: {exc.strerror}.") from None
    return sock


def _remove_if_stale(path: str) -> None:
    """Remove a socket file nobody listens on (left by a killed server); refuse a live one."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise StartupError(f"the socket {path} is in use by another server: stop it or pass another --uds.")
    finally:
        probe.close()


def _adopt_fd(fd: int) -> socket.socket:
    try:
        return _adopted(fd)
    except StartupError as exc:
        raise StartupError(str(exc), option="fd") from None


def _adopted(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise StartupError(f"--fd {fd} is not an open file descriptor.") from None
        raise StartupError(f"--fd {fd} is not a socket ({exc.strerror}).") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.close()
        raise StartupError(f"--fd {fd} is a socket, but not a listening stream socket.")
    return sock


def describe(sock: socket.socket, config: Config) -> str:
    """Where to point a browser: http://127.0.0.1:8000, or the socket path."""
    if sock.family == socket.AF_UNIX:
        return f"unix socket {sock.getsockname() or config.uds}"
    host, port = sock.getsockname()[:2]
    scheme = "https" if config.ssl_certfile is not None else "http"
    if sock.family == socket.AF_INET6:
        return f"{scheme}://[{host}]:{port}"
    return f"{scheme}://{host}:{port}"
