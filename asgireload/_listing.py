"""What a folder offers to `import`: the names of the modules and packages in it, as one key.

A project layer's held module may have looked for a module that was not there (`try: import x`,
a plugin folder listed at import): a file created or deleted since would change what a fresh
process imports. The layer reports each project folder it imported from as `FOLDER/` with this
key as its stat; the supervisor compares the key now. Only module-like names count (`.py`, an
extension module, a folder), so an editor's temporary and swap files change nothing.
"""

from __future__ import annotations

import os
import zlib

_MODULE_SUFFIXES = (".py", ".pyc", ".so", ".pyd", ".pyw")


def listing_key(folder: str) -> tuple[int, int, int] | None:
    """(checksum of the sorted module-like names, their number, 0); None if it cannot be listed."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    names = sorted(
        entry.name
        for entry in entries
        if not entry.name.startswith((".", "__pycache__"))
        and (entry.name.endswith(_MODULE_SUFFIXES) or entry.is_dir())
    )
    return (zlib.crc32("\0".join(names).encode("utf-8", "surrogateescape")), len(names), 0)
