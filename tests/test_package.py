"""The built wheel carries the bundled weights, and works when installed (not editable)."""

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
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


def test_installed_wheel_generates_with_the_bundled_model(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)  # torch etc. come from the system
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([python, "-c", "import diffgen; print(diffgen.__file__)"], check=True, env=env,
                           capture_output=True, text=True, cwd=tmp_path).stdout
    assert str(env_dir) in where  # the wheel, not the source checkout
    done = subprocess.run([env_dir / "bin" / "diffgen", "generate", "--n", "2", "--steps", "2", "--out", tmp_path / "imgs"],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["00000.png", "00001.png"]
    with Image.open(tmp_path / "imgs" / "00000.png") as img:
        assert img.text["model"] == "digits"
