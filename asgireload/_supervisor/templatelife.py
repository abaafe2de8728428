"""The fork server's decisions about its templates, as a table with no I/O and no asyncio.

`TemplateLife.handle(event)` takes what happened to a template (or to the fork server) and
returns the commands the fork server must carry out; `TemplateLife.route(request)` says what a
fork request does next: fork from a template, wait for one, or spawn the worker instead. The
fork server (forkserver.py) only launches templates, reads their wire, sends fork requests and
carries out these commands: every decision about templates is made here, so a test drives it
with events and checks the commands, with no process (tests/test_templatelife.py).

Each template has one stage. Its life, with the trigger of every move (TRANSITIONS says the
same as a table, and every move is checked against it):

    LAUNCHING ──launched──▶ STARTING ──hello──▶ FORKABLE ──warm──▶ WARM ──warm──▶ WARM
        │                  (importing uvicorn)  (importing its      (it imported more,
        │ launch failed                          preload list)       on request)
        ▼                         FORKABLE or WARM ──retire (it forked workers)──▶ RETIRED
      GONE ◀──exited── ENDING ◀──end (it never forked, broke its wire, the server stops)── any

Which template forks is the fork server's current one. It is replaced (the old one retired if
it forked workers, which it reaps, else ended) when an installed package changed, when a fork
request carries other env file values than it imported with, and when a fork from it failed. A
current template that exits is replaced without a reload; after MAX_DEATHS deaths, or a thread
running in a template (fork copies only the calling thread), or a launch the OS refuses, forking
is given up for good and every worker is spawned: said once, at debug level.

A fork request (`ForkRequest`) goes through phases: USABLE (a current template that can take it,
one launched if there is none, within READY_WAIT), once more after an env file change replaced
the template, WARMING (a template importing its preload list is waited for, up to WARM_WAIT),
then the fork; the modules the app imports that the template lacks are sent to it to import
first. Whatever cannot be had in time is spawned instead.

A pair (stage, trigger) that is not in the table raises IllegalTransition: a bug, never ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterable, Mapping
from typing import Final

from .._protocol import Settings
from . import templatetable as tt
from .table import IllegalTransition
from .templatetable import TRANSITIONS, ForkRequest, Phase, Stage, TemplateRecord, TemplateTrigger

READY_WAIT: Final = 2.0  # seconds a fork request waits for a template still launching, then spawns
FORK_WAIT: Final = 5.0  # seconds a fork request waits for the template's answer
WARM_WAIT: Final = 60.0  # seconds a fork waits for a template importing the preload list, then spawns
MAX_DEATHS: Final = 3  # templates that die before forking is given up


# ------------------------------------------------------------------ the decisions


class TemplateLife:
    """Every decision about the fork server's templates. Feed it events; carry out the commands."""

    def __init__(self) -> None:
        self.templates: dict[int, TemplateRecord] = {}  # not yet gone
        self.current: int | None = None  # the template forks come from
        self.settings: Settings | None = None  # the next template's (its preload list grows)
        self.off: str | None = None  # why forking was given up, for good
        self.closing = False
        self.deaths = 0
        self._next_id = 0
        self._out: list[tt.Command] = []

    @property
    def current_record(self) -> TemplateRecord | None:
        return self.templates.get(self.current) if self.current is not None else None

    def handle(self, event: tt.Event) -> list[tt.Command]:
        self._out = []
        match event:
            case tt.Start(settings):
                self._start(settings)
            case tt.InstalledPackagesChanged():
                self._replace()
            case tt.Close():
                self.closing = True
                self._out.append(tt.EndEarly())
                for record in list(self.templates.values()):
                    if record.stage is not Stage.ENDING:
                        self._end(record)
            case _:
                self._template_event(event)
        out, self._out = self._out, []
        return out

    def allows(self, template: int, trigger: TemplateTrigger) -> bool:
        """Whether `trigger` may happen to this template now (what it says is checked with this
        where it is read: a message it could not send now ends it, never the supervisor)."""
        record = self.templates.get(template)
        return record is not None and (record.stage, trigger) in TRANSITIONS

    def launching(self, template: int) -> bool:
        """Whether this template is still to be launched (not replaced or stopped meanwhile)."""
        record = self.templates.get(template)
        return record is not None and record.stage is Stage.LAUNCHING

    def _template_event(self, event: tt.Event) -> None:
        if isinstance(event, tt.ForkFailed):
            self._log(logging.DEBUG, f"The fork server could not fork a worker ({event.why}); spawning it.")
        record = self.templates.get(getattr(event, "template", -1))
        if record is None:
            return  # a template that is gone: only a stale fork failure can still name it
        match event:
            case tt.Launched(_, pid):
                record.pid = pid
                self._move(record, TemplateTrigger.LAUNCHED)
                if record.stage is Stage.ENDING:
                    self._out.append(tt.End(record.id))  # replaced or stopped while it launched
            case tt.LaunchFailed(_, reason):
                ended = record.stage is Stage.ENDING
                self._move(record, TemplateTrigger.LAUNCH_FAILED)
                if not ended:
                    self._give_up(reason)
            case tt.EarlyFound(_, pid, unlike):
                self._early(record, pid, unlike)
            case tt.Greeted(_, threads, modules):
                self._move(record, TemplateTrigger.HELLO)
                if record.stage is Stage.FORKABLE and self._threads_allow_forking(threads):
                    record.greeted = True
                    record.preloaded = modules | frozenset(record.settings.preload)  # soon
            case tt.Warmed():
                self._warmed(record, event)
            case tt.Forked():
                record.forked = True
                self._move(record, TemplateTrigger.FORKED)
            case tt.ForkFailed():
                self._move(record, TemplateTrigger.FORK_FAILED)
                if record.id == self.current:
                    self.deaths += 1
                    self._replace()
            case tt.WireBroken(_, why, announce):
                if announce and not self.closing:
                    self._log(logging.DEBUG, why)
                self._move(record, TemplateTrigger.BROKE)  # killed: its exit decides what next
                self._out.append(tt.End(record.id))
            case tt.Exited():
                self._exited(record)

    def _move(self, record: TemplateRecord, trigger: TemplateTrigger) -> None:
        stage = TRANSITIONS.get((record.stage, trigger))
        if stage is None:
            raise IllegalTransition(
                f"Template {record.id} is {record.stage.value}, and '{trigger.value}' cannot happen "
                f"to a {record.stage.value} template."
            )
        record.stage = stage
        if stage is Stage.GONE:
            del self.templates[record.id]

    # ---------------------------------------------------------------- launching and replacing

    def _start(self, settings: Settings) -> None:
        """tt.Launch a template with `settings`, the current one from now on; not once given up."""
        if self.off is not None or self.closing:
            return
        self.settings = settings
        self._next_id += 1
        record = TemplateRecord(self._next_id, settings)
        self.templates[record.id] = record
        self.current = record.id
        self._out.append(tt.Launch(record.id, settings))

    def _replace(self) -> None:
        """The next fork comes from a new template; the current one is retired."""
        if self.settings is None or self.off is not None or self.closing:
            return
        if (record := self.current_record) is not None:
            self._retire(record)
        self.current = None
        self._start(self.settings)

    def _retire(self, record: TemplateRecord) -> None:
        """No more forks from it. One that forked workers exits once they have (it reaps them and
        reports how they ended: they are never orphaned); any other ends now."""
        if record.forked and record.stage in (Stage.FORKABLE, Stage.WARM):
            self._move(record, TemplateTrigger.RETIRE)
            self._out.append(tt.Retire(record.id))
        elif record.stage is not Stage.ENDING:
            self._end(record)

    def _end(self, record: TemplateRecord) -> None:
        self._move(record, TemplateTrigger.END)
        if record.stage is Stage.ENDING and record.pid is not None:
            self._out.append(tt.End(record.id))  # (one still launching is ended once launched)

    def _give_up(self, reason: str) -> None:
        if self.off is None:
            self.off = reason
            self._log(logging.DEBUG, f"Spawning workers instead of forking them: {reason}.")
        if (record := self.current_record) is not None:
            self._retire(record)  # one that forked workers waits for them; else it ends now
        self.current = None

    def _early(self, record: TemplateRecord, pid: int, unlike: str | None) -> None:
        """The command's early template is this one if it is the one that would start now."""
        if unlike is not None:
            self._log(logging.DEBUG, f"Starting the fork server again: the one the command started {unlike}.")
            self._out.append(tt.EndEarly())
        else:
            self._log(logging.DEBUG, f"The fork server is the one the command started first (pid {pid}).")
            self._out.append(tt.TakeEarly(record.id))

    # ---------------------------------------------------------------- what templates say

    def _threads_allow_forking(self, threads: int) -> bool:
        if threads > 1:
            self._give_up(f"{threads} threads were running in the fork server after its imports")
            return False
        return True

    def _warmed(self, record: TemplateRecord, event: tt.Warmed) -> None:
        """It imported its preload list, or more on request: what it has now; no forking if a
        thread started."""
        before = record.stage
        self._move(record, TemplateTrigger.WARM)
        if before is Stage.ENDING or not self._threads_allow_forking(event.threads):
            return
        if before is Stage.STARTING:  # no hello first (only a template with threads does that)
            record.greeted = True
        if event.failed:
            self._log(
                logging.DEBUG,
                f"The fork server could not import {list(event.failed)}; workers will import them "
                "themselves.",
            )
        have = event.modules | frozenset(event.failed)  # all it has, and what is no use trying
        record.preloaded = record.preloaded | have if before is Stage.WARM else have
        said = f"{event.preloaded} modules preloaded"
        self._log(logging.DEBUG, f"The fork server is ready (pid {record.pid}, {said}).")

    def _exited(self, record: TemplateRecord) -> None:
        """Replace the current template when it dies, a few times; then give up forking."""
        was_ready = record.greeted
        self._move(record, TemplateTrigger.EXITED)
        if self.closing or self.off is not None or record.id != self.current:
            return
        self.current = None
        self.deaths += 1  # killed, or crashed at import (then it would again): a few times
        if self.deaths >= MAX_DEATHS:
            how = "after it was ready" if was_ready else "before it was ready"
            self._give_up(f"the fork server died {self.deaths} times, the last {how}")
            return
        self._log(logging.DEBUG, f"The fork server (pid {record.pid}) exited; starting another.")
        if self.settings is not None:
            self._start(self.settings)

    # ---------------------------------------------------------------- fork requests

    def route(self, request: ForkRequest) -> list[tt.Command]:
        """What `request` does next: commands, the last of them tt.Fork, tt.Wait or tt.SpawnInstead."""
        self._out = []
        self._route(request)
        out, self._out = self._out, []
        return out

    def _route(self, request: ForkRequest) -> None:
        if request.phase is Phase.WARMING:
            self._route_warming(request)
            return
        if request.timed_out:
            self._log(logging.DEBUG, "The fork server is not ready yet; spawning this worker.")
            self._out.append(tt.SpawnInstead())
            return
        record = self._usable()
        if record is None:
            return
        changed = request.environment_changed
        if request.phase is Phase.USABLE and (
            dict(record.settings.env) != dict(request.wanted.env) or changed is not None
        ):
            # the env file or the environment changed: the template and what it imported have
            # the old values, a worker spawned now would have the new ones
            said = changed or "env file"
            self._log(logging.DEBUG, f"The environment changed ({said}); starting a new fork server.")
            self.settings = request.wanted
            self._replace()
            request.phase = Phase.USABLE_AGAIN
            self._route(request)
            return
        request.template = record.id
        if record.stage is Stage.FORKABLE:
            # importing the preload list: a request now is served after it, so wait for that
            # here, not against FORK_WAIT (a reload meanwhile starts a worker of its own)
            request.phase = Phase.WARMING
            request.timed_out = False
            self._out.append(tt.Wait(WARM_WAIT))
            return
        self._fork(record, request)

    def _usable(self) -> TemplateRecord | None:
        """The template to fork from: a forkable one, or one still importing uvicorn (the request
        waits in its channel and is served before it imports the preload list); else tt.Wait while
        one launches, or tt.SpawnInstead (None then)."""
        if self.off is not None or self.closing:
            self._out.append(tt.SpawnInstead())
            return None
        record = self.current_record
        if record is None:
            if self.settings is not None:
                self._start(self.settings)
            record = self.current_record
            if record is None:
                self._out.append(tt.SpawnInstead())
                return None
        if record.stage in (Stage.STARTING, Stage.FORKABLE, Stage.WARM):
            return record
        if record.stage is Stage.LAUNCHING:
            self._out.append(tt.Wait(READY_WAIT))
        else:
            self._out.append(tt.SpawnInstead())  # killed: its exit replaces it
        return None

    def _route_warming(self, request: ForkRequest) -> None:
        record = self.templates.get(request.template) if request.template is not None else None
        if request.timed_out or self.off is not None or record is None:
            self._out.append(tt.SpawnInstead())
        elif record.stage is Stage.FORKABLE:
            self._out.append(tt.Wait(WARM_WAIT))
        elif record.stage is Stage.WARM:
            self._fork(record, request)
        else:
            self._out.append(tt.SpawnInstead())  # retired or ended meanwhile: it forks no more

    def _fork(self, record: TemplateRecord, request: ForkRequest) -> None:
        wanted = request.wanted
        missing = missing_modules(wanted.preload, record.preloaded)
        if missing:
            # the app imports more than the template has: it imports them too, before this fork
            self._log(logging.DEBUG, f"The fork server imports {', '.join(missing[:5])} too.")
            self.settings = dataclasses.replace(self.settings or wanted, preload=wanted.preload)
            record.preloaded |= frozenset(missing)
            self._out.append(tt.Preload(record.id, tuple(missing)))
        self._out.append(tt.Fork(record.id, WARM_WAIT if missing else FORK_WAIT))

    def _log(self, level: int, message: str) -> None:
        self._out.append(tt.LogLine(level, message))


