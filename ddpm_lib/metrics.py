"""Measuring samples: a domain classifier and the class accuracy of conditional samples.

A class-conditional model should draw a "seven" when asked for one. We measure that
with a small CNN trained on the real data (held-out accuracy reported, so we know
the judge is reliable): the *class accuracy* of samples is the fraction of images
generated for class c that the classifier labels c, overall and per class. This is
the offline counterpart of the "classification accuracy score" idea (Ravuri & Vinyals
2019) and needs no downloaded weights. The classifier's penultimate features also
serve as the feature space for domain FID/KID (``features``; ``num_features``).
"""

from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_save, load_trusted_types
from .data import ImageData, to_float


class DomainClassifier(nn.Module):
    """Small CNN: 3 conv stages (32, 64, 128 channels) with GroupNorm, global average pool,
    a 128-d feature layer and a linear head. x (B, C, H, W) in [-1, 1] -> logits (B, K)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        layers, ch = [], in_channels
        for mult in (1, 2, 4):
            out = width * mult
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            if mult < 4:
                layers.append(nn.MaxPool2d(2))
            ch = out
        self.body = nn.Sequential(*layers)
        self.num_features = ch
        self.head = nn.Linear(ch, num_classes)
        self.in_channels, self.num_classes = in_channels, num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, num_features)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels (edge padding): cheap augmentation."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


@torch.no_grad()
def predict(classifier: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels (N,) for uint8 or [-1, 1] float images (N, C, H, W)."""
    classifier.eval()
    device = next(classifier.parameters()).device
    x = to_float(images) if images.dtype == torch.uint8 else images.float()
    return torch.cat([classifier(b.to(device)).argmax(1).cpu() for b in x.split(batch_size)])


def train_classifier(data: ImageData, epochs: int = 15, batch_size: int = 64, lr: float = 2e-3,
                     seed: int = 0, progress: bool = False) -> tuple[DomainClassifier, float]:
    """Train a :class:`DomainClassifier` on 80% of ``data``; return it and its accuracy on the
    held-out 20% (a stratified split, so every class is tested)."""
    generator = torch.Generator().manual_seed(seed)
    train_set, test_set = data.split(test_fraction=0.2, seed=seed)
    torch.manual_seed(seed)
    model = DomainClassifier(data.channels, data.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    x_all, y_all = to_float(train_set.images), train_set.labels
    steps = epochs * max(1, len(x_all) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    max_shift = max(1, data.img_size // 16)
    model.train()
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=generator)
        for idx in order.split(batch_size):
            if len(idx) < batch_size or step >= steps:
                continue
            x = random_shift(x_all[idx], max_shift, generator)
            loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sched.step()
            step += 1
        if progress:
            print(f"[classifier] epoch {epoch + 1}/{epochs} loss {loss.item():.3f}", flush=True)
    accuracy = (predict(model, test_set.images) == test_set.labels).float().mean().item()
    return model.eval(), accuracy


def load_or_train_classifier(data: ImageData, path: str | Path, progress: bool = False) -> tuple[DomainClassifier, float]:
    """The classifier cached at ``path``, trained and saved there first if it is missing
    or was trained on different data (name, size, classes)."""
    path = Path(path)
    key = {"name": data.name, "img_size": data.img_size, "channels": data.channels,
           "class_names": list(data.class_names), "n": len(data)}
    if path.exists():
        saved = load_trusted_types(path, "classifier cache")  # a run's folder may come from elsewhere
        if isinstance(saved, dict) and saved.get("key") == key and "model" in saved and "accuracy" in saved:
            model = DomainClassifier(data.channels, data.num_classes)
            model.load_state_dict(saved["model"])
            return model.eval(), saved["accuracy"]
    model, accuracy = train_classifier(data, progress=progress)
    atomic_save({"key": key, "model": model.state_dict(), "accuracy": accuracy}, path)
    return model, accuracy


@dataclass
class ClassAccuracy:
    overall: float
    per_class: list[float]  # accuracy for each class (0 where ``counts`` is 0)
    counts: list[int]  # samples generated per class
    confusion: torch.Tensor  # (K, K): row = requested class, column = predicted class


def class_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ClassAccuracy:
    """How often the classifier agrees with the class each sample was generated for."""
    predicted = predict(classifier, images)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels.long(), predicted), torch.ones_like(predicted), accumulate=True)
    counts = confusion.sum(1)
    per_class = (confusion.diag().float() / counts.clamp(min=1)).tolist()
    overall = (predicted == labels).float().mean().item()
    return ClassAccuracy(overall, per_class, counts.tolist(), confusion)


