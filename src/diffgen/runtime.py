"""Where and how a process runs: its device, its place among torchrun's processes, and stop requests.

`pick_device` serves every command. A command under `torchrun` joins the process group (NCCL on GPUs for
training, gloo otherwise) and reduces the numbers every rank must agree on or report; for training,
SIGINT/SIGTERM become a flag the loop checks between steps, so it can save first.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from diffgen.errors import OptionError


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"--device {name}: no CUDA device here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise OptionError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None


@contextmanager
def process_group(device: torch.device) -> Iterator[Ranks]:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPUs), and
    leave it together on the way out: a gloo rank that shut down while another was still at work, or
    with its group still alive, now and then aborted at exit ("terminate called without an active
    exception")."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield Ranks()
        return
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size())
        dist.barrier()  # not after an error: the other ranks may never get here
    finally:
        if joined:
            dist.destroy_process_group()


@contextmanager
def stop_requests() -> Iterator[list[str]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps, so it can save first."""
    requested: list[str] = []

    def handler(signum, frame):
        requested.append(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def local_device(name: str) -> torch.device:
    """The device of this process: under torchrun, "auto" is the GPU of its local rank."""
    return pick_device(name, int(os.environ.get("LOCAL_RANK", "0")))


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """Whether `flag` is set on any rank, so that all take the same decision."""
    return bool(all_ranks(float(flag), ranks, dist.ReduceOp.MAX if ranks.world > 1 else None))


def all_ranks(value: float, ranks: Ranks, op=None) -> float:
    """Reduce a number over ranks (mean by default) so every rank takes the same decisions."""
    if ranks.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return float(t) / (ranks.world if op is None else 1)


def totals(counts: dict[str, int], ranks: Ranks) -> dict[str, int]:
    """Counts summed over all ranks (each rank passes the same keys, in the same order)."""
    if ranks.world == 1:
        return dict(counts)
    t = torch.tensor(list(counts.values()), dtype=torch.float64)
    dist.all_reduce(t)
    return {key: round(float(v)) for key, v in zip(counts, t)}


def ranks_with(flag: bool, ranks: Ranks) -> list[int]:
    """The ranks on which `flag` is set, known to every rank: who failed, who was stopped."""
    if ranks.world == 1:
        return [0] if flag else []
    t = torch.zeros(ranks.world, dtype=torch.float64)
    t[ranks.rank] = float(flag)
    dist.all_reduce(t)
    return [rank for rank, value in enumerate(t.tolist()) if value]
