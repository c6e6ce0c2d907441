"""Steadier video: the detail the upscaler adds, carried along the motion from frame to frame.

Upscaled one at a time, frames flicker where the scene moves by a fraction of a pixel: each low-resolution
frame samples the scene afresh, and the detail the model restores from it changes with the sampling. So a
frame's output is split into what bicubic shows of the frame (its low frequencies, kept as they are: fades
and cuts stay exact) and the detail the model adds on top. That detail is blended with the previous frame's,
moved along the motion between the two low-resolution frames, wherever the motion explains the new frame;
where it does not (new content at an edge, an occlusion) the frame keeps its own detail, and after a cut
all of it.

Where a frame repeats the previous one exactly, moved by whole pixels (lossless video of a pan or a scroll,
the still parts of a screen recording or an animation), the previous detail is copied as it was, moved by
exactly as many output pixels: the same picture then gets the same output, as bicubic gives it, instead of a
blend that still flickers by the small amount the U-Net's strides make its output depend on where the
picture falls.

The motion is dense optical flow by pyramidal Lucas-Kanade (Lucas & Kanade 1981; Bouguet 2000): at each
level, least squares of the linearised brightness constancy over a window, a few times, moving the previous
frame along the flow so far. The flow is smoothed between iterations, which keeps its noise out of the next
warp (without it, more iterations made the flow worse on real frames). Five levels follow pans of up to
about 20 pixels a frame where the frame is large enough for them (no level is under 16 pixels). Settings
chosen on pans of training photos (docs/video.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CARRY = 0.7  # weight of the previous frame's detail where the motion explains the frame fully
TOLERANCE = 16.0  # luma grey levels by which the moved previous frame may miss this one: its detail then counts 0
LEVELS, ITERATIONS = 5, 4  # pyramid levels of the flow (halving; 3 missed pans of 6+ pixels), iterations at each
WINDOW = 6  # radius in pixels of the window of Lucas-Kanade's least squares
SMOOTHING = 4  # radius of the box filter over the flow after each iteration
DAMPING = 100.0  # added to the window's squared gradients: flat windows keep the coarser level's flow
MIN_SIDE = 16  # no pyramid level smaller than this
CUT = 0.4  # mean trust under which a frame starts a new shot: cuts between photos scored 0.02-0.25, pans 0.58-0.96
STEPS_TRIED = 4  # whole-pixel motions tried for exact repeats: the most common ones in the rounded flow


def box(x: Tensor, radius: int) -> Tensor:
    """Mean over a (2r+1)² window, edges repeated: differences of running sums, along rows and then columns
    (4-7x faster than pooling, whose cost grows with the window)."""
    k = 2 * radius + 1

    def along(x: Tensor, dim: int) -> Tensor:
        sides = (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius)
        sums = F.pad(F.pad(x, sides, mode="replicate").cumsum(dim), (1, 0, 0, 0) if dim == 3 else (0, 0, 1, 0))
        n = x.shape[dim]
        return (sums.narrow(dim, k, n) - sums.narrow(dim, 0, n)) / k

    return along(along(x, 3), 2)


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """`image` (B, C, H, W) read at x + flow(x) (flow (B, 2, H, W) in pixels, x then y), bicubic, edges repeated."""
    _, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=image.dtype), torch.arange(w, dtype=image.dtype), indexing="ij")
    grid = torch.stack([(2 * (xs + flow[:, 0]) + 1) / w - 1, (2 * (ys + flow[:, 1]) + 1) / h - 1], dim=-1)
    return F.grid_sample(image, grid, mode="bicubic", padding_mode="border", align_corners=False)


def inside(flow: Tensor) -> Tensor:
    """1 where x + flow(x) lies in the frame, else 0: (B, 1, H, W)."""
    _, _, h, w = flow.shape
    x = torch.arange(w, dtype=flow.dtype) + flow[:, :1]
    y = torch.arange(h, dtype=flow.dtype)[:, None] + flow[:, 1:]
    return ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).to(flow.dtype)


def gradients(image: Tensor) -> tuple[Tensor, Tensor]:
    """Central differences along x and y, edges repeated."""
    across = F.pad(image, (1, 1, 0, 0), mode="replicate")
    down = F.pad(image, (0, 0, 1, 1), mode="replicate")
    return (across[..., 2:] - across[..., :-2]) / 2, (down[..., 2:, :] - down[..., :-2, :]) / 2


def refine(previous: Tensor, current: Tensor, flow: Tensor) -> Tensor:
    """One Lucas-Kanade step: the flow plus the least-squares update over each window."""
    moved = warp(previous, flow)
    gx, gy = gradients((moved + current) / 2)
    seen = inside(flow)
    gx, gy, change = gx * seen, gy * seen, (current - moved) * seen
    # Solve [Σgx² Σgxgy; Σgxgy Σgy²] d = [Σgx·change; Σgy·change] in every window, as means: DAMPING is in the
    # units of a mean squared gradient.
    sums = box(torch.cat([gx * gx, gx * gy, gy * gy, gx * change, gy * change], dim=1), WINDOW)
    xx, xy, yy, bx, by = sums.unbind(1)
    xx, yy = xx + DAMPING, yy + DAMPING
    det = xx * yy - xy * xy
    update = torch.stack([yy * bx - xy * by, xx * by - xy * bx], dim=1) / det[:, None]
    return box(flow + update, SMOOTHING)


def estimate_flow(previous: Tensor, current: Tensor) -> Tensor:
    """Flow (1, 2, H, W) in pixels with current(x) ≈ previous(x + flow(x)), of two (1, 1, H, W) luma images."""
    pyramid = [(previous, current)]
    while len(pyramid) < LEVELS and min(pyramid[-1][0].shape[-2:]) >= 2 * MIN_SIDE:
        pyramid.append(tuple(F.avg_pool2d(image, 2) for image in pyramid[-1]))
    flow = previous.new_zeros(1, 2, *pyramid[-1][0].shape[-2:])
    for previous_level, current_level in reversed(pyramid):
        if flow.shape[-2:] != previous_level.shape[-2:]:
            flow = 2 * F.interpolate(flow, size=previous_level.shape[-2:], mode="bilinear", align_corners=False)
        for _ in range(ITERATIONS):
            flow = refine(previous_level, current_level, flow)
    return flow


def luma(rgb: Tensor) -> Tensor:
    """(1, 3, H, W) RGB in 0-255 -> (1, 1, H, W) luma (BT.601 weights)."""
    return (rgb * rgb.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def as_tensor(frame: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in 0-255."""
    pixels = torch.from_numpy(frame if frame.flags.writeable else frame.copy())  # torch wants memory it may write
    return pixels.permute(2, 0, 1)[None].float()


