"""`diffgen upscale` and `diffgen eval-upscale`: photos made larger, file by file, and scored."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffgen.cli.base import (
    DEVICE_HELP, ETA_HELP, MODEL_HELP, PRECISION_HELP, SAMPLES_HELP, PlainCommand, Stopped, app, check_positive, console_err, fail,
    freeze_imports, labelled, run_command, stop_on_signals,
)
from diffgen.cli.output import ItemBar, UpscaleBars, device_of, print_table, report_done
from diffgen.enums import ImageFormat, Precision
from diffgen.text import count_of


@app.command(cls=PlainCommand)
@run_command
def upscale(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.", show_default=False, metavar="IMAGES")],
    model: Annotated[Optional[str], typer.Option(help=MODEL_HELP, metavar="MODEL", show_default="upscale-x4")] = None,
    scale: Annotated[Optional[int], typer.Option("--scale", "-s", help="How many times larger: the model's factor.", show_default="the model's")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file (its suffix sets the format), or folder: sub-folders of inputs are mirrored in it.", show_default="beside each input")] = None,
    suffix: Annotated[Optional[str], typer.Option(help="Added to output names.", show_default="_x4 for x4")] = None,
    format: Annotated[Optional[ImageFormat], typer.Option("--format", case_sensitive=False, help="Output format.", show_default="png, or the --out file's")] = None,
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality, 1-100.")] = 95,
    recursive: Annotated[bool, typer.Option("--recursive", help="Descend into sub-folders of folder inputs.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose output exists and is complete.")] = False,
    steps: Annotated[int, typer.Option(help="Denoising steps: 1 is the most faithful (highest PSNR); more add sampled texture.")] = 1,
    eta: Annotated[float, typer.Option(help=ETA_HELP)] = 0.0,
    samples: Annotated[int, typer.Option(help=SAMPLES_HELP)] = 2,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    tile: Annotated[Optional[int], typer.Option(help="Side of the pieces the image is upscaled in, in input pixels: smaller uses less memory.", show_default="automatic")] = None,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.AUTO,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
) -> None:
    """Upscale images with a diffusion super-resolution model.

    Examples:
      diffgen upscale low.png
      diffgen upscale photos/ --recursive --out big/ --format jpg
      diffgen upscale "scans/*.png" --skip-existing
    """
    from diffgen.errors import OptionError  # noqa: PLC0415
    from diffgen.checkpoint import with_precision as in_precision  # noqa: PLC0415
    from diffgen.upscale import collect_inputs, memory_budget, plan_outputs  # noqa: PLC0415

    freeze_imports()
    if not 1 <= quality <= 100:
        raise OptionError(f"--quality {quality}: must be between 1 and 100")
    if overwrite and skip_existing:
        raise OptionError("--overwrite and --skip-existing: choose one")
    sampling = upscale_sampling(steps=steps, eta=eta, samples=samples, seed=seed)
    loaded = in_precision(open_upscaler(model, device, sampling, tile=tile, scale=scale), precision)
    suffix = f"_x{loaded.spec.scale}" if suffix is None else suffix
    sources = collect_inputs(inputs, recursive=recursive, suffix=suffix)
    plan = plan_outputs(sources, out, suffix=suffix, fmt=format and format.value)
    memory_budget()  # a bad DIFFGEN_MEMORY_GB is one error now, not one per file
    batch = UpscaleBatch(loaded, tile=tile, sampling=sampling, quality=quality, overwrite=overwrite,
                         skip_existing=skip_existing)
    with UpscaleBars(len(plan)) as progress:
        try:
            with stop_on_signals():
                for src, dst in plan:
                    progress.next_image(src.name)
                    batch.run(src, dst, progress)
                    progress.image_done()
        except Stopped as e:
            raise fail(f"stopped by {e.name}: {batch.summary()}; rerun the same command with --skip-existing "
                       "to continue", e.exit_code) from None
    if batch.counts["failed"]:
        raise fail(batch.summary())
    report_done(batch.summary())


class UpscaleBatch:
    """Upscale a batch file by file: a bad file is reported and counted, and the batch goes on."""

    def __init__(self, loaded, *, skip_existing: bool, overwrite: bool, **settings):
        self.loaded, self.skip_existing, self.overwrite, self.settings = loaded, skip_existing, overwrite, settings
        self.counts = Counter()

    def run(self, src: Path, dst: Path, progress: UpscaleBars) -> None:
        from diffgen.errors import DiffgenError  # noqa: PLC0415
        from diffgen.images import is_complete_image  # noqa: PLC0415
        from diffgen.upscale import upscale_file  # noqa: PLC0415

        overwrite = self.overwrite
        if self.skip_existing and dst.exists():
            if is_complete_image(dst):
                self.counts["skipped"] += 1
                return
            progress.print(labelled("note:", "yellow", f"{dst}: incomplete or corrupt; upscaling {src} again"))
            overwrite = True
        if not overwrite and dst.exists():  # said before the work, not after it
            self.counts["failed"] += 1
            progress.print(labelled("error:", "red", f"{dst}: already exists; pass --skip-existing to keep it or "
                                                     "--overwrite to replace it, or choose another --out"))
            return
        try:
            result = upscale_file(self.loaded, src, dst, overwrite=overwrite, callback=progress.tiles, **self.settings)
        except DiffgenError as e:
            self.counts["failed"] += 1
            progress.print(labelled("error:", "red", str(e)))
            return
        self.counts["upscaled"] += 1
        note = f" ({result.note})" if result.note else ""
        progress.print(f"{src} -> {dst} ({result.size[0]}x{result.size[1]}){note}")

    def summary(self) -> str:
        c = self.counts
        return (f"{count_of(c['upscaled'], 'image')} upscaled on {device_of(self.loaded)}, {c['skipped']} skipped, "
                f"{c['failed']} failed")


@app.command("eval-upscale", cls=PlainCommand)
@run_command
def eval_upscale(
    hr_dir: Annotated[Path, typer.Argument(help="Folder of high-resolution images to score against.", metavar="FOLDER")],
    model: Annotated[Optional[str], typer.Option(help=MODEL_HELP, metavar="MODEL", show_default="upscale-x4")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps: 1 is the most faithful (highest PSNR); more add sampled texture.")] = 1,
    eta: Annotated[float, typer.Option(help=ETA_HELP)] = 0.0,
    samples: Annotated[int, typer.Option(help=SAMPLES_HELP)] = 2,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    tile: Annotated[Optional[int], typer.Option(help="Side of the pieces the image is upscaled in, in input pixels: smaller uses less memory.", show_default="automatic")] = None,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.AUTO,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
) -> None:
    """Shrink each image by the model's factor, upscale it back, and score how close diffgen and bicubic come to the original.

    Scores are on brightness (Y): PSNR in decibels (dB; higher is closer, +1 dB is a clear gain) and SSIM
    (structural similarity; 1 is identical).

    Examples:
      diffgen eval-upscale data/heldout
      diffgen eval-upscale photos/ --model runs/sr --steps 10
    """
    from rich.table import Table  # noqa: PLC0415

    from diffgen.data import find_images  # noqa: PLC0415
    from diffgen.metrics import PSNR_CAP, evaluate, mean_row  # noqa: PLC0415
    from diffgen.checkpoint import with_precision as in_precision  # noqa: PLC0415
    from diffgen.upscale import upscale_image  # noqa: PLC0415

    freeze_imports()
    sampling = upscale_sampling(steps=steps, eta=eta, samples=samples, seed=seed)
    loaded = in_precision(open_upscaler(model, device, sampling, tile=tile), precision)
    files, _, _ = find_images(hr_dir)
    failures = []
    with ItemBar("scoring", len(files)) as advance:
        rows = evaluate(lambda lr: upscale_image(loaded, lr, tile=tile, sampling=sampling)[0],
                        files, loaded.spec.scale, callback=advance, on_error=failures.append)
    for e in failures:
        console_err.print(labelled("error:", "red", str(e)), highlight=False, soft_wrap=True)
    if rows:
        table = Table(title=f"x{loaded.spec.scale} on {hr_dir} ({count_of(len(rows), 'image')}), on {device_of(loaded)}: "
                            f"PSNR (dB, at most {PSNR_CAP:.0f}) and SSIM on Y, {count_of(steps, 'step')}, η = {eta}, "
                            f"{count_of(samples, 'sample')}, {loaded.precision}")
        for col in ("image", "bicubic PSNR", "diffgen PSNR", "gain", "bicubic SSIM", "diffgen SSIM", "seconds"):
            table.add_column(col, justify="left" if col == "image" else "right", no_wrap=True)
        for row in rows + [mean_row(rows)]:
            table.add_row(row.name, f"{row.bicubic.psnr:.2f}", f"{row.model.psnr:.2f}", f"{row.model.psnr - row.bicubic.psnr:+.2f}",
                          f"{row.bicubic.ssim:.4f}", f"{row.model.ssim:.4f}", f"{row.seconds:.1f}")
        print_table(table)
    if failures:
        raise fail(f"{count_of(len(failures), 'file')} of {len(files)} could not be scored (above); the table leaves "
                   f"{'it' if len(failures) == 1 else 'them'} out")



def upscale_sampling(*, steps: int, eta: float, samples: int, seed: int):
    """Check the sampling options of upscale and eval-upscale."""
    from diffgen.errors import OptionError  # noqa: PLC0415
    from diffgen.upscale import MAX_SAMPLES, Sampling  # noqa: PLC0415

    check_positive("--steps", steps)
    if not 0 <= eta <= 1:
        raise OptionError(f"--eta {eta}: must be between 0 and 1")
    if not 1 <= samples <= MAX_SAMPLES:
        raise OptionError(f"--samples {samples}: must be between 1 and {MAX_SAMPLES} (one per flip and turn)")
    return Sampling(steps=steps, eta=eta, samples=samples, seed=seed)


def open_upscaler(model: str | None, device: str, sampling, *, tile: int | None, scale: int | None = None):
    """Load an upscaling model and check the sampling options against it."""
    from diffgen.checkpoint import Task  # noqa: PLC0415
    from diffgen.errors import OptionError  # noqa: PLC0415
    from diffgen.models import open_model  # noqa: PLC0415
    from diffgen.runtime import pick_device  # noqa: PLC0415
    from diffgen.samplers import check_steps  # noqa: PLC0415

    if tile is not None and tile < 32:
        raise OptionError(f"--tile {tile}: must be at least 32")
    loaded = open_model(model, Task.UPSCALE, pick_device(device))
    if scale is not None and scale != loaded.spec.scale:
        raise OptionError(f"--scale {scale}: this model upscales x{loaded.spec.scale}; pass --scale {loaded.spec.scale} or another --model")
    check_steps(sampling.steps, loaded.spec.num_timesteps)
    return loaded

