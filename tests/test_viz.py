"""Grids: layout, scaling and class rows."""

import torch

from ddpm_lib.viz import as_uint8, class_grid, image_grid


def test_as_uint8_maps_range():
    out = as_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    assert out.tolist() == [0, 128, 255, 255]
    u = torch.tensor([3], dtype=torch.uint8)
    assert as_uint8(u) is u


def test_image_grid_layout():
    images = torch.zeros(5, 3, 4, 4, dtype=torch.uint8)
    images[4] = 200
    grid = image_grid(images, nrow=3, pad=1)
    assert grid.size == (3 * 5 + 1, 2 * 5 + 1) and grid.mode == "RGB"
    assert grid.getpixel((1 + 5, 1 + 5)) == (200, 200, 200)  # 5th image: row 1, column 1
    assert grid.getpixel((0, 0)) == (255, 255, 255)  # padding is white
    assert image_grid(images[:, :1], nrow=5, scale=2).mode == "L"


def test_class_grid_one_row_per_class():
    images = torch.randint(0, 255, (6, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([2, 2, 0, 0, 0, 2])
    sheet = class_grid(images, labels, ["zero", "one", "two"], scale=1)
    row = image_grid(images[:3], nrow=3)
    assert sheet.height == 2 * row.height and sheet.width > row.width  # 2 classes, labels on the left
