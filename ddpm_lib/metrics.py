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

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_save
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
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("key") == key:
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
