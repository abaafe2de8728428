"""Linux inotify hints for the mtime scanner.

The scanner that stats every watched file is the source of truth, but a full scan costs a few
milliseconds, so it can only run about once a second without burning idle CPU.  inotify lets us
notice a change within milliseconds instead: each event names the directory entry that changed,
and the scanner stats just that path at once.  Events are only *hints* -- they can be lost
(queue overflow, watches removed by the kernel), so anything that looks like lost information is
reported as ``None``, meaning "rescan everything".

We talk to libc through ctypes rather than a third-party package because the whole thing is
three system calls and a 16-byte header, and the reloader must stay dependency-free.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import logging
import os
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self

__all__ = ["DirectoryEvents"]

# Values from <sys/inotify.h>; they are part of the kernel ABI and identical on every architecture.
_IN_MODIFY = 0x00000002
_IN_ATTRIB = 0x00000004
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_FROM = 0x00000040
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE = 0x00000200
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_ONLYDIR = 0x01000000
_IN_EXCL_UNLINK = 0x04000000

# Everything that can change what a stat() of an entry returns, plus the directory's own fate.
_EVENT_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_CREATE
    | _IN_DELETE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)
# IN_ONLYDIR: watching a regular file by mistake should fail rather than silently report nothing
# useful.  IN_EXCL_UNLINK: writes to an already-unlinked file (editors' temp files) can no longer
# change anything the scanner can see, so they are noise.
_WATCH_FLAGS = _IN_ONLYDIR | _IN_EXCL_UNLINK

# struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[]; }
# in native byte order -- the kernel writes it in the machine's own layout.
_EVENT_HEADER = struct.Struct("=iIII")
# Must exceed sizeof(struct inotify_event) + NAME_MAX + 1 or read() fails with EINVAL; 64 KiB holds
# hundreds of events so one wakeup normally needs a single read.
_READ_SIZE = 64 * 1024
# Reads per wakeup before yielding back to the loop.  A process rewriting files in a tight loop could
# otherwise keep us reading forever and starve the server; the fd is level-triggered, so anything
# left over is picked up on the next loop iteration.
_MAX_READS_PER_WAKEUP = 16
# A file modified and not yet closed is being written; past this many seconds without a write
# it no longer counts (a writer that keeps its file open, or a close whose event was lost).
_WRITER_IDLE = 1.0
_WRITERS_LIMIT = 1000  # files remembered as being written, at most


class _Inotify:
    """Typed wrappers around the three libc calls, turning ``-1``/errno into ``OSError``."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        # Attribute lookup raises AttributeError when this libc has no inotify (e.g. very old or
        # non-glibc/musl C libraries); _load() turns that into "unavailable".
        self._init1 = libc.inotify_init1
        self._init1.argtypes = [ctypes.c_int]
        self._init1.restype = ctypes.c_int
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add_watch.restype = ctypes.c_int
        self._rm_watch = libc.inotify_rm_watch
        self._rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self._rm_watch.restype = ctypes.c_int

    @staticmethod
    def _check(result: int, what: str) -> int:
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")
        return result

    def init(self) -> int:
        # IN_NONBLOCK/IN_CLOEXEC are defined as O_NONBLOCK/O_CLOEXEC, whose values differ between
        # architectures, so take them from the os module rather than hard-coding x86 numbers.
        # CLOEXEC matters because the reloader spawns worker processes that must not inherit the fd.
        return self._check(int(self._init1(os.O_NONBLOCK | os.O_CLOEXEC)), "inotify_init1")

    def add_watch(self, fd: int, path: bytes, mask: int) -> int:
        return self._check(int(self._add_watch(fd, path, mask)), "inotify_add_watch")

    def rm_watch(self, fd: int, wd: int) -> None:
        self._check(int(self._rm_watch(fd, wd)), "inotify_rm_watch")


