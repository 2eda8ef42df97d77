"""Datasets: two embedded ones that need no download, and any folder of images.

Every loader returns an :class:`ImageData`: all images decoded once into memory as
``uint8`` tensors of shape ``(N, C, H, W)`` with square images, ``int64`` labels and
the class names. The model sees them as ``float32`` in ``[-1, 1]`` (:func:`to_float`).

``digits``
    scikit-learn's bundled handwritten digits: 1,797 grayscale 8x8 images of 0-9
    (values 0..16), resized to ``img_size``. Tiny, so a CPU trains on it in minutes.
``textures``
    Procedurally generated colour textures, an offline stand-in for the Describable
    Textures Dataset (DTD): stripes, checks, dots, waves, bricks, noise.
    Each image draws its own two contrasting colours, scale, orientation and phase,
    so the class is the *pattern*, never the colour.
``folder``
    Any ``root/<class>/<image>`` tree, e.g. DTD's ``images/`` or Animals-10's
    ``raw-img/``; the class is the sub-folder name. Each image is turned upright
    (its EXIF orientation, as phone photos carry) and converted to 8-bit RGB by
    rules that depend only on its PIL mode:

    - 16-bit greyscale (``I;16*``): ``0..65535`` scaled to ``0..255``, rounded
      (``round(v / 257)``). 16-bit colour PNGs and TIFFs PIL itself reads as 8-bit
      ``RGB`` or ``RGBA``, keeping each sample's high byte.
    - ``I`` (32-bit integers, e.g. from TIFF; PIL also decodes 16-bit PGM/PPM to
      it): read as 16-bit ``0..65535`` like the above, values outside clipped.
    - ``F`` (floats, e.g. float TIFFs): ``0..1`` scaled to ``0..255``; values
      outside ``[0, 1]`` clipped, NaN read as 0.
    - Transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, palette or colour-key
      transparency): composited over a white background (:data:`BACKGROUND`), so
      the arbitrary colour under transparent pixels never shows.
    - ``CMYK``: PIL's conversion, without any ICC colour profile.
    - ``1``, ``L``, ``P``, ``RGB``, ``YCbCr`` and anything else: PIL's ``convert("RGB")``.

    ``check`` (below) warns about each of these steps that loses information or
    assumes a range, with the number of images it applies to.

Before training on a folder, check it from a shell::

    python -m ddpm_lib.data check --data-dir path/to/root

which decodes every image and reports class counts, imbalance, sizes, modes and
bit depths, bad files, and warnings about lossy conversions.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .config import DataConfig
from .errors import DataError, cli

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CHECK_COMMAND = "python -m ddpm_lib.data check --data-dir"


# ---------------------------------------------------------------------------------
# The in-memory dataset
# ---------------------------------------------------------------------------------


@dataclass(eq=False)
class ImageData:
    """A labelled image dataset held in memory.

    ``images``: uint8 ``(N, C, H, W)`` with ``C`` 1 or 3 and ``H == W``;
    ``labels``: int64 ``(N,)`` with values ``0..len(class_names)-1``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, 1|3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.images.shape[2] != self.images.shape[3]:
            raise ValueError(f"images must be square, got {tuple(self.images.shape[2:])}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"need one label per image: {len(self.images)} images, labels {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

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
        return len(self.images)

    def __repr__(self) -> str:
        return (f"ImageData({self.name!r}: {len(self)} images, {self.channels}x{self.img_size}x{self.img_size}, "
                f"{self.num_classes} classes)")

    def class_counts(self) -> list[int]:
        """Number of images of each class, in label order."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, indices) -> ImageData:
        """The images at ``indices`` (a list, array, int64 tensor or boolean mask), same classes."""
        indices = torch.as_tensor(indices)
        if indices.dtype == torch.bool:
            indices = indices.nonzero().flatten()
        indices = indices.long()
        return ImageData(self.images[indices], self.labels[indices], list(self.class_names), self.name)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageData, ImageData]:
        """Split into ``(train, test)``, stratified: each class is split separately.

        Every class with at least two images lands in both parts. The split depends
        only on ``seed``, and both parts keep the original image order.
        """
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
        generator = torch.Generator().manual_seed(seed)
        train, test = [], []
        for label in range(self.num_classes):
            members = torch.nonzero(self.labels == label).flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            n_test = min(max(round(len(members) * test_fraction), 1), len(members) - 1) if len(members) > 1 else 0
            test.append(members[:n_test])
            train.append(members[n_test:])
        return self.subset(torch.cat(train).sort().values), self.subset(torch.cat(test).sort().values)

    def keep_classes(self, names: list[str]) -> ImageData:
        """Only the classes in ``names``, relabelled 0..K-1 in the order of ``names``."""
        unknown = [name for name in names if name not in self.class_names]
        if unknown:
            raise DataError(f"unknown class(es) {', '.join(unknown)} for dataset {self.name}; "
                            f"valid: {', '.join(self.class_names)}")
        names = list(dict.fromkeys(names))
        old_labels = torch.tensor([self.class_names.index(name) for name in names], dtype=torch.long)
        kept = self.subset(torch.isin(self.labels, old_labels))
        new_label = torch.full((self.num_classes,), -1, dtype=torch.long)
        new_label[old_labels] = torch.arange(len(names))
        return ImageData(kept.images, new_label[kept.labels], names, self.name)

    def dataset(self, hflip: bool = False, seed: int = 0) -> ImageDataset:
        """A torch ``Dataset`` of ``(float32 (C, H, W) in [-1, 1], int64 label)`` pairs.

        ``hflip`` mirrors half of the images left-right, a new half each epoch
        (:meth:`ImageDataset.set_epoch`), chosen from ``seed`` alone.
        """
        return ImageDataset(self.images, self.labels, hflip, seed)


class ImageDataset(Dataset):
    """Items of an :class:`ImageData`, converted to floats one at a time.

    With ``hflip``, whether image i is mirrored in an epoch is a pure function of
    (``seed``, epoch, i): the same whichever DataLoader worker loads it, whatever was
    drawn before, and after a resume mid-epoch. (Drawing flips from a random stream
    would tie them to the worker's stream and the order of loading, and a resumed run
    would flip other images than an uninterrupted one.)
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, hflip: bool = False, seed: int = 0):
        self.images, self.labels, self.hflip, self.seed = images, labels, hflip, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's flips: ``flips[i]`` (bool (N,)) drawn from a generator seeded by (seed, epoch)."""
        self.epoch = epoch
        if self.hflip:
            seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0])
            generator = torch.Generator().manual_seed(seed)
            self.flips = torch.rand(len(self.images), generator=generator) < 0.5

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = to_float(self.images[index])
        if self.hflip and self.flips[index]:
            image = image.flip(-1)
        return image, self.labels[index]


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 in ``[0, 255]`` -> float32 in ``[-1, 1]``, any shape."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images_uint8.dtype}")
    return images_uint8.float() / 127.5 - 1.0


