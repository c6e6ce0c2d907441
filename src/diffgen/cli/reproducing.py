"""`diffgen reproduce IMAGE.png`: make an image diffgen wrote again, from what its PNG records, and compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from diffgen.cli.base import PlainCommand, app, fail, freeze_imports, run_command
from diffgen.cli.output import report_done


@app.command(cls=PlainCommand)
@run_command
def reproduce(
    image: Annotated[Path, typer.Argument(help="A PNG that diffgen generated or upscaled.", metavar="IMAGE")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also keep the image made again, as this file.", show_default="not kept")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the --out file if it exists.")] = False,
) -> None:
    """Make an image again with the model, seed and settings its PNG records, and say whether the result is
    byte-identical, or why not (the model changed, the input is missing).

    Examples:
      diffgen reproduce imgs/00005.png
      diffgen reproduce photo_x4.png --out again.png
    """
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415
    import shlex  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    import click  # noqa: PLC0415

    from diffgen.errors import ImageError  # noqa: PLC0415
    from diffgen.files import atomic_write, write_fix  # noqa: PLC0415
    from diffgen.reproduce import differences, read_record  # noqa: PLC0415

    freeze_imports()
    record = read_record(image)
    if out is not None and out.exists() and not overwrite:
        raise ImageError(f"{out}: already exists; pass --overwrite to replace it or choose another --out")
    with tempfile.TemporaryDirectory(prefix=".diffgen-reproduce-", dir=Path(image).parent) as tmp:
        args, made = record.command_into(Path(tmp))
        recorded = shlex.join(["diffgen", *args])
        said = io.StringIO()  # its lines name the temporary folder: shown only when it fails, to say why
        try:
            with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
                code = typer.main.get_command(app).main(args, prog_name="diffgen", standalone_mode=False)
        except click.ClickException as e:  # an option this diffgen no longer has
            raise fail(f"{image}: its recorded command does not run in this diffgen ({e.format_message()}): "
                       f"{recorded}") from None
        if code:
            sys.stderr.write(said.getvalue())
            raise fail(f"{image}: could not be made again (above); it records: {recorded}")
        data = made.read_bytes()
    if out is not None:
        try:
            atomic_write(out, data)
        except OSError as e:
            raise ImageError(f"{out}: cannot write it ({e.strerror}); {write_fix(e)}, or choose another --out") from None
    kept = f"; the new image is {out}" if out else ""
    if data == Path(image).read_bytes():
        report_done(f"{image}: made again, byte-identical{kept}")
        return
    raise fail(f"{image}: made again, but not byte-identical: {differences(record, data)}{kept}")
