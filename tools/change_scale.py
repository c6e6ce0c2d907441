"""Make an upscaler of another factor from a trained one, as the start of a fine-tune (`--init-from`).

    python tools/change_scale.py upscale-x4 data/photos-v2 runs/x2-init.safetensors --scale 2

The U-Net works at the input's resolution and folds the output's s x s sub-pixels into channels (pixel
shuffle, unet.py), so only its first and last convolutions depend on the factor; everything between is
kept. Going from x4 to x2, each x2 sub-pixel covers 2 x 2 of the x4 model's: the first convolution sums
their weights (it sees one value where it saw four equal ones), the last averages them (one value where it
made four), and the output is rescaled from the old residual scale to the new one, which is measured, as
`train` does, on bicubic residuals of crops of the photos. Only a smaller factor that divides the old one
can be made this way.
"""

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from diffgen.checkpoint import Task, load_model, save_model
from diffgen.data import find_images
from diffgen.images import open_image, to_model_range
from diffgen.models import resolve
from diffgen.transforms import downsample, upsample
from diffgen.unet import UNet


def residual_std(paths: list[Path], scale: int, crop: int = 96) -> float:
    """The standard deviation of HR - bicubic(LR) over the centre crop of each photo, in [-1, 1] units."""
    crops = []
    for path in paths:
        img = open_image(path).convert("RGB")
        left, top = (img.width - crop) // 2, (img.height - crop) // 2
        crops.append(torch.from_numpy(np.array(img.crop((left, top, left + crop, top + crop)))).permute(2, 0, 1))
    hr = to_model_range(torch.stack(crops))
    return float((hr - upsample(downsample(hr, scale), scale)).std())


def folded(weight: torch.Tensor, channels: int, old: int, new: int, dim: int, reduce) -> torch.Tensor:
    """The weight along `dim` regrouped from `channels` x old² sub-pixels to channels x new² (reduce: sum or mean)."""
    k = old // new
    shape = list(weight.shape)
    w = weight.movedim(dim, 0).reshape(channels, new, k, new, k, *shape[:dim], *shape[dim + 1 :])
    return reduce(w, dim=(2, 4)).reshape(channels * new * new, *shape[:dim], *shape[dim + 1 :]).movedim(0, dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an upscaler: bundled name, file or run folder")
    parser.add_argument("photos", type=Path, help="photos to measure the new residual scale on")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--scale", type=int, required=True)
    args = parser.parse_args()
    loaded = load_model(resolve(args.model, Task.UPSCALE), task=Task.UPSCALE)
    spec, old, new = loaded.spec, loaded.spec.scale, args.scale
    if old % new or new >= old:
        raise SystemExit(f"--scale {new}: must divide the model's factor ({old}) and be smaller")
    paths, _, _ = find_images(args.photos)
    ratio = residual_std(paths, old) / residual_std(paths, new)  # the new residual scale over the old
    unet = replace(spec.unet, pixel_shuffle=new)
    state = loaded.model.state_dict()
    c = spec.channels
    conv_in = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([folded(conv_in[:, : c * old * old], c, old, new, 1, torch.sum),
                                         conv_in[:, c * old * old :]], dim=1)
    state["conv_out.weight"] = folded(state["conv_out.weight"], c, old, new, 0, torch.mean) * ratio
    state["conv_out.bias"] = folded(state["conv_out.bias"], c, old, new, 0, torch.mean) * ratio
    model = UNet(unet)
    model.load_state_dict(state)
    extra = {**spec.extra, "changed_from": f"{args.model} (x{old}), tools/change_scale.py"}
    save_model(args.dest, model, replace(spec, unet=unet, scale=new, residual_scale=spec.residual_scale * ratio,
                                         extra=extra))
    print(f"{args.dest}: x{new} from x{old}, residual scale {spec.residual_scale:.3f} -> {spec.residual_scale * ratio:.3f}")


if __name__ == "__main__":
    main()
