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


COMMANDS = ["train", "generate", "upscale", "eval-upscale", "models", "info", "export", "push"]


def test_help_speaks_in_words_not_python_types():
    for args in [["--help"]] + [[command, "--help"] for command in COMMANDS]:
        r = runner.invoke(app, args, env={"COLUMNS": "300"})
        assert r.exit_code == 0, args
        for python_type in ("<bool>", "<int>", "<float>", "<str>", "<path>", "<list[str]>"):
            assert python_type not in r.output, (args, python_type)


def test_model_help_says_a_hub_repo_id_works():
    for command in ("generate", "upscale"):
        r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"})
        assert "Hugging Face Hub repo id" in r.output, command


def test_short_forms_of_count_output_and_scale(tmp_path):
    r = runner.invoke(app, ["generate", "-n", "2", "-o", str(tmp_path / "imgs"), "--steps", "2", "--format", "JPEG"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["00000.jpg", "00001.jpg"]
    r = runner.invoke(app, ["upscale", str(tmp_path / "imgs" / "00000.jpg"), "-s", "2"])
    assert r.exit_code == 2 and "--scale 2" in r.output  # the bundled model is x4: the short form reached the check