# ---------------------------------------------------------------------------------------------
# Distribution metrics: FID, KID and IS through torchmetrics, in two feature spaces.
#
# FID (Heusel et al. 2017): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2}) between
# Gaussians fitted to features of real (r) and generated (g) images. KID (Binkowski et al.
# 2018): the unbiased MMD^2 with the cubic kernel k(a, b) = (a.b / d + 1)^3, averaged over
# random subsets; unbiased, so it can dip below 0. IS (Salimans et al. 2016):
# exp E_x KL(p(y|x) || p(y)), between 1 and the number of classes.
#
# The standard versions use Inception-v3 features; offline we use the domain classifier's
# 128-d penultimate features and its logits instead. Either number only means something next
# to a real-vs-real baseline of the same size: FID is biased upward for small sets.
# ---------------------------------------------------------------------------------------------

INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_ENV = "DDPM_INCEPTION_WEIGHTS"


class ClassifierFeatures(nn.Module):
    """torchmetrics feature extractor over a :class:`DomainClassifier`: uint8 images
    (B, C, H, W) -> penultimate features (B, 128) (``output="features"``) or logits (B, K)."""

    def __init__(self, classifier: DomainClassifier, output: str = "features"):
        super().__init__()
        if output not in ("features", "logits"):
            raise ValueError(f"output must be 'features' or 'logits', got {output!r}")
        self.classifier, self.output = classifier.eval(), output
        self.num_features = classifier.num_features if output == "features" else classifier.num_classes

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float(images) if images.dtype == torch.uint8 else images.float()
        x = x.to(next(self.classifier.parameters()).device)
        return self.classifier.features(x) if self.output == "features" else self.classifier(x)


class InceptionUnavailable(RuntimeError):
    """The Inception-v3 weights could not be found or fetched; the message says how to provide them."""


def inception_extractors(weights: str | Path | None = None) -> tuple[nn.Module, nn.Module]:
    """Inception-v3 (the FID network, via torch-fidelity) as (pool features 2048-d, logits 1008-d).

    ``weights``: a local copy of the torch-fidelity weights file; default ``$DDPM_INCEPTION_WEIGHTS``,
    else torch-fidelity downloads it once into the torch hub cache (needs the internet).
    Raises :class:`InceptionUnavailable` with a one-line how-to when neither works.
    """
    import socket

    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as err:
        raise InceptionUnavailable(f"standard FID/KID/IS need torch-fidelity ({err}); pip install torch-fidelity") from None
    weights = weights or os.environ.get(INCEPTION_ENV) or None
    if weights is not None and not Path(weights).is_file():
        raise InceptionUnavailable(f"Inception weights file {weights} does not exist; download {INCEPTION_URL} "
                                   f"and pass its path (--inception-weights or ${INCEPTION_ENV})")
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a blocked network fails in seconds instead of hanging
    try:
        with redirect_stderr(io.StringIO()):  # torch.hub's "Downloading: ..." line; failures are reported below
            nets = tuple(NoTrainInceptionV3(name="inception-v3-compat", features_list=[f],
                                            feature_extractor_weights_path=str(weights) if weights else None)
                         for f in ("2048", "logits_unbiased"))
    except Exception as err:  # URLError offline, a truncated file, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        where = f"loading {weights}" if weights else "downloading them"
        raise InceptionUnavailable(f"Inception-v3 weights unavailable ({where} failed: {reason}); for standard "
                                   f"FID/KID/IS download {INCEPTION_URL} and pass --inception-weights FILE "
                                   f"or set ${INCEPTION_ENV}=FILE") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    nets[0].num_features, nets[1].num_features = 2048, 1008
    return nets


