"""`diffgen generate`: images from a trained model, numbered, each with the command that remakes it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from diffgen.cli.base import (
    DEVICE_HELP, MODEL_HELP, PRECISION_HELP, PlainCommand, app, console, console_err, fail, freeze_imports, labelled,
    printable, run_command, stop_on_signals,
)
from diffgen.cli.output import ItemBar, copies_text, report_done
from diffgen.enums import ImageFormat, Precision, Sampler, Spacing
from diffgen.text import count_of

if TYPE_CHECKING:
    from diffgen.generate import Outputs


@app.command(cls=PlainCommand)
@run_command
def generate(
    model: Annotated[Optional[str], typer.Option(help=MODEL_HELP, metavar="MODEL", show_default="digits")] = None,
    n: Annotated[int, typer.Option("--n", "-n", help="Number of images.")] = 16,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the numbered images.", show_default="generated; none with --grid")] = None,
    start: Annotated[Optional[int], typer.Option(help="Index of the first image (and its seed and class).", show_default="after the images in --out")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Number from 0 (or --start) and replace existing files.")] = False,
    seed: Annotated[int, typer.Option(help="Run seed; image i gets its own seed from it.")] = 0,
    steps: Annotated[int, typer.Option(help="Denoising steps: more is slower, and finer up to a point.")] = 10,
    sampler: Annotated[Sampler, typer.Option(help="Sampling method: unipc and dpm++2m need about 10 steps, ddim and heun more, ddpm all of the model's.")] = Sampler.UNIPC,
    spacing: Annotated[Optional[Spacing], typer.Option(help="How the steps are spread over the noise levels (timestep spacing).", show_default="the sampler's")] = None,
    class_: Annotated[Optional[list[str]], typer.Option("--class", metavar="CLASS", help="Class name or index; repeat for several; default: all in turn.")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="How strongly each image follows its class (classifier-free guidance weight w): 0 off; 0.5-1 at all noise levels makes every image its class, with less variety.", show_default="the model's own, else 0")] = None,
    guidance_interval: Annotated[Optional[str], typer.Option(metavar="LOW,HIGH", help="Guide only at noise levels σ from LOW to HIGH (σ² = noise/signal power; e.g. 0.3,1.1), where guidance costs least variety; all: at every level.", show_default="the model's own, else all")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass; fewer if a batch would not fit in memory.")] = 16,
    grid: Annotated[Optional[Path], typer.Option(help="Write all images as one grid to this file (alone, unless --out is given).")] = None,
    format: Annotated[ImageFormat, typer.Option("--format", case_sensitive=False, help="Image format.")] = ImageFormat.PNG,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.AUTO,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
    check_copies: Annotated[Optional[Path], typer.Option(metavar="DATA_DIR", help="Then say how many images are near-copies of a training image in DATA_DIR, and the closest.", show_default="no check")] = None,
) -> None:
    """Generate images with a trained model. A second run into the same folder numbers its new images after the
    old ones; each PNG records the command that remakes it.

    Examples:
      diffgen generate --n 16 --out imgs/
      diffgen generate --model runs/digits --class 7 --n 8 --out sevens/ --grid sevens.png
      diffgen generate --start 5 --n 1 --seed 0
      diffgen generate --model runs/mine --n 64 --out imgs/ --check-copies data/mine
      torchrun --nproc_per_node=4 -m diffgen generate -n 10000 --out imgs/
    """
    import torch  # noqa: PLC0415

    from diffgen.api import check_generate_options  # noqa: PLC0415
    from diffgen.checkpoint import Task, with_precision  # noqa: PLC0415
    from diffgen.errors import OptionError  # noqa: PLC0415
    from diffgen.generate import (  # noqa: PLC0415
        Outputs, check_outputs, class_index, first_index, fit_batch_size, guidance_of,
    )
    from diffgen.images import SUFFIX_OF, format_of  # noqa: PLC0415
    from diffgen.models import open_model  # noqa: PLC0415
    from diffgen.recipe import Recipe  # noqa: PLC0415
    from diffgen.runtime import barrier, local_device, process_group  # noqa: PLC0415
    from diffgen.samplers import check_steps  # noqa: PLC0415

    freeze_imports()
    check_generate_options(n=n, steps=steps, batch_size=batch_size, guidance=guidance, start=start or 0,
                           guidance_interval=guidance_interval)
    with process_group(torch.device("cpu")) as ranks:  # under torchrun; gloo, as only counts pass between ranks
        if grid is not None and ranks.world > 1:
            raise OptionError("--grid: not under torchrun, where each process writes its own share of the images; "
                              "make the grid in one process")
        loaded = with_precision(open_model(model, Task.GENERATE, local_device(device)), precision)
        check_steps(steps, loaded.spec.num_timesteps)
        classes = tuple(class_index(loaded.spec.class_names, c) for c in class_ or ())
        weight, interval = guidance_of(loaded.spec, guidance, guidance_interval)
        batch, note = fit_batch_size(loaded, batch_size, n, guided=weight > 0 and bool(loaded.spec.class_names))
        folder = out if out is not None or grid is not None else Path("generated")
        if check_copies is not None and folder is None:
            raise OptionError("--check-copies: it compares the image files; add --out DIR beside --grid")
        if check_copies is not None:
            from diffgen.copies import check_folder  # noqa: PLC0415 - only then: it loads the data module

            check_folder(check_copies)
        outputs = Outputs(folder, first_index(folder, start, overwrite), n, grid, overwrite)
        fmt = SUFFIX_OF[format_of(format.value)]  # jpeg and JPG write .jpg files
        check_outputs(outputs, fmt, loaded.spec.image_size)
        barrier(ranks)  # every process has numbered the run from the same first image before any writes
        for line in (note, continuing(outputs, start)) if ranks.main else ():
            if line:
                console_err.print(labelled("note:", "yellow", line), highlight=False, soft_wrap=True)
        recipe = Recipe.of(loaded, seed=seed, steps=steps, sampler=sampler,
                           spacing=spacing, classes=classes, guidance=weight, guidance_interval=interval, fmt=fmt)
        write_share(loaded, recipe, outputs, batch, ranks)
        if check_copies is not None and ranks.main:
            report_copies(outputs, fmt, loaded.spec, check_copies)


def write_share(loaded, recipe, outputs: Outputs, batch: int, ranks) -> None:
    """Write this process's share of the images (all of them without torchrun), then say what all made.

    A process that fails says why and stops; the others finish their shares, and the summary counts them."""
    from diffgen.errors import DiffgenError  # noqa: PLC0415
    from diffgen.generate import GenerationInterrupted, Share  # noqa: PLC0415
    from diffgen.runtime import totals  # noqa: PLC0415

    failed = False
    try:
        made = write_with_bar(loaded, recipe, outputs, batch, Share(ranks.rank, ranks.world), show=ranks.main)
    except DiffgenError as e:
        if ranks.world == 1 or isinstance(e, GenerationInterrupted):
            raise
        failed, made = True, 0
        console_err.print(labelled("error:", "red", f"{e} (process {ranks.rank} of {ranks.world})"), highlight=False,
                          soft_wrap=True)
    counts = totals({"made": made, "failed": int(failed)}, ranks)
    if counts["failed"]:  # one summary, from the first process
        raise fail(f"{count_of(counts['made'], 'image')} of {outputs.n} made by the processes that finished, in "
                   f"{outputs.folder}; {count_of(counts['failed'], 'process')} failed (above)") if ranks.main else typer.Exit(1)
    if ranks.main:
        by = f" by {ranks.world} processes" if ranks.world > 1 else ""
        report_done(f"{made_text(outputs)} on {next(loaded.model.parameters()).device}{by}")


def write_with_bar(loaded, recipe, outputs: Outputs, batch: int, share, *, show: bool) -> int:
    """Write the images with a progress bar; a stop keeps what was written and says how to go on."""
    from diffgen.generate import GenerationInterrupted, write_run  # noqa: PLC0415

    with ItemBar("generating", share.size(outputs.start, outputs.n, batch), show=show) as advance:
        try:
            with stop_on_signals():  # SIGTERM too keeps what was written and says how to go on
                return write_run(loaded, recipe, outputs, batch_size=batch, callback=advance, share=share)
        except GenerationInterrupted as e:  # asked for, and what was made is kept: not an error
            console_err.print(printable(str(e)), style="yellow", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None


def report_copies(outputs: Outputs, fmt: str, spec, data_dir: Path) -> None:
    """The copy check's line: how many of the images written are near-copies of a training image, the closest pairs."""
    from diffgen.copies import check_files  # noqa: PLC0415

    files = [outputs.image_path(i, fmt) for i in range(outputs.start, outputs.start + outputs.n)]
    c = check_files(files, data_dir, size=spec.image_size, channels=spec.channels)
    line = copies_text(c, [f.name for f in files])
    console.print(labelled("warning:", "yellow", line) if c.memorising else line, highlight=False, soft_wrap=True)


def made_text(outputs: Outputs) -> str:
    """'16 images in imgs (0-15), grid g.png', or 'a grid of 16 images in g.png'."""
    from diffgen.generate import index_span  # noqa: PLC0415

    n, folder, grid = outputs.n, outputs.folder, outputs.grid
    if not folder:
        return f"a grid of {count_of(n, 'image')} in {grid}"
    return f"{count_of(n, 'image')} in {folder} ({index_span(outputs.start, n)})" + (f", grid {grid}" if grid else "")


def continuing(outputs: Outputs, start: int | None) -> str | None:
    """The note when a run numbers its images after those already in its folder."""
    if start is not None or not outputs.start:
        return None
    return (f"{outputs.folder} already holds images up to {outputs.start - 1}; numbering goes on at {outputs.start} "
            "(--overwrite starts again at 0)")

