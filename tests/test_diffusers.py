"""diffusers pipelines as models: diffgen's DDIM against diffusers' DDIMPipeline, the schedule mapping, refusals,
offline loading by repo id, `diffgen info`. Pipelines here are tiny random UNet2DModels (8x8, 8-16 channels)."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffgen import diffusers_models, hub, provenance
from diffgen.diffusers_models import spec as diffusers_spec
from diffgen.checkpoint import Task
from diffgen.cli import app
from diffgen.denoiser import make_denoiser
from diffgen.errors import CheckpointError, DiffgenError
from diffgen.generate import image_seed, sample_batch
from diffgen.models import open_model, resolve
from diffgen.samplers import Sampler, Spacing, randn_like, sample_ddim, timesteps

diffusers = pytest.importorskip("diffusers")

STEPS = 10
COMMIT = "c" * 40


def tiny_unet(seed: int = 0) -> "diffusers.UNet2DModel":
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8,
    )


def ddim_scheduler(prediction: str = "epsilon", schedule: str = "linear", clip: bool = True) -> "diffusers.DDIMScheduler":
    """A DDIMScheduler set to compute what diffgen's DDIM computes (see test_ddim_matches_diffusers)."""
    return diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule=schedule, prediction_type=prediction,
                                   timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=True,
                                   clip_sample=clip, clip_sample_range=1.0)


