"""diffusers pipelines as diffgen models: an unconditional pipeline's UNet2DModel under diffgen's own samplers.

A pipeline is a folder (or Hub repo) with `model_index.json`, `unet/` (a UNet2DModel's `config.json` and
its weights as safetensors) and `scheduler/scheduler_config.json`, as `DDPMPipeline.save_pretrained` writes
it. diffgen reads the scheduler's β schedule, prediction type and number of training timesteps into its own
`Schedule` (`pipeline_spec`), and `DiffusersUNet` gives diffusers' network the call of diffgen's U-Net, so
`make_denoiser` and every sampler run over it unchanged. The scheduler's sampling settings (timestep spacing,
steps_offset, set_alpha_to_one, clip_sample, thresholding) belong to diffusers' own samplers and are not
used: diffgen's samplers pick their own timesteps and clip x0 to [-1, 1] as for diffgen's models.

The weights are read with safetensors only (a pickled `.bin` is refused, never opened), checked against a
network built from the config on the meta device before any memory is spent, as `checkpoint.load_model`
does. diffusers itself is imported only to build that network: the rest, `diffgen info` included, works
without it.
"""

from __future__ import annotations

import json
import math
import shlex
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from diffgen import hub
from diffgen.checkpoint import (
    LIMITS,
    MAX_LEVELS,
    MAX_WIDTH,
    WEIGHT_DTYPES,
    LoadedModel,
    ModelSpec,
    Task,
    check_spec,
    open_safetensors,
    shown,
    wrong_task,
)
from diffgen.errors import CheckpointError, DiffgenError
from diffgen.schedule import Prediction, Schedule, ScheduleKind, make_schedule
from diffgen.unet import UNetConfig

PIPELINE_FILE = "model_index.json"
UNET_CONFIG = "unet/config.json"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
UNET_PICKLE = "unet/diffusion_pytorch_model.bin"  # named in the refusal, never opened
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
INSTALL = 'pip install "diffgen[diffusers]"'
MAX_CONFIG_BYTES = 1_000_000  # a config file larger than this is not a config

# Schedulers of the discrete-time β schedules diffgen's Schedule holds (all share these config keys).
SCHEDULERS = {
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTIONS = {"epsilon": Prediction.EPS, "v_prediction": Prediction.V, "sample": Prediction.X0}
TIME_EMBEDDINGS = (None, "positional", "learned")  # those that take the timestep index; "fourier" takes σ


# --- finding a pipeline --------------------------------------------------------------------------------------

def pipeline_root(path: Path) -> Path | None:
    """The pipeline folder a --model path names: the folder, its model_index.json, or its UNet weights file
    (the path a loaded pipeline records, so that remake commands name it); None for anything else."""
    path = Path(path)
    if path.is_dir():
        return path if (path / PIPELINE_FILE).is_file() else None
    if path.name == PIPELINE_FILE and path.is_file():
        return path.parent
    root = path.parent.parent
    return root if path.parent.name == "unet" and (root / PIPELINE_FILE).is_file() else None


def weights_of(root: Path) -> Path:
    """A pipeline's UNet weights file: safetensors, or a refusal that names what is missing."""
    weights = Path(root) / UNET_WEIGHTS
    if weights.is_file():
        return weights
    if (Path(root) / UNET_PICKLE).exists():
        raise CheckpointError(f"{root}: the pipeline's UNet weights are a pickle ({UNET_PICKLE}), which diffgen never "
                              f"loads; convert them to {UNET_WEIGHTS} (diffusers: save_pretrained(..., "
                              "safe_serialization=True)) or use another model")
    raise CheckpointError(f"{root}: a diffusers pipeline without {UNET_WEIGHTS}; re-download it or use another model")


def hub_pipeline(repo_id: str, revision: str | None) -> Path | None:
    """The UNet weights of a diffusers pipeline repo, fetched with the pipeline's configs through the Hub cache;
    None when the repo is no pipeline (no model_index.json, or a diffgen model.safetensors already cached).

    Offline (HF_HUB_OFFLINE, or the Hub unreachable) only the cache answers, as for diffgen's models.
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, hub.MODEL_FILE, cache_dir=hub.hub_cache(), revision=revision)
    except (OSError, UnicodeDecodeError):  # a damaged cache: said by the download below
        cached = None
    if isinstance(cached, str):
        return None  # a diffgen model: no request spent asking for a model_index.json
    local_only = hub.hub_offline() or not hub.hub_reachable()
    index = fetch(repo_id, PIPELINE_FILE, revision, local_only, missing_ok=True)
    if index is None:
        return None
    for name in (UNET_CONFIG, SCHEDULER_CONFIG):
        fetch(repo_id, name, revision, local_only)
    weights = fetch(repo_id, UNET_WEIGHTS, revision, local_only, missing_ok=True)
    if weights is None:
        raise CheckpointError(f"{repo_id}: the pipeline has no {UNET_WEIGHTS}; diffgen loads safetensors weights "
                              f"only, never a pickle ({UNET_PICKLE}); use another model")
    return weights


def fetch(repo_id: str, name: str, revision: str | None, local_only: bool, *, missing_ok: bool = False) -> Path | None:
    """One file of a repo through the Hub cache; None (with missing_ok) when the repo has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    from diffgen import __version__

    try:
        return Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=hub.hub_cache(),
                                    local_files_only=local_only, library_name="diffgen", library_version=__version__))
    except LocalEntryNotFoundError:  # not cached while offline: for the first file, maybe not a pipeline
        if missing_ok and name == PIPELINE_FILE:
            return None
        revision_option = ["--revision", revision] if revision else []
        raise CheckpointError(f"{repo_id}: a diffusers pipeline whose {name} is not in the Hugging Face cache while "
                              f"offline; run once online, or download it with "
                              f"`{shlex.join(['hf', 'download', repo_id, *revision_option])}`") from None
    except EntryNotFoundError:
        if missing_ok:
            return None
        raise CheckpointError(f"{repo_id}: a diffusers pipeline without {name}; use another model") from None
    except (HfHubHTTPError, *hub.connection_errors()) as e:
        raise hub.download_error(e, repo_id, revision) from None
    except (OSError, UnicodeDecodeError) as e:
        raise hub.cache_error(e, repo_id) from None


