"""Shared fixtures: tiny image folders and tiny trained runs, made once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_blobs(folder: Path, n: int, size: int, colour: tuple[int, int, int], seed: int) -> None:
    """n images of a coloured square on a noisy background: easy to tell classes apart."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        x, y = rng.integers(0, size // 2, 2)
        arr[y : y + size // 2, x : x + size // 2] = colour
        Image.fromarray(arr).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="session")
def class_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classes")
    write_blobs(root / "red", 6, 20, (230, 30, 30), seed=1)
    write_blobs(root / "blue", 6, 20, (30, 30, 230), seed=2)
    return root


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_blobs(root, 4, 48, (200, 180, 40), seed=3)
    return root
