"""Benchmark asgireload against ``uvicorn --reload``, side by side and interleaved.

Usage: python benchmarks/run.py [--quick] [--only latency|startup|load|idle|memory] [--json PATH]

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import bench_common
import uvicorn
from bench_common import (
    ASGIRELOAD,
    UVICORN,
    BenchError,
    Reloader,
    Row,
    log,
    probe_asgireload,
    uvicorn_reloader_kind,
)
from bench_idle import run_idle
from bench_latency import run_latency
from bench_load import run_load
from bench_memory import run_memory
from bench_startup import run_startup

MEASUREMENTS = ("latency", "startup", "load", "idle", "memory")
Measure = Callable[[Sequence[Reloader], Path], tuple[list[Row], dict[str, object]]]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short run (about a minute)")
    parser.add_argument(
        "--only",
        action="append",
        choices=MEASUREMENTS,
        help="run only this measurement (repeatable)",
    )
    parser.add_argument("--reloads", type=int, help="reloads per app for the latency figure (20; quick 5)")
    parser.add_argument("--load-reloads", type=int, help="reloads for the under-load figure (10; quick 3)")
    parser.add_argument("--idle-seconds", type=float, help="idle CPU sampling time (20; quick 5)")
    parser.add_argument(
        "--startup-runs", type=int, help="cold starts and first edits per app and reloader (5; quick 3)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save raw numbers as JSON")
    parser.add_argument(
        "--asgireload-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass this option to asgireload too (repeatable), e.g. --asgireload-arg=--no-preload",
    )
    args = parser.parse_args(argv)
    args.reloads = args.reloads or (5 if args.quick else 20)
    args.load_reloads = args.load_reloads or (3 if args.quick else 10)
    args.idle_seconds = args.idle_seconds or (5.0 if args.quick else 20.0)
    args.startup_runs = args.startup_runs or (3 if args.quick else 5)
    for name in ("reloads", "load_reloads", "startup_runs"):
        if not 1 <= getattr(args, name) <= 1000:
            parser.error(f"--{name.replace('_', '-')} must be between 1 and 1000")
    if not 1 <= args.idle_seconds <= 600:
        parser.error("--idle-seconds must be between 1 and 600")
    return args


def ratio(row: Row) -> str:
    a, u = row.values.get(ASGIRELOAD.key), row.values.get(UVICORN.key)
    if a is None or u is None or math.isnan(a) or math.isnan(u):
        return "—"
    if u == 0:
        return "—" if a == 0 else "∞"
    return f"{a / u:.2f}x"


def markdown_table(rows: Sequence[Row], asgireload_ok: bool) -> str:
    lines = [
        f"| figure | {ASGIRELOAD.label} | {UVICORN.label} | ratio |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        a = row.cell(ASGIRELOAD.key) if asgireload_ok else "skipped"
        lines.append(f"| {row.figure} | {a} | {row.cell(UVICORN.key)} | {ratio(row)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bench_common.ASGIRELOAD_EXTRA_ARGS.extend(args.asgireload_arg)
    selected = args.only or list(MEASUREMENTS)
    measures: dict[str, Measure] = {
        "latency": lambda rs, tmp: run_latency(rs, tmp, args.reloads),
        "load": lambda rs, tmp: run_load(rs, tmp, args.load_reloads),
        "idle": lambda rs, tmp: run_idle(rs, tmp, args.idle_seconds),
        "memory": run_memory,
        "startup": lambda rs, tmp: run_startup(rs, tmp, args.startup_runs),
    }
    started = time.perf_counter()
    rows: list[Row] = []
    raw: dict[str, object] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="asgireload-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # asgireload's warm cache goes here, not to ~/.cache (the servers inherit the variable)
        os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
        asgireload_ok, asgireload_info = probe_asgireload(tmp)
        reloaders: list[Reloader] = [ASGIRELOAD, UVICORN] if asgireload_ok else [UVICORN]
        if not asgireload_ok:
            print(f"asgireload not runnable: {asgireload_info}", flush=True)
        meta = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "uvicorn": uvicorn.__version__,
            "uvicorn_reloader": uvicorn_reloader_kind(),
            "asgireload": asgireload_info.removeprefix("asgireload").strip() if asgireload_ok else None,
            "quick": args.quick,
            "reloads": args.reloads,
            "load_reloads": args.load_reloads,
            "idle_seconds": args.idle_seconds,
        }
        for name in MEASUREMENTS:
            if name not in selected:
                continue
            t0 = time.perf_counter()
            try:
                new_rows, raw[name] = measures[name](reloaders, tmp)
            except BenchError as exc:
                errors[name] = str(exc)
                log(f"{name}: FAILED\n{exc}")
                continue
            rows.extend(new_rows)
            log(f"{name}: done in {time.perf_counter() - t0:.0f} s")

    meta["seconds"] = round(time.perf_counter() - started, 1)
    print()
    print(
        f"Python {meta['python']}, uvicorn {meta['uvicorn']} ({meta['uvicorn_reloader']}), "
        f"asgireload {meta['asgireload'] or 'not runnable'}, {meta['cpus']} CPUs, "
        f"{'quick' if args.quick else 'full'} run in {meta['seconds']:.0f} s"
    )
    print()
    print(markdown_table(rows, asgireload_ok))
    for name, message in errors.items():
        print(f"\n{name} failed: {message.splitlines()[0]}")
    if args.json:
        payload = {
            "meta": meta,
            "rows": [{"figure": r.figure, "values": r.values, "notes": r.notes} for r in rows],
            "raw": raw,
            "errors": errors,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        log(f"raw numbers written to {args.json}")
    return 1 if errors else 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped, temporary files removed", file=sys.stderr)
        sys.exit(130)
