"""The supervisor side: everything that runs in the asgireload process (or the caller's loop).

The core decides, with no I/O and no asyncio:

    table        worker roles, triggers and TRANSITIONS, the legal moves, with their diagram
    events       what the core is told, one frozen dataclass per kind
    commands     what the core asks for, one frozen dataclass per kind
    records      what it remembers: its Policy, each Worker, a generation's Cause
    generations  its decisions: load, serve, drain, fail, retry
    machine      Machine.handle(event) -> commands, every move checked against the table

The shell carries the commands out and turns what happens into events:

    supervisor     Supervisor: the public surface; bind, start, stop
    commandrunner  the one event queue and its task: each command carried out, timers
    watching       the scanners' reports turned into events (code, assets, packages, settings)
    processes      the worker processes by id: spawn, send, relay connections, kill, close all
    workers        one worker process: spawn it, check what it says, end it (the one shielded close)
    outcomes       each generation's outcome: kept, streamed, waited on
    settings       what the Config means for the machine and for a worker

and its tools: scanner (with folders, bursts, includes, inotify, mounts), sockets, editable,
preflight, envfile, terminal, signals. Nothing here is imported by a worker process (see
`asgireload._worker`).
"""
