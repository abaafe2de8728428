"""Single keys at the terminal: `r` reload, `o` open the browser, `c` clear, `q` quit, `h` help.

Keys are read in cbreak mode (no Enter needed, no echo) with ISIG kept, so CTRL+C, CTRL+Z and
CTRL+\\ are still signals from the kernel. They are read only while asgireload is in the
terminal's foreground process group and no worker's debugger has the terminal: a background job
that read the terminal would take the shell's input (or be stopped by SIGTTIN), and pdb needs
the terminal's own line editing. The terminal's mode is put back whenever keys stop being read:
on leaving, in the background, while lent to a debugger, before CTRL+Z stops the process (cbreak
again on `fg`), and on a hang-up.

A read that holds different keys is a paste (or typing ahead under load), not a command: it is
ignored, so pasting a traceback into the wrong window neither quits nor opens anything. The same
key repeated (`rrr`, or `r` + Enter as before) acts once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import termios
from collections.abc import Callable
from typing import Any

from .terminal import in_foreground

logger = logging.getLogger("asgireload")

RECHECK_INTERVAL = 1.0  # seconds between looks at the foreground while in the background
HINT = "Press h for help (r reload, o open in the browser, c clear, q quit)."
IGNORED = b"\r\n"  # Enter, as in `r` + Enter, which reloaded before single keys


@dataclasses.dataclass(frozen=True)
class KeyActions:
    """What each key does; `url()` is where the app is served (None before it is bound)."""

    reload: Callable[[], None]
    quit: Callable[[], None]
    url: Callable[[], str | None]
    clear: Callable[[], None]
    open_url: Callable[[str], None]


HELP = (
    "Keys: r reload now · o open {url} in the browser · c clear the screen · q quit (as CTRL+C) · h this help"
)


class Keyboard:
    """Reads single keys from stdin, a terminal, while asgireload is its foreground job."""

    def __init__(self, loop: asyncio.AbstractEventLoop, actions: KeyActions) -> None:
        self._loop = loop
        self._actions = actions
        self._active = False
        self._reading = False
        self._lent = False  # a worker's debugger has the terminal: no key is read meanwhile
        self._recheck: asyncio.TimerHandle | None = None
        self._cooked: list[Any] | None = None  # the terminal's mode while we keep cbreak
        self._suspending = False  # our SIGTSTP handler is installed
        self._hinted = False  # "press h for help" said since the last key acted on

    def start(self) -> bool:
        """Start listening if stdin is a terminal; returns whether it is."""
        try:
            if not os.isatty(0):
                return False
        except OSError:
            return False
        self._active = True
        with contextlib.suppress(ValueError, RuntimeError):
            self._loop.add_signal_handler(signal.SIGCONT, self._check)
        if signal.getsignal(signal.SIGTSTP) is signal.SIG_DFL:  # only a default one is replaced
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.add_signal_handler(signal.SIGTSTP, self._on_suspend)
                self._suspending = True
        self._check()
        if self._reading:
            logger.info(HINT)
        return True

    def lend(self, lent: bool) -> None:
        """Stop reading keys while a paused worker's debugger has the terminal (True); read again (False)."""
        self._lent = lent
        if lent:
            self._pause()
        else:
            self._check()

    def close(self) -> None:
        if not self._active:
            return
        self._active = False
        self._pause()
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        for signum in (signal.SIGCONT, signal.SIGTSTP) if self._suspending else (signal.SIGCONT,):
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.remove_signal_handler(signum)
        self._suspending = False

    # ---------------------------------------------------------------- the foreground, cbreak

    def _check(self) -> None:
        if not self._active or self._lent:
            return
        if in_foreground():
            self._listen()
        else:
            self._pause()
            if self._recheck is None:
                self._recheck = self._loop.call_later(RECHECK_INTERVAL, self._recheck_now)

    def _recheck_now(self) -> None:
        self._recheck = None
        self._check()

    def _listen(self) -> None:
        if self._reading:
            return
        try:
            self._loop.add_reader(0, self._on_readable)
        except (OSError, ValueError):
            self.close()
            return
        self._reading = True
        self._enter_cbreak()

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(0)
            self._reading = False
        self._restore_mode()

    def _enter_cbreak(self) -> None:
        try:
            mode = termios.tcgetattr(0)
            cbreak = termios.tcgetattr(0)
            cbreak[3] &= ~(termios.ICANON | termios.ECHO)  # lflag; ISIG stays: CTRL+C is SIGINT
            cbreak[6][termios.VMIN] = 1
            cbreak[6][termios.VTIME] = 0
            termios.tcsetattr(0, termios.TCSANOW, cbreak)
        except (OSError, termios.error):
            return  # a terminal that hung up: nothing to change, nothing to restore
        self._cooked = mode

    def _restore_mode(self) -> None:
        mode, self._cooked = self._cooked, None
        if mode is not None:
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(0, termios.TCSANOW, mode)

    def _on_suspend(self) -> None:
        """CTRL+Z: refused while a worker's debugger has the terminal; otherwise the terminal's
        mode is put back, the process stops as by default, and `fg` brings cbreak back."""
        if self._lent:
            logger.warning(
                "CTRL+Z is ignored while a worker's debugger has the terminal: continue it (c and "
                "Enter) first, then CTRL+Z suspends asgireload."
            )
            return
        self._pause()
        with contextlib.suppress(ValueError, RuntimeError):
            self._loop.remove_signal_handler(signal.SIGTSTP)  # back to the default: stop
        os.kill(os.getpid(), signal.SIGTSTP)  # stopped here until SIGCONT
        if self._active:
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.add_signal_handler(signal.SIGTSTP, self._on_suspend)
        self._check()

    # ---------------------------------------------------------------- keys

    def _on_readable(self) -> None:
        if self._lent:
            self._pause()
            return
        if not in_foreground():  # moved to the background (bg) since the last look
            self._check()
            return
        try:
            data = os.read(0, 1024)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return
            if exc.errno == errno.EIO and not in_foreground():
                self._check()  # lost the foreground between the look and the read
                return
            data = b""  # the terminal is unusable (hung up): stop reading it
        if not data:  # end of input: the terminal hung up, or stdin was closed
            self.close()
            return
        self._on_keys(data)

    def _on_keys(self, data: bytes) -> None:
        keys = {bytes([byte]).lower() for byte in data if byte not in IGNORED}
        if not keys or data.startswith(b"\x1b"):  # Enter alone, an arrow or function key
            return
        action = self._action_for(keys.pop()) if len(keys) == 1 else None
        if action is None:
            if not self._hinted:
                self._hinted = True
                logger.info("Keys are single letters, one at a time: press h for help.")
            return
        self._hinted = False
        action()

    def _action_for(self, key: bytes) -> Callable[[], None] | None:
        return {
            b"r": self._actions.reload,
            b"q": self._actions.quit,
            b"c": self._actions.clear,
            b"o": self._open,
            b"h": self._help,
        }.get(key)

    def _help(self) -> None:
        logger.info(HELP.format(url=self._actions.url() or "the app"))

    def _open(self) -> None:
        url = self._actions.url()
        if url is None or not url.startswith("http"):
            logger.info("Nothing to open in a browser yet: the app is served on %s.", url or "no socket yet")
            return
        self._actions.open_url(url)


def browsable(url: str) -> str:
    """The address a browser on this machine reaches: a wildcard host becomes the loopback."""
    return url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")


async def open_in_browser(url: str) -> None:
    """Open `url` with the webbrowser module, in a thread (a browser command may take a while);
    with no browser (over ssh, none installed, BROWSER failing) one line with the URL instead."""
    import webbrowser

    url = browsable(url)
    try:
        opened = await asyncio.to_thread(webbrowser.open, url)
    except webbrowser.Error:
        opened = False
    if opened:
        logger.info("Opened %s in the browser.", url)
    else:
        logger.info("No browser could be opened here; the app is at %s", url)


def clear_screen() -> None:
    """Clear the terminal's screen (its scrollback stays), if stdout is the terminal."""
    with contextlib.suppress(OSError):
        if os.isatty(1):
            os.write(1, b"\x1b[H\x1b[2J")
