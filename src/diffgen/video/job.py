"""`upscale_video`: a video through the image upscaler frame by frame, in pieces that survive a stop.

Frames stream: decode one, upscale it exactly as an image (same tiles, same seed for every frame), encode it.
The encoded frames go into pieces of `segment_frames` frames in a hidden work folder beside the output
(`pieces.py`), each written under a temporary name and renamed when closed, so a finished piece is whole.
When all are done they are joined by remuxing (no second encode) with the source's sound and subtitles into a
temporary file beside the output, which is renamed over the output's name last. A stop (`stop()` true)
finishes the current piece so it plays; with `keep_partial` the pieces so far become a playable
`NAME.partial.EXT`. `resume` keeps the finished pieces and does the others. Under torchrun (`ranks`) the
processes share one video: process r does the pieces k ≡ r (mod K) and the first joins them. Design:
docs/video.md.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from diffgen import __version__
from diffgen.checkpoint import LoadedModel
from diffgen.errors import OptionError
from diffgen.files import fsync_dir, remove_stale_temps, umask, write_fix
from diffgen.provenance import model_identity
from diffgen.images import make_folder, to_model_range
from diffgen.runtime import Ranks, ranks_with
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
from diffgen.video.pieces import Work, together, work_folder
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
from diffgen.video.temporal import Stabilizer


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
    stabilize: bool = True,
    ranks: Ranks = Ranks(),
    on_progress: Callable[[VideoProgress], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> VideoResult:
    """Upscale the video `src` into `dst` (its suffix sets the container); sound and subtitles are copied.

    Under torchrun every process calls it with its `ranks` and encodes its share of the pieces; the first then
    joins them all. When one process fails, every process raises: its own error, or `PeerFailed`.
    """
    src, dst = Path(src), Path(dst)
    with ExitStack() as stack:

        def prepare():  # what would fail on every process, refused before any work
            require_av(src)
            encoding = choose_encoding(dst, codec, crf, pix_fmt)
            make_folder(dst.parent)
            if dst.exists() and not overwrite:
                raise VideoError(f"{dst}: already exists; pass --overwrite to replace it or choose another --out")
            source = stack.enter_context(open_source(src))
            size = output_size(source.probe, loaded.spec.scale, encoding.pix_fmt)
            check_writable(src, dst, encoding, source.probe, size)
            check_memory(loaded, src, frame_header(source.probe.width, source.probe.height), tile)
            return source, encoding, size, fingerprint(src, loaded, sampling, tile, encoding, segment_frames, stabilize)

        source, encoding, size, settings = together(prepare, ranks, dst)
        probe = source.probe
        work = stack.enter_context(work_folder(dst, settings, resume, ranks))
        upscaler = partial(piece_upscaler, partial(upscale_frame, loaded, tile=tile, sampling=sampling), stabilize)
        writer = Writer(encoding, probe, size)
        passed = together(lambda: encode_share(source, work, segment_frames, ranks, upscaler, writer,
                                               Reporter(on_progress, probe.total), stop), ranks, dst)
        stopped = bool(ranks_with(passed.stopped, ranks))
        kept = finish_partial(work, src, dst, probe, passed.pending) if stopped and keep_partial and ranks.main else None
        if passed.pending is not None:
            work.drop(passed.pending)
        if ranks.main and stopped:
            work.stop_file.unlink(missing_ok=True)
        elif ranks.main:
            finish(work, src, dst, probe, math.ceil(passed.done / segment_frames), overwrite=overwrite)
    scaled = (probe.width * loaded.spec.scale, probe.height * loaded.spec.scale)
    padded = [f"padded to {size[0]}x{size[1]}: {encoding.pix_fmt} needs even sizes"] if size != scaled else []
    return VideoResult(src, None if stopped else dst, passed.done, size, passed.earlier, stopped, kept,
                       "; ".join(list(probe.notes) + padded) or None)


def piece_upscaler(upscale: Callable[[np.ndarray], np.ndarray], stabilize: bool) -> Callable[[np.ndarray], np.ndarray]:
    """What upscales the frames of one piece: `upscale`, or a `Stabilizer` around it that starts afresh with the
    piece, so that a piece is the same whichever process encodes it and whether or not a resume skipped the one
    before it."""
    return Stabilizer(upscale) if stabilize else upscale


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
                segment_frames: int, stabilize: bool) -> dict:
    """Everything a piece's content depends on: a resume with other settings would join pieces that differ."""
    stat = src.stat()
    return {"source": str(src.resolve()), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
            "model": model_identity(loaded.path), "weights": weights_digest(loaded.model),
            "precision": loaded.precision, "sampling": asdict(sampling),
            "tile": tile, "codec": encoding.codec.value, "crf": encoding.crf, "pix_fmt": encoding.pix_fmt,
            "segment_frames": segment_frames, "stabilize": stabilize, "diffgen": __version__}


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of a network's weights: a `--denoise` blend, or a run folder trained further, differs."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().flatten().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class Writer:
    """Opens the pieces' encoders with one encoding, probe and size."""

    def __init__(self, encoding: Encoding, probe: Probe, size: tuple[int, int]):
        self.encoding, self.probe, self.size = encoding, probe, size

    def open(self, path: Path) -> SegmentWriter:
        return SegmentWriter(path, self.encoding, self.probe, self.size)


