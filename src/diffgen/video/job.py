"""`upscale_video`: a video through the image upscaler frame by frame, in pieces that survive a stop.

Frames stream: decode one, upscale it exactly as an image (same tiles, same seed for every frame), encode it.
The encoded frames go into pieces of `segment_frames` frames in a hidden work folder beside the output
(`.NAME.diffgen-video/`), each written under a temporary name and renamed when closed, so a finished piece
is whole. When all are done they are joined by remuxing (no second encode) with the source's sound and
subtitles into a temporary file beside the output, which is renamed over the output's name last. A stop
(`stop()` true) finishes the current piece so it plays; with `keep_partial` the pieces so far become a
playable `NAME.partial.EXT`. `resume` keeps the finished pieces and starts at the next. Design: docs/video.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from diffgen import __version__
from diffgen.checkpoint import LoadedModel
from diffgen.errors import OptionError
from diffgen.files import atomic_write, fsync_dir, remove_stale_temps, umask, write_fix
from diffgen.provenance import model_identity
from diffgen.images import make_folder, to_model_range
from diffgen.upscale import Sampling, check_memory, upscale_tiled
from diffgen.video import (
    CONTAINERS,
    DEFAULT_CRF,
    DEFAULT_PIX_FMT,
    MAX_CRF,
    SEGMENT_FRAMES,
    Codec,
    VideoError,
    default_codec,
    partial_name,
    require_av,
)
from diffgen.video.joining import join
from diffgen.video.streams import (
    CORRUPT_FIX,
    Encoding,
    Frame,
    Probe,
    SegmentWriter,
    check_writable,
    chroma_multiple,
    open_source,
)


@dataclass(frozen=True)
class VideoProgress:
    done: int  # frames finished, those of earlier runs included
    total: int | None  # frames in the video, when its container says
    fps: float  # frames upscaled per second in this run
    resumed_from: int  # frames an earlier run finished


@dataclass(frozen=True)
class VideoResult:
    src: Path
    dst: Path | None  # the finished output; None when stopped
    frames: int  # frames in the output (or upscaled so far, when stopped)
    size: tuple[int, int]  # output width, height
    resumed_from: int  # frames taken from an earlier run
    stopped: bool  # stop() asked to stop before the end: resume continues
    partial: Path | None  # the playable output of the frames so far, kept when asked
    note: str | None  # what the output leaves out or changes


def upscale_frame(loaded: LoadedModel, rgb: np.ndarray, *, tile: int | None, sampling: Sampling) -> np.ndarray:
    """One (H, W, 3) uint8 frame upscaled as `upscale_image` upscales an RGB picture."""
    pixels = torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy())  # torch wants memory it may write
    return upscale_tiled(loaded, to_model_range(pixels.permute(2, 0, 1)), tile=tile, sampling=sampling)


def upscale_video(
    src: Path,
    dst: Path,
    loaded: LoadedModel,
    *,
    sampling: Sampling = Sampling(),
    tile: int | None = None,
    codec: Codec | None = None,
    crf: int | None = None,
    pix_fmt: str = DEFAULT_PIX_FMT,
    overwrite: bool = False,
    keep_partial: bool = False,
    resume: bool = False,
    segment_frames: int = SEGMENT_FRAMES,
    on_progress: Callable[[VideoProgress], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> VideoResult:
    """Upscale the video `src` into `dst` (its suffix sets the container); sound and subtitles are copied."""
    src, dst = Path(src), Path(dst)
    require_av(src)
    encoding = choose_encoding(dst, codec, crf, pix_fmt)
    make_folder(dst.parent)
    if dst.exists() and not overwrite:
        raise VideoError(f"{dst}: already exists; pass --overwrite to replace it or choose another --out")
    with open_source(src) as source:
        probe = source.probe
        size = output_size(probe, loaded.spec.scale, encoding.pix_fmt)
        check_writable(src, dst, encoding, probe, size)
        check_memory(loaded, src, frame_header(probe.width, probe.height), tile)
        settings = fingerprint(src, loaded, sampling, tile, encoding, segment_frames)
        with work_folder(dst, settings, resume) as work:
            first = len(work.pieces()) * segment_frames
            upscale = partial(upscale_frame, loaded, tile=tile, sampling=sampling)
            done, stopped = encode_pieces(source.frames(), work, first, segment_frames, upscale,
                                          Writer(encoding, probe, size), Reporter(on_progress, probe.total, first), stop)
            kept = finish_partial(work, src, dst, probe) if stopped and keep_partial else None
            if stopped:
                work.drop_pending(None)
            else:
                finish(work, src, dst, probe, overwrite=overwrite)
    scaled = (probe.width * loaded.spec.scale, probe.height * loaded.spec.scale)
    padded = [f"padded to {size[0]}x{size[1]}: {encoding.pix_fmt} needs even sizes"] if size != scaled else []
    return VideoResult(src, None if stopped else dst, done, size, min(first, done), stopped, kept,
                       "; ".join(list(probe.notes) + padded) or None)


def choose_encoding(dst: Path, codec: Codec | None, crf: int | None, pix_fmt: str) -> Encoding:
    """The codec (by default h264, vp9 for .webm), its visually lossless crf, and a pixel format FFmpeg knows."""
    codec = Codec(codec) if codec else default_codec(dst)
    crf = DEFAULT_CRF[codec] if crf is None else crf
    if not 0 <= crf <= MAX_CRF[codec]:
        raise OptionError(f"--crf {crf}: {codec.value} takes 0 (lossless) to {MAX_CRF[codec]}; "
                          f"{DEFAULT_CRF[codec]} looks the same as the source")
    try:
        chroma_multiple(pix_fmt)
    except ValueError:
        raise OptionError(f"--pix-fmt {pix_fmt}: not a pixel format FFmpeg knows; e.g. yuv420p (plays everywhere), "
                          "yuv444p (full colour detail) or yuv420p10le (10 bits)") from None
    return Encoding(codec, crf, pix_fmt)


def output_size(probe: Probe, scale: int, pix_fmt: str) -> tuple[int, int]:
    """The upscaled size, rounded up to what `pix_fmt`'s chroma subsampling takes."""
    mw, mh = chroma_multiple(pix_fmt)
    w, h = scale * probe.width, scale * probe.height
    return w + -w % mw, h + -h % mh


