"""Counts and sizes as messages write them: '1 image', '2 images', '1.5 GiB'. Torch-free, for core and CLI."""

from __future__ import annotations


def count_of(n: int, noun: str) -> str:
    """'1 image', '2 images'."""
    return f"{n} {noun}{'s' * (n != 1)}"


def size_text(nbytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"