# ------------------------------------------------------------------ pure helpers


def missing_modules(wanted: Iterable[str], preloaded: frozenset[str]) -> list[str]:
    """The installed packages' modules the workers need and the template lacks. Those of the
    standard library a fork imports itself (a few milliseconds); the next start-up's template
    has them (the warm cache lists them)."""
    stdlib = sys.stdlib_module_names
    return [
        name
        for name in wanted
        if name not in preloaded
        and name.partition(".")[0] not in stdlib
        and not name.startswith("_sysconfigdata_")  # the stdlib's, named after the platform
    ]


def forking_off(fork: bool, standby: bool, preload: bool, unsafe: str | None) -> tuple[bool, str | None]:
    """Whether workers are spawned rather than forked, and the reason to say (at debug level):
    asked not to (--no-fork, or no warm worker to fork at all: said nothing), or unsafe here."""
    if not (fork and standby and preload):
        return True, None
    return unsafe is not None, unsafe


def unlike_now(
    capture_output: bool, env_file_values: Mapping[str, str], environment_changed: str | None
) -> str | None:
    """Why the command's early template is not the one that would be started now, or None if
    it is. `environment_changed` names a variable that changed here since it started."""
    if capture_output:
        return "writes to the terminal, and the output is captured"
    if env_file_values:
        # it imported uvicorn's protocols before they could be set, and a library may read them
        return "imported its modules before the env file's values were set"
    if environment_changed is not None:
        return f"has an older environment ({environment_changed} changed)"
    return None
