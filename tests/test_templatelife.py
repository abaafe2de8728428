"""The fork server's decisions about its templates, without a process: events in, commands out.

Each scenario is a list of steps: an event fed to `TemplateLife.handle`, or a fork request
routed (`Route`), and the commands it must answer with, written short (see `render`). LogLine lines
are left out of the comparison; the tests that care look at them separately.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from asgireload._protocol import Settings
from asgireload._supervisor import templatetable as tt
from asgireload._supervisor.table import IllegalTransition
from asgireload._supervisor.templatelife import (
    FORK_WAIT,
    MAX_DEATHS,
    READY_WAIT,
    WARM_WAIT,
    TemplateLife,
    forking_off,
    missing_modules,
    unlike_now,
)
from asgireload._supervisor.templatetable import Stage, TemplateTrigger

SETTINGS = Settings(
    app="main:app",
    factory=False,
    app_dir="/project",
    roots=("/project",),
    includes=(),
    excludes=(),
    drain_timeout=5.0,
    show_errors=True,
    only_loopback_hosts=True,
    env={},
    preload=("starlette",),
    uvicorn={},
    handoff_fd=-1,
    listen_fd=-1,
)
WAITS = {READY_WAIT: "ready wait", FORK_WAIT: "fork wait", WARM_WAIT: "warm wait"}


def wanting(*preload: str, env: dict[str, str] | None = None) -> Settings:
    """A worker's settings, as a fork request carries them."""
    return dataclasses.replace(SETTINGS, preload=(*SETTINGS.preload, *preload), env=env or {})


@dataclasses.dataclass(frozen=True)
class Route:
    """Route the fork request named `name` (made on first use) once more."""

    name: str
    wanted: Settings = SETTINGS
    timed_out: bool = False
    environment_changed: str | None = None


def render(command: tt.Command) -> str | None:
    """A command, short; None for LogLine lines."""
    match command:
        case tt.Launch(template):
            return f"launch {template}"
        case tt.TakeEarly(template):
            return f"take the early one as {template}"
        case tt.EndEarly():
            return "end the early one"
        case tt.Retire(template):
            return f"retire {template}"
        case tt.End(template):
            return f"end {template}"
        case tt.Preload(template, modules):
            return f"preload {','.join(modules)} in {template}"
        case tt.Fork(template, wait):
            return f"fork from {template} ({WAITS[wait]})"
        case tt.Wait(deadline):
            return f"wait ({WAITS[deadline]})"
        case tt.SpawnInstead():
            return "spawn"
    return None


def hello(template: int, threads: int = 1) -> tt.Greeted:
    return tt.Greeted(template, threads, frozenset({"uvicorn"}))


def warm(template: int, *modules: str, failed: tuple[str, ...] = (), threads: int = 1) -> tt.Warmed:
    return tt.Warmed(template, threads, frozenset({"uvicorn", *modules}), failed, len(modules))


class Harness:
    def __init__(self) -> None:
        self.life = TemplateLife()
        self.requests: dict[str, tt.ForkRequest] = {}
        self.commands: list[tt.Command] = []  # everything so far, logs included

    def feed(self, step: tt.Event | Route) -> list[str]:
        if isinstance(step, Route):
            request = self.requests.setdefault(step.name, tt.ForkRequest(step.wanted))
            request.timed_out = step.timed_out
            request.environment_changed = step.environment_changed
            commands = self.life.route(request)
            assert isinstance(commands[-1], tt.Fork | tt.Wait | tt.SpawnInstead), commands
        else:
            commands = self.life.handle(step)
        self.commands += commands
        return [text for text in map(render, commands) if text is not None]

    def run(self, steps: list[tuple[tt.Event | Route, list[str]]]) -> None:
        for number, (step, expected) in enumerate(steps):
            assert self.feed(step) == expected, f"step {number}: {step}"

    def logs(self) -> list[str]:
        return [c.message for c in self.commands if isinstance(c, tt.LogLine)]

    def stage(self, template: int) -> Stage:
        return self.life.templates[template].stage


