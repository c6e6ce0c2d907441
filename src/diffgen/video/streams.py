"""Reading, encoding and joining video with PyAV (FFmpeg's libraries).

A source yields frames with their timestamps, decoding each only when it is asked for its pixels (frames a
resume skips are never converted). `SegmentWriter` encodes upscaled frames into one piece, an MP4 file (MP4
keeps the source's time base exactly, as a multiple, and each frame's duration; NUT, tried first, keeps
no durations). `joining.join` remuxes the pieces into the output.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from diffgen.video import (
    ANIMATION_SUFFIXES,
    CONTAINERS,
    ENCODERS,
    WRITABLE_VIDEO,
    Codec,
    VideoError,
    require_av,
)

COPIED_TYPES = ("audio", "subtitle")  # streams carried unchanged; others (data, attachments, cover art) are left out
CORRUPT_FIX = "replace the file, or repair it with ffmpeg -i IN -c copy OUT.mkv"


@dataclass(frozen=True)
class Frame:
    index: int  # in display order, from 0
    pts: int  # in the source's time base
    duration: int
    rgb: Callable[[], np.ndarray]  # decodes to (H, W, 3) uint8


@dataclass(frozen=True)
class Probe:
    """What the output needs to know of a source before its first frame."""

    width: int
    height: int
    time_base: Fraction
    rate: Fraction  # average frames per second, for the encoder's rate control
    total: int | None  # frames, when the container says
    colour: dict[str, int]  # colorspace, color_range, color_primaries, color_trc: copied to the output
    sample_aspect: Fraction | None  # of anamorphic video
    copied: tuple[int, ...]  # indexes of the sound and subtitle streams carried unchanged
    notes: tuple[str, ...]  # what the output leaves out


@contextmanager
def reading(path: Path, what: str = "truncated or corrupt video"):
    """Turn FFmpeg's errors while reading `path` into one line naming the file and the fix."""
    av = require_av(path)
    try:
        yield
    except FileNotFoundError:
        raise VideoError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise VideoError(f"{path}: is a folder, not a video") from None
    except PermissionError:
        raise VideoError(f"{path}: permission denied; check the file's permissions") from None
    except av.error.DecoderNotFoundError:
        raise VideoError(f"{path}: its video codec is one FFmpeg cannot decode; convert it first, e.g. "
                         "ffmpeg -i IN -c:v libx264 OUT.mp4") from None
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: {what} ({e.strerror}); {CORRUPT_FIX}") from None


def open_source(path: Path):
    """The frames of a video file, or of an animated GIF or WebP (which Pillow reads: FFmpeg has no animated WebP)."""
    return AnimationSource(path) if Path(path).suffix.lower() in ANIMATION_SUFFIXES else VideoSource(path)


class VideoSource:
    """A video file's first video stream, decoded frame by frame."""

    def __init__(self, path: Path):
        self.path = Path(path)
        av = require_av(path)
        with reading(self.path):
            self.container = av.open(str(self.path))
        try:
            self.stream = main_video_stream(self.container, self.path)
            self.probe = self.read_probe()
        except BaseException:
            self.container.close()
            raise

    def read_probe(self) -> Probe:
        s = self.stream
        cc = s.codec_context
        rate = s.average_rate or s.guessed_rate or Fraction(25)
        copied = tuple(t.index for t in self.container.streams if t.type in COPIED_TYPES)
        left = [f"{t.type} stream {t.index}" for t in self.container.streams if t.index not in copied and t is not s]
        notes = (f"left out {', '.join(left)}: only sound and subtitles are carried",) if left else ()
        colour = {k: int(getattr(cc, k)) for k in ("colorspace", "color_range", "color_primaries", "color_trc")}
        return Probe(cc.width, cc.height, s.time_base, rate, s.frames or None, colour,
                     cc.sample_aspect_ratio or None, copied, notes)

    def frames(self) -> Iterator[Frame]:
        default = round(1 / (self.probe.rate * self.stream.time_base)) or 1
        s = self.stream
        end = s.start_time + s.duration if s.start_time is not None and s.duration else None
        with reading(self.path):
            size = self.probe.width, self.probe.height
            decoded = ((f.pts, f.duration, partial(to_rgb, f, *size)) for f in self.container.decode(s))
            yield from timed(decoded, default, end)

    def display_matrix(self) -> list[int] | None:
        """The rotation and flips players apply (FFmpeg hands the stream's matrix to each decoded frame)."""
        with reading(self.path):
            for frame in self.container.decode(self.stream):
                for side in frame.side_data:
                    if side.type.name == "DISPLAYMATRIX":
                        return np.frombuffer(bytes(side), np.int32).tolist()
                return None
        return None

    def close(self) -> None:
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def is_complete_video(path: Path) -> bool:
    """Whether a video file opens, has a video stream and reads to its end: for --skip-existing, so an output
    cut short by another tool (a copy, a full disk) is done again."""
    av = require_av(path)
    try:
        with av.open(str(path)) as container:
            for _ in container.demux():
                pass
            return bool(container.streams.video)
    except (av.error.FFmpegError, OSError):
        return False


