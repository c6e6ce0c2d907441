"""The conditional U-Net that every diffgen model uses.

A DDPM-style U-Net (Ho et al. 2020; Dhariwal & Nichol 2021 for scale-shift conditioning): residual
blocks with group norm, a sinusoidal timestep embedding, an optional class embedding with one extra
"no label" index for classifier-free guidance, self-attention at chosen levels, and an optional
conditioning image concatenated to the input.

For super-resolution the network can work at low resolution: with `pixel_shuffle = s`, the noisy
high-resolution input is folded into s² times as many channels (pixel-unshuffle) so that it lines up
with the low-resolution conditioning image, and the output is unfolded again. The U-Net knows nothing
about the noise schedule or the prediction target.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 3  # channels of the image being denoised
    base_channels: int = 64  # width of the first level
    channel_mults: tuple[int, ...] = (1, 2, 2)  # width of each level, as a multiple of base_channels
    num_res_blocks: int = 2  # residual blocks per level on the way down
    attention_levels: tuple[int, ...] = (2,)  # levels (0 = full resolution) with self-attention
    head_channels: int = 32  # channels per attention head
    norm_groups: int = 8  # group-norm groups; must divide every width
    num_classes: int = 0  # class labels 0..num_classes-1; index num_classes means "no label"
    cond_channels: int = 0  # channels of a conditioning image concatenated to the input
    pixel_shuffle: int = 1  # fold the input by this factor before the first conv (super-resolution)
    dropout: float = 0.0  # dropout inside residual blocks

    @property
    def num_levels(self) -> int:
        return len(self.channel_mults)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return self.pixel_shuffle * 2 ** (self.num_levels - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        for key in ("channel_mults", "attention_levels"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


PRESETS = {
    "tiny": UNetConfig(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention_levels=(2,)),
    "small": UNetConfig(base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=2, attention_levels=(2,)),
    "base": UNetConfig(
        base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,), norm_groups=32
    ),
}


def preset(name: str, **overrides) -> UNetConfig:
    return replace(PRESETS[name], **overrides)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim), as in the Transformer."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that steers channels-last CPU inputs around a slow path of torch's kernel.

    For a channels-last input with fewer than 1,024 pixels, torch's CPU kernel (torch 2.13) gathers each
    group's statistics one pixel at a time, reading C/G channels per pixel; with 4 or 8 channels a group
    that costs 1.5-2.7x a detour through the contiguous layout (two copies and the contiguous kernel;
    bf16, 2 cores, batches of 1 to 32), and at 16 channels a group the detour loses. On a CPU, sampling
    (`checkpoint.with_precision`, `checkpoint.BFloat16Model`) and training (`train.on_device`) run the
    network channels-last, so this is what their small levels take.
    The result is the same group norm: it differs from the channels-last kernel's only by rounding.
    """

    def forward(self, x: Tensor) -> Tensor:
        if slow_channels_last_norm(x, self.num_groups):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def slow_channels_last_norm(x: Tensor, groups: int) -> bool:
    """Whether torch's CPU group norm would take its per-pixel path on `x` with few channels a group."""
    _, c, h, w = x.shape
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return x.device.type == "cpu" and channels_last and h * w < 1024 and c // groups <= 8


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift  # scale-shift conditioning (Dhariwal & Nichol 2021)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        while ch % self.heads:  # widths that are no multiple of head_channels: fewer, wider heads
            self.heads -= 1
        self.norm = GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # (B, 3C, H, W) -> 3 x (B, heads, H*W, C/heads); contiguous, or SDPA falls back to its slow path.
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        q, k, v = qkv.contiguous().unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        # (B, heads, H*W, C/heads) -> (B, C, H, W)
        return x + self.out(out.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """The residual blocks (and attention) of one resolution level, on one side of the U."""

    def __init__(self, in_chs: list[int], out_ch: int, emb_dim: int, attention: bool, cfg: UNetConfig):
        super().__init__()
        g = cfg.norm_groups
        self.blocks = nn.ModuleList(ResBlock(c, out_ch, emb_dim, g, cfg.dropout) for c in in_chs)
        self.attns = nn.ModuleList(
            Attention(out_ch, cfg.head_channels, g) if attention else nn.Identity() for _ in in_chs
        )


def label_embedding(num: int, dim: int) -> nn.Embedding:
    """nn.Embedding initialised as its own reset_parameters does (N(0, 1), the same random draws), except on
    the meta device, where a first normal_ imports torch's Python meta kernels: about 1 s of every command
    that loads a model, since `checkpoint.check_weights` builds the file's U-Net there to compare shapes."""
    weight = torch.empty(num, dim)
    if not weight.is_meta:
        nn.init.normal_(weight)
    return nn.Embedding(num, dim, _weight=weight)


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.base_channels
        emb_dim = 4 * ch
        widths = [ch * m for m in cfg.channel_mults]
        folded = cfg.in_channels * cfg.pixel_shuffle**2

        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = label_embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(folded + cfg.cond_channels, ch, 3, padding=1)

        # Down path: remember the width of every tensor pushed onto the skip stack.
        self.down, self.downsample, skips, cur = nn.ModuleList(), nn.ModuleList(), [ch], ch
        for i, w in enumerate(widths):
            level = Level([cur] + [w] * (cfg.num_res_blocks - 1), w, emb_dim, i in cfg.attention_levels, cfg)
            self.down.append(level)
            skips += [w] * cfg.num_res_blocks
            cur = w
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(w, w, 3, stride=2, padding=1))
            if not last:
                skips.append(w)

        self.mid1 = ResBlock(cur, cur, emb_dim, cfg.norm_groups, cfg.dropout)
        self.mid_attn = Attention(cur, cfg.head_channels, cfg.norm_groups)
        self.mid2 = ResBlock(cur, cur, emb_dim, cfg.norm_groups, cfg.dropout)

        # Up path: each block takes one skip tensor, so a level has num_res_blocks + 1 blocks.
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            in_chs = []
            for _ in range(cfg.num_res_blocks + 1):
                in_chs.append(cur + skips.pop())
                cur = w
            self.up.append(Level(in_chs, w, emb_dim, i in cfg.attention_levels, cfg))
            self.upsample.append(nn.Conv2d(w, w, 3, padding=1) if i > 0 else nn.Identity())

        self.norm_out = GroupNorm(cfg.norm_groups, widths[0])
        self.conv_out = nn.Conv2d(widths[0], folded, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def embed(self, t: Tensor, labels: Tensor | None) -> Tensor:
        """The conditioning vector of each sample: timestep plus class label."""
        first = self.time_mlp[0].weight  # float32, or bfloat16 in a network cast once (`checkpoint.in_bfloat16`)
        emb = self.time_mlp(timestep_embedding(t, self.cfg.base_channels).to(first.dtype))
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full_like(t, self.cfg.num_classes)
            emb = emb + self.label_emb(labels)
        return emb

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) noisy images; t: (B,) timesteps; labels: (B,) class indices; cond: (B, Cc, H/s, W/s)."""
        cfg = self.cfg
        emb = self.embed(t, labels)
        if cfg.pixel_shuffle > 1:
            x = F.pixel_unshuffle(x, cfg.pixel_shuffle)  # (B, C, sH, sW) -> (B, C s², H, W)
        if cfg.cond_channels:
            x = torch.cat([x, cond.to(x.dtype)], dim=1)

        h = self.conv_in(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)

        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))

        out = self.conv_out(F.silu(self.norm_out(h)))
        if cfg.pixel_shuffle > 1:
            out = F.pixel_shuffle(out, cfg.pixel_shuffle)
        return out
