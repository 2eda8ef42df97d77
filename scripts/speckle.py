"""Count speckled samples: images with more high-frequency energy than any real image of the dataset.

    python scripts/speckle.py runs/digits/samples/eval.npz [more.npz ...]

High-frequency energy is the mean squared discrete Laplacian over the interior pixels, with
images in [-1, 1]. The threshold is the largest value over the run's real training images
(the embedded digits at the samples' size), so a flagged sample is noisier than every real one.
Prints, per file, the count and share flagged and the classes they were drawn for.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ddpm_lib.data import load_digits, to_float
from ddpm_lib.sample import load_samples, sample_settings

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    """Mean squared Laplacian per image (N,), of images (N, 1, H, W) in [-1, 1]."""
    return F.conv2d(images, LAPLACIAN.to(images.dtype), padding=1)[..., 1:-1, 1:-1].pow(2).mean((1, 2, 3))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", nargs="+", help="samples .npz files of a digits run")
    args = parser.parse_args(argv)
    for path in args.samples:
        images, labels, names = load_samples(path)
        threshold = high_frequency_energy(to_float(load_digits(images.shape[-1]).images)).max()
        flagged = (high_frequency_energy(to_float(images)) > threshold).nonzero().flatten().tolist()
        settings = sample_settings(path)
        print(f"{path}: {len(flagged)} of {len(images)} speckled ({len(flagged) / len(images):.1%}; "
              f"sampler {settings.get('sampler')}, eta {settings.get('eta')}, steps {settings.get('steps')}); "
              f"classes: {', '.join(names[labels[i]] for i in flagged) or '-'}")


if __name__ == "__main__":
    main()