def started(*more: tuple[tt.Event | Route, list[str]]) -> Harness:
    """A harness whose first template (1) said hello and warm, then `more`."""
    harness = Harness()
    harness.run(
        [
            (tt.Start(SETTINGS), ["launch 1"]),
            (tt.Launched(1, 101), []),
            (hello(1), []),
            (warm(1, "starlette"), []),
            *more,
        ]
    )
    return harness


# ------------------------------------------------------------------ forking


def test_a_warm_template_forks_at_once() -> None:
    harness = started((Route("a"), ["fork from 1 (fork wait)"]))
    assert harness.stage(1) is Stage.WARM
    assert "The fork server is ready (pid 101, 1 modules preloaded)." in harness.logs()


def test_a_request_waits_while_the_template_launches_and_is_sent_while_it_imports_uvicorn() -> None:
    # still importing uvicorn: the request waits in its channel, behind the modules it lacks
    Harness().run(
        [
            (tt.Start(SETTINGS), ["launch 1"]),  # with the first worker
            (Route("a"), ["wait (ready wait)"]),
            (tt.Launched(1, 101), []),
            (Route("a"), ["preload starlette in 1", "fork from 1 (warm wait)"]),
        ]
    )


def test_a_template_importing_its_preload_list_is_waited_for() -> None:
    Harness().run(
        [
            (tt.Start(SETTINGS), ["launch 1"]),
            (tt.Launched(1, 101), []),
            (hello(1), []),
            (Route("a"), ["wait (warm wait)"]),
            (Route("a"), ["wait (warm wait)"]),  # woken by something else: it waits on
            (warm(1, "starlette"), []),
            (Route("a"), ["fork from 1 (fork wait)"]),
        ]
    )


def test_what_cannot_be_had_in_time_is_spawned() -> None:
    harness = Harness()
    harness.run(
        [
            (tt.Start(SETTINGS), ["launch 1"]),
            (Route("launching"), ["wait (ready wait)"]),
            (Route("launching", timed_out=True), ["spawn"]),
            (tt.Launched(1, 101), []),
            (hello(1), []),
            (Route("warming"), ["wait (warm wait)"]),
            (Route("warming", timed_out=True), ["spawn"]),  # said nothing: the warm-up is slow
        ]
    )
    assert harness.logs() == ["The fork server is not ready yet; spawning this worker."]


def test_the_modules_the_app_imports_and_the_template_lacks_are_imported_first() -> None:
    harness = started(
        (
            Route("a", wanting("httpx", "json", "_sysconfigdata_x86")),
            ["preload httpx in 1", "fork from 1 (warm wait)"],
        ),
        (Route("b", wanting("httpx")), ["fork from 1 (fork wait)"]),  # asked once
        (warm(1, "httpx", failed=("broken",)), []),
        (Route("c", wanting("broken")), ["fork from 1 (fork wait)"]),  # it failed there: not again
    )
    assert harness.life.settings is not None
    assert "httpx" in harness.life.settings.preload  # the next template imports it from the start
    assert (
        "The fork server could not import ['broken']; workers will import them themselves." in harness.logs()
    )


def test_missing_modules_leave_out_the_standard_library() -> None:
    assert missing_modules(
        ["json.decoder", "_sysconfigdata__linux", "httpx", "uvicorn"], frozenset({"uvicorn"})
    ) == ["httpx"]


# ------------------------------------------------------------------ replacing templates


def test_a_package_change_retires_a_template_that_forked_and_ends_one_that_did_not() -> None:
    harness = started(
        (tt.InstalledPackagesChanged(), ["end 1", "launch 2"]),  # never forked: nothing to wait for
        (tt.Launched(2, 102), []),
        (hello(2), []),
        (warm(2, "starlette"), []),
        (Route("a"), ["fork from 2 (fork wait)"]),
        (tt.Forked(2), []),
        (tt.InstalledPackagesChanged(), ["retire 2", "launch 3"]),  # it reaps its workers, then exits
        (tt.Exited(2), []),  # a retired template's exit is no death
        (tt.Exited(1), []),
    )
    assert harness.life.deaths == 0
    assert harness.life.current == 3


