"""Datasets: two embedded ones that need no download, and any folder of class sub-folders.

- ``digits``: the 1,797 8x8 handwritten digits that scikit-learn ships inside its wheel
  (Alpaydin & Kaynak 1998, UCI), 10 classes, resized to ``img_size``; 1 channel.
- ``textures``: colour textures drawn by code (stripes, checks, dots, waves, bricks,
  noise), random colours, scale, angle and phase per image, identical for the same
  seed. The offline stand-in for the Describable Textures Dataset (Cimpoi et al. 2014).
- ``folder``: any ``root/<class>/<image>`` tree, e.g. DTD's ``images/`` or Animals-10's
  ``raw-img/``; each image is resized (shorter side) and centre-cropped to a square.

Everything is decoded once into memory as uint8 ``(N, C, H, W)`` in :class:`ImageData`;
``ImageData.dataset()`` serves float32 images in [-1, 1] for training. Check a folder
before training on it::

    python -m ddpm_lib.data check --data-dir path/to/dtd/images
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .errors import DataError, cli

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEXTURE_NAMES = ["stripes", "checks", "dots", "waves", "bricks", "noise"]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped and rounded)."""
    return ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


class _TensorImages(torch.utils.data.Dataset):
    """Items ``(float32 (C, H, W) in [-1, 1], int64 label)``, optionally flipped left-right."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, hflip: bool):
        self.images, self.labels, self.hflip = images, labels, hflip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = to_float(self.images[i])
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


@dataclass
class ImageData:
    """A labelled image set held in memory."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    class_names: list[str]
    name: str

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def img_size(self) -> int:
        return self.images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, indices) -> ImageData:
        indices = torch.as_tensor(indices, dtype=torch.long)
        return ImageData(self.images[indices], self.labels[indices], list(self.class_names), self.name)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageData, ImageData]:
        """A (train, test) split with ``test_fraction`` of every class in the test part."""
        generator = torch.Generator().manual_seed(seed)
        train_idx, test_idx = [], []
        for c in range(self.num_classes):
            members = torch.nonzero(self.labels == c).flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            n_test = max(1, round(len(members) * test_fraction)) if len(members) > 1 else 0
            test_idx.append(members[:n_test])
            train_idx.append(members[n_test:])
        return self.subset(torch.cat(train_idx).sort().values), self.subset(torch.cat(test_idx).sort().values)

    def dataset(self, hflip: bool = False) -> torch.utils.data.Dataset:
        """A torch Dataset of ``(float32 (C, H, W) in [-1, 1], label)``; ``hflip`` flips half the
        items left-right, drawing from torch's global RNG."""
        return _TensorImages(self.images, self.labels, hflip)

    def keep_classes(self, names: list[str]) -> ImageData:
        """Only the classes ``names``, relabelled 0..K-1 in that order."""
        missing = [n for n in names if n not in self.class_names]
        if missing:
            raise DataError(f"unknown classes {', '.join(missing)} in data.classes; "
                            f"available: {', '.join(self.class_names)}")
        old = torch.tensor([self.class_names.index(n) for n in names])
        keep = torch.isin(self.labels, old)
        relabel = torch.full((self.num_classes,), -1, dtype=torch.long)
        relabel[old] = torch.arange(len(names))
        return ImageData(self.images[keep], relabel[self.labels[keep]], list(names), self.name)


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float images (N, C, H, W) to (N, C, size, size), antialiased when shrinking."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < images.shape[-1])


