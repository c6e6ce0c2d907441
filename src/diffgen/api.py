"""diffgen from Python: `generate`, `upscale` and `load_model`, with the commands' defaults and results.

    from diffgen import generate, load_model, upscale

    images = generate(4, seed=1)                 # PIL images: the pixels `diffgen generate --n 4 --seed 1` writes
    big = upscale(Image.open("low.png"))         # x4 with the bundled model, as `diffgen upscale low.png`
    model = load_model("runs/digits")            # load once, pass it to many calls
    sevens = generate(8, model, classes="7", steps=20)

Each function takes the options of its command as keyword arguments, with the same defaults, checks them
the same way and gives the same pixels for the same settings (on the same kind of device and precision).
Errors are `diffgen.errors` exceptions (`DiffgenError` and its subclasses), whose message is the line the
command prints and names the command's option (`--steps 0: must be at least 1`). Nothing is printed;
progress goes to `callback(done, total)`. `upscale` also takes and returns tensors: (C, H, W) or
(B, C, H, W) floats in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffgen.checkpoint import LoadedModel, Task, with_precision, wrong_task
from diffgen.damage import measure, strength
from diffgen.errors import OptionError
from diffgen.generate import class_index, fit_batch_size, guidance_of, iter_images, parse_interval
from diffgen.images import open_image
from diffgen.models import AUTO, DENOISE_PARTNERS, STRONGEST, blend, bundled_upscaler, default_model, open_model
from diffgen.samplers import Sampler, Spacing, check_steps
from diffgen.runtime import local_device
from diffgen.upscale import DETAIL, MAX_SAMPLES, Sampling, check_memory, upscale_image, upscale_tiled

Model = str | Path | LoadedModel | None  # a --model value (None: the task's bundled default) or a loaded model
Progress = Callable[[int, int], None]  # (done, total): images for generate, tiles for upscale
PRECISIONS = ("auto", "fp32", "bf16")


def load_model(name_or_path: str | Path, task: Task | str | None = None, *, device: str = "auto",
               precision: str = "auto") -> LoadedModel:
    """Load a model as `--model` names it: a bundled name, a .safetensors file, a run folder, a Hub repo id
    (user/name[@revision]) or a diffusers pipeline. With `task` ("generate" or "upscale"), a model for the
    other task is refused. device: auto (a GPU if there is one), cpu, cuda, cuda:N. precision: auto (bf16
    where the CPU computes it natively), fp32 or bf16."""
    task = None if task is None else choice(Task, task, "task")
    if precision not in PRECISIONS:
        raise OptionError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    return with_precision(open_model(str(name_or_path), task, local_device(device)), precision)


def model_for(model: Model, task: Task, device: str, precision: str) -> LoadedModel:
    """The loaded model a `model` argument names; one already loaded is used as it is (its device and precision)."""
    if not isinstance(model, LoadedModel):
        return load_model(default_model(task) if model is None else model, task, device=device, precision=precision)
    if model.spec.task is not task:
        raise wrong_task(str(model.path), model.spec, task)
    return model


def upscaler_for(model: Model, denoise: float | None, device: str, precision: str, *, scale: int | None = None
                 ) -> LoadedModel:
    """The upscaler a `model` argument names (none: the bundled one of `scale`, x4 by default); `denoise` (0 to
    1) blends the bundled real-world upscaler with the clean one it descends from
    (`models.DENOISE_PARTNERS`): lower keeps more faint texture, and noise. None: the model as it is."""
    name = upscaler_name(model, scale)
    blendable = is_blendable(name)
    if denoise is None or (blendable and denoise == STRONGEST):
        return model_for(name, Task.UPSCALE, device, precision)
    if not 0 <= denoise <= 1:
        raise OptionError(f"--denoise {denoise}: must be between 0 and 1")
    if not blendable:
        named = name if isinstance(name, (str, Path)) else name.path
        raise OptionError(f"--denoise: only for the bundled {', '.join(DENOISE_PARTNERS)}, whose clean partner it "
                          f"blends in; leave it out for {named}")
    strong, gentle = (load_model(m, Task.UPSCALE, device=device, precision="fp32") for m in (name, DENOISE_PARTNERS[name]))
    return with_precision(blend(gentle, strong, denoise), precision)


def upscaler_name(model: Model, scale: int | None) -> Model:
    """The `model` argument with none resolved: the bundled upscaler of `scale` (x4 by default)."""
    if model is None:
        return default_model(Task.UPSCALE) if scale is None else bundled_upscaler(scale)
    return model


def is_blendable(name: Model) -> bool:
    """Whether `--denoise` can blend this upscaler: a bundled real-world one with a clean partner."""
    return isinstance(name, str) and name in DENOISE_PARTNERS


def parse_denoise(value: float | str | None) -> float | None:
    """A --denoise value: a strength from 0 to 1, or None for auto (None or "auto")."""
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return None
    try:
        strength = float(value)
    except ValueError:
        raise OptionError(f"--denoise {value}: give a strength from 0 to 1, or auto") from None
    if not 0 <= strength <= 1:
        raise OptionError(f"--denoise {value}: must be between 0 and 1, or auto")
    return strength


class Upscalers:
    """The upscaler of each image. With `--denoise auto` (the default) and a bundled real-world upscaler, that
    model for an image that shows JPEG blocks or noise, or is too small to tell, and its blend at 0 (the clean
    partner) for one that looks clean (damage.py); otherwise one model for every image. The blend is loaded
    when an image first needs it."""

    def __init__(self, model: Model, denoise: float | None, device: str, precision: str, *, scale: int | None = None):
        self.main, self.denoise = upscaler_for(model, denoise, device, precision, scale=scale), denoise
        name = upscaler_name(model, scale)
        self.auto = denoise is None and is_blendable(name)
        self._clean = None
        self._open_clean = lambda: upscaler_for(name, 0.0, device, precision)

    def pick(self, image: Image.Image) -> tuple[LoadedModel, str | None]:
        """The model for `image` (as decoded, before its EXIF turn) and, with auto, what it chose and why."""
        if not self.auto:
            return self.main, None
        damage = measure(image)
        if strength(damage):
            return self.main, f"--denoise 1: {', '.join(damage.signs())}"
        if self._clean is None:
            self._clean = self._open_clean()
        return self._clean, "--denoise 0: looks clean"

    def pick_file(self, path: Path) -> tuple[LoadedModel, str | None]:
        """`pick` for an image file, read as stored: JPEG's grid is where the file keeps it, whatever its EXIF
        orientation (the file is read only with auto)."""
        return self.pick(open_image(path, upright=False)) if self.auto else (self.main, None)

    def strength_of(self, loaded: LoadedModel) -> float | None:
        """The --denoise that makes `loaded` again: the strength given, or auto's choice (None: no blend)."""
        if self.denoise is not None or not self.auto:
            return self.denoise
        return 0.0 if loaded is self._clean else 1.0


