"""Where upscaled files go and what they hold: folder trees, formats, metadata, interruptions, memory."""

import errno
import importlib
import os
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

import diffgen.files
from test_upscale import invoke, model_file, smooth_image  # noqa: F401 - model_file is a fixture

upscale_module = importlib.import_module("diffgen.upscale")  # diffgen.upscale is the API's function (see diffgen/__init__.py)
FAST = ("--steps", 1, "--samples", 1)


def upscale(*args):
    return invoke("upscale", *args, *FAST)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_recursive_folders_are_mirrored_under_out(model_file, tmp_path):
    for name in ("DCIM/100APPLE/IMG_0001.png", "DCIM/101APPLE/IMG_0001.png", "DCIM/top.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        smooth_image(8, 8).save(tmp_path / name)
    r = upscale(tmp_path / "DCIM", "--recursive", "--model", model_file, "--out", tmp_path / "big")
    assert r.exit_code == 0, r.output
    assert files_under(tmp_path / "big") == ["100APPLE/IMG_0001_x4.png", "101APPLE/IMG_0001_x4.png", "top_x4.png"]
    r = upscale(str(tmp_path / "DCIM" / "**" / "*.png"), "--recursive", "--model", model_file, "--out", tmp_path / "g")
    assert r.exit_code == 0, r.output
    assert files_under(tmp_path / "g") == ["100APPLE/IMG_0001_x4.png", "101APPLE/IMG_0001_x4.png", "top_x4.png"]


@pytest.mark.parametrize("flag", [None, "--overwrite", "--skip-existing"])
def test_two_inputs_for_one_output_are_refused_before_any_work(model_file, tmp_path, flag):
    smooth_image(8, 8).save(tmp_path / "a.png")
    smooth_image(8, 8).save(tmp_path / "a.jpg")
    smooth_image(8, 8).save(tmp_path / "b.png")
    r = upscale(tmp_path, "--model", model_file, *([flag] if flag else []))
    assert r.exit_code == 2, r.output
    assert "a.png" in r.output and "a.jpg" in r.output and "a_x4.png" in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.png", "b.png"]  # not even b was done


def test_an_output_that_would_replace_its_input_is_refused(model_file, tmp_path):
    smooth_image(8, 8).save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    r = upscale(tmp_path / "a.png", "--model", model_file, "--suffix", "", "--overwrite")
    assert r.exit_code == 2 and "its own input" in r.output
    assert (tmp_path / "a.png").read_bytes() == before


def test_an_out_file_suffix_sets_the_format_and_format_names_are_loose(model_file, tmp_path):
    smooth_image(8, 8).save(tmp_path / "a.png")
    base = (tmp_path / "a.png", "--model", model_file)
    assert upscale(*base, "--out", tmp_path / "x.jpg").exit_code == 0
    assert upscale(*base, "--out", tmp_path / "y.JPEG", "--format", "jpg").exit_code == 0
    for name in ("x.jpg", "y.JPEG"):
        with Image.open(tmp_path / name) as out:
            assert out.format == "JPEG", name
    r = upscale(*base, "--out", tmp_path / "z.png", "--format", "jpg")
    assert r.exit_code == 2 and "--format jpg" in r.output and "z.png" in r.output
    assert not (tmp_path / "z.png").exists()
    for given, written, fmt in (("JPEG", "a_x4.jpg", "JPEG"), ("TIF", "a_x4.tiff", "TIFF"), ("bmp", "a_x4.bmp", "BMP"),
                                ("Tiff", "a_x4.tiff", "TIFF")):
        r = upscale(*base, "--format", given, "--overwrite")
        assert r.exit_code == 0, (given, r.output)
        with Image.open(tmp_path / written) as out:
            assert (out.format, out.size) == (fmt, (32, 32)), given
    r = upscale(*base, "--out", tmp_path / "x.gif")
    assert r.exit_code == 2 and "x.gif" in r.output


def test_several_inputs_with_a_file_out_is_one_error(model_file, tmp_path):
    smooth_image(8, 8).save(tmp_path / "a.png")
    smooth_image(8, 8).save(tmp_path / "b.png")
    r = upscale(tmp_path / "a.png", tmp_path / "b.png", "--model", model_file, "--out", tmp_path / "one.png")
    assert r.exit_code == 2 and "--out" in r.output and "one.png" in r.output and "2 images" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "one.png").exists()
    # A folder name with a dot that is no image suffix is a folder.
    assert upscale(tmp_path / "a.png", tmp_path / "b.png", "--model", model_file, "--out", tmp_path / "v1.2").exit_code == 0
    assert files_under(tmp_path / "v1.2") == ["a_x4.png", "b_x4.png"]


