"""Training a diffusion model on a folder of images, and resuming it exactly.

The loss is the DDPM objective (Ho et al. 2020) on the model's prediction target, weighted by
Min-SNR-γ (Hang et al. 2023), with label dropout for classifier-free guidance (Ho & Salimans 2022).
An EMA of the weights is what `RUN_DIR/model.safetensors` holds. `RUN_DIR/state.safetensors` holds
everything needed to continue bit for bit: weights, EMA, optimizer moments, step, RNG and data order.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from diffgen.checkpoint import LoadedModel, ModelSpec, Task, atomic_write, save_model
from diffgen.data import ImageFolder, downsample, load_folder, random_crops, random_flip, upsample
from diffgen.errors import DataError, DiffgenError, OptionError, TrainingInterrupted
from diffgen.images import make_grid, save_image, tensor_to_pil, to_model_range
from diffgen.schedule import Prediction, ScheduleKind, min_snr_weight, q_sample, target
from diffgen.unet import PRESETS, UNet, preset
from diffgen.state import load_state, save_state


@dataclass(frozen=True)
class TrainConfig:
    data_dir: Path  # folder of images; sub-folders are classes
    out_dir: Path  # run folder: model, state, log and samples
    task: Task = Task.GENERATE  # generate new images, or upscale
    scale: int = 4  # upscaling factor (upscale task)
    image_size: int = 32  # training resolution (HR crop size for upscaling)
    channels: int | None = None  # 1, 3 or 4; None: as the first image
    preset: str = "tiny"  # U-Net size: tiny, small or base
    max_steps: int = 2000  # optimisation steps
    batch_size: int = 32  # images per step
    grad_accum: int = 1  # micro-batches per step
    lr: float = 2e-4  # peak learning rate of AdamW
    warmup_steps: int = 200  # linear learning-rate warm-up
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.999  # EMA decay of the sampling weights
    prediction: Prediction = Prediction.EPS  # network target
    schedule: ScheduleKind = ScheduleKind.COSINE  # noise schedule
    num_timesteps: int = 1000  # T
    min_snr_gamma: float = 5.0  # Min-SNR-γ loss weighting; 0 turns it off
    label_dropout: float = 0.1  # share of labels replaced by "no label" (classifier-free guidance)
    flip: bool = True  # random horizontal flips
    seed: int = 0  # seeds weights, data order and noise
    save_every: int = 500  # checkpoint period in steps
    sample_every: int = 1000  # sample-grid period in steps
    log_every: int = 50  # log.jsonl period in steps
    sample_steps: int = 50  # DDIM steps for sample grids
    device: str = "auto"  # auto, cpu, cuda or cuda:N


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float  # smoothed
    images_per_s: float


@dataclass(frozen=True)
class Note:
    text: str


Event = Progress | Note


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"--device {name}: no CUDA device here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise OptionError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None


def check_config(cfg: TrainConfig) -> None:
    if cfg.preset not in PRESETS:
        raise OptionError(f"--preset {cfg.preset}: choose one of {', '.join(PRESETS)}")
    for name in ("max_steps", "batch_size", "grad_accum", "save_every", "sample_every", "log_every", "image_size"):
        if getattr(cfg, name) < 1:
            raise OptionError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if cfg.batch_size % cfg.grad_accum:
        raise OptionError(f"--grad-accum {cfg.grad_accum}: must divide --batch-size {cfg.batch_size}")
    if cfg.task is Task.UPSCALE and cfg.scale not in (2, 4, 8):
        raise OptionError(f"--scale {cfg.scale}: choose 2, 4 or 8")
    if cfg.channels not in (None, 1, 3, 4):
        raise OptionError(f"--channels {cfg.channels}: choose 1, 3 or 4")


def build_spec(cfg: TrainConfig, data: ImageFolder) -> ModelSpec:
    upscaling = cfg.task is Task.UPSCALE
    unet = preset(
        cfg.preset,
        in_channels=data.channels,
        num_classes=0 if upscaling else len(data.class_names),
        cond_channels=data.channels if upscaling else 0,
        pixel_shuffle=cfg.scale if upscaling else 1,
    )
    if cfg.image_size % unet.size_multiple:
        raise OptionError(f"--image-size {cfg.image_size}: the {cfg.preset} U-Net needs a multiple of {unet.size_multiple}")
    return ModelSpec(
        unet=unet,
        task=cfg.task,
        scale=cfg.scale if upscaling else 1,
        image_size=cfg.image_size,
        channels=data.channels,
        class_names=() if upscaling else data.class_names,
        schedule=cfg.schedule,
        num_timesteps=cfg.num_timesteps,
        prediction=cfg.prediction,
        residual_scale=residual_scale(data, cfg) if upscaling else 1.0,
    )


def residual_scale(data: ImageFolder, cfg: TrainConfig) -> float:
    """Scale the HR - bicubic(LR) residual to a standard deviation of 0.5, like images in [-1, 1]."""
    g = torch.Generator().manual_seed(cfg.seed)
    hr = to_model_range(random_crops(data.images, torch.randint(len(data.images), (64,), generator=g), cfg.image_size, g))
    std = float((hr - upsample(downsample(hr, cfg.scale), cfg.scale)).std())
    return 0.5 / max(std, 1e-3)


class Batches:
    """Shuffled epochs over a data set; the permutation and position are part of the training state."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.perm, self.pos = torch.randperm(n, generator=generator), 0

    def next(self, batch_size: int) -> Tensor:
        if self.pos + batch_size > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
        idx = self.perm[self.pos : self.pos + batch_size]
        self.pos += batch_size
        return idx


