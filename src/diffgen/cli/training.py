"""`diffgen train`: its options are derived from the settings declared in `config.py`.

Each `TrainConfig` field with `cli=True` becomes an option (or the DATA_DIR argument) with the field's
name, type, default and help; a setting left out takes the config's default (or the upscaling one),
and on --resume the run's own. The resume policy itself is the core's (`config.resumed`).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import Field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Optional, Union, get_args, get_origin

import typer

from diffgen.cli.base import PlainCommand, app, console, console_err, freeze_imports, labelled, printable, run_command
from diffgen.cli.output import TrainBar, duration, report_done
from diffgen.config import NO_VALUE, new_config, option_name, parse_int_list, resumed, setting_of, setting_types, settings, shown

RESUME = inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
    bool, typer.Option("--resume", help="Continue the run in --out where it stopped.")])


def base_type(f: Field):
    """The field's type without its None: int for `int | None`."""
    kind = setting_types()[f.name]
    if get_origin(kind) in (Union, UnionType):
        return next(arg for arg in get_args(kind) if arg is not type(None))
    return kind


def cli_type(f: Field):
    """The option's type: the field's, a text for a list of numbers ("1,2,2"), optional where there is no
    default or it depends on --task."""
    kind = base_type(f)
    if get_origin(kind) is tuple:
        return Optional[str]
    return Optional[kind] if f.default is None or setting_of(f).upscale is not NO_VALUE else kind


def show_default(f: Field) -> str | bool:
    """The default as --help writes it: its words where declared, and the upscaling default where it differs."""
    s = setting_of(f)
    if s.upscale is NO_VALUE:
        return s.shown or True
    return f"{s.shown or shown(f.default).removesuffix('.0')}; upscale: {shown(s.upscale).removesuffix('.0')}"


def option(f: Field) -> inspect.Parameter:
    s = setting_of(f)
    if s.argument:
        info = typer.Argument(help=s.help, metavar=s.metavar)
    else:
        info = typer.Option(*s.flags, help=s.help, show_default=show_default(f), metavar=s.metavar)
    # A default that depends on --task is left to the config (None here); --help shows both.
    default = inspect.Parameter.empty if s.argument else None if s.upscale is not NO_VALUE else f.default
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[cli_type(f), info])


def options() -> list[inspect.Parameter]:
    """The command's parameters in --help order: the settings in declaration order, --resume before --init-from
    (where --help has always listed it)."""
    params = [option(f) for f in settings() if setting_of(f).cli]
    at = [p.name for p in params].index("init_from")
    return params[:at] + [RESUME] + params[at:]


def given_settings(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The settings typed on the command line (by field name), with the run's folders, which every call names.
    The source is compared by name: Typer may bring its own copy of click's ParameterSource."""
    typed = {name for name in values if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}
    given = {name: values[name] for name in typed | {"data_dir", "out_dir"} if name != "resume"}
    for f in settings():  # lists of numbers are typed as text
        if isinstance(given.get(f.name), str) and get_origin(base_type(f)) is tuple:
            given[f.name] = parse_int_list(option_name(f), given[f.name])
    return given


def train(ctx: typer.Context, **values: Any) -> None:
    """Train a diffusion model on a folder of images.

    Examples:
      diffgen train data/digits --out runs/digits --image-size 28 --max-steps 20000
      diffgen train data/photos --out runs/sr --task upscale --scale 4
      diffgen train data/digits --out runs/digits --resume
      diffgen train data/digits --out runs/quick --time-budget 30m
      diffgen train my-photos --out runs/my-sr --task upscale --init-from upscale-x4 --lr 1e-4 --lr-decay --max-steps 2000
    """
    from diffgen.runs import state_file  # noqa: PLC0415
    from diffgen.state import load_config  # noqa: PLC0415
    from diffgen.train import train as run_training  # noqa: PLC0415

    freeze_imports()
    given, resume = given_settings(ctx, values), values["resume"]
    state = state_file(given["out_dir"])
    cfg = resumed(load_config(state), given) if resume and state.exists() else new_config(given)
    with TrainBar(cfg.max_steps) as bar:
        result = run_training(cfg, callback=bar.update, resume=resume, command=typed_command(ctx))
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    report_trained(result, cfg.out_dir, resumed=resume)


train.__signature__ = inspect.Signature([inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                           annotation=typer.Context), *options()])
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}
train = app.command(cls=PlainCommand)(run_command(train))


def report_trained(result, out: Path, *, resumed: bool) -> None:
    """The end of `train`: where the model is, the final loss, time and samples, and the next command."""
    from diffgen.hub import usage  # noqa: PLC0415

    if resumed and not result.steps_run:
        console.print(f"already finished: it trained {result.step} steps; pass --max-steps N (more than "
                      f"{result.step}) or --time-budget with --resume to go on", highlight=False, soft_wrap=True)
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