def test_tiff_keeps_16_bits_and_bmp_and_jpeg_say_they_drop_alpha(model_file, tmp_path):
    Image.fromarray((np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)).save(tmp_path / "g16.png")
    rgba = smooth_image(8, 8).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "t.png")
    r = upscale(tmp_path / "g16.png", "--model", model_file, "--format", "tiff")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "g16_x4.tiff") as out:
        assert out.mode == "I;16" and np.asarray(out).max() > 255
    for fmt in ("jpg", "bmp"):
        r = upscale(tmp_path / "t.png", "--model", model_file, "--format", fmt)
        assert r.exit_code == 0, r.output
        assert "dropped the transparency" in r.output, fmt
        with Image.open(tmp_path / f"t_x4.{fmt}") as out:
            assert out.mode == "RGB"
    r = upscale(tmp_path / "t.png", "--model", model_file, "--format", "webp")
    assert "transparency" not in r.output


def test_device_defaults_to_auto_and_the_summary_names_it(model_file, tmp_path):
    import inspect

    from diffgen.cli import upscaling

    for command in (upscaling.upscale, upscaling.eval_upscale):
        assert inspect.signature(command).parameters["device"].default == "auto"
    smooth_image(8, 8).save(tmp_path / "a.png")
    r = upscale(tmp_path / "a.png", "--model", model_file)
    assert r.exit_code == 0 and "1 image upscaled on cpu" in r.output, r.output
    smooth_image(8, 8).save(tmp_path / "b.png")
    r = upscale(tmp_path / "a.png", tmp_path / "b.png", "--model", model_file, "--skip-existing")
    assert "1 image upscaled on cpu, 1 skipped, 0 failed" in r.output, r.output


def test_the_image_bar_does_not_count_an_interrupted_image():
    from diffgen.cli.output import UpscaleBars

    with pytest.raises(KeyboardInterrupt):
        with UpscaleBars(1) as progress:
            progress.next_image("a.png")
            raise KeyboardInterrupt
    assert progress.bar.tasks[progress.images].completed == 0
    with UpscaleBars(2) as progress:
        progress.next_image("a.png")
        progress.image_done()
        progress.next_image("b.png")
        progress.image_done()
    assert progress.bar.tasks[progress.images].completed == 2


def test_sigterm_mid_write_stops_cleanly_and_says_how_to_continue(model_file, tmp_path, monkeypatch):
    for name in ("a.png", "b.png", "c.png"):
        smooth_image(8, 8).save(tmp_path / name)
    writes = []

    def fsync_then_terminated(fd):
        writes.append(fd)
        if len(writes) == 3:  # the second image's file (each write also fsyncs its folder)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(diffgen.files.os, "fsync", fsync_then_terminated)
    r = upscale(tmp_path, "--model", model_file, "--out", tmp_path / "big")
    assert r.exit_code == 143, r.output
    assert "SIGTERM" in r.output and "1 image upscaled" in r.output and "--skip-existing" in r.output
    assert "Traceback" not in r.output and "internal error" not in r.output
    assert files_under(tmp_path / "big") == ["a_x4.png"]  # no temporary file left
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


def test_an_output_folder_that_cannot_be_made_is_one_line_per_file(model_file, tmp_path, monkeypatch):
    smooth_image(8, 8).save(tmp_path / "a.png")
    smooth_image(8, 8).save(tmp_path / "b.png")
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if "locked" in self.parts:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    r = upscale(tmp_path / "a.png", tmp_path / "b.png", "--model", model_file, "--out", tmp_path / "locked" / "big")
    assert r.exit_code == 1 and "internal error" not in r.output
    assert "locked" in r.output and "permission" in r.output.lower() and "0 images upscaled" in r.output