def make_batch(data: ImageFolder, stack: Tensor | None, idx: Tensor, spec: ModelSpec, cfg: TrainConfig, g: torch.Generator):
    """(x0, labels, cond) for one micro-batch; for upscaling x0 is the scaled residual over bicubic."""
    if spec.task is Task.UPSCALE:
        hr = to_model_range(random_crops(data.images, idx, cfg.image_size, g))
    else:
        hr = to_model_range(stack[idx])
    if cfg.flip:
        hr = random_flip(hr, g)
    if spec.task is Task.UPSCALE:
        lr = downsample(hr, spec.scale)
        return (hr - upsample(lr, spec.scale)) * spec.residual_scale, None, lr
    if not spec.class_names:
        return hr, None, None
    labels = data.labels[idx].clone()
    drop = torch.rand(len(idx), generator=g) < cfg.label_dropout
    return hr, labels.masked_fill(drop, spec.unet.num_classes), None


def diffusion_loss(model, alphas_cumprod: Tensor, spec: ModelSpec, gamma: float, batch, g: torch.Generator) -> Tensor:
    """The weighted denoising loss of one micro-batch at random timesteps."""
    x0, labels, cond = batch
    t = torch.randint(len(alphas_cumprod), (len(x0),), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    device = next(model.parameters()).device
    x0, noise, t = x0.to(device), noise.to(device), t.to(device)
    ab = alphas_cumprod.to(device)[t]
    x_t = q_sample(ab, x0, noise)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(x_t, t, None if labels is None else labels.to(device), None if cond is None else cond.to(device))
    per_sample = ((out.float() - target(spec.prediction, x0, noise, ab)) ** 2).mean(dim=(1, 2, 3))
    return (min_snr_weight(spec.prediction, ab, gamma) * per_sample).mean()


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


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


def train(cfg: TrainConfig, *, callback: Callable[[Event], None] | None = None, resume: bool = False) -> Path:
    """Train (or with `resume`, continue) a model; returns the path of RUN_DIR/model.safetensors."""
    notify = callback or (lambda event: None)
    check_config(cfg)
    device = pick_device(cfg.device)
    out = Path(cfg.out_dir)
    check_run_dir(out, Path(cfg.data_dir), resume)
    data = load_folder(
        cfg.data_dir,
        channels=cfg.channels,
        image_size=None if cfg.task is Task.UPSCALE else cfg.image_size,
        warn=lambda text: notify(Note(text)),
    )
    check_data(data, cfg)
    if data.skipped:
        notify(Note(f"skipped {len(data.skipped)} unreadable file(s)"))
    stack = None if cfg.task is Task.UPSCALE else torch.stack(data.images)
    try:
        (out / "samples").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OptionError(f"--out {out}: cannot create the run folder ({e.strerror})") from None

    torch.manual_seed(cfg.seed)
    spec = build_spec(cfg, data)
    model = UNet(spec.unet).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    batches = Batches(len(data.images), g)
    step = 0
    if resume:
        step, spec = load_state(out / "state.safetensors", model, ema, opt, g, batches)
        truncate_log(out / "log.jsonl", step)
        notify(Note(f"resuming {out} at step {step}"))
    alphas_cumprod = spec.make_schedule().alphas_cumprod.float()

    def checkpoint(at: int) -> None:
        save_state(out / "state.safetensors", model, ema, opt, g, batches, replace(spec, train_steps=at), cfg, at)
        save_model(out / "model.safetensors", ema, replace(spec, train_steps=at))

    smoothed, seen, t0 = None, 0, time.perf_counter()
    with stop_requests() as stop:
        while step < cfg.max_steps:
            loss = train_step(model, opt, data, stack, spec, cfg, alphas_cumprod, batches, g, step)
            if not math.isfinite(loss):
                raise DiffgenError(
                    f"{out}: the loss became {loss} at step {step + 1}; the last good checkpoint is kept. "
                    "Lower --lr and resume with --resume"
                )
            update_ema(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
            step += 1
            seen += cfg.batch_size
            smoothed = loss if smoothed is None else 0.98 * smoothed + 0.02 * loss
            ips = seen / (time.perf_counter() - t0)
            notify(Progress(step, cfg.max_steps, smoothed, ips))
            if step % cfg.log_every == 0:
                append_log(out / "log.jsonl", {"step": step, "loss": loss, "lr": learning_rate(cfg, step - 1), "images_per_s": ips})
            if step % cfg.sample_every == 0 or step == cfg.max_steps:
                write_samples(out, LoadedModel(replace(spec, train_steps=step), ema.eval(), out), data, cfg, step)
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                checkpoint(step)
            if stop:
                checkpoint(step)
                raise TrainingInterrupted(
                    f"stopped by {stop[0]} at step {step}; saved. Continue with: "
                    f"diffgen train {cfg.data_dir} --out {out} --resume"
                )
    return out / "model.safetensors"


def train_step(model, opt, data, stack, spec, cfg, alphas_cumprod, batches, g, step) -> float:
    """One optimisation step over `grad_accum` micro-batches; returns the mean loss."""
    model.train()
    for group in opt.param_groups:
        group["lr"] = learning_rate(cfg, step)
    opt.zero_grad(set_to_none=True)
    micro = cfg.batch_size // cfg.grad_accum
    total = 0.0
    for _ in range(cfg.grad_accum):
        batch = make_batch(data, stack, batches.next(micro), spec, cfg, g)
        loss = diffusion_loss(model, alphas_cumprod, spec, cfg.min_snr_gamma, batch, g) / cfg.grad_accum
        loss.backward()
        total += loss.item()
    if not math.isfinite(total):
        return total
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return total


def check_run_dir(out: Path, data_dir: Path, resume: bool) -> None:
    state = out / "state.safetensors"
    if resume and not state.exists():
        raise OptionError(f"--resume: {state} does not exist; start a new run without --resume")
    if not resume and out.exists() and any(out.iterdir()):
        raise OptionError(f"--out {out}: already holds a run; pass --resume to continue it or choose a new folder")
    if out.resolve().is_relative_to(data_dir.resolve()):
        raise OptionError(f"--out {out}: is inside the data folder {data_dir}; put the run somewhere else")


def check_data(data: ImageFolder, cfg: TrainConfig) -> None:
    if len(data.images) < cfg.batch_size:
        raise DataError(
            f"{cfg.data_dir}: {len(data.images)} image(s) is fewer than one batch; lower --batch-size or add images"
        )
    if cfg.task is Task.UPSCALE:
        small = [i for i, img in enumerate(data.images) if min(img.shape[-2:]) < cfg.image_size]
        if small:
            raise DataError(
                f"{cfg.data_dir}: {len(small)} image(s) are smaller than --image-size {cfg.image_size}; "
                "lower it or remove them"
            )


def append_log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from, so steps never repeat."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write(path, "".join(line + "\n" for line in keep).encode())


def write_samples(out: Path, loaded: LoadedModel, data: ImageFolder, cfg: TrainConfig, step: int) -> None:
    """A fixed-seed grid from the EMA model: one row per class, or LR | bicubic | model | HR rows."""
    from diffgen.generate import sample_batch  # noqa: PLC0415 - avoids an import cycle at load time
    from diffgen.upscale import upscale_tensor  # noqa: PLC0415

    spec = loaded.spec
    if spec.task is Task.UPSCALE:
        g = torch.Generator().manual_seed(cfg.seed)
        idx = torch.arange(min(4, len(data.images)))
        hr = to_model_range(random_crops(data.images, idx, cfg.image_size, g))
        lr = downsample(hr, spec.scale)
        sr = upscale_tensor(loaded, lr, seed=cfg.seed)
        rows = [[upsample(lr, spec.scale)[i], sr[i], hr[i]] for i in range(len(hr))]
        tiles, ncols = [tensor_to_pil(x.clamp(-1, 1)) for row in rows for x in row], 3
    else:
        ncols = 8
        rows = max(1, len(spec.class_names))
        labels = [r for r in range(rows) for _ in range(ncols)] if spec.class_names else None
        images = sample_batch(loaded, list(range(rows * ncols)), labels, steps=cfg.sample_steps)
        tiles = [tensor_to_pil(x) for x in images]
    save_image(make_grid(tiles, ncols), out / "samples" / f"step_{step:06d}.png", overwrite=True)