def repeats(y: Tensor, previous_y: Tensor, flow: Tensor) -> list[tuple[Tensor, tuple[int, int]]]:
    """Where y repeats previous_y exactly, moved by whole pixels: [(mask (1, 1, h, w), (dx, dy))], the masks apart.

    The moves tried are the most common values of the flow rounded to whole pixels (in flat windows the flow
    lags behind a pan, so a pixel's own rounded flow can be wrong where the picture still repeats); where
    several repeat, the one that explains the most of the frame wins. A pixel counts when its whole 3x3
    neighbourhood repeats (one pixel alike is chance) from inside the previous frame."""
    _, _, h, w = y.shape
    reach = max(h, w)
    dx, dy = flow.round().clamp(-reach, reach).long().flatten(2)[0]
    counts = torch.bincount((dx + reach) * (2 * reach + 1) + dy + reach)
    found, masks = torch.zeros_like(y, dtype=torch.bool), []
    for key in counts.topk(min(STEPS_TRIED, int((counts > 0).sum()))).indices.tolist():
        move = (key // (2 * reach + 1) - reach, key % (2 * reach + 1) - reach)
        if max(abs(move[0]), abs(move[1])) >= min(h, w):
            continue
        x_from, y_from = torch.arange(w) + move[0], torch.arange(h)[:, None] + move[1]
        within = (x_from >= 0) & (x_from < w) & (y_from >= 0) & (y_from < h)
        differs = ((torch.roll(previous_y, (-move[1], -move[0]), (2, 3)) != y) | ~within).float()
        masks.append((F.max_pool2d(differs, 3, stride=1, padding=1) == 0, move))
    chosen = []
    for same, move in sorted(masks, key=lambda m: -int(m[0].sum())):
        same = same & ~found
        found |= same
        chosen.append((same, move))
    return chosen


def carry_detail(detail: Tensor, y: Tensor, previous_y: Tensor, previous_detail: Tensor) -> Tensor:
    """This frame's detail blended with the previous frame's, moved along the motion where it explains y, and
    copied from it where y repeats the previous frame moved by whole pixels."""
    flow = estimate_flow(previous_y, y)
    miss = (y - warp(previous_y, flow)).abs()
    trust = (1 - miss / TOLERANCE).clamp(0, 1) * inside(flow)  # (1, 1, h, w): 0 where the motion fails
    if trust.mean() < CUT:  # a new shot: what agrees with the last one does so by chance
        return detail
    exact = repeats(y, previous_y, flow)
    size = detail.shape[-2:]
    sx, sy = round(size[1] / y.shape[-1]), round(size[0] / y.shape[-2])
    scale = flow.new_tensor([size[1] / y.shape[-1], size[0] / y.shape[-2]]).view(1, 2, 1, 1)
    flow = F.interpolate(flow, size=size, mode="bilinear", align_corners=False) * scale  # in output pixels
    trust = F.interpolate(trust, size=size, mode="bilinear", align_corners=False)
    detail = detail + CARRY * trust * (warp(previous_detail, flow) - detail)
    for same, (dx, dy) in exact:
        if same.any():
            same = F.interpolate(same.float(), size=size, mode="nearest") > 0
            detail = torch.where(same, torch.roll(previous_detail, (-dy * sy, -dx * sx), (2, 3)), detail)
    return detail


class Stabilizer:
    """Upscales consecutive frames with `upscale` (an (H, W, 3) uint8 frame -> its upscale) and carries the
    detail along. One per run of frames: the first frame's output is `upscale`'s own."""

    def __init__(self, upscale: Callable[[np.ndarray], np.ndarray]):
        self.upscale = upscale
        self.previous: tuple[Tensor, Tensor] | None = None  # (luma, carried detail) of the last frame

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        upscaled = self.upscale(frame)
        low, out = as_tensor(frame), as_tensor(upscaled)
        base = F.interpolate(low, size=out.shape[-2:], mode="bicubic", align_corners=False)
        y, detail = luma(low), out - base
        if self.previous is None:  # the first frame of a run: its own upscale
            self.previous = y, detail
            return upscaled
        detail = carry_detail(detail, y, *self.previous)
        self.previous = y, detail
        return (base + detail)[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
