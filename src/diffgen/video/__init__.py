"""Video upscaling: every frame through the image upscaler, one frame at a time, sound and timing kept.

This module holds what the CLI needs without importing torch or PyAV (so `diffgen --help` stays fast): which
files are videos, the codec choices and their defaults, and the error types. The work lives in
`streams.py` (reading, encoding and joining with PyAV) and `job.py` (`upscale_video`: segments, resume,
stop, the atomic output, sharing under torchrun), `pieces.py` (the work folder and its lock); docs/video.md
explains the design.

PyAV (the `av` package, which ships FFmpeg) is the optional extra `diffgen[video]`.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from diffgen.errors import DiffgenError

INSTALL = 'pip install "diffgen[video]"'

# Containers FFmpeg reads that are always videos; animated GIF and WebP are videos when they have frames.
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg", ".ts",
                  ".m2ts", ".mts", ".3gp", ".ogv"}
ANIMATION_SUFFIXES = {".gif", ".webp"}
# Containers diffgen writes, by suffix: FFmpeg's muxer names.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
WRITABLE_VIDEO = ".mp4, .m4v, .mov, .mkv or .webm"


class VideoError(DiffgenError):
    """A video file that cannot be read or written, or settings its container cannot hold."""


class PeerFailed(VideoError):
    """Another process of a video split across torchrun's processes failed (and said why): this one stops too."""


class Codec(str, Enum):
    h264 = "h264"
    h265 = "h265"
    vp9 = "vp9"


ENCODERS = {Codec.h264: "libx264", Codec.h265: "libx265", Codec.vp9: "libvpx-vp9"}
# Constant quality that is visually lossless: x264's customary 18; x265's scale sits about 5 higher for the
# same look (FFmpeg's H.265 guide: its 28 matches x264's 23); libvpx-vp9's 0-63 scale near 18.
DEFAULT_CRF = {Codec.h264: 18, Codec.h265: 22, Codec.vp9: 18}
MAX_CRF = {Codec.h264: 51, Codec.h265: 51, Codec.vp9: 63}
DEFAULT_PIX_FMT = "yuv420p"  # what every player decodes
SEGMENT_FRAMES = 120  # frames per independently encoded piece: what a stop loses and a resume skips


def default_codec(dst: Path) -> Codec:
    """h264, or vp9 for a .webm output (WebM holds VP8, VP9 and AV1 only)."""
    return Codec.vp9 if dst.suffix.lower() == ".webm" else Codec.h264


def output_suffix(src: Path) -> str:
    """The suffix of a video's output: its own where diffgen writes that container; .mp4 for animations (no sound
    to carry); .mkv for other containers, as Matroska holds any sound or subtitle codec they may carry."""
    suffix = src.suffix.lower()
    if suffix in CONTAINERS:
        return src.suffix
    return ".mp4" if suffix in ANIMATION_SUFFIXES else ".mkv"


def output_name(src: Path, suffix: str) -> str:
    """The name of a video's output beside it or under --out: clip.mp4 -> clip_x4.mp4, anim.gif -> anim_x4.mp4."""
    return f"{src.stem}{suffix}{output_suffix(src)}"


def partial_name(dst: Path) -> Path:
    """Where a stopped upscale keeps its frames so far, when asked: clip_x4.mp4 -> clip_x4.partial.mp4."""
    return dst.with_name(f"{dst.stem}{PARTIAL}{dst.suffix}")


PARTIAL = ".partial"


def is_partial(path: Path) -> bool:
    """A partial output (`partial_name`): a folder scan should not upscale it again."""
    return Path(path).stem.endswith(PARTIAL)


def is_video(path: Path) -> bool:
    """Whether diffgen upscales `path` as a video: by suffix, by the container's first bytes when the suffix is
    unknown, and GIF, WebP only when animated (more than one frame)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return True
    if suffix in ANIMATION_SUFFIXES:
        return frame_count(path) > 1
    return suffix not in IMAGE_LIKE and sniffed_video(path)


IMAGE_LIKE = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def frame_count(path: Path) -> int:
    """Frames in an image file (1 for a still image or one Pillow cannot read: the image path reports it)."""
    from PIL import Image  # noqa: PLC0415 - Pillow's import is slower than this module's

    try:
        with Image.open(path) as img:
            return getattr(img, "n_frames", 1)
    except Exception:  # Pillow raises many types for bad data
        return 1


def sniffed_video(path: Path) -> bool:
    """A file whose first bytes are an MP4/MOV box (not a HEIF or AVIF image), a Matroska/WebM header or an AVI header."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    mp4 = head[4:8] == b"ftyp" and head[8:12] not in STILL_BRANDS
    return mp4 or head[:4] == b"\x1a\x45\xdf\xa3" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")


STILL_BRANDS = {b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis"}  # HEIF and AVIF images are MP4 boxes too


def require_av(path: Path):
    """The `av` module, or a one-line error naming the extra that installs it."""
    try:
        import av  # noqa: PLC0415
    except ImportError:
        raise VideoError(f"{path}: upscaling videos needs PyAV, which is not installed; {INSTALL}") from None
    if not hasattr(av.video.stream.VideoStream, "set_display_matrix"):  # PyAV 18 on: rotation can be written
        raise VideoError(f"{path}: upscaling videos needs PyAV 18 or later, and {av.__version__} is installed; "
                         f"pip install -U \"diffgen[video]\"")
    return av