class Reporter:
    """Calls `on_progress` after each frame with the frames passed and this run's frames per second."""

    def __init__(self, on_progress, total: int | None):
        self.on_progress, self.total = on_progress, total
        self.start = time.monotonic()

    def __call__(self, done: int, earlier: int) -> None:
        if self.on_progress:
            seconds = max(time.monotonic() - self.start, 1e-9)
            self.on_progress(VideoProgress(done, self.total, (done - earlier) / seconds, earlier))


@dataclass(frozen=True)
class Pass:
    """How far one process went through the video's frames."""

    done: int  # frames passed: upscaled here, by another process or by an earlier run (all of them at the end)
    earlier: int  # of those, the frames of pieces an earlier run finished
    stopped: bool  # stop() stopped it before the end
    pending: int | None  # the stopped piece, closed (it plays) and left pending; None when there is none


def encode_share(source, work: Work, per_piece: int, ranks: Ranks, upscaler: Callable, writer: Writer,
                 report: Reporter, stop: Callable[[], bool] | None) -> Pass:
    """Encode this process's pieces, k ≡ rank (mod processes). In a split upscale a process that fails or is
    stopped asks the others to stop, and stops when another asks."""
    split = ranks.world > 1
    asked = lambda: bool(stop and stop()) or (split and work.stop_asked())  # noqa: E731
    try:
        passed = encode_pieces(source.frames(), work, per_piece, lambda k: k % ranks.world == ranks.rank, upscaler,
                               writer, report, asked)
    except BaseException:
        if split:
            work.ask_stop()
        raise
    if passed.stopped and split:
        work.ask_stop()
    return passed


def encode_pieces(frames: Iterator[Frame], work: Work, per_piece: int, mine: Callable[[int], bool],
                  upscaler: Callable[[], Callable], writer: Writer, report: Reporter, stop: Callable[[], bool]) -> Pass:
    """Upscale and encode the frames of the pieces that are `mine` and were not finished before, closing a piece
    every `per_piece` frames; `upscaler()` makes what upscales a piece's frames. Every frame is decoded, as a
    frame's index and timing depend on those before it, but only those upscaled here are converted to RGB.

    A stopped piece is closed (it plays) and left pending. Any exception removes the pending piece: the finished
    ones stay for a resume.
    """
    piece = None  # (number, writer) of the piece being written
    done = earlier = 0
    try:
        for frame in frames:
            number = frame.index // per_piece
            if number in work.earlier:
                earlier += 1
            elif mine(number):
                if stop():
                    break
                if piece is None:
                    piece, upscale = (number, writer.open(work.pending(number))), upscaler()
                piece[1].write(upscale(frame.rgb()), frame)
                report(frame.index + 1, earlier)
                if piece[1].frames == per_piece:
                    work.commit(*piece)
                    piece = None
            done = frame.index + 1
        else:
            if piece is not None:
                work.commit(*piece)
            return Pass(done, earlier, False, None)
    except BaseException:
        if piece is not None:
            work.drop(*piece)
        raise
    if piece is not None:
        piece[1].close()
    return Pass(done, earlier, True, piece and piece[0])


def finish(work: Work, src: Path, dst: Path, probe: Probe, count: int, *, overwrite: bool) -> None:
    """Join the `count` pieces with the source's sound and subtitles into `dst`, then remove the work folder."""
    if not count:
        raise VideoError(f"{src}: has no frames to upscale; {CORRUPT_FIX}")
    missing = sorted(set(range(count)) - work.finished())
    if missing:  # every process went to the end: each of its pieces is finished
        raise VideoError(f"{dst}: piece {missing[0]} of {count} is missing from {work.folder}; rerun with --resume")
    with open_source(src) as source:
        matrix = source.display_matrix()
    with atomic_output(dst, overwrite=overwrite) as tmp:
        join([work.piece(k) for k in range(count)], src, probe, tmp, CONTAINERS[dst.suffix.lower()], matrix=matrix)
    shutil.rmtree(work.folder, ignore_errors=True)


def finish_partial(work: Work, src: Path, dst: Path, probe: Probe, pending: int | None) -> Path | None:
    """The frames that play from the start (the finished pieces up to a gap, and this process's stopped piece when
    it comes next) as a playable NAME.partial.EXT beside `dst`, with the sound up to their end."""
    pieces = work.prefix()
    if pending == len(pieces) and work.pending(pending).is_file():
        pieces.append(work.pending(pending))
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