def main_video_stream(container, path: Path):
    """The first video stream that is not a cover picture."""
    av = require_av(path)
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        raise VideoError(f"{path}: has no video stream; give a video file (sound-only files cannot be upscaled)")
    if videos[0].codec_context is None:
        raise VideoError(f"{path}: its video codec is one FFmpeg cannot decode; convert it first, e.g. "
                         "ffmpeg -i IN -c:v libx264 OUT.mp4")
    return videos[0]


def to_rgb(frame, width: int, height: int) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB, through its own colour matrix (PyAV reads the frame's tag), at the
    stream's size (a stream that changes size midway is scaled back to its first)."""
    return frame.to_ndarray(format="rgb24", width=width, height=height)


def timed(decoded: Iterator[tuple[int | None, int | None, Callable]], default: int, end: int | None = None
          ) -> Iterator[Frame]:
    """Frames with strictly increasing timestamps and the durations up to the next one; the last lasts up to the
    stream's `end` (a decoder's own frame durations are those of packets in decode order, not reliable).

    A frame without a timestamp follows the one before it by `default`.
    """
    previous = None  # (pts, own duration, rgb) of the frame waiting for its successor
    index = 0
    for pts, duration, rgb in decoded:
        if previous is not None:
            pts = previous[0] + default if pts is None else max(pts, previous[0] + 1)
            yield Frame(index, previous[0], pts - previous[0], previous[2])
            index += 1
        previous = (0 if pts is None else pts, duration, rgb)
    if previous is not None:
        last = end - previous[0] if end is not None and end > previous[0] else previous[1] or default
        yield Frame(index, previous[0], last, previous[2])


class AnimationSource:
    """The frames of an animated GIF or WebP, with their durations in milliseconds."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.image = Image.open(self.path)
            self.image.seek(0)
        except FileNotFoundError:
            raise VideoError(f"{path}: no such file") from None
        except Exception:  # Pillow raises many types for bad data
            raise VideoError(f"{path}: truncated or corrupt animation; replace the file") from None
        total = getattr(self.image, "n_frames", 1)
        seconds = sum(frame.copy().info.get("duration") or 100 for frame in ImageSequence.Iterator(self.image)) / 1000
        self.image.seek(0)
        note = ("dropped the transparency: the video codecs have none",) if has_transparency(self.image) else ()
        self.probe = Probe(self.image.width, self.image.height, Fraction(1, 1000),
                           Fraction(total / max(seconds, 1e-3)).limit_denominator(1001), total,
                           {}, None, (), note)

    def frames(self) -> Iterator[Frame]:
        pts = 0
        try:
            for index, frame in enumerate(ImageSequence.Iterator(self.image)):
                frame = frame.copy()  # WebP frames hold their duration only in a copy
                duration = max(1, frame.info.get("duration") or 100)  # 0 ms would not advance the clock
                yield Frame(index, pts, duration, partial(animation_rgb, frame))
                pts += duration
        except Exception:  # Pillow raises many types for bad data
            raise VideoError(f"{self.path}: truncated or corrupt animation; replace the file") from None

    def display_matrix(self) -> None:
        return None

    def close(self) -> None:
        self.image.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def animation_rgb(frame: Image.Image) -> np.ndarray:
    return np.asarray(frame.convert("RGB"), dtype=np.uint8).copy()


def has_transparency(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info


@dataclass(frozen=True)
class Encoding:
    codec: Codec
    crf: int
    pix_fmt: str


def encoder_options(encoding: Encoding) -> dict[str, str]:
    """Constant quality, and no B-frames for H.264 and H.265: a piece's decode timestamps then equal its
    presentation timestamps, so pieces join in order whatever the frame timing. (With B-frames x264 guesses
    the first decode timestamps of each piece from its own frame gaps, which in variable frame rate video can
    overlap the piece before.) VP9 needs no such care: FFmpeg hands its frames out in order."""
    crf = str(encoding.crf)
    if encoding.codec is Codec.vp9:
        return {"crf": crf, "b": "0", "row-mt": "1"}  # b=0: constant quality, not a bitrate cap
    options = {"crf": crf, "bf": "0"}
    return options | {"x265-params": "log-level=error"} if encoding.codec is Codec.h265 else options


def chroma_multiple(pix_fmt: str) -> tuple[int, int]:
    """How many pixels wide and high one chroma sample of `pix_fmt` is: (2, 2) for yuv420p, (1, 1) for yuv444p."""
    av = require_av(Path(pix_fmt))
    components = av.VideoFormat(pix_fmt, 4, 4).components
    return 4 // min(c.width for c in components), 4 // min(c.height for c in components)


def add_video_stream(container, encoding: Encoding, probe: Probe, size: tuple[int, int]):
    """An encoder for the upscaled frames, in the source's time base, frame rate, colours and pixel shape."""
    stream = container.add_stream(ENCODERS[encoding.codec], rate=probe.rate, options=encoder_options(encoding))
    stream.width, stream.height = size
    stream.pix_fmt = encoding.pix_fmt
    stream.time_base = probe.time_base
    context = stream.codec_context
    context.time_base = probe.time_base
    for key, value in probe.colour.items():
        setattr(context, key, value)
    if probe.sample_aspect:
        context.sample_aspect_ratio = probe.sample_aspect
    return stream


class SegmentWriter:
    """Encodes upscaled frames into one piece (an MP4 file), each packet with its frame's duration."""

    def __init__(self, path: Path, encoding: Encoding, probe: Probe, size: tuple[int, int]):
        self.av = require_av(path)
        self.encoding, self.probe, self.size = encoding, probe, size
        self.container = self.av.open(str(path), "w", format="mp4")
        self.stream = add_video_stream(self.container, encoding, probe, size)
        self.durations: dict[int, int] = {}  # pts -> duration of the frames in the encoder
        self.frames = 0

    def write(self, rgb: np.ndarray, frame: Frame) -> None:
        out = self.av.VideoFrame.from_ndarray(pad_to(rgb, self.size), format="rgb24")
        out = out.reformat(format=self.encoding.pix_fmt, dst_colorspace=self.probe.colour.get("colorspace"))
        out.pts, out.time_base = frame.pts, self.probe.time_base
        self.durations[frame.pts] = frame.duration
        self.mux(self.stream.encode(out))
        self.frames += 1

    def mux(self, packets) -> None:
        for packet in packets:
            packet.duration = self.durations.pop(packet.pts, packet.duration)
            packet.dts = packet.pts  # frames leave in display order (no B-frames); libvpx's own guesses differ
            self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and finish the file: it plays on its own."""
        try:
            self.mux(self.stream.encode(None))
        finally:
            self.container.close()


def pad_to(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Repeat the last column and row up to (width, height): 4:2:0 encoders take even sizes only."""
    h, w = rgb.shape[:2]
    if (w, h) == size:
        return rgb
    return np.pad(rgb, ((0, size[1] - h), (0, size[0] - w), (0, 0)), mode="edge")


def check_writable(src: Path, dst: Path, encoding: Encoding, probe: Probe, size: tuple[int, int]) -> None:
    """Refuse now, not after hours of upscaling, what the encoder or the output's container cannot take."""
    av = require_av(src)
    fmt = CONTAINERS.get(dst.suffix.lower())
    if fmt is None:
        raise VideoError(f"{dst}: diffgen cannot write {dst.suffix or 'suffix-less'} videos; use {WRITABLE_VIDEO}")
    w, h = size
    if not accepts(av, "matroska", lambda out: add_video_stream(out, encoding, probe, size)):
        raise VideoError(f"--codec {encoding.codec.value}: cannot encode {w}x{h} frames in {encoding.pix_fmt} (H.265 "
                         "needs at least 64x64 or so); choose another --codec or --pix-fmt")
    if not accepts(av, fmt, lambda out: add_video_stream(out, encoding, probe, size)):
        raise VideoError(f"{dst}: a {dst.suffix} file cannot hold {encoding.codec.value} video; choose another "
                         f"--codec, or an --out name ending in .mkv (Matroska holds any codec)")
    if not probe.copied:
        return
    with reading(src), av.open(str(src)) as source:
        for index in probe.copied:
            stream = source.streams[index]
            if not accepts(av, fmt, lambda out: out.add_stream_from_template(stream)):
                name = stream.codec_context.name if stream.codec_context else "unknown codec"
                raise VideoError(f"{src}: its {stream.type} stream {index} ({name}) cannot go into a {dst.suffix} file; "
                                 "choose an --out name ending in .mkv (Matroska holds any sound and subtitles)")


def accepts(av, fmt: str, add_streams: Callable) -> bool:
    """Whether FFmpeg opens the encoders and writes the header of a `fmt` file with these streams."""
    try:
        with av.open(io.BytesIO(), "w", format=fmt) as out:
            add_streams(out)
            out.start_encoding()
    except (av.error.FFmpegError, ValueError):
        return False
    return True