# --- reading a pipeline's configs ---------------------------------------------------------------------------

def read_json(path: Path) -> dict:
    """A config file as a JSON object, or a CheckpointError saying why not."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{path}: over {MAX_CONFIG_BYTES:,} bytes, not a diffusers config; use another model")
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the diffusers pipeline; re-download it or use another model") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        why = getattr(e, "strerror", None) or "not valid JSON"
        raise CheckpointError(f"{path}: cannot read this diffusers config ({why}); re-download it or use another model") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: not a JSON object, so not a diffusers config; re-download it or use another model")
    return value


@dataclass(frozen=True)
class DiffusersSpec(ModelSpec):
    """A pipeline as diffgen sees it. `unet` is the diffgen U-Net of about the same shape, which the memory
    estimates read; the schedule is the pipeline's own β schedule, which `schedule` only names roughly."""

    beta_schedule: str = "linear"  # the scheduler's: linear, scaled_linear, squaredcos_cap_v2, or "trained" (its list)
    beta_start: float = 1e-4  # β_0 of the linear schedules
    beta_end: float = 0.02  # β_(T-1) of the linear schedules
    trained_betas: tuple[float, ...] = ()  # the scheduler's own β list, when it gives one

    def make_schedule(self) -> Schedule:
        return pipeline_schedule(self.beta_schedule, self.num_timesteps, self.beta_start, self.beta_end, self.trained_betas)


def pipeline_schedule(kind: str, T: int, beta_start: float, beta_end: float, trained: tuple[float, ...] = ()) -> Schedule:
    """The β schedule a diffusers scheduler config names, as diffusers computes it (here in float64)."""
    if kind == "squaredcos_cap_v2":
        return make_schedule(ScheduleKind.COSINE, T)  # the same formula (Nichol & Dhariwal), capped at 0.999 too
    if kind == "trained":
        betas = torch.tensor(trained, dtype=torch.float64)
    elif kind == "scaled_linear":  # linear in sqrt(β), the latent diffusion schedule
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return Schedule(kind=ScheduleKind.LINEAR, betas=betas, alphas_cumprod=torch.cumprod(1 - betas, dim=0))


