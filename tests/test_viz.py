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


# --- forward-noising pictures ------------------------------------------------------

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from PIL import Image  # noqa: E402

from ddpm_lib.diffusion import q_sample  # noqa: E402
from ddpm_lib.schedules import cosine, linear  # noqa: E402
from ddpm_lib.viz import noising_strip, plot_schedules, schedule_destruction_gif  # noqa: E402


def test_noising_strip_tiles_match_q_sample():
    sched = cosine(50)
    x0 = torch.linspace(-1, 1, 3 * 8 * 8).reshape(3, 8, 8)
    strip = noising_strip(sched, x0, [0, 25, 49], seed=3, scale=2)
    assert strip.mode == "RGB" and strip.width == 3 * (16 + 2) + 2
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    expected = as_uint8(q_sample(sched, x0.expand(3, 3, 8, 8), torch.tensor([0, 25, 49]), noise.expand(3, 3, 8, 8)))
    for i in range(3):  # tile i sits at x = 2 + 18 i, y = 2, and is 16 x 16 (8 px at scale 2)
        tile = strip.crop((2 + 18 * i, 2, 2 + 18 * i + 16, 2 + 16)).resize((8, 8), Image.NEAREST)
        assert torch.equal(torch.from_numpy(np.array(tile)).permute(2, 0, 1), expected[i])
    # same noise at every step: the last tile is (nearly) the noise itself, not fresh noise
    assert torch.corrcoef(torch.stack([expected[2].flatten().float(), as_uint8(noise).flatten().float()]))[0, 1] > 0.95


def test_noising_strip_rejects_bad_input():
    with pytest.raises(ValueError):
        noising_strip(linear(10), torch.zeros(1, 1, 4, 4), [0])
    with pytest.raises(ValueError):
        noising_strip(linear(10), torch.zeros(1, 4, 4), [10])


def test_schedule_destruction_gif(tmp_path):
    x0 = torch.zeros(1, 8, 8)
    path = schedule_destruction_gif({"linear": linear(100), "cosine": cosine(100)}, x0, tmp_path / "sub" / "a.gif",
                                    frames=5, scale=2)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 5 and gif.is_animated
        assert gif.width == 2 * (16 + 2) + 2  # two panels side by side


def test_plot_schedules_three_panels():
    fig = plot_schedules({"linear": linear(100), "cosine": cosine(100)})
    axes = fig.axes
    assert len(axes) == 3 and [len(a.lines) for a in axes] == [2, 2, 2]
    assert np.allclose(axes[2].lines[1].get_ydata(), cosine(100).log_snr.numpy())


def test_read_log_keeps_the_last_record_of_redone_steps(tmp_path):
    import json

    from ddpm_lib.viz import read_log

    lines = [{"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.9}, {"step": 15, "loss": 0.8},  # crash after 15
             {"step": 15, "loss": 0.7}, {"step": 20, "loss": 0.6}]  # resumed from the snapshot at 10
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [(r["step"], r["loss"]) for r in read_log(tmp_path)] == [(5, 1.0), (10, 0.9), (15, 0.7), (20, 0.6)]
    assert len(read_log(tmp_path, latest_only=False)) == 5
    assert read_log(tmp_path / "missing") == []


def test_confusion_and_sweep_plots(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from ddpm_lib.viz import plot_confusion, plot_sweep, save_figure

    ax = plot_confusion(torch.tensor([[3, 1], [0, 4]]), ["a", "b"])
    assert [t.get_text() for t in ax.texts] == ["3", "1", "4"]  # zero cells stay blank
    rows = [{"sampler": "ddim", "steps": s, "guidance": 2.0, "class_accuracy": a, "fid": f, "fid_real": 0.1}
            for s, a, f in ((5, 0.9, 0.5), (50, 1.0, 0.2))]
    rows.append({"sampler": "ddpm", "steps": 1000, "guidance": 2.0, "class_accuracy": 1.0, "fid": 0.19, "fid_real": 0.1})
    axes = plot_sweep(rows, "steps")
    assert list(axes[0].lines[0].get_xdata()) == [5, 50]  # the DDPM chain is a reference line, not a point
    assert any("DDPM" in t.get_text() for t in axes[1].get_legend().get_texts())
    path = save_figure(axes[0].figure, tmp_path / "sub" / "sweep.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
