"""The `diffgen` command line: the Typer app, its error handling and what every command shares.

Each command (one module per group: training, generating, upscaling, sharing) declares its options,
calls one core function and prints the result. The core raises `DiffgenError` for anything a user can
fix; `run_command` turns it into one red line and an exit code. torch is imported only inside
commands, so `diffgen --help` starts fast.
"""

from __future__ import annotations

import functools
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console
from rich.text import Text

from diffgen.config import DEVICE_HELP  # noqa: F401 - with the other help texts below

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

PRECISION_HELP = ("Number format: auto uses bfloat16 (bf16) on CPUs that compute it natively, about 1.4-2x faster, "
                  "else float32 (fp32).")
MODEL_HELP = ("Bundled name, .safetensors file, run folder, diffusers pipeline folder or Hugging Face Hub repo id "
              "(user/name, or user/name@revision).")
ETA_HELP = "Fresh noise added at each step after the first (DDIM's η): 0 none, the same result every time; 1 the most."
SAMPLES_HELP = "Upscales to average (1-8), each of another flip or turn of the input: higher PSNR, that many times the time."


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


@contextmanager
def stop_between_frames():
    """During a video: the first SIGINT or SIGTERM asks to stop after the current frame (the list it yields then
    holds the signal's number), so that the frames done are kept; a second stops at once."""
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    asked: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield asked
        return

    def ask(signum, frame):
        if asked:
            raise Stopped(signum)
        asked.append(signum)

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
