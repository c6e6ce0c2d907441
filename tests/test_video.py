"""Video upscaling: frames, timing, rotation, sound and subtitles kept; bad files refused; stop and resume."""

import copy
import json
import subprocess
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

av = pytest.importorskip("av")

from diffgen.checkpoint import ModelSpec, Task, load_model, save_model  # noqa: E402
from diffgen.errors import DiffgenError, OptionError  # noqa: E402
from diffgen.schedule import Prediction  # noqa: E402
from diffgen.unet import UNet, preset  # noqa: E402
from diffgen.upscale import Sampling, upscale_image  # noqa: E402
from diffgen.video import Codec, VideoError, is_partial, is_video, output_name, output_suffix  # noqa: E402
from diffgen.video import job as video_job  # noqa: E402
from diffgen.video.job import upscale_video  # noqa: E402
from diffgen.video.streams import is_complete_video  # noqa: E402

GAPS_MS = [30, 70, 41]  # a variable frame rate
FAST = Sampling(samples=1)


def upscale(src, dst, loaded, **settings):
    """`upscale_video` with one sample a frame: the tests are about the video, not the sampling."""
    return upscale_video(src, dst, loaded, **{"sampling": FAST, **settings})


def tiny_model(path: Path, scale: int):
    """A very small upscaler with random (non-zero) weights: outputs depend on every input pixel."""
    torch.manual_seed(0)
    unet = preset("tiny", base_channels=8, channel_mults=(1, 2), attention_levels=(), norm_groups=4, head_channels=8,
                  cond_channels=3, pixel_shuffle=scale)
    model = UNet(unet)
    for p in model.parameters():
        p.data.normal_(0, 0.03)
    spec = ModelSpec(unet=unet, task=Task.UPSCALE, scale=scale, image_size=8 * scale, channels=3,
                     prediction=Prediction.X0, residual_scale=0.25)
    save_model(path, model, spec)
    return load_model(path)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions on one thread: on a loaded machine two threads wait on each other 1,000 times longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("sr") / "sr.safetensors", 4)


