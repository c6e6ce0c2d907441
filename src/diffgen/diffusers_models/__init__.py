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

import shlex
from pathlib import Path

from diffgen import hub
from diffgen.errors import CheckpointError
from diffgen.runs import MODEL
from diffgen.schedule import Prediction

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
        cached = try_to_load_from_cache(repo_id, MODEL, cache_dir=hub.hub_cache(), revision=revision)
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