def save_pipeline(folder: Path, **scheduler) -> "diffusers.DDIMPipeline":
    pipe = diffusers.DDIMPipeline(unet=tiny_unet(), scheduler=ddim_scheduler(**scheduler))
    pipe.save_pretrained(folder, safe_serialization=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipeline(tmp_path) -> Path:
    save_pipeline(tmp_path / "pipe")
    return tmp_path / "pipe"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize("clip", [True, False], ids=["clipped", "unclipped"])
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_matches_diffusers(tmp_path, prediction, schedule, clip):
    """diffgen's DDIM with η = 0 from the same noise gives diffusers' DDIMPipeline output to 5e-5 (of [0, 1], an
    8-bit level is 3.9e-3).

    Both compute the same thing when diffusers' scheduler is set so: trailing timestep spacing (its step to
    t - T/steps is then the next timestep, as in diffgen's chain), steps_offset 0, set_alpha_to_one (the last
    step lands on ᾱ = 1, diffgen's t = -1), and, with clipping, use_clipped_model_output (ε re-derived from
    the clipped x0, as diffgen does). diffgen's schedule is in float64, diffusers' in float32: they differ by up to
    3e-6 here, and float32 rounding over the steps adds up to about 2e-5 (diffusers 0.42)."""
    pipe = save_pipeline(tmp_path / "pipe", prediction=prediction, schedule=schedule, clip=clip)
    loaded = open_model(str(tmp_path / "pipe"), Task.GENERATE)
    seeds = [image_seed(0, i) for i in range(2)]
    schedule_ = loaded.spec.make_schedule()
    pipe.scheduler.set_timesteps(STEPS)
    assert pipe.scheduler.timesteps.tolist() == timesteps(schedule_, STEPS, Spacing.TRAILING)[:-1]
    expected = pipe(batch_size=2, generator=[torch.Generator().manual_seed(s) for s in seeds], eta=0.0,
                    num_inference_steps=STEPS, use_clipped_model_output=True, output_type="np").images
    expected = torch.from_numpy(expected).permute(0, 3, 1, 2)  # "np" is (B, H, W, C) in every diffusers version
    if clip:  # generate's own path, which clips x0 to [-1, 1]
        x = sample_batch(loaded, seeds, None, steps=STEPS, sampler=Sampler.DDIM, spacing=Spacing.TRAILING)
    else:
        denoise = make_denoiser(loaded.model, schedule_, loaded.spec.prediction)
        noise = randn_like(torch.empty(2, 3, 8, 8), [torch.Generator().manual_seed(s) for s in seeds])
        x = sample_ddim(denoise, noise, schedule_, timesteps(schedule_, STEPS, Spacing.TRAILING))
    assert expected.std() > 0.05  # images, not a constant
    torch.testing.assert_close((x / 2 + 0.5).clamp(0, 1), expected, atol=5e-5, rtol=0)


@pytest.mark.parametrize("kind, extra", [("linear", {}), ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
                                         ("squaredcos_cap_v2", {})])
def test_schedules_are_diffusers_own(kind, extra):
    theirs = diffusers.DDPMScheduler(num_train_timesteps=500, beta_schedule=kind, **extra)
    fields = diffusers_spec.schedule_fields(dict(theirs.config))
    ours = diffusers_spec.DiffusersSpec(unet=diffusers_spec.unet_shape(dict(tiny_unet().config))[2], **fields)
    torch.testing.assert_close(ours.make_schedule().alphas_cumprod.float(), theirs.alphas_cumprod, atol=1e-6, rtol=1e-5)
    trained = diffusers_spec.schedule_fields({"num_train_timesteps": 500, "trained_betas": theirs.betas.tolist()})
    assert trained["beta_schedule"] == "trained" and len(trained["trained_betas"]) == 500


def test_sampling_settings_of_the_scheduler_are_not_the_models(pipeline):
    """Karras sigmas are a setting of diffusers' sampler; a cosine schedule has no β range to check."""
    edit_json(pipeline / diffusers_models.SCHEDULER_CONFIG, beta_schedule="squaredcos_cap_v2", beta_start="unused",
              use_karras_sigmas=True, timestep_spacing="leading", clip_sample=False)
    assert open_model(str(pipeline), Task.GENERATE).spec.beta_schedule == "squaredcos_cap_v2"
    record = provenance.describe(pipeline)
    assert "beta_start" not in record["config"] and ", β" not in dict(provenance.overview(record))["schedule"]


def test_generate_command_runs_unipc_over_a_pipeline(pipeline, tmp_path):
    r = invoke("generate", "--model", pipeline, "--sampler", "unipc", "--steps", STEPS, "--n", 2, "--out", tmp_path / "o",
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "o" / "00001.png") as img:
        assert (img.size, img.mode) == ((8, 8), "RGB")
        remake, weights = img.text["remake"], img.text["sha256"]
    assert weights == hashlib.sha256((pipeline / diffusers_models.UNET_WEIGHTS).read_bytes()).hexdigest()[:12]
    # The remake command names the pipeline by its UNet's weights file, which loads the whole pipeline again.
    from diffgen import generate

    api = generate(2, str(pipeline), sampler="unipc", steps=STEPS, device="cpu")  # the API gives the same pixels
    assert np.array_equal(np.asarray(api[1]), np.asarray(Image.open(tmp_path / "o" / "00001.png")))
    model = remake.split("--model ")[1].split()[0]
    assert resolve(model, Task.GENERATE) == pipeline / diffusers_models.UNET_WEIGHTS
    assert open_model(model, Task.GENERATE).spec == open_model(str(pipeline), Task.GENERATE).spec


def test_old_attention_names_load(pipeline, tmp_path):
    """Pipelines saved before diffusers 0.14 name attention weights query/key/value/proj_attn."""
    from safetensors.torch import load_file, save_file

    weights = pipeline / diffusers_models.UNET_WEIGHTS
    tensors = load_file(weights)
    old = {name.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."): t for name, t in tensors.items()}
    assert old.keys() != tensors.keys()
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([500])
    before = open_model(str(pipeline), Task.GENERATE).model(x, t)
    save_file(old, weights)
    assert torch.equal(open_model(str(pipeline), Task.GENERATE).model(x, t), before)


BAD_SETTINGS = [
    (diffusers_models.SCHEDULER_CONFIG, {"beta_schedule": "sigmoid"}, "beta_schedule \"sigmoid\": diffgen supports"),
    (diffusers_models.SCHEDULER_CONFIG, {"prediction_type": "flow"}, "prediction_type \"flow\""),
    (diffusers_models.SCHEDULER_CONFIG, {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr true: not supported"),
    (diffusers_models.SCHEDULER_CONFIG, {"num_train_timesteps": 10**9}, "num_train_timesteps 1000000000"),
    (diffusers_models.SCHEDULER_CONFIG, {"beta_start": 0.5, "beta_end": 0.1}, "need 0 < beta_start <= beta_end < 1"),
    (diffusers_models.SCHEDULER_CONFIG, {"beta_schedule": "scaled_linear", "beta_start": 0.9, "beta_end": 0.99},
     "ᾱ reaches 0"),
    (diffusers_models.SCHEDULER_CONFIG, {"trained_betas": [0.5] * 999}, "trained_betas: need 1000 numbers"),
    (diffusers_models.UNET_CONFIG, {"num_class_embeds": 10}, "num_class_embeds 10: diffgen runs unconditional"),
    (diffusers_models.UNET_CONFIG, {"sample_size": [8, 16]}, "sample_size [8, 16]"),
    (diffusers_models.UNET_CONFIG, {"block_out_channels": [8, 10**6]}, "block_out_channels 1000000"),
    (diffusers_models.UNET_CONFIG, {"block_out_channels": [8, 32]}, "weights do not match the UNet"),
    (diffusers_models.UNET_CONFIG, {"down_block_types": ["NoSuchBlock2D", "DownBlock2D"]}, "diffusers cannot build"),
    (diffusers_models.PIPELINE_FILE, {"vqvae": ["diffusers", "VQModel"]}, "with a \"vqvae\""),
    (diffusers_models.PIPELINE_FILE, {"unet": ["diffusers", "UNet2DConditionModel"]}, "UNet2DModel only"),
    (diffusers_models.PIPELINE_FILE, {"scheduler": ["diffusers", "ScoreSdeVeScheduler"]}, "DDPM-family schedulers"),
    (diffusers_models.PIPELINE_FILE, {"scheduler": ["diffusers", ["a list"]]}, "DDPM-family schedulers"),
    (diffusers_models.SCHEDULER_CONFIG, {"prediction_type": ["epsilon"]}, "prediction_type [\"epsilon\"]"),
    (diffusers_models.UNET_CONFIG, {"down_block_types": 7}, "diffusers cannot build"),
]


@pytest.mark.parametrize("file, change, message", BAD_SETTINGS, ids=[m.split(":")[0][:30] for _, _, m in BAD_SETTINGS])
def test_unsupported_settings_are_one_clear_line(pipeline, file, change, message):
    edit_json(pipeline / file, **change)
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        open_model(str(pipeline), Task.GENERATE)
    assert "\n" not in str(caught.value)


def test_a_unet_that_builds_but_cannot_run_is_one_line(pipeline, tmp_path):
    edit_json(pipeline / diffusers_models.UNET_CONFIG, freq_shift=None)  # built, then fails on its first input
    r = invoke("generate", "--model", pipeline, "--n", 1, "--steps", 1, "--out", tmp_path / "o")
    assert r.exit_code == 1 and "does not work" in r.output and "internal error" not in r.output, r.output


def test_pickled_weights_are_refused_unopened(pipeline, tmp_path):
    (pipeline / diffusers_models.UNET_WEIGHTS).unlink()
    (pipeline / diffusers_models.UNET_PICKLE).write_bytes(b"not even a pickle")
    r = invoke("generate", "--model", pipeline, "--n", 1, "--out", tmp_path / "o")
    assert r.exit_code == 1 and "a pickle" in r.output and "never" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_without_diffusers_one_line_names_the_extra(pipeline, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` raises ImportError
    with pytest.raises(DiffgenError, match=r'pip install "diffgen\[diffusers\]"'):
        open_model(str(pipeline), Task.GENERATE)
    r = invoke("generate", "--model", pipeline, "--n", 1, "--out", tmp_path / "o")
    assert r.exit_code == 1 and 'pip install "diffgen[diffusers]"' in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert provenance.describe(pipeline)["parameters"] > 0  # info needs no diffusers


def test_a_pipeline_is_a_generate_model(pipeline):
    with pytest.raises(CheckpointError, match="is a generate model.*diffgen generate --model"):
        open_model(str(pipeline), Task.UPSCALE)


def put_in_cache(hf_home: Path, repo_id: str, folder: Path, commit: str) -> None:
    """A folder (sub-folders too) as one commit of a repo in the Hub cache, laid out as huggingface_hub does."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    for file in (f for f in folder.rglob("*") if f.is_file()):
        blob = repo_dir / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blob)
        link = repo_dir / "snapshots" / commit / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * len(file.relative_to(folder).parts)) / "../blobs" / blob.name)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return hf_home


def test_offline_by_repo_id_from_the_cache(pipeline, offline_hub, tmp_path, monkeypatch):
    put_in_cache(offline_hub, "user/pipe", pipeline, COMMIT)
    monkeypatch.chdir(tmp_path)  # where no folder user/ exists
    loaded, local = open_model("user/pipe", Task.GENERATE), open_model(str(pipeline), Task.GENERATE)
    assert loaded.path.parts[-3:] == (COMMIT, "unet", "diffusion_pytorch_model.safetensors")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 900])
    assert torch.equal(loaded.model(x, t), local.model(x, t)) and loaded.spec == local.spec
    assert provenance.model_identity(loaded.path) == {"model": "user/pipe", "revision": "main", "commit": COMMIT}
    record = provenance.describe(resolve("user/pipe", Task.GENERATE))
    assert (record["source"], record["usage"]) == ("hub", "diffgen generate --model user/pipe --n 16 --out generated/")
    with pytest.raises(CheckpointError, match="user/other: .*HF_HUB_OFFLINE"):
        open_model("user/other", Task.GENERATE)


def test_info_says_what_the_pipeline_is(pipeline):
    record = provenance.describe(pipeline)
    unet = tiny_unet()
    assert record["parameters"] == sum(p.numel() for p in unet.parameters())
    assert (record["pipeline"], record["scheduler"], record["image_size"], record["channels"]) == \
        ("DDIMPipeline", "DDIMScheduler", 8, 3)
    assert (record["config"]["beta_schedule"], record["config"]["prediction"]) == ("linear", "eps")
    assert record["source"] == "file" and record["model"] == str(pipeline)
    rows = dict(provenance.overview(record))
    assert "UNet2DModel of 8-16 channels" in rows["network"] and "linear β schedule of 1000 steps" in rows["schedule"]
    r = invoke("info", pipeline)
    assert r.exit_code == 0 and "DDIMPipeline" in r.output, r.output
    r = invoke("info", pipeline, "--json")
    assert r.exit_code == 0 and json.loads(r.output)["parameters"] == record["parameters"]


def test_learned_variance_channels_are_dropped(tmp_path):
    """A UNet of iDDPM's learned variance outputs 2C channels: the samplers take the first C (the prediction)."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=6, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(variance_type="learned_range"))
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    loaded = open_model(str(tmp_path / "pipe"), Task.GENERATE)
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([10])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t), unet(x, t).sample[:, :3])
    assert np.asarray(sample_batch(loaded, [1], None, steps=2)).shape == (1, 3, 8, 8)


def test_online_a_repo_is_asked_for_its_pipeline_files_never_a_pickle(pipeline, tmp_path, monkeypatch):
    """Online, with huggingface_hub's download served from local folders: a pipeline whose UNet is a pickle is
    refused without downloading it, and a repo without model_index.json is a diffgen model."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    repos, asked = {"user/pipe": pipeline, "user/gen": tmp_path / "gen"}, []
    (tmp_path / "gen").mkdir()

    def download(repo_id, filename, **kwargs):
        asked.append(filename)
        if not (repos[repo_id] / filename).is_file():
            raise EntryNotFoundError(f"{filename}: no such file")
        return str(repos[repo_id] / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path / "gen")
    assert resolve("user/pipe", Task.GENERATE) == pipeline / diffusers_models.UNET_WEIGHTS
    with pytest.raises(CheckpointError, match="the repo has no model.safetensors"):
        resolve("user/gen", Task.GENERATE)  # asked for model_index.json, then for diffgen's file
    assert asked[-2:] == ["model_index.json", "model.safetensors"]
    (pipeline / diffusers_models.UNET_WEIGHTS).rename(pipeline / diffusers_models.UNET_PICKLE)
    with pytest.raises(CheckpointError, match="user/pipe: the pipeline has no unet/diffusion_pytorch_model.safetensors"):
        resolve("user/pipe", Task.GENERATE)
    assert not any(name.endswith(".bin") for name in asked)
