"""Random walks through the supervisor's machine, against a simulated world of processes.

The scenarios in test_machine.py pin down chosen paths; these walks try the orders nobody
wrote down. A small world carries out the machine's commands the way real workers would (a
spawn is greeted, a load ends ready or failed depending on the code on disk, a drain ends in an
exit, a kill ends in an exit with SIGKILL, a worker may crash at any time, timers fire whenever
they are armed, an app may stop at a breakpoint and say nothing until it is continued) and
delivers their events in a random but causal order. A paused worker is never killed by a
deadline (a timer). Whenever the world
settles, the machine must serve exactly one generation, loaded after the last change (never
stale code), showing the app when the code works and the error page when it does not; and a
stop must leave no worker unaccounted for.
"""

from __future__ import annotations

import collections
import dataclasses
import random

import pytest

from asgireload import _protocol as protocol
from asgireload._protocol import Failure
from asgireload._supervisor import commands as c
from asgireload._supervisor import machineevents as e
from asgireload._supervisor.machine import Machine
from asgireload._supervisor.records import Policy

ENV_FILE = "/project/.env"
CONFLICT = "OSError: [Errno 98] Address already in use"
MAX_RUNNING = 3  # serving + loading + standby, not counting those told to exit: more is a leak


@dataclasses.dataclass
class Process:
    """One simulated worker: what it will say next, and what it was told to load."""

    id: int
    queue: collections.deque[e.Event] = dataclasses.field(default_factory=collections.deque)
    exiting: bool = False  # its exit is queued: it takes no more commands
    gone: bool = False  # its exit was delivered
    generation: int | None = None
    error_page: bool = False  # it shows the error page instead of the app
    broken: bool = False  # the code it loaded does not start
    changes_seen: int = 0  # how many changes had been handled when it was told to load
    paused: bool = False  # stopped at a breakpoint: it says nothing until resumed
    killed: bool = False


