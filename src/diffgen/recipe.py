"""What makes a generated image: a run's settings, held as the options that replay it (`Recipe`), which every
PNG records, with the command that remakes it."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from diffgen.checkpoint import LoadedModel
from diffgen.enums import Sampler, Spacing
from diffgen.provenance import model_identity, origin


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a run's images, held as the options that replay it: `command(i, 1)` remakes
    image i alone, pixel for pixel on the same kind of device."""

    model: str  # a --model value naming exactly this file: bundled name, Hub repo at its commit, or path
    identity: dict[str, str]  # what PNGs record about the model (see provenance.model_identity)
    class_names: tuple[str, ...]  # the model's
    seed: int = 0
    steps: int = 10
    sampler: Sampler = Sampler.UNIPC
    spacing: Spacing | None = None
    classes: tuple[int, ...] = ()  # the class cycle; () for all of the model's classes in turn
    guidance: float = 0.0
    guidance_interval: tuple[float, float] | None = None  # noise levels σ guided at; None: all
    precision: str = "fp32"  # as sampled: fp32 or bf16
    device: str = "cpu"  # cpu or cuda: they round differently
    fmt: str = "png"

    @classmethod
    def of(cls, loaded: LoadedModel, **settings) -> Recipe:
        device = next(loaded.model.parameters()).device.type
        return cls(model_option(loaded.path), model_identity(loaded.path), loaded.spec.class_names,
                   precision=loaded.precision, device=device, **settings)

    def sampling(self) -> dict:
        """The keyword arguments of `iter_images` and `generate_images`."""
        return {"classes": list(self.classes) or None, "seed": self.seed, "steps": self.steps,
                "sampler": self.sampler, "spacing": self.spacing, "guidance": self.guidance,
                "guidance_interval": self.guidance_interval}

    def command(self, start: int, n: int, *extra: str) -> str:
        """The shell command that makes images start .. start+n-1 of this run."""
        args = ["diffgen", "generate", "--model", self.model, "--seed", str(self.seed), "--steps", str(self.steps),
                "--sampler", self.sampler.value]
        args += ["--spacing", self.spacing.value] if self.spacing else []
        for c in self.classes:
            args += ["--class", self.class_names[c]]
        args += self.guidance_options()
        args += ["--precision", self.precision, "--device", self.device]
        args += ["--format", self.fmt] if self.fmt != "png" else []
        return shlex.join([*args, "--start", str(start), "--n", str(n), *extra])

    def guidance_options(self) -> list[str]:
        """--guidance, and where it guides --guidance-interval, always stated for a model with classes: the
        command then reads the same whatever the model's own defaults are."""
        if not self.class_names:
            return []
        args = ["--guidance", str(self.guidance)]
        return args + ["--guidance-interval", interval_text(self.guidance_interval)] if self.guidance else args

    def text(self) -> dict[str, str]:
        """The run's settings, as every image's PNG text records them."""
        spacing = self.spacing.value if self.spacing else "default"
        return {**self.identity, "sampler": self.sampler.value, "spacing": spacing, "steps": str(self.steps),
                "guidance": str(self.guidance), "guidance_interval": interval_text(self.guidance_interval),
                "precision": self.precision, "run_seed": str(self.seed)}


def interval_text(interval: tuple[float, float] | None) -> str:
    """A guidance interval as --guidance-interval takes it: "LOW,HIGH" or "all"."""
    return "all" if interval is None else f"{interval[0]!r},{interval[1]!r}"  # repr: read back exactly


def model_option(path: Path) -> str:
    """A --model value that names exactly this file, wherever it came from."""
    source = origin(path)
    if source["source"] == "file":
        return os.path.abspath(source["model"])  # from any folder the remake is run in
    return f"{source['model']}@{source['commit']}" if source["source"] == "hub" else source["model"]
