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
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.distributed import ReduceOp

from diffgen.batches import Batches, aux_batches, residual_scale
from diffgen.budget import Budget, Decision, Pace, parse_duration
from diffgen.checkpoint import LoadedModel, ModelSpec, Task, load_model, save_model
from diffgen.config import TrainConfig, check_config, check_resume
from diffgen.copies import Copies, Reference, check_copies, data_reference
from diffgen.data import Crop, Dataset, open_dataset
from diffgen.errors import DataError, DiffgenError, OptionError, TrainingInterrupted
from diffgen.events import Event, Finishing, Note, Sampled, Started, StepDone
from diffgen.generate import sample_batch
from diffgen.images import make_grid, save_image, tensor_to_pil, to_model_range
from diffgen.models import resolve
from diffgen.objective import DiffusionLoss, learning_rate, update_ema
from diffgen.runs import (
    append_log, check_run_dir, clear_leftovers, log_file, model_file, resume_command, run_lock, sample_file,
    state_file, truncate_log, writing,
)
from diffgen.runtime import Ranks, all_ranks, any_rank, barrier, local_device, process_group, stop_requests
from diffgen.spec import check_spec
from diffgen.state import read_state, restore_state, save_state, saved_spec, state_config, state_spec
from diffgen.step_memory import check_memory
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
    if src.task is Task.GENERATE and cfg.image_size != src.image_size:  # an upscaler's size is only its crops'
        notify(Note(f"training at {cfg.image_size}x{cfg.image_size}, the model was trained at {src.image_size}x"
                    f"{src.image_size}: --image-size {src.image_size} keeps its size"))
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
    command: str | None = None, clock: Callable[[], float] = time.perf_counter,
) -> Trained:
    """Train (or with `resume`, continue) a model; `command` is recorded in a new model's provenance. `clock`
    times the steps (for the expected duration and --time-budget, which counts from here)."""
    t0, device = clock(), local_device(cfg.device)
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
            return train_loop(cfg, data, spec, start, out, device, ranks, notify, resume, timer=(clock, t0))


def open_run(
    cfg: TrainConfig, spec: ModelSpec, start: torch.nn.Module | None, out: Path, device: torch.device, ranks: Ranks,
    notify: Callable[[Event], None], resume: bool,
) -> tuple[ModelSpec, torch.nn.Module, torch.nn.Module, torch.optim.Optimizer, int]:
    """(spec, model, EMA, optimizer, step) of a new run, or restored from the run folder's state."""
    state = read_state(state_file(out)) if resume else None
    if state is not None:
        spec = saved_spec(state[1])  # the run's own network, e.g. the one --init-from started it from
    model = on_device(UNet(spec.unet) if start is None else start, device)
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


def on_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network on the training device: on a CPU in channels-last, the layout oneDNN's convolutions work
    in, so that they do not reorder their inputs and gradients on every call (benchmarks/train_throughput.py)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


def train_loop(
    cfg: TrainConfig, data: Dataset, spec: ModelSpec, start: torch.nn.Module | None, out: Path,
    device: torch.device, ranks: Ranks, notify: Callable[[Event], None], resume: bool,
    timer: tuple[Callable[[], float], float] = (time.perf_counter, 0.0),
) -> Trained:
    """The training loop of `train`, on a checked run folder that this process holds; `start` is the
    --init-from model, else the network is new; `timer` is the clock and when `train` started."""
    torch.manual_seed(cfg.seed)
    spec, model, ema, opt, step = open_run(cfg, spec, start, out, device, ranks, notify, resume)
    batches = Batches(data, cfg, ranks, first_k=step * cfg.grad_accum, on_skip=lambda text: notify(Note(text)))
    if cfg.task is Task.UPSCALE and not resume and not cfg.init_from:
        spec = replace(spec, residual_scale=residual_scale(aux_batches(data, cfg, cfg.batch_size), cfg))
    if ranks.main:
        sample_file(out, 0).parent.mkdir(parents=True, exist_ok=True)
    net = torch.nn.parallel.DistributedDataParallel(model) if ranks.world > 1 else model
    loss_fn = DiffusionLoss.of(spec, cfg)
    # The copy check's training images, compared with every grid's samples; made before any timing starts.
    reference = data_reference(data) if ranks.main and cfg.task is Task.GENERATE else None
    budget = make_budget(cfg, LoadedModel(spec, ema.eval(), out), data, ranks, step, timer)
    if budget:  # until the first steps are timed, a placeholder: the default length from here
        cfg = replace(cfg, max_steps=step + TrainConfig.max_steps)
    if step < cfg.max_steps:  # else a resumed run that has finished: the caller says so
        notify(Started(len(data), spec.class_names, cfg.image_size, spec.channels, cfg.task is Task.UPSCALE,
                       str(device), out, step, cfg.max_steps, budget.seconds if budget else None))

    def checkpoint(at: int) -> None:
        if ranks.main:
            with writing(state_file(out), cfg):
                save_state(state_file(out), model, ema, opt, replace(spec, train_steps=at), cfg, at)
            with writing(model_file(out), cfg):
                save_model(model_file(out), ema, replace(spec, train_steps=at))

    first, smoothed, samples, pace = step, None, None, Pace(step, cfg.max_steps, timer[0])
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
            ips = (step - first) * cfg.batch_size / max(pace.clock() - pace.t0, 1e-9)
            notify(StepDone(step, cfg.max_steps, smoothed, ips))
            if not budget and (estimate := pace.after(step)):
                notify(estimate)
            record = {"step": step}  # log.jsonl's line for this step, written when it holds more
            if step % cfg.log_every == 0:
                record |= {"loss": loss, "lr": learning_rate(cfg, step - 1), "images_per_s": ips}
            sampling = ranks.main and (step % cfg.sample_every == 0 or step == cfg.max_steps)
            if step == cfg.max_steps:
                notify(Finishing(step, grid_size(spec, data) if sampling else 0, cfg.sample_steps))
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                checkpoint(step)
            if sampling:  # after the checkpoint: a run stopped while sampling has lost nothing
                loaded = LoadedModel(replace(spec, train_steps=step), ema.eval(), out)
                samples, copies = write_samples(out, loaded, data, cfg, step, reference)
                record |= sampled(step, samples, copies, notify)
            stopping = any_rank(bool(stop), ranks)
            if budget and not stopping and (decision := budget.after(step, cfg.max_steps)):
                if decision.total != cfg.max_steps:
                    record["budget_steps"] = decision.total
                cfg, spec = budgeted(cfg, spec, decision, first, notify)
            if ranks.main and len(record) > 1:
                append_log(log_file(out), record, cfg)
            if stopping:
                checkpoint(step)
                raise TrainingInterrupted(f"stopped by {stop[0] if stop else 'a signal'} at step {step}; saved. "
                                          f"Continue with: {resume_command(cfg)}")
    return Trained(model_file(out), data.skipped + tuple(batches.skipped), replace(spec, train_steps=step),
                   step, step - first, smoothed, pace.clock() - pace.t0, samples)


