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
    assert torch.load(tmp_path / "c.pt", weights_only=True)["key"]["n"] == 200


def test_features_and_shift_shapes():
    model = DomainClassifier(3, 6)
    x = torch.randn(4, 3, 32, 32)
    assert model.features(x).shape == (4, model.num_features) and model(x).shape == (4, 6)
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and not torch.equal(shifted, x)


# ---- distribution metrics (FID / KID / IS through torchmetrics) ------------------------------

from ddpm_lib import metrics  # noqa: E402
from ddpm_lib.metrics import (ClassifierFeatures, InceptionUnavailable, domain_metrics,  # noqa: E402
                              frechet_distance, inception_extractors, inception_metrics, inception_score)


def test_classifier_features_feed_torchmetrics(digits_classifier):
    data, model, _ = digits_classifier
    feats, logits = ClassifierFeatures(model, "features"), ClassifierFeatures(model, "logits")
    x = data.images[:5]
    assert feats(x).shape == (5, feats.num_features) and logits(x).shape == (5, 10)
    assert torch.allclose(logits(x), model(x.float() / 127.5 - 1))


def test_fid_is_zero_for_identical_features_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=g, dtype=torch.float64).float()
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-3)
    # two Gaussians with equal covariance: FID = |mu_a - mu_b|^2
    assert frechet_distance(a, a + 2.0) == pytest.approx(8 * 4.0, rel=1e-3)


def test_inception_score_bounds():
    confident = torch.eye(10).repeat(20, 1) * 50  # every class equally often, each image sure of its class
    assert inception_score(confident, splits=1)[0] == pytest.approx(10, rel=1e-3)  # one split: p(y) uniform
    assert inception_score(torch.zeros(200, 10))[0] == pytest.approx(1, abs=1e-4)  # uniform p(y|x)


def test_domain_metrics_real_vs_real_is_near_the_floor_and_noise_far_above(digits_classifier):
    data, model, _ = digits_classifier
    reference, baseline = data.split(0.5, seed=0)
    noise = torch.randint(0, 256, (400, *data.images.shape[1:]), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    real = domain_metrics(model, reference.images, baseline.images[:400], baseline.images)
    fake = domain_metrics(model, reference.images, noise, baseline.images)
    assert real["n"] == fake["n"] == 400
    assert real["fid"] < 2 * real["fid_real"]  # another real set scores about as the baseline does
    assert fake["fid"] > 20 * real["fid_real"]
    assert fake["kid"] > 20 * max(abs(real["kid_real"]), fake["kid_std"])
    assert real["is_real"] > 6 and fake["is"] < 2.5  # real digits: ~10 confident classes; noise: not


def test_inception_offline_says_how_to_provide_weights(monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from urllib.error import URLError

    monkeypatch.delenv(metrics.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(URLError("offline")))
    with pytest.raises(InceptionUnavailable) as err:
        inception_extractors()
    message = str(err.value)
    assert "\n" not in message and "--inception-weights" in message and metrics.INCEPTION_URL in message


def test_inception_weights_file_that_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(metrics.INCEPTION_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(InceptionUnavailable, match="does not exist"):
        inception_extractors()


@pytest.fixture(scope="module")
def inception_weights_file(tmp_path_factory):
    """A weights file in torch-fidelity's format, with random (untrained) values: the real
    file cannot be downloaded here, but the loading path it takes is the same."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    captured = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict",
                   lambda self, state, *a, **k: captured.setdefault("state", self.state_dict()))
        fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(captured["state"], path)
    return path


def test_inception_metrics_from_a_local_weights_file(inception_weights_file, monkeypatch):
    monkeypatch.setenv(metrics.INCEPTION_ENV, str(inception_weights_file))
    pool, logits = inception_extractors()
    grey = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    assert metrics._RGB(pool)(grey).shape == (2, 2048) and metrics._RGB(logits)(grey).shape == (2, 1008)
    data = load_digits(16)  # Inception runs at 299 px: a handful of images keeps this quick
    reference, baseline = data.subset(torch.arange(0, 16)), data.subset(torch.arange(16, 24))
    noise = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    out = inception_metrics(reference.images, noise, baseline.images)
    assert out["n"] == 8 and all(torch.isfinite(torch.tensor(float(v))) for v in out.values())
    assert out["is"] >= 1.0 and out["fid"] > 0
