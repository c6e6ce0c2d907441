"""The work folder of a video upscale: its settings, its finished pieces, the pieces being written, its lock.

Piece k holds frames [k·n, (k+1)·n) and depends only on them and the settings. A finished piece is
`000000.mp4`, `000001.mp4`, ...; it is written as `NNNNNN.pending.mp4`, synced and renamed, so a numbered
piece is always whole. Under torchrun every process writes its own pieces (k ≡ rank mod K) into the same
folder, so pieces may be finished out of order: a resume skips every finished piece, gaps included. Only
the first process holds the lock and sets the folder up; `together` makes every process fail when one does,
and a process that fails or is stopped leaves a `stop` file so that the others stop after their current frame.
Design: docs/video.md.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from diffgen.files import atomic_write, fsync_dir, write_fix
from diffgen.runtime import Ranks, ranks_with
from diffgen.video import PeerFailed, VideoError
from diffgen.video.streams import SegmentWriter

T = TypeVar("T")


class Work:
    """The hidden folder of an upscale in progress, `.NAME.diffgen-video/` beside the output."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.settings = folder / "settings.json"
        self.stop_file = folder / "stop"  # a process of a split upscale failed or was stopped
        self.earlier: set[int] = set()  # the pieces finished before this run, as found when it started
        self.owned = False  # this process holds the lock: the first process of a split upscale

    def piece(self, number: int) -> Path:
        return self.folder / f"{number:06d}.mp4"

    def pending(self, number: int) -> Path:
        return self.folder / f"{number:06d}.pending.mp4"

    def finished(self) -> set[int]:
        """The numbers of the finished pieces, in any order: under torchrun they finish out of order."""
        return {int(p.stem) for p in self.folder.glob("*.mp4") if p.stem.isdigit()}

    def prefix(self) -> list[Path]:
        """The finished pieces from the first up to the first one missing: what plays from the start."""
        found, done = [], self.finished()
        while len(found) in done:
            found.append(self.piece(len(found)))
        return found

    def commit(self, number: int, piece: SegmentWriter) -> None:
        """Close the piece, sync it to disk and give it its number: from now on it is finished."""
        piece.close()
        with open(self.pending(number), "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.pending(number), self.piece(number))
        fsync_dir(self.folder)

    def drop(self, number: int, piece: SegmentWriter | None = None) -> None:
        try:
            if piece is not None:
                piece.close()
        except Exception:  # a piece that failed mid-write may fail to close: it is deleted anyway
            pass
        self.pending(number).unlink(missing_ok=True)

    def ask_stop(self) -> None:
        self.stop_file.touch()

    def stop_asked(self) -> bool:
        return self.stop_file.exists()

    def start(self, settings: dict, dst: Path, resume: bool) -> None:
        """Keep the finished pieces of a resume with the same settings; refuse to drop them silently. Pieces left
        pending by a crash, and a stop request of an earlier split run, are removed."""
        done = len(self.finished())
        fresh = json.loads(json.dumps(settings))
        if done and not resume:
            raise VideoError(f"{dst}: an earlier upscale into it stopped after {done * settings['segment_frames']} "
                             f"frames; pass --resume to continue it, or delete {self.folder} to start again")
        for stale in [*self.folder.glob("*pending.mp4"), self.stop_file]:
            stale.unlink(missing_ok=True)
        if done:
            saved = json.loads(self.settings.read_text()) if self.settings.is_file() else {}
            changed = [key for key in fresh if saved.get(key) != fresh[key]]
            if changed:
                raise VideoError(f"{dst}: the stopped upscale into it used other settings ({', '.join(changed)}); "
                                 f"repeat its options with --resume, or delete {self.folder} to start again")
            return
        atomic_write(self.settings, json.dumps(fresh, indent=1).encode())


def together(step: Callable[[], T], ranks: Ranks, dst: Path) -> T:
    """Run `step` on every process and fail on all of them if it fails on one: a process raises its own error
    again, the others `PeerFailed` naming it. Without torchrun, just `step()`."""
    try:
        value = step()
    except BaseException:
        ranks_with(True, ranks)
        raise
    failed = ranks_with(False, ranks)
    if failed:
        which = ", ".join(map(str, failed))
        raise PeerFailed(f"{dst}: not finished: process {which} of {ranks.world} failed (above); rerun with --resume "
                         "to continue from the finished pieces")
    return value


@contextmanager
def work_folder(dst: Path, settings: dict, resume: bool, ranks: Ranks = Ranks()) -> Iterator[Work]:
    """The work folder beside `dst`, locked against a second diffgen writing the same output. Under torchrun the
    first process creates, locks and checks it; the others wait for that before they write pieces into it."""
    work = Work(dst.parent / f".{dst.name}.diffgen-video")
    try:
        with locked(work.folder / ".lock", dst, held=ranks.main) as lock:
            try:
                together(lambda: set_up(work, lock, settings, dst, resume, ranks), ranks, dst)
                yield work
            finally:
                if work.owned and work.folder.is_dir() and not work.finished():  # nothing to resume: leave no trace
                    shutil.rmtree(work.folder, ignore_errors=True)
    except OSError as e:
        raise VideoError(f"{dst}: cannot write the work folder {work.folder} ({e.strerror}); {write_fix(e)} or "
                         "choose another --out") from None


def set_up(work: Work, lock: Callable[[], None], settings: dict, dst: Path, resume: bool, ranks: Ranks) -> None:
    if ranks.main:
        work.folder.mkdir(exist_ok=True)
        lock()
        work.owned = True
        work.start(settings, dst, resume)
    work.earlier = work.finished()  # before any process of this run writes a piece


@contextmanager
def locked(path: Path, dst: Path, *, held: bool = True) -> Iterator[Callable[[], None]]:
    """A function that takes an exclusive flock on `path`, held until the context ends and dropped by the OS when
    the process ends (so it never goes stale). Not `held`: a function that does nothing (the other processes of a
    split upscale, Windows)."""
    try:
        import fcntl  # noqa: PLC0415 - not on Windows, where upscales are not locked
    except ImportError:
        held = False
    if not held:
        yield lambda: None
        return
    files = []

    def take() -> None:
        files.append(f := open(path, "a"))  # noqa: SIM115 - closed when the context ends
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VideoError(f"{dst}: another diffgen is upscaling into it; wait for it to finish") from None

    try:
        yield take
    finally:
        for f in files:
            f.close()