def generate(
    n: int = 16,
    model: Model = None,
    *,
    classes: str | int | Sequence[str | int] | None = None,
    seed: int = 0,
    steps: int = 10,
    sampler: Sampler | str = Sampler.UNIPC,
    spacing: Spacing | str | None = None,
    guidance: float | None = None,
    guidance_interval: str | tuple[float, float] | None = None,
    start: int = 0,
    batch_size: int = 16,
    device: str = "auto",
    precision: str = "auto",
    callback: Progress | None = None,
) -> list[Image.Image]:
    """Images start .. start+n-1 of the run `seed` makes, as PIL images: the pixels of the PNGs that
    `diffgen generate` writes with the same options (`classes` is --class: a name or index, or a list of them
    to cycle through; default all of the model's classes in turn). `guidance` and `guidance_interval` (a
    "LOW,HIGH" string, a pair, or "all") left at None take the model's own, as the command does."""
    check_generate_options(n=n, steps=steps, batch_size=batch_size, guidance=guidance, start=start,
                           guidance_interval=guidance_interval)
    sampler = choice(Sampler, sampler, "--sampler")
    spacing = None if spacing is None else choice(Spacing, spacing, "--spacing")
    loaded = model_for(model, Task.GENERATE, device, precision)
    check_steps(steps, loaded.spec.num_timesteps)
    wanted = [classes] if isinstance(classes, (str, int)) else list(classes or ())
    cycle = [class_index(loaded.spec.class_names, str(c)) for c in wanted]
    weight, interval = guidance_of(loaded.spec, guidance, guidance_interval)
    batch, _ = fit_batch_size(loaded, batch_size, n, guided=weight > 0 and bool(loaded.spec.class_names))
    images = []
    for made in iter_images(loaded, n, start=start, classes=cycle or None, seed=seed, steps=steps, sampler=sampler,
                            spacing=spacing, guidance=weight, guidance_interval=interval, batch_size=batch):
        images += [g.image for g in made]
        if callback:
            callback(len(images), n)
    return images


