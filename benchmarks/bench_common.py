"""Shared helpers for the asgireload benchmarks.

Process start/stop, free ports, temporary app directories, /proc sampling and statistics.
Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_PROCS = 100_000  # bound for /proc scans
# Pause between "serving" and the first save. uvicorn's StatReload records the baseline mtimes on its
# first scan, 0.25 s after it started the worker: a save made before that scan is never noticed.
STARTUP_SETTLE = 1.0


class BenchError(RuntimeError):
    """A reloader misbehaved (did not start, did not reload, crashed)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- reloaders


@dataclass(frozen=True)
class Reloader:
    key: str  # "asgireload" / "uvicorn"
    label: str  # column header
    build_cmd: Callable[[int, Path], list[str]]


ASGIRELOAD_EXTRA_ARGS: list[str] = []  # run.py --asgireload-arg, e.g. --no-preload


def _asgireload_cmd(port: int, app_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "asgireload",
        "main:app",
        "--port",
        str(port),
        "--host",
        HOST,
        "--app-dir",
        str(app_dir),
        "--no-access-log",
        "--log-level",
        "warning",
        *ASGIRELOAD_EXTRA_ARGS,
    ]


def _uvicorn_cmd(port: int, app_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "main:app",
        "--reload",
        "--port",
        str(port),
        "--host",
        HOST,
        "--app-dir",
        str(app_dir),
        "--reload-dir",
        str(app_dir),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


ASGIRELOAD = Reloader("asgireload", "asgireload", _asgireload_cmd)
UVICORN = Reloader("uvicorn", "uvicorn --reload", _uvicorn_cmd)


def child_env() -> dict[str, str]:
    """Identical environment for both reloaders: the checkout is importable, output unbuffered."""
    env = dict(os.environ)
    parts = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def probe_asgireload(work_dir: Path) -> tuple[bool, str]:
    """Run ``python -m asgireload --version``; return (ok, version-or-reason)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "asgireload", "--version"],
            cwd=work_dir,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        last = out.splitlines()[-1] if out else "no output"
        return False, f"exit status {proc.returncode}: {last}"
    return True, out.splitlines()[0] if out else "unknown version"


def uvicorn_reloader_kind() -> str:
    """Which file watcher ``uvicorn --reload`` will use in this interpreter."""
    if importlib.util.find_spec("watchfiles") is None:
        return "StatReload, polling every 0.25 s: watchfiles is not installed"
    return "WatchFilesReload"


# --------------------------------------------------------------------------- ports & processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty log>"


@dataclass
class Server:
    reloader: Reloader
    proc: subprocess.Popen[bytes]
    port: int
    app_dir: Path
    log_path: Path
    started: float  # perf_counter() just before the process was spawned

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def failure(self, what: str) -> BenchError:
        state = "running" if self.proc.poll() is None else f"exited with {self.proc.returncode}"
        return BenchError(
            f"{self.reloader.label}: {what} (process {state}); log tail of {self.log_path.name}:\n"
            f"{tail(self.log_path)}"
        )


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL whatever is left of the group."""
    pgid = proc.pid  # start_new_session=True makes the child a group leader
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # Wait (bounded) until no member of the group is left, so temp dirs can be removed.
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def running_server(reloader: Reloader, app_dir: Path, log_dir: Path) -> Iterator[Server]:
    port = free_port()
    log_path = log_dir / f"{reloader.key}-{app_dir.name}-{port}.log"
    with log_path.open("wb") as log_file:
        started = time.perf_counter()
        proc = subprocess.Popen(
            reloader.build_cmd(port, app_dir),
            cwd=app_dir,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Server(reloader, proc, port, app_dir, log_path, started)
    finally:
        _kill_group(proc)


def http_client(server: Server, timeout: float = 1.0) -> httpx.Client:
    """Plain-HTTP loopback client: no proxies from the environment, no (slow) CA bundle loading."""
    return httpx.Client(
        base_url=server.base_url, timeout=httpx.Timeout(timeout), verify=False, trust_env=False
    )


def async_http_client(server: Server, timeout: float, limits: httpx.Limits) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url,
        timeout=httpx.Timeout(timeout),
        limits=limits,
        verify=False,
        trust_env=False,
    )


def start_servers(
    stack: contextlib.ExitStack, reloaders: Sequence[Reloader], tmp: Path, name: str, files: dict[str, str]
) -> dict[str, Server]:
    """Write one copy of the app per reloader first, then start all servers back to back."""
    app_dirs = {r.key: make_app_dir(tmp, f"{name}-{r.key}", files) for r in reloaders}
    return {r.key: stack.enter_context(running_server(r, app_dirs[r.key], tmp)) for r in reloaders}


def wait_serving(server: Server, expected_body: str, timeout: float = 30.0) -> float:
    """Poll GET / until it returns ``expected_body``; return seconds since the process was spawned."""
    deadline = time.perf_counter() + timeout
    with http_client(server) as client:
        for _ in range(int(timeout / 0.02) + 1):
            if server.proc.poll() is not None:
                raise server.failure("exited during startup")
            try:
                resp = client.get("/")
                if resp.status_code == 200 and resp.text == expected_body:
                    return time.perf_counter() - server.started
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline:
                break
            time.sleep(0.02)
    raise server.failure(f"not serving {expected_body!r} after {timeout:.0f} s")


def poll_for_body(client: httpx.Client, expected_body: str, timeout: float = 10.0) -> float | None:
    """Tight GET / loop until the body equals ``expected_body``; return perf_counter() of that response."""
    deadline = time.perf_counter() + timeout
    for _ in range(100_000):
        try:
            resp = client.get("/")
            if resp.status_code == 200 and resp.text == expected_body:
                return time.perf_counter()
        except httpx.HTTPError:
            pass
        if time.perf_counter() > deadline:
            return None
        time.sleep(0.005)
    return None


# --------------------------------------------------------------------------- apps on disk


def body_for(counter: int) -> str:
    return f"counter={counter}"


def editor_write(path: Path, text: str) -> float:
    """Write like an editor (``x.tmp`` then ``os.replace``); return perf_counter() just before the replace."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    t0 = time.perf_counter()
    os.replace(tmp, path)
    return t0


def make_app_dir(parent: Path, name: str, files: dict[str, str]) -> Path:
    app_dir = parent / name
    for rel, text in files.items():
        target = app_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return app_dir


# --------------------------------------------------------------------------- /proc


def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the ``(comm)`` field: [state, ppid, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, found through the ppid links in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for count, entry in enumerate(os.scandir("/proc")):
        if count > MAX_PROCS:
            break
        if not entry.name.isdigit():
            continue
        fields = _read_stat(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    for _ in range(MAX_PROCS):
        if not todo:
            break
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime+stime (+ cutime+cstime of reaped children) summed over the tree, in seconds.

    Counting the reaped-children fields makes the difference of two samples correct even when
    a worker exits (and is reaped by its supervisor) between the samples.
    """
    ticks = 0
    for pid in process_tree(root):
        fields = _read_stat(pid)
        if fields is None:
            continue
        # fields[0] is field 3 (state); utime/stime/cutime/cstime are fields 14..17.
        ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def proc_pss_kib(pid: int) -> int | None:
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return None


def proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (same as numpy's default); q in [0, 100]."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass
class Row:
    """One line of the result table: a figure and its value per reloader key (None = not available)."""

    figure: str
    values: dict[str, float | None]
    fmt: str = "{:.0f}"
    notes: dict[str, str] = field(default_factory=dict)  # shown after the value, e.g. a breakdown

    def cell(self, key: str) -> str:
        value = self.values.get(key)
        text = "n/a" if value is None or math.isnan(value) else self.fmt.format(value)
        note = self.notes.get(key)
        return f"{text} ({note})" if note else text
