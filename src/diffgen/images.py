"""Reading and writing image files, and converting them to and from model tensors.

Model tensors are float (C, H, W) in [-1, 1]. Reading refuses decompression bombs above a pixel
limit (env `DIFFGEN_MAX_PIXELS`), applies EXIF orientation and takes the first frame of animations.
Deep grey images (16-bit, 32-bit, float) are scaled by the range their values are in, and CMYK goes to
sRGB through its own ICC profile. Writing is atomic and never replaces an existing file unless asked to;
the format follows the suffix (PNG, JPEG, WebP, TIFF, BMP), and what a format cannot hold (transparency,
16 bits, EXIF) is dropped with a note.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, PngImagePlugin
from torch import Tensor

from diffgen.errors import ImageError
from diffgen.files import atomic_write, write_fix

DEFAULT_MAX_PIXELS = 256_000_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def max_pixels() -> int:
    return int(os.environ.get("DIFFGEN_MAX_PIXELS", DEFAULT_MAX_PIXELS))


def open_image(path: Path, *, decode: bool = True, upright: bool = True) -> Image.Image:
    """Open and fully decode an image, or raise ImageError saying why it cannot be used.

    With `decode=False` only the header is read: size, mode and metadata, not the pixels. With `upright=False`
    the pixels are as stored, not turned by the EXIF orientation.
    """
    path = Path(path)
    limit = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # our own limit below replaces Pillow's
            with Image.open(path) as img:
                if img.width * img.height > limit:
                    raise ImageError(
                        f"{path}: {img.width}x{img.height} pixels is over the limit of {limit:,}; "
                        "raise DIFFGEN_MAX_PIXELS if the file is trusted"
                    )
                if not decode:
                    return img
                img.info["frames"] = getattr(img, "n_frames", 1)  # animations and multi-page TIFFs: frame 0
                img.seek(0)
                img.load()
                if upright:
                    ImageOps.exif_transpose(img, in_place=True)  # keeps the file's metadata (PNG text, ICC)
                return img
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied; check the file's permissions") from None
    except Exception as e:  # Pillow raises many types for bad data
        reason = "not an image" if isinstance(e, Image.UnidentifiedImageError) else "truncated or corrupt image"
        raise ImageError(f"{path}: {reason}; replace or remove the file") from None


def is_complete_image(path: Path) -> bool:
    """Whether an image file is whole: a PNG's chunk checksums, a JPEG's end marker, else a full decode.

    For --skip-existing, so an output cut short (by a crash of another tool, a full disk, a copy) is redone.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # as in open_image: an output may be larger than Pillow's limit
            with Image.open(path) as img:
                if img.format == "JPEG":
                    with open(path, "rb") as f:
                        f.seek(-2, os.SEEK_END)
                        return f.read(2) == b"\xff\xd9"
                if img.format == "PNG":
                    img.verify()  # reads every chunk to IEND without decoding pixels
                else:
                    img.load()
                return True
    except Exception:  # Pillow raises many types for bad data
        return False


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to L (1 channel), RGB (3) or RGBA (4)."""
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    if img.mode in DEEP_GREY:
        # 16-bit, 32-bit and float images: scale to 8 bits before Pillow's convert clips them.
        arr = np.asarray(img, dtype=np.float64)
        black, white = grey_range(img.mode, arr)
        img = Image.fromarray(np.round((arr - black) / (white - black) * 255).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "CMYK":
        img = cmyk_to_rgb(img)[0]
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert(mode)


DEEP_GREY = ("I;16", "I;16B", "I;16L", "I", "F")


def grey_range(mode: str, arr: np.ndarray) -> tuple[float, float]:
    """The values that stand for black and white in a 16-bit, 32-bit integer or float grey image.

    Float images in [0, 1] are scaled by 1; other values by the first range that holds them: 8 bits, 16 bits,
    else from 0 (or their minimum, where it is negative) to their maximum.
    """
    if mode.startswith("I;16"):
        return 0.0, 65535.0
    low, high = float(arr.min(initial=0)), float(arr.max(initial=0))
    if mode == "F" and low >= 0 and high <= 1:
        return 0.0, 1.0
    for white in (255.0, 65535.0):
        if low >= 0 and high <= white:
            return 0.0, white
    return low, max(high, low + 1)


SRGB = ImageCms.createProfile("sRGB")


def cmyk_to_rgb(img: Image.Image) -> tuple[Image.Image, str]:
    """A CMYK image in sRGB through its own ICC profile, else by Pillow's naive formula; and a note saying which."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, profile, SRGB, outputMode="RGB"), "converted CMYK to sRGB with its ICC profile"
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # a profile LittleCMS cannot use
    return img.convert("RGB"), "converted CMYK to RGB"


