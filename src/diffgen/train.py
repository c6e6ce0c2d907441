"""Training a diffusion model on a folder of images, and resuming it exactly.

The loss is the DDPM objective (Ho et al. 2020) on the model's prediction target, weighted by
Min-SNR-γ (Hang et al. 2023), with label dropout for classifier-free guidance (Ho & Salimans 2022).
An EMA of the weights is what `RUN_DIR/model.safetensors` holds; `RUN_DIR/state.safetensors` holds
what resuming needs (see `state.py`). Every batch is a pure function of the seed and the step (see
`data.py`), so resuming is exact and `torchrun` ranks each take a slice of the same global batch.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shlex
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from diffgen.checkpoint import LoadedModel, ModelSpec, Task, check_spec, load_model, save_model
from diffgen.data import (
    Crop, Dataset, DataOrder, FileImages, batch_generator, collate_crops, downsample, open_dataset, quantize,
    random_dihedral, random_flip, shrunk_crop, upsample,
)
from diffgen.degrade import DEGRADATIONS, degrade, draw_chain
from diffgen.errors import DataError, DiffgenError, OptionError, TrainingInterrupted
from diffgen.files import atomic_write, write_fix
from diffgen.generate import sample_batch
from diffgen.images import make_grid, save_image, tensor_to_pil, to_model_range
from diffgen.memory import available_memory
from diffgen.models import resolve
from diffgen.schedule import Prediction, ScheduleKind, min_snr_weight, q_sample, target
from diffgen.state import read_state, restore_state, save_state, saved_spec, state_spec
from diffgen.unet import PRESETS, UNet, UNetConfig, preset
from diffgen.upscale import Sampling, upscale_tensor


@dataclass(frozen=True)
class TrainConfig:
    data_dir: Path  # folder of images; sub-folders are classes
    out_dir: Path  # run folder: model, state, log and samples
    task: Task = Task.GENERATE  # generate new images, or upscale
    scale: int = 4  # upscaling factor (upscale task)
    image_size: int = 32  # training resolution (HR crop size for upscaling)
    channels: int | None = None  # 1, 3 or 4; None: as most images have
    crop: Crop = Crop.CENTER  # centre crop once, or a random crop every time (always random for upscaling)
    flip: bool = True  # random horizontal flips; for upscaling, all 8 flips and quarter turns
    preset: str = "tiny"  # U-Net size: tiny, small or base
    base_channels: int | None = None  # overrides the preset's width of the first level
    channel_mults: tuple[int, ...] | None = None  # overrides the preset's width multiple of each level
    num_res_blocks: int | None = None  # overrides the preset's residual blocks per level
    attention_levels: tuple[int, ...] | None = None  # overrides the preset's levels with self-attention
    max_steps: int = 2000  # optimisation steps
    epochs: int | None = None  # passes over the data; overrides max_steps when set
    batch_size: int = 32  # images per step, over all processes
    grad_accum: int = 1  # micro-batches per step
    lr: float = 2e-4  # peak learning rate of AdamW
    warmup_steps: int = 200  # linear learning-rate warm-up
    lr_decay: bool = False  # after warm-up, cosine decay of the learning rate to zero at max_steps
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.999  # EMA decay of the sampling weights
    prediction: Prediction = Prediction.V  # network target (v learns fastest per CPU-hour: docs/training.md)
    schedule: ScheduleKind = ScheduleKind.COSINE  # noise schedule
    num_timesteps: int = 1000  # T
    min_snr_gamma: float = 5.0  # Min-SNR-γ loss weighting; 0 turns it off
    pure_noise_share: float = 0.0  # share of each batch trained at t = T-1, where sampling starts
    random_shrink: float = 1.0  # upscaling: each HR crop as if its photo were shrunk by a random factor in [this, 1]
    degrade: str = "none"  # upscaling: "real" trains on LR inputs with random blur, noise and JPEG (degrade.py)
    label_dropout: float = 0.1  # share of labels replaced by "no label" (classifier-free guidance)
    seed: int = 0  # seeds weights, data order and noise
    save_every: int = 500  # checkpoint period in steps
    sample_every: int = 1000  # sample-grid period in steps
    log_every: int = 50  # log.jsonl period in steps
    sample_steps: int = 50  # DDIM steps for sample grids
    workers: int = 2  # DataLoader workers when the data is streamed from disk
    memory_limit: int = 2 << 30  # decode the data set into memory up to this many bytes, else stream it
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    precision: str = "auto"  # of the forward pass: auto (bf16 autocast on CUDA, fp32 on CPUs), fp32 or bf16
    init_from: str | None = None  # fine-tune: start from this model's weights (bundled name, file or run)


# What `diffgen train --task upscale` changes in TrainConfig's defaults (which suit generation): the bundled
# upscaler's recipe. An x0 target makes one sampling step from pure noise the MMSE estimate, and half of
# each batch trains that step; 96-px crops; a second residual block per level, the capacity that gained most
# per FLOP (docs/upscale.md).
UPSCALE_DEFAULTS = {"image_size": 96, "prediction": Prediction.X0, "min_snr_gamma": 0.0, "pure_noise_share": 0.5,
                    "num_res_blocks": 2}


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float  # smoothed
    images_per_s: float


@dataclass(frozen=True)
class Note:
    text: str


@dataclass(frozen=True)
class Started:
    """What the run found and is about to do; sent once, before the first step."""

    images: int
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    crops: bool  # trains on random crops of the images as they are (upscaling), not on whole images resized
    device: str
    out: Path
    step: int  # where it starts: 0, or the step a resumed run stopped at
    total: int


@dataclass(frozen=True)
class Estimate:
    """How long the rest of the run should take, from the pace of its first steps; sent once."""

    seconds: float
    step: int  # the step it was made at


@dataclass(frozen=True)
class Finishing:
    """The last step is done; the final checkpoint and sample grid are being written, which takes a while."""

    step: int
    grid_images: int  # 0 when no grid is drawn
    sample_steps: int


Event = Progress | Note | Started | Estimate | Finishing


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"--device {name}: no CUDA device here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise OptionError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None


@contextmanager
def process_group(device: torch.device) -> Iterator[Ranks]:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPUs), and
    leave it together on the way out: a gloo rank that shut down while another was still at work, or
    with its group still alive, now and then aborted at exit ("terminate called without an active
    exception")."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield Ranks()
        return
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size())
        dist.barrier()  # not after an error: the other ranks may never get here
    finally:
        if joined:
            dist.destroy_process_group()


def check_config(cfg: TrainConfig, ranks: Ranks) -> None:
    if cfg.preset not in PRESETS:
        raise OptionError(f"--preset {cfg.preset}: choose one of {', '.join(PRESETS)}")
    for name in ("max_steps", "batch_size", "grad_accum", "save_every", "sample_every", "log_every", "image_size"):
        if getattr(cfg, name) < 1:
            raise OptionError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if cfg.batch_size % (cfg.grad_accum * ranks.world):
        raise OptionError(
            f"--batch-size {cfg.batch_size}: must be a multiple of --grad-accum ({cfg.grad_accum}) "
            f"times the number of processes ({ranks.world})"
        )
    if cfg.task is Task.UPSCALE and cfg.scale not in (2, 4, 8):
        raise OptionError(f"--scale {cfg.scale}: choose 2, 4 or 8")
    if cfg.channels not in (None, 1, 3, 4):
        raise OptionError(f"--channels {cfg.channels}: choose 1, 3 or 4")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise OptionError(f"--epochs {cfg.epochs}: must be at least 1")
    if not 0 <= cfg.label_dropout < 1:
        raise OptionError(f"--label-dropout {cfg.label_dropout}: must be in [0, 1)")
    if not 0 <= cfg.pure_noise_share <= 1:
        raise OptionError(f"--pure-noise-share {cfg.pure_noise_share}: must be in [0, 1]")
    if not 0 < cfg.random_shrink <= 1:
        raise OptionError(f"--random-shrink {cfg.random_shrink}: must be in (0, 1]; 1 turns it off")
    if cfg.degrade not in DEGRADATIONS:
        raise OptionError(f"--degrade {cfg.degrade}: use one of {', '.join(DEGRADATIONS)}")
    if cfg.degrade != "none" and cfg.task is not Task.UPSCALE:
        raise OptionError(f"--degrade {cfg.degrade}: only for --task upscale (it degrades the low-resolution input)")
    if cfg.random_shrink < 1 and cfg.task is not Task.UPSCALE:
        raise OptionError("--random-shrink: only for --task upscale (generation resizes every image to one size)")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise OptionError(f"--precision {cfg.precision}: choose auto, fp32 or bf16")


def build_spec(cfg: TrainConfig, data: Dataset) -> ModelSpec:
    upscaling = cfg.task is Task.UPSCALE
    channels = data.prep.channels
    overrides = {
        name: getattr(cfg, name)
        for name in ("base_channels", "channel_mults", "num_res_blocks", "attention_levels")
        if getattr(cfg, name) is not None
    }
    unet = preset(
        cfg.preset,
        **overrides,
        in_channels=channels,
        num_classes=0 if upscaling else len(data.class_names),
        cond_channels=channels if upscaling else 0,
        pixel_shuffle=cfg.scale if upscaling else 1,
    )
    check_unet(unet)
    if cfg.image_size % unet.size_multiple:
        raise OptionError(f"--image-size {cfg.image_size}: the {cfg.preset} U-Net needs a multiple of {unet.size_multiple}")
    spec = ModelSpec(
        unet=unet,
        task=cfg.task,
        scale=cfg.scale if upscaling else 1,
        image_size=cfg.image_size,
        channels=channels,
        class_names=() if upscaling else data.class_names,
        schedule=cfg.schedule,
        num_timesteps=cfg.num_timesteps,
        prediction=cfg.prediction,
        extra={"data": str(cfg.data_dir), "images": len(data)},
    )
    try:
        check_spec(spec)  # the limits every model file is held to: a model too big to load is never trained
    except ValueError as e:
        raise OptionError(f"the options ask for a model beyond diffgen's limits ({e}; docs/guarantees.md); "
                          "choose a smaller --image-size or U-Net") from None
    return spec


def fine_tuned(cfg: TrainConfig, spec: ModelSpec, notify: Callable[[Event], None]) -> tuple[ModelSpec, torch.nn.Module]:
    """--init-from: the model to start from, and the spec of the run, which keeps that model's architecture,
    target, schedule and residual scale; the data must suit it (task, channels, classes, scale)."""
    start = load_model(resolve(cfg.init_from, cfg.task, option="--init-from"))
    src, name = start.spec, f"--init-from {cfg.init_from}"
    for what, theirs, ours in (("task", src.task.value, spec.task.value), ("channels", src.channels, spec.channels),
                               ("classes", list(src.class_names), list(spec.class_names)), ("scale", src.scale, spec.scale)):
        if theirs != ours:
            raise OptionError(f"{name}: {what} {theirs} in the model, {ours} in this run; start from a model made for this data")
    if cfg.image_size % src.unet.size_multiple:
        raise OptionError(f"--image-size {cfg.image_size}: the model in {name} needs a multiple of {src.unet.size_multiple}")
    notify(Note(f"fine-tuning {start.path} (trained {src.train_steps} steps): its U-Net, {src.prediction.value} "
                f"target and {src.schedule.value} schedule are kept"))
    extra = spec.extra | {"init_from": str(start.path), "init_steps": src.train_steps}
    return replace(src, image_size=cfg.image_size, train_steps=0, extra=extra), start.model.train().requires_grad_(True)


def check_unet(unet: UNetConfig) -> None:
    """Refuse U-Net shapes that cannot be built, naming the option to change."""
    widths = [unet.base_channels] + [unet.base_channels * m for m in unet.channel_mults]  # the input conv's too
    if min(widths) < 1 or any(w % unet.norm_groups for w in widths):
        raise OptionError(f"--base-channels / --channel-mults: every width must be a positive multiple of {unet.norm_groups}")
    if unet.num_res_blocks < 1:
        raise OptionError("--res-blocks: must be at least 1")
    if any(not 0 <= lvl < unet.num_levels for lvl in unet.attention_levels):
        raise OptionError(f"--attention-levels: levels run from 0 to {unet.num_levels - 1}")


class Batches:
    """Global micro-batches k = 0, 1, 2, ... of uint8 crops, with the randomness that goes with them.

    Each rank gets its contiguous slice of every global micro-batch. From memory the crops are cut
    here; from disk they are decoded ahead by DataLoader workers. Files that fail to decode then (deleted
    or damaged since the run started) are collected in `skipped` and reported once each to `on_skip`.
    """

    def __init__(self, data: Dataset, cfg: TrainConfig, ranks: Ranks, first_k: int,
                 on_skip: Callable[[str], None] | None = None):
        self.data, self.cfg, self.ranks, self.on_skip = data, cfg, ranks, on_skip
        self.micro = cfg.batch_size // cfg.grad_accum
        self.order = DataOrder(len(data), self.micro, cfg.seed)
        self.skipped: dict[str, None] = {}  # an ordered set of messages
        self.loader = None
        if data.images is None:
            self.loader = iter(torch.utils.data.DataLoader(
                FileImages(data), batch_sampler=self.crop_requests(first_k), num_workers=cfg.workers,
                persistent_workers=cfg.workers > 0, collate_fn=collate_crops,
            ))

    def my_slice(self) -> slice:
        per_rank = self.micro // self.ranks.world
        return slice(self.ranks.rank * per_rank, (self.ranks.rank + 1) * per_rank)

    def plan(self, k: int) -> tuple[list[int], list[tuple[float, float, float]], torch.Generator]:
        """This rank's image indices and crops (position, shrink factor) in micro-batch k, and the batch's
        generator."""
        g = batch_generator(self.cfg.seed, k)
        idx, u = self.order.indices(k), torch.rand(self.micro, 2, generator=g)  # crop positions: the first draw
        factor = torch.ones(self.micro, 1)
        if self.cfg.random_shrink < 1:  # log-uniform in [random_shrink, 1]; drawn only then, so runs without it
            factor = self.cfg.random_shrink ** torch.rand(self.micro, 1, generator=g)  # keep their stream
        s = self.my_slice()
        return idx[s].tolist(), [tuple(p) for p in torch.cat([u, factor], 1)[s].tolist()], g

    def crop_requests(self, k: int) -> Iterator[list[tuple[int, float, float, float]]]:
        """What the DataLoader workers should decode for micro-batches k, k+1, ... (this rank only)."""
        while True:
            idx, crops, _ = self.plan(k)
            yield [(i, *crop) for i, crop in zip(idx, crops)]
            k += 1

    def get(self, k: int) -> tuple[Tensor, Tensor, torch.Generator]:
        """(uint8 crops, labels) of this rank's share of micro-batch k, and the generator to continue with."""
        idx, crops, g = self.plan(k)
        if self.loader is not None:
            images = self.streamed()
        else:
            images = torch.stack([shrunk_crop(self.data.images[i], uy, ux, self.cfg.image_size, factor)
                                  for i, (uy, ux, factor) in zip(idx, crops)])
        return images, self.data.labels[idx], g

    def streamed(self) -> Tensor:
        """The workers' next batch of crops, reporting the files that failed on the way."""
        images, failed = next(self.loader)
        for message in failed:
            if message not in self.skipped:
                self.skipped[message] = None
                if self.on_skip:
                    self.on_skip(f"skipping {message}")
        if images is None:
            raise DataError(f"{self.cfg.data_dir}: none of its images can be decoded any more (moved or deleted "
                            "during the run?); put them back and continue with --resume")
        return images