def load_digits(img_size: int = 16) -> ImageData:
    """scikit-learn's bundled 8x8 digits (values 0..16), resized: uint8 (1797, 1, img_size, img_size)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    x = resize_square(x, img_size).clamp(0, 1)
    images = (x * 255).round().to(torch.uint8)
    return ImageData(images, torch.tensor(bunch.target, dtype=torch.long), list(DIGIT_NAMES), "digits")


def _texture_pattern(kind: str, u: torch.Tensor, v: torch.Tensor, params: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """The [0, 1] mask of one texture class. u, v: rotated, scaled coordinates (n, H, W)
    measured in pattern periods; params: (n, 4) uniform random numbers per image."""
    p = params[:, :, None, None].unbind(1)
    if kind == "stripes":
        return (torch.sin(2 * math.pi * u) > (p[0] - 0.5) * 0.8).float()
    if kind == "checks":
        return ((torch.floor(u).long() + torch.floor(v).long()) % 2).float()
    if kind == "dots":
        radius = 0.22 + 0.12 * p[0]
        du, dv = u - torch.floor(u) - 0.5, v - torch.floor(v) - 0.5
        return (du**2 + dv**2 < radius**2).float()
    if kind == "waves":
        wobble = 0.25 * (1 + p[0]) * torch.sin(2 * math.pi * v * (0.5 + 0.5 * p[1]))
        return 0.5 + 0.5 * torch.sin(2 * math.pi * (u + wobble))
    if kind == "bricks":
        row = torch.floor(v * 2)
        shifted = u + 0.5 * (row % 2)
        mortar = ((shifted - torch.floor(shifted)) < 0.12) | ((v * 2 - row) < 0.18)
        return (~mortar).float()
    if kind == "noise":
        n, h, w = u.shape
        coarse = torch.rand((n, 1, max(2, h // 4), max(2, w // 4)), generator=generator)
        fine = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return (fine - fine.amin((1, 2), keepdim=True)) / (fine.amax((1, 2), keepdim=True)
                                                          - fine.amin((1, 2), keepdim=True) + 1e-6)
    raise ValueError(kind)


def make_textures(img_size: int = 32, per_class: int = 400, seed: int = 0) -> ImageData:
    """Procedural colour textures: uint8 (6 * per_class, 3, img_size, img_size), classes
    ``TEXTURE_NAMES``. Each image draws its two colours (kept apart in brightness so the
    pattern shows), period, angle, phase and shape parameters from a generator seeded
    with ``seed``: the class is the pattern, never the colour."""
    generator = torch.Generator().manual_seed(seed)
    coords = (torch.arange(img_size, dtype=torch.float32) + 0.5) / img_size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images, labels = [], []
    for label, kind in enumerate(TEXTURE_NAMES):
        n = per_class
        rand = lambda *shape: torch.rand(shape, generator=generator)  # noqa: E731
        periods = 3 + 4 * rand(n, 1, 1)  # pattern repeats 3-7 times across the image
        angle = math.pi * rand(n, 1, 1)
        if kind in ("checks", "bricks"):
            angle = angle * 0.15  # near axis-aligned: these read best straight
        phase_u, phase_v = rand(n, 1, 1), rand(n, 1, 1)
        u = (xx * torch.cos(angle) + yy * torch.sin(angle)) * periods + phase_u
        v = (-xx * torch.sin(angle) + yy * torch.cos(angle)) * periods + phase_v
        mask = _texture_pattern(kind, u, v, rand(n, 4), generator)
        dark = 0.45 * rand(n, 3)  # a dark and a light colour, random hues
        light = 0.55 + 0.45 * rand(n, 3)
        swap = rand(n, 1) < 0.5
        fg, bg = torch.where(swap, dark, light), torch.where(swap, light, dark)
        img = bg[:, :, None, None] + (fg - bg)[:, :, None, None] * mask[:, None]
        img = img + 0.03 * torch.randn(img.shape, generator=generator)  # sensor-like jitter
        images.append((img.clamp(0, 1) * 255).round().to(torch.uint8))
        labels.append(torch.full((n,), label, dtype=torch.long))
    return ImageData(torch.cat(images), torch.cat(labels), list(TEXTURE_NAMES), "textures")


def _class_folders(root: Path) -> list[Path]:
    if not root.exists():
        raise DataError(f"data directory {root} does not exist; download the dataset or fix data.data_dir")
    if not root.is_dir():
        raise DataError(f"data directory {root} is not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no class folders; expected the layout root/<class>/<image>")
    return folders


def _image_files(folder: Path) -> tuple[list[Path], int]:
    """(image files, number of other files) directly inside ``folder``."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    return images, len(files) - len(images)


def _decode(path: Path) -> Image.Image:
    """Open and fully decode an image (``load`` catches truncated files that ``open`` misses)."""
    with Image.open(path) as img:
        img.load()
        return img.copy()