def test_an_env_file_change_replaces_the_template_before_the_fork() -> None:
    harness = started(
        (Route("a", wanting(env={"A": "2"})), ["end 1", "launch 2", "wait (ready wait)"]),
        (tt.Launched(2, 102), []),
        (hello(2), []),
        (Route("a", wanting(env={"A": "2"})), ["wait (warm wait)"]),
    )
    assert harness.life.templates[2].settings.env == {"A": "2"}
    assert "The environment changed (env file); starting a new fork server." in harness.logs()


def test_a_variable_changed_in_the_supervisor_replaces_the_template_before_the_fork() -> None:
    harness = started(
        (Route("a", environment_changed="DATABASE_URL"), ["end 1", "launch 2", "wait (ready wait)"]),
        (tt.Launched(2, 102), []),
        (Route("a"), ["preload starlette in 2", "fork from 2 (warm wait)"]),  # checked once
    )
    assert "The environment changed (DATABASE_URL); starting a new fork server." in harness.logs()


def test_a_template_replaced_while_it_launches_is_ended_once_launched() -> None:
    Harness().run(
        [
            (tt.Start(SETTINGS), ["launch 1"]),
            (tt.InstalledPackagesChanged(), ["launch 2"]),
            (tt.Launched(1, 101), ["end 1"]),
            (tt.Launched(2, 102), []),
        ]
    )


def test_a_failed_fork_replaces_the_template() -> None:
    harness = started(
        (Route("a"), ["fork from 1 (fork wait)"]),
        (tt.ForkFailed(1, "no answer"), ["end 1", "launch 2"]),
        (tt.ForkFailed(1, "the fork server ended"), []),  # an older request's: the old template
    )
    assert harness.life.deaths == 1
    assert harness.logs().count("The fork server could not fork a worker (no answer); spawning it.") == 1


# ------------------------------------------------------------------ giving up


def test_a_dead_template_is_replaced_a_few_times_then_workers_are_spawned() -> None:
    harness = started(
        (tt.Exited(1), ["launch 2"]),
        (tt.Launched(2, 102), []),
        (tt.Exited(2), ["launch 3"]),  # died before its hello
        (tt.Launched(3, 103), []),
        (tt.Exited(3), []),
        (Route("a"), ["spawn"]),
        (tt.InstalledPackagesChanged(), []),
    )
    assert harness.life.deaths == MAX_DEATHS
    assert harness.life.off == "the fork server died 3 times, the last before it was ready"
    assert harness.logs()[-1] == (
        "Spawning workers instead of forking them: the fork server died 3 times, the last before it was "
        "ready."
    )


def test_threads_in_the_template_turn_forking_off_said_once() -> None:
    harness = started(
        (Route("a"), ["fork from 1 (fork wait)"]),
        (tt.Forked(1), []),
        (warm(1, "threadpkg", threads=2), ["retire 1"]),  # it imported a package that starts one
        (Route("b"), ["spawn"]),
        (tt.Exited(1), []),
        (tt.Start(SETTINGS), []),
    )
    said = [line for line in harness.logs() if line.startswith("Spawning workers instead")]
    assert said == [
        "Spawning workers instead of forking them: 2 threads were running in the fork server after its "
        "imports."
    ]
    assert all(c.level == logging.DEBUG for c in harness.commands if isinstance(c, tt.LogLine))


def test_a_template_with_threads_at_hello_is_ended() -> None:
    harness = Harness()
    harness.run(
        [(tt.Start(SETTINGS), ["launch 1"]), (tt.Launched(1, 101), []), (hello(1, threads=3), ["end 1"])]
    )
    assert harness.stage(1) is Stage.ENDING
    assert harness.life.off is not None


