import pytest
import torch

from diffgen.unet import UNet, preset


@pytest.mark.parametrize(
    "overrides, cond_shape",
    [
        ({}, None),
        ({"num_classes": 3}, None),
        ({"cond_channels": 3}, (3, 32, 48)),
        ({"num_classes": 3, "cond_channels": 1}, (1, 32, 48)),
        ({"cond_channels": 3, "pixel_shuffle": 4}, (3, 8, 12)),
        ({"channel_mults": (2, 2, 2)}, None),  # the first level wider than the input convolution
        ({"base_channels": 104, "channel_mults": (1, 1, 1)}, None),  # 104 channels in 3 heads of 32 would not divide
    ],
)
def test_output_shape_matches_input_for_every_conditioning(overrides, cond_shape):
    model = UNet(preset("tiny", **overrides)).eval()
    x = torch.randn(2, 3, 32, 48)  # non-square on purpose
    labels = torch.tensor([0, 3]) if overrides.get("num_classes") else None  # 3 is the "no label" index
    cond = torch.randn(2, *cond_shape) if cond_shape else None
    out = model(x, torch.tensor([0, 999]), labels, cond)
    assert out.shape == x.shape


def test_grey_and_rgba_channels():
    for channels in (1, 4):
        model = UNet(preset("tiny", in_channels=channels))
        assert model(torch.randn(1, channels, 8, 8), torch.tensor([5])).shape == (1, channels, 8, 8)


def test_class_label_changes_the_output():
    torch.manual_seed(0)
    model = UNet(preset("tiny", num_classes=2)).eval()
    for p in model.parameters():  # zero-initialised output layers would hide the label
        p.data.normal_(0, 0.05)
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([10])
    assert not torch.allclose(model(x, t, torch.tensor([0])), model(x, t, torch.tensor([1])))


def test_size_multiple():
    assert preset("tiny").size_multiple == 4
    assert preset("tiny", pixel_shuffle=4).size_multiple == 16


def test_the_label_embedding_starts_as_nn_embedding_does():
    from diffgen.unet import label_embedding

    torch.manual_seed(3)
    ours = label_embedding(11, 8).weight.detach().clone()
    torch.manual_seed(3)
    assert torch.equal(ours, torch.nn.Embedding(11, 8).weight.detach())
    with torch.device("meta"):
        assert label_embedding(11, 8).weight.is_meta


@pytest.mark.parametrize(
    "shape, detour",
    [
        ((4, 32, 14, 14), True),  # 4 channels a group, 196 pixels: torch's per-pixel path
        ((2, 64, 28, 28), True),  # 8 channels a group
        ((2, 128, 14, 14), False),  # 16 channels a group: torch's own kernel is the faster
        ((2, 32, 32, 32), False),  # 1,024 pixels: torch's kernel reads whole pixels
    ],
)
def test_group_norm_on_channels_last_is_group_norm_in_the_same_layout(shape, detour):
    from diffgen.unet import GroupNorm, slow_channels_last_norm

    torch.manual_seed(0)
    norm = GroupNorm(8, shape[1])
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = (3 * torch.randn(shape) + 1).contiguous(memory_format=torch.channels_last)
    assert slow_channels_last_norm(x, 8) == detour
    assert not slow_channels_last_norm(x.contiguous(), 8)  # the contiguous layout is never detoured
    out = norm(x)
    assert out.is_contiguous(memory_format=torch.channels_last)  # what the next bf16 convolution expects
    reference = torch.nn.functional.group_norm(x.contiguous().double(), 8, norm.weight.double(), norm.bias.double())
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        in_bf16 = norm.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert in_bf16.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(in_bf16.double(), reference, rtol=0.02, atol=0.05)