def upscale(
    image: Image.Image | str | Path | Tensor,
    model: Model = None,
    *,
    scale: int | None = None,
    steps: int = Sampling.steps,
    eta: float = Sampling.eta,
    samples: int = Sampling.samples,
    detail: bool = False,
    denoise: float | str | None = AUTO,
    seed: int = Sampling.seed,
    tile: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    callback: Progress | None = None,
) -> Image.Image | Tensor:
    """Upscale an image by the model's factor (x4 with the bundled model), as `diffgen upscale` does.

    A PIL image comes back as a PIL image of the same kind (grey, alpha, 16-bit); an image file's name is
    opened as the command opens it (upright by its EXIF orientation), and gives the pixels the command
    writes. A tensor, (3, h, w) or (B, 3, h, w) in [-1, 1], comes back as one of (…, 3, s·h, s·w) in
    [-1, 1], computed as an image is, to 16-bit precision. `scale` without a `model` picks the bundled
    upscaler of that factor (2 or 4); with one, it must be the model's. `detail` samples texture instead of
    the most faithful average (`upscale --detail`); `denoise` is `upscale --denoise`: a strength from 0 to 1 or
    "auto" (see `Upscalers`; a tensor is upscaled with the bundled model itself, strength 1)."""
    sampling = upscale_sampling(steps=steps, eta=eta, samples=samples, seed=seed, detail=detail)
    check_tile(tile)
    upscalers = Upscalers(model, parse_denoise(denoise), device, precision, scale=scale)
    loaded = upscalers.main
    check_upscaler(loaded, sampling, scale=scale)
    if isinstance(image, Tensor):
        return upscale_tensors(loaded, image, tile=tile, sampling=sampling, callback=callback)
    if isinstance(image, (str, Path)):
        check_memory(loaded, Path(image), open_image(Path(image), decode=False), tile)
        loaded = upscalers.pick_file(Path(image))[0]
        image = open_image(Path(image))
    elif isinstance(image, Image.Image):
        check_memory(loaded, "the image", image, tile)
        loaded = upscalers.pick(image)[0]
    else:
        raise OptionError(f"image: a PIL image, a file name or a tensor, not {type(image).__name__}")
    return upscale_image(loaded, image, tile=tile, sampling=sampling, callback=callback)[0]


def upscale_tensors(loaded: LoadedModel, lowres: Tensor, *, tile: int | None, sampling: Sampling,
                    callback: Progress | None) -> Tensor:
    """(3, h, w) or (B, 3, h, w) in [-1, 1] -> the same shape, s times larger, through the image path (16-bit)."""
    batch = lowres[None] if lowres.ndim == 3 else lowres
    if batch.ndim != 4 or batch.shape[1] != loaded.spec.channels or not batch.is_floating_point():
        raise OptionError(f"image: a float tensor of shape (3, H, W) or (B, 3, H, W) in [-1, 1], not "
                          f"{batch.dtype} of shape {tuple(lowres.shape)}")
    # check_memory reads only an image's size and kind: a stand-in for an RGB image of the tensor's size.
    check_memory(loaded, "the tensor", SimpleNamespace(width=batch.shape[3], height=batch.shape[2], mode="RGB", info={}), tile)
    out = []
    for one in batch.detach().float().cpu():
        pixels = upscale_tiled(loaded, one, tile=tile, sampling=sampling, bits=16, callback=callback)
        out.append(torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1) / 65535 * 2 - 1)
    return torch.stack(out) if lowres.ndim == 4 else out[0]


# --- the commands' checks ----------------------------------------------------------------------------------

def choice(kind, value, option: str):
    """An enum member from itself or its value, or an OptionError listing the choices."""
    try:
        return kind(value)
    except ValueError:
        raise OptionError(f"{option} {value}: choose one of {', '.join(m.value for m in kind)}") from None


def check_positive(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise OptionError(f"{option} {value}: must be at least 1")


def check_generate_options(
    *, n: int, steps: int, batch_size: int, guidance: float | None, start: int = 0,
    guidance_interval: str | Sequence[float] | None = None,
) -> None:
    """generate's options that need no model (guidance None: the model's)."""
    for option, value in (("--n", n), ("--steps", steps), ("--batch-size", batch_size)):
        check_positive(option, value)
    if guidance is not None and not guidance >= 0:
        raise OptionError(f"--guidance {guidance}: must be 0 or more")
    if guidance_interval is not None:
        parse_interval(guidance_interval)
    if start < 0:
        raise OptionError(f"--start {start}: must be 0 or more")


def upscale_sampling(*, steps: int, eta: float, samples: int, seed: int, detail: bool = False) -> Sampling:
    """The sampling options of upscale and eval-upscale, checked; `detail` (--detail) stands for `DETAIL`'s."""
    if detail:
        if (steps, eta, samples) != (Sampling.steps, Sampling.eta, Sampling.samples):
            raise OptionError("--detail sets --steps, --eta and --samples; give either --detail or those")
        return replace(DETAIL, seed=seed)
    check_positive("--steps", steps)
    if not 0 <= eta <= 1:
        raise OptionError(f"--eta {eta}: must be between 0 and 1")
    if not 1 <= samples <= MAX_SAMPLES:
        raise OptionError(f"--samples {samples}: must be between 1 and {MAX_SAMPLES} (one per flip and turn)")
    return Sampling(steps=steps, eta=eta, samples=samples, seed=seed)


def check_tile(tile: int | None) -> None:
    if tile is not None and tile < 32:
        raise OptionError(f"--tile {tile}: must be at least 32")


def check_upscaler(loaded: LoadedModel, sampling: Sampling, *, scale: int | None = None) -> None:
    """The upscale options that depend on the model: its factor and its number of timesteps."""
    if scale is not None and scale != loaded.spec.scale:
        raise OptionError(f"--scale {scale}: this model upscales x{loaded.spec.scale}; pass --scale {loaded.spec.scale} "
                          "or another --model")
    check_steps(sampling.steps, loaded.spec.num_timesteps)