def channels_of(img: Image.Image) -> int:
    """The channel count that keeps what an image has: grey, colour, transparency."""
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    grey = img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    return 4 if has_alpha else (1 if grey else 3)


def pil_to_tensor(img: Image.Image) -> Tensor:
    """A uint8 (C, H, W) tensor of an L, RGB or RGBA image."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def to_model_range(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float() / 127.5 - 1


def tensor_to_pil(x: Tensor) -> Image.Image:
    """A float (C, H, W) tensor in [-1, 1] to an 8-bit L, RGB or RGBA image."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2]])


def make_grid(images: list[Image.Image], ncols: int, pad: int = 2) -> Image.Image:
    """Tile equally sized images row by row on a white background."""
    w, h = images[0].size
    nrows = -(-len(images) // ncols)
    grid = Image.new(images[0].mode, (ncols * (w + pad) + pad, nrows * (h + pad) + pad), "white")
    for i, img in enumerate(images):
        grid.paste(img, (pad + (i % ncols) * (w + pad), pad + (i // ncols) * (h + pad)))
    return grid


# Output formats by file suffix or --format name, in any case: jpeg is jpg and tif is tiff.
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF", "bmp": "BMP"}
SUFFIX_OF = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "TIFF": "tiff", "BMP": "bmp"}  # what diffgen names its files
KEEPS_ALPHA = {"PNG", "WEBP", "TIFF"}
KEEPS_16_BITS = {"PNG", "TIFF"}
WRITABLE = ".png, .jpg, .webp, .tif or .bmp"


def format_of(name: str) -> str | None:
    """Pillow's name of the format a suffix or --format value names ('.JPEG', 'tif' -> 'JPEG', 'TIFF'), or None."""
    return FORMATS.get(name.lower().lstrip("."))


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info


def fit_format(img: Image.Image, fmt: str) -> tuple[Image.Image, list[str]]:
    """The image as `fmt` can hold it, and notes on what that lost (16 bits, transparency)."""
    notes = []
    if img.mode in GREY16 and fmt not in KEEPS_16_BITS:
        img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8))
        notes.append(f"kept 8 of the 16 bits: {fmt} has no more")
    if fmt not in KEEPS_ALPHA and has_alpha(img):
        img = img.convert("L" if img.mode == "LA" else "RGB")
        notes.append(f"dropped the transparency: {fmt} has none")
    elif fmt == "JPEG" and img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return img, notes


def encoder_args(fmt: str, text: dict[str, str] | None, quality: int) -> dict:
    """Format-specific options: PNG text chunks, JPEG/WebP quality, lossless compression for TIFF."""
    if fmt == "PNG" and text:
        info = PngImagePlugin.PngInfo()
        for k, v in text.items():
            info.add_text(k, v)
        return {"pnginfo": info}
    if fmt in ("JPEG", "WEBP"):
        return {"quality": quality}
    return {"compression": "tiff_lzw"} if fmt == "TIFF" else {}


SUB_IFDS = (0x8769, 0x8825, 0xA005)  # pointers to the Exif, GPS and interoperability sub-IFDs
JPEG_SEGMENT = 65533  # bytes of EXIF one JPEG APP1 segment holds (Pillow's MAX_BYTES_IN_MARKER)


def fit_exif(exif: Image.Exif, fmt: str, notes: list[str]) -> Image.Exif | bytes:
    """The EXIF `fmt` can carry (b"": none, with a note added to `notes`)."""
    if fmt == "TIFF":
        return main_ifd(exif)
    if fmt == "JPEG" and len(exif.tobytes()) > JPEG_SEGMENT:
        notes.append("left out the EXIF: too long for JPEG")
        return b""
    return exif


def main_ifd(exif: Image.Exif) -> Image.Exif:
    """The EXIF tags Pillow's TIFF writer can carry: the main ones, without the sub-IFDs it cannot write."""
    flat = Image.Exif()
    for tag, value in exif.items():
        if tag not in SUB_IFDS:
            flat[tag] = value
    return flat


def save_image(
    img: Image.Image,
    path: Path,
    *,
    text: dict[str, str] | None = None,
    overwrite: bool = False,
    quality: int = 95,
    **save_args,
) -> str | None:
    """Write an image atomically; the format follows the suffix. Refuses to replace a file unless `overwrite`.

    Returns a note on what the format could not keep (transparency, 16 bits, EXIF), or None.
    """
    path = Path(path)
    fmt = format_of(path.suffix)
    if fmt is None:
        raise ImageError(f"{path}: unknown image format; use {WRITABLE}")
    if not overwrite and path.exists():
        raise ImageError(f"{path}: already exists; pass --overwrite to replace it or choose another --out")
    img, notes = fit_format(img, fmt)
    if isinstance(save_args.get("exif"), Image.Exif):
        save_args["exif"] = fit_exif(save_args["exif"], fmt, notes)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save_args, **encoder_args(fmt, text, quality))
    try:
        atomic_write(path, buffer.getvalue(), overwrite=overwrite)
    except FileExistsError:
        raise ImageError(f"{path}: already exists; pass --overwrite to replace it or choose another --out") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot write ({e.strerror}); {write_fix(e)} or choose another --out") from None
    return "; ".join(notes) or None