def test_a_launch_the_os_refuses_turns_forking_off() -> None:
    harness = Harness()
    harness.run(
        [
            (tt.Start(SETTINGS), ["launch 1"]),
            (tt.LaunchFailed(1, "could not start the fork server: no memory"), []),
            (Route("a"), ["spawn"]),
        ]
    )
    assert harness.life.templates == {}


def test_stopping_ends_every_template_and_launches_no_more() -> None:
    harness = started(
        (tt.Forked(1), []),
        (tt.InstalledPackagesChanged(), ["retire 1", "launch 2"]),
        (tt.Close(), ["end the early one", "end 1"]),  # 2 is still launching: ended once launched
        (tt.Launched(2, 102), ["end 2"]),
        (tt.Exited(1), []),
        (tt.Exited(2), []),
        (Route("a"), ["spawn"]),
    )
    assert harness.life.templates == {}


# ------------------------------------------------------------------ the command's early template


def test_the_early_template_is_taken_if_it_is_the_one_that_would_start_now() -> None:
    harness = Harness()
    harness.run(
        [
            (tt.Start(SETTINGS), ["launch 1"]),
            (tt.EarlyFound(1, 99, None), ["take the early one as 1"]),
            (tt.Start(SETTINGS), ["launch 2"]),
            (tt.EarlyFound(2, 98, "has an older environment (PATH changed)"), ["end the early one"]),
        ]
    )
    assert harness.logs() == [
        "The fork server is the one the command started first (pid 99).",
        "Starting the fork server again: the one the command started has an older environment "
        "(PATH changed).",
    ]


@pytest.mark.parametrize(
    ("capture", "env", "changed", "expected"),
    [
        (False, {}, None, None),
        (True, {}, None, "writes to the terminal, and the output is captured"),
        (False, {"A": "1"}, None, "imported its modules before the env file's values were set"),
        (False, {}, "PATH", "has an older environment (PATH changed)"),
    ],
)
def test_unlike_now(capture: bool, env: dict[str, str], changed: str | None, expected: str | None) -> None:
    assert unlike_now(capture, env, changed) == expected


def test_forking_off() -> None:
    assert forking_off(True, True, True, None) == (False, None)
    assert forking_off(False, True, True, None) == (True, None)  # --no-fork: nothing to say
    assert forking_off(True, True, False, "needs Linux") == (True, None)
    assert forking_off(True, True, True, "needs Linux") == (True, "needs Linux")


# ------------------------------------------------------------------ the table


def test_a_message_a_template_could_not_send_now_is_refused() -> None:
    harness = started()
    assert not harness.life.allows(1, TemplateTrigger.HELLO)  # a second hello
    assert harness.life.allows(1, TemplateTrigger.WARM)
    with pytest.raises(IllegalTransition, match="Template 1 is warm, and 'it said hello' cannot happen"):
        harness.life.handle(hello(1))


def test_a_broken_wire_ends_the_template_and_its_exit_replaces_it() -> None:
    harness = started(
        (tt.WireBroken(1, "The fork server sent {'type': 'nonsense'}; ending it."), ["end 1"]),
        (tt.Exited(1), ["launch 2"]),
    )
    assert harness.life.deaths == 1


def test_every_stage_but_gone_can_end_and_exit() -> None:
    for stage in Stage:
        if stage not in (Stage.GONE, Stage.LAUNCHING):
            assert (stage, TemplateTrigger.EXITED) in tt.TRANSITIONS, stage
            assert (stage, TemplateTrigger.END) in tt.TRANSITIONS, stage
    assert not any(stage is Stage.GONE for stage, _ in tt.TRANSITIONS)


def test_with_no_settings_yet_a_request_spawns_and_launches_nothing() -> None:
    Harness().run([(Route("a"), ["spawn"])])


def test_a_template_dead_again_once_replaced_launches_the_next_from_the_settings() -> None:
    # killed while the request waited: the request waits for the next one
    started(
        (tt.Exited(1), ["launch 2"]),
        (Route("a"), ["wait (ready wait)"]),
        (tt.Launched(2, 102), []),
        (Route("a"), ["preload starlette in 2", "fork from 2 (warm wait)"]),
    )
