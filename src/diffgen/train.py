"""Training a diffusion model on a folder of images, and resuming it exactly.

`train` checks the settings (config.py), the run folder (runs.py) and the data, builds the model (or
takes the --init-from one), then runs the loop: each step learns from `batches.py`'s micro-batches with
`objective.py`'s loss, the EMA of the weights is what `RUN_DIR/model.safetensors` holds and
`RUN_DIR/state.safetensors` holds what resuming needs (state.py). Every batch is a pure function of
the seed and the step, so resuming is exact and `torchrun` ranks each take a slice of the same batch.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from diffgen.batches import Batches, aux_batches, residual_scale
from diffgen.checkpoint import LoadedModel, ModelSpec, Task, check_spec, load_model, save_model
from diffgen.config import TrainConfig, check_config, check_resume
from diffgen.data import Crop, Dataset, open_dataset
from diffgen.errors import DataError, DiffgenError, OptionError, TrainingInterrupted
from diffgen.events import Estimate, Event, Finishing, Note, Started, StepDone
from diffgen.generate import sample_batch
from diffgen.images import make_grid, save_image, tensor_to_pil, to_model_range
from diffgen.memory import available_memory
from diffgen.models import resolve
from diffgen.objective import DiffusionLoss, learning_rate, trains_in_bf16, update_ema
from diffgen.runs import (
    append_log, check_run_dir, clear_leftovers, log_file, model_file, resume_command, run_lock, sample_file,
    state_file, truncate_log, writing,
)
from diffgen.runtime import Ranks, all_ranks, any_rank, barrier, local_device, process_group, stop_requests
from diffgen.state import read_state, restore_state, save_state, saved_spec, state_config, state_spec
from diffgen.text import gib
from diffgen.transforms import downsample, upsample
from diffgen.unet import PRESETS, UNet, UNetConfig, preset
from diffgen.upscale import Sampling, upscale_tensor


def check_options(cfg: TrainConfig, ranks: Ranks) -> None:
    if cfg.preset not in PRESETS:
        raise OptionError(f"--preset {cfg.preset}: choose one of {', '.join(PRESETS)}")
    check_config(cfg, ranks.world)


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
    device = local_device(cfg.device)
    with process_group(device) as ranks:
        notify = (callback or (lambda event: None)) if ranks.main else (lambda event: None)
        check_options(cfg, ranks)
        out = Path(cfg.out_dir)
        check_run_dir(out, Path(cfg.data_dir), resume)
        if resume:  # a library caller too may change only the settings declared resumable (config.py)
            check_resume(cfg, state_config(state_file(out)))
        barrier(ranks)  # every rank has checked --out before rank 0 writes to it
        if resume and cfg.channels is None:  # the run's own colours, whatever the data's majority is now
            cfg = replace(cfg, channels=state_spec(state_file(out)).channels)
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
    state = read_state(state_file(out)) if resume else None
    if state is not None:
        spec = saved_spec(state[1])  # the run's own network, e.g. the one --init-from started it from
    model = (UNet(spec.unet) if start is None else start).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    step = 0
    if state is not None:
        step = restore_state(state, model, ema, opt)
        truncate_log(log_file(out), step)
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
        sample_file(out, 0).parent.mkdir(parents=True, exist_ok=True)
    net = torch.nn.parallel.DistributedDataParallel(model) if ranks.world > 1 else model
    loss_fn = DiffusionLoss.of(spec, cfg)
    if step < cfg.max_steps:  # else a resumed run that has finished: the caller says so
        notify(Started(len(data), spec.class_names, cfg.image_size, spec.channels, cfg.task is Task.UPSCALE,
                       str(device), out, step, cfg.max_steps))

    def checkpoint(at: int) -> None:
        if ranks.main:
            with writing(state_file(out), cfg):
                save_state(state_file(out), model, ema, opt, replace(spec, train_steps=at), cfg, at)
            with writing(model_file(out), cfg):
                save_model(model_file(out), ema, replace(spec, train_steps=at))

    first, smoothed, samples, pace = step, None, None, Pace(step, cfg.max_steps)
    with stop_requests() as stop:
        while step < cfg.max_steps:
            loss = all_ranks(train_step(net, opt, batches, spec, loss_fn, cfg, step), ranks)
            if not math.isfinite(loss):
                raise DiffgenError(
                    f"{out}: the loss became {loss} at step {step + 1}; the last good checkpoint is kept. "
                    "Lower --lr and resume with --resume"
                )
            update_ema(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
            step += 1
            smoothed = loss if smoothed is None else 0.98 * smoothed + 0.02 * loss
            ips = (step - first) * cfg.batch_size / (pace.clock() - pace.t0)
            notify(StepDone(step, cfg.max_steps, smoothed, ips))
            if estimate := pace.after(step):
                notify(estimate)
            if ranks.main and step % cfg.log_every == 0:
                record = {"step": step, "loss": loss, "lr": learning_rate(cfg, step - 1), "images_per_s": ips}
                append_log(log_file(out), record, cfg)
            sampling = ranks.main and (step % cfg.sample_every == 0 or step == cfg.max_steps)
            if step == cfg.max_steps:
                notify(Finishing(step, grid_size(spec, data) if sampling else 0, cfg.sample_steps))
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                checkpoint(step)
            if sampling:  # after the checkpoint: a run stopped while sampling has lost nothing
                samples = write_samples(out, LoadedModel(replace(spec, train_steps=step), ema.eval(), out), data, cfg, step)
            if any_rank(bool(stop), ranks):
                checkpoint(step)
                raise TrainingInterrupted(f"stopped by {stop[0] if stop else 'a signal'} at step {step}; saved. "
                                          f"Continue with: {resume_command(cfg)}")
    return Trained(model_file(out), data.skipped + tuple(batches.skipped), replace(spec, train_steps=step),
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


def train_step(net, opt, batches: Batches, spec: ModelSpec, loss_fn: DiffusionLoss, cfg: TrainConfig, step: int) -> float:
    """One optimisation step over `grad_accum` micro-batches; returns this rank's mean loss."""
    net.train()
    for group in opt.param_groups:
        group["lr"] = learning_rate(cfg, step)
    opt.zero_grad(set_to_none=True)
    total, s = 0.0, batches.my_slice()
    for j in range(cfg.grad_accum):
        inputs, g = batches.inputs(step * cfg.grad_accum + j, spec)
        loss = loss_fn(net, inputs, g, s, batches.micro) / cfg.grad_accum
        loss.backward()
        total += loss.item()
    if math.isfinite(total):
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
    return total


def check_data(data: Dataset, cfg: TrainConfig) -> None:
    # Upscaling draws many crops from each image, so only generation needs a batch of distinct images.
    if cfg.task is Task.GENERATE and len(data) < cfg.batch_size // cfg.grad_accum:
        raise DataError(
            f"{cfg.data_dir}: {len(data)} image(s) is fewer than one batch; lower --batch-size or add images"
        )


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
    path = sample_file(out, step)
    save_image(make_grid(tiles, ncols), path, overwrite=True)
    return path
