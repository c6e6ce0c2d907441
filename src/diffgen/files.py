"""Writing files so that a crash never leaves a half-written one.

The data goes to a temporary file in the same folder, is flushed to disk (fsync), and is then renamed
over the target (or, when replacing is not allowed, hard-linked to it, which fails if the target
appeared meanwhile). A crash at any moment leaves the old file or the new one, never a mix; the temporary
file a killed write left is removed the next time that file is written.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import tempfile
import time
from pathlib import Path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write `data` to `path` atomically; with overwrite=False an existing file raises FileExistsError."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files; give the usual permissions
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    remove_stale_temps(path)
    fsync_dir(path.parent)


STALE_TEMP_S = 600  # a temporary file this old is from a killed write, not one another process is making


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary files of `path` that a killed earlier write left (mkstemp's 8 random characters)."""
    stale = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if stale.fullmatch(leftover.name) and time.time() - leftover.stat().st_mtime > STALE_TEMP_S:
                leftover.unlink(missing_ok=True)
        except OSError:  # gone meanwhile, or not ours to remove: harmless either way
            pass


def write_fix(e: OSError) -> str:
    """What to do about a failed write, by its cause."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check the folder's permissions"
    return "check the disk"


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
