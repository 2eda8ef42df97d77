"""The domain classifier (the judge of class accuracy) and the accuracy bookkeeping."""

import pytest
import torch

from ddpm_lib.data import load_digits, make_textures
from ddpm_lib.metrics import DomainClassifier, class_accuracy, load_or_train_classifier, random_shift, train_classifier


@pytest.fixture(scope="module")
def digits_classifier():
    data = load_digits(16)
    return data, *train_classifier(data)


def test_digit_classifier_is_a_reliable_judge(digits_classifier):
    _, _, accuracy = digits_classifier
    assert accuracy >= 0.95  # held-out, so sample accuracy means something


def test_texture_classes_are_told_apart():
    _, accuracy = train_classifier(make_textures(32, 250, seed=0), epochs=8)
    assert accuracy >= 0.95


def test_real_images_score_high_and_noise_does_not(digits_classifier):
    data, model, _ = digits_classifier
    _, test = data.split(0.2, seed=0)
    real = class_accuracy(model, test.images, test.labels, 10)
    assert real.overall >= 0.95 and sum(real.counts) == len(test)
    noise = torch.randint(0, 256, test.images.shape, dtype=torch.uint8)
    assert class_accuracy(model, noise, test.labels, 10).overall < 0.3
    shuffled = test.labels[torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(0))]
    assert class_accuracy(model, test.images, shuffled, 10).overall < 0.3  # right images, wrong requested classes


def test_class_accuracy_bookkeeping():
    class Fixed(torch.nn.Module):  # predicts class = mean pixel bucket
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot((x.mean((1, 2, 3)) > 0).long(), 3).float()

    images = torch.cat([torch.zeros(3, 1, 4, 4), torch.full((2, 1, 4, 4), 255.0)]).to(torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 1])  # predictions: 0, 0, 0, 1, 1
    acc = class_accuracy(Fixed(), images, labels, 3)
    assert acc.overall == pytest.approx(4 / 5)
    assert acc.per_class == pytest.approx([1.0, 2 / 3, 0.0]) and acc.counts == [2, 3, 0]
    assert acc.confusion.tolist() == [[2, 0, 0], [1, 2, 0], [0, 0, 0]]


def test_classifier_cache(tmp_path, monkeypatch):
    data = load_digits(8)
    data = data.subset(torch.arange(300))
    model, acc = load_or_train_classifier(data, tmp_path / "c.pt")
    import ddpm_lib.metrics as metrics

    monkeypatch.setattr(metrics, "train_classifier", lambda *a, **k: pytest.fail("should use the cache"))
    again, acc2 = load_or_train_classifier(data, tmp_path / "c.pt")
    assert acc2 == acc
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    monkeypatch.undo()
    other = data.subset(torch.arange(200))  # different data: retrained, not reused
    _, _ = load_or_train_classifier(other, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=False)["key"]["n"] == 200


def test_features_and_shift_shapes():
    model = DomainClassifier(3, 6)
    x = torch.randn(4, 3, 32, 32)
    assert model.features(x).shape == (4, model.num_features) and model(x).shape == (4, 6)
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and not torch.equal(shifted, x)
