"""Training settings, each declared once: its default, its help, its check and whether a resume may change it.

`TrainConfig` is the one source. The `train` command derives its options (names, types, defaults,
help) from the fields' `Setting` (cli/training.py); state and model files store the config as JSON
(`config_to_json`, `config_from_json`); `check_config` validates it; `resumed` and `check_resume` hold
the policy of what `--resume` may change, for the command line and library callers alike.

Adding a training option is one `setting(...)` field here plus its use. The JSON keys are the field
names in this order: renaming or reordering a field changes every state and model file written after.
This module imports neither torch nor typer: `diffgen --help` reads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from enum import Enum
from functools import cache
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from diffgen.budget import DURATION_RULE, parse_duration
from diffgen.enums import Crop, Degrade, Precision, Prediction, ScheduleKind, Task
from diffgen.errors import OptionError

NO_VALUE = object()  # no task-specific default
DEVICE_HELP = "auto (the GPU if there is one), cpu, cuda or cuda:N."  # every command's --device


@dataclass(frozen=True)
class Range:
    """Allowed values low..high (high None: no bound), inclusive unless open at an end."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""  # said after the rule, e.g. what the bound means

    def holds(self, value) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def rule(self) -> str:
        if self.high is None:
            return f"must be at least {self.low}"
        return (f"must be in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
                + self.note)


@dataclass(frozen=True)
class OneOf:
    """Allowed values, listed."""

    values: tuple

    def holds(self, value) -> bool:
        return value in self.values

    def rule(self) -> str:
        *most, last = map(shown, self.values)
        return f"choose {', '.join(most)} or {last}"


@dataclass(frozen=True)
class Duration:
    """A length of time with units: 90s, 30m, 2h, 1h30m (budget.parse_duration)."""

    def holds(self, value) -> bool:
        try:
            return parse_duration(value) > 0
        except (TypeError, ValueError):
            return False

    def rule(self) -> str:
        return DURATION_RULE


@dataclass(frozen=True)
class Setting:
    """What `train` needs to know about a setting besides its type and default."""

    help: str  # one line of --help
    flags: tuple[str, ...] = ()  # the option's names; default: --field-name
    check: Range | OneOf | Duration | None = None  # None (an option left to its default) always passes
    check_task: Task | None = None  # the check applies to this task only
    upscale: Any = NO_VALUE  # the default for --task upscale where it differs (the bundled upscaler's recipe)
    upscale_only: str = ""  # why only --task upscale may change it from its default
    resumable: bool = False  # --resume may change it: where the data and run are, how long, hardware, reporting
    shown: str | None = None  # the default as --help writes it, where the value alone would mislead
    metavar: str | None = None
    cli: bool = True  # an option (or argument) of `diffgen train`
    argument: bool = False  # a positional argument rather than an option


def setting(default: Any = MISSING, help: str = "", **kwargs) -> Any:
    return field(default=default, metadata={"setting": Setting(help, **kwargs)})


AT_LEAST_1 = Range(1)


