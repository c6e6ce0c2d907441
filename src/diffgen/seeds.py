"""Seeds derived from a run's seed: every image, tile and training batch gets its own, reproducibly.

Image i of a generate run, tile (y, x) of an upscale and micro-batch k of a training run each draw from a
generator seeded by `derived_seed(run seed, ...)`, so a result does not depend on the batch size, the
order of work or the number of processes.
"""

from __future__ import annotations

import hashlib

import torch


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. (run seed, image index)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def batch_generator(seed: int, k: int) -> torch.Generator:
    """The generator of all randomness of global micro-batch k."""
    return torch.Generator().manual_seed(derived_seed(seed, k, 1))
