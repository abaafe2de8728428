"""The supervisor's decisions, without a process: events in, commands out, on a fake clock.

Each scenario is a list of steps: an event fed to the machine (or `Advance(seconds)` on the
clock) and the commands it must answer with, written short (see `render`). Log lines and
watched files are left out of the comparison; the tests that care look at them separately.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import pytest

from asgireload import _protocol as protocol
from asgireload._protocol import Failure
from asgireload._supervisor import commands as c
from asgireload._supervisor import machineevents as e
from asgireload._supervisor.machine import Machine
from asgireload._supervisor.records import Policy, Worker
from asgireload._supervisor.table import IGNORED, TRANSITIONS, IllegalTransition, Trigger, WorkerStage

T = e.TimerKind
ADDRESS_IN_USE = "OSError: [Errno 98] Address already in use"
ENV_FILE = "/project/.env"
SITE_PTH = "/venv/site-packages/mypkg.pth"
FASTAPI = "/venv/site-packages/fastapi/__init__.py"


@dataclasses.dataclass(frozen=True)
class Advance:
    """Move the fake clock forward."""

    seconds: float


Step = tuple[e.Event | Advance, list[str]]


def render(command: c.Command) -> str | None:
    """A command, short; None for those the scenarios leave out (Log, Watch)."""
    match command:
        case c.Spawn(worker, preload):
            return f"spawn {worker}" + (" preloading" if preload else "")
        case c.Tell(worker, protocol.Load(generation, _, failure)):
            return f"load {worker} gen {generation}" + (f" showing {failure.kind}" if failure else "")
        case c.Tell(worker, protocol.Serve()):
            return f"serve {worker}"
        case c.Tell(worker, protocol.ShowFailure(failure)):
            return f"show {worker} {failure.kind}"
        case c.Tell(worker, protocol.Drain()):
            return f"drain {worker}"
        case c.Kill(worker):
            return f"kill {worker}"
        case c.ReportOutcome(generation, outcome):
            return f"gen {generation} {outcome}"
        case c.ReplaceTemplate():
            return "new template"
        case c.ArmTimer(delay, e.TimerFired(kind, worker)):
            return f"timer {kind.name.lower()}{'' if worker is None else f'({worker})'} {delay:g}"
    return None


class Harness:
    def __init__(self, **policy: object) -> None:
        self.now = 1000.0
        self.env: tuple[Mapping[str, str], Failure | None] = ({}, None)
        policy.setdefault("cwd", "/project")
        self.machine = Machine(Policy(**policy), clock=lambda: self.now, read_env=lambda: self.env)  # type: ignore[arg-type]
        self.commands: list[c.Command] = []  # everything so far, logs included

    def feed(self, event: e.Event | Advance) -> list[str]:
        if isinstance(event, Advance):
            self.now += event.seconds
            return []
        commands = self.machine.handle(event)
        self.commands += commands
        return [text for text in map(render, commands) if text is not None]

    def run(self, steps: list[Step]) -> None:
        for number, (event, expected) in enumerate(steps):
            assert self.feed(event) == expected, f"step {number}: {event}"

    def logs(self, level: int = logging.DEBUG) -> list[str]:
        return [x.text for x in self.commands if isinstance(x, c.Log) and x.level >= level]

    def outcomes(self) -> list[c.ReportOutcome]:
        return [x for x in self.commands if isinstance(x, c.ReportOutcome)]


# ---------------------------------------------------------------- shorthand for events


def started(worker: int) -> e.WorkerStarted:
    return e.WorkerStarted(worker, pid=100 + worker)


def hello(worker: int) -> e.WorkerGreeted:
    return e.WorkerGreeted(worker)


def ready(worker: int, error_page: bool = False) -> e.WorkerReady:
    return e.WorkerReady(worker, error_page)


def failed(worker: int, kind: str = "import", summary: str = "RuntimeError: boom") -> e.WorkerFailed:
    return e.WorkerFailed(worker, Failure(kind, summary, files=("/project/main.py",)))


def exited(worker: int, returncode: int = 0) -> e.WorkerExited:
    return e.WorkerExited(worker, returncode)


def changed(*names: str) -> e.FileChanged:
    return e.FileChanged(tuple(f"/project/{n}" for n in names), since=1000.0)


def timer(kind: e.TimerKind, worker: int | None = None) -> e.TimerFired:
    return e.TimerFired(kind, worker)


def drains(old: int) -> list[str]:
    """Telling worker `old` to drain: the message, then its two deadlines."""
    return [f"drain {old}", f"timer announce_deadline({old}) 1", f"timer kill_deadline({old}) 11"]


def replaces(old: int, by: int, then: str) -> list[str]:
    """Worker `by` is ready: it serves, `old` drains, and `then` (a new standby) is spawned."""
    return [f"serve {by}", *drains(old), then]


# generation 1 serves (worker 1), worker 2 is a warm standby
STARTED: list[Step] = [
    (e.ReloadRequested("start"), ["spawn 1"]),
    (started(1), ["timer slow_start(1) 5"]),  # the load waits for its hello
    (hello(1), ["load 1 gen 1"]),
    (e.FilesReported(1, (("/project/main.py", 1, 2, 3),), ("fastapi",)), []),
    (ready(1), ["serve 1", "gen 1 ready", "spawn 2 preloading"]),
    (started(2), []),
    (hello(2), []),
]

# generation 2 loads on the standby
RELOADING: list[Step] = [
    *STARTED,
    (changed("main.py"), ["load 2 gen 2", "timer slow_start(2) 5"]),
]

SCENARIOS: dict[str, list[Step]] = {
    "start": STARTED,
    "a reload: the new generation serves, then the old one drains, then it is announced": [
        *RELOADING,
        (Advance(0.02), []),
        (ready(2), replaces(1, by=2, then="spawn 3 preloading")),
        (e.WorkerDraining(1), ["gen 2 ready"]),
        (exited(1), []),
        (timer(T.ANNOUNCE_DEADLINE, 1), []),  # stale timers of a worker that is gone
        (timer(T.KILL_DEADLINE, 1), []),
    ],
    "an old generation that never says draining is announced at the deadline, killed at the timeout": [
        *RELOADING,
        (ready(2), replaces(1, by=2, then="spawn 3 preloading")),
        (timer(T.ANNOUNCE_DEADLINE, 1), ["gen 2 ready"]),
        (e.WorkerDraining(1), []),  # said too late: announced once only
        (timer(T.KILL_DEADLINE, 1), ["kill 1"]),
        (exited(1, -9), []),
    ],
    "a reload superseded by a newer change: the loading one is killed and never serves": [
        *RELOADING,
        (changed("other.py"), ["kill 2", "spawn 3 preloading"]),
        (started(3), ["timer slow_start(3) 5"]),
        (hello(3), ["load 3 gen 3"]),
        (ready(2), []),  # the superseded one finished loading: ignored
        (ready(3), replaces(1, by=3, then="spawn 4 preloading")),
        (exited(2, -9), []),  # its exit is no crash
        (e.WorkerDraining(1), ["gen 3 ready"]),
    ],
    "a late standby is replaced by a cold spawn": [
        *STARTED[:5],
        (started(2), []),  # still preloading: no hello
        (changed("main.py"), ["timer standby_late(2) 2", "timer slow_start(2) 5"]),
        (timer(T.STANDBY_LATE, 2), ["kill 2", "spawn 3"]),  # no preloading: that is what hung
        (started(3), ["timer slow_start(3) 5"]),
        (hello(3), ["load 3 gen 3"]),
        (hello(2), []),  # too late
        (ready(3), replaces(1, by=3, then="spawn 4 preloading")),
        (timer(T.SLOW_START, 2), []),
    ],
    "a standby greeted before the late timer loads as usual": [
        *STARTED[:5],
        (started(2), []),
        (changed("main.py"), ["timer standby_late(2) 2", "timer slow_start(2) 5"]),
        (hello(2), ["load 2 gen 2"]),
        (timer(T.STANDBY_LATE, 2), []),
    ],
    "a crash loop backs off, doubling up to 5 s, only the timer restarting": [
        (e.ReloadRequested("start"), ["spawn 1"]),
        (started(1), ["timer slow_start(1) 5"]),
        (hello(1), ["load 1 gen 1"]),
        (exited(1, 1), ["timer retry 0.1", "spawn 2"]),  # the error page loads on a fresh worker
        (started(2), ["timer slow_start(2) 5"]),
        (hello(2), ["load 2 gen 2 showing crash"]),
        (ready(2, error_page=True), ["serve 2", "gen 1 failed", "spawn 3"]),  # nothing to preload yet
        (started(3), []),
        (hello(3), []),
        (timer(T.RETRY), ["load 3 gen 3", "timer slow_start(3) 5"]),
        (exited(3, 1), ["timer retry 0.2", "show 2 crash", "gen 3 failed"]),
        (timer(T.RETRY), ["spawn 4"]),
        (started(4), ["timer slow_start(4) 5"]),
        (hello(4), ["load 4 gen 4"]),
        (exited(4, 1), ["timer retry 0.4", "show 2 crash", "gen 4 failed"]),
    ],
    "a new generation and its error page both crash: the backoff retries the newest code": [
        *RELOADING,
        (exited(2, 1), ["timer retry 0.1", "spawn 3 preloading"]),  # the old one serves meanwhile
        (started(3), ["timer slow_start(3) 5"]),
        (hello(3), ["load 3 gen 3 showing crash"]),
        (exited(3, 1), ["timer retry 0.2", "gen 3 failed"]),
        (timer(T.RETRY), ["spawn 4 preloading"]),  # not the old code for ever
        (started(4), ["timer slow_start(4) 5"]),
        (hello(4), ["load 4 gen 4"]),
        (ready(4), replaces(1, by=4, then="spawn 5 preloading")),
    ],
    "--keep-last-good: a failed reload leaves the last good generation serving": [
        *RELOADING,
        (failed(2), ["kill 2", "gen 2 failed"]),
        (exited(2, -9), []),
        (changed("main.py"), ["spawn 3 preloading"]),
        (started(3), ["timer slow_start(3) 5"]),
        (hello(3), ["load 3 gen 3"]),
        (ready(3), replaces(1, by=3, then="spawn 4 preloading")),
    ],
    "without --keep-last-good a code error replaces a healthy generation once its grace is over": [
        *RELOADING,
        (failed(2), ["timer failure_grace(2) 0.5"]),  # the healthy one serves on meanwhile
        (timer(T.FAILURE_GRACE, 2), ["serve 2", *drains(1), "spawn 3 preloading"]),
        (e.WorkerDraining(1), ["gen 2 failed"]),
    ],
    "a change during a failure's grace supersedes it: nothing failed, the healthy one serves on": [
        *RELOADING,
        (failed(2), ["timer failure_grace(2) 0.5"]),
        (changed("late.py"), ["kill 2", "spawn 3 preloading"]),
        (timer(T.FAILURE_GRACE, 2), []),  # a stale timer
        (started(3), ["timer slow_start(3) 5"]),
        (hello(3), ["load 3 gen 3"]),
        (ready(3), replaces(1, by=3, then="spawn 4 preloading")),
    ],
    "a failure with the error page already serving is shown at once: nothing healthy to keep": [
        *RELOADING,
        (failed(2), ["timer failure_grace(2) 0.5"]),
        (timer(T.FAILURE_GRACE, 2), ["serve 2", *drains(1), "spawn 3 preloading"]),
        (e.WorkerDraining(1), ["gen 2 failed"]),
        (started(3), []),
        (hello(3), []),
        (changed("main.py"), ["load 3 gen 3", "timer slow_start(3) 5"]),
        (failed(3), ["serve 3", *drains(2), "spawn 4 preloading"]),
    ],
    "a failure a held resource can cause is tried once more alone, then shown": [
        *RELOADING,
        (failed(2, summary=ADDRESS_IN_USE), ["kill 2", *drains(1)]),
        (exited(2, -9), []),
        (e.WorkerDraining(1), []),
        (exited(1), ["spawn 3 preloading"]),  # alone now: tried once more
        (started(3), ["timer slow_start(3) 5"]),
        (hello(3), ["load 3 gen 3"]),
        (failed(3, summary=ADDRESS_IN_USE), ["serve 3", "gen 3 failed", "spawn 4 preloading"]),  # the page
    ],
    "a load that works alone after failing beside the old generation makes reloads sequential": [
        *RELOADING,
        (failed(2, summary=ADDRESS_IN_USE), ["kill 2", *drains(1)]),
        (exited(1), []),  # worker 2 still holds what the app holds
        (exited(2, -9), ["spawn 3 preloading"]),
        (started(3), ["timer slow_start(3) 5"]),
        (hello(3), ["load 3 gen 3"]),
        (ready(3), ["serve 3", "gen 3 ready", "spawn 4 preloading"]),
        (started(4), []),
        (hello(4), []),
        (changed("main.py"), drains(3)),
        (exited(3), ["load 4 gen 4", "timer slow_start(4) 5"]),
    ],
    "--sequential: every app-holding worker exits before the next load": [
        *RELOADING[:-1],
        (changed("main.py"), drains(1)),
        (e.WorkerDraining(1), []),
        (changed("other.py"), []),  # folded into the load that waits
        (exited(1), ["load 2 gen 2", "timer slow_start(2) 5"]),
        (ready(2), ["serve 2", "gen 2 ready", "spawn 3 preloading"]),
    ],
    "a usage failure in generation 1 is reported at once, with no error page": [
        (e.ReloadRequested("start"), ["spawn 1"]),
        (started(1), ["timer slow_start(1) 5"]),
        (hello(1), ["load 1 gen 1"]),
        (failed(1, "usage", "cannot import 'main:app'"), ["kill 1", "gen 1 failed"]),
        (exited(1, -9), []),
    ],
    "stop during a load: the serving one drains, the rest is killed": [
        *RELOADING,
        (e.Stop(), ["drain 1", "kill 2"]),
    ],
    "a forced stop kills everything": [
        *RELOADING,
        (ready(2), replaces(1, by=2, then="spawn 3 preloading")),
        (e.Stop(force=True), ["kill 1", "kill 2", "kill 3"]),
    ],
    "a spawn that fails is tried again without preloading, then reported and retried later": [
        (e.ReloadRequested("start"), ["spawn 1"]),
        (e.SpawnFailed(1, "could not start a worker process: Too many open files"), ["spawn 2"]),
        (
            e.SpawnFailed(2, "could not start a worker process: Too many open files"),
            ["gen 1 failed", "timer retry 0.1"],
        ),
        (timer(T.RETRY), ["spawn 3"]),
        (started(3), ["timer slow_start(3) 5"]),
        (hello(3), ["load 3 gen 2"]),
    ],
    "a standby that cannot be spawned is not retried until the next reload": [
        *STARTED[:4],
        (ready(1), ["serve 1", "gen 1 ready", "spawn 2 preloading"]),
        (e.SpawnFailed(2, "could not start a worker process: out of memory"), []),
        (changed("main.py"), ["spawn 3 preloading"]),
    ],
    "a changed env file replaces the standby before the reload": [
        *STARTED,
        (
            e.FileChanged((ENV_FILE,), 1000.0),
            ["kill 2", "spawn 3 preloading", "timer standby_late(3) 2", "timer slow_start(3) 5"],
        ),
        (exited(2, -9), []),
    ],
    "changed packages replace the template, then the standby, without a reload": [
        *STARTED,
        (
            e.PackagesChanged(("/venv/site-packages/fastapi/__init__.py",)),
            ["new template", "kill 2", "spawn 3 preloading"],
        ),
        (exited(2, -9), []),
    ],
    "one install reported twice replaces the template and the standby once": [
        *STARTED,
        (e.PackagesChanged((SITE_PTH,), since=999.0), ["new template", "kill 2", "spawn 3 preloading"]),
        (exited(2, -9), []),
        # the packages' scanner reports the same install later: first seen before the replacement
        (Advance(1.0), []),
        (e.PackagesChanged((FASTAPI,), since=999.5), []),
        # files still being written after the replacement: the template may have missed them
        (e.PackagesChanged((FASTAPI,), since=1000.5), ["new template", "kill 3", "spawn 4 preloading"]),
    ],
    "a standby that dies is replaced; one that dies preloading, without preloading": [
        *STARTED,
        (exited(2, -9), ["spawn 3 preloading"]),
        (exited(3, -9), ["spawn 4"]),
        (exited(4, -9), []),  # the third death in a row: no more, until a generation starts well
    ],
    "a standby that breaks the protocol is replaced at once and never takes a load": [
        *STARTED,
        (e.ChannelBroken(2, "a line that is not JSON"), ["kill 2", "spawn 3 preloading"]),
        # the load waits for worker 3's hello, not for worker 2
        (changed("main.py"), ["timer standby_late(3) 2", "timer slow_start(3) 5"]),
        (exited(2, -9), []),
        (started(3), []),
        (hello(3), ["load 3 gen 2"]),
    ],
    "a worker that breaks the protocol is killed, and its exit counts as a crash": [
        *STARTED[:3],
        (e.ChannelBroken(1, "a line that is not JSON"), ["kill 1"]),
        (exited(1, -9), ["timer retry 0.1", "spawn 2"]),
    ],
    "a crash while serving shows the error page, then the timer restarts the app": [
        *STARTED,
        (exited(1, -11), ["timer retry 0.1", "load 2 gen 2 showing crash", "timer slow_start(2) 5"]),
        (ready(2, error_page=True), ["serve 2", "gen 1 failed", "spawn 3 preloading"]),
    ],
    "a generation paused at a breakpoint is not killed at its drain timeout while it is paused": [
        *RELOADING,
        (e.WorkerPaused(1), []),
        (ready(2), replaces(1, by=2, then="spawn 3 preloading")),  # a reload goes on as usual
        (timer(T.ANNOUNCE_DEADLINE, 1), ["gen 2 ready"]),  # it answers nothing new: announced
        (Advance(60), []),
        (timer(T.KILL_DEADLINE, 1), []),  # paused: left alone
        (e.WorkerResumed(1), ["timer kill_deadline(1) 11"]),  # the drain timeout again, from now
        (e.WorkerPaused(1, announce=False), []),  # a step (`n`): paused again
        (e.WorkerResumed(1), ["timer kill_deadline(1) 11"]),
        (timer(T.KILL_DEADLINE, 1), ["kill 1"]),  # running, and past it: killed as any other
        (exited(1, -9), []),
    ],
    "a pause while serving changes nothing; the same worker drains normally afterwards": [
        *RELOADING,
        (e.WorkerPaused(1), []),
        (e.WorkerResumed(1), []),
        (ready(2), replaces(1, by=2, then="spawn 3 preloading")),
        (timer(T.KILL_DEADLINE, 1), ["kill 1"]),
    ],
    "a pause reported by a killed or exited worker is ignored": [
        *RELOADING,
        (changed("other.py"), ["kill 2", "spawn 3 preloading"]),
        (e.WorkerPaused(2), []),
        (exited(2, -9), []),
        (e.WorkerResumed(2), []),
    ],
}


SCENARIOS["under a debugger (debugpy) a draining generation is never killed at its drain timeout"] = [
    *RELOADING,
    (ready(2), replaces(1, by=2, then="spawn 3 preloading")),
    (timer(T.ANNOUNCE_DEADLINE, 1), ["gen 2 ready"]),
    (timer(T.KILL_DEADLINE, 1), []),  # it may be stopped at a breakpoint nobody told us of
    (e.WorkerDraining(1), []),
    (exited(1), []),
]

# the options a scenario runs with (the others run with the defaults)
OPTIONS: dict[str, dict[str, object]] = {
    "under a debugger (debugpy) a draining generation is never killed at its drain timeout": {
        "under_debugger": True
    },
    "--keep-last-good: a failed reload leaves the last good generation serving": {"keep_last_good": True},
    "--sequential: every app-holding worker exits before the next load": {"sequential": True},
    "a changed env file replaces the standby before the reload": {"env_file": ENV_FILE},
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(name: str) -> None:
    Harness(**OPTIONS.get(name, {})).run(SCENARIOS[name])


def test_the_states_a_user_sees() -> None:
    run = Harness()
    states = [run.machine.state]
    run.run(STARTED)
    states.append(run.machine.state)
    run.feed(changed("main.py"))
    states.append(run.machine.state)
    run.feed(failed(2, summary=ADDRESS_IN_USE))
    states.append(run.machine.state)  # tried once more, alone
    run.feed(exited(2, -9))
    run.feed(exited(1))
    run.run([(started(3), ["timer slow_start(3) 5"]), (hello(3), ["load 3 gen 3"])])
    run.feed(failed(3, summary=ADDRESS_IN_USE))
    states.append(run.machine.state)
    assert states == ["starting", "ready", "reloading", "reloading", "failed"]
    assert run.machine.failure is not None
    assert run.machine.failure.summary == ADDRESS_IN_USE


def test_a_reload_is_timed_and_logged_from_the_change() -> None:
    run = Harness(app="main:app")
    run.run(RELOADING)
    run.feed(Advance(0.03))
    run.feed(ready(2))
    run.feed(Advance(0.01))
    run.feed(e.WorkerDraining(1))
    outcome = run.outcomes()[-1]
    assert (outcome.generation, outcome.outcome, outcome.changed) == (2, "ready", ("/project/main.py",))
    assert outcome.duration == pytest.approx(0.04)
    assert "Reloaded in 40 ms (generation 2): main.py changed" in run.logs(logging.INFO)


def test_the_reloaded_line_counts_the_modules_run_and_the_debug_log_says_which_had_to() -> None:
    def report(worker: int) -> e.FilesReported:
        graph = {"main": ("routes",), "routes": ("models",), "models": (), "other": ()}
        return e.FilesReported(worker, imports=tuple((m, f"/project/{m}.py", i) for m, i in graph.items()))

    run = Harness(app="main:app")
    for event in [*(event for event, _ in STARTED[:3]), report(1), *(event for event, _ in STARTED[4:])]:
        run.feed(event)
    run.feed(changed("models.py"))
    run.feed(report(2))
    run.feed(ready(2))
    run.feed(e.WorkerDraining(1))
    assert any(
        line.endswith("(generation 2): models.py changed; re-ran 4 of 4 project modules")
        for line in run.logs(logging.INFO)
    ), run.logs(logging.INFO)
    assert (
        "Generation 2: the import graph says 3 project modules had to run again: main, routes, models"
        in run.logs(logging.DEBUG)
    )


def test_changes_that_supersede_a_load_are_reported_together() -> None:
    run = Harness()
    run.run(SCENARIOS["a reload superseded by a newer change: the loading one is killed and never serves"])
    assert run.outcomes()[-1].changed == ("/project/main.py", "/project/other.py")
    assert "Generation 2 is superseded by a newer change." in run.logs()


def test_the_backoff_is_capped_and_a_change_resets_it() -> None:
    run = Harness()
    run.run(SCENARIOS["a crash loop backs off, doubling up to 5 s, only the timer restarting"])
    worker = 4
    for expected in (0.8, 1.6, 3.2, 5.0, 5.0):
        run.feed(timer(T.RETRY))
        worker = max(run.machine.workers)
        run.feed(started(worker))
        run.feed(hello(worker))
        assert f"timer retry {expected:g}" in run.feed(exited(worker, 1))
    run.feed(changed("main.py"))
    worker = max(run.machine.workers)
    run.feed(started(worker))
    run.feed(hello(worker))
    assert "timer retry 0.1" in run.feed(exited(worker, 1))


def test_a_failed_load_beside_an_older_generation_says_so_then_goes_sequential() -> None:
    run = Harness()
    run.run(
        SCENARIOS["a load that works alone after failing beside the old generation makes reloads sequential"]
    )
    said = run.logs()
    assert any("trying once more" in line for line in said)
    assert sum("Reloading sequentially from now on" in line for line in said) == 1


def test_keep_last_good_names_sequential_when_the_old_generation_was_running() -> None:
    run = Harness(keep_last_good=True)
    run.run(RELOADING)
    run.feed(failed(2, summary="OSError: [Errno 98] Address already in use"))
    errors = run.logs(logging.ERROR)
    assert len(errors) == 1
    assert errors[0].startswith(
        "Generation 2 failed: OSError: [Errno 98] Address already in use (fix main.py;"
    )
    assert errors[0].endswith("if the app holds a port or a lock at import, pass --sequential.")
    assert "Keeping generation 1 serving until the error is fixed." in run.logs(logging.WARNING)


def test_a_broken_env_file_loads_the_error_page_and_reports_the_failure_once_it_serves() -> None:
    run = Harness(env_file=ENV_FILE)
    run.run(STARTED)
    run.env = ({}, Failure("env", f"{ENV_FILE}, line 3: no '=' (expected KEY=VALUE)", files=(ENV_FILE,)))
    assert run.feed(changed("main.py")) == ["load 2 gen 2 showing env", "timer slow_start(2) 5"]
    watched = [x for x in run.commands if isinstance(x, c.Watch) and ENV_FILE in x.paths]
    assert watched  # fixing the env file reloads
    assert run.feed(ready(2, error_page=True))[:2] == ["serve 2", "drain 1"]
    assert run.feed(e.WorkerDraining(1)) == ["gen 2 failed"]


def test_a_workers_stage_follows_its_life_one_value_at_a_time() -> None:
    """How far a worker got is its stage alone: warming, warm, importing, starting up, serving,
    draining, gone; a failure that waits for the rest of a save keeps it FAILED."""
    run = Harness()
    stages: list[tuple[int, str]] = []

    def feed(event: e.Event) -> None:
        run.feed(event)
        stages.extend((w.id, w.stage.name) for w in run.machine.workers.values() if w.id == 2)

    run.run(STARTED[:5])
    for event in (started(2), hello(2), changed("main.py"), e.FilesReported(2), ready(2)):
        feed(event)
    feed(changed("main.py"))  # generation 3 on the new standby (worker 3): worker 2 serves on
    feed(e.WorkerDraining(1))
    assert [stage for _, stage in stages] == [
        "WARMING",
        "WARM",
        "IMPORTING",
        "STARTING_UP",
        "SERVING",
        "SERVING",
        "SERVING",
    ]
    run.run([(started(3), []), (hello(3), ["load 3 gen 3"])])
    run.feed(failed(3))
    assert run.machine.workers[3].stage is WorkerStage.FAILED  # its failure waits FAILURE_GRACE
    run.feed(timer(T.FAILURE_GRACE, 3))
    assert run.machine.workers[3].stage is WorkerStage.SERVING
    assert run.machine.workers[2].stage is WorkerStage.DRAINING
    run.feed(exited(2))
    assert 2 not in run.machine.workers


def test_a_load_for_a_worker_not_yet_started_is_one_pending_value() -> None:
    """A worker spawned for a load has its load prepared once it runs and sent at its hello."""
    run = Harness(standby=False)
    run.feed(e.ReloadRequested("start"))
    worker = run.machine.workers[1]
    assert worker.stage is WorkerStage.STARTING
    assert worker.pending_load is not None
    assert worker.pending_load.message is None
    run.feed(started(1))
    assert worker.pending_load is not None
    assert worker.pending_load.message is not None
    assert worker.pending_load.message.generation == 1
    assert run.feed(hello(1)) == ["load 1 gen 1"]
    assert worker.pending_load is None
    assert worker.stage is WorkerStage.IMPORTING


def test_a_slow_start_is_reported_every_five_seconds() -> None:
    run = Harness(app="main:app")
    run.run(RELOADING)
    run.feed(Advance(5))
    assert run.feed(timer(T.SLOW_START, 2)) == ["timer slow_start(2) 5"]
    assert (
        run.logs(logging.WARNING)[-1]
        == "Generation 2 is still starting after 5 s: importing main:app (pid 102)."
    )


def test_files_reported_are_watched_and_their_modules_preloaded_next_time() -> None:
    run = Harness()
    run.run(STARTED)
    assert c.Spawn(2, ("fastapi",)) in run.commands
    assert c.Watch(reported=(("/project/main.py", 1, 2, 3),)) in run.commands


def test_a_preload_that_fails_is_dropped_and_said_once() -> None:
    run = Harness()
    run.run(STARTED[:5])
    run.feed(started(2))
    run.feed(e.WorkerGreeted(2, (("fastapi", "RuntimeError: unset"),)))
    assert run.machine.preload == []
    run.feed(e.FilesReported(1, (), ("fastapi",)))  # learnt again: still not preloaded
    assert run.machine.preload == []
    assert [line for line in run.logs() if "Preloading 'fastapi' failed" in line] == [
        "Preloading 'fastapi' failed (RuntimeError: unset); it is imported with the app instead."
    ]


def test_every_preload_that_failed_in_a_worker_is_dropped_in_one_warning_a_run() -> None:
    """A framework whose models need its settings (Django's contrib apps) fails alike in many
    modules: one warning for all of them, not one per reload naming the next."""
    run = Harness()
    run.run(STARTED[:5])
    run.feed(e.FilesReported(1, (), ("django.contrib.auth.models", "django.contrib.admin.models", "six")))
    run.feed(started(2))
    failing = ("fastapi", *run.machine.preload[1:3])
    errors = tuple((name, "ImproperlyConfigured: settings") for name in failing)
    run.feed(e.WorkerGreeted(2, errors))
    assert run.machine.preload == ["six"]
    assert run.logs(logging.WARNING) == [
        "Preloading 'fastapi' failed (ImproperlyConfigured: settings), and 2 more "
        "('django.contrib.auth.models', 'django.contrib.admin.models'); they are imported with the app "
        "instead."
    ]
    run.feed(e.FilesReported(1, (), ("jinja2",)))  # learnt later, and failing too: said at debug level
    run.feed(e.WorkerGreeted(2, (("jinja2", "OSError: x"),)))
    assert run.machine.preload == ["six"]
    assert len(run.logs(logging.WARNING)) == 1
    assert any(line.startswith("Preloading 'jinja2' failed") for line in run.logs())


def test_a_hello_naming_a_failed_preload_twice_drops_it_once() -> None:
    """The machine never trusts a worker's line to be tidy: garbage ends a worker, not the supervisor."""
    run = Harness()
    run.run(STARTED[:5])
    run.feed(e.FilesReported(1, (), ("six", "jinja2")))
    run.feed(started(2))
    before = list(run.machine.preload)
    run.feed(e.WorkerGreeted(2, (("six", "OSError: x"), ("six", "OSError: y"))))
    assert run.machine.preload == [name for name in before if name != "six"]
    assert len(run.logs(logging.WARNING)) == 1


def test_a_paused_drain_says_once_what_happens_to_the_paused_request() -> None:
    run = Harness()
    run.run(RELOADING)
    run.feed(e.WorkerPaused(1))
    run.feed(ready(2))
    run.feed(e.WorkerResumed(1))
    run.feed(e.WorkerPaused(1, announce=False))  # a step at the prompt: not said again
    run.feed(timer(T.KILL_DEADLINE, 1))
    said = [line for line in run.logs() if "paused" in line]
    assert said == [
        "Generation 1 is paused at a breakpoint: generation 2 serves new requests, and the paused "
        "request finishes on generation 1's code when you continue; then it exits (no drain timeout "
        "while it is paused).",
        "Generation 1 is past its drain timeout, but paused at a breakpoint: it is left to finish once "
        "you continue.",
    ]
    assert not [line for line in run.logs() if "killing" in line]


def test_a_start_up_breakpoint_superseded_by_a_change_says_its_session_ended() -> None:
    run = Harness()
    run.run(RELOADING)
    run.feed(e.WorkerPaused(2))  # generation 2 stopped at a breakpoint while importing
    run.feed(changed("other.py"))
    assert "Generation 2 is superseded by a newer change; its debugger session was ended." in run.logs()


def test_time_at_a_breakpoint_is_not_counted_as_reload_time() -> None:
    run = Harness(app="main:app")
    run.run(RELOADING)
    run.feed(Advance(0.01))
    run.feed(e.WorkerPaused(2))  # a breakpoint in lifespan start-up
    run.feed(Advance(8.0))
    run.feed(e.WorkerResumed(2))
    run.feed(Advance(0.02))
    run.feed(ready(2))
    run.feed(e.WorkerDraining(1))
    assert "Reloaded in 30 ms (generation 2): main.py changed" in run.logs(logging.INFO)


# ---------------------------------------------------------------- illegal events


def event_for(trigger: Trigger, worker: int) -> e.WorkerEvent | None:
    """An event that is `trigger` for `worker` (None for the machine's own decisions)."""
    events: dict[Trigger, e.WorkerEvent] = {
        Trigger.STARTED: started(worker),
        Trigger.SPAWN_FAILED: e.SpawnFailed(worker, "no"),
        Trigger.HELLO: hello(worker),
        Trigger.FILES: e.FilesReported(worker),
        Trigger.READY: ready(worker),
        Trigger.FAILED: failed(worker),
        Trigger.DRAINING: e.WorkerDraining(worker),
        Trigger.EXITED: exited(worker),
        Trigger.BROKE: e.ChannelBroken(worker, "garbage"),
        Trigger.SLOW_START: timer(T.SLOW_START, worker),
        Trigger.STANDBY_LATE: timer(T.STANDBY_LATE, worker),
        Trigger.ANNOUNCE_DEADLINE: timer(T.ANNOUNCE_DEADLINE, worker),
        Trigger.KILL_DEADLINE: timer(T.KILL_DEADLINE, worker),
        Trigger.FAILURE_GRACE: timer(T.FAILURE_GRACE, worker),
        Trigger.PAUSED: e.WorkerPaused(worker),
        Trigger.RESUMED: e.WorkerResumed(worker),
    }
    return events.get(trigger)


ILLEGAL = [
    (stage, trigger)
    for stage in WorkerStage
    for trigger in Trigger
    if (stage, trigger) not in TRANSITIONS and event_for(trigger, 7) is not None
]


@pytest.mark.parametrize(
    ("stage", "trigger"), ILLEGAL, ids=[f"{s.name.lower()}-{t.name.lower()}" for s, t in ILLEGAL]
)
def test_an_illegal_event_names_the_state_and_the_event(stage: WorkerStage, trigger: Trigger) -> None:
    run = Harness()
    if stage is not WorkerStage.GONE:
        run.machine.workers[7] = Worker(7, stage, generation=1)
    event = event_for(trigger, 7)
    assert event is not None
    with pytest.raises(IllegalTransition) as raised:
        run.machine.handle(event)
    assert f"is {stage.value}, and '{trigger.value}' cannot happen to a {stage.value} worker" in str(
        raised.value
    )


def test_the_illegal_list_is_not_empty_and_ignored_events_change_nothing() -> None:
    assert len(ILLEGAL) > 20
    for (stage, trigger), allowed in TRANSITIONS.items():
        event = event_for(trigger, 7)
        if allowed is not IGNORED or event is None:
            continue
        run = Harness()
        if stage is not WorkerStage.GONE:
            run.machine.workers[7] = Worker(7, stage, generation=1)
        assert run.machine.handle(event) == [], (stage, trigger)
        assert run.machine.workers.get(7, Worker(7, WorkerStage.GONE)).stage is stage


def test_nothing_happens_after_stop() -> None:
    run = Harness()
    run.run(STARTED)
    run.feed(e.Stop())
    with pytest.raises(IllegalTransition, match=r"The server has stopped, so .*FileChanged.* cannot happen"):
        run.feed(changed("main.py"))


def test_a_decision_the_table_does_not_allow_is_an_error_too() -> None:
    run = Harness()
    run.machine.workers[7] = Worker(7, WorkerStage.DRAINING, generation=1)
    with pytest.raises(
        IllegalTransition, match="Worker 7 is draining: a draining worker cannot be moved because"
    ):
        run.machine.roster.move(run.machine.workers[7], Trigger.LOAD)


@pytest.mark.parametrize(
    ("kind", "summary", "retried"),
    [
        ("import", ADDRESS_IN_USE, True),
        ("import", "sqlite3.OperationalError: database is locked", True),
        ("import", "PermissionError: [Errno 13] Permission denied: '/run/app.pid'", True),
        ("lifespan", "RuntimeError: could not connect", True),
        ("import", "SyntaxError: invalid syntax (main.py, line 3)", False),
        ("import", "ModuleNotFoundError: No module named 'helpers'", False),
        ("import", "NameError: name 'x' is not defined", False),
    ],
)
def test_only_failures_a_held_resource_can_cause_are_retried(kind: str, summary: str, retried: bool) -> None:
    run = Harness()
    run.run(RELOADING)
    answer = run.feed(failed(2, kind=kind, summary=summary))
    assert (answer[0] == "kill 2") is retried, answer
    assert (answer[0] == "timer failure_grace(2) 0.5") is (not retried), answer  # then the page


def test_a_merged_change_keeps_the_retry_and_a_healthy_generation_resets_the_backoff() -> None:
    run = Harness()
    run.run(RELOADING)
    run.feed(failed(2, summary=ADDRESS_IN_USE))
    run.feed(changed("other.py"))  # lands while the retry waits for the old generation to exit
    run.feed(exited(2, -9))
    assert run.feed(exited(1)) == ["spawn 3 preloading"]
    run.feed(started(3))
    run.feed(hello(3))
    run.feed(ready(3))
    assert sum("Reloading sequentially from now on" in line for line in run.logs()) == 1


def test_a_worker_that_dies_during_its_failures_grace_shows_that_failure() -> None:
    run = Harness()
    run.run(
        SCENARIOS[
            "without --keep-last-good a code error replaces a healthy generation once its grace is over"
        ][:-2]
    )
    run.feed(exited(2, -9))
    assert run.machine.failure is not None
    assert run.machine.failure.summary == "RuntimeError: boom"


def test_a_failure_superseded_during_its_grace_is_never_reported() -> None:
    run = Harness()
    run.run(
        SCENARIOS[
            "a change during a failure's grace supersedes it: nothing failed, the healthy one serves on"
        ]
    )
    run.feed(e.WorkerDraining(1))
    assert run.logs(logging.WARNING) == []
    assert [(o.generation, o.outcome) for o in run.outcomes()] == [(1, "ready"), (3, "ready")]
    assert run.machine.failure is None
    # the module the failed load did not find was watched as missing, so its creation is a change
    run2 = Harness()
    run2.run(RELOADING)
    missing = Failure("import", "ModuleNotFoundError: No module named 'late'", missing=("/project/late.py",))
    run2.feed(e.WorkerFailed(2, missing))
    assert (
        c.Watch(reported=(("/project/late.py", None, None, None),), paths=("/project/late.py",))
        in run2.commands
    )