def pipeline_spec(root: Path) -> DiffusersSpec:
    """The spec of the pipeline in `root`, from its three configs, each value checked (no diffusers needed)."""
    index, unet, scheduler = (read_json(Path(root) / name) for name in (PIPELINE_FILE, UNET_CONFIG, SCHEDULER_CONFIG))
    check_index(Path(root) / PIPELINE_FILE, index)
    try:
        schedule = schedule_fields(scheduler)
        image_size, channels, approx = unet_shape(unet)
    except ValueError as e:  # the message starts with the key: say which file holds it
        where = SCHEDULER_CONFIG if str(e).startswith("scheduler ") else UNET_CONFIG
        raise CheckpointError(f"{Path(root) / where}: {str(e).removeprefix('scheduler ')}; diffgen cannot run this "
                              "pipeline") from None
    extra = {"diffusers": {"pipeline": index.get("_class_name"), "scheduler": scheduler.get("_class_name"),
                           "prediction_type": scheduler.get("prediction_type", "epsilon"),
                           "version": index.get("_diffusers_version"), "unet": unet}}
    spec = DiffusersSpec(unet=approx, image_size=image_size, channels=channels, extra=extra, **schedule)
    try:
        check_spec(spec)  # diffgen's own limits, on the U-Net of about the same shape
    except ValueError as e:
        raise CheckpointError(f"{Path(root) / UNET_CONFIG}: a network beyond diffgen's limits ({e}); use another model") from None
    return spec


def check_index(path: Path, index: dict) -> None:
    """An unconditional pipeline: a UNet2DModel and a scheduler, nothing else (no VAE, no text encoder)."""
    pipeline = index.get("_class_name", "pipeline")
    unet, scheduler = index.get("unet"), index.get("scheduler")
    if not (isinstance(unet, list) and unet[-1:] == ["UNet2DModel"]):
        raise CheckpointError(f"{path}: a {shown(pipeline)} whose unet is {shown(unet)}; diffgen runs unconditional "
                              "pipelines of a UNet2DModel only")
    if not (isinstance(scheduler, list) and scheduler[-1:] and str(scheduler[-1]) in SCHEDULERS):
        raise CheckpointError(f"{path}: scheduler {shown(scheduler)}; diffgen reads the β schedule of "
                              "DDPM-family schedulers only (DDPMScheduler, DDIMScheduler, ...)")
    for name, value in index.items():
        if not name.startswith("_") and name not in ("unet", "scheduler") and value not in (None, [None, None]):
            raise CheckpointError(f"{path}: a {shown(pipeline)} with a {shown(name)} ({shown(value)}); diffgen runs "
                                  "unconditional pipelines of a UNet2DModel and a scheduler only")


def schedule_fields(config: dict) -> dict:
    """The spec's schedule fields from a scheduler config; ValueError("scheduler KEY ...") for what diffgen lacks.

    Only what defines the model's diffusion is read: the scheduler's sampling settings (spacing, Karras
    sigmas, clipping, ...) are its own sampler's, which diffgen's replace."""
    T = config.get("num_train_timesteps", 1000)
    check_whole("scheduler num_train_timesteps", T, *LIMITS["num_timesteps"])
    prediction = config.get("prediction_type", "epsilon")
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        raise ValueError(f"scheduler prediction_type {shown(prediction)}: diffgen supports {', '.join(PREDICTIONS)}")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler rescale_betas_zero_snr true: not supported (diffgen's schedules keep ᾱ above 0)")
    fields = {"num_timesteps": T, "prediction": PREDICTIONS[prediction]} | beta_fields(config, T)
    schedule = pipeline_schedule(fields["beta_schedule"], T, fields.get("beta_start", 0), fields.get("beta_end", 0),
                                 fields.get("trained_betas", ()))
    if not schedule.alphas_cumprod[-1] > torch.finfo(torch.float32).tiny:  # samplers compute in float32
        raise ValueError(f"scheduler beta_schedule {fields['beta_schedule']} with these betas: ᾱ reaches 0, which "
                         "diffgen's samplers cannot use")
    return fields


def beta_fields(config: dict, T: int) -> dict:
    """The β schedule: a trained list, or a named schedule (with its range, for the linear ones)."""
    trained = config.get("trained_betas")
    if trained is not None:
        if not (isinstance(trained, list) and len(trained) == T and all(is_beta(b) for b in trained)):
            raise ValueError(f"scheduler trained_betas: need {T} numbers in (0, 1)")
        return {"beta_schedule": "trained", "trained_betas": tuple(float(b) for b in trained)}
    kind = config.get("beta_schedule", "linear")
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"scheduler beta_schedule {shown(kind)}: diffgen supports {', '.join(BETA_SCHEDULES)}")
    if kind == "squaredcos_cap_v2":
        return {"beta_schedule": kind}  # no range: beta_start and beta_end are not used
    start, end = config.get("beta_start", 1e-4), config.get("beta_end", 0.02)
    if not (is_beta(start) and is_beta(end) and start <= end):
        raise ValueError(f"scheduler beta_start {shown(start)}, beta_end {shown(end)}: need 0 < beta_start <= beta_end < 1")
    return {"beta_schedule": kind, "beta_start": float(start), "beta_end": float(end)}