class World:
    def __init__(self, rng: random.Random, policy: Policy) -> None:
        self.rng = rng
        self.now = 1000.0
        self.machine = Machine(policy, clock=lambda: self.now, read_env=self.read_env)
        self.processes: dict[int, Process] = {}
        self.timers: set[e.TimerFired] = set()
        self.serving: set[int] = set()  # told to serve, not yet told to drain or killed
        self.changes = 0  # changes (and reload requests) handed to the machine so far
        self.broken = False  # whether the code on disk fails to start
        self.conflict = False  # whether its failure looks like a held resource
        self.env_broken = False  # whether the env file cannot be read
        self.trace: list[str] = []
        self.cause: e.Event | None = None  # the event the machine is handling now

    def read_env(self) -> tuple[dict[str, str], Failure | None]:
        if self.env_broken:
            return {}, Failure("env", "ENV_FILE line 3: no '=' in 'oops'", files=(ENV_FILE,))
        return {"MODE": "dev"}, None

    # ------------------------------------------------------------------ feeding the machine
    def feed(self, event: e.Event) -> None:
        """As the shell does: what a spawn reports is handled next, before any other event."""
        self.cause = event
        results = collections.deque([event])
        while results:
            event = results.popleft()
            self.trace.append(repr(event))
            if isinstance(event, e.WorkerExited | e.SpawnFailed):
                self.processes[event.worker].gone = True
                self.serving.discard(event.worker)
            for command in self.machine.handle(event):
                if (result := self.carry_out(command)) is not None:
                    results.append(result)

    def carry_out(self, command: c.Command) -> e.Event | None:
        self.trace.append(f"  -> {command!r}"[:160])
        match command:
            case c.Spawn(worker):
                assert worker not in self.processes, f"worker id {worker} reused"
                process = self.processes[worker] = Process(worker)
                if self.rng.random() < 0.02:
                    process.exiting = True
                    return e.SpawnFailed(worker, "E2BIG")
                process.queue.append(e.WorkerGreeted(worker))
                return e.WorkerStarted(worker, pid=1000 + worker)
            case c.Tell(worker, protocol.Load(generation, _, failure)):
                process = self.processes[worker]
                if process.exiting:
                    return
                process.generation = generation
                process.changes_seen = self.changes
                process.error_page = failure is not None
                process.broken = self.broken and failure is None
                if process.broken:
                    summary = CONFLICT if self.conflict else "RuntimeError: boom"
                    failure = Failure("import", summary, files=("/project/main.py",))
                    process.queue.append(e.WorkerFailed(worker, failure))
                else:
                    process.queue.append(e.WorkerReady(worker, error_page=process.error_page))
            case c.Tell(worker, protocol.Serve()):
                if not self.processes[worker].exiting:
                    self.serving.add(worker)
            case c.Tell(worker, protocol.Drain()):
                self.serving.discard(worker)
                process = self.processes[worker]
                if not process.exiting:
                    process.queue += [e.WorkerDraining(worker), e.WorkerExited(worker, 0)]
                    process.exiting = True
            case c.Kill(worker):
                self.serving.discard(worker)
                process = self.processes[worker]
                if process.paused:
                    assert not isinstance(self.cause, e.TimerFired), (
                        f"worker {worker}, paused at a breakpoint, killed because {self.cause}"
                    )
                if not process.gone:
                    process.queue = collections.deque([e.WorkerExited(worker, -9)])
                    process.exiting = process.killed = True
                    process.paused = False  # SIGKILL ends a paused process too
            case c.ArmTimer(_, event):
                self.timers.add(event)
        return None

    # ------------------------------------------------------------------ the world moves
    def deliver_one(self) -> bool:
        """Deliver the next event of one random process; False if none has anything to say."""
        talking = [p for p in self.processes.values() if p.queue and not p.paused]
        if not talking:
            return False
        process = self.rng.choice(talking)
        self.feed(process.queue.popleft())
        return True

    def fire_one(self) -> bool:
        if not self.timers:
            return False
        timer = self.rng.choice(sorted(self.timers, key=repr))
        self.timers.discard(timer)
        self.now += 1.0
        self.feed(timer)
        return True

    def crash_one(self) -> None:
        alive = [p for p in self.processes.values() if not p.exiting]
        if alive:
            process = self.rng.choice(alive)
            if self.rng.random() < 0.3:  # it broke the protocol: the machine must kill it
                process.queue.append(e.ChannelBroken(process.id, "garbage on its channel"))
            else:
                process.queue.append(e.WorkerExited(process.id, 1))
                process.exiting = True

    def pause_or_resume(self) -> None:
        """A request (or the app's start-up) stops at a breakpoint, or the developer continues one."""
        paused = [p for p in self.processes.values() if p.paused]
        if paused and self.rng.random() < 0.5:
            self.resume(self.rng.choice(paused))
            return
        running_app = [
            p
            for p in self.processes.values()
            if p.generation is not None and not (p.gone or p.killed or p.paused)
        ]
        if running_app:
            process = self.rng.choice(running_app)
            process.paused = True
            self.feed(e.WorkerPaused(process.id, announce=self.rng.random() < 0.7))

    def resume(self, process: Process) -> None:
        process.paused = False
        self.feed(e.WorkerResumed(process.id))

    def change(self) -> None:
        self.broken = self.rng.random() < 0.3
        self.conflict = self.rng.random() < 0.3
        self.changes += 1
        self.now += 0.01
        roll = self.rng.random()
        if roll < 0.1:
            self.env_broken = not self.env_broken
            self.feed(e.FileChanged((ENV_FILE,), since=self.now))
        elif roll < 0.8:
            self.feed(e.FileChanged(("/project/main.py",), since=self.now))
        else:
            self.feed(e.ReloadRequested("reload() called"))

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.12:
            self.change()
        elif roll < 0.15:
            self.crash_one()
        elif roll < 0.17:
            self.feed(e.PackagesChanged(("/venv/site-packages/fastapi/__init__.py",)))
        elif roll < 0.21:
            self.pause_or_resume()
        elif roll < 0.30:
            self.fire_one() or self.deliver_one()
        else:
            self.deliver_one() or self.fire_one()
        running = [p.id for p in self.processes.values() if not p.exiting]
        assert len(running) <= MAX_RUNNING, f"workers {running} all run, none told to exit"

    def settle(self) -> None:
        """Let every process say everything and every timer fire, until nothing happens; the
        developer continues every paused worker along the way."""
        for _ in range(10_000):
            paused = [p for p in self.processes.values() if p.paused]
            if paused and self.rng.random() < 0.1:
                self.resume(self.rng.choice(paused))
            elif not (self.deliver_one() or self.fire_one()):
                if not paused:
                    return
                self.resume(paused[0])
        raise AssertionError("the world never settled: something re-arms itself forever")

    # ------------------------------------------------------------------ what must hold
    def check_settled(self, policy: Policy) -> None:
        assert len(self.serving) == 1, f"serving {sorted(self.serving)} once settled"
        running = [p.id for p in self.processes.values() if not p.gone]
        assert len(running) <= 1 + policy.standby, f"workers {running} run once settled"
        process = self.processes[next(iter(self.serving))]
        assert not process.exiting
        if policy.keep_last_good and (self.broken or self.env_broken):
            return  # the last good generation may go on serving: that is the point
        assert process.changes_seen == self.changes, (
            f"worker {process.id} (generation {process.generation}) serves code from before "
            f"change {process.changes_seen + 1} of {self.changes}"
        )
        shows_error = process.error_page or process.broken
        fails = self.broken or self.env_broken
        assert shows_error == fails, (
            f"worker {process.id} shows {'the error page' if shows_error else 'the app'} "
            f"while the code {'fails' if fails else 'works'}"
        )

    def check_stopped(self) -> None:
        """The machine takes no event after a stop (the shell waits for the exits): every
        process still running must have been told to drain or be killed."""
        left = [p.id for p in self.processes.values() if not p.exiting]
        assert not left, f"workers {left} were neither drained nor killed by the stop"


POLICIES = {
    "default": Policy(cwd="/project"),
    "sequential": Policy(cwd="/project", sequential=True),
    "keep-last-good": Policy(cwd="/project", keep_last_good=True),
    "no-standby": Policy(cwd="/project", standby=False),
    "no-preload": Policy(cwd="/project", preload=False),
}


@pytest.mark.parametrize("policy_name", POLICIES)
@pytest.mark.parametrize("seed", range(40))
def test_a_random_walk_settles_on_the_latest_code_and_stops_clean(policy_name: str, seed: int) -> None:
    policy = POLICIES[policy_name]
    world = World(random.Random(f"{policy_name}-{seed}"), policy)
    try:
        world.feed(e.ReloadRequested("start"))
        for _ in range(12):
            for _ in range(world.rng.randrange(1, 40)):
                world.step()
            world.settle()
            world.check_settled(policy)
        world.feed(e.Stop(force=world.rng.random() < 0.3))
        world.check_stopped()
    except AssertionError:
        print("\n".join(world.trace[-80:]))  # the end of the walk, for whoever reads the failure
        raise
