"""Embedded datasets, folder datasets, the check tool, and every data error."""

import math

import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, run_module
from ddpm_lib.config import DataConfig
from ddpm_lib.data import (DIGIT_NAMES, TEXTURE_NAMES, check_data, format_report, load_data, load_digits,
                           load_folder, make_textures, to_float, to_uint8)
from ddpm_lib.errors import DataError


def test_digits():
    d = load_digits(16)
    assert d.images.shape == (1797, 1, 16, 16) and d.images.dtype == torch.uint8
    assert d.class_names == DIGIT_NAMES and sorted(set(d.labels.tolist())) == list(range(10))
    assert d.images.min() == 0 and d.images.max() >= 250
    assert load_digits(8).images.shape[-1] == 8


def test_textures_deterministic_and_distinct():
    a, b, c = make_textures(16, 30, seed=0), make_textures(16, 30, seed=0), make_textures(16, 30, seed=1)
    assert a.images.shape == (6 * 30, 3, 16, 16) and a.class_names == TEXTURE_NAMES
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert all(a.images[a.labels == k].float().std() > 20 for k in range(6))


def test_uint8_float_round_trip():
    u = torch.arange(256, dtype=torch.uint8)
    f = to_float(u)
    assert f.min() == -1 and f.max() == 1
    assert torch.equal(to_uint8(f), u)


def test_split_is_stratified_disjoint_and_deterministic():
    d = load_digits(8)
    train, test = d.split(0.2, seed=0)
    assert len(train) + len(test) == len(d)
    assert all(n > 0 for n in test.class_counts()) and all(n > 0 for n in train.class_counts())
    assert abs(len(test) - 0.2 * len(d)) < 10
    again, _ = d.split(0.2, seed=0)
    assert torch.equal(again.images, train.images)


def test_dataset_items_and_flips():
    d = make_textures(16, 4)
    x, y = d.dataset()[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert y.dtype == torch.long
    flipping = d.dataset(hflip=True)
    torch.manual_seed(0)
    flipped = sum(not torch.equal(flipping[0][0], x) for _ in range(20))
    assert 3 < flipped < 17
    for _ in range(5):
        item = flipping[0][0]
        assert torch.equal(item, x) or torch.equal(item, x.flip(-1))


def write_image(path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    write_image(root / "cats" / "a.png", (40, 20), (255, 0, 0))
    write_image(root / "cats" / "b.jpg", (30, 30), (0, 255, 0))
    write_image(root / "dogs" / "c.png", (20, 20), (0, 0, 255, 128), mode="RGBA")
    write_image(root / "dogs" / "d.bmp", (25, 50), 100, mode="L")
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


def test_load_folder(tree):
    d = load_folder(tree, 8, progress=False)
    assert d.images.shape == (4, 3, 8, 8) and d.class_names == ["cats", "dogs"] and d.labels.tolist() == [0, 0, 1, 1]
    assert d.name == "images"


def test_center_crop_keeps_the_middle(tmp_path):
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    img.paste((0, 0, 255), (10, 0, 20, 10))  # blue middle third
    (tmp_path / "r" / "x").mkdir(parents=True)
    img.save(tmp_path / "r" / "x" / "wide.png")
    d = load_folder(tmp_path / "r", 10, progress=False)
    assert d.images[0, :, 5, 5].tolist() == [0, 0, 255]
    assert d.images[0, 2, :, 1:-1].min() > 200  # the red sides were cropped away


def test_greyscale_tree_gives_one_channel(tmp_path):
    write_image(tmp_path / "g" / "a" / "1.png", (12, 12), 50, mode="L")
    write_image(tmp_path / "g" / "b" / "2.png", (12, 12), 200, mode="L")
    assert load_folder(tmp_path / "g", 8, progress=False).channels == 1


def test_classes_filter(tree):
    d = load_folder(tree, 8, classes=["dogs"], progress=False)
    assert d.class_names == ["dogs"] and d.labels.tolist() == [0, 0]
    with pytest.raises(DataError, match="class folders horses not found.*available: cats, dogs"):
        load_folder(tree, 8, classes=["horses"], progress=False)


def test_folder_errors(tmp_path, tree):
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "missing", 8)
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "x.png", (8, 8), 0)
    with pytest.raises(DataError, match=r"no class folders; expected the layout root/<class>/<image>"):
        load_folder(tmp_path / "flat", 8)
    (tree / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no images"):
        load_folder(tree, 8)


def test_corrupt_images_are_named(tree):
    (tree / "cats" / "garbage.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"cannot read image .*garbage\.png.*ddpm_lib\.data check"):
        load_folder(tree, 8, progress=False)
    (tree / "cats" / "garbage.png").unlink()
    big = Image.effect_noise((64, 64), 50).convert("RGB")
    big.save(tree / "cats" / "trunc.png")
    data = (tree / "cats" / "trunc.png").read_bytes()
    (tree / "cats" / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"trunc\.png"):
        load_folder(tree, 8, progress=False)


def test_check_data_report(tree):
    (tree / "cats" / "bad.jpg").write_bytes(b"\xff\xd8 nope")
    write_image(tree / "cats" / "e.png", (30, 30), (1, 2, 3))
    report = check_data(tree)
    assert report.class_counts == {"cats": 3, "dogs": 2}
    assert report.imbalance_ratio == 1.5
    assert [p.endswith("bad.jpg") for p, _ in report.unreadable] == [True]
    assert report.ignored == 1 and report.sizes[(30, 30)] == 2 and report.modes["L"] == 1
    text = format_report(report)
    assert "bad.jpg" in text and "PROBLEMS" in text and "1.50" in text
    (tree / "birds").mkdir()
    assert math.isinf(check_data(tree).imbalance_ratio)


def test_check_cli(tree, tmp_path):
    proc = run_module("data", "check", "--data-dir", str(tree))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout
    (tree / "dogs" / "broken.png").write_bytes(b"junk")
    proc = run_module("data", "check", "--data-dir", str(tree))
    assert proc.returncode == 1 and "broken.png" in proc.stdout
    assert_one_line_error(run_module("data", "check", "--data-dir", str(tmp_path / "nope")), "does not exist")


def test_load_data_dispatch(tree):
    assert load_data(DataConfig(dataset="digits", img_size=8)).images.shape == (1797, 1, 8, 8)
    tex = load_data(DataConfig(dataset="textures", img_size=16, per_class=5, classes=["dots", "noise"]))
    assert tex.class_names == ["dots", "noise"] and sorted(set(tex.labels.tolist())) == [0, 1] and len(tex) == 10
    assert load_data(DataConfig(dataset="folder", data_dir=str(tree), img_size=8), progress=False).num_classes == 2
    with pytest.raises(DataError, match="unknown classes ten"):
        load_data(DataConfig(dataset="digits", classes=["ten"]))
