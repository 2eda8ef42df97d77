"""The conditional U-Net: shapes for every supported size, conditioning, presets, attention."""

import pytest
import torch
import torch.nn.functional as F

from ddpm_lib.config import MODEL_PRESETS, ModelConfig
from ddpm_lib.unet import ConditionalUNet, SelfAttention, build_unet, count_parameters, timestep_embedding


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size,mult,attn", [(8, (1, 2), (4,)), (16, (1, 2, 2), (8,)), (32, (1, 2, 2), (8, 16)),
                                             (64, (1, 2, 2, 2), (16,))])
def test_output_shape_matches_input(channels, size, mult, attn):
    model = ConditionalUNet(channels, num_classes=5, img_size=size, base_channels=16, channel_mult=mult,
                            attn_resolutions=attn, num_heads=2)
    x = torch.randn(2, channels, size, size)
    out = model(x, torch.tensor([0, 999]), torch.tensor([1, 5]))  # 5 = the null class
    assert out.shape == x.shape


def test_attention_only_where_asked():
    model = ConditionalUNet(1, 3, 16, base_channels=16, channel_mult=(1, 2, 2), attn_resolutions=(8,))
    model_none = ConditionalUNet(1, 3, 16, base_channels=16, channel_mult=(1, 2, 2), attn_resolutions=())
    n_attn = sum(isinstance(m, SelfAttention) for m in model.modules())
    assert n_attn == sum(isinstance(m, SelfAttention) for m in model_none.modules()) + 3  # 1 down + 2 up at 8 px
    assert sum(isinstance(m, SelfAttention) for m in model_none.modules()) == 1  # the middle block


def test_self_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = SelfAttention(8, num_heads=2)
    torch.nn.init.normal_(attn.proj.weight)
    x = torch.randn(2, 8, 4, 4)
    b, c, h, w = x.shape
    q, k, v = attn.qkv(attn.norm(x)).reshape(b, 3, 2, 4, h * w).transpose(-1, -2).unbind(1)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 4**0.5, dim=-1)
    expected = x + attn.proj((weights @ v).transpose(-1, -2).reshape(b, c, h, w))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_time_and_class_change_the_output():
    torch.manual_seed(0)
    model = ConditionalUNet(1, 4, 16, base_channels=16)
    for p in model.parameters():  # leave the zero-init state so every path contributes
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 1, 16, 16)
    base = model(x, torch.tensor([10]), torch.tensor([0]))
    assert not torch.allclose(base, model(x, torch.tensor([500]), torch.tensor([0])))
    assert not torch.allclose(base, model(x, torch.tensor([10]), torch.tensor([2])))
    assert not torch.allclose(base, model(x, torch.tensor([10]), torch.tensor([4])))  # null class


def test_starts_as_zero_predictor():
    model = ConditionalUNet(3, 4, 16, base_channels=16)
    assert model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 1])).abs().max() == 0


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 32)
    assert emb.shape == (3, 32)
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(16), torch.zeros(16)]))
    assert timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)


def test_presets_have_documented_sizes():
    def size(preset, channels, img):
        cfg = ModelConfig(preset=preset, **MODEL_PRESETS[preset])
        return count_parameters(build_unet(cfg, channels, 10, img))

    assert 1e6 <= size("tiny", 1, 16) <= 3e6
    assert 33e6 <= size("cifar", 3, 32) <= 40e6  # DDPM's CIFAR-10 U-Net has 35.7M


def test_one_training_step_reduces_loss_on_fixed_batch():
    torch.manual_seed(0)
    model = ConditionalUNet(1, 3, 8, base_channels=16, channel_mult=(1, 2), attn_resolutions=(4,))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, t, y, target = torch.randn(8, 1, 8, 8), torch.randint(0, 100, (8,)), torch.randint(0, 3, (8,)), torch.randn(8, 1, 8, 8)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(model(x, t, y), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
