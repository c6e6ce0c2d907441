"""The reference network of diffgen's benchmarks, diffusers' UNet2DModel shaped like a diffgen U-Net,
and the interleaved timer the benchmarks share.

`diffusers_unet(cfg, sample_size)` builds a UNet2DModel with the same level widths, residual blocks
per level, attention levels, group-norm groups, head width, class conditioning (one extra "no label"
class) and image channels as `diffgen.unet.UNet(cfg)`, with scale-shift time conditioning as diffgen
uses. `interleave` times several functions in turn, round after round, so that a load that comes and
goes on a shared machine falls on all of them alike. Run this file to print both parameter counts of
each preset:

    pip install -e ".[bench]"
    python benchmarks/reference_unet.py

Known structural differences (parameter counts come out identical): the mid block (ResBlock,
attention, ResBlock) and the time embedding (sinusoidal, base_channels -> MLP -> 4 x base_channels)
match; diffusers applies SiLU to the time embedding before each block's projection, uses separate
q/k/v linears where diffgen has one fused 1x1 conv, and divides residual sums by an output scale of 1;
diffgen zero-initialises each block's last conv. diffgen's conditioning image and pixel shuffle have
no counterpart in UNet2DModel and are not mapped.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from diffusers import UNet2DModel
from torch import nn

from diffgen.checkpoint import bf16_is_fast
from diffgen.unet import PRESETS, UNet, UNetConfig


def block_types(cfg: UNetConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Down and up block names, with attention at cfg.attention_levels (0 = full resolution)."""
    down = tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in range(cfg.num_levels))
    up = tuple("AttnUpBlock2D" if i in cfg.attention_levels else "UpBlock2D" for i in reversed(range(cfg.num_levels)))
    return down, up


def diffusers_unet(cfg: UNetConfig, sample_size: int) -> UNet2DModel:
    """A UNet2DModel with the architecture of `diffgen.unet.UNet(cfg)` (no cond image, no pixel shuffle)."""
    if cfg.cond_channels or cfg.pixel_shuffle != 1:
        raise ValueError("diffusers' UNet2DModel has no conditioning image or pixel shuffle to match")
    down, up = block_types(cfg)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mults),
        layers_per_block=cfg.num_res_blocks,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg.norm_groups,
        attn_norm_num_groups=cfg.norm_groups,  # else the scale-shift mid block's attention has no group norm
        attention_head_dim=cfg.head_channels,
        resnet_time_scale_shift="scale_shift",  # diffgen's ResBlock conditioning (Dhariwal & Nichol 2021)
        dropout=cfg.dropout,
        num_class_embeds=cfg.num_classes + 1 if cfg.num_classes else None,
    )


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compare_params(cfg: UNetConfig, sample_size: int) -> tuple[int, int]:
    """(diffgen, diffusers) parameter counts of the same configuration."""
    return num_params(UNet(cfg)), num_params(diffusers_unet(cfg, sample_size))


def interleave(fns: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function over `rounds` rounds; the order flips every round (AB BA AB ...)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def cpu_model() -> str:
    """The CPU's model name, its cores and whether it computes bf16 natively, for the head of a table."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    bf16 = "native bf16" if bf16_is_fast(torch.device("cpu")) else "no native bf16"
    return f"{name}, {os.cpu_count()} logical cores, {bf16}"


def synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """fn, waiting at the end for the GPU's queued work, so that a timer around it measures the work."""
    if not device.startswith("cuda"):
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def median_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow[i] / fast[i]: how many times faster `fast` was, paired round by round."""
    return statistics.median(s / f for s, f in zip(slow, fast))


def main() -> None:
    print(f"{'preset':<8}{'classes':>8}{'diffgen':>14}{'diffusers':>14}{'ratio':>8}")
    for name, cfg in PRESETS.items():
        for classes in (0, 10):
            ours, ref = compare_params(replace(cfg, num_classes=classes), 32)
            print(f"{name:<8}{classes:>8}{ours:>14,}{ref:>14,}{ours / ref:>8.3f}")


if __name__ == "__main__":
    main()