@dataclass(frozen=True)
class TrainConfig:
    data_dir: Path = setting(help="Folder of images; sub-folders are classes.", argument=True, metavar="DATA_DIR",
                             resumable=True)
    out_dir: Path = setting(Path("runs/latest"), "Run folder for the model, state, log and samples.",
                            flags=("--out", "-o"), resumable=True)
    task: Task = setting(Task.GENERATE, "generate: new images; upscale: super-resolution.")
    scale: int = setting(4, "How many times larger the output is (upscale task).", flags=("--scale", "-s"),
                         check=OneOf((2, 4, 8)), check_task=Task.UPSCALE)
    image_size: int = setting(32, "Training resolution (HR crop size when upscaling).", upscale=96, check=AT_LEAST_1)
    channels: int | None = setting(None, "1, 3 or 4; default: as most images have.", check=OneOf((1, 3, 4)))
    crop: Crop = setting(Crop.CENTER, "Centre crop once, or a random crop each time.")  # always random for upscaling
    flip: bool = setting(True, "Random horizontal flips (upscaling: all flips and quarter turns).",
                         flags=("--flip/--no-flip",))
    preset: str = setting("tiny", "U-Net size: tiny, small or base.")  # checked against unet.PRESETS by train
    base_channels: int | None = setting(None, "Width of the first level.", shown="the preset's")
    channel_mults: tuple[int, ...] | None = setting(None, "Width multiple per level, e.g. 1,2,2.", shown="the preset's")
    num_res_blocks: int | None = setting(None, "Residual blocks per level.", flags=("--res-blocks",), upscale=2,
                                         shown="the preset's")
    attention_levels: tuple[int, ...] | None = setting(None, "Levels with attention, e.g. 2 or 1,2.",
                                                       shown="the preset's")
    max_steps: int = setting(2000, "Optimisation steps.", check=AT_LEAST_1, resumable=True,
                             shown="2000, or the resumed run's")
    epochs: int | None = setting(None, "Passes over the data, instead of --max-steps.", check=AT_LEAST_1,
                                 resumable=True)  # overrides max_steps when set
    time_budget: str | None = setting(  # sets max_steps after the first steps, then is cleared (budget.py)
        None, "Train for this long instead (e.g. 90s, 30m, 2h, 1h30m): the steps are set from the pace of the "
        "first ones; with --resume, for this much longer.", check=Duration(), resumable=True, metavar="DURATION",
        shown="none: --max-steps")
    batch_size: int = setting(32, "Images per step (over all processes).", check=AT_LEAST_1)
    grad_accum: int = setting(1, "Split each batch into this many parts run one after another: less memory, the "
                              "same result (gradient accumulation).", check=AT_LEAST_1)
    lr: float = setting(2e-4, "Largest learning rate, reached after the warm-up (AdamW).")
    warmup_steps: int = setting(200, "Steps over which the learning rate rises from 0 (warm-up).")
    lr_decay: bool = setting(False, "Lower the learning rate to zero by the last step (cosine decay).",
                             flags=("--lr-decay/--no-lr-decay",))
    grad_clip: float = setting(1.0, "Largest size of one update; larger ones are scaled down (gradient-norm clipping).")
    ema_decay: float = setting(0.999, "How slowly the averaged weights that sampling uses follow training (EMA decay).")
    prediction: Prediction = setting(  # v learns fastest per CPU-hour (docs/training.md)
        Prediction.V, "What the network learns to output: the noise (eps), a blend of noise and image (v) or the "
        "clean image (x0); docs/training.md.", upscale=Prediction.X0)
    schedule: ScheduleKind = setting(ScheduleKind.COSINE, "How fast noise grows over the diffusion steps (noise schedule).")
    num_timesteps: int = setting(1000, "T, the length of the diffusion chain.", cli=False)
    min_snr_gamma: float = setting(5.0, "Weigh down the easy, almost clean steps in the loss (Min-SNR-γ, this is γ); "
                                   "0 turns it off.", upscale=0.0)
    pure_noise_share: float = setting(0.0, "Share of each batch trained at pure noise, where sampling starts; "
                                      "few-step upscales gain most.", upscale=0.5, check=Range(0, 1))
    random_shrink: float = setting(
        1.0, "Upscaling: cut each crop as if its photo were shrunk by a random factor between this and 1, for more "
        "varied detail; 1 turns it off.", check=Range(0, 1, low_open=True, note="; 1 turns it off"),
        upscale_only="generation resizes every image to one size")
    degrade: Degrade = setting(
        Degrade.NONE, "Upscaling: 'real' trains on inputs with random blur, noise and JPEG, so real photos upscale "
        "cleanly; 'none' on clean bicubic ones.", upscale_only="it degrades the low-resolution input")
    label_dropout: float = setting(0.1, "Share of images trained without their class, so that generate --guidance "
                                   "works (label dropout).", check=Range(0, 1, high_open=True))
    seed: int = setting(0, "Seed of weights, data order and noise.")
    save_every: int = setting(500, "Checkpoint every N steps.", check=AT_LEAST_1, resumable=True)
    sample_every: int = setting(1000, "Sample grid every N steps.", check=AT_LEAST_1, resumable=True)
    log_every: int = setting(50, "Log line every N steps.", check=AT_LEAST_1, resumable=True)
    sample_steps: int = setting(50, "DDIM steps of the sample grids.", cli=False, resumable=True)
    workers: int = setting(2, "Processes that read images when the data is too big for memory (DataLoader workers).",
                           resumable=True)
    memory_limit: int = setting(2 << 30, "Decode the data set into memory up to this many bytes, else stream it.",
                                cli=False, resumable=True)
    device: str = setting("auto", DEVICE_HELP, metavar="DEVICE",
                          resumable=True, shown="auto; --resume: the run's")
    precision: Precision = setting(
        Precision.AUTO, "Number format: auto is bfloat16 (bf16) on a GPU and float32 (fp32) on a CPU; bf16 trains "
        "about 1.2x faster on CPUs that compute it natively.", check=OneOf(tuple(Precision)), resumable=True, shown="auto; --resume: the run's")
    init_from: str | None = setting(None, "Fine-tune: start from this model (bundled name, file, run folder or Hub "
                                    "repo id), keeping its architecture and target.", metavar="MODEL")


def setting_of(f: Field) -> Setting:
    return f.metadata["setting"]


def settings() -> tuple[Field, ...]:
    return fields(TrainConfig)


@cache
def setting_types() -> dict[str, Any]:
    return get_type_hints(TrainConfig)


def option_name(f: Field) -> str:
    """'--lr', '--res-blocks', '--flip': how messages name a setting (its field name if it is no option)."""
    s = setting_of(f)
    if not s.cli:
        return f.name
    return s.flags[0].split("/")[0] if s.flags else "--" + f.name.replace("_", "-")


def shown(value) -> str:
    """A setting's value as messages write it: 'x0', not 'Prediction.X0'."""
    return str(getattr(value, "value", value))


UPSCALE_DEFAULTS = {f.name: setting_of(f).upscale for f in settings() if setting_of(f).upscale is not NO_VALUE}