def frame_header(width: int, height: int) -> SimpleNamespace:
    """What `check_memory` reads of an image's header (size, mode, info), for one RGB frame."""
    return SimpleNamespace(width=width, height=height, mode="RGB", info={})


def fingerprint(src: Path, loaded: LoadedModel, sampling: Sampling, tile: int | None, encoding: Encoding,
                segment_frames: int) -> dict:
    """Everything a piece's content depends on: a resume with other settings would join pieces that differ."""
    stat = src.stat()
    return {"source": str(src.resolve()), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
            "model": model_identity(loaded.path), "precision": loaded.precision, "sampling": asdict(sampling),
            "tile": tile, "codec": encoding.codec.value, "crf": encoding.crf, "pix_fmt": encoding.pix_fmt,
            "segment_frames": segment_frames, "diffgen": __version__}


class Writer:
    """Opens the pieces' encoders with one encoding, probe and size."""

    def __init__(self, encoding: Encoding, probe: Probe, size: tuple[int, int]):
        self.encoding, self.probe, self.size = encoding, probe, size

    def open(self, path: Path) -> SegmentWriter:
        return SegmentWriter(path, self.encoding, self.probe, self.size)


class Reporter:
    """Calls `on_progress` after each frame with frames done and this run's frames per second."""

    def __init__(self, on_progress, total: int | None, first: int):
        self.on_progress, self.total, self.first = on_progress, total, first
        self.start = time.monotonic()

    def __call__(self, done: int) -> None:
        if self.on_progress:
            seconds = max(time.monotonic() - self.start, 1e-9)
            self.on_progress(VideoProgress(done, self.total, (done - self.first) / seconds, self.first))


def encode_pieces(frames: Iterator[Frame], work: Work, first: int, per_piece: int, upscale: Callable,
                  writer: Writer, report: Reporter, stop: Callable[[], bool] | None) -> tuple[int, bool]:
    """Upscale and encode the frames from `first` on, closing a piece every `per_piece` frames.

    Returns the frames done and whether `stop` stopped it; a stopped piece is closed (it plays) and left
    pending. Any exception removes the pending piece: the finished ones stay for a resume.
    """
    piece, done = None, 0
    try:
        for frame in frames:
            done += 1
            if frame.index < first:
                continue  # finished in an earlier run
            if stop and stop():
                done -= 1
                break
            if piece is None:
                piece = writer.open(work.pending)
            piece.write(upscale(frame.rgb()), frame)
            report(done)
            if piece.frames == per_piece:
                work.commit(piece)
                piece = None
        else:
            if piece is not None:
                work.commit(piece)
            return done, False
    except BaseException:
        work.drop_pending(piece)
        raise
    if piece is not None:
        piece.close()
    return done, True