@functools.cache
def _load() -> _Inotify | None:
    """Bind libc once; ``None`` if this platform or C library has no inotify."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # dlopen(NULL) searches the symbols already loaded into the process, which always include
        # the C library; ctypes.util.find_library would spawn subprocesses just to find it.
        return _Inotify(ctypes.CDLL(None, use_errno=True))
    except (OSError, AttributeError):
        return None


class DirectoryEvents:
    """Reports changes to entries of watched directories via inotify (Linux only).

    ``on_change`` is called synchronously from the event loop's reader callback with, for each
    changed entry, ``os.path.join(directory, name)``; with the directory path itself for events on
    the watched directory (deleted, moved away, unmounted); or with ``None`` when information was
    lost -- the kernel queue overflowed or a watch disappeared -- meaning "rescan everything".
    Paths are deduplicated within one wakeup, so a save that produces MODIFY, MODIFY, CLOSE_WRITE
    costs the scanner one stat, not three.

    A reported path may itself be a directory (a package created, deleted or renamed), in which case
    everything below it may have changed.  The first hint for an in-place write can arrive while the
    writer is still writing; later events for the same file follow, so consumers should debounce.

    ``watch``, ``try_watch`` and ``is_watching`` may be called from any thread (the scanner walks
    big folder trees in a worker thread, watching each folder before it lists it); every other
    method must be called from the thread running the event loop the instance was created in.
    """

    def __init__(self, on_change: Callable[[str | None], None]) -> None:
        # Set first so close()/__del__ are safe however far construction gets.
        self._fd = -1
        inotify = _load()
        if inotify is None:
            raise OSError(errno.ENOSYS, "inotify is not available on this platform")
        # Fails (RuntimeError) before any fd exists when called outside a running loop.
        self._loop = asyncio.get_running_loop()
        self._inotify = inotify
        self._on_change = on_change
        # inotify hands out one watch descriptor per inode, so two spellings of the same directory
        # (a symlink, say) share a wd; keep every spelling so each caller's path gets reported.
        self._wd_paths: dict[int, list[str]] = {}
        self._path_wd: dict[str, int] = {}
        # files modified and not closed since, with the monotonic time of their last write
        self._writing: dict[str, float] = {}
        # Guards the fd and the two maps against a watch() from a worker thread.
        self._lock = threading.RLock()
        fd = inotify.init()
        try:
            self._loop.add_reader(fd, self._read_events)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @staticmethod
    def available() -> bool:
        """Whether inotify can be used here; callers fall back to plain polling when it cannot.

        Actually creates (and closes) an instance, because having the syscall is not enough: the
        per-user instance limit (``fs.inotify.max_user_instances``, often only 128) is easily
        exhausted by IDEs and other watchers.  Never raises.
        """
        try:
            inotify = _load()
            if inotify is None:
                return False
            os.close(inotify.init())
        except Exception:
            return False
        return True

    def watch(self, directory: str) -> bool:
        """Start reporting changes to ``directory``'s entries; ``False`` if it can't be watched.

        Failure is an expected condition -- the directory is missing, unreadable, not a directory,
        or the per-user watch limit (``fs.inotify.max_user_watches``, ENOSPC) is reached -- and the
        scanner still covers the directory by polling, so it is reported by value, not by raising.

        Idempotent, but it always asks the kernel: if ``directory`` has been deleted and recreated,
        the path now names a new inode and must get a new watch.  Calling it again for every
        directory after a full rescan is therefore how a consumer heals lost watches.
        """
        return self.try_watch(directory) == 0

    def try_watch(self, directory: str) -> int:
        """Like ``watch``, but say why it failed: 0 on success, else the errno (ENOSPC: the limit)."""
        encoded = os.fsencode(directory)
        if b"\0" in encoded:
            # ctypes would silently truncate at the NUL and watch a different directory.
            return errno.EINVAL
        with self._lock:
            if self._fd < 0:
                return errno.EBADF
            try:
                wd = self._inotify.add_watch(self._fd, encoded, _EVENT_MASK | _WATCH_FLAGS)
            except OSError as exc:
                return exc.errno or errno.EINVAL
            previous = self._path_wd.get(directory)
            if previous == wd:
                return 0
            if previous is not None:
                # The path now refers to a different directory than before (e.g. renamed away and
                # replaced); events from the old one would be reported under the wrong name.
                self._unbind(directory, previous)
            self._path_wd[directory] = wd
            self._wd_paths.setdefault(wd, []).append(directory)
            return 0

    def is_watching(self, directory: str) -> bool:
        """Whether ``directory`` still has its watch (the kernel drops it when the folder goes)."""
        return directory in self._path_wd

    def is_being_written(self, path: str) -> bool:
        """Whether a file of a watched folder was modified, within _WRITER_IDLE, by a writer that
        has not closed it yet: its content may be only the start of what is being saved."""
        last = self._writing.get(path)
        return last is not None and time.monotonic() - last < _WRITER_IDLE

    def _note_writer(self, path: str, mask: int) -> None:
        if mask & (_IN_CLOSE_WRITE | _IN_DELETE | _IN_MOVED_FROM):
            self._writing.pop(path, None)
        elif mask & _IN_MODIFY:
            if len(self._writing) >= _WRITERS_LIMIT:
                self._writing.clear()  # forgetting a writer only means not waiting for it
            self._writing[path] = time.monotonic()

    def close(self) -> None:
        """Stop watching and release the fd (and with it every watch); idempotent."""
        with self._lock:
            fd, self._fd = self._fd, -1
            if fd < 0:
                return
            self._wd_paths.clear()
            self._path_wd.clear()
        try:
            # Before os.close: the loop's selector must not keep an fd number that may be reused.
            self._loop.remove_reader(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Only reachable once the loop no longer references our reader callback (loop closed), so
        # closing the fd is all that is left to do; warn like unclosed sockets and files do.
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            self._fd = -1
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
            os.close(fd)

    def __repr__(self) -> str:
        state = f"fd={self._fd}" if self._fd >= 0 else "closed"
        return f"<{type(self).__name__} {state} watches={len(self._path_wd)}>"

    def _unbind(self, directory: str, wd: int) -> None:
        """Detach one spelling from a wd, dropping the kernel watch once nobody uses it."""
        paths = self._wd_paths.get(wd)
        if paths is None:
            return
        if directory in paths:
            paths.remove(directory)
        if not paths:
            self._forget(wd, remove=True)

    def _forget(self, wd: int, *, remove: bool) -> None:
        """Drop our bookkeeping for ``wd`` (and the kernel watch if ``remove``)."""
        for path in self._wd_paths.pop(wd, ()):
            if self._path_wd.get(path) == wd:
                del self._path_wd[path]
        if remove:
            # EINVAL: the kernel already dropped it (its IN_IGNORED is still queued).
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(self._fd, wd)

    def _read_events(self) -> None:
        """Reader callback: drain the queue, then report each affected path once."""
        reports: dict[str | None, None] = {}
        for _ in range(_MAX_READS_PER_WAKEUP):
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                # The fd is unusable; retrying would spin the loop.  Degrade to polling: stop
                # hinting and ask for a full rescan.
                self.close()
                reports[None] = None
                break
            if not data:
                break
            with self._lock:
                self._parse(data, reports)
        for path in reports:
            self._on_change(path)

    def _parse(self, data: bytes, reports: dict[str | None, None]) -> None:
        header_size = _EVENT_HEADER.size
        offset = 0
        # The kernel only ever returns whole events, so no partial event can straddle two reads.
        while offset + header_size <= len(data):
            wd, mask, _cookie, name_len = _EVENT_HEADER.unpack_from(data, offset)
            offset += header_size
            name = data[offset : offset + name_len].rstrip(b"\0")
            offset += name_len
            if mask & _IN_Q_OVERFLOW:
                reports[None] = None
                self._writing.clear()  # closes may have been lost
                continue
            directories = self._wd_paths.get(wd)
            if directories is None:
                # A watch we already dropped (its trailing IN_IGNORED, or events queued before
                # we removed it); nothing of ours is affected.
                continue
            if name:
                entry = os.fsdecode(name)
                for directory in directories:
                    path = os.path.join(directory, entry)
                    reports[path] = None
                    self._note_writer(path, mask)
            else:
                for directory in directories:
                    reports[directory] = None
            if mask & _IN_IGNORED:
                # The kernel removed the watch (directory deleted, filesystem unmounted): changes
                # below this path are no longer hinted until someone calls watch() again.
                self._forget(wd, remove=False)
                reports[None] = None
            elif mask & _IN_MOVE_SELF:
                # The watch follows the inode, so from now on its events would be reported under a
                # path that names something else (or nothing); drop it and let a rescan re-watch.
                self._forget(wd, remove=True)
                reports[None] = None


class DirectoryEventsLike(Protocol):
    def try_watch(self, directory: str) -> int: ...
    def is_watching(self, directory: str) -> bool: ...
    def is_being_written(self, path: str) -> bool: ...
    def close(self) -> None: ...


def directory_events(callback: Callable[[str | None], None]) -> DirectoryEventsLike | None:
    """File events for folders, calling `callback` with a changed path (None: events were lost);
    None where inotify cannot be used (then the scanner polls)."""
    if not DirectoryEvents.available():
        return None
    try:
        return DirectoryEvents(callback)
    except OSError as exc:
        logging.getLogger("asgireload").debug("File events unavailable (%s); polling only.", exc)
        return None