# --- checks ---------------------------------------------------------------------------------------------------


def check_config(cfg: TrainConfig, world: int = 1) -> None:
    """Refuse a setting outside its declared range, naming the option; `world` is the number of processes."""
    for f in settings():
        s, value = setting_of(f), getattr(cfg, f.name)
        if s.check and value is not None and s.check_task in (None, cfg.task) and not s.check.holds(value):
            raise OptionError(f"{option_name(f)} {shown(value)}: {s.check.rule()}")
        if s.upscale_only and cfg.task is not Task.UPSCALE and value != f.default:
            raise OptionError(f"{option_name(f)}: only for --task upscale ({s.upscale_only})")
    check_given({key: getattr(cfg, key) for key in ("epochs", "time_budget")})  # max_steps always has a value
    if cfg.batch_size % (cfg.grad_accum * world):
        raise OptionError(f"--batch-size {cfg.batch_size}: must be a multiple of --grad-accum ({cfg.grad_accum}) "
                          f"times the number of processes ({world})")


LENGTH = ("epochs", "max_steps", "time_budget")  # the settings that say how long a run is: one at a time


def check_given(given: Mapping[str, Any]) -> None:
    if len(lengths := [key for key in LENGTH if given.get(key) is not None]) > 1:
        first, second = (option_name(next(f for f in settings() if f.name == key)) for key in lengths[:2])
        raise OptionError(f"{first} and {second}: give one or the other")


def new_config(given: Mapping[str, Any]) -> TrainConfig:
    """A new run's config from the settings given (by field name); the others take their defaults, or for
    --task upscale the upscaling recipe's (UPSCALE_DEFAULTS)."""
    check_given(given)
    upscaling = Task(given.get("task", Task.GENERATE)) is Task.UPSCALE
    return TrainConfig(**((UPSCALE_DEFAULTS if upscaling else {}) | dict(given)))


# --- resuming: what a resume may change ------------------------------------------------------------------------


def resumed(saved: TrainConfig, given: Mapping[str, Any]) -> TrainConfig:
    """The saved run's config with the settings given for its resume (by field name). Resumable ones replace
    the run's; any other must be the run's own value (the first command with --resume added still works)."""
    check_given(given)
    if given.keys() & set(LENGTH):  # a new length replaces the old, whichever way each is given
        given = {"max_steps": TrainConfig.max_steps, "epochs": None, "time_budget": None} | dict(given)
    asked = replace(saved, **given)
    check_resume(asked, saved)
    return asked


def check_resume(asked: TrainConfig, saved: TrainConfig) -> None:
    """Refuse to continue a run with a setting that is the run's own (not resumable) changed."""
    changed = [refusal(f, getattr(saved, f.name)) for f in settings()
               if not setting_of(f).resumable and getattr(asked, f.name) != getattr(saved, f.name)]
    if changed:
        raise OptionError(f"--resume: {', '.join(changed)} would change the run's own settings; leave them out to "
                          f"continue it, or start a new run in another --out (--init-from {asked.out_dir} starts "
                          f"from its weights)")


def refusal(f: Field, saved) -> str:
    """'--lr (the run's: 0.0002)', or for an on/off flag '--no-flip (the run's: --flip)'."""
    s = setting_of(f)
    if s.flags and "/" in s.flags[0]:
        on, off = s.flags[0].split("/")
        return f"{off if saved else on} (the run's: {on if saved else off})"
    return f"{option_name(f)} (the run's: {'none' if saved is None else shown(saved)})"


# --- JSON, as state and model files hold it ----------------------------------------------------------------------


def config_to_json(cfg: TrainConfig) -> str:
    return json.dumps({f.name: getattr(cfg, f.name) for f in settings()}, default=str)


# Settings every state file has held since the first version: a file without one is damaged, not old.
IN_EVERY_FILE = ("data_dir", "out_dir", "task", "prediction", "schedule")


def config_from_json(text: str) -> TrainConfig:
    """The config `config_to_json` wrote; settings it lacks (older files) take their defaults."""
    types = setting_types()
    d = json.loads(text)
    if missing := [key for key in IN_EVERY_FILE if key not in d]:
        raise KeyError(missing[0])  # a damaged file: state.damaged_state says so
    return TrainConfig(**{key: as_type(types[key], value) if key in types else value for key, value in d.items()})


def as_type(kind, value):
    """A JSON value as the declared type: an enum, a Path or a tuple; ValueError for a value not among the choices."""
    if value is None:
        return None
    if get_origin(kind) in (Union, UnionType):
        kind = next(arg for arg in get_args(kind) if arg is not type(None))
    base = get_origin(kind) or kind
    if isinstance(base, type) and issubclass(base, Enum | Path | tuple):
        return base(value)
    return value


def parse_int_list(option: str, text: str) -> tuple[int, ...]:
    """'1,2,2' as (1, 2, 2); an empty text is an empty tuple."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise OptionError(f"{option} {text}: give whole numbers separated by commas, e.g. 1,2,2") from None