class Work:
    """The hidden folder of an upscale in progress: its settings and its finished pieces, 000000.mp4 on."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.pending = folder / "pending.mp4"
        self.settings = folder / "settings.json"

    def pieces(self) -> list[Path]:
        """The finished pieces, in order (a gap ends them: what follows it was never finished in order)."""
        found = []
        while (path := self.folder / f"{len(found):06d}.mp4").is_file():
            found.append(path)
        return found

    def commit(self, piece: SegmentWriter) -> None:
        """Close the pending piece, sync it to disk and give it its number: from now on it is finished."""
        piece.close()
        with open(self.pending, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.pending, self.folder / f"{len(self.pieces()):06d}.mp4")
        fsync_dir(self.folder)

    def drop_pending(self, piece: SegmentWriter | None) -> None:
        try:
            if piece is not None:
                piece.close()
        except Exception:  # a piece that failed mid-write may fail to close: it is deleted anyway
            pass
        self.pending.unlink(missing_ok=True)

    def start(self, settings: dict, dst: Path, resume: bool) -> None:
        """Keep the finished pieces of a resume with the same settings; refuse to drop them silently."""
        done = len(self.pieces())
        fresh = json.loads(json.dumps(settings))
        if done and not resume:
            raise VideoError(f"{dst}: an earlier upscale into it stopped after {done * settings['segment_frames']} "
                             f"frames; pass --resume to continue it, or delete {self.folder} to start again")
        if done:
            saved = json.loads(self.settings.read_text()) if self.settings.is_file() else {}
            changed = [key for key in fresh if saved.get(key) != fresh[key]]
            if changed:
                raise VideoError(f"{dst}: the stopped upscale into it used other settings ({', '.join(changed)}); "
                                 f"repeat its options with --resume, or delete {self.folder} to start again")
            return
        self.pending.unlink(missing_ok=True)
        atomic_write(self.settings, json.dumps(fresh, indent=1).encode())


@contextmanager
def work_folder(dst: Path, settings: dict, resume: bool) -> Iterator[Work]:
    """The work folder beside `dst`, locked against a second diffgen writing the same output."""
    work = Work(dst.parent / f".{dst.name}.diffgen-video")
    try:
        work.folder.mkdir(exist_ok=True)
        with locked(work.folder / ".lock", dst):
            try:
                work.start(settings, dst, resume)
                yield work
            finally:
                if work.folder.is_dir() and not work.pieces():  # nothing worth resuming: leave no trace
                    shutil.rmtree(work.folder, ignore_errors=True)
    except OSError as e:
        raise VideoError(f"{dst}: cannot write the work folder {work.folder} ({e.strerror}); {write_fix(e)} or "
                         "choose another --out") from None


@contextmanager
def locked(path: Path, dst: Path):
    """An exclusive flock on `path`, dropped by the OS when the process ends (so it never goes stale)."""
    try:
        import fcntl  # noqa: PLC0415 - not on Windows, where upscales are not locked
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VideoError(f"{dst}: another diffgen is upscaling into it; wait for it to finish") from None
        yield


def finish(work: Work, src: Path, dst: Path, probe: Probe, *, overwrite: bool) -> None:
    """Join the finished pieces with the source's sound and subtitles into `dst`, then remove the work folder."""
    pieces = work.pieces()
    if not pieces:
        raise VideoError(f"{src}: has no frames to upscale; {CORRUPT_FIX}")
    with open_source(src) as source:
        matrix = source.display_matrix()
    with atomic_output(dst, overwrite=overwrite) as tmp:
        join(pieces, src, probe, tmp, CONTAINERS[dst.suffix.lower()], matrix=matrix)
    shutil.rmtree(work.folder, ignore_errors=True)


def finish_partial(work: Work, src: Path, dst: Path, probe: Probe) -> Path | None:
    """The frames so far as a playable NAME.partial.EXT beside `dst`, with the sound up to their end."""
    pieces = work.pieces() + ([work.pending] if work.pending.is_file() else [])
    if not pieces:
        return None
    partial = partial_name(dst)
    with open_source(src) as source:
        matrix = source.display_matrix()
    with atomic_output(partial, overwrite=True) as tmp:
        join(pieces, src, probe, tmp, CONTAINERS[dst.suffix.lower()], matrix=matrix, until=video_end(pieces[-1]))
    return partial


def video_end(piece: Path) -> float:
    """When the last frame of a piece ends, in seconds."""
    av = require_av(piece)
    end = 0.0
    with av.open(str(piece)) as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.pts is not None:
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return end


@contextmanager
def atomic_output(path: Path, *, overwrite: bool) -> Iterator[Path]:
    """A temporary file beside `path` for a writer that needs a file name (FFmpeg's muxers): synced, then renamed
    over `path`, or hard-linked to it when replacing is not allowed. As `files.atomic_write`, for a file."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files; give the usual permissions
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        raise VideoError(f"{path}: already exists; pass --overwrite to replace it or choose another --out") from None
    except OSError as e:
        raise VideoError(f"{path}: cannot write ({e.strerror}); {write_fix(e)} or choose another --out") from None
    finally:
        tmp.unlink(missing_ok=True)
    remove_stale_temps(path)
    fsync_dir(path.parent)