def make_budget(cfg: TrainConfig, loaded: LoadedModel, data: Dataset, ranks: Ranks, step: int,
                timer: tuple[Callable[[], float], float]) -> Budget | None:
    """--time-budget's. Until a sample grid has been timed, its time is one denoising pass of its images, timed
    now by rank 0, times its sampling steps (upscaling: as many steps as its forward passes make up, a step's
    forward and backward pass being about three forward passes)."""
    if not cfg.time_budget:
        return None
    clock, images = timer[0], grid_size(loaded.spec, data)
    if loaded.spec.task is Task.UPSCALE:
        guess = {"grid_steps": images * cfg.sample_steps / (3 * cfg.batch_size / ranks.world)}
    else:
        guess = {"grid_seconds": grid_pass(loaded, images, clock) * cfg.sample_steps if ranks.main else 0.0}
    return Budget(parse_duration(cfg.time_budget), step, sample_every=cfg.sample_every, save_every=cfg.save_every,
                  t0=timer[1], clock=clock, **guess,
                  agree=lambda value: all_ranks(value, ranks, ReduceOp.MAX if ranks.world > 1 else None))


def grid_pass(loaded: LoadedModel, n: int, clock: Callable[[], float]) -> float:
    """Seconds of one denoising pass of n images: the mean of two, after one of a single image (which warms up)."""
    labels = [0] * n if loaded.spec.class_names else None
    sample_batch(loaded, [0], labels and labels[:1], steps=1)
    start = clock()
    sample_batch(loaded, list(range(n)), labels, steps=2)
    return (clock() - start) / 2


def budgeted(cfg: TrainConfig, spec: ModelSpec, decision: Decision, first: int,
             notify: Callable[[Event], None]) -> tuple[TrainConfig, ModelSpec]:
    """The run's config and spec once the budget has set its last step. The config keeps the steps, not the
    budget, so that a resume without --time-budget goes on to the same last step; the model records both."""
    if decision.estimate:
        notify(decision.estimate)
    record = {"budget": cfg.time_budget or spec.extra["time_budget"]["budget"], "from_step": first,
              "steps": decision.total}
    return (replace(cfg, max_steps=decision.total, time_budget=None),
            replace(spec, extra=spec.extra | {"time_budget": record}))


def sampled(step: int, path: Path, copies: Copies | None, notify: Callable[[Event], None]) -> dict:
    """Say that a grid was written, warn when its samples are mostly copies; what log.jsonl records of it."""
    notify(Sampled(step, path, copies))
    if copies is None:
        return {}
    if copies.memorising:
        notify(Note(f"step {step}: {copies.copies} of the {copies.images} samples are near-copies of training images: "
                    "the model is memorising its data; more images, fewer steps or a smaller --preset help"))
    return copies.record()


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


def write_samples(out: Path, loaded: LoadedModel, data: Dataset, cfg: TrainConfig, step: int,
                  reference: Reference | None) -> tuple[Path, Copies | None]:
    """A fixed-seed grid from the EMA model: one row per class, or bicubic | model | HR rows; returns its path and,
    for generation, how many of its images are near-copies of `reference`'s training images (copies.py)."""
    spec, copies = loaded.spec, None
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
        tiles, copies = [tensor_to_pil(x) for x in images], check_copies(images.cpu(), reference)
    path = sample_file(out, step)
    save_image(make_grid(tiles, ncols), path, overwrite=True)
    return path, copies