def to_uint8(images_float: torch.Tensor) -> torch.Tensor:
    """float in ``[-1, 1]`` -> uint8 in ``[0, 255]``, any shape; clamped, then rounded."""
    return ((images_float.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ---------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------


def load_digits(img_size: int = 16) -> ImageData:
    """scikit-learn's 1,797 handwritten digits, 1 channel, resized to ``img_size``.

    Returns uint8 images ``(1797, 1, img_size, img_size)`` spanning ``0..255``.
    """
    from sklearn.datasets import load_digits as sklearn_digits  # imported here: sklearn is slow to import

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    if img_size != images.shape[-1]:
        images = F.interpolate(images, size=(img_size, img_size), mode="bilinear",
                               align_corners=False, antialias=img_size < images.shape[-1])
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageData(images, torch.from_numpy(bunch.target).long(), list(DIGIT_NAMES), "digits")


# ---------------------------------------------------------------------------------
# textures
# ---------------------------------------------------------------------------------
# Each pattern maps n random images to a signed distance, in pixels, from the edge
# of its foreground shape (positive inside). Clamping 0.5 + distance to [0, 1] gives
# the foreground coverage of each pixel, i.e. a one-pixel anti-aliased edge.


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """n random numbers in [low, high), shaped (n, 1, 1) to broadcast over an image."""
    return low + (high - low) * torch.rand(n, 1, 1, generator=generator)


def _rotated_coordinates(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (u, v), each (n, size, size), about the centre, rotated by a random angle."""
    centred = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    y, x = torch.meshgrid(centred, centred, indexing="ij")
    angle = _uniform(n, 0, math.pi, generator)
    return x * angle.cos() + y * angle.sin(), y * angle.cos() - x * angle.sin()


def _distance_to_integer(t: torch.Tensor) -> torch.Tensor:
    """How far t is from the nearest integer: a triangle wave in [0, 0.5]."""
    return (t - t.round()).abs()


def _stripes(n, size, g):
    u, _ = _rotated_coordinates(n, size, g)
    period = _uniform(n, 4, size / 2.5, g)
    duty = _uniform(n, 0.35, 0.65, g)  # fraction of each period that is foreground
    t = u / period + torch.rand(n, 1, 1, generator=g)
    return (duty / 2 - _distance_to_integer(t)) * period


def _waves(n, size, g):
    u, v = _rotated_coordinates(n, size, g)
    period = _uniform(n, 4, size / 3, g)
    wavelength = _uniform(n, size / 2, size, g)  # long, smooth bends
    amplitude = _uniform(n, 0.2, 0.35, g) * wavelength
    u = u + amplitude * torch.sin(2 * math.pi * (v / wavelength + torch.rand(n, 1, 1, generator=g)))
    t = u / period + torch.rand(n, 1, 1, generator=g)
    return (0.25 - _distance_to_integer(t)) * period


def _checks(n, size, g):
    u, v = _rotated_coordinates(n, size, g)
    cell = _uniform(n, 4, size / 3, g)
    a = u / cell + torch.rand(n, 1, 1, generator=g)
    b = v / cell + torch.rand(n, 1, 1, generator=g)
    sign = 1 - 2 * ((a.floor() + b.floor()) % 2)  # +1 on "black" squares, -1 on "white"
    return sign * torch.minimum(_distance_to_integer(a), _distance_to_integer(b)) * cell


def _dots(n, size, g):
    u, v = _rotated_coordinates(n, size, g)
    cell = _uniform(n, 5, size / 2.5, g)
    radius = _uniform(n, 0.18, 0.28, g)  # in cells
    a = _distance_to_integer(u / cell + torch.rand(n, 1, 1, generator=g))
    b = _distance_to_integer(v / cell + torch.rand(n, 1, 1, generator=g))
    return (radius - (a**2 + b**2).sqrt()) * cell


def _bricks(n, size, g):
    u, v = _rotated_coordinates(n, size, g)
    height = _uniform(n, 4, size / 3, g)
    length = height * _uniform(n, 1.8, 2.5, g)
    half_mortar = _uniform(n, 0.5, 0.9, g)
    row = v / height + torch.rand(n, 1, 1, generator=g)
    column = u / length + 0.5 * (row.floor() % 2) + torch.rand(n, 1, 1, generator=g)  # odd rows shift half a brick
    joint = torch.minimum(_distance_to_integer(row) * height, _distance_to_integer(column) * length)
    return half_mortar - joint


def _noise(n, size, g):
    # White noise blurred with a Gaussian (a product in Fourier space): random blobs.
    # Not a distance, but a smooth field of about the same range that crosses zero at blob edges.
    white = torch.randn(n, size, size, generator=g)
    frequency = torch.fft.fftfreq(size)
    radius2 = frequency[:, None] ** 2 + frequency[None, :] ** 2
    sigma = _uniform(n, size / 20, size / 10, g)
    blobs = torch.fft.ifft2(torch.fft.fft2(white) * torch.exp(-2 * (math.pi * sigma) ** 2 * radius2)).real
    return 1.5 * blobs / blobs.std(dim=(1, 2), keepdim=True)


TEXTURE_PATTERNS = {"stripes": _stripes, "checks": _checks, "dots": _dots, "waves": _waves, "bricks": _bricks,
                    "noise": _noise}
TEXTURE_NAMES = list(TEXTURE_PATTERNS)


def _contrasting_colours(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background RGB colours, each (n, 3, 1, 1) in [0, 1].

    One colour is light (every channel >= 0.6), the other dark (<= 0.4), and which
    of the two is the foreground is a coin flip.
    """
    light = 0.6 + 0.4 * torch.rand(n, 3, 1, 1, generator=g)
    dark = 0.4 * torch.rand(n, 3, 1, 1, generator=g)
    light_foreground = torch.rand(n, 1, 1, 1, generator=g) < 0.5
    return torch.where(light_foreground, light, dark), torch.where(light_foreground, dark, light)


def make_textures(img_size: int = 32, per_class: int = 400, seed: int = 0) -> ImageData:
    """Generate ``per_class`` colour textures of each class in :data:`TEXTURE_NAMES`.

    Returns uint8 images ``(per_class * 6, 3, img_size, img_size)``, grouped by class.
    The same ``seed`` always gives the same images.
    """
    generator = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for label, pattern in enumerate(TEXTURE_PATTERNS.values()):
        coverage = (0.5 + pattern(per_class, img_size, generator)).clamp(0, 1).unsqueeze(1)  # (N, 1, H, W)
        foreground, background = _contrasting_colours(per_class, generator)
        image = background + (foreground - background) * coverage
        image = image + 0.03 * torch.randn(image.shape, generator=generator)  # a little sensor noise
        images.append((image.clamp(0, 1) * 255).round().to(torch.uint8))
        labels.append(torch.full((per_class,), label, dtype=torch.long))
    return ImageData(torch.cat(images), torch.cat(labels), list(TEXTURE_NAMES), "textures")


# ---------------------------------------------------------------------------------
# folders of images
# ---------------------------------------------------------------------------------


def _class_folders(root: Path) -> list[Path]:
    """The visible sub-folders of ``root``, sorted by name; DataError if there are none."""
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; check the path given to --data-dir / data.data_dir")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder; point --data-dir at a folder laid out as "
                        "root/<class>/<image>")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no class sub-folders; expected the layout root/<class>/<image>, "
                        f"e.g. {root / 'cat' / '0001.jpg'}")
    return folders


def _image_files(folder: Path) -> tuple[list[Path], int]:
    """Image files directly inside ``folder`` (sorted) and the number of other files ignored."""
    images, ignored = [], 0
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            ignored += 1
    return images, ignored


def _select_folders(folders: list[Path], classes: list[str], root: Path) -> list[Path]:
    """The folders named in ``classes``, in that order; DataError naming any that are missing."""
    by_name = {folder.name: folder for folder in folders}
    missing = [name for name in classes if name not in by_name]
    if missing:
        raise DataError(f"class folder(s) {', '.join(missing)} not found in {root}; "
                        f"available: {', '.join(by_name)}")
    return [by_name[name] for name in dict.fromkeys(classes)]


def _describe(error: Exception) -> str:
    """One-line reason for a failed decode, e.g. 'OSError: image file is truncated'."""
    message = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _resize_and_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bicubic, antialiased), then crop the centre square."""
    width, height = image.size
    scale = size / min(width, height)
    width, height = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


BACKGROUND = (255, 255, 255)  # transparent pixels are composited over white
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
SAMPLE_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}  # other modes: 8
WIDE_RAWMODE_ENDINGS = (";16B", ";16L", ";16N")  # PIL raw modes that read 16-bit samples, e.g. "RGB;16B"

# Conversions to 8-bit RGB that lose information or assume a range: check_data counts
# the images each applies to and format_report prints "warning: N image(s) <note>".
NOTE_16_BIT = "had 16-bit samples, reduced to 8 bits"
NOTE_INT32 = "were 32-bit integer (mode I), read as 16-bit 0..65535 (values outside clipped) and reduced to 8 bits"
NOTE_FLOAT = "were floating-point (mode F), read as 0..1 (values outside clipped) and reduced to 8 bits"
NOTE_ALPHA = "had transparent pixels, composited over a white background"
NOTE_CMYK = "were CMYK, converted to RGB without a colour profile (colours may shift)"


def _sample_bits(image: Image.Image) -> int:
    """Bits per sample in the file (1, 8, 16 or 32), from PIL's mode or raw mode.

    Call it before ``image.load()``, which forgets the raw mode: that is the only
    trace of 16-bit colour PNGs and TIFFs, which PIL reads as 8-bit RGB(A).
    """
    tile_args = image.tile[0][3] if image.tile else None
    rawmode = tile_args if isinstance(tile_args, str) else \
        tile_args[0] if isinstance(tile_args, tuple) and tile_args and isinstance(tile_args[0], str) else ""
    if rawmode.endswith(WIDE_RAWMODE_ENDINGS):
        return 16  # also 16-bit PGM/PPM, which PIL decodes to mode I
    return SAMPLE_BITS.get(image.mode, 8)


def _read_upright(path: Path, size: int | None = None) -> tuple[Image.Image, int]:
    """Fully decode the image at ``path`` and turn it upright (EXIF orientation).

    Returns the image, in the mode PIL decoded, and its bits per sample (:func:`_sample_bits`).
    With ``size``, JPEGs decode at a reduced scale, no smaller than ``2 * size``: much faster.
    """
    with Image.open(path) as image:
        if size is not None:
            image.draft(None, (2 * size, 2 * size))
        bits = _sample_bits(image)
        image.load()  # decode now, so that truncated files fail here
        ImageOps.exif_transpose(image, in_place=True)
    return image, bits


def _wide_to_8bit(image: Image.Image) -> Image.Image:
    """A mode ``I;16*``, ``I`` or ``F`` image -> 8-bit ``L``, or ``LA`` if it has a transparency key.

    Integers are read as 16-bit (``0..65535`` -> ``0..255``, rounded, values outside
    clipped); floats as ``0..1`` (clipped, NaN as 0).
    """
    samples = np.asarray(image)  # (H, W): uint16 (either byte order), int32 or float32
    if image.mode == "F":
        grey = np.rint(np.clip(np.nan_to_num(samples, nan=0.0), 0.0, 1.0) * 255)
    else:
        # round(v * 255 / 65535) in integers: 65535 is odd, so there is never a tie
        grey = (np.clip(samples, 0, 65535).astype(np.uint32) * 255 + 32767) // 65535
    grey = Image.fromarray(grey.astype(np.uint8))
    key = image.info.get("transparency")  # a 16-bit PNG's tRNS: the one fully transparent grey level
    if isinstance(key, int):
        return Image.merge("LA", (grey, Image.fromarray(np.where(samples == key, 0, 255).astype(np.uint8))))
    return grey


def _has_alpha(image: Image.Image) -> bool:
    """Whether ``image`` carries transparency: an alpha band, an alpha palette or a transparency key."""
    return (image.mode in ALPHA_MODES or "transparency" in image.info
            or (image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"))


def _composite_over_background(image: Image.Image) -> tuple[Image.Image, bool]:
    """``image`` with transparency -> 8-bit RGB over :data:`BACKGROUND`, and whether any pixel was transparent."""
    rgba = image.convert("RGBA")
    if rgba.getchannel("A").getextrema()[0] == 255:
        return rgba.convert("RGB"), False
    background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB"), True


def _to_rgb(image: Image.Image, bits: int = 8) -> tuple[Image.Image, list[str]]:
    """Any decoded image -> (8-bit ``RGB`` image of the same size, the NOTE_* that applied).

    ``bits`` is the file's bits per sample (:func:`_sample_bits`); it only affects the notes.
    The rules are in the module docstring.
    """
    notes = []
    if image.mode == "I" and bits == 32:
        notes.append(NOTE_INT32)
    elif image.mode == "F":
        notes.append(NOTE_FLOAT)
    elif bits == 16:
        notes.append(NOTE_16_BIT)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _wide_to_8bit(image)
    if _has_alpha(image):
        image, composited = _composite_over_background(image)
        if composited:
            notes.append(NOTE_ALPHA)
    elif image.mode == "CMYK":
        notes.append(NOTE_CMYK)
    return (image if image.mode == "RGB" else image.convert("RGB")), notes


def _decode(path: Path, size: int) -> np.ndarray:
    """Open, fully decode, turn upright, convert to 8-bit RGB and square one image: uint8 array (size, size, 3)."""
    image, bits = _read_upright(path, size)
    image, _ = _to_rgb(image, bits)
    return np.asarray(_resize_and_crop(image, size))


def load_folder(root, img_size: int, classes: list[str] | None = None, progress: bool = True) -> ImageData:
    """Load a ``root/<class>/<image>`` tree into memory, one class per sub-folder.

    Classes are the sub-folder names, sorted (or in the order of ``classes``, which
    keeps only those folders). Each image is turned upright (EXIF orientation),
    converted to 8-bit RGB by the rules in the module docstring (16-bit and float
    images scaled, transparency composited over white), resized so its shorter
    side is ``img_size`` and centre-cropped to a square. Images are RGB,
    ``(N, 3, S, S)`` uint8, unless every image is grayscale (R = G = B), then ``(N, 1, S, S)``.
    Raises DataError for a missing root, missing or empty class folders and any
    unreadable image.
    """
    root = Path(root)
    folders = _class_folders(root)
    if classes is not None:
        folders = _select_folders(folders, classes, root)
    files, labels = [], []
    for label, folder in enumerate(folders):
        images, _ = _image_files(folder)
        if not images:
            nested = any(p.is_dir() for p in folder.iterdir())
            hint = f"; it has sub-folders: did you mean --data-dir {folder}?" if nested else \
                "; add images or leave the class out with data.classes"
            raise DataError(f"class folder {folder} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}){hint}")
        files += images
        labels += [label] * len(images)

    decoded = []
    for path in tqdm(files, desc=f"loading {root.name}", unit="img", disable=not progress or len(files) <= 200):
        try:
            decoded.append(_decode(path, img_size))
        except Exception as error:  # PIL raises many types: OSError, SyntaxError, ValueError, ...
            raise DataError(f"cannot read image {path} ({_describe(error)}); list every bad file with: "
                            f"{CHECK_COMMAND} {root}") from None

    images = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)
    if (images == images[:, :1]).all():  # no colour anywhere: keep one channel
        images = images[:, :1].contiguous()
    return ImageData(images, torch.tensor(labels, dtype=torch.long), [f.name for f in folders], root.name)


# ---------------------------------------------------------------------------------
# one entry point for the training code
# ---------------------------------------------------------------------------------


def load_data(cfg: DataConfig, progress: bool = True) -> ImageData:
    """The dataset that ``cfg`` describes, with ``cfg.classes`` (if set) kept in that order.

    Textures always use seed 0, so every run of a config sees the same images.
    """
    if cfg.classes is not None and not cfg.classes:
        raise DataError("data.classes is an empty list; use null to keep every class")
    if cfg.dataset == "folder":
        if not cfg.data_dir:
            raise DataError("data.dataset=folder needs data.data_dir (set it with --set data.data_dir=PATH)")
        return load_folder(cfg.data_dir, cfg.img_size, cfg.classes, progress)
    if cfg.dataset == "digits":
        data = load_digits(cfg.img_size)
    elif cfg.dataset == "textures":
        data = make_textures(cfg.img_size, cfg.per_class, seed=0)
    else:
        raise DataError(f"unknown dataset {cfg.dataset!r}; choose digits, textures or folder")
    return data if cfg.classes is None else data.keep_classes(cfg.classes)


# ---------------------------------------------------------------------------------
# checking a folder before training on it
# ---------------------------------------------------------------------------------


@dataclass
class DataReport:
    """What :func:`check_data` found in a ``root/<class>/<image>`` tree.

    ``class_counts`` counts the images that decoded; ``unreadable`` lists
    ``(path, reason)`` for the others; ``sizes`` counts ``(width, height)`` (upright,
    as loaded), ``modes`` PIL colour modes and ``depths`` ``(mode, bits per sample)``
    of the readable images; ``conversions`` maps each NOTE_* (a lossy or assuming
    step of the conversion to 8-bit RGB) to the paths it applied to; ``ignored``
    counts non-image files.
    """

    root: str
    class_counts: dict[str, int]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    ignored: int = 0
    depths: Counter = field(default_factory=Counter)
    conversions: dict[str, list[str]] = field(default_factory=dict)

    @property
    def imbalance_ratio(self) -> float:
        """Largest class count over smallest; ``inf`` if some class is empty."""
        counts = list(self.class_counts.values())
        return math.inf if min(counts) == 0 else max(counts) / min(counts)

    @property
    def empty_classes(self) -> list[str]:
        return [name for name, count in self.class_counts.items() if count == 0]

    @property
    def problems(self) -> list[str]:
        """What must be fixed before training; empty when the folder is usable."""
        problems = []
        if self.unreadable:
            problems.append(f"{len(self.unreadable)} unreadable file(s)")
        if self.empty_classes:
            problems.append(f"{len(self.empty_classes)} empty class folder(s): {', '.join(self.empty_classes)}")
        return problems

    @property
    def warnings(self) -> list[str]:
        """Conversions worth knowing about, one line each; they do not make the folder unusable."""
        return [f"{len(paths)} image(s) {note} (e.g. {paths[0]})" for note, paths in self.conversions.items()]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_data(root, progress: bool = False) -> DataReport:
    """Decode every image under ``root/<class>/`` and report what was found.

    Each image goes through the same decoding and conversion to 8-bit RGB as
    :func:`load_folder` (at full size), so a file that fails there is listed here.
    Raises DataError only if ``root`` is missing, not a folder, or has no class
    folders; empty classes and bad files end up in the report.
    """
    root = Path(root)
    report = DataReport(str(root), {})
    files = []
    for folder in _class_folders(root):
        images, ignored = _image_files(folder)
        report.ignored += ignored
        report.class_counts[folder.name] = 0
        files += images
    for path in tqdm(files, desc=f"checking {root.name}", unit="img", disable=not progress or len(files) <= 200):
        try:
            image, bits = _read_upright(path)
            _, notes = _to_rgb(image, bits)
        except Exception as error:  # PIL raises many types: OSError, SyntaxError, ValueError, ...
            report.unreadable.append((str(path), _describe(error)))
            continue
        report.class_counts[path.parent.name] += 1
        report.sizes[image.size] += 1
        report.modes[image.mode] += 1
        report.depths[image.mode, bits] += 1
        for note in notes:
            report.conversions.setdefault(note, []).append(str(path))
    return report


def format_report(report: DataReport, bar_width: int = 30) -> str:
    """The report as text: a class table with bars, sizes, modes and bit depths, bad files,
    warnings about lossy conversions, and a last line with the verdict: "OK" or "PROBLEMS: ..."."""
    counts = dict(sorted(report.class_counts.items()))
    largest = max(max(counts.values()), 1)
    name_width = max(len("class"), *(len(name) for name in counts))
    lines = [f"data folder: {report.root}", f"  {'class':<{name_width}}  {'images':>7}"]
    for name, count in counts.items():
        lines.append(f"  {name:<{name_width}}  {count:>7}  {'#' * round(bar_width * count / largest)}".rstrip())
    lines.append(f"  {'total':<{name_width}}  {sum(counts.values()):>7}  ({len(counts)} classes)")
    ratio = report.imbalance_ratio
    lines.append(f"imbalance ratio: {ratio:.2f} (largest class / smallest class)" if math.isfinite(ratio)
                 else "imbalance ratio: inf (some class is empty)")
    common_sizes = ", ".join(f"{w}x{h}: {n}" for (w, h), n in report.sizes.most_common(5))
    other_sizes = len(report.sizes) - min(len(report.sizes), 5)
    lines.append(f"image sizes (w x h): {common_sizes or '-'}"
                 + (f" (+{other_sizes} other sizes)" if other_sizes else ""))
    lines.append("colour modes: " + (", ".join(f"{mode}: {n}" for mode, n in report.modes.most_common()) or "-"))
    lines.append("mode / bits per sample: "
                 + (", ".join(f"{mode} / {bits}: {n}" for (mode, bits), n in report.depths.most_common()) or "-"))
    if report.ignored:
        lines.append(f"ignored {report.ignored} non-image file(s)")
    if report.unreadable:
        lines.append(f"unreadable files ({len(report.unreadable)}):")
        lines += [f"  {path}  --  {reason}" for path, reason in report.unreadable]
    lines += [f"warning: {warning}" for warning in report.warnings]
    lines.append("PROBLEMS: " + "; ".join(report.problems) if report.problems else "OK")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------


def _save_examples(data: ImageData, per_class: int, out: str) -> None:
    """Save a grid with one row of ``per_class`` examples per class as a PNG."""
    from torchvision.utils import make_grid

    per_class = min(per_class, *data.class_counts())
    picks = torch.cat([torch.nonzero(data.labels == k).flatten()[:per_class] for k in range(data.num_classes)])
    grid = make_grid(data.images[picks], nrow=per_class, padding=1, pad_value=255)  # uint8 (3, H, W), white gaps
    image = Image.fromarray(grid.permute(1, 2, 0).numpy())
    zoom = max(1, 64 // data.img_size)  # small images are hard to see: enlarge, keeping pixels sharp
    image = image.resize((image.width * zoom, image.height * zoom), Image.Resampling.NEAREST)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"saved {out}: one row per class ({', '.join(data.class_names)}), {per_class} examples each")


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lib.data", description="Inspect datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="decode every image of a root/<class>/<image> folder and report")
    check.add_argument("--data-dir", required=True, help="the root folder")
    show = commands.add_parser("show", help="save a grid of examples of each class")
    show.add_argument("--dataset", choices=["digits", "textures", "folder"], default="digits")
    show.add_argument("--data-dir", help="the root folder, for --dataset folder")
    show.add_argument("--img-size", type=int, help="default: 16 for digits, 32 otherwise")
    show.add_argument("--per-class", type=int, default=8)
    show.add_argument("--out", default="grid.png")
    args = parser.parse_args(argv)

    if args.command == "check":
        report = check_data(args.data_dir, progress=True)
        print(format_report(report))
        if report.problems:
            sys.exit(1)
    else:
        if args.dataset == "folder" and not args.data_dir:
            raise DataError("show --dataset folder needs --data-dir ROOT (a root/<class>/<image> folder)")
        img_size = args.img_size or (16 if args.dataset == "digits" else 32)
        data = load_data(DataConfig(dataset=args.dataset, data_dir=args.data_dir, img_size=img_size))
        _save_examples(data, args.per_class, args.out)


if __name__ == "__main__":
    main()