def aux_batches(data: Dataset, cfg: TrainConfig, batch_size: int) -> Batches:
    """Batches for a look at the data outside the training stream (no workers, one process)."""
    return Batches(data, replace(cfg, batch_size=batch_size, grad_accum=1, workers=0), Ranks(), 0)


def make_inputs(crops: Tensor, labels: Tensor, g: torch.Generator, spec: ModelSpec, cfg: TrainConfig, s: slice, micro: int):
    """(x0, labels, cond) for the model; the random draws cover the global micro-batch, then take slice s."""
    flip = (torch.rand(micro, generator=g) < 0.5)[s]
    drop = (torch.rand(micro, generator=g) < cfg.label_dropout)[s]
    hr = to_model_range(crops)
    if spec.task is Task.UPSCALE:
        # Texture statistics of photos are much the same turned or mirrored, so use all 8 variants. The LR
        # input is rounded to 8 bits like a real file's, and the residual is taken over its upsampling.
        if cfg.flip:
            hr = random_dihedral(hr, torch.randint(8, (micro,), generator=g)[s])
        if cfg.degrade == "real":  # drawn only then, so clean runs keep their stream
            lr_size = (hr.shape[-2] // spec.scale, hr.shape[-1] // spec.scale)
            lr = degrade(hr, spec.scale, draw_chain(micro, hr.shape[1], lr_size, g)[s])
        else:
            lr = quantize(downsample(hr, spec.scale))
        return (hr - upsample(lr, spec.scale)) * spec.residual_scale, None, lr
    if cfg.flip:
        hr = random_flip(hr, flip)
    if not spec.class_names:
        return hr, None, None
    return hr, labels.masked_fill(drop, spec.unet.num_classes), None


def trains_in_bf16(precision: str, device: torch.device) -> bool:
    """Whether the forward pass runs under bf16 autocast: by default on CUDA only. On a CPU with native bf16
    (AVX512-BF16) it trains about 1.2x faster, to the same PSNR in a fine-tune but slightly lower from
    scratch (docs/upscale.md), and elsewhere it is emulated and slower, so CPUs use it only when asked."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def diffusion_loss(model, alphas_cumprod: Tensor, spec: ModelSpec, cfg: TrainConfig, inputs, g: torch.Generator, s: slice, micro: int) -> Tensor:
    """The weighted denoising loss of this rank's slice of a micro-batch, at random timesteps: uniform, but
    with a share of them at T-1, the pure noise where sampling starts."""
    x0, labels, cond = inputs
    t = torch.randint(len(alphas_cumprod), (micro,), generator=g)[s]
    if cfg.pure_noise_share:
        at_start = (torch.rand(micro, generator=g) < cfg.pure_noise_share)[s]
        t = t.masked_fill(at_start, len(alphas_cumprod) - 1)
    noise = torch.randn((micro, *x0.shape[1:]), generator=g)[s]
    device = next(model.parameters()).device
    x0, noise, t = x0.to(device), noise.to(device), t.to(device)
    ab = alphas_cumprod.to(device)[t]
    x_t = q_sample(ab, x0, noise)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trains_in_bf16(cfg.precision, device)):
        out = model(x_t, t, None if labels is None else labels.to(device), None if cond is None else cond.to(device))
    per_sample = ((out.float() - target(spec.prediction, x0, noise, ab)) ** 2).mean(dim=(1, 2, 3))
    return (min_snr_weight(spec.prediction, ab, cfg.min_snr_gamma) * per_sample).mean()


def residual_scale(batches: Batches, cfg: TrainConfig) -> float:
    """Scale the HR - bicubic(LR) residual to a standard deviation of 0.5, like images in [-1, 1]."""
    hr = to_model_range(torch.cat([batches.get(k)[0] for k in range(max(1, 64 // batches.micro))]))
    std = float((hr - upsample(downsample(hr, cfg.scale), cfg.scale)).std())
    return 0.5 / max(std, 1e-3)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to cfg.lr, then constant or (lr_decay) a cosine down to zero at max_steps."""
    if step < cfg.warmup_steps or not cfg.lr_decay:
        return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    done = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


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


def all_ranks(value: float, ranks: Ranks, op=None) -> float:
    """Reduce a number over ranks (mean by default) so every rank takes the same decisions."""
    if ranks.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return float(t) / (ranks.world if op is None else 1)


@dataclass(frozen=True)
class Trained:
    model_path: Path  # RUN_DIR/model.safetensors
    skipped: tuple[str, ...]  # data files that could not be read, with the reason
    spec: ModelSpec | None = None  # of the model written
    step: int = 0  # steps trained in all
    steps_run: int = 0  # by this call: 0 when a resumed run had already finished
    loss: float | None = None  # smoothed, at the last step
    seconds: float = 0.0  # this call's training time
    samples: Path | None = None  # the last sample grid written


def train(
    cfg: TrainConfig, *, callback: Callable[[Event], None] | None = None, resume: bool = False,
    command: str | None = None,
) -> Trained:
    """Train (or with `resume`, continue) a model; `command` is recorded in a new model's provenance."""
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    with process_group(device) as ranks:
        notify = (callback or (lambda event: None)) if ranks.main else (lambda event: None)
        check_config(cfg, ranks)
        out = Path(cfg.out_dir)
        check_run_dir(out, Path(cfg.data_dir), resume)
        if ranks.world > 1:
            dist.barrier()  # every rank has checked --out before rank 0 writes to it
        if resume and cfg.channels is None:  # the run's own colours, whatever the data's majority is now
            cfg = replace(cfg, channels=state_spec(out / "state.safetensors").channels)
        cfg, data = load_data(cfg, notify)
        # The model is checked against the options and the data before the run folder is touched.
        spec, start = build_spec(cfg, data), None
        if command:
            spec = replace(spec, extra=spec.extra | {"command": command})
        if cfg.init_from and not resume:
            spec, start = fine_tuned(cfg, spec, notify)
        check_memory(spec, cfg, device, ranks)
        with run_lock(out, held=ranks.main):  # before the state is read: nobody else may be writing it
            if ranks.main:  # again: another trainer may have finished a run here while this one loaded its data
                check_run_dir(out, Path(cfg.data_dir), resume)
            return train_loop(cfg, data, spec, start, out, device, ranks, notify, resume)


def open_run(
    cfg: TrainConfig, spec: ModelSpec, start: torch.nn.Module | None, out: Path, device: torch.device, ranks: Ranks,
    notify: Callable[[Event], None], resume: bool,
) -> tuple[ModelSpec, torch.nn.Module, torch.nn.Module, torch.optim.Optimizer, int]:
    """(spec, model, EMA, optimizer, step) of a new run, or restored from the run folder's state."""
    state = read_state(out / "state.safetensors") if resume else None
    if state is not None:
        spec = saved_spec(state[1])  # the run's own network, e.g. the one --init-from started it from
    model = (UNet(spec.unet) if start is None else start).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    step = 0
    if state is not None:
        step = restore_state(state, model, ema, opt)
        truncate_log(out / "log.jsonl", step)
        for leftover in out.glob(".*.safetensors.*.tmp"):  # half-written by a process that was killed
            leftover.unlink(missing_ok=True)
        notify(Note(f"resuming {out} at step {step}"))
    elif ranks.main and clear_leftovers(out):
        notify(Note(f"starting {out} again from step 0: its run stopped before its first checkpoint"))
    return spec, model, ema, opt, step


def train_loop(
    cfg: TrainConfig, data: Dataset, spec: ModelSpec, start: torch.nn.Module | None, out: Path,
    device: torch.device, ranks: Ranks, notify: Callable[[Event], None], resume: bool,
) -> Trained:
    """The training loop of `train`, on a checked run folder that this process holds; `start` is the
    --init-from model, else the network is new."""
    torch.manual_seed(cfg.seed)
    spec, model, ema, opt, step = open_run(cfg, spec, start, out, device, ranks, notify, resume)
    batches = Batches(data, cfg, ranks, first_k=step * cfg.grad_accum, on_skip=lambda text: notify(Note(text)))
    if cfg.task is Task.UPSCALE and not resume and not cfg.init_from:
        spec = replace(spec, residual_scale=residual_scale(aux_batches(data, cfg, cfg.batch_size), cfg))
    if ranks.main:
        (out / "samples").mkdir(parents=True, exist_ok=True)
    net = torch.nn.parallel.DistributedDataParallel(model) if ranks.world > 1 else model
    alphas_cumprod = spec.make_schedule().alphas_cumprod.float()
    if step < cfg.max_steps:  # else a resumed run that has finished: the caller says so
        notify(Started(len(data), spec.class_names, cfg.image_size, spec.channels, cfg.task is Task.UPSCALE,
                       str(device), out, step, cfg.max_steps))

    def checkpoint(at: int) -> None:
        if ranks.main:
            with writing(out / "state.safetensors", cfg):
                save_state(out / "state.safetensors", model, ema, opt, replace(spec, train_steps=at), cfg, at)
            with writing(out / "model.safetensors", cfg):
                save_model(out / "model.safetensors", ema, replace(spec, train_steps=at))

    first, smoothed, samples, pace = step, None, None, Pace(step, cfg.max_steps)
    with stop_requests() as stop:
        while step < cfg.max_steps:
            loss = all_ranks(train_step(net, opt, batches, spec, cfg, alphas_cumprod, step), ranks)
            if not math.isfinite(loss):
                raise DiffgenError(
                    f"{out}: the loss became {loss} at step {step + 1}; the last good checkpoint is kept. "
                    "Lower --lr and resume with --resume"
                )
            update_ema(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
            step += 1
            smoothed = loss if smoothed is None else 0.98 * smoothed + 0.02 * loss
            ips = (step - first) * cfg.batch_size / (pace.clock() - pace.t0)
            notify(Progress(step, cfg.max_steps, smoothed, ips))
            if estimate := pace.after(step):
                notify(estimate)
            if ranks.main and step % cfg.log_every == 0:
                record = {"step": step, "loss": loss, "lr": learning_rate(cfg, step - 1), "images_per_s": ips}
                append_log(out / "log.jsonl", record, cfg)
            sampling = ranks.main and (step % cfg.sample_every == 0 or step == cfg.max_steps)
            if step == cfg.max_steps:
                notify(Finishing(step, grid_size(spec, data) if sampling else 0, cfg.sample_steps))
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                checkpoint(step)
            if sampling:  # after the checkpoint: a run stopped while sampling has lost nothing
                samples = write_samples(out, LoadedModel(replace(spec, train_steps=step), ema.eval(), out), data, cfg, step)
            if all_ranks(float(bool(stop)), ranks, dist.ReduceOp.MAX if ranks.world > 1 else None):
                checkpoint(step)
                raise TrainingInterrupted(f"stopped by {stop[0] if stop else 'a signal'} at step {step}; saved. "
                                          f"Continue with: {resume_command(cfg)}")
    return Trained(out / "model.safetensors", data.skipped + tuple(batches.skipped), replace(spec, train_steps=step),
                   step, step - first, smoothed, pace.clock() - pace.t0, samples)


class Pace:
    """The time per step, measured from the end of the first step (which warms up), and one estimate of
    the time the remaining steps take: after ESTIMATE_STEPS steps, or sooner when they are slow."""

    ESTIMATE_STEPS, ESTIMATE_SECONDS = 10, 10.0

    def __init__(self, start: int, total: int, clock: Callable[[], float] = time.perf_counter):
        self.start, self.total, self.clock = start, total, clock
        self.t0 = clock()
        self.warm: float | None = None  # when the first step ended
        self.said = False

    def after(self, step: int) -> Estimate | None:
        """Call after each step: the estimate, once, else None."""
        now = self.clock()
        if step == self.start + 1:
            self.warm = now
            return None
        timed = step - self.start - 1
        if self.said or self.warm is None or step >= self.total:
            return None
        if timed < self.ESTIMATE_STEPS - 1 and now - self.warm < self.ESTIMATE_SECONDS:
            return None
        self.said = True
        return Estimate((now - self.warm) / timed * (self.total - step), step)


def resume_command(cfg: TrainConfig) -> str:
    return shlex.join(["diffgen", "train", str(cfg.data_dir), "--out", str(cfg.out_dir), "--resume"])


@contextmanager
def writing(path: Path, cfg: TrainConfig) -> Iterator[None]:
    """Turn a failed write of a run's file (full disk, lost permission) into one line with the fix; the file
    itself is written atomically, so the last complete one stays and no temporary file is left."""
    try:
        yield
    except OSError as e:
        raise DiffgenError(f"{path}: cannot write ({e.strerror}); {write_fix(e)}, then continue from the last checkpoint "
                           f"with: {resume_command(cfg)}") from None


@dataclass(frozen=True)
class MemoryNeed:
    activations: int  # bytes autograd keeps for the backward pass of one micro-batch, in fp32
    weights: int  # bytes of weights, gradients, AdamW's two moments and the EMA (fp32)


def training_memory(unet: UNetConfig, image_size: int, micro: int) -> MemoryNeed:
    """What one training step of this U-Net needs: it runs on the meta device (shapes only, no data, no
    memory), adding up the tensors autograd saves for the backward pass, which dominate the peak."""
    with torch.device("meta"):
        net = UNet(unet)
        x = torch.empty(micro, unet.in_channels, image_size, image_size)
        t = torch.zeros(micro, dtype=torch.long)
        labels = torch.zeros(micro, dtype=torch.long) if unet.num_classes else None
        side = image_size // unet.pixel_shuffle
        cond = torch.empty(micro, unet.cond_channels, side, side) if unet.cond_channels else None
    params = {id(p) for p in net.parameters()}
    saved: dict[int, Tensor] = {}  # by identity: a tensor saved by two operations is stored once

    def pack(tensor: Tensor) -> Tensor:
        if id(tensor) not in params:
            saved[id(tensor)] = tensor
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(x, t, labels, cond)
    activations = sum(tensor.numel() * tensor.element_size() for tensor in saved.values())
    return MemoryNeed(activations, 5 * 4 * sum(p.numel() for p in net.parameters()))


def check_memory(spec: ModelSpec, cfg: TrainConfig, device: torch.device, ranks: Ranks) -> None:
    """Refuse a run whose training step cannot fit in memory, with the estimate and the fix, rather than
    be killed for it later. The estimate errs high (it counts every saved tensor), so only clear misfits
    are refused."""
    available = available_memory(device)
    if available is None:
        return
    micro = cfg.batch_size // cfg.grad_accum // ranks.world
    need = training_memory(spec.unet, cfg.image_size, micro)
    activations = need.activations // (2 if trains_in_bf16(cfg.precision, device) else 1)
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1  # ranks on one machine
    total = activations + need.weights
    if sharing * total <= available:
        return
    fits = int((available / sharing - need.weights) // (activations / micro))
    fix = (f"at most {fits} image(s) per micro-batch fit: raise --grad-accum (a micro-batch is --batch-size / "
           "--grad-accum per process), or lower --batch-size or --image-size" if fits >= 1 else
           "not even one image of this size fits: lower --image-size or choose a smaller --preset")
    raise OptionError(
        f"--image-size {cfg.image_size} --batch-size {cfg.batch_size} --grad-accum {cfg.grad_accum}: training needs "
        f"about {gib(total)} ({gib(activations)} for a micro-batch of {micro}, {gib(need.weights)} for the weights "
        f"and optimizer){f' in each of {sharing} processes' if sharing > 1 else ''}, and {gib(available)} is "
        f"available on {device}; {fix}"
    )


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def load_data(cfg: TrainConfig, notify: Callable[[Event], None]) -> tuple[TrainConfig, Dataset]:
    """Open and check the data set; with --epochs, the config gets the step count they mean."""
    data = open_dataset(
        cfg.data_dir, size=cfg.image_size, channels=cfg.channels, memory_limit=cfg.memory_limit,
        crop=Crop.RANDOM if cfg.task is Task.UPSCALE else cfg.crop, resize=cfg.task is Task.GENERATE,
        warn=lambda text: notify(Note(text)),
    )
    check_data(data, cfg)
    if data.skipped:
        notify(Note(f"skipped {len(data.skipped)} unreadable file(s)"))
    if data.images is None:
        notify(Note(f"{len(data)} images stream from disk through {cfg.workers} worker(s)"))
    if cfg.epochs:
        cfg = replace(cfg, max_steps=max(1, cfg.epochs * len(data) // cfg.batch_size))
    return cfg, data


def train_step(net, opt, batches: Batches, spec: ModelSpec, cfg: TrainConfig, alphas_cumprod: Tensor, step: int) -> float:
    """One optimisation step over `grad_accum` micro-batches; returns this rank's mean loss."""
    net.train()
    for group in opt.param_groups:
        group["lr"] = learning_rate(cfg, step)
    opt.zero_grad(set_to_none=True)
    total, s = 0.0, batches.my_slice()
    for j in range(cfg.grad_accum):
        crops, labels, g = batches.get(step * cfg.grad_accum + j)
        inputs = make_inputs(crops, labels, g, spec, cfg, s, batches.micro)
        loss = diffusion_loss(net, alphas_cumprod, spec, cfg, inputs, g, s, batches.micro) / cfg.grad_accum
        loss.backward()
        total += loss.item()
    if math.isfinite(total):
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
    return total


LOCK = ".lock"  # in the run folder; empty, it only carries the lock


@contextmanager
def run_lock(out: Path, *, held: bool = True) -> Iterator[None]:
    """An exclusive lock on the run folder for the whole run: a second trainer on it stops with an error.

    Without it, a run resumed while the interrupted one is still saving would load an older state and
    then both would write the folder. The OS drops the lock when the process dies, so none goes stale.
    Where there is no fcntl (Windows) runs go unlocked.
    """
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:  # pragma: no cover - Windows
        held = False
    if not held:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OptionError(
                f"--out {out}: another diffgen train is writing to this run; wait until it has stopped "
                "(it saves first) or choose another --out"
            ) from None
        yield


def check_run_dir(out: Path, data_dir: Path, resume: bool) -> None:
    state = out / "state.safetensors"
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out}: is a file; choose a folder for the run")
    if resume and not state.exists():
        if out.is_dir() and any(out.iterdir()) and no_checkpoint_yet(out):
            raise OptionError(f"--resume: {out} has no checkpoint yet (its run stopped before the first save); "
                              "start it again without --resume")
        raise OptionError(f"--resume: {state} does not exist; start a new run without --resume")
    if not resume and out.exists() and not no_checkpoint_yet(out):
        raise OptionError(f"--out {out}: already holds a run; pass --resume to continue it or choose a new folder")
    if out.resolve().is_relative_to(data_dir.resolve()):
        raise OptionError(f"--out {out}: is inside the data folder {data_dir}; put the run somewhere else")
    check_writable(out)


def check_writable(out: Path) -> None:
    """Refuse an --out that cannot be written before any work: the nearest folder on its path that exists
    decides (a read-only disk, or another user's folder)."""
    folder = out.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OptionError(f"--out {out}: {folder} is a file, not a folder; choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OptionError(f"--out {out}: cannot write in {folder} (read-only, or no permission); "
                          "choose another --out or change the folder's permissions")


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")  # as files.atomic_write names them


def no_checkpoint_yet(out: Path) -> bool:
    """Whether `out` holds nothing but what a run stopped before its first checkpoint leaves: the lock, the
    log, sample grids and temporary files. Such a run starts again from step 0 without --resume."""
    early = {LOCK, "log.jsonl", "samples"}
    samples = out / "samples"
    return (all(p.name in early or is_temp(p) for p in out.iterdir())
            and (not samples.is_dir() or all(p.suffix == ".png" or is_temp(p) for p in samples.iterdir())))


def clear_leftovers(out: Path) -> bool:
    """Remove what a run stopped before its first checkpoint left, so a new run starts clean; whether any."""
    found = [p for p in [out / "log.jsonl", *out.glob(".*.tmp"), *out.glob("samples/*")] if p.is_file()]
    for path in found:
        path.unlink()
    return bool(found)


def check_data(data: Dataset, cfg: TrainConfig) -> None:
    # Upscaling draws many crops from each image, so only generation needs a batch of distinct images.
    if cfg.task is Task.GENERATE and len(data) < cfg.batch_size // cfg.grad_accum:
        raise DataError(
            f"{cfg.data_dir}: {len(data)} image(s) is fewer than one batch; lower --batch-size or add images"
        )


def append_log(path: Path, record: dict, cfg: TrainConfig) -> None:
    with writing(path, cfg), open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from, so steps never repeat, and lines torn
    by a full disk or a crash mid-append, so the log stays readable."""
    if not path.exists():
        return
    keep = [line for line in path.read_text(errors="replace").splitlines() if log_step(line) <= step]
    atomic_write(path, "".join(line + "\n" for line in keep).encode())


def log_step(line: str) -> float:
    """The step of a log line; infinity for a torn or foreign one, which `truncate_log` drops."""
    try:
        record = json.loads(line)
        return float(record["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def grid_size(spec: ModelSpec, data: Dataset) -> int:
    """How many images `write_samples` draws: 8 per class, or one per upscaled crop."""
    return min(4, len(data)) if spec.task is Task.UPSCALE else 8 * max(1, len(spec.class_names))


def write_samples(out: Path, loaded: LoadedModel, data: Dataset, cfg: TrainConfig, step: int) -> Path:
    """A fixed-seed grid from the EMA model: one row per class, or bicubic | model | HR rows; returns its path."""
    spec = loaded.spec
    if spec.task is Task.UPSCALE:
        hr = to_model_range(aux_batches(data, cfg, min(4, len(data))).get(0)[0])
        lr = downsample(hr, spec.scale)
        sr = upscale_tensor(loaded, lr, Sampling(seed=cfg.seed))
        rows = [[upsample(lr, spec.scale)[i], sr[i], hr[i]] for i in range(len(hr))]
        tiles, ncols = [tensor_to_pil(x.clamp(-1, 1)) for row in rows for x in row], 3
    else:
        ncols = 8
        rows = max(1, len(spec.class_names))
        labels = [r for r in range(rows) for _ in range(ncols)] if spec.class_names else None
        images = sample_batch(loaded, list(range(rows * ncols)), labels, steps=cfg.sample_steps)
        tiles = [tensor_to_pil(x) for x in images]
    path = out / "samples" / f"step_{step:06d}.png"
    save_image(make_grid(tiles, ncols), path, overwrite=True)
    return path
