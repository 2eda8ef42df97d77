"""Embedded datasets, folder datasets, the check tool, and every data error."""

import itertools
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, run_module
from ddpm_lib.config import DataConfig
from ddpm_lib.data import (DIGIT_NAMES, TEXTURE_NAMES, ImageData, check_data, format_report, load_data,
                           load_digits, load_folder, make_textures, to_float, to_uint8)
from ddpm_lib.errors import DataError

# ------------------------------------------------------------------ embedded datasets


def test_digits():
    d = load_digits(16)
    assert d.images.shape == (1797, 1, 16, 16) and d.images.dtype == torch.uint8
    assert d.labels.dtype == torch.int64 and d.labels.tolist().count(0) > 150
    assert d.class_names == DIGIT_NAMES == ["zero", "one", "two", "three", "four", "five", "six", "seven",
                                            "eight", "nine"]
    assert sorted(set(d.labels.tolist())) == list(range(10)) and d.num_classes == 10
    assert d.images.min() == 0 and d.images.max() >= 250
    assert (d.channels, d.img_size, len(d), d.name) == (1, 16, 1797, "digits")
    assert load_digits(8).images.shape == (1797, 1, 8, 8)
    assert load_digits(4).images.shape == (1797, 1, 4, 4)  # downsampling works too


def test_textures_shapes_and_determinism():
    a, b, c = make_textures(16, 30, seed=0), make_textures(16, 30, seed=0), make_textures(16, 30, seed=1)
    k = len(TEXTURE_NAMES)
    assert k >= 6 and {"stripes", "checks", "dots", "waves", "bricks", "noise"} <= set(TEXTURE_NAMES)
    assert a.images.shape == (k * 30, 3, 16, 16) and a.images.dtype == torch.uint8
    assert a.class_names == TEXTURE_NAMES and a.class_counts() == [30] * k and a.name == "textures"
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    for label in range(k):
        images = a.images[a.labels == label].float()
        assert images.std(dim=(1, 2, 3)).min() > 30, TEXTURE_NAMES[label]  # every image has a clear pattern
        darkest, brightest = images.amin(dim=(2, 3)), images.amax(dim=(2, 3))  # (N, 3) colours per image
        assert darkest.std(dim=0).min() > 15 and brightest.std(dim=0).min() > 15, TEXTURE_NAMES[label]


def test_textures_are_fast():
    start = time.perf_counter()
    data = make_textures(32, 400, seed=0)
    assert time.perf_counter() - start < 2.0 and len(data) == 400 * len(TEXTURE_NAMES)