def make_folder(folder: Path, option: str = "--out") -> None:
    """Make an output folder before the work that fills it, or say in one line why it cannot be."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ImageError(f"{option} {folder}: is a file, not a folder; choose a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImageError(f"{option} {folder}: cannot make the folder ({e.strerror}); check the permissions of the "
                         f"folder above it, or choose another {option}") from None
    if not os.access(folder, os.W_OK):
        raise ImageError(f"{option} {folder}: the folder is not writable; check its permissions or choose another "
                         f"{option}")


GREY16 = ("I;16", "I;16B", "I;16L", "I")


@dataclass(frozen=True)
class Planes:
    """An image split into what a colour model sees and what it does not."""

    colour: Tensor  # float (3, H, W) in [-1, 1]
    alpha: Image.Image | None  # the alpha channel, upscaled separately
    grey: bool  # the source was greyscale: convert the result back
    bits: int  # 8, or 16 for 16-bit (and float) greyscale sources
    note: str | None  # a conversion the user should know about


def split_planes(img: Image.Image) -> Planes:
    """Prepare any Pillow image for a 3-channel model, remembering how to rebuild the original kind."""
    frames = img.info.get("frames", 1)
    note = f"used the first of {frames} frames" if frames > 1 else None
    if img.mode in DEEP_GREY:
        arr = np.asarray(img, dtype=np.float64)
        black, white = grey_range(img.mode, arr)
        grey = torch.from_numpy((arr - black) / (white - black) * 2 - 1).float()[None]
        if img.mode == "F":
            note = "wrote the float image as 16-bit grey"
        return Planes(grey.expand(3, -1, -1).clone(), None, True, 8 if (black, white) == (0, 255) else 16, note)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "CMYK":
        img, note = cmyk_to_rgb(img)
    elif img.mode not in ("1", "L", "LA", "RGB", "RGBA"):
        note = f"converted {img.mode} to RGB"  # YCbCr, LAB, HSV, ...
        img = img.convert("RGB")
    has_alpha = img.mode in ("LA", "RGBA")
    alpha = img.getchannel("A") if has_alpha else None
    grey = img.mode in ("1", "L", "LA")
    colour = to_model_range(pil_to_tensor(img.convert("RGB")))
    return Planes(colour, alpha, grey, 8, note)


def merge_planes(pixels: np.ndarray, planes: Planes) -> Image.Image:
    """The upscaled (H, W, 3) uint8/uint16 array back as the source's kind of image."""
    if planes.bits == 16:
        # Y of BT.601, as Pillow's convert("L") takes it for 8-bit grey below
        return Image.fromarray(np.round(pixels @ [0.299, 0.587, 0.114]).clip(0, 65535).astype(np.uint16))  # mode I;16
    img = Image.fromarray(pixels, "RGB")
    if planes.grey:
        img = img.convert("L")
    if planes.alpha is not None:
        img.putalpha(planes.alpha.resize(img.size, Image.Resampling.BICUBIC))
    return img


# Tags of an image's layout, not of its picture: a TIFF source's EXIF holds them, and they are wrong for the output.
LAYOUT_TAGS = (256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 338, 339, 513, 514)
ORIENTATION = 0x0112
COLOUR_SPACE = {"RGB": b"RGB ", "RGBA": b"RGB ", "L": b"GRAY", "LA": b"GRAY", "I;16": b"GRAY"}  # ICC header bytes 16-20


def carried_metadata(img: Image.Image, out_mode: str) -> dict:
    """What an output of mode `out_mode` should keep of its source: EXIF, ICC profile (if it fits) and PNG text."""
    keep = {}
    icc = img.info.get("icc_profile")
    if icc and icc[16:20] == COLOUR_SPACE.get(out_mode):  # never a CMYK profile on RGB pixels
        keep["icc_profile"] = icc
    exif = img.getexif()
    if exif:
        for tag in LAYOUT_TAGS:
            exif.pop(tag, None)
        exif[ORIENTATION] = 1  # open_image turned the pixels upright
        if writable_exif(exif):
            keep["exif"] = exif
    text = getattr(img, "text", None) or {}
    return keep | {"text": dict(text)}


def writable_exif(exif: Image.Exif) -> bool:
    """Whether Pillow can write this EXIF again: a camera's odd tag types can make it fail."""
    try:
        exif.tobytes()
    except Exception:  # Pillow raises many types for values it cannot encode
        return False
    return True
