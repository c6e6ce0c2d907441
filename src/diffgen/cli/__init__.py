"""The `diffgen` command line (`diffgen.cli:main`, `python -m diffgen`): the Typer app and its commands.

base.py holds the app and what every command shares; each command group has its module, which registers
its commands on import; output.py prints progress bars, tables and results.
"""

from diffgen.cli.base import app, main
# Importing a group registers its commands; --help lists them in this order.
from diffgen.cli import training, generating, upscaling, reproducing, sharing  # noqa: F401, I001

__all__ = ["app", "main"]