def is_beta(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


def check_whole(name: str, value, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} {shown(value)}: need a whole number from {low:,} to {high:,}")


def unet_shape(config: dict) -> tuple[int, int, UNetConfig]:
    """Image size, channels and the diffgen U-Net of about the same shape; ValueError for what diffgen lacks."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"_class_name {shown(config['_class_name'])}: diffgen runs a UNet2DModel only")
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]  # square: diffgen's images are
    check_whole("sample_size", size, *LIMITS["image_size"])
    channels = config.get("in_channels", 3)
    if channels not in (1, 3, 4) or type(channels) is not int:
        raise ValueError(f"in_channels {shown(channels)}: diffgen makes images of 1, 3 or 4 channels")
    if config.get("out_channels", channels) not in (channels, 2 * channels):  # 2x: a learned variance, unused
        raise ValueError(f"out_channels {shown(config.get('out_channels'))}: need in_channels ({channels}) or twice it")
    widths = config.get("block_out_channels")
    if not (isinstance(widths, (list, tuple)) and 1 <= len(widths) <= MAX_LEVELS):
        raise ValueError(f"block_out_channels {shown(widths)}: need a list of 1 to {MAX_LEVELS} widths")
    for width in widths:
        check_whole("block_out_channels", width, 1, MAX_WIDTH)
    layers = config.get("layers_per_block", 2)
    check_whole("layers_per_block", layers, *LIMITS["unet.num_res_blocks"])
    if size % 2 ** (len(widths) - 1):
        raise ValueError(f"sample_size {size}: not a multiple of {2 ** (len(widths) - 1)}, which the UNet's levels need")
    for key, allowed in (("class_embed_type", (None,)), ("num_class_embeds", (None, 0)),
                         ("time_embedding_type", TIME_EMBEDDINGS)):
        if config.get(key) not in allowed:
            raise ValueError(f"{key} {shown(config.get(key))}: diffgen runs unconditional UNets of the timestep index only")
    kinds = config.get("down_block_types")
    attention = tuple(i for i, kind in enumerate(kinds if isinstance(kinds, (list, tuple)) else ()) if "Attn" in str(kind))
    approx = UNetConfig(in_channels=channels, base_channels=widths[0], channel_mults=tuple(-(-w // widths[0]) for w in widths),
                        num_res_blocks=layers, attention_levels=attention, norm_groups=1, head_channels=widths[0])
    return size, channels, approx


# --- the network -------------------------------------------------------------------------------------------

class DiffusersUNet(nn.Module):
    """diffusers' UNet2DModel behind the call of diffgen's U-Net: (x_t, t, labels, cond) -> its prediction.

    A UNet with a learned variance outputs twice the channels; diffgen's samplers use the first half only."""

    def __init__(self, unet: nn.Module, channels: int):
        super().__init__()
        self.unet, self.channels = unet, channels

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        try:
            return self.unet(x, t, return_dict=False)[0][:, : self.channels]
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # a config diffusers built but cannot run: our inputs are well-formed
            raise CheckpointError(f"the pipeline's UNet2DModel fails on a {tuple(x.shape)} batch ({hub.first_line(e)}); "
                                  "its unet/config.json does not work in this diffusers; use another model") from None


def import_diffusers(name: str):
    """diffusers' UNet2DModel and its logging, or the one line that names the extra to install."""
    try:
        import diffusers
        from diffusers import UNet2DModel
    except ImportError:
        raise DiffgenError(f"{name}: a diffusers pipeline, which needs diffusers installed: {INSTALL}") from None
    return UNet2DModel, diffusers.utils.logging


@contextmanager
def quiet(logging):
    """diffusers' log warnings and Python's warnings silenced while it builds (the core never prints)."""
    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(before)


# Attention weights of diffusers before 0.14, which its own loader still renames on the way in.
OLD_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def current_name(name: str, expected: dict) -> str:
    if name in expected:
        return name
    for old, new in OLD_ATTENTION.items():
        name = name.replace(old, new)
    return name


def load_pipeline(path: Path, *, task: Task | None = None, device: str | torch.device = "cpu",
                  name: str | None = None) -> LoadedModel:
    """Load the pipeline a path names (see `pipeline_root`) as a LoadedModel whose path is its UNet weights."""
    root = pipeline_root(path)
    weights = weights_of(root)
    spec = pipeline_spec(root)
    if task is not None and task is not spec.task:
        raise wrong_task(name or str(root), spec, task)
    UNet2DModel, logging = import_diffusers(name or str(root))
    with quiet(logging):
        try:
            with torch.device("meta"):
                unet = UNet2DModel.from_config(spec.extra["diffusers"]["unet"])
        except Exception as e:  # a publisher's config that diffusers refuses: never an internal error
            raise CheckpointError(f"{root / UNET_CONFIG}: diffusers cannot build this UNet2DModel "
                                  f"({hub.first_line(e)}); use another model") from None
    unet.load_state_dict(read_weights(weights, unet), assign=True)
    model = DiffusersUNet(unet, spec.channels).eval().requires_grad_(False).to(device)
    return LoadedModel(spec=spec, model=model, path=weights)


def read_weights(path: Path, unet: nn.Module) -> dict[str, Tensor]:
    """The file's tensors as float32, after checking that they are exactly the network's, shape for shape."""
    expected = {name: tuple(t.shape) for name, t in unet.state_dict().items()}
    with open_safetensors(path) as f:
        found = {}
        for name in f.keys():
            sliced = f.get_slice(name)
            found[current_name(name, expected)] = (name, tuple(sliced.get_shape()) if sliced.get_dtype() in WEIGHT_DTYPES else None)
        if {key: shape for key, (_, shape) in found.items()} != expected:
            raise CheckpointError(f"{path}: the weights do not match the UNet in {UNET_CONFIG}; re-download the pipeline "
                                  "or use another model")
        return {key: f.get_tensor(name).float() for key, (name, _) in found.items()}


def parameter_count(path: Path) -> int:
    """The number of values in a safetensors file, from its header alone."""
    with open_safetensors(path) as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())


