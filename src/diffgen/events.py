"""What long work reports while it runs: the events `train(callback=...)` receives, and `Advance`, the
(done, total) callback of sampling, generating, upscaling and scoring.

The core never prints; the command line turns these into lines and a progress bar (cli/output.py).
Torch-free, so the CLI can tell them apart without importing the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffgen.copies import Copies

# The callback of work done in counted parts: sampling steps, images, tiles. Called with (done, total).
Advance = Callable[[int, int], None]


@dataclass(frozen=True)
class StepDone:
    """A step is done; sent after every step."""

    step: int
    total: int
    loss: float  # smoothed
    images_per_s: float


@dataclass(frozen=True)
class Note:
    """Something the user should know: data skipped, a fine-tune's origin, a resume."""

    text: str


@dataclass(frozen=True)
class Started:
    """What the run found and is about to do; sent once, before the first step."""

    images: int
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    crops: bool  # trains on random crops of the images as they are (upscaling), not on whole images resized
    device: str
    out: Path
    step: int  # where it starts: 0, or the step a resumed run stopped at
    total: int
    budget: float | None = None  # seconds of --time-budget, which sets `total` after the first steps


@dataclass(frozen=True)
class Estimate:
    """How long the rest of the run should take, from the pace of its first steps; sent once."""

    seconds: float
    step: int  # the step it was made at
    total: int | None = None  # the last step, where a time budget has just set it
    budget: float | None = None  # the time budget in seconds, which the estimate includes grids and checkpoints for


@dataclass(frozen=True)
class Finishing:
    """The last step is done; the final checkpoint and sample grid are being written, which takes a while."""

    step: int
    grid_images: int  # 0 when no grid is drawn
    sample_steps: int


@dataclass(frozen=True)
class Sampled:
    """A sample grid was written; with how many of its images are near-copies of training images (copies.py)."""

    step: int
    path: Path
    copies: Copies | None = None  #, None where not checked (upscaling)


Event = StepDone | Note | Started | Estimate | Finishing | Sampled
