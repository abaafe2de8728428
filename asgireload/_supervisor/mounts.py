"""Which watched folders sit on a file system that sends no file events for some edits.

inotify reports what this kernel sees. On a network share (NFS, SMB), a folder shared into a
VM or container (9p, virtiofs, Docker Desktop's fakeowner/grpcfuse/osxfs, VirtualBox's vboxsf,
WSL's drvfs) or most FUSE file systems, an edit made on the other side (another machine, the
host, Windows) never passes through this kernel, so no event ever comes. The scanner polls the
files of such folders at a short interval instead of relying on events.

The mount table comes from /proc/self/mountinfo (or /proc/mounts); the mount of a folder is the
longest mount point that is a prefix of its resolved path. Where there is no /proc (macOS), no
folder is detected, and the scanner's full scans are the only net, as before.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Iterable, Sequence

__all__ = [
    "FORCE_POLLING_VARIABLE",
    "Mount",
    "MountTable",
    "forced_polling_reason",
    "mount_of",
    "mount_polling_message",
    "no_events_reason",
    "parse_mountinfo",
    "parse_mounts",
    "watch_limit_message",
]

FORCE_POLLING_VARIABLE = "ASGIRELOAD_FORCE_POLLING"

_NETWORK = "a network file system: edits made on another machine send no file events here"
_SHARED = "a folder shared into this VM or container: edits made on the host send no file events here"
_FUSE = "a FUSE file system: edits that do not pass through this mount send no file events here"

# File system types whose folders may change without a file event, and why.
_NO_EVENTS = {
    **dict.fromkeys(
        ("nfs", "nfs4", "cifs", "smb3", "smbfs", "smb", "ncpfs", "afs", "ceph", "glusterfs", "lustre"),
        _NETWORK,
    ),
    **dict.fromkeys(("gpfs", "beegfs", "ocfs2", "gfs2", "davfs", "sshfs"), _NETWORK),
    **dict.fromkeys(
        ("9p", "drvfs", "virtiofs", "fakeowner", "vboxsf", "vmhgfs", "prl_fs", "grpcfuse", "osxfs"),
        _SHARED,
    ),
}
# FUSE types named after their server program ("fuse.sshfs", "fuse.grpcfuse"); the known
# shares get their own reason, the rest the generic FUSE one.
_LOCAL_FUSE = frozenset({"fuse.fuse-overlayfs", "fuse.lxcfs", "fuse.portal", "fuse.gvfsd-fuse"})
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclasses.dataclass(frozen=True)
class Mount:
    """One line of the mount table: where a file system is mounted, and its type."""

    point: str
    fstype: str


def unescape(field: str) -> str:
    r"""Undo the kernel's octal escapes in a mount table field (a space is written \040)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse /proc/self/mountinfo: `id parent dev root point options [optional...] - type source ...`.

    Malformed lines are skipped: a partial table only means fewer folders are detected.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            point, fstype = fields[4], fields[separator + 1]
        except (ValueError, IndexError):
            continue
        mounts.append(Mount(unescape(point), unescape(fstype)))
    return mounts


def parse_mounts(text: str) -> list[Mount]:
    """Parse /proc/mounts (the fstab format): `source point type options dump pass`."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts.append(Mount(unescape(fields[1]), unescape(fields[2])))
    return mounts


def mount_of(path: str, mounts: Iterable[Mount]) -> Mount | None:
    """The mount holding an absolute, resolved `path`: the longest matching mount point.

    Of two mounts on the same point the later one wins, as it hides the earlier.
    """
    best: Mount | None = None
    for mount in mounts:
        point = mount.point.rstrip("/") or "/"
        inside = point == "/" or path == point or path.startswith(point + "/")
        if inside and (best is None or len(point) >= len(best.point.rstrip("/") or "/")):
            best = mount
    return best


def no_events_reason(fstype: str) -> str | None:
    """Why a file system of this type can change without file events, or None if it cannot."""
    known = _NO_EVENTS.get(fstype)
    if known is not None:
        return known
    if fstype.startswith("fuse."):
        if fstype in _LOCAL_FUSE:
            return None
        return _NO_EVENTS.get(fstype.removeprefix("fuse."), _FUSE)
    return _FUSE if fstype == "fuse" else None


def read_mount_table() -> list[Mount]:
    """This process's mounts, or an empty list where the kernel does not publish them."""
    for path, parse in (("/proc/self/mountinfo", parse_mountinfo), ("/proc/mounts", parse_mounts)):
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as file:
                return parse(file.read())
        except OSError:
            continue
    return []


class MountTable:
    """Answers "does this folder lack file events?" from a mount table read once.

    Safe to call from any thread: the table is read once under a lock, and answers are cached
    per folder (a lost race only computes an answer twice).
    """

    def __init__(self, mounts: Sequence[Mount] | None = None) -> None:
        self._mounts = None if mounts is None else list(mounts)
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[Mount, str] | None] = {}

    def _table(self) -> list[Mount]:
        with self._lock:
            if self._mounts is None:
                self._mounts = read_mount_table()
            return self._mounts

    def lacking_events(self, folder: str) -> tuple[Mount, str] | None:
        """The mount holding `folder` and why it sends no events, or None if events are reliable."""
        if folder in self._answers:
            return self._answers[folder]
        mount = mount_of(os.path.realpath(folder), self._table())
        reason = None if mount is None else no_events_reason(mount.fstype)
        answer = None if mount is None or reason is None else (mount, reason)
        self._answers[folder] = answer
        return answer


# ------------------------------------------------------------------ why a folder is polled


def forced_polling_reason(force_polling: bool) -> str | None:
    """Why file events are off: the option, the environment variable, or neither (None)."""
    if force_polling:
        return "--force-polling is set"
    value = os.environ.get(FORCE_POLLING_VARIABLE, "")
    if value.strip().lower() in ("1", "true", "yes"):
        return f"{FORCE_POLLING_VARIABLE}={value} is set"
    return None


def mount_polling_message(folder: str, interval: float | None, mount: Mount, reason: str) -> str:
    return (
        f"Polling the watched files in {folder} every {interval:g} s: it is on a {mount.fstype} mount "
        f"({mount.point}), {reason}."
    )


def watch_limit_message(interval: float | None) -> str:
    """The inotify watch limit is reached: what that means here, and how to raise it."""
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as file:
            limit = file.read().strip()
    except OSError:
        limit = "unknown"
    then = f"polled every {interval:g} s" if interval else "only checked by full scans"
    return (
        f"The inotify watch limit is reached (fs.inotify.max_user_watches = {limit}): folders left "
        f"without a watch are {then}. Raise it to get file events everywhere, e.g. "
        "`sudo sysctl fs.inotify.max_user_watches=524288`."
    )
