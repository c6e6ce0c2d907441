"""The memory a job may take: the kernel's figure, lowered by a container's limit."""

import torch

from diffgen import memory


def test_a_containers_limit_lowers_what_is_available(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "kernel_available", lambda: 8 << 30)
    monkeypatch.setattr(memory, "CGROUP", tmp_path)
    assert memory.available_memory() == 8 << 30  # no cgroup files: the kernel's figure
    (tmp_path / "memory.max").write_text("max\n")  # cgroup v2 without a limit
    (tmp_path / "memory.current").write_text(str(1 << 30))
    assert memory.available_memory(torch.device("cpu")) == 8 << 30
    (tmp_path / "memory.max").write_text(str(3 << 30))
    assert memory.available_memory() == 2 << 30


def test_the_kernel_figure_is_a_plausible_amount_here():
    free = memory.kernel_available()
    assert free is None or 0 < free < 1 << 50
