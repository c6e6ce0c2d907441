"""What the commands print besides errors: progress bars, tables and the closing lines.

Bars go to a terminal only; elsewhere (CI, nohup, pipes) training prints a plain line every so often
and the other commands print their results alone.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from diffgen.cli.base import console, console_err, labelled, printable


def report_done(message: str) -> None:
    console.print(labelled("done:", "green", message), highlight=False, soft_wrap=True)


def duration(seconds: float) -> str:
    """'42 s', '12 min', '3 h 5 min'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def device_of(loaded) -> str:
    """Where a loaded model computes: "cpu", "cuda:0", ..."""
    return str(next(loaded.model.parameters()).device)


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


class TrainBar:
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
        from diffgen.events import Estimate, Finishing, Note, Sampled, Started  # noqa: PLC0415

        if isinstance(event, Note):
            console_err.print(labelled("note:", "yellow", event.text), highlight=False, soft_wrap=True)
        elif isinstance(event, Started):
            self.say(started_text(event))
        elif isinstance(event, Estimate) and event.budget:
            self.say(f"time budget {duration(event.budget)}: training to step {event.total}; expected: about "
                     f"{duration(event.seconds)} for the {event.total - event.step} steps to go, at the pace so far, "
                     "sample grids and checkpoints included")
        elif isinstance(event, Estimate):
            self.say(f"expected: about {duration(event.seconds)} for the {self.total - event.step} steps to go, at "
                     "the pace of the first ones (sample grids and checkpoints add a little)")
        elif isinstance(event, Sampled):
            self.say(sampled_text(event))
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
    until = f"for {duration(event.budget)} (its steps are set after the first ones)" if event.budget else f"to step {event.total}"
    return f"training {at}{until} on {found}, {what}, on {event.device}, writing to {event.out}"


def sampled_text(event) -> str:
    """'step 1000: samples/step_001000.png; copies: 2 of 80 (2%) ...'."""
    text = f"step {event.step}: {event.path}"
    return text if event.copies is None else f"{text}; {copies_text(event.copies)}"


def copies_text(c, names: list[str] | None = None) -> str:
    """The copy check (copies.Copies) in a line; with the samples' names, its closest pairs, else the closest one."""
    shown = c.closest if names else c.closest[:1]
    pairs = ", ".join(f"{names[i] + ' ~ ' if names else ''}{name} ({distance:.3f})" for i, name, distance in shown)
    return (f"copies: {c.copies} of {c.images} ({c.share:.0%}) nearer a training image than {c.threshold:.3f}, the "
            f"distance 95% of training images keep from their nearest other; closest: {pairs}")


class ItemBar:
    """A rich progress bar over items, on stderr, hidden when stderr is not a terminal."""

    def __init__(self, label: str, total: int, *, show: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: PLC0415

        self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console_err,
                            disable=not (show and console_err.is_terminal))
        self.task = self.bar.add_task(label, total=total)

    def __enter__(self):
        self.bar.__enter__()
        return lambda done, total: self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)


class UpscaleBars:
    """Two rich bars, images and the current image's tiles, with ETA; plain lines when not a terminal."""

    def __init__(self, total: int, *, show: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: PLC0415

        self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=console_err, disable=not (show and console_err.is_terminal))
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

    def frames(self, p) -> None:
        """A video's progress (`video.job.VideoProgress`): frames done, of how many when known, frames per second."""
        self.bar.update(self.tile_task, completed=p.done, total=p.total, description=f"frames, {p.fps:.2f} per second")

    def print(self, message: str | Text) -> None:
        console_err.print(printable(message) if isinstance(message, str) else message, highlight=False, soft_wrap=True)