def pictures(n: int, w: int, h: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random pictures (noise compresses badly and looks nothing like video)."""
    rng = np.random.default_rng(seed)
    small = [rng.integers(0, 255, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8) for _ in range(n)]
    return [np.asarray(Image.fromarray(s).resize((w, h), Image.Resampling.BICUBIC)) for s in small]


def make_clip(path: Path, n: int = 5, w: int = 16, h: int = 12, *, rotation: int | None = None, audio: bool = True,
              srt: Path | None = None, codec: str = "libx264", pix_fmt: str = "yuv420p",
              images: list[np.ndarray] | None = None) -> Path:
    """A clip with variable frame gaps (ms), AAC sound and optionally rotation and subtitles from an .srt file;
    its frames are `images`, or n unrelated pictures."""
    subtitles = av.open(str(srt)) if srt else None
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=24)
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        v.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            v.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=8000) if audio else None
        s = c.add_stream_from_template(subtitles.streams[0]) if subtitles else None
        pts = 0
        for i, rgb in enumerate(pictures(n, w, h) if images is None else images):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += GAPS_MS[i % 3]
            c.mux(v.encode(frame))
        c.mux(v.encode())
        if a:
            rng = np.random.default_rng(1)
            for i in range(pts * 8 // 1024 + 1):
                sound = av.AudioFrame.from_ndarray(rng.normal(0, 0.1, (1, 1024)).astype(np.float32), format="fltp",
                                                   layout="mono")
                sound.sample_rate, sound.pts, sound.time_base = 8000, i * 1024, Fraction(1, 8000)
                c.mux(a.encode(sound))
            c.mux(a.encode())
        if s:
            for packet in subtitles.demux():
                if packet.size:
                    packet.stream = s
                    c.mux(packet)
    if subtitles:
        subtitles.close()
    return path


def packets(path: Path, kind: str) -> list[tuple[float, bytes]]:
    """(time in seconds, bytes) of each packet of the first stream of `kind`."""
    with av.open(str(path)) as c:
        stream = getattr(c.streams, kind)[0]
        return [(float(p.pts * p.time_base), bytes(p)) for p in c.demux(stream) if p.size]


def frames(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


def leftovers(folder: Path) -> list[str]:
    """Temporary files and work folders diffgen may leave beside its outputs."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_timing_rotation_and_sound_are_kept(tmp_path, loaded):
    src = make_clip(tmp_path / "clip.mp4", n=7, rotation=90)
    dst = tmp_path / "clip_x4.mp4"
    result = upscale(src, dst, loaded, segment_frames=3)
    assert result.dst == dst and result.frames == 7 and result.size == (64, 48) and not result.stopped
    before, after = frames(src), frames(dst)
    assert [(f.width, f.height) for f in after] == [(64, 48)] * 7
    assert [f.time for f in after] == pytest.approx([f.time for f in before], abs=1e-6)  # variable gaps kept
    assert {f.rotation for f in after} == {90}
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        end = lambda s: float((s.start_time + s.duration) * s.time_base)
        assert end(b.streams.video[0]) == pytest.approx(end(a.streams.video[0]), abs=1e-3)
    assert packets(dst, "audio") == packets(src, "audio")  # bit for bit, at the same times
    assert leftovers(tmp_path) == []


def test_subtitles_and_sound_are_copied_bit_for_bit(tmp_path, loaded):
    srt = tmp_path / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,100\nhello\n\n2\n00:00:00,120 --> 00:00:00,200\nworld\n\n")
    src = make_clip(tmp_path / "clip.mkv", srt=srt)
    dst = tmp_path / f"clip_x4{output_suffix(src)}"
    upscale(src, dst, loaded)
    assert dst.suffix == ".mkv"
    assert packets(dst, "subtitles") == packets(src, "subtitles") and len(packets(src, "subtitles")) == 2
    assert packets(dst, "audio") == packets(src, "audio")
    with pytest.raises(VideoError, match=r"subtitle stream 2 \(srt\) cannot go into a \.mp4 file.*\.mkv"):
        upscale(src, tmp_path / "out.mp4", loaded)  # refused before any work
    assert not (tmp_path / "out.mp4").exists()


def test_frames_are_upscaled_as_images(tmp_path, loaded):
    """Lossless 4:4:4 in and out: without --stabilize each output frame is the image upscale of the decoded input."""
    src = make_clip(tmp_path / "clip.mkv", n=4, audio=False, pix_fmt="yuv444p")
    dst = tmp_path / "out.mkv"
    sampling = Sampling(samples=1, seed=3)
    upscale(src, dst, loaded, sampling=sampling, crf=0, pix_fmt="yuv444p", tile=32, stabilize=False)
    for before, after in zip(frames(src), frames(dst), strict=True):
        image, _ = upscale_image(loaded, before.to_image(), tile=32, sampling=sampling)
        difference = np.abs(np.asarray(image, np.int16) - after.to_ndarray(format="rgb24").astype(np.int16))
        assert difference.max() <= 3  # RGB -> YUV -> RGB rounding only


def test_stabilized_frames_start_afresh_with_each_piece(tmp_path, loaded):
    """By default the frames are those of a `Stabilizer` over the image upscales, one per piece (so that any
    process, or a resume, makes a piece the same)."""
    from diffgen.video.temporal import Stabilizer

    wide = pictures(1, 24, 12)[0]
    src = make_clip(tmp_path / "clip.mkv", audio=False, pix_fmt="yuv444p",
                    images=[wide[:, t : t + 16] for t in range(4)])  # a pan, one input pixel a frame
    dst = tmp_path / "out.mkv"
    sampling = Sampling(samples=1, seed=3)
    upscale(src, dst, loaded, sampling=sampling, crf=0, pix_fmt="yuv444p", tile=32, segment_frames=2)
    decoded = [f.to_ndarray(format="rgb24") for f in frames(src)]

    def alone(rgb: np.ndarray) -> np.ndarray:
        return np.asarray(upscale_image(loaded, Image.fromarray(rgb), tile=32, sampling=sampling)[0])

    def stabilized(piece: list[np.ndarray]) -> list[np.ndarray]:
        stabilizer = Stabilizer(alone)
        return [stabilizer(frame) for frame in piece]

    steady = stabilized(decoded[:2]) + stabilized(decoded[2:])
    for expected, after in zip(steady, frames(dst), strict=True):
        assert np.abs(expected.astype(np.int16) - after.to_ndarray(format="rgb24")).max() <= 3
    assert np.abs(steady[1].astype(np.int16) - alone(decoded[1])).max() > 3  # the second frame carries detail


@pytest.mark.parametrize("codec, suffix, name", [(Codec.h265, ".mp4", "hevc"), (None, ".webm", "vp9"),
                                                 (Codec.vp9, ".mkv", "vp9")])
def test_codecs_and_containers(tmp_path, loaded, codec, suffix, name):
    src = make_clip(tmp_path / "clip.mp4", n=3, audio=False)
    dst = tmp_path / f"out{suffix}"
    upscale(src, dst, loaded, codec=codec)
    with av.open(str(dst)) as c:
        assert c.streams.video[0].codec_context.name == name
    assert len(frames(dst)) == 3
    assert (b"hvc1" in dst.read_bytes()) == (name == "hevc")  # the tag Apple's players need


def test_odd_sizes_are_padded_for_yuv420p(tmp_path):
    loaded = tiny_model(tmp_path / "x3.safetensors", 3)
    src = make_clip(tmp_path / "clip.mp4", n=2, w=6, h=4, audio=False, codec="libx264rgb", pix_fmt="rgb24")
    dst = tmp_path / "out.mp4"
    result = upscale(src, dst, loaded)
    assert result.size == (18, 12) and result.note is None
    result = upscale(make_clip(tmp_path / "odd.mkv", n=2, w=5, h=3, audio=False, codec="libx264rgb",
                                     pix_fmt="rgb24"), tmp_path / "odd_x3.mkv", loaded)
    assert result.size == (16, 10) and "padded to 16x10" in result.note
    assert {(f.width, f.height) for f in frames(tmp_path / "odd_x3.mkv")} == {(16, 10)}


def test_animations_keep_their_frame_durations(tmp_path, loaded):
    pics = [Image.fromarray(p) for p in pictures(4, 12, 8)]
    for suffix in (".gif", ".webp"):
        src = tmp_path / f"anim{suffix}"
        pics[0].save(src, save_all=True, append_images=pics[1:], duration=[50, 100, 50, 200], loop=0)
        assert is_video(src) and output_suffix(src) == ".mp4"
        dst = tmp_path / f"anim_x4{suffix}.mp4"
        upscale(src, dst, loaded)
        assert [round(f.time, 3) for f in frames(dst)] == [0, 0.05, 0.15, 0.2]


def test_what_counts_as_a_video(tmp_path):
    pics = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    pics[0].save(tmp_path / "still.gif")
    pics[0].save(tmp_path / "moving.gif", save_all=True, append_images=pics[1:])
    pics[0].save(tmp_path / "still.webp")
    make_clip(tmp_path / "clip.mp4", n=2, audio=False)
    (tmp_path / "clip_without_suffix").write_bytes((tmp_path / "clip.mp4").read_bytes())
    (tmp_path / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(20))
    assert [is_video(tmp_path / n) for n in ("clip.mp4", "moving.gif", "clip_without_suffix", "x.mkv")] == [True] * 4
    assert [is_video(tmp_path / n) for n in ("still.gif", "still.webp", "photo.heic", "a.png")] == [False] * 4
    assert [output_suffix(Path(n)) for n in ("a.mov", "a.avi", "a.WEBM")] == [".mov", ".mkv", ".WEBM"]
    assert [output_name(Path(n), "_x4") for n in ("d/clip.mp4", "anim.gif")] == ["clip_x4.mp4", "anim_x4.mp4"]


def test_complete_videos_are_told_from_cut_ones(tmp_path):
    data = make_clip(tmp_path / "clip.mp4", n=4).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    assert is_complete_video(tmp_path / "clip.mp4") and not is_complete_video(tmp_path / "cut.mp4")


def corrupt_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Bad inputs, each with the words its error must contain."""
    clip = make_clip(folder / "good.mp4", n=4).read_bytes()
    (folder / "cut.mp4").write_bytes(clip[: len(clip) // 2])
    (folder / "junk.mp4").write_bytes(bytes(range(256)) * 20)
    with av.open(str(folder / "sound.mp4"), "w") as c:  # sound only
        a = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        c.mux(a.encode(frame))
        c.mux(a.encode())
    avi = make_clip(folder / "mpeg4.avi", n=2, audio=False, codec="mpeg4").read_bytes()
    (folder / "unknown.avi").write_bytes(avi.replace(b"FMP4", b"ZZZZ"))  # a codec tag FFmpeg does not know
    return {"cut.mp4": "truncated or corrupt", "junk.mp4": "truncated or corrupt", "sound.mp4": "no video stream",
            "unknown.avi": "one FFmpeg cannot decode", "missing.mp4": "no such file"}


def test_bad_files_are_one_line_and_leave_nothing(tmp_path, loaded):
    for name, words in corrupt_files(tmp_path).items():
        dst = tmp_path / f"out_{name}.mkv"
        with pytest.raises(VideoError) as e:
            upscale(tmp_path / name, dst, loaded)
        message = str(e.value)
        assert message.startswith(str(tmp_path / name)) and words in message and "\n" not in message
        assert not dst.exists()
    assert leftovers(tmp_path) == []


def test_without_pyav_a_video_names_the_extra(tmp_path, loaded, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(VideoError, match=r'clip.mp4: upscaling videos needs PyAV.*pip install "diffgen\[video\]"'):
        upscale(tmp_path / "clip.mp4", tmp_path / "out.mp4", loaded)


def test_the_core_module_imports_neither_torch_nor_pyav():
    code = "import sys, diffgen.video; print('torch' in sys.modules, 'av' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_bad_options_are_refused_before_any_work(tmp_path, loaded):
    src = make_clip(tmp_path / "clip.mp4", n=2)
    with pytest.raises(OptionError, match="--crf 60: h264 takes 0"):
        upscale(src, tmp_path / "a.mp4", loaded, crf=60)
    with pytest.raises(OptionError, match="--pix-fmt yuv999: not a pixel format"):
        upscale(src, tmp_path / "a.mp4", loaded, pix_fmt="yuv999")
    with pytest.raises(VideoError, match=r"\.webm file cannot hold h264 video"):
        upscale(src, tmp_path / "a.webm", loaded, codec=Codec.h264)
    with pytest.raises(VideoError, match="cannot write .avi videos"):
        upscale(src, tmp_path / "a.avi", loaded)
    (tmp_path / "taken.mp4").write_bytes(b"mine")
    with pytest.raises(VideoError, match="already exists; pass --overwrite"):
        upscale(src, tmp_path / "taken.mp4", loaded)
    assert (tmp_path / "taken.mp4").read_bytes() == b"mine"
    upscale(src, tmp_path / "taken.mp4", loaded, overwrite=True)
    assert len(frames(tmp_path / "taken.mp4")) == 2
    assert leftovers(tmp_path) == []


def stop_after(n: int):
    seen = []
    return lambda: len(seen) >= n or seen.append(1)


def test_stop_keeps_a_playable_partial_and_resume_finishes_it(tmp_path, loaded):
    src = make_clip(tmp_path / "clip.mp4", n=7)
    whole = upscale(src, tmp_path / "whole.mp4", loaded, segment_frames=2).dst
    dst = tmp_path / "clip_x4.mp4"
    progress = []
    result = upscale(src, dst, loaded, segment_frames=2, keep_partial=True, stop=stop_after(5))
    assert result.stopped and result.dst is None and result.frames == 5 and not dst.exists()
    assert result.partial == tmp_path / "clip_x4.partial.mp4" and is_partial(result.partial) and not is_partial(dst)
    assert len(frames(result.partial)) == 5  # the finished pieces and the stopped one
    end = 0.241  # of the fifth frame, at 171 ms for 70 ms
    assert packets(result.partial, "audio") == [p for p in packets(src, "audio") if p[0] < end]  # sound up to it
    with pytest.raises(VideoError, match="stopped after 4 frames; pass --resume"):
        upscale(src, dst, loaded, segment_frames=2)
    with pytest.raises(VideoError, match=r"used other settings \(crf\)"):
        upscale(src, dst, loaded, segment_frames=2, resume=True, crf=20)
    other = replace(loaded, model=copy.deepcopy(loaded.model))  # the same file's network, other weights (a blend)
    with torch.no_grad():
        next(other.model.parameters()).add_(0.01)
    with pytest.raises(VideoError, match=r"used other settings \(weights\)"):
        upscale(src, dst, other, segment_frames=2, resume=True)
    result = upscale(src, dst, loaded, segment_frames=2, resume=True, on_progress=progress.append)
    assert result.dst == dst and result.resumed_from == 4 and result.frames == 7
    assert [p.done for p in progress] == [5, 6, 7] and {p.total for p in progress} == {7}
    assert all(p.fps > 0 and p.resumed_from == 4 for p in progress)
    assert packets(dst, "video") == packets(whole, "video")  # as if it had never stopped
    assert packets(dst, "audio") == packets(src, "audio")
    assert leftovers(tmp_path) == []


def test_a_failure_keeps_finished_pieces_and_no_partial_file(tmp_path, loaded, monkeypatch):
    src = make_clip(tmp_path / "clip.mp4", n=6)
    dst = tmp_path / "out.mp4"
    real = video_job.upscale_frame
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("a crash mid-frame")
        return real(*args, **kwargs)

    monkeypatch.setattr(video_job, "upscale_frame", failing)
    with pytest.raises(RuntimeError):
        upscale(src, dst, loaded, segment_frames=2)
    work = tmp_path / ".out.mp4.diffgen-video"
    assert not dst.exists() and sorted(p.name for p in work.glob("*.mp4")) == ["000000.mp4"]
    monkeypatch.setattr(video_job, "upscale_frame", real)
    assert upscale(src, dst, loaded, segment_frames=2, resume=True).resumed_from == 2
    assert len(frames(dst)) == 6 and leftovers(tmp_path) == []
    calls.clear()
    monkeypatch.setattr(video_job, "upscale_frame", failing)
    with pytest.raises(RuntimeError):
        upscale(src, tmp_path / "early.mp4", loaded, segment_frames=5)  # before the first piece is whole
    assert leftovers(tmp_path) == []  # no work folder with nothing to resume in it


def test_a_second_upscale_into_the_same_output_is_refused(tmp_path, loaded):
    fcntl = pytest.importorskip("fcntl")
    src = make_clip(tmp_path / "clip.mp4", n=2)
    work = tmp_path / ".out.mp4.diffgen-video"
    work.mkdir()
    with open(work / ".lock", "a") as held:  # as another process's upscale holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(VideoError, match="another diffgen is upscaling into it"):
            upscale(src, tmp_path / "out.mp4", loaded)
    assert not (tmp_path / "out.mp4").exists()


def test_errors_are_diffgen_errors():
    assert issubclass(VideoError, DiffgenError)


def test_the_command_upscales_videos_beside_images_and_skips_finished_ones(tmp_path, loaded):
    from typer.testing import CliRunner

    from diffgen.cli import app

    make_clip(tmp_path / "clip.mp4")
    Image.fromarray(pictures(1, 16, 12)[0]).save(tmp_path / "still.png")
    args = ["upscale", str(tmp_path), "--model", str(loaded.path), "--samples", "1"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert len(frames(tmp_path / "clip_x4.mp4")) == 5 and (frames(tmp_path / "clip_x4.mp4")[0].width, 64) == (64, 64)
    assert Image.open(tmp_path / "still_x4.png").size == (64, 48)
    assert "2 files upscaled" in r.output  # not "images": one is a video
    again = CliRunner().invoke(app, [*args, "--skip-existing"])
    assert again.exit_code == 0 and "2 skipped" in again.output, again.output
    r = CliRunner().invoke(app, ["upscale", str(tmp_path / "clip.mp4"), "--model", str(loaded.path), "--width", "100",
                                 "--overwrite"])
    assert r.exit_code == 1 and "--width and --height are for images" in r.output


def test_no_stabilize_writes_each_frame_s_own_upscale(tmp_path, loaded):
    from typer.testing import CliRunner

    from diffgen.cli import app

    wide = pictures(1, 24, 12)[0]
    src = make_clip(tmp_path / "clip.mp4", n=3, audio=False, images=[wide[:, t : t + 16] for t in range(3)])
    args = ["upscale", str(src), "--model", str(loaded.path), "--samples", "1", "--precision", "fp32"]
    for flag, name in (("--stabilize", "steady.mp4"), ("--no-stabilize", "alone.mp4")):
        r = CliRunner().invoke(app, [*args, flag, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    upscale(src, tmp_path / "library.mp4", loaded, stabilize=False)
    assert (tmp_path / "alone.mp4").read_bytes() == (tmp_path / "library.mp4").read_bytes()
    assert (tmp_path / "steady.mp4").read_bytes() != (tmp_path / "alone.mp4").read_bytes()


def test_torchrun_splits_one_video_by_pieces_and_joins_what_one_process_writes(tmp_path, loaded):
    from test_distributed import run

    src = make_clip(tmp_path / "clip.mp4", n=7)  # pieces of 2 frames: 4 pieces, 0 and 2 for process 0, 1 and 3 for 1
    args = ["upscale", src, "--model", loaded.path, "--device", "cpu", "--samples", 1, "--piece-frames", 2]
    two, one = run(*args, "--out", tmp_path / "two"), run(*args, "--out", tmp_path / "one", processes=1)
    assert two.returncode == 0 and one.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "two" / "clip_x4.mp4").read_bytes() == (tmp_path / "one" / "clip_x4.mp4").read_bytes()
    assert len(frames(tmp_path / "two" / "clip_x4.mp4")) == 7 and leftovers(tmp_path / "two") == []
    assert two.stdout.count("done:") == 1 and "1 file upscaled on cpu by 2 processes" in " ".join(two.stdout.split())


def test_a_resume_finishes_the_pieces_another_process_left(tmp_path, loaded, monkeypatch):
    """Process 1 of 2 writes pieces 1 and 3 and leaves the joining to process 0; one process resumes from them."""
    from diffgen.runtime import Ranks
    from diffgen.video import pieces

    src = make_clip(tmp_path / "clip.mp4", n=7)
    whole = upscale(src, tmp_path / "whole.mp4", loaded, segment_frames=2).dst
    dst = tmp_path / "clip_x4.mp4"
    for module in (pieces, video_job):  # the other process agrees with everything and was first to lock
        monkeypatch.setattr(module, "ranks_with", lambda flag, ranks: [])
    work = tmp_path / ".clip_x4.mp4.diffgen-video"
    work.mkdir()
    (work / "settings.json").write_text(json.dumps(video_job.fingerprint(
        src, loaded, FAST, None, video_job.choose_encoding(dst, None, None, "yuv420p"), 2, True)))
    result = upscale(src, dst, loaded, segment_frames=2, ranks=Ranks(1, 2), resume=True)
    assert not dst.exists() and not result.stopped and result.frames == 7
    assert sorted(p.name for p in work.iterdir()) == ["000001.mp4", "000003.mp4", "settings.json"]  # only process 0 locks
    monkeypatch.undo()
    result = upscale(src, dst, loaded, segment_frames=2, resume=True)
    assert result.resumed_from == 3 and packets(dst, "video") == packets(whole, "video")
    assert leftovers(tmp_path) == []
