"""The `diffgen` command line: thin Typer commands over the core.

Each command declares its options, checks them, calls one core function and prints the result. The
core raises `DiffgenError` for anything a user can fix; `run_command` turns it into one red line and
an exit code. torch is imported only inside commands, so `diffgen --help` starts fast.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, get_args

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from diffgen.generate import Outputs
    from diffgen.train import TrainConfig

# --help in words: a value option shows what it takes (N, NUMBER, TEXT, PATH or its choices) and an on/off
# switch nothing, where Typer would show Python types (<int>, <bool>, <list[str]>).
METAVARS = {int: "N", float: "NUMBER", str: "TEXT", Path: "PATH"}
CLICK_METAVARS = {"integer": "N", "float": "NUMBER", "text": "TEXT", "path": "PATH"}  # typer before 0.2x


def plain_types(params) -> None:
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None  # its name (IMAGES, DATA_DIR) says what it takes
        elif param.metavar is None:
            param.metavar = value_metavar(param)


def value_metavar(param) -> str | None:
    """What an option takes, in words; None (Typer's own display) for choices and anything unknown."""
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if getattr(descriptor, "is_list", False):
        annotation = get_args(annotation)[0]
    return METAVARS.get(annotation) or CLICK_METAVARS.get(getattr(getattr(param, "type", None), "name", None))


class PlainCommand(typer.core.TyperCommand):
    def get_params(self, ctx):  # --help among them
        params = super().get_params(ctx)
        plain_types(params)
        return params


class PlainGroup(typer.core.TyperGroup):
    def get_params(self, ctx):  # --help and --install-completion among them
        params = super().get_params(ctx)
        plain_types(params)
        return params


app = typer.Typer(
    help="Train diffusion models on folders of images, generate new images, and upscale photos.",
    cls=PlainGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# markup=False: file names, messages and table cells are printed as they are; "photo[draft].png" is not a
# markup tag. Colour comes only from `labelled` (or a style= argument).
console = Console(markup=False)
console_err = Console(stderr=True, markup=False)
DEBUG = {"on": False}
OWNS_PROCESS = {"on": False}  # set by main(): diffgen is the program, not a library inside another one

# The option choices below mirror the core's enums (Task, Sampler, Spacing, ...): importing those
# would import torch and make `--help` slow. Commands convert with e.g. Sampler(sampler.value).


class TaskOpt(str, Enum):
    generate = "generate"
    upscale = "upscale"


class SamplerOpt(str, Enum):
    ddpm = "ddpm"
    ddim = "ddim"
    dpmpp_2m = "dpm++2m"
    heun = "heun"
    unipc = "unipc"


class SpacingOpt(str, Enum):
    uniform = "uniform"
    trailing = "trailing"
    karras = "karras"
    logsnr = "logsnr"


class PredictionOpt(str, Enum):
    eps = "eps"
    v = "v"
    x0 = "x0"


class ScheduleOpt(str, Enum):
    linear = "linear"
    cosine = "cosine"


class FormatOpt(str, Enum):
    """Image formats by file suffix (images.FORMATS); options using it take any case (case_sensitive=False)."""

    png = "png"
    jpg = "jpg"
    jpeg = "jpeg"
    webp = "webp"
    tiff = "tiff"
    tif = "tif"
    bmp = "bmp"


PRECISION_HELP = ("Number format: auto uses bfloat16 (bf16) on CPUs that compute it natively, about 1.4-2x faster, "
                  "else float32 (fp32).")
MODEL_HELP = "Bundled name, .safetensors file, run folder or Hugging Face Hub repo id (user/name, or user/name@revision)."
ETA_HELP = "Fresh noise added at each step after the first (DDIM's η): 0 none, the same result every time; 1 the most."
DEVICE_HELP = "auto (the GPU if there is one), cpu, cuda or cuda:N."
SAMPLES_HELP = "Upscales to average (1-8), each of another flip or turn of the input: higher PSNR, that many times the time."


class PrecisionOpt(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class CropOpt(str, Enum):
    center = "center"
    random = "random"


def freeze_imports() -> None:
    """Exempt everything imported so far from garbage collection, when diffgen is the program.

    torch's import leaves millions of objects that live as long as the process, and every full
    collection walks them all: that cost `generate --n 16` about 0.4 of its 1.7-1.9 s here. In another program
    (or the tests) nothing is frozen: it would keep that program's uncollected garbage for good.
    """
    if OWNS_PROCESS["on"]:
        import gc  # noqa: PLC0415

        gc.freeze()


# Control characters (C0, DEL, C1) and bidirectional overrides: printed raw, a model's metadata or a file's
# name could clear the screen, plant a hyperlink or reorder what the user reads. Newlines too: every
# message is one line.
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """`text` with every control character written as a visible escape (ESC as \\x1b, a newline as \\n)."""

    def escape(match: re.Match) -> str:
        char = match[0]
        return NAMED_ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")

    return UNPRINTABLE.sub(escape, text)


def labelled(label: str, style: str, text: str) -> Text:
    """'label text' with the label in colour; the text escaped, as it may come from a file or a model."""
    return Text.assemble((label, style), " ", printable(text))


def fail(message: str, code: int = 1) -> typer.Exit:
    console_err.print(labelled("error:", "red", message), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def run_command(fn):
    """Run a command body, turning diffgen's errors into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from diffgen.errors import DiffgenError, TrainingInterrupted  # noqa: PLC0415

        try:
            return fn(*args, **kwargs)
        except TrainingInterrupted as e:  # asked for, and saved: not an error
            console_err.print(printable(str(e)), style="yellow", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except DiffgenError as e:
            raise fail(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:
            if DEBUG["on"]:
                raise
            raise fail(f"internal error: {type(e).__name__}: {e}. Rerun with --debug for the traceback") from None

    return wrapper


def print_version(asked: bool) -> None:
    if asked:
        from diffgen import __version__  # noqa: PLC0415

        console.print(f"diffgen {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Show diffgen's version and exit.", callback=print_version,
                                          is_eager=True)] = False,
) -> None:
    DEBUG["on"] = debug


def int_list(name: str, text: str | None) -> tuple[int, ...] | None:
    """Parse "1,2,2" into (1, 2, 2); an empty string means an empty tuple."""
    from diffgen.errors import OptionError  # noqa: PLC0415

    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise OptionError(f"{name} {text}: give whole numbers separated by commas, e.g. 1,2,2") from None


def check_positive(name: str, value: int | None) -> None:
    from diffgen.errors import OptionError  # noqa: PLC0415

    if value is not None and value < 1:
        raise OptionError(f"{name} {value}: must be at least 1")


@app.command(cls=PlainCommand)
@run_command
def train(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(help="Folder of images; sub-folders are classes.", metavar="DATA_DIR")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder for the model, state, log and samples.")] = Path("runs/latest"),
    task: Annotated[TaskOpt, typer.Option(help="generate: new images; upscale: super-resolution.")] = TaskOpt.generate,
    scale: Annotated[int, typer.Option("--scale", "-s", help="How many times larger the output is (upscale task).")] = 4,
    image_size: Annotated[Optional[int], typer.Option(help="Training resolution (HR crop size when upscaling).", show_default="32; upscale: 96")] = None,
    channels: Annotated[Optional[int], typer.Option(help="1, 3 or 4; default: as most images have.")] = None,
    crop: Annotated[CropOpt, typer.Option(help="Centre crop once, or a random crop each time.")] = CropOpt.center,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips (upscaling: all flips and quarter turns).")] = True,
    preset: Annotated[str, typer.Option(help="U-Net size: tiny, small or base.")] = "tiny",
    base_channels: Annotated[Optional[int], typer.Option(help="Width of the first level.", show_default="the preset's")] = None,
    channel_mults: Annotated[Optional[str], typer.Option(help="Width multiple per level, e.g. 1,2,2.", show_default="the preset's")] = None,
    num_res_blocks: Annotated[Optional[int], typer.Option("--res-blocks", help="Residual blocks per level.", show_default="the preset's; upscale: 2")] = None,
    attention_levels: Annotated[Optional[str], typer.Option(help="Levels with attention, e.g. 2 or 1,2.", show_default="the preset's")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimisation steps.", show_default="2000, or the resumed run's")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the data, instead of --max-steps.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step (over all processes).")] = 32,
    grad_accum: Annotated[int, typer.Option(help="Split each batch into this many parts run one after another: less memory, the same result (gradient accumulation).")] = 1,
    lr: Annotated[float, typer.Option(help="Largest learning rate, reached after the warm-up (AdamW).")] = 2e-4,
    warmup_steps: Annotated[int, typer.Option(help="Steps over which the learning rate rises from 0 (warm-up).")] = 200,
    lr_decay: Annotated[bool, typer.Option("--lr-decay/--no-lr-decay", help="Lower the learning rate to zero by the last step (cosine decay).")] = False,
    grad_clip: Annotated[float, typer.Option(help="Largest size of one update; larger ones are scaled down (gradient-norm clipping).")] = 1.0,
    ema_decay: Annotated[float, typer.Option(help="How slowly the averaged weights that sampling uses follow training (EMA decay).")] = 0.999,
    prediction: Annotated[Optional[PredictionOpt], typer.Option(help="What the network learns to output: the noise (eps), a blend of noise and image (v) or the clean image (x0); docs/training.md.", show_default="v; upscale: x0")] = None,
    schedule: Annotated[ScheduleOpt, typer.Option(help="How fast noise grows over the diffusion steps (noise schedule).")] = ScheduleOpt.cosine,
    min_snr_gamma: Annotated[Optional[float], typer.Option(help="Weigh down the easy, almost clean steps in the loss (Min-SNR-γ, this is γ); 0 turns it off.", show_default="5; upscale: 0")] = None,
    pure_noise_share: Annotated[Optional[float], typer.Option(help="Share of each batch trained at pure noise, where sampling starts; few-step upscales gain most.", show_default="0; upscale: 0.5")] = None,
    random_shrink: Annotated[float, typer.Option(help="Upscaling: cut each crop as if its photo were shrunk by a random factor between this and 1, for more varied detail; 1 turns it off.")] = 1.0,
    degrade: Annotated[str, typer.Option(help="Upscaling: 'real' trains on inputs with random blur, noise and JPEG, so real photos upscale cleanly; 'none' on clean bicubic ones.", metavar="none|real")] = "none",
    label_dropout: Annotated[float, typer.Option(help="Share of images trained without their class, so that generate --guidance works (label dropout).")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of weights, data order and noise.")] = 0,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 500,
    sample_every: Annotated[int, typer.Option(help="Sample grid every N steps.")] = 1000,
    log_every: Annotated[int, typer.Option(help="Log line every N steps.")] = 50,
    workers: Annotated[int, typer.Option(help="Processes that read images when the data is too big for memory (DataLoader workers).")] = 2,
    device: Annotated[Optional[str], typer.Option(metavar="DEVICE", help=DEVICE_HELP, show_default="auto; --resume: the run's")] = None,
    precision: Annotated[Optional[PrecisionOpt], typer.Option(help="Number format: auto is bfloat16 (bf16) on a GPU and float32 (fp32) on a CPU; bf16 trains about 1.2x faster on CPUs that compute it natively.", show_default="auto; --resume: the run's")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out where it stopped.")] = False,
    init_from: Annotated[Optional[str], typer.Option(metavar="MODEL", help="Fine-tune: start from this model (bundled name, file, run folder or Hub repo id), keeping its architecture and target.")] = None,
) -> None:
    """Train a diffusion model on a folder of images.

    Examples:
      diffgen train data/digits --out runs/digits --image-size 28 --max-steps 20000
      diffgen train data/photos --out runs/sr --task upscale --scale 4
      diffgen train data/digits --out runs/digits --resume
      diffgen train my-photos --out runs/my-sr --task upscale --init-from upscale-x4 --lr 1e-4 --lr-decay --max-steps 2000
    """
    from diffgen.checkpoint import Task  # noqa: PLC0415
    from diffgen.data import Crop  # noqa: PLC0415
    from diffgen.errors import OptionError  # noqa: PLC0415
    from diffgen.schedule import Prediction, ScheduleKind  # noqa: PLC0415
    from diffgen.state import load_config  # noqa: PLC0415
    from diffgen.train import UPSCALE_DEFAULTS, TrainConfig  # noqa: PLC0415
    from diffgen.train import train as run_training  # noqa: PLC0415

    freeze_imports()

    if max_steps is not None and epochs is not None:
        raise OptionError("--epochs and --max-steps: give one or the other")
    # Options left out take TrainConfig's defaults, or the upscaling ones for --task upscale.
    given = {"image_size": image_size, "min_snr_gamma": min_snr_gamma, "pure_noise_share": pure_noise_share,
             "num_res_blocks": num_res_blocks, "prediction": Prediction(prediction.value) if prediction else None}
    task_defaults = UPSCALE_DEFAULTS if task is TaskOpt.upscale else {}
    cfg = TrainConfig(
        **(task_defaults | {name: value for name, value in given.items() if value is not None}),
        data_dir=data_dir, out_dir=out, task=Task(task.value), scale=scale,
        channels=channels, crop=Crop(crop.value), flip=flip, preset=preset, base_channels=base_channels,
        channel_mults=int_list("--channel-mults", channel_mults),
        attention_levels=int_list("--attention-levels", attention_levels),
        max_steps=2000 if max_steps is None else max_steps,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps, lr_decay=lr_decay,
        grad_clip=grad_clip, ema_decay=ema_decay, schedule=ScheduleKind(schedule.value),
        random_shrink=random_shrink, degrade=degrade, label_dropout=label_dropout, seed=seed, save_every=save_every,
        sample_every=sample_every, log_every=log_every, workers=workers, device=device or "auto",
        precision=precision.value if precision else "auto", epochs=epochs,
        init_from=init_from,
    )
    if resume and (out / "state.safetensors").exists():
        cfg = resumed_config(ctx, cfg, load_config(out / "state.safetensors"))
    with TrainProgress(cfg.max_steps) as progress:
        result = run_training(cfg, callback=progress.update, resume=resume, command=typed_command(ctx))
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    report_trained(result, out, resumed=resume)


def report_trained(result, out: Path, *, resumed: bool) -> None:
    """The end of `train`: where the model is, the final loss, time and samples, and the next command."""
    from diffgen.hub import usage  # noqa: PLC0415

    if resumed and not result.steps_run:
        console.print(f"already finished: it trained {result.step} steps; pass --max-steps N (more than "
                      f"{result.step}) with --resume to go on", highlight=False, soft_wrap=True)
        return
    if result.skipped:
        # Finished, but not on all the data: say so in the exit code too (see docs/guarantees.md).
        console_err.print(labelled(f"done, with {len(result.skipped)} unreadable file(s) skipped:", "yellow",
                                   f"model written to {result.model_path}"), highlight=False, soft_wrap=True)
    else:
        report_done(f"model written to {result.model_path}")
    samples = f"; samples: {result.samples}" if result.samples else ""
    console.print(printable(f"  step {result.step}, loss {result.loss:.4f}, {duration(result.seconds)}{samples}"),
                  highlight=False, soft_wrap=True)
    console.print(printable(f"  next: {usage(result.spec, str(out))}"), highlight=False, soft_wrap=True)
    if result.skipped:
        raise typer.Exit(3)


def typed_command(ctx: typer.Context) -> str:
    """The command line as typed, shell-quoted, for the model's provenance (options in the order of --help)."""
    import shlex  # noqa: PLC0415

    words = ["diffgen", ctx.info_name]
    for param in ctx.command.params:
        if getattr(ctx.get_parameter_source(param.name), "name", None) != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        if param.param_type_name == "argument":
            words.append(str(value))
        elif getattr(param, "is_flag", False):
            words.append(param.opts[0] if value or not param.secondary_opts else param.secondary_opts[0])
        else:
            words += [param.opts[0], str(getattr(value, "value", value))]
    return shlex.join(words)


def duration(seconds: float) -> str:
    """'42 s', '12 min', '3 h 5 min'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


# What a resumed run takes from the command line: where its data and folder now are, how long to go on
# (--max-steps or --epochs), the hardware (a CPU run may move to a GPU: --device, --precision, --workers)
# and how often it saves and reports. Every other option is the run's own setting: the same value may be
# given again (the first command with --resume added), another is refused.
RESUME_MAY_SET = frozenset({"data_dir", "out_dir", "max_steps", "epochs", "device", "precision", "workers",
                            "save_every", "sample_every", "log_every"})
NOT_SETTINGS = frozenset({"resume"})


def resumed_config(ctx: typer.Context, asked: TrainConfig, saved: TrainConfig) -> TrainConfig:
    """The saved run's config, with what the command line may change on a resume."""
    from dataclasses import replace  # noqa: PLC0415

    from diffgen.errors import OptionError  # noqa: PLC0415

    # Options typed on the command line, by config field. The source is compared by name: Typer may bring
    # its own copy of click's ParameterSource.
    given = {("out_dir" if p.name == "out" else p.name): p for p in ctx.command.params if p.name not in NOT_SETTINGS
             and getattr(ctx.get_parameter_source(p.name), "name", None) == "COMMANDLINE"}
    changed = [refusal(param, getattr(saved, field)) for field, param in given.items()
               if field not in RESUME_MAY_SET and getattr(asked, field) != getattr(saved, field)]
    if changed:
        raise OptionError(f"--resume: {', '.join(changed)} would change the run's own settings; leave them out to "
                          f"continue it, or start a new run in another --out (--init-from {asked.out_dir} starts "
                          f"from its weights)")
    taken = {"data_dir", "out_dir"} | (given.keys() & RESUME_MAY_SET)
    if taken & {"max_steps", "epochs"}:  # a new length replaces the old, whichever way each is given
        taken |= {"max_steps", "epochs"}
    return replace(saved, **{field: getattr(asked, field) for field in taken})


def refusal(param, saved) -> str:
    """'--lr (the run's: 0.0002)', or for an on/off flag '--no-flip (the run's: --flip)'."""
    if param.secondary_opts:
        on, off = param.opts[0], param.secondary_opts[0]
        return f"{off if saved else on} (the run's: {on if saved else off})"
    return f"{param.opts[0]} (the run's: {'none' if saved is None else getattr(saved, 'value', saved)})"


class TrainProgress:
    """What a run found and does, then a rich progress bar on a terminal, or plain log lines every so often
    elsewhere (CI, nohup). The bar appears at the first step: a run with no step to train shows none."""

    def __init__(self, total: int, every: int = 50):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: PLC0415

        self.total, self.every = total, every
        self.interactive = console.is_terminal
        self.bar = Progress(
            TextColumn("step {task.completed}/{task.total}"), BarColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"), TimeRemainingColumn(),
            console=console, disable=not self.interactive,
        )
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def say(self, text: str) -> None:
        self.bar.console.print(printable(text), highlight=False, soft_wrap=True)

    def update(self, event) -> None:
        from diffgen.train import Estimate, Finishing, Note, Started  # noqa: PLC0415

        if isinstance(event, Note):
            console_err.print(labelled("note:", "yellow", event.text), highlight=False, soft_wrap=True)
        elif isinstance(event, Started):
            self.say(started_text(event))
        elif isinstance(event, Estimate):
            self.say(f"expected: about {duration(event.seconds)} for the {self.total - event.step} steps to go, at "
                     "the pace of the first ones (sample grids and checkpoints add a little)")
        elif isinstance(event, Finishing):
            grid = (f" and a sample grid of {event.grid_images} images ({event.sample_steps} sampling steps each)"
                    if event.grid_images else "")
            self.say(f"step {event.step} done: writing the final checkpoint{grid}")
        else:
            self.progress(event)

    def progress(self, event) -> None:
        self.total = event.total
        if self.task is None:
            self.task = self.bar.add_task("train", total=event.total, loss=event.loss, ips=event.images_per_s)
        self.bar.update(self.task, completed=event.step, total=event.total, loss=event.loss, ips=event.images_per_s)
        if not self.interactive and (event.step % self.every == 0 or event.step == event.total):
            console.print(f"step {event.step}/{event.total}  loss {event.loss:.4f}  {event.images_per_s:.1f} img/s", highlight=False)
            console.file.flush()


COLOURS = {1: "grey", 3: "RGB", 4: "RGBA"}


def started_text(event) -> str:
    """'12 images in 2 classes (blue, red), resized to 16x16 RGB, on cpu, writing to runs/x'."""
    names = ", ".join(event.class_names[:10]) + (", …" if len(event.class_names) > 10 else "")
    found = f"{event.images} images" + (f" in {len(event.class_names)} classes ({names})" if event.class_names else "")
    size = f"{event.image_size}x{event.image_size} {COLOURS.get(event.channels, f'{event.channels}-channel')}"
    what = f"random {size} crops" if event.crops else f"resized to {size}"
    at = f"from step {event.step} " if event.step else ""
    return f"training {at}to step {event.total} on {found}, {what}, on {event.device}, writing to {event.out}"


def report_done(message: str) -> None:
    console.print(labelled("done:", "green", message), highlight=False, soft_wrap=True)


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
    sampler: Annotated[SamplerOpt, typer.Option(help="Sampling method: unipc and dpm++2m need about 10 steps, ddim and heun more, ddpm all of the model's.")] = SamplerOpt.unipc,
    spacing: Annotated[Optional[SpacingOpt], typer.Option(help="How the steps are spread over the noise levels (timestep spacing).", show_default="the sampler's")] = None,
    class_: Annotated[Optional[list[str]], typer.Option("--class", metavar="CLASS", help="Class name or index; repeat for several; default: all in turn.")] = None,
    guidance: Annotated[float, typer.Option(help="How strongly each image follows its class (classifier-free guidance weight w): 0 off; 0.5-1 makes every image its class, with less variety.")] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass; fewer if a batch would not fit in memory.")] = 16,
    grid: Annotated[Optional[Path], typer.Option(help="Write all images as one grid to this file (alone, unless --out is given).")] = None,
    format: Annotated[FormatOpt, typer.Option("--format", case_sensitive=False, help="Image format.")] = FormatOpt.png,
    precision: Annotated[PrecisionOpt, typer.Option(help=PRECISION_HELP)] = PrecisionOpt.auto,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
) -> None:
    """Generate images with a trained model. A second run into the same folder numbers its new images after the
    old ones; each PNG records the command that remakes it.

    Examples:
      diffgen generate --n 16 --out imgs/
      diffgen generate --model runs/digits --class 7 --n 8 --out sevens/ --grid sevens.png
      diffgen generate --start 5 --n 1 --seed 0
    """
    from diffgen.checkpoint import Task  # noqa: PLC0415
    from diffgen.errors import OptionError  # noqa: PLC0415
    from diffgen.generate import (  # noqa: PLC0415
        GenerationInterrupted, Outputs, Recipe, check_outputs, class_index, first_index, fit_batch_size, index_span,
        write_run,
    )
    from diffgen.images import SUFFIX_OF, format_of  # noqa: PLC0415
    from diffgen.models import open_model  # noqa: PLC0415
    from diffgen.samplers import Sampler, Spacing  # noqa: PLC0415
    from diffgen.train import pick_device  # noqa: PLC0415

    freeze_imports()
    check_positive("--n", n)
    check_positive("--steps", steps)
    check_positive("--batch-size", batch_size)
    if guidance < 0:
        raise OptionError(f"--guidance {guidance}: must be 0 or more")
    loaded = with_precision(open_model(model, Task.GENERATE, pick_device(device)), precision)
    if steps > loaded.spec.num_timesteps:
        raise OptionError(f"--steps {steps}: this model has {loaded.spec.num_timesteps} timesteps; use at most that")
    classes = tuple(class_index(loaded.spec.class_names, c) for c in class_ or ())
    batch, note = fit_batch_size(loaded, batch_size, n, guided=guidance > 0 and bool(loaded.spec.class_names))
    folder = out if out is not None or grid is not None else Path("generated")
    outputs = Outputs(folder, first_index(folder, start, overwrite), n, grid, overwrite)
    fmt = SUFFIX_OF[format_of(format.value)]  # jpeg and JPG write .jpg files
    check_outputs(outputs, fmt, loaded.spec.image_size)
    for line in (note, continuing(outputs, start)):
        if line:
            console_err.print(labelled("note:", "yellow", line), highlight=False, soft_wrap=True)
    recipe = Recipe.of(loaded, seed=seed, steps=steps, sampler=Sampler(sampler.value),
                       spacing=spacing and Spacing(spacing.value), classes=classes, guidance=guidance, fmt=fmt)
    with ItemProgress("generating", n) as advance:
        try:
            with stop_on_signals():  # SIGTERM too keeps what was written and says how to go on
                write_run(loaded, recipe, outputs, batch_size=batch, callback=advance)
        except GenerationInterrupted as e:  # asked for, and what was made is kept: not an error
            console_err.print(printable(str(e)), style="yellow", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
    made = f"{plural(n, 'image')} in {folder} ({index_span(outputs.start, n)})" + (f", grid {grid}" if grid else "")
    made = made if folder else f"a grid of {plural(n, 'image')} in {grid}"
    report_done(f"{made} on {next(loaded.model.parameters()).device}")


def continuing(outputs: Outputs, start: int | None) -> str | None:
    """The note when a run numbers its images after those already in its folder."""
    if start is not None or not outputs.start:
        return None
    return (f"{outputs.folder} already holds images up to {outputs.start - 1}; numbering goes on at {outputs.start} "
            "(--overwrite starts again at 0)")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("s" if count != 1 else "")


class ItemProgress:
    """A rich progress bar over items, on stderr, hidden when stderr is not a terminal."""

    def __init__(self, label: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: PLC0415

        self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console_err, disable=not console_err.is_terminal)
        self.task = self.bar.add_task(label, total=total)

    def __enter__(self):
        self.bar.__enter__()
        return lambda done, total: self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)


@app.command(cls=PlainCommand)
@run_command
def upscale(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.", show_default=False, metavar="IMAGES")],
    model: Annotated[Optional[str], typer.Option(help=MODEL_HELP, metavar="MODEL", show_default="upscale-x4")] = None,
    scale: Annotated[Optional[int], typer.Option("--scale", "-s", help="How many times larger: the model's factor.", show_default="the model's")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file (its suffix sets the format), or folder: sub-folders of inputs are mirrored in it.", show_default="beside each input")] = None,
    suffix: Annotated[Optional[str], typer.Option(help="Added to output names.", show_default="_x4 for x4")] = None,
    format: Annotated[Optional[FormatOpt], typer.Option("--format", case_sensitive=False, help="Output format.", show_default="png, or the --out file's")] = None,
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality, 1-100.")] = 95,
    recursive: Annotated[bool, typer.Option("--recursive", help="Descend into sub-folders of folder inputs.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose output exists and is complete.")] = False,
    steps: Annotated[int, typer.Option(help="Denoising steps: 1 is the most faithful (highest PSNR); more add sampled texture.")] = 1,
    eta: Annotated[float, typer.Option(help=ETA_HELP)] = 0.0,
    samples: Annotated[int, typer.Option(help=SAMPLES_HELP)] = 2,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    tile: Annotated[Optional[int], typer.Option(help="Side of the pieces the image is upscaled in, in input pixels: smaller uses less memory.", show_default="automatic")] = None,
    precision: Annotated[PrecisionOpt, typer.Option(help=PRECISION_HELP)] = PrecisionOpt.auto,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
) -> None:
    """Upscale images with a diffusion super-resolution model.

    Examples:
      diffgen upscale low.png
      diffgen upscale photos/ --recursive --out big/ --format jpg
      diffgen upscale "scans/*.png" --skip-existing
    """
    from diffgen.errors import OptionError  # noqa: PLC0415
    from diffgen.upscale import collect_inputs, memory_budget, plan_outputs  # noqa: PLC0415

    freeze_imports()
    if not 1 <= quality <= 100:
        raise OptionError(f"--quality {quality}: must be between 1 and 100")
    if overwrite and skip_existing:
        raise OptionError("--overwrite and --skip-existing: choose one")
    sampling = upscale_sampling(steps=steps, eta=eta, samples=samples, seed=seed)
    loaded = with_precision(open_upscaler(model, device, sampling, tile=tile, scale=scale), precision)
    suffix = f"_x{loaded.spec.scale}" if suffix is None else suffix
    sources = collect_inputs(inputs, recursive=recursive, suffix=suffix)
    plan = plan_outputs(sources, out, suffix=suffix, fmt=format and format.value)
    memory_budget()  # a bad DIFFGEN_MEMORY_GB is one error now, not one per file
    batch = UpscaleBatch(loaded, tile=tile, sampling=sampling, quality=quality, overwrite=overwrite,
                         skip_existing=skip_existing)
    with BatchProgress(len(plan)) as progress:
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
        from collections import Counter  # noqa: PLC0415

        self.loaded, self.skip_existing, self.overwrite, self.settings = loaded, skip_existing, overwrite, settings
        self.counts = Counter()

    def run(self, src: Path, dst: Path, progress: BatchProgress) -> None:
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
        from diffgen.upscale import count_of  # noqa: PLC0415

        c = self.counts
        return (f"{count_of(c['upscaled'], 'image')} upscaled on {device_of(self.loaded)}, {c['skipped']} skipped, "
                f"{c['failed']} failed")


def device_of(loaded) -> str:
    """Where a loaded model computes: "cpu", "cuda:0", ..."""
    return str(next(loaded.model.parameters()).device)


class Stopped(KeyboardInterrupt):  # no `except Exception` swallows it; the core stops on it as on Ctrl-C
    """SIGINT or SIGTERM during a batch: stop at once; an atomic write in progress removes its temporary file."""

    def __init__(self, signum: int):
        import signal  # noqa: PLC0415

        super().__init__(signal.Signals(signum).name)
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@contextmanager
def stop_on_signals():
    """Turn SIGINT and SIGTERM into `Stopped` (SIGTERM would otherwise end the process without cleaning up)."""
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def stop(signum, frame):
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
    degrade: Annotated[str, typer.Option(metavar="CONDITION", help="What happens to each shrunk image before it is upscaled: clean, jpeg:QUALITY (saved as a JPEG, e.g. jpeg:75) or noise:SIGMA (Gaussian noise in 8-bit levels, e.g. noise:5).")] = "clean",
    precision: Annotated[PrecisionOpt, typer.Option(help=PRECISION_HELP)] = PrecisionOpt.auto,
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

    from diffgen.degrade import parse_condition  # noqa: PLC0415

    from diffgen.data import find_images  # noqa: PLC0415
    from diffgen.metrics import PSNR_CAP, evaluate, mean_row  # noqa: PLC0415
    from diffgen.upscale import count_of, upscale_image  # noqa: PLC0415

    freeze_imports()
    condition = parse_condition(degrade)
    sampling = upscale_sampling(steps=steps, eta=eta, samples=samples, seed=seed)
    loaded = with_precision(open_upscaler(model, device, sampling, tile=tile), precision)
    files, _, _ = find_images(hr_dir)
    failures = []
    with ItemProgress("scoring", len(files)) as advance:
        rows = evaluate(lambda lr: upscale_image(loaded, lr, tile=tile, sampling=sampling)[0],
                        files, loaded.spec.scale, callback=advance, on_error=failures.append, condition=condition)
    for e in failures:
        console_err.print(labelled("error:", "red", str(e)), highlight=False, soft_wrap=True)
    if rows:
        table = Table(title=f"x{loaded.spec.scale} on {hr_dir} ({count_of(len(rows), 'image')}, {condition}), on {device_of(loaded)}: "
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


def with_precision(loaded, precision: PrecisionOpt):
    from diffgen.checkpoint import with_precision as in_precision  # noqa: PLC0415

    return in_precision(loaded, precision.value)


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
    from diffgen.train import pick_device  # noqa: PLC0415

    if tile is not None and tile < 32:
        raise OptionError(f"--tile {tile}: must be at least 32")
    loaded = open_model(model, Task.UPSCALE, pick_device(device))
    if scale is not None and scale != loaded.spec.scale:
        raise OptionError(f"--scale {scale}: this model upscales x{loaded.spec.scale}; pass --scale {loaded.spec.scale} or another --model")
    if sampling.steps > loaded.spec.num_timesteps:
        raise OptionError(f"--steps {sampling.steps}: this model has {loaded.spec.num_timesteps} timesteps; use at most that")
    return loaded


class BatchProgress:
    """Two rich bars, images and the current image's tiles, with ETA; plain lines when not a terminal."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: PLC0415

        self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=console_err, disable=not console_err.is_terminal)
        self.images = self.bar.add_task("images", total=total)
        self.tile_task = self.bar.add_task("tiles", total=1)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)  # an interrupted image stays uncounted

    def next_image(self, name: str) -> None:
        self.bar.reset(self.tile_task, total=1, description=f"tiles of {name}")

    def image_done(self) -> None:
        """One image finished: upscaled, skipped or failed."""
        self.bar.advance(self.images)

    def tiles(self, done: int, total: int) -> None:
        self.bar.update(self.tile_task, completed=done, total=total)

    def print(self, message: str | Text) -> None:
        console_err.print(printable(message) if isinstance(message, str) else message, highlight=False, soft_wrap=True)


@app.command(cls=PlainCommand)
@run_command
def models() -> None:
    """List the bundled models with their task, classes and size.

    Examples:
      diffgen models
    """
    from rich.table import Table  # noqa: PLC0415

    from diffgen.hub import image_kind, read_model_file  # noqa: PLC0415
    from diffgen.models import bundled_models, default_model  # noqa: PLC0415

    table = Table(title="bundled models (use with --model NAME)")
    for col in ("name", "task", "images", "classes", "parameters", "file"):
        table.add_column(col)
    for name, path in bundled_models():
        spec, _, params = read_model_file(path)  # reads the file; builds no network
        task = spec.task.value + (f" x{spec.scale}" if spec.scale > 1 else "")
        default = " (default)" if name == default_model(spec.task) else ""
        classes = ", ".join(spec.class_names) or "-"
        table.add_row(name + default, task, image_kind(spec), classes, f"{params / 1e6:.2f} M", f"{path.stat().st_size / 1e6:.1f} MB")
    print_table(table)


@app.command(cls=PlainCommand)
@run_command
def info(
    model: Annotated[str, typer.Argument(help=MODEL_HELP, metavar="MODEL")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw record as JSON, for tools.")] = False,
) -> None:
    """Show what a model does, how it was trained, where it came from and how to use it.

    Examples:
      diffgen info digits
      diffgen info runs/digits
      diffgen info user/name@main --json
    """
    import shlex  # noqa: PLC0415

    from rich.table import Table  # noqa: PLC0415

    from diffgen.checkpoint import Task  # noqa: PLC0415
    from diffgen.hub import describe, overview  # noqa: PLC0415
    from diffgen.models import resolve  # noqa: PLC0415

    record = describe(resolve(model, Task.GENERATE))
    if as_json:  # ASCII JSON: every control character in the model's text is escaped (\u001b)
        typer.echo(json.dumps(record, indent=2))
        return
    table = Table(show_header=False, title=f"model {model}", title_justify="left", box=None)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in overview(record) + [("full record", f"diffgen info {shlex.quote(model)} --json")]:
        table.add_row(key, value)
    print_table(table)


@app.command(cls=PlainCommand)
@run_command
def export(
    run: Annotated[Path, typer.Argument(help="Run folder or model .safetensors file.")],
    out_dir: Annotated[Path, typer.Argument(help="New folder to write the Hub-ready files into.")],
    repo_id: Annotated[Optional[str], typer.Option(help="The repo it is meant for (used in the card's commands).")] = None,
    license: Annotated[str, typer.Option(help="License in the model card.")] = "mit",
) -> None:
    """Write a folder ready for `hf upload`: model, config.json, model card and sample grid.

    Examples:
      diffgen export runs/digits hub/digits --repo-id me/diffgen-digits
    """
    import shlex  # noqa: PLC0415

    from diffgen.hub import export_run  # noqa: PLC0415

    folder = export_run(run, out_dir, repo_id=repo_id, license=license)
    upload = shlex.join(["hf", "upload", repo_id or "USER/NAME", str(folder)])
    report_done(f"exported to {folder}; upload with: {upload}")


@app.command(cls=PlainCommand)
@run_command
def push(
    run: Annotated[Path, typer.Argument(help="Run folder or model .safetensors file.")],
    repo_id: Annotated[str, typer.Argument(help="Hub model repo, user/name (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    license: Annotated[str, typer.Option(help="License in the model card.")] = "mit",
) -> None:
    """Export a run and upload it to the Hugging Face Hub (needs a network and `hf auth login`).

    Examples:
      diffgen push runs/digits me/diffgen-digits
    """
    from diffgen.hub import push as push_to_hub  # noqa: PLC0415

    url = push_to_hub(run, repo_id, private=private, license=license)
    report_done(f"uploaded to {url}")


def print_table(table) -> None:
    """Print a table whole, its text escaped (cells may hold a model's metadata or file names): off a
    terminal (pipes, CI) there is no width to fit, so do not squeeze it."""
    for column in table.columns:  # rich has no public way to rewrite cells
        column._cells = [printable(cell) if isinstance(cell, str) else cell for cell in column._cells]
    if isinstance(table.title, str):
        table.title = printable(table.title)
    if console.is_terminal:
        console.print(table)
    else:
        Console(width=200, markup=False).print(table)


def main() -> None:
    """The console script: click's usage errors become one line too, like diffgen's own."""
    try:  # recent typer vendors click; older ones use the click package
        from typer._click import exceptions as click_errors  # noqa: PLC0415
    except ImportError:
        from click import exceptions as click_errors  # noqa: PLC0415
    no_args = getattr(click_errors, "NoArgsIsHelpError", ())  # click >= 8.2

    OWNS_PROCESS["on"] = True
    try:
        code = app(prog_name="diffgen", standalone_mode=False)
    except no_args as e:
        console_err.print(e.ctx.get_help() if e.ctx else str(e), highlight=False)
        code = 2
    except click_errors.UsageError as e:
        command = e.ctx.command_path if e.ctx else "diffgen"
        message = e.format_message().replace(": Value error, ", ": ")
        console_err.print(labelled("error:", "red", f"{message} (see `{command} --help`)"), highlight=False, soft_wrap=True)
        code = e.exit_code
    except typer.Abort:
        console_err.print(labelled("error:", "red", "interrupted"), highlight=False)
        code = 130
    sys.exit(code or 0)


if __name__ == "__main__":
    sys.exit(main())
