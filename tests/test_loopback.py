"""Only this machine can connect: judged by the bound address, for --host, --uds and an inherited --fd.

A socket handed over with --fd that is bound to 127.0.0.1, ::1, ::ffff:127.x or a Unix path serves
this machine alone, like --host 127.0.0.1: the error page shows tracebacks and live reload runs.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from asgireload._loopback import address_is_loopback
from asgireload.config import Config

from .test_cli import DEADLINE, run_cli

INET, INET6, UNIX = socket.AF_INET, socket.AF_INET6, socket.AF_UNIX


@pytest.mark.parametrize(
    ("family", "address", "loopback"),
    [
        (INET, ("127.0.0.1", 8000), True),
        (INET, ("127.8.9.10", 1), True),
        (INET, ("0.0.0.0", 8000), False),
        (INET, ("192.168.1.5", 8000), False),
        (INET6, ("::1", 8000, 0, 0), True),
        (INET6, ("::ffff:127.0.0.1", 8000, 0, 0), True),
        (INET6, ("::", 8000, 0, 0), False),
        (INET6, ("::ffff:10.0.0.1", 8000, 0, 0), False),
        (INET6, ("fe80::1%lo", 8000, 0, 1), False),
        (UNIX, "/run/app.sock", True),
        (UNIX, "", True),  # an unnamed or abstract socket is local too
    ],
)
def test_an_address_is_judged(family: int, address: object, loopback: bool) -> None:
    assert address_is_loopback(family, address) is loopback  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("127.example.com", False),
    ],
)
def test_a_host_is_judged_by_its_address(host: str, loopback: bool) -> None:
    assert Config(app="main:app", host=host).is_loopback is loopback


@contextlib.contextmanager
def listening(family: int, address: object) -> Iterator[socket.socket]:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen()
        yield sock
    finally:
        sock.close()


def ipv6_available() -> bool:
    try:
        with listening(INET6, ("::1", 0)):
            return True
    except OSError:
        return False


FD_CASES = [
    pytest.param(INET, ("127.0.0.1", 0), True, id="inet-loopback"),
    pytest.param(INET, ("127.0.0.9", 0), True, id="inet-loopback-net"),
    pytest.param(INET, ("0.0.0.0", 0), False, id="inet-any"),
    pytest.param(INET6, ("::1", 0), True, id="inet6-loopback"),
    pytest.param(INET6, ("::ffff:127.0.0.1", 0), True, id="inet6-mapped-loopback"),
    pytest.param(INET6, ("::", 0), False, id="inet6-any"),
    pytest.param(UNIX, "app.sock", True, id="unix"),
]


@pytest.mark.parametrize(("family", "address", "loopback"), FD_CASES)
def test_an_inherited_socket_is_judged_by_its_bound_address(
    tmp_path: Path, family: int, address: object, loopback: bool
) -> None:
    if family == INET6 and not ipv6_available():
        pytest.skip("no IPv6 loopback on this machine")
    if family == UNIX:
        address = str(tmp_path / str(address))
    with listening(family, address) as sock:
        config = Config(app="main:app", fd=sock.fileno())
        assert config.is_loopback is loopback
        assert config.errors_visible is loopback
        assert Config(app="main:app", fd=sock.fileno(), live_reload=True).live_reload_active is loopback


def test_a_closed_fd_is_not_taken_for_loopback() -> None:
    with listening(INET, ("127.0.0.1", 0)) as sock:
        fd = sock.fileno()
    assert Config(app="main:app", fd=fd).is_loopback is False  # bind() then says it is not open


BROKEN = "raise RuntimeError('broken on purpose')\n"


@pytest.mark.parametrize("family", [INET, UNIX], ids=["inet", "unix"])
async def test_a_loopback_fd_shows_tracebacks_and_says_nothing_of_other_machines(
    tmp_path: Path, family: int
) -> None:
    (tmp_path / "main.py").write_text(BROKEN)
    address: object = ("127.0.0.1", 0) if family == INET else str(tmp_path / "app.sock")
    with listening(family, address) as sock:
        fd = sock.fileno()
        async with run_cli(tmp_path, "main:app", "--fd", str(fd), pass_fds=(fd,)) as cli:
            await cli.wait_for_line(r"Generation 1 failed")
            if family == INET:
                transport = httpx.AsyncHTTPTransport()
                url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
            else:
                transport = httpx.AsyncHTTPTransport(uds=str(address))
                url = "http://localhost/"
            async with httpx.AsyncClient(transport=transport, timeout=DEADLINE, trust_env=False) as http:
                page = await http.get(url)
            assert page.status_code == 500, cli.transcript()
            assert "broken on purpose" in page.text, cli.transcript()
            assert "Traceback" in page.text or "main.py" in page.text, cli.transcript()
    assert not any("not only on this machine" in line for line in cli.stderr), cli.transcript()