# --- saying what a pipeline is (diffgen info) ------------------------------------------------------------------

def describe(path: Path) -> dict:
    """`diffgen info`'s record of a pipeline: what it makes, its network and schedule, where it came from."""
    root = pipeline_root(path)
    weights = weights_of(root)
    spec = pipeline_spec(root)
    source = hub.origin(weights)
    if source["source"] == "file":
        source["model"] = str(root)  # the folder is what --model takes
    info = spec.extra["diffusers"]
    unet = info["unet"]
    model = hub.model_arg(source) if source["source"] == "hub" else str(root)
    colour = hub.COLOURS.get(spec.channels, f"{spec.channels}-channel")
    return {
        "kind": "diffusers", **source, "path": str(root), "weights": str(weights),
        "size_bytes": weights.stat().st_size, "sha256": hub.file_sha256(weights),
        "task": spec.task.value, "image_size": spec.image_size, "channels": spec.channels, "classes": [],
        "parameters": parameter_count(weights), "pipeline": info["pipeline"], "scheduler": info["scheduler"],
        "diffusers_version": info["version"],
        "config": {"beta_schedule": spec.beta_schedule, **linear_range(spec),
                   "num_timesteps": spec.num_timesteps, "prediction": spec.prediction.value,
                   "prediction_type": info["prediction_type"], "unet": unet},
        "usage": hub.usage(spec, model),
        "summary": f"A diffusers {info['pipeline']} (UNet2DModel) that generates {spec.image_size}×{spec.image_size} "
                   f"{colour} images, unconditionally.",
    }


def linear_range(spec: DiffusersSpec) -> dict:
    """beta_start and beta_end where the schedule has them (the linear ones)."""
    linear = spec.beta_schedule in ("linear", "scaled_linear")
    return {"beta_start": spec.beta_start, "beta_end": spec.beta_end} if linear else {}


def overview(info: dict) -> list[tuple[str, str]]:
    """`diffgen info`'s summary of `describe`'s record."""
    config, unet = info["config"], info["config"]["unet"]
    betas = f", β {config['beta_start']:g} to {config['beta_end']:g}" if "beta_start" in config else ""
    source = hub.source_text(info) if info["source"] == "hub" else "a local folder"
    widths = "-".join(map(str, unet["block_out_channels"]))
    return [
        ("what it does", info["summary"]),
        ("use it", info["usage"]),
        ("source", source),
        ("file", f"{info['weights']} ({info['size_bytes'] / 1e6:.1f} MB, sha256 {info['sha256'][:12]})"),
        ("network", f"{info['parameters'] / 1e6:.2f} M parameters; UNet2DModel of {widths} channels"),
        ("schedule", f"{config['beta_schedule']} β schedule of {config['num_timesteps']} steps{betas}, predicts "
                     f"{config['prediction_type']} ({config['prediction']}); sampled with diffgen's samplers, "
                     f"not the pipeline's {info['scheduler']}"),
        ("made with", f"diffusers {info['diffusers_version'] or '(version unknown)'}"),
    ]
