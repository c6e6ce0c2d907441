"""Diffusion super-resolution: sample the detail that bicubic upsampling misses.

The model works at low resolution (see `unet.py`, `pixel_shuffle`) and denoises the residual
HR - bicubic(LR), scaled by the model's `residual_scale` (the residual formulation of SRDiff, Li et
al. 2022). The conditioning image is the LR input itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from diffgen.checkpoint import LoadedModel
from diffgen.data import upsample
from diffgen.denoiser import make_denoiser
from diffgen.images import open_image, pil_to_tensor, save_image, tensor_to_pil, to_model_range
from diffgen.samplers import randn_like, sample_ddim

DEFAULT_STEPS = 4


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad the bottom and right edges of (B, C, H, W) by reflection up to a multiple of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def upscale_tensor(
    loaded: LoadedModel,
    lowres: Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    eta: float = 0.0,
    callback: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Upscale a (B, C, h, w) batch in [-1, 1] by the model's scale -> (B, C, s·h, s·w)."""
    spec, model = loaded.spec, loaded.model
    s = spec.scale
    device = next(model.parameters()).device
    h, w = lowres.shape[-2:]
    lr = pad_to_multiple(lowres.to(device, torch.float32), spec.unet.size_multiple // s)
    base = upsample(lr, s)
    generator = torch.Generator().manual_seed(seed)
    x = randn_like(base, generator)
    denoise = make_denoiser(model, spec.make_schedule(), spec.prediction, cond=lr)
    residual = sample_ddim(denoise, x, spec.make_schedule(), steps, eta=eta, generator=generator, callback=callback)
    out = base + residual / spec.residual_scale
    return out[..., : s * h, : s * w].clamp(-1, 1)


def upscale_image(loaded: LoadedModel, img: Image.Image, **kwargs) -> Image.Image:
    """Upscale a Pillow image; grey stays grey and an alpha channel is upscaled bicubically."""
    s = loaded.spec.scale
    alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
    grey = img.mode in ("L", "LA")
    rgb = to_model_range(pil_to_tensor(img.convert("RGB")))[None]
    out = tensor_to_pil(upscale_tensor(loaded, rgb, **kwargs)[0])
    if grey:
        out = out.convert("L")
    if alpha is not None:
        out.putalpha(alpha.resize(out.size, Image.Resampling.BICUBIC))
    return out


def output_path(src: Path, out: Path | None, scale: int, *, many: bool) -> Path:
    """Where the upscaled copy of `src` goes: beside it as NAME_x4.png, into a folder, or to a file."""
    name = f"{src.stem}_x{scale}.png"
    if out is None:
        return src.with_name(name)
    if many or out.is_dir() or not out.suffix:
        return out / name
    return out


def upscale_file(loaded: LoadedModel, src: Path, dst: Path, *, overwrite: bool = False, **kwargs) -> Path:
    img = open_image(src)
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    out = upscale_image(loaded, img, **kwargs)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_image(out, dst, overwrite=overwrite, text={"model": loaded.path.name, "source": src.name})
    return dst
