"""`diffgen upscale` and `diffgen eval-upscale`: photos and videos made larger, file by file, and scored."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffgen.cli.base import (
    DEVICE_HELP, ETA_HELP, MODEL_HELP, PRECISION_HELP, SAMPLES_HELP, PlainCommand, Stopped, app, console_err, fail,
    freeze_imports, labelled, run_command, stop_between_frames, stop_on_signals,
)
from diffgen.cli.output import ItemBar, UpscaleBars, device_of, print_table, report_done
from diffgen.enums import ImageFormat, Precision
from diffgen.text import count_of
from diffgen.video import SEGMENT_FRAMES, Codec  # no torch, no PyAV: --help stays fast

MODEL_HELP = (MODEL_HELP + " upscale-x4 (the default) and upscale-x2 (--scale 2) are trained on inputs with JPEG "
              "blocks, noise and blur, as photos from phones and the web have; upscale-x4-clean and upscale-x2-clean "
              "score higher on clean, lossless inputs (PNG renders, scans) and keep more faint texture. By default "
              "(--denoise auto) each image gets the one of the pair its pixels call for.")
STEPS_HELP = "Denoising steps: 1 is the most faithful (highest PSNR); more add sampled texture."
DENOISE_HELP = ("0 to 1, or auto: how much noise and JPEG blocking the bundled upscaler removes; lower keeps more faint "
                "texture, and more noise. A blend of the bundled upscaler (1) and its -clean partner (0). auto: 1 for "
                "an image that shows JPEG blocks or noise, 0 for one that looks clean; 1 for videos.")


@app.command(cls=PlainCommand)
@run_command
def upscale(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.", show_default=False, metavar="IMAGES")],
    model: Annotated[Optional[str], typer.Option(help=MODEL_HELP, metavar="MODEL", show_default="upscale-x4")] = None,
    scale: Annotated[Optional[int], typer.Option("--scale", "-s", help="How many times larger: 4 or 2 with the bundled models (upscale-x4, upscale-x2), else the --model's factor.", show_default="4, or the --model's")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file (its suffix sets the format), or folder: sub-folders of inputs are mirrored in it.", show_default="beside each input")] = None,
    suffix: Annotated[Optional[str], typer.Option(help="Added to output names.", show_default="_x4 for x4")] = None,
    format: Annotated[Optional[ImageFormat], typer.Option("--format", case_sensitive=False, help="Output format.", show_default="png, or the --out file's")] = None,
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality, 1-100.")] = 95,
    recursive: Annotated[bool, typer.Option("--recursive", help="Descend into sub-folders of folder inputs.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose output exists and is complete.")] = False,
    steps: Annotated[int, typer.Option(help=STEPS_HELP)] = 1,
    eta: Annotated[float, typer.Option(help=ETA_HELP)] = 0.0,
    samples: Annotated[int, typer.Option(help=SAMPLES_HELP)] = 2,
    detail: Annotated[bool, typer.Option("--detail", help="Sampled texture (fur, foliage, grain) instead of the most faithful average: --steps 20 --eta 1 --samples 1, slower and a little less faithful.")] = False,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    denoise: Annotated[str, typer.Option(metavar="STRENGTH", help=DENOISE_HELP)] = "auto",
    width: Annotated[Optional[int], typer.Option(help="Final width in pixels (the height follows the aspect): the model's output resized (Lanczos).", show_default="the model's factor")] = None,
    height: Annotated[Optional[int], typer.Option(help="Final height in pixels (the width follows the aspect).", show_default="the model's factor")] = None,
    tile: Annotated[Optional[int], typer.Option(help="Side of the pieces the image is upscaled in, in input pixels: smaller uses less memory.", show_default="automatic")] = None,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.AUTO,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
    codec: Annotated[Optional[Codec], typer.Option(case_sensitive=False, help="Video codec.", show_default="h264; vp9 for .webm")] = None,
    crf: Annotated[Optional[int], typer.Option(help="Video quality: lower is better and larger, 0 is lossless.", show_default="visually lossless: 18 for h264 and vp9, 22 for h265")] = None,
    pix_fmt: Annotated[str, typer.Option(help="Video pixel format: yuv420p plays everywhere, yuv444p keeps full colour detail, yuv420p10le has 10 bits.")] = "yuv420p",
    keep_partial: Annotated[bool, typer.Option("--keep-partial", help="When a video upscale is stopped, keep the frames done as a playable NAME.partial.EXT.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a stopped video upscale from its finished pieces (120 frames each).")] = False,
    stabilize: Annotated[bool, typer.Option("--stabilize/--no-stabilize", help="Video: carry the detail the model adds along the motion from frame to frame, against flicker; --no-stabilize upscales each frame alone.")] = True,
    piece_frames: Annotated[int, typer.Option(hidden=True, help="Frames per piece of a video (for tests: many pieces from a short clip).")] = SEGMENT_FRAMES,
) -> None:
    """Upscale images and videos with a diffusion super-resolution model.

    Videos (mp4, mkv, webm, mov, avi, animated GIF and WebP) keep their sound, subtitles, timing and rotation;
    they need `pip install "diffgen\\[video]"`.

    Examples:
      diffgen upscale low.png
      diffgen upscale photos/ --recursive --out big/ --format jpg
      diffgen upscale "scans/*.png" --skip-existing
      diffgen upscale cat.jpg --detail --width 1920
      diffgen upscale phone.jpg --scale 2
      diffgen upscale clip.mp4 --codec h265
      torchrun --nproc_per_node=4 -m diffgen upscale photos/ --recursive --out big/
      torchrun --nproc_per_node=4 -m diffgen upscale clip.mp4
    """
    import os  # noqa: PLC0415

    # OpenMP threads spin only briefly (1,000 turns) before they sleep between the upscale's convolutions: beside
    # another busy program (a browser, a second job) threads that spin took the cores from it and each other, and
    # an upscale ran 2.8-3.2x its quiet time instead of 1.7x; sleeping at once (OMP_WAIT_POLICY=PASSIVE) cost 17%
    # on a quiet AMX machine, this nothing (README, Speed). Read when torch first loads GNU OpenMP; a setting of
    # the user's is kept. Not for generate and train, whose many small ops are faster with spinning threads.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    import torch  # noqa: PLC0415

    from diffgen.api import upscale_sampling  # noqa: PLC0415
    from diffgen.errors import OptionError  # noqa: PLC0415
    from diffgen.runtime import process_group, totals  # noqa: PLC0415
    from diffgen.upscale import check_final_size, memory_budget  # noqa: PLC0415
    from diffgen.upscale_plan import collect_inputs, plan_outputs  # noqa: PLC0415

    freeze_imports()
    if not 1 <= quality <= 100:
        raise OptionError(f"--quality {quality}: must be between 1 and 100")
    if overwrite and skip_existing:
        raise OptionError("--overwrite and --skip-existing: choose one")
    check_final_size(width, height)
    if piece_frames < 1:
        raise OptionError(f"--piece-frames {piece_frames}: must be at least 1")
    sampling = upscale_sampling(steps=steps, eta=eta, samples=samples, seed=seed, detail=detail)
    upscalers = open_upscaler(model, denoise, device, precision, sampling, tile=tile, scale=scale)
    loaded = upscalers.main
    suffix = f"_x{loaded.spec.scale}" if suffix is None else suffix
    sources = collect_inputs(inputs, recursive=recursive, suffix=suffix)
    plan = plan_outputs(sources, out, suffix=suffix, fmt=format and format.value)
    memory_budget()  # a bad DIFFGEN_MEMORY_GB is one error now, not one per file
    batch = UpscaleBatch(upscalers, tile=tile, sampling=sampling, quality=quality, width=width, height=height,
                         overwrite=overwrite, skip_existing=skip_existing,
                         video=dict(codec=codec, crf=crf, pix_fmt=pix_fmt, keep_partial=keep_partial, resume=resume,
                                    segment_frames=piece_frames, stabilize=stabilize))
    with process_group(torch.device("cpu")) as ranks:  # under torchrun: every video together, images by file
        batch.ranks = ranks
        mine = share(plan, ranks)
        with UpscaleBars(len(mine), show=ranks.main) as progress:
            try:
                with stop_on_signals():
                    for src, dst in mine:
                        progress.next_image(src.name)
                        batch.run(src, dst, progress)
                        progress.image_done()
            except Stopped as e:
                if not (ranks.main or batch.stopped_video is None):  # a video all share: the first process says it
                    raise typer.Exit(e.exit_code) from None
                how = batch.stopped_video or "rerun the same command with --skip-existing to continue"
                raise fail(f"stopped by {e.name}: {batch.summary()}; {how}", e.exit_code) from None
        batch.counts = Counter(totals({key: batch.counts[key] for key in UpscaleBatch.COUNTS}, ranks))
        batch.processes = ranks.world
    if batch.counts["failed"]:
        raise fail(batch.summary()) if ranks.main else typer.Exit(1)  # one summary, from the first process
    if ranks.main:
        report_done(batch.summary())


def share(plan: list, ranks) -> list:
    """What this process upscales: every video, all processes together piece by piece (first, so that none waits
    for another's images), then every world-th image."""
    from diffgen.video import is_video  # noqa: PLC0415

    videos = [pair for pair in plan if is_video(pair[0])]
    images = [pair for pair in plan if not is_video(pair[0])]
    return (videos + images[ranks.rank :: ranks.world]) if ranks.world > 1 else plan


class UpscaleBatch:
    """Upscale a batch file by file: a bad file is reported and counted, and the batch goes on."""

    COUNTS = ("upscaled", "skipped", "failed", "videos")

    def __init__(self, upscalers, *, skip_existing: bool, overwrite: bool, video: dict, **settings):
        self.upscalers, self.loaded = upscalers, upscalers.main  # api.Upscalers; its model for every image but auto's
        self.skip_existing, self.overwrite, self.settings = skip_existing, overwrite, settings
        self.video = video  # the video options: codec, crf, pix_fmt, keep_partial, resume, stabilize
        self.counts = Counter()
        self.stopped_video = None  # how to continue a video upscale stopped between frames
        self.processes = 1  # the torchrun processes whose files the counts hold
        self.ranks = None  # this process's place under torchrun (runtime.Ranks); None: the only one

    def run(self, src: Path, dst: Path, progress: UpscaleBars) -> None:
        from diffgen.errors import DiffgenError  # noqa: PLC0415
        from diffgen.upscale import upscale_file  # noqa: PLC0415
        from diffgen.video import PeerFailed, is_video  # noqa: PLC0415

        video = is_video(src)
        shared = video and self.ranks is not None and self.ranks.world > 1  # every process works on it
        counts = self.counts if not shared or self.ranks.main else Counter()  # the first process counts it, once
        say = progress.print if counts is self.counts else lambda message: None
        counts["videos"] += video
        overwrite = self.overwrite
        if self.skip_existing and dst.exists():
            if is_complete_output(dst, video):
                counts["skipped"] += 1
                return
            say(labelled("note:", "yellow", f"{dst}: incomplete or corrupt; upscaling {src} again"))
            overwrite = True
        if not overwrite and dst.exists():  # said before the work, not after it
            counts["failed"] += 1
            say(labelled("error:", "red", f"{dst}: already exists; pass --skip-existing to keep it or "
                                          "--overwrite to replace it, or choose another --out"))
            return
        try:
            if video:
                result = self.run_video(src, dst, overwrite, progress)
            else:
                loaded, chose = self.upscalers.pick_file(src)
                result = upscale_file(loaded, src, dst, overwrite=overwrite, callback=progress.tiles,
                                      remake=self.remake(src, loaded), **self.settings)
                result = replace(result, note="; ".join(n for n in (chose, result.note) if n) or None)
        except DiffgenError as e:
            counts["failed"] += 1
            if shared and not isinstance(e, PeerFailed):  # its own failure, which each process says
                progress.print(labelled("error:", "red", f"{e} (process {self.ranks.rank} of {self.ranks.world})"))
            else:
                say(labelled("error:", "red", str(e)))
            return
        counts["upscaled"] += 1
        if counts is not self.counts:
            return
        note = f"; {result.note}" if result.note else ""
        progress.print(f"{src} -> {dst} ({result.size[0]}x{result.size[1]}{note})")

    def remake(self, src: Path, loaded) -> str:
        """The command that makes the output again, pixel for pixel on the same kind of device, from the absolute
        path of `src`; it leaves out where the output went, so that the copy `diffgen reproduce` makes records
        the same command, and is the same file."""
        import os  # noqa: PLC0415
        import shlex  # noqa: PLC0415

        from diffgen.recipe import model_option  # noqa: PLC0415

        sampling, s = self.settings["sampling"], self.settings
        args = ["diffgen", "upscale", os.path.abspath(src), "--model", model_option(loaded.path),
                "--steps", sampling.steps, "--eta", sampling.eta, "--samples", sampling.samples, "--seed", sampling.seed,
                "--precision", loaded.precision, "--device", next(loaded.model.parameters()).device.type]
        for option, value in (("--denoise", self.upscalers.strength_of(loaded)), ("--tile", s["tile"]),
                              ("--width", s["width"]), ("--height", s["height"])):
            args += [option, value] if value is not None else []
        return shlex.join(map(str, [*args, "--quality", s["quality"]]))

    def run_video(self, src: Path, dst: Path, overwrite: bool, progress: UpscaleBars):
        """Upscale one video; a first SIGINT or SIGTERM stops it cleanly after the current frame."""
        from diffgen.errors import OptionError  # noqa: PLC0415
        from diffgen.video.job import upscale_video  # noqa: PLC0415

        if self.settings["width"] is not None or self.settings["height"] is not None:
            raise OptionError(f"{src}: --width and --height are for images; a video is upscaled by the model's factor")
        import signal  # noqa: PLC0415

        from diffgen.runtime import Ranks  # noqa: PLC0415

        with stop_between_frames() as asked:
            result = upscale_video(src, dst, self.loaded, tile=self.settings["tile"], sampling=self.settings["sampling"],
                                   overwrite=overwrite, on_progress=progress.frames, stop=lambda: bool(asked),
                                   ranks=self.ranks or Ranks(), **self.video)
        if result.stopped:
            kept = f"; the frames done are in {result.partial}" if result.partial else ""
            self.stopped_video = (f"{src} stopped after {count_of(result.frames, 'frame')}{kept}; rerun the same "
                                  "command with --resume to continue it")
            raise Stopped(asked[0] if asked else signal.SIGINT)  # without a signal here: another process was stopped
        return result

    def summary(self) -> str:
        c = self.counts
        noun = "file" if c["videos"] else "image"  # a video is not an image
        by = f" by {self.processes} processes" if self.processes > 1 else ""
        return (f"{count_of(c['upscaled'], noun)} upscaled on {device_of(self.loaded)}{by}, {c['skipped']} skipped, "
                f"{c['failed']} failed")


def is_complete_output(dst: Path, video: bool) -> bool:
    from diffgen.images import is_complete_image  # noqa: PLC0415
    from diffgen.video.streams import is_complete_video  # noqa: PLC0415

    return is_complete_video(dst) if video else is_complete_image(dst)


@app.command("eval-upscale", cls=PlainCommand)
@run_command
def eval_upscale(
    hr_dir: Annotated[Path, typer.Argument(help="Folder of high-resolution images to score against.", metavar="FOLDER")],
    model: Annotated[Optional[str], typer.Option(help=MODEL_HELP, metavar="MODEL", show_default="upscale-x4")] = None,
    steps: Annotated[int, typer.Option(help=STEPS_HELP)] = 1,
    eta: Annotated[float, typer.Option(help=ETA_HELP)] = 0.0,
    samples: Annotated[int, typer.Option(help=SAMPLES_HELP)] = 2,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    tile: Annotated[Optional[int], typer.Option(help="Side of the pieces the image is upscaled in, in input pixels: smaller uses less memory.", show_default="automatic")] = None,
    denoise: Annotated[str, typer.Option(metavar="STRENGTH", help=DENOISE_HELP)] = "auto",
    degrade: Annotated[str, typer.Option(metavar="CONDITION", help="What happens to each shrunk image before it is upscaled: clean, jpeg:QUALITY (saved as a JPEG, e.g. jpeg:75) or noise:SIGMA (Gaussian noise in 8-bit levels, e.g. noise:5).")] = "clean",
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.AUTO,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
) -> None:
    """Shrink each image by the model's factor, upscale it back, and score how close diffgen and bicubic come to the original.

    Scores are on brightness (Y): PSNR in decibels (dB; higher is closer, +1 dB is a clear gain) and SSIM
    (structural similarity; 1 is identical).

    Examples:
      diffgen eval-upscale data/heldout
      diffgen eval-upscale photos/ --model runs/sr --steps 10
      diffgen eval-upscale data/heldout --degrade jpeg:75
    """
    from rich.table import Table  # noqa: PLC0415

    from diffgen.api import upscale_sampling  # noqa: PLC0415
    from diffgen.degrade import parse_condition  # noqa: PLC0415

    from diffgen.data import find_images  # noqa: PLC0415
    from diffgen.metrics import PSNR_CAP, evaluate, mean_row  # noqa: PLC0415
    from diffgen.upscale import upscale_image  # noqa: PLC0415

    freeze_imports()
    condition = parse_condition(degrade)
    sampling = upscale_sampling(steps=steps, eta=eta, samples=samples, seed=seed)
    upscalers = open_upscaler(model, denoise, device, precision, sampling, tile=tile)
    loaded = upscalers.main
    files, _, _ = find_images(hr_dir)
    failures = []
    def upscaled(lr):
        chosen, _ = upscalers.pick(lr)
        sr = upscale_image(chosen, lr, tile=tile, sampling=sampling)[0]
        sr.info["note"] = f"--denoise {upscalers.strength_of(chosen):g}" if upscalers.auto else None
        return sr

    with ItemBar("scoring", len(files)) as advance:
        rows = evaluate(upscaled, files, loaded.spec.scale, callback=advance, on_error=failures.append,
                        condition=condition)
    for e in failures:
        console_err.print(labelled("error:", "red", str(e)), highlight=False, soft_wrap=True)
    if rows:
        table = Table(title=f"x{loaded.spec.scale} on {hr_dir} ({count_of(len(rows), 'image')}), on {device_of(loaded)}: "
                            f"PSNR (dB, at most {PSNR_CAP:.0f}) and SSIM on Y, {count_of(steps, 'step')}, η = {eta}, "
                            f"{count_of(samples, 'sample')}, {loaded.precision}; inputs {condition}")
        chose = upscalers.auto  # a column of what --denoise auto chose for each image
        for col in ("image", "bicubic PSNR", "diffgen PSNR", "gain", "bicubic SSIM", "diffgen SSIM", "seconds",
                    *(["chose"] if chose else [])):
            table.add_column(col, justify="left" if col in ("image", "chose") else "right", no_wrap=True)
        for row in rows + [mean_row(rows)]:
            table.add_row(row.name, f"{row.bicubic.psnr:.2f}", f"{row.model.psnr:.2f}", f"{row.model.psnr - row.bicubic.psnr:+.2f}",
                          f"{row.bicubic.ssim:.4f}", f"{row.model.ssim:.4f}", f"{row.seconds:.1f}",
                          *([row.note or ""] if chose else []))
        print_table(table)
    if failures:
        raise fail(f"{count_of(len(failures), 'file')} of {len(files)} could not be scored (above); the table leaves "
                   f"{'it' if len(failures) == 1 else 'them'} out")


def open_upscaler(model: str | None, denoise: str, device: str, precision: Precision, sampling, *,
                  tile: int | None, scale: int | None = None):
    """Load the upscaling model (blended for --denoise; api.Upscalers) and check the sampling options against it."""
    from diffgen.api import Upscalers, check_tile, check_upscaler, parse_denoise  # noqa: PLC0415

    check_tile(tile)
    upscalers = Upscalers(model, parse_denoise(denoise), device, precision.value, scale=scale)
    check_upscaler(upscalers.main, sampling, scale=scale)
    return upscalers
