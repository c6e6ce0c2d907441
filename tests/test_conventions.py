"""What a user of any command-line tool expects: --version, -h, completion, short options."""

import subprocess
import sys

from typer.testing import CliRunner

from diffgen import __version__
from diffgen.cli import app

runner = CliRunner()


def test_version_prints_the_version_and_exits():
    done = subprocess.run([sys.executable, "-m", "diffgen", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"diffgen {__version__}"


def test_h_is_help_for_the_program_and_each_command():
    for args in (["-h"], ["generate", "-h"], ["upscale", "-h"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0 and "Usage:" in r.output, args


def test_shell_completion_can_be_installed():
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in r.output and "--show-completion" in r.output