def _spectrum_features(images):
    """Orientation- and colour-blind features: the radial profile of the grayscale image's
    Fourier magnitude, plus its 32 largest magnitudes (how peaked the spectrum is)."""
    gray = images.float().mean(1)
    gray = (gray - gray.mean((1, 2), keepdim=True)) / (gray.std((1, 2), keepdim=True) + 1e-6)
    magnitude = torch.fft.fft2(gray).abs()
    size = images.shape[-1]
    freq = torch.fft.fftfreq(size) * size
    ring = (freq[:, None] ** 2 + freq[None, :] ** 2).sqrt().round().long().clamp(max=size // 2).flatten()
    profile = torch.zeros(len(images), size // 2 + 1).index_add_(1, ring, magnitude.flatten(1)) / torch.bincount(ring)
    peaks = magnitude.flatten(1).sort(1, descending=True).values[:, :32]
    return torch.cat([profile, peaks], 1).log1p()


def test_texture_classes_are_distinguishable():
    # For every pair of classes, 5-nearest-neighbours on spectrum features, fitted on one seed
    # and tested on another, must tell the two apart. Two identical classes would score ~0.5.
    train, test = make_textures(16, 100, seed=0), make_textures(16, 100, seed=1)
    train_x, test_x = _spectrum_features(train.images), _spectrum_features(test.images)
    for a, b in itertools.combinations(range(len(TEXTURE_NAMES)), 2):
        in_train = (train.labels == a) | (train.labels == b)
        in_test = (test.labels == a) | (test.labels == b)
        nearest = torch.cdist(test_x[in_test], train_x[in_train]).topk(5, largest=False).indices
        predicted = train.labels[in_train][nearest].mode(1).values
        accuracy = (predicted == test.labels[in_test]).float().mean().item()
        assert accuracy > 0.8, (TEXTURE_NAMES[a], TEXTURE_NAMES[b], accuracy)


# ------------------------------------------------------------------ ImageData


def test_uint8_float_round_trip():
    u = torch.arange(256, dtype=torch.uint8)
    f = to_float(u)
    assert f.dtype == torch.float32 and f.min() == -1 and f.max() == 1
    assert torch.equal(to_uint8(f), u)
    assert to_uint8(torch.tensor([-3.0, 0.0, 5.0])).tolist() == [0, 128, 255]  # clamped, rounded


def test_split_is_stratified_disjoint_and_deterministic():
    d = make_textures(8, 10)
    d.images[:, 0, 0, 0] = torch.arange(len(d), dtype=torch.uint8)  # tag each image to track it
    train, test = d.split(0.2, seed=0)
    tags = lambda part: part.images[:, 0, 0, 0].tolist()  # noqa: E731
    assert sorted(tags(train) + tags(test)) == list(range(len(d)))  # disjoint and complete
    assert test.class_counts() == [2] * d.num_classes and train.class_counts() == [8] * d.num_classes
    again_train, again_test = d.split(0.2, seed=0)
    assert tags(again_train) == tags(train) and tags(again_test) == tags(test)
    assert tags(d.split(0.2, seed=1)[1]) != tags(test)
    tiny = d.subset(torch.tensor([0, 1, 10, 11]))  # two per class: still one in each part
    assert [p.class_counts()[:2] for p in tiny.split(0.2)] == [[1, 1], [1, 1]]


def test_subset_and_keep_classes():
    d = load_digits(8)
    assert len(d.subset(d.labels == 3)) == d.class_counts()[3]
    kept = d.keep_classes(["seven", "one"])
    assert kept.class_names == ["seven", "one"] and kept.class_counts() == [d.class_counts()[7], d.class_counts()[1]]
    assert torch.equal(kept.images[kept.labels == 0], d.images[d.labels == 7])
    with pytest.raises(ValueError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), ["a"], "x")


def test_dataset_items_and_flips():
    d = make_textures(16, 4)
    x, y = d.dataset()[5]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert y.dtype == torch.int64 and y.item() == 1 and len(d.dataset()) == len(d)
    assert torch.equal(x, to_float(d.images[5]))
    flipping = d.dataset(hflip=True, seed=3)
    items = []
    for epoch in range(40):
        flipping.set_epoch(epoch)
        items.append(flipping[5][0])
    flipped = sum(torch.equal(item, x.flip(-1)) for item in items)
    assert all(torch.equal(item, x) or torch.equal(item, x.flip(-1)) for item in items)
    assert 8 < flipped < 32  # a new coin per epoch


def test_flips_are_a_function_of_seed_epoch_and_index():
    # what a DataLoader worker, a resumed run or a different loading order sees: the same flips
    d = make_textures(16, 4)
    a, b = d.dataset(hflip=True, seed=1), d.dataset(hflip=True, seed=1)
    a.set_epoch(2)
    torch.manual_seed(123)  # the global RNG plays no part
    forward = [a[i][0] for i in range(len(d))]
    b.set_epoch(2)
    backward = [b[i][0] for i in reversed(range(len(d)))][::-1]
    assert all(torch.equal(f, g) for f, g in zip(forward, backward))
    other_seed = d.dataset(hflip=True, seed=2)
    other_seed.set_epoch(2)
    assert not torch.equal(a.flips, other_seed.flips) and 0.2 < a.flips.float().mean() < 0.8


# ------------------------------------------------------------------ folders


def write_image(path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def tree(tmp_path):
    """images/cats: 2 RGB images; images/dogs: an RGBA and an L image, plus files to ignore."""
    root = tmp_path / "images"
    write_image(root / "cats" / "a.png", (40, 20), (255, 0, 0))
    write_image(root / "cats" / "b.JPG", (30, 30), (0, 255, 0))
    write_image(root / "dogs" / "c.png", (20, 20), (0, 0, 255, 128), mode="RGBA")
    write_image(root / "dogs" / "d.bmp", (25, 50), 100, mode="L")
    write_image(root / "dogs" / ".hidden.png", (8, 8), 0)
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    return root


def test_load_folder(tree):
    d = load_folder(tree, 8, progress=False)
    assert d.images.shape == (4, 3, 8, 8) and d.images.dtype == torch.uint8
    assert d.class_names == ["cats", "dogs"] and d.labels.tolist() == [0, 0, 1, 1] and d.name == "images"
    assert d.images[0, :, 4, 4].tolist() == [255, 0, 0]
    assert d.images[2, :, 4, 4].tolist() == [127, 127, 255]  # blue at alpha 128 over white
    assert d.images[3, :, 4, 4].tolist() == [100, 100, 100]  # grayscale among colour: copied to 3 channels


def test_center_crop_keeps_the_middle(tmp_path):
    wide = Image.new("RGB", (64, 32), (255, 0, 0))
    wide.paste((0, 0, 255), (32, 0, 64, 32))  # left half red, right half blue
    tall = wide.rotate(90, expand=True)  # (32, 64): top half blue, bottom half red
    wide.save(tmp_path / "wide.png")
    (tmp_path / "r" / "w").mkdir(parents=True)
    (tmp_path / "r" / "t").mkdir()
    wide.save(tmp_path / "r" / "w" / "wide.png")
    tall.save(tmp_path / "r" / "t" / "tall.png")
    d = load_folder(tmp_path / "r", 16, progress=False)
    tall_img, wide_img = d.images[0], d.images[1]  # classes sorted: t, w
    assert wide_img[0, :, :6].min() > 240 and wide_img[2, :, :6].max() < 15  # left part red
    assert wide_img[2, :, 10:].min() > 240 and wide_img[0, :, 10:].max() < 15  # right part blue
    assert tall_img[2, :6, :].min() > 240 and tall_img[0, 10:, :].min() > 240  # top blue, bottom red


def test_greyscale_tree_gives_one_channel(tmp_path):
    write_image(tmp_path / "g" / "a" / "1.png", (12, 12), 50, mode="L")
    write_image(tmp_path / "g" / "b" / "2.gif", (12, 20), 200, mode="L")
    d = load_folder(tmp_path / "g", 8, progress=False)
    assert d.images.shape == (2, 1, 8, 8) and d.images[:, 0, 4, 4].tolist() == [50, 200]


def test_classes_filter(tree):
    d = load_folder(tree, 8, classes=["dogs"], progress=False)
    assert d.class_names == ["dogs"] and d.labels.tolist() == [0, 0]
    with pytest.raises(DataError, match=r"horses not found.*available: cats, dogs"):
        load_folder(tree, 8, classes=["dogs", "horses"], progress=False)


def test_folder_errors(tmp_path, tree):
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "missing", 8)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        load_folder(tmp_path / "file.png", 8)
    write_image(tmp_path / "flat" / "x.png", (8, 8), 0)
    with pytest.raises(DataError, match=r"no class sub-folders; expected the layout root/<class>/<image>"):
        load_folder(tmp_path / "flat", 8)
    (tree / "empty").mkdir()
    (tree / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*empty has no images") as info:
        load_folder(tree, 8, progress=False)
    assert "\n" not in str(info.value)


def test_corrupt_images_are_named(tree):
    (tree / "cats" / "garbage.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"cannot read image .*garbage\.png.*python -m ddpm_lib\.data check --data-dir"):
        load_folder(tree, 8, progress=False)
    (tree / "cats" / "garbage.png").unlink()
    Image.effect_noise((64, 64), 50).convert("RGB").save(tree / "cats" / "trunc.png")
    png = (tree / "cats" / "trunc.png").read_bytes()
    (tree / "cats" / "trunc.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(DataError, match=r"cannot read image .*trunc\.png"):
        load_folder(tree, 8, progress=False)


# ------------------------------------------------------------------ check tool


def test_check_data_report(tree):
    (tree / "cats" / "bad.jpg").write_bytes(b"\xff\xd8 nope")
    Image.effect_noise((64, 64), 50).convert("RGB").save(tree / "cats" / "trunc.png")
    png = (tree / "cats" / "trunc.png").read_bytes()
    (tree / "cats" / "trunc.png").write_bytes(png[: len(png) // 2])
    write_image(tree / "cats" / "e.png", (30, 30), (1, 2, 3))
    report = check_data(tree)
    assert report.class_counts == {"cats": 3, "dogs": 2}
    assert report.imbalance_ratio == 1.5
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in report.unreadable) == ["bad.jpg", "trunc.png"]
    assert all(reason for _, reason in report.unreadable) and not report.ok
    assert report.ignored == 1 and report.sizes[(30, 30)] == 2 and report.modes["L"] == 1
    text = format_report(report)
    assert "bad.jpg" in text and "trunc.png" in text and "truncated" in text and "1.50" in text
    assert text.splitlines()[-1].startswith("PROBLEMS: 2 unreadable")
    (tree / "birds").mkdir()
    empty = check_data(tree)
    assert math.isinf(empty.imbalance_ratio) and "birds" in format_report(empty).splitlines()[-1]


def test_check_report_of_a_clean_tree(tree):
    report = check_data(tree)
    assert report.ok and report.unreadable == [] and report.imbalance_ratio == 1.0
    text = format_report(report)
    assert text.splitlines()[-1] == "OK" and "cats" in text and "RGBA: 1" in text
    with pytest.raises(DataError, match="does not exist"):
        check_data(tree / "nope")


def test_check_cli(tree, tmp_path):
    proc = run_module("data", "check", "--data-dir", str(tree))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout
    (tree / "dogs" / "broken.png").write_bytes(b"junk")
    proc = run_module("data", "check", "--data-dir", str(tree))
    assert proc.returncode == 1 and "broken.png" in proc.stdout and "PROBLEMS" in proc.stdout
    assert_one_line_error(run_module("data", "check", "--data-dir", str(tmp_path / "nope")), "does not exist")


def test_show_cli(tmp_path):
    out = tmp_path / "grid.png"
    proc = run_module("data", "show", "--dataset", "textures", "--img-size", "16", "--per-class", "3",
                      "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as grid:
        assert grid.size == (4 * (3 * 17 + 1), 4 * (len(TEXTURE_NAMES) * 17 + 1))  # 16 px tiles, 1 px gaps, 4x zoom


# ------------------------------------------------------------------ load_data


def test_load_data_dispatch(tree):
    digits = load_data(DataConfig(dataset="digits", img_size=8))
    assert digits.images.shape == (1797, 1, 8, 8) and digits.name == "digits"
    tex = load_data(DataConfig(dataset="textures", img_size=16, per_class=10))
    assert tex.images.shape == (10 * len(TEXTURE_NAMES), 3, 16, 16)
    assert torch.equal(tex.images, make_textures(16, 10, seed=0).images)
    folder = load_data(DataConfig(dataset="folder", data_dir=str(tree), img_size=8), progress=False)
    assert folder.class_names == ["cats", "dogs"] and len(folder) == 4


def test_load_data_class_filter(tree):
    tex = load_data(DataConfig(dataset="textures", img_size=16, per_class=5, classes=["noise", "dots"]))
    assert tex.class_names == ["noise", "dots"] and tex.labels.tolist() == [1] * 5 + [0] * 5
    assert torch.equal(tex.images[tex.labels == 0], make_textures(16, 5).keep_classes(["noise"]).images)
    folder = load_data(DataConfig(dataset="folder", data_dir=str(tree), classes=["dogs"]), progress=False)
    assert folder.class_names == ["dogs"]
    with pytest.raises(DataError, match=r"unknown class\(es\) ten .*valid: zero, one"):
        load_data(DataConfig(dataset="digits", classes=["ten"]))


# ------------------------------------------------------------------ image modes and orientation


def _gradient_16bit():
    """A 64x64 uint16 ramp over 0..65535 and its 8-bit twin, round(v / 257)."""
    wide = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    return wide, np.round(wide / 257).astype(np.uint8)


def _write_png_16bit_rgb(path, rgb):
    """Save uint16 (H, W, 3) as a 16-bit colour PNG, which PIL can read but not write."""
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_16_bit_and_32_bit_integer_images_load_like_their_8_bit_twin(tmp_path):
    wide, narrow = _gradient_16bit()
    root = tmp_path / "r"
    for name in ("a8", "b16", "c16big", "d32"):
        (root / name).mkdir(parents=True)
    Image.fromarray(narrow).save(root / "a8" / "x.png")
    Image.fromarray(wide).save(root / "b16" / "x.png")  # PIL mode I;16
    Image.fromarray(wide.astype(">u2")).save(root / "c16big" / "x.tif")  # I;16B
    Image.fromarray(wide.astype(np.int32)).save(root / "d32" / "x.tif")  # I, values within 0..65535
    d = load_folder(root, 16, progress=False)
    assert d.images.shape == (4, 1, 16, 16)
    assert d.images[0].float().mean() == pytest.approx(127.5, abs=3)  # the 8-bit twin is a real ramp
    for image in d.images[1:]:  # was 97.7% white before: convert("RGB") saturates 16-bit values
        assert (image.int() - d.images[0].int()).abs().max() <= 1


def test_float_images_read_as_0_to_1_clipped(tmp_path):
    for name, value in [("a", -1.0), ("b", 0.25), ("c", 0.5), ("d", 7.0)]:
        write_image(tmp_path / "f" / name / "x.tif", (8, 8), value, mode="F")
    d = load_folder(tmp_path / "f", 4, progress=False)
    assert d.images[:, 0, 2, 2].tolist() == [0, 64, 128, 255]


def test_transparency_is_composited_over_white(tmp_path):
    root = tmp_path / "t"
    write_image(root / "a" / "rgba.png", (8, 8), (255, 0, 0, 0), mode="RGBA")  # red, fully transparent
    write_image(root / "b" / "la.png", (8, 8), (0, 0), mode="LA")
    write_image(root / "d" / "opaque.png", (8, 8), (0, 0, 255, 255), mode="RGBA")
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.paste(1, (0, 0, 8, 4))  # top half green, bottom half red and transparent
    (root / "c").mkdir()
    palette.save(root / "c" / "p.png", transparency=0)
    d = load_folder(root, 8, progress=False)
    assert d.images[0, :, 4, 4].tolist() == [255, 255, 255] and d.images[1, :, 4, 4].tolist() == [255, 255, 255]
    assert d.images[2, :, 1, 4].tolist() == [0, 255, 0] and d.images[2, :, 6, 4].tolist() == [255, 255, 255]
    assert d.images[3, :, 4, 4].tolist() == [0, 0, 255]  # opaque pixels keep their colour


def test_cmyk_jpeg_loads_in_colour(tmp_path):
    write_image(tmp_path / "c" / "red" / "x.jpg", (16, 16), (0, 255, 255, 0), mode="CMYK")
    write_image(tmp_path / "c" / "white" / "x.jpg", (16, 16), (0, 0, 0, 0), mode="CMYK")
    red, white = load_folder(tmp_path / "c", 8, progress=False).images[:, :, 4, 4].tolist()
    assert red[0] > 240 and max(red[1:]) < 15 and min(white) > 240


def test_exif_orientation_is_applied(tmp_path):
    upright = Image.new("RGB", (32, 32), (255, 0, 0))
    upright.paste((0, 0, 255), (0, 16, 32, 32))  # top half red, bottom half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as phone cameras write
    (tmp_path / "e" / "phone").mkdir(parents=True)
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "e" / "phone" / "x.jpg", exif=exif.tobytes())
    image = load_folder(tmp_path / "e", 16, progress=False).images[0]
    assert image[0, :5].min() > 230 and image[2, :5].max() < 25  # top rows red
    assert image[2, 11:].min() > 230 and image[0, 11:].max() < 25  # bottom rows blue


def test_check_reports_bit_depths_and_warns_about_lossy_conversions(tmp_path):
    wide, _ = _gradient_16bit()
    root = tmp_path / "w"
    (root / "grey").mkdir(parents=True)
    Image.fromarray(wide).save(root / "grey" / "g16.png")
    Image.fromarray(wide.astype(np.int32) * 2).save(root / "grey" / "i32.tif")
    write_image(root / "grey" / "f.tif", (8, 8), 0.5, mode="F")
    _write_png_16bit_rgb(root / "colour" / "rgb16.png", np.stack([wide, wide // 2, wide // 4], -1))
    write_image(root / "colour" / "cmyk.jpg", (8, 8), (0, 255, 255, 0), mode="CMYK")
    write_image(root / "colour" / "half.png", (8, 8), (0, 0, 255, 128), mode="RGBA")
    report = check_data(root)
    assert report.ok and report.problems == [] and report.class_counts == {"colour": 3, "grey": 3}
    assert report.depths == {("I;16", 16): 1, ("I", 32): 1, ("F", 32): 1, ("RGB", 16): 1, ("CMYK", 8): 1,
                             ("RGBA", 8): 1}
    assert report.modes["I;16"] == 1  # the old field still counts modes
    warned = {warning.split(" (e.g.")[0]: warning for warning in report.warnings}
    assert set(warned) == {"2 image(s) had 16-bit samples, reduced to 8 bits",
                           "1 image(s) were 32-bit integer (mode I), read as 16-bit 0..65535 "
                           "(values outside clipped) and reduced to 8 bits",
                           "1 image(s) were floating-point (mode F), read as 0..1 (values outside clipped) "
                           "and reduced to 8 bits",
                           "1 image(s) were CMYK, converted to RGB without a colour profile (colours may shift)",
                           "1 image(s) had transparent pixels, composited over a white background"}
    assert "half.png" in warned["1 image(s) had transparent pixels, composited over a white background"]
    lines = format_report(report).splitlines()
    assert "mode / bits per sample: " in "\n".join(lines) and "I;16 / 16: 1" in "\n".join(lines)
    assert sum(line.startswith("warning: ") for line in lines) == 5 and lines[-1] == "OK"


def test_check_of_an_8_bit_opaque_tree_has_no_warnings(tmp_path):
    root = tmp_path / "plain"
    write_image(root / "a" / "rgb.png", (8, 8), (1, 2, 3))
    write_image(root / "a" / "photo.jpg", (8, 8), (200, 100, 50))
    write_image(root / "b" / "grey.png", (8, 8), 7, mode="L")
    write_image(root / "b" / "opaque.png", (8, 8), (1, 2, 3, 255), mode="RGBA")
    write_image(root / "b" / "palette.gif", (8, 8), 3, mode="P")
    report = check_data(root)
    assert report.ok and report.warnings == [] and report.conversions == {}
    assert {bits for _, bits in report.depths} == {8} and sum(report.depths.values()) == 5
    assert "warning" not in format_report(report)
