"""How soon the scanner notices a save: write (temp file + rename) to the change report.

    python benchmarks/detect.py [--files 300] [--saves 50]

This is the "time from a write to the start of the reload" of a project with a few hundred
watched files: the supervisor starts loading the next generation as soon as the scanner
reports. It runs asgireload's own Scanner in this process, once with file events as hints
(what Linux gets) and once polling only (what other systems get), and prints medians and
p90s. uvicorn --reload has no separate figure for this: its StatReload checks every 0.25 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asgireload._supervisor import scanner as scanner_module
from asgireload._supervisor.scanner import Scanner, stat_key


async def measure(folder: Path, files: list[Path], saves: int, polling: bool) -> list[float]:
    if polling:
        scanner_module_events = scanner_module._directory_events
        scanner_module._directory_events = lambda callback: None  # type: ignore[assignment]
    reports: asyncio.Queue[float] = asyncio.Queue()
    try:
        scanner = Scanner(lambda paths, since: reports.put_nowait(time.perf_counter()), interval=None)
    finally:
        if polling:
            scanner_module._directory_events = scanner_module_events  # type: ignore[assignment]
    scanner.watch((str(p), stat_key(str(p))) for p in files)
    task = asyncio.create_task(scanner.run())
    latencies = []
    try:
        await asyncio.sleep(0.2)  # let the first check of the fresh baselines pass
        while not reports.empty():
            reports.get_nowait()
        for n in range(saves):
            target = random.choice(files)
            temporary = target.with_suffix(".tmp")
            temporary.write_text(f"VALUE = {n}\n" + "#" * n)
            written = time.perf_counter()
            os.replace(temporary, target)
            async with asyncio.timeout(5):
                reported = await reports.get()
            latencies.append((reported - written) * 1000)
            await asyncio.sleep(random.uniform(0.05, 0.15))  # saves are not back to back
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return latencies


def summary(name: str, values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
    return f"| {name} | {statistics.median(values):.1f} | {p90:.1f} |"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--saves", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="asgireload-detect-") as name:
        folder = Path(name)
        files = []
        for i in range(args.files):
            package = folder / f"pkg{i // 50}"
            package.mkdir(exist_ok=True)
            path = package / f"m{i}.py"
            path.write_text("VALUE = 0\n")
            files.append(path)
        with_events = await measure(folder, files, args.saves, polling=False)
        polling = await measure(folder, files, args.saves, polling=True)
    print(f"{args.files} watched files, {args.saves} saves each (write temp file, rename over)\n")
    print("| scanner | write to report, p50 (ms) | p90 (ms) |")
    print("|---|---:|---:|")
    print(summary("file events as hints (Linux)", with_events))
    print(summary("polling only", polling))


if __name__ == "__main__":
    asyncio.run(main())
