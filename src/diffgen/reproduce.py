"""Making an image again from what its PNG records (`diffgen reproduce`).

Every PNG that `generate` and `upscale` write records, besides the model, seed and settings, the command
that makes it again (`remake`): a generated image's with `--start INDEX --n 1`, a grid's with `--grid NAME`, an
upscaled one's with the absolute path of its input. None names the folder written to, so the copy that
reproducing makes, in a temporary folder, records the same command and can be the same file byte for byte;
when it is not, `differences` says what it can find out why.
"""

from __future__ import annotations

import io
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffgen.errors import CheckpointError, ImageError
from diffgen.provenance import file_sha256
from diffgen.text import count_of

COMMANDS = ("generate", "upscale")


@dataclass(frozen=True)
class Record:
    """What a PNG says about how it was made."""

    image: Path
    text: dict[str, str]  # the PNG's text chunks
    args: list[str]  # the recorded command, after "diffgen"

    @property
    def command(self) -> str:
        return self.args[0]

    def option(self, name: str) -> str | None:
        """The value the recorded command gives `name` (its last, as the command line reads it)."""
        values = [self.args[i + 1] for i, arg in enumerate(self.args[:-1]) if arg == name]
        return values[-1] if values else None

    def command_into(self, folder: Path) -> tuple[list[str], Path]:
        """The recorded command, writing into `folder` instead of where it wrote, and the file it will write."""
        self.check_inputs()
        if self.command == "upscale":
            made = folder / f"again{self.image.suffix}"
            return [*self.args, "--out", str(made)], made
        if self.option("--grid") is not None:  # the grid's own file name: the copy records the same
            made = folder / Path(self.option("--grid")).name
            return replaced(self.args, "--grid", str(made)), made
        return [*self.args, "--out", str(folder)], folder / f"{int(self.option('--start') or 0):05d}.png"

    def check_inputs(self) -> None:
        """The model file and the input the command names are still there."""
        model = self.option("--model")
        if model and Path(model).is_absolute() and not Path(model).exists():
            raise CheckpointError(f"{self.image}: it was made with the model {model}, which is not there any more "
                                  "(moved or deleted); put it back to make the image again")
        if self.command == "upscale" and not Path(self.args[1]).exists():
            raise ImageError(f"{self.image}: it was upscaled from {self.args[1]}, which is not there any more (moved "
                             "or deleted); put it back to make the image again")


def replaced(args: list[str], option: str, value: str) -> list[str]:
    i = args.index(option)
    return [*args[: i + 1], value, *args[i + 2 :]]


def read_record(image: Path) -> Record:
    """The record of a PNG diffgen wrote, or an ImageError saying why there is none."""
    try:
        with Image.open(image) as img:
            text = dict(getattr(img, "text", None) or {})
    except FileNotFoundError:
        raise ImageError(f"{image}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{image}: not an image diffgen can read ({e}); pass a PNG that diffgen wrote") from None
    remake = text.get("remake")
    if not remake:
        raise ImageError(f"{image}: records no diffgen command (another program made it, or its text metadata was "
                         "removed); only PNGs written by diffgen generate or upscale can be made again")
    try:
        args = shlex.split(remake)
    except ValueError:
        args = []
    if len(args) < 2 or args[0] != "diffgen" or args[1] not in COMMANDS:
        raise ImageError(f"{image}: its recorded command is not one diffgen can run again ({remake[:80]})")
    return Record(Path(image), text, args[1:])


def differences(record: Record, made_bytes: bytes) -> str:
    """Why an image made again is not the same file: the model changed, or by how much its pixels differ."""
    reasons = []
    model = record.option("--model")
    if "sha256" in record.text and model and Path(model).is_file():
        now = file_sha256(Path(model))[:12]
        if now != record.text["sha256"]:
            reasons.append(f"the model file changed since (sha256 {record.text['sha256']}, now {now})")
    with Image.open(record.image) as before, Image.open(io.BytesIO(made_bytes)) as after:
        a, b = np.asarray(before).astype(np.int64), np.asarray(after).astype(np.int64)
    if a.shape != b.shape:
        reasons.append(f"the sizes differ ({before.size[0]}x{before.size[1]}, now {after.size[0]}x{after.size[1]})")
    elif (a != b).any():
        share = (a != b).any(axis=-1).mean() if a.ndim == 3 else (a != b).mean()
        most = int(np.abs(a - b).max())
        reasons.append(f"{share:.1%} of the pixels differ, by at most {count_of(most, 'level')}")
    else:
        reasons.append("the pixels are the same; only the file's metadata differs")
    if len(reasons) == 1 and "sha256" not in record.text:
        reasons.append("the model, diffgen or the device's arithmetic may have changed since")
    return "; ".join(reasons)
