"""What recording the import graph costs: the app's import with and without the recorder.

    python benchmarks/bench_graph_cost.py               # 450 modules, 7 runs each, about 30 s

Each run is a fresh interpreter that imports FastAPI and pydantic first (as a warm worker has),
installs asgireload's source compiler (as every worker does) and, every other run, the import
graph recorder, then times `import main` of the generated big project (bench_project_apps.py,
without its 1 s module). Prints the p50 of each and the difference.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import child_env, make_app_dir, median
from bench_project_apps import big_project_files

PROBE = """
import builtins, sys, time, timeit
import fastapi, pydantic, fastapi.responses
from asgireload._watchfilter import WatchFilter
from asgireload._worker.loader import ImportRecorder
from asgireload._worker.imports import ImportGraphRecorder
project = WatchFilter([sys.argv[1]])
ImportRecorder(project).install()
graph = ImportGraphRecorder(project.is_project_file)
original = builtins.__import__
if sys.argv[2] == "on":
    graph.install()
sys.path.insert(0, sys.argv[1])
started = time.process_time()
import main
took = time.process_time() - started
graph.uninstall()
entries = graph.new_entries()
# the cost of one statement, recorder off and on (project code on a running body, installed code)
import app.routers.r1 as project_module, pydantic.fields as installed_module
calls = {}
N = 20000
graph.files.update({"main": "", "app.routers.r1": "", "app.models.m1": ""})
graph.imports.setdefault("main", set())
for where, module in (("project", project_module), ("installed", installed_module)):
    g = vars(module)
    off = min(timeit.repeat(lambda: original("app.models.m1", g, None, ("Item1",), 0), number=N, repeat=5))
    graph.install()
    graph._running.append("main")
    hooked = builtins.__import__
    on = min(timeit.repeat(lambda: hooked("app.models.m1", g, None, ("Item1",), 0), number=N, repeat=5))
    graph.uninstall()
    calls[where] = (on - off) / N
print(took, len(entries), sum(len(e[2]) for e in entries), calls["project"], calls["installed"])
"""

COUNT = """
import builtins, sys
import fastapi, pydantic, fastapi.responses
from asgireload._watchfilter import WatchFilter
from asgireload._worker.imports import ImportGraphRecorder
project = WatchFilter([sys.argv[1]])
graph = ImportGraphRecorder(project.is_project_file)
graph.install()
recording = builtins.__import__
counts = {"project": 0, "installed": 0}
def counting(name, globals=None, locals=None, fromlist=(), level=0):
    project_code = globals is not None and globals.get("__name__") in graph.files
    counts["project" if project_code else "installed"] += 1
    return recording(name, globals, locals, fromlist, level)
builtins.__import__ = counting
sys.path.insert(0, sys.argv[1])
import main
print(counts["project"], counts["installed"])
"""


def probe(script: str, app_dir: Path, *args: str) -> list[str]:
    command = [sys.executable, "-c", script, str(app_dir), *args]
    return subprocess.run(
        command, env=child_env(), capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modules", type=int, default=450)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="asgireload-bench-graph-") as name:
        files = big_project_files(args.modules)
        files["app/ml/weights.py"] = "WEIGHTS = [0.5] * 1000\n"  # not the 1 s sleep: it would hide the cost
        app_dir = make_app_dir(Path(name), "project", files)
        times: dict[str, list[float]] = {"off": [], "on": []}
        per_call: dict[str, list[float]] = {"project": [], "installed": []}
        for _ in range(args.runs):
            for mode in ("off", "on"):
                took, nodes, edges, project_call, installed_call = probe(PROBE, app_dir, mode)
                times[mode].append(float(took))
            per_call["project"].append(float(project_call))
            per_call["installed"].append(float(installed_call))
        project_statements, installed_statements = map(int, probe(COUNT, app_dir))
    off, on = median(times["off"]) * 1000, median(times["on"]) * 1000
    project_us, installed_us = median(per_call["project"]) * 1e6, median(per_call["installed"]) * 1e6
    estimate = (project_statements * project_us + installed_statements * installed_us) / 1000
    print(f"{args.modules}-module project ({nodes} project modules, {edges} edges), p50 of {args.runs} runs:")
    change = f"{on - off:+.1f} ms ({(on / off - 1) * 100:+.1f}%)"
    print(f"  CPU time of the import: without the recorder {off:.0f} ms, with it {on:.0f} ms: {change}")
    print(
        f"  per import statement: +{project_us:.2f} us in project code ({project_statements} of them), "
        f"+{installed_us:.2f} us in installed code ({installed_statements}): "
        f"{estimate:.1f} ms, {estimate / off * 100:.1f}% of the import"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