class _RGB(nn.Module):
    """Feeds grey images to a 3-channel network by repeating the channel."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.num_features = net, net.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images)


class Precomputed(nn.Module):
    """Identity "feature extractor": lets torchmetrics consume features computed once
    (B, num_features) instead of re-running the network on every comparison."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@torch.no_grad()
def extract(extractor: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``extractor`` over uint8 images (N, C, H, W) in batches -> (N, D) float32 on the CPU."""
    return torch.cat([extractor(chunk).float().cpu() for chunk in images.split(batch_size)])


@contextmanager
def _no_buffer_warning():
    """torchmetrics warns that KID/IS keep every feature in memory; ours are small."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        yield


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets (N, D) and (M, D), by torchmetrics' FrechetInceptionDistance."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=Precomputed(real.shape[1]), reset_real_features=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 50, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over ``subsets`` random subsets of up to 1000) between two feature sets (torchmetrics)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    with _no_buffer_warning():
        kid = KernelInceptionDistance(feature=Precomputed(real.shape[1]), subsets=subsets,
                                      subset_size=min(1000, len(real), len(fake)))
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng():  # torchmetrics draws the subsets from the global RNG
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS (mean, std over ``splits``) from classifier logits (N, K), by torchmetrics' InceptionScore."""
    from torchmetrics.image.inception import InceptionScore

    with _no_buffer_warning():
        score = InceptionScore(feature=Precomputed(logits.shape[1]), splits=splits)
    score.update(logits)
    with torch.random.fork_rng():  # the splits are a random permutation
        torch.manual_seed(seed)
        mean, std = score.compute()
    return float(mean), float(std)


def distribution_metrics(features: nn.Module, logits: nn.Module, reference: torch.Tensor, fake: torch.Tensor,
                         baseline: torch.Tensor, seed: int = 0) -> dict:
    """FID, KID and IS of ``fake`` against ``reference`` (uint8 (N, C, H, W) each), each beside
    the same number computed for ``baseline``: real images disjoint from ``reference``, cut to
    the size of ``fake`` so both suffer the same small-sample bias. Give ``baseline`` the class
    counts of ``fake`` (:func:`ddpm_lib.evaluate.matched_baseline`): a random real subset's chance
    class imbalance alone raises FID several-fold in a class-aware feature space. Every image set goes
    through the networks once. Returns a flat dict: ``fid``, ``fid_real``, ``kid``, ``kid_std``,
    ``kid_real``, ``is``, ``is_std``, ``is_real`` and ``n`` (images per compared set).
    """
    g = torch.Generator().manual_seed(seed)
    n = min(len(fake), len(baseline))
    fake = fake[torch.randperm(len(fake), generator=g)[:n]]
    baseline = baseline[torch.randperm(len(baseline), generator=g)[:n]]
    reference_features = extract(features, reference)
    out = {}
    for key, images in (("", fake), ("_real", baseline)):
        f = extract(features, images)
        out[f"fid{key}"] = frechet_distance(reference_features, f)
        out[f"kid{key}"], kid_std = kernel_distance(reference_features, f, seed=seed)
        out[f"is{key}"], is_std = inception_score(extract(logits, images), seed=seed)
        if not key:
            out["kid_std"], out["is_std"] = kid_std, is_std
    out["n"] = n
    return out


def domain_metrics(classifier: DomainClassifier, reference: torch.Tensor, fake: torch.Tensor,
                   baseline: torch.Tensor, seed: int = 0) -> dict:
    """:func:`distribution_metrics` in the domain classifier's feature space (works offline)."""
    return distribution_metrics(ClassifierFeatures(classifier, "features"), ClassifierFeatures(classifier, "logits"),
                                reference, fake, baseline, seed)


def inception_metrics(reference: torch.Tensor, fake: torch.Tensor, baseline: torch.Tensor,
                      weights: str | Path | None = None, seed: int = 0) -> dict:
    """:func:`distribution_metrics` with Inception-v3 (standard FID/KID/IS); raises
    :class:`InceptionUnavailable` when the weights cannot be had."""
    pool, logits = (_RGB(net) for net in inception_extractors(weights))
    return distribution_metrics(pool, logits, reference, fake, baseline, seed)
