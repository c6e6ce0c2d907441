"""How much memory a job may take.

Jobs that could exhaust the machine (a training step, a batch of generated images, an upscale) estimate
what they need and compare it with this before any work, so one that cannot fit is refused or made
smaller with the estimate in the message, instead of being killed by the operating system.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
# A container's memory limit and use: cgroup v2, then v1.
CGROUP_FILES = (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"))


def available_memory(device=None) -> int | None:
    """Bytes free for a new job on `device` (a torch.device; None: the CPU): a GPU's free memory, or the
    kernel's MemAvailable (else its free pages), lowered to what a container's limit still allows. None
    where nothing can be told."""
    if device is not None and device.type == "cuda":
        import torch  # noqa: PLC0415 - only here: this module serves torch-free callers too

        return torch.cuda.mem_get_info(device)[0]
    if device is not None and device.type != "cpu":
        return None
    known = [free for free in (kernel_available(), container_headroom()) if free is not None]
    return min(known, default=None)


def kernel_available() -> int | None:
    """MemAvailable (free memory plus the caches the kernel can drop), else the free physical pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def container_headroom() -> int | None:
    """What the container's memory limit still allows; past it the process is killed."""
    for limit, used in CGROUP_FILES:
        try:
            return int((CGROUP / limit).read_text()) - int((CGROUP / used).read_text())
        except (OSError, ValueError):  # no such file, or "max": no limit
            continue
    return None
