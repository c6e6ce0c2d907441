"""The model commands: list the bundled models, describe one, export a run for the Hub and push it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffgen.cli.base import MODEL_HELP, PlainCommand, app, run_command
from diffgen.cli.output import print_table, report_done


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
    from diffgen.provenance import describe, overview  # noqa: PLC0415
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