def test_eval_upscale_reports_a_bad_file_and_scores_the_rest(model_file, tmp_path):
    smooth_image(48, 40).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    r = invoke("eval-upscale", tmp_path, "--model", model_file, *FAST)
    assert r.exit_code == 1, r.output
    assert "bad.png: not an image" in r.output and "good.png" in r.output and "mean" in r.output
    assert "on cpu" in r.output and "1 file of 2 could not be scored" in r.output
    assert "internal error" not in r.output


def test_skip_existing_redoes_a_truncated_output(model_file, tmp_path):
    for name in ("a.png", "b.png"):
        smooth_image(8, 8).save(tmp_path / name)
    assert upscale(tmp_path / "a.png", tmp_path / "b.png", "--model", model_file).exit_code == 0
    whole = (tmp_path / "b_x4.png").read_bytes()
    (tmp_path / "b_x4.png").write_bytes(whole[: len(whole) // 2])  # as a crash of a copy leaves it
    r = upscale(tmp_path / "a.png", tmp_path / "b.png", "--model", model_file, "--skip-existing")
    assert r.exit_code == 0 and "1 image upscaled on cpu, 1 skipped" in r.output, r.output
    assert "b_x4.png: incomplete or corrupt" in r.output
    assert (tmp_path / "b_x4.png").read_bytes() == whole


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff", "bmp"])
def test_cut_files_are_incomplete_in_every_format(tmp_path, fmt):
    from diffgen.images import is_complete_image

    path = tmp_path / f"x.{fmt}"
    smooth_image(64, 48).save(path)
    assert is_complete_image(path)
    path.write_bytes(path.read_bytes()[:-40])
    assert not is_complete_image(path)


def test_temporary_files_a_killed_write_left_are_removed_with_the_next_write(tmp_path):
    from diffgen.files import atomic_write

    left = [tmp_path / ".a_x4.png.k1ll3d_x.tmp", tmp_path / ".a_x4.png.zz9a8b7c.tmp"]
    others = [tmp_path / ".b_x4.png.k1ll3d_x.tmp", tmp_path / ".a_x4.png.x.k1ll3d_x.tmp", tmp_path / "a_x4.png.tmp"]
    running = tmp_path / ".a_x4.png.n0wbusy.tmp"  # another process writing the same file this moment
    for path in left + others + [running]:
        path.write_bytes(b"half")
        if path != running:
            os.utime(path, (0, 0))
    atomic_write(tmp_path / "a_x4.png", b"new", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a_x4.png", running.name] + [p.name for p in others])


def camera_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Canon"  # Make
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"  # DateTimeOriginal, in the Exif sub-IFD
    return exif


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
def test_exif_is_kept_with_the_orientation_reset(model_file, tmp_path, fmt):
    smooth_image(16, 8).save(tmp_path / "cam.jpg", exif=camera_exif(6))
    r = upscale(tmp_path / "cam.jpg", "--model", model_file, "--format", fmt)
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / f"cam_x4.{fmt}") as out:
        assert out.size == (32, 64)  # turned upright once
        exif = out.getexif()
        assert exif[0x0112] == 1 and exif[0x010F] == "Canon"
        if fmt != "tiff":  # Pillow's TIFF writer keeps the main tags only
            assert exif.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09"


def test_exif_of_a_tiff_source_does_not_carry_its_layout(model_file, tmp_path):
    smooth_image(16, 8).save(tmp_path / "scan.tif", exif=camera_exif(1))
    assert upscale(tmp_path / "scan.tif", "--model", model_file).exit_code == 0
    with Image.open(tmp_path / "scan_x4.png") as out:
        exif = out.getexif()
        assert exif[0x010F] == "Canon" and 256 not in exif and 273 not in exif  # no width, no strip offsets


def float_tiff(path: Path, top: float) -> np.ndarray:
    values = np.linspace(0, top, 16 * 12, dtype=np.float32).reshape(12, 16)
    Image.fromarray(values, "F").save(path)
    return values


def test_a_float_image_in_0_1_is_scaled_by_1_for_training_and_upscaling(model_file, tmp_path):
    from diffgen.images import open_image, split_planes, to_mode

    values = float_tiff(tmp_path / "f.tif", 1.0)
    img = open_image(tmp_path / "f.tif")
    assert img.mode == "F"
    assert np.abs(np.asarray(to_mode(img, 1), dtype=float) - values * 255).max() <= 0.5
    assert np.abs(split_planes(img).colour[0].numpy() - (values * 2 - 1)).max() < 1e-5
    wide = float_tiff(tmp_path / "w.tif", 4000.0)  # neither [0, 1] nor 8 bits: 16-bit values
    assert np.abs(np.asarray(to_mode(open_image(tmp_path / "w.tif"), 1), dtype=float) - wide / 65535 * 255).max() <= 0.5
    r = upscale(tmp_path / "f.tif", "--model", model_file)
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "f_x4.png") as out:
        assert out.mode == "I;16" and np.asarray(out).max() > 60000  # not black


def fake_cmyk_profile() -> bytes:
    """An ICC profile that says it is for CMYK (LittleCMS will not build a transform from it)."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[16:20] = b"CMYK"
    return bytes(icc)


def test_a_cmyk_profile_never_reaches_an_rgb_output(model_file, tmp_path):
    from diffgen.images import open_image, to_mode

    cmyk = smooth_image(8, 8).convert("CMYK")
    cmyk.save(tmp_path / "print.jpg", icc_profile=fake_cmyk_profile())
    assert to_mode(open_image(tmp_path / "print.jpg"), 3).mode == "RGB"
    r = upscale(tmp_path / "print.jpg", "--model", model_file)
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "print_x4.png") as out:
        assert out.mode == "RGB" and out.info.get("icc_profile") is None


def grey_cmyk_profile(lightness: int = 200) -> bytes:
    """A minimal ICC v2 CMYK printer profile whose A2B0 table maps every ink mix to one grey (Lab, 8-bit L*)."""
    identity = bytes(range(256))
    matrix = b"".join(struct.pack(">i", v) for v in (65536, 0, 0, 0, 65536, 0, 0, 0, 65536))
    clut = bytes([lightness, 128, 128]) * 2**4  # 2 grid points per ink, 3 Lab outputs each
    white = b"XYZ " + bytes(4) + struct.pack(">iii", 63190, 65536, 54061)  # D50
    tags = [(b"A2B0", b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + matrix + identity * 4 + clut + identity * 3),
            (b"wtpt", white)]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (struct.pack(">I", offset + len(data)) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"prtr" + b"CMYK" + b"Lab "
              + bytes(12) + b"acsp" + bytes(28) + white[8:] + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + data


def test_a_cmyk_image_is_converted_through_its_own_profile(tmp_path):
    from diffgen.images import open_image, split_planes, to_mode

    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.jpg", icc_profile=grey_cmyk_profile())
    img = open_image(tmp_path / "red.jpg")
    r, g, b = to_mode(img, 3).getpixel((0, 0))
    assert abs(r - g) <= 2 and abs(g - b) <= 2  # the profile's grey, not the naive formula's red
    planes = split_planes(img)
    assert planes.note == "converted CMYK to sRGB with its ICC profile"
    assert float(planes.colour[0].std()) < 0.02 and abs(float(planes.colour[0].mean() - planes.colour[1].mean())) < 0.02


def test_the_memory_estimate_allows_what_works_and_not_what_cannot():
    from diffgen.upscale import estimate_memory

    # benchmarks/upscale_memory.py: 4000x3000 at x4 peaks at 2.00 GB, the process (torch, model) included.
    works = estimate_memory(4000, 3000, scale=4, tile=192, deep=False, alpha=False, base_channels=64, on_cpu=True)
    assert 4000 * 3000 * 16 * 3 < works < 2.00e9
    # The 16000x16000 at x4: a 12 GB canvas before anything else.
    assert estimate_memory(16000, 16000, scale=4, tile=192, deep=False, alpha=False, base_channels=64,
                           on_cpu=True) > 24e9


def test_an_image_too_big_for_memory_is_refused_and_the_batch_goes_on(model_file, tmp_path, monkeypatch):
    from diffgen.upscale import estimate_memory

    smooth_image(8, 8).save(tmp_path / "a.png")
    smooth_image(64, 64).save(tmp_path / "b.png")
    needs = [estimate_memory(n, n, scale=4, tile=None, deep=False, alpha=False, base_channels=32, on_cpu=True)
             for n in (8, 64)]
    monkeypatch.setenv("DIFFGEN_MEMORY_GB", str((needs[0] + needs[1]) / 2e9))
    monkeypatch.setattr(upscale_module, "open_image", refuse_to_decode(upscale_module.open_image, "b.png"))
    r = upscale(tmp_path / "a.png", tmp_path / "b.png", "--model", model_file)
    assert r.exit_code == 1, r.output
    assert "b.png: upscaling 64x64 at x4 needs about" in r.output and "DIFFGEN_MEMORY_GB" in r.output
    assert "1 image upscaled on cpu, 0 skipped, 1 failed" in r.output
    monkeypatch.setenv("DIFFGEN_MEMORY_GB", "lots")
    r = upscale(tmp_path / "a.png", "--model", model_file, "--overwrite")
    assert r.exit_code == 2 and "DIFFGEN_MEMORY_GB=lots" in r.output and len(r.output.strip().splitlines()) == 1


def refuse_to_decode(open_image, name):
    """open_image that fails the test if it decodes the pixels of `name`: the estimate comes first."""
    def opened(path, *, decode=True):
        assert not (decode and Path(path).name == name), f"decoded {name} before refusing it"
        return open_image(path, decode=decode)
    return opened


def test_exif_too_long_for_jpeg_is_left_out_with_a_note(model_file, tmp_path):
    exif = camera_exif(1)
    exif.get_ifd(0x8769)[0x9286] = b"x" * 70_000  # a UserComment past JPEG's 64 KB segment
    smooth_image(8, 8).save(tmp_path / "long.png", exif=exif)
    r = upscale(tmp_path / "long.png", "--model", model_file, "--format", "jpg")
    assert r.exit_code == 0, r.output
    assert "left out the EXIF" in r.output
    with Image.open(tmp_path / "long_x4.jpg") as out:
        assert out.size == (32, 32)


def test_exif_that_pillow_cannot_write_again_is_left_behind():
    from diffgen.images import carried_metadata

    img = smooth_image(8, 8)
    img.getexif()[0x010F] = "Canon"
    assert carried_metadata(img, "RGB")["exif"][0x010F] == "Canon"
    img.getexif()[0x9999] = object()  # a value no EXIF type holds
    assert "exif" not in carried_metadata(img, "RGB")


def test_file_names_with_control_characters_are_printed_escaped(model_file, tmp_path):
    name = "a\x1b[2Jb\x07\nc.png"  # clear-screen, a bell and a newline in a file name
    smooth_image(8, 8).save(tmp_path / name)
    r = upscale(tmp_path / name, "--model", model_file)
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "a\\x1b[2Jb\\x07\\nc.png" in r.output


def test_an_existing_output_is_refused_before_the_work_with_both_ways_on(model_file, tmp_path, monkeypatch):
    smooth_image(8, 8).save(tmp_path / "a.png")
    assert upscale(tmp_path / "a.png", "--model", model_file).exit_code == 0
    monkeypatch.setattr(upscale_module, "upscale_file", lambda *a, **k: pytest.fail("upscaled before refusing"))
    r = upscale(tmp_path / "a.png", "--model", model_file)
    assert r.exit_code == 1 and "--skip-existing" in r.output and "--overwrite" in r.output


def test_a_rerun_over_a_pattern_leaves_earlier_outputs_alone(model_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    smooth_image(8, 8).save("a.png")
    assert upscale("*.png", "--model", model_file).exit_code == 0
    r = upscale("*.png", "--model", model_file, "--skip-existing")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_x4.png"]  # no a_x4_x4.png


def test_an_output_that_would_replace_another_input_is_refused(model_file, tmp_path):
    smooth_image(8, 8).save(tmp_path / "a.png")
    smooth_image(8, 8).save(tmp_path / "a_x4.png")
    before = (tmp_path / "a_x4.png").read_bytes()
    r = upscale(tmp_path / "a.png", tmp_path / "a_x4.png", "--model", model_file, "--overwrite")
    assert r.exit_code == 2 and "would replace the input" in r.output
    assert (tmp_path / "a_x4.png").read_bytes() == before


def test_an_empty_suffix_leaves_no_file_of_a_folder_out(model_file, tmp_path):
    smooth_image(8, 8).save(tmp_path / "a.png")
    r = upscale(tmp_path, "--model", model_file, "--suffix", "", "--out", tmp_path / "big")
    assert r.exit_code == 0 and (tmp_path / "big" / "a.png").exists(), r.output
