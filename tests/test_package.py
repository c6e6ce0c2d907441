"""The built wheel carries the bundled weights, and works when installed (not editable)."""

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffgen.models import BUNDLED

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True, capture_output=True,
    )
    return next(out.glob("diffgen-*.whl"))


def test_wheel_contains_the_bundled_weights(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for file, _ in BUNDLED.values():
        assert f"diffgen/weights/{file}" in names
    assert not any(n.startswith(("tests/", "data/", "runs/")) for n in names)


def venv_with_our_packages(env_dir: Path) -> Path:
    """A new venv that sees the packages of the interpreter running the tests (torch, typer, ...), whether
    that is the system's or a venv's, and not its editable install of diffgen; returns its python."""
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # Plain path lines: the folders' own .pth files (the editable install's among them) are not run.
    ours = dict.fromkeys(sysconfig.get_path(kind) for kind in ("purelib", "platlib"))
    (Path(purelib) / "parent_packages.pth").write_text("".join(f"{path}\n" for path in ours))
    return python


def test_installed_wheel_generates_with_the_bundled_model(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    python = venv_with_our_packages(env_dir)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([python, "-c", "import diffgen; print(diffgen.__file__)"], check=True, env=env,
                           capture_output=True, text=True, cwd=tmp_path).stdout
    assert str(env_dir) in where  # the wheel, not the source checkout
    torch_there = subprocess.run([python, "-c", "import torch; print(torch.__file__)"], check=True, env=env,
                                 capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert torch_there == torch.__file__  # this interpreter's torch, a venv's included
    done = subprocess.run([env_dir / "bin" / "diffgen", "generate", "--n", "2", "--steps", "2", "--out", tmp_path / "imgs"],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["00000.png", "00001.png"]
    with Image.open(tmp_path / "imgs" / "00000.png") as img:
        assert img.text["model"] == "digits"
