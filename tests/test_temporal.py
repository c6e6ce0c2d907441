"""Steadier video: the optical flow, and the detail carried along it (no PyAV needed)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffgen.video.temporal import Stabilizer, as_tensor, estimate_flow, warp


def texture(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth random (1, 1, h, w) picture in 0-255, like a photo's luma at a few pixels' scale."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 1, h // 4 + 3, w // 4 + 3, generator=g) * 255
    return F.interpolate(small, scale_factor=4, mode="bicubic", align_corners=False)[..., 4 : h + 4, 4 : w + 4]


def shifted(image: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """image(x + (dx, dy)): the picture moved left by dx and up by dy."""
    flow = torch.tensor([dx, dy]).view(1, 2, 1, 1).expand(1, 2, *image.shape[-2:])
    return warp(image, flow)


@pytest.mark.parametrize("dx, dy, size", [(0.25, 0.0, 64), (1.0, -0.5, 64), (-2.6, 1.3, 64), (8.0, -3.0, 192)])
def test_the_flow_of_a_moved_picture_is_its_motion(dx, dy, size):
    big = texture(size + 32, 2 * size)  # a larger picture has more pyramid levels, which follow larger motions
    crop = (..., slice(16, size + 16), slice(16, 2 * size - 16))
    previous, current = big[crop], shifted(big, dx, dy)[crop]
    edge = 8 + int(max(abs(dx), abs(dy)))  # away from the edges, where the picture moved out of the frame
    flow = estimate_flow(previous, current)[0, :, edge:-edge, edge:-edge]
    assert flow[0].mean().item() == pytest.approx(dx, abs=0.02)
    assert flow[1].mean().item() == pytest.approx(dy, abs=0.02)
    assert (flow[0] - dx).abs().quantile(0.9) < 0.1 and (flow[1] - dy).abs().quantile(0.9) < 0.1


def rgb(luma: torch.Tensor) -> np.ndarray:
    return luma[0, 0, :, :, None].expand(-1, -1, 3).round().clamp(0, 255).to(torch.uint8).numpy()


def flickering_upscaler(seed: int = 0):
    """x2 bicubic plus fresh random 'detail' every frame: a stand-in for an upscaler whose detail flickers."""
    g = torch.Generator().manual_seed(seed)

    def upscale(frame: np.ndarray) -> np.ndarray:
        base = F.interpolate(as_tensor(frame), scale_factor=2, mode="bicubic", align_corners=False)
        detail = 6 * torch.randn(base.shape, generator=g)
        return (base + detail)[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    return upscale


def test_detail_is_carried_along_the_motion_and_flickers_less():
    big = texture(80, 120)
    frames = [rgb(shifted(big, 0.5 * t, 0.0)[..., 8:72, 8:104]) for t in range(6)]
    alone, steady = flickering_upscaler(), Stabilizer(flickering_upscaler())
    out_alone, out_steady = [alone(f) for f in frames], [steady(f) for f in frames]
    assert np.array_equal(out_steady[0], out_alone[0])  # the first frame of a run is the upscaler's own

    def flicker(outs):  # consecutive outputs compared after undoing the motion (1 output pixel a frame)
        return np.mean([np.abs(b[8:-8, 8:-9].astype(float) - a[8:-8, 9:-8]).mean() for a, b in zip(outs, outs[1:])])

    assert flicker(out_steady) < 0.6 * flicker(out_alone)


def test_what_repeats_moved_by_whole_pixels_keeps_its_output_exactly():
    """A lossless scroll under a still title: each part's output moves with it exactly, as bicubic's does, though
    the upscaler's own detail changes every frame."""
    title, page = texture(24, 96, seed=3), texture(40, 140, seed=4)
    frames = [rgb(torch.cat([title, page[..., 2 * t : 2 * t + 96]], dim=2)) for t in range(5)]
    steady, alone = Stabilizer(flickering_upscaler()), flickering_upscaler()
    outs = [steady(f).astype(int) for f in frames]
    for a, b in zip(outs, outs[1:]):
        assert np.array_equal(b[:40], a[:40])  # the title (x2: rows under 48), away from where it meets the page
        assert np.array_equal(b[56:, 8:-12], a[56:, 12:-8])  # the page, 2 input pixels to the left each frame
    own = [alone(f).astype(int) for f in frames]
    assert not np.array_equal(own[1][:40], own[0][:40])  # which the upscaler alone does not do


def test_a_cut_keeps_the_new_shot_s_own_detail():
    first, second = rgb(texture(64, 96, seed=1)), rgb(texture(64, 96, seed=2))
    steady, alone = Stabilizer(flickering_upscaler()), flickering_upscaler()
    steady(first), alone(first)
    assert np.abs(steady(second).astype(int) - alone(second)).max() <= 1  # rounding only


def test_a_fade_keeps_each_frame_s_brightness():
    """Only the detail is carried: the brightness of a darkening still picture follows each frame."""
    picture = texture(64, 96)
    frames = [rgb(picture * (1 - 0.05 * t)) for t in range(5)]
    steady, alone = Stabilizer(flickering_upscaler()), flickering_upscaler()
    for frame in frames:
        ours, theirs = steady(frame).astype(float), alone(frame).astype(float)
        assert abs(ours.mean() - theirs.mean()) < 0.3


def test_the_box_filter_is_the_mean_over_its_window():
    from diffgen.video.temporal import box

    x = torch.rand(1, 3, 20, 31) * 1000
    padded = F.pad(x, (3, 3, 3, 3), mode="replicate")
    torch.testing.assert_close(box(x, 3), F.avg_pool2d(padded, 7, stride=1), rtol=1e-5, atol=1e-3)
