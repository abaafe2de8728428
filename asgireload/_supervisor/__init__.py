"""The supervisor side: everything that runs in the asgireload process (or the caller's loop).

`machine` decides (no I/O, no asyncio), `shell` carries its decisions out; the other modules
are the shell's tools: worker processes, the scanner and its file events, sockets, hand-over.
"""