def load_folder(root, img_size: int, classes: list[str] | None = None, progress: bool = True) -> ImageData:
    """Every image under ``root/<class>/`` as uint8 (N, C, img_size, img_size): shorter side resized
    to ``img_size``, centre-cropped. C is 1 when every image is greyscale, else 3."""
    root = Path(root)
    folders = _class_folders(root)
    if classes is not None:
        names = [f.name for f in folders]
        missing = [c for c in classes if c not in names]
        if missing:
            raise DataError(f"class folders {', '.join(missing)} not found in {root}; available: {', '.join(names)}")
        folders = [root / c for c in classes]
    files, labels = [], []
    for label, folder in enumerate(folders):
        images, _ = _image_files(folder)
        if not images:
            raise DataError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                            f"add images or remove the folder")
        files += images
        labels += [label] * len(images)
    decoded = []
    iterator = files
    if progress and len(files) > 200:
        from tqdm.auto import tqdm
        iterator = tqdm(files, desc=f"decoding {root.name}", unit="img", file=sys.stdout, mininterval=2.0)
    for path in iterator:
        try:
            img = _decode(path)
        except Exception as err:
            raise DataError(f"cannot read image {path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                            f"run python -m ddpm_lib.data check --data-dir {root}") from None
        decoded.append(img)
    grey = all(img.mode in ("L", "1", "I;16", "I") for img in decoded)
    arrays = []
    for img in decoded:
        img = img.convert("L" if grey else "RGB")
        img = ImageOps.fit(img, (img_size, img_size), method=Image.BICUBIC)
        t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        arrays.append(t.view(img_size, img_size, -1).permute(2, 0, 1))
    return ImageData(torch.stack(arrays), torch.tensor(labels, dtype=torch.long), [f.name for f in folders], root.name)


def load_data(cfg, progress: bool = True) -> ImageData:
    """The dataset a ``config.DataConfig`` names, filtered to ``cfg.classes`` if given."""
    if cfg.dataset == "digits":
        data = load_digits(cfg.img_size)
    elif cfg.dataset == "textures":
        data = make_textures(cfg.img_size, cfg.per_class, seed=0)
    elif cfg.dataset == "folder":
        return load_folder(cfg.data_dir, cfg.img_size, cfg.classes, progress)
    else:
        raise DataError(f"unknown dataset {cfg.dataset!r}; choose digits, textures or folder")
    return data.keep_classes(cfg.classes) if cfg.classes else data


@dataclass
class DataReport:
    """What :func:`check_data` found in a folder dataset."""

    root: str
    class_counts: dict[str, int]
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> count
    modes: Counter = field(default_factory=Counter)  # PIL mode -> count
    ignored: int = 0  # files that are not images

    @property
    def imbalance_ratio(self) -> float:
        """Largest class count over the smallest (inf if a class is empty)."""
        counts = list(self.class_counts.values())
        return math.inf if min(counts) == 0 else max(counts) / min(counts)

    @property
    def ok(self) -> bool:
        return not self.unreadable and min(self.class_counts.values()) > 0


def check_data(root, progress: bool = False) -> DataReport:
    """Decode every image under ``root/<class>/`` and report counts, sizes, modes and failures."""
    root = Path(root)
    report = DataReport(str(root), {})
    for folder in _class_folders(root):
        images, ignored = _image_files(folder)
        report.ignored += ignored
        readable = 0
        for path in images:
            try:
                img = _decode(path)
            except Exception as err:
                report.unreadable.append((str(path), f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))
                continue
            readable += 1
            report.sizes[img.size] += 1
            report.modes[img.mode] += 1
        report.class_counts[folder.name] = readable
    return report


def format_report(report: DataReport) -> str:
    """A human-readable summary of a :class:`DataReport`."""
    counts = report.class_counts
    width = max(len(n) for n in counts)
    most = max(counts.values()) or 1
    lines = [f"dataset {report.root}: {len(counts)} classes, {sum(counts.values())} readable images", ""]
    for name in sorted(counts):
        lines.append(f"  {name:<{width}}  {counts[name]:>6}  {'#' * round(30 * counts[name] / most)}")
    ratio = report.imbalance_ratio
    lines += ["", f"imbalance ratio (largest / smallest class): {'inf (an empty class)' if math.isinf(ratio) else f'{ratio:.2f}'}"]
    if report.sizes:
        lines.append("most common sizes: " + ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.sizes.most_common(5)))
        lines.append("modes: " + ", ".join(f"{m} ({n})" for m, n in report.modes.most_common()))
    if report.ignored:
        lines.append(f"ignored {report.ignored} non-image files")
    if report.unreadable:
        lines.append(f"{len(report.unreadable)} unreadable files:")
        lines += [f"  {path}: {reason}" for path, reason in report.unreadable]
    problems = []
    if report.unreadable:
        problems.append(f"{len(report.unreadable)} unreadable files (delete or replace them)")
    empty = [n for n, c in counts.items() if c == 0]
    if empty:
        problems.append(f"empty classes: {', '.join(sorted(empty))} (add images or remove the folders)")
    lines.append("OK" if not problems else "PROBLEMS: " + "; ".join(problems))
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lib.data", description="Inspect datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="report class counts, imbalance, sizes and unreadable files of a folder")
    check.add_argument("--data-dir", required=True, help="root of a root/<class>/<image> tree")
    show = sub.add_parser("show", help="save a grid of examples per class")
    show.add_argument("--dataset", choices=("digits", "textures"), default="digits")
    show.add_argument("--img-size", type=int, default=None)
    show.add_argument("--per-class", type=int, default=8)
    show.add_argument("--out", default="dataset.png")
    args = parser.parse_args(argv)
    if args.command == "check":
        report = check_data(args.data_dir)
        print(format_report(report))
        sys.exit(0 if report.ok else 1)
    from .viz import class_grid

    data = load_digits(args.img_size or 16) if args.dataset == "digits" else make_textures(args.img_size or 32, 50)
    picks = torch.cat([torch.nonzero(data.labels == c).flatten()[:args.per_class] for c in range(data.num_classes)])
    class_grid(data.images[picks], data.labels[picks], data.class_names).save(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
