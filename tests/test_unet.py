import pytest
import torch

from core.unet import UNet

NORMS = ["group", "batch", "layer", "instance"]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("train", [True, False])
def test_output_has_input_shape(norm, size, train):
    torch.manual_seed(0)
    net = UNet(channels=3, base=16, mults=(1, 2, 2), res_blocks=1, attention=(16, 14), heads=2, norm=norm,
               resolution=size, dropout=0.1).train(train)
    x, t = torch.randn(3, 3, size, size), torch.randint(0, 1000, (3,))
    y = net(x, t)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward() if train else None


def test_learned_variance_doubles_output_channels_and_odd_sides_are_cropped():
    net = UNet(channels=1, base=8, mults=(1, 2, 2, 2), res_blocks=1, out_channels=2, resolution=28)
    assert net(torch.randn(2, 1, 28, 28), torch.tensor([0, 999])).shape == (2, 2, 28, 28)
    assert net(torch.randn(2, 1, 27, 30), torch.tensor([0, 999])).shape == (2, 2, 27, 30)


def test_batchnorm_uses_batch_stats_in_train_and_running_stats_in_eval():
    torch.manual_seed(0)
    net = UNet(channels=1, base=8, mults=(1, 2), res_blocks=1, norm="batch", resolution=8)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    other = torch.cat([x[:1], 5 * torch.randn(3, 1, 8, 8)])
    net.train()
    assert not torch.allclose(net(x, t)[:1], net(other, t)[:1])  # depends on the rest of the batch
    net.eval()
    assert torch.allclose(net(x, t)[:1], net(other, t)[:1], atol=1e-6)  # does not
    assert torch.allclose(net(x[:1], t[:1]), net(x, t)[:1], atol=1e-5)


@pytest.mark.parametrize("norm", ["group", "layer", "instance"])
def test_per_example_norms_do_not_mix_the_batch(norm):
    torch.manual_seed(0)
    net = UNet(channels=1, base=8, mults=(1, 2), res_blocks=1, norm=norm, resolution=8).train()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    assert torch.allclose(net(x, t)[:1], net(x[:1], t[:1]), atol=1e-5)


def test_layer_norm_normalises_over_channels_and_space():
    from core.unet import NORMS as REG
    layer = REG["layer"](6, 32)
    y = layer(torch.randn(2, 6, 5, 5) * 3 + 1)
    assert torch.allclose(y.flatten(1).mean(1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(y.flatten(1).var(1, unbiased=False), torch.ones(2), atol=1e-3)


def test_unknown_norm_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown norm 'rms'.*'group', 'batch', 'layer', 'instance'"):
        UNet(norm="rms")


def test_paper_scale_has_the_ddpm_cifar10_models_35_7m_parameters():
    """Ho et al. 2020, App. B: 35.7M parameters for CIFAR-10 (nearest upsampling + 3x3 conv, not a
    transposed 4x4 conv, which would give 37.1M)."""
    from ablations.run.config import TrainConfig
    from ablations.grid.spec import load_scales
    from ablations.run.model import build_model
    cfg = TrainConfig(**{k: v[0] for k, v in load_scales()["paper"]["base"].items()})
    n = sum(p.numel() for p in build_model(cfg).parameters())
    assert round(n / 1e6, 1) == 35.7, n


def _two_timesteps(norm, conditioning, groups=8):
    """Largest output difference of one eval-mode model at t = 10 and t = 900, same x."""
    torch.manual_seed(0)
    net = UNet(channels=1, base=16, mults=(1, 2), res_blocks=1, norm=norm, conditioning=conditioning,
               groups=groups, resolution=8).eval()
    with torch.no_grad():
        for p in net.parameters():  # a trained-looking net: zero-init biases would hide nothing here
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 1, 8, 8).expand(2, 1, 8, 8)
    with torch.no_grad():
        y = net(x, torch.tensor([10, 900]))
    return (y[0] - y[1]).abs().max().item()


@pytest.mark.parametrize("norm", NORMS)
def test_instance_norm_with_add_conditioning_cannot_see_the_timestep(norm):
    """IN(h + c) = IN(h) for a per-channel constant c: with 'add' the instance-norm model's output is the same
    at every t; 'scale_shift' applies the embedding after the norm, so every norm sees t."""
    from core.unet import TIME_BLIND
    add, scale_shift = _two_timesteps(norm, "add"), _two_timesteps(norm, "scale_shift")
    assert scale_shift > 1e-2
    if norm == "instance":
        assert add < 1e-5 and (norm, "add") in TIME_BLIND
    else:
        assert add > 1e-2 and (norm, "add") not in TIME_BLIND


@pytest.mark.parametrize("groups", [32, 8])
def test_group_norm_with_one_channel_per_group_is_as_blind_as_instance_norm(groups):
    """Widths 16 and 32 with groups = 32 give GroupNorm(C, C) everywhere: instance norm, blind to t under 'add'.
    `time_blind` says so, and only then."""
    from core.unet import time_blind
    add = _two_timesteps("group", "add", groups=groups)
    why = time_blind("group", "add", groups, [16, 32])
    assert (add < 1e-5) == (why is not None) == (groups == 32)
    assert time_blind("group", "scale_shift", groups, [16, 32]) is None


def test_scale_shift_is_norm_times_one_plus_s_plus_b():
    """improved-diffusion's use_scale_shift_norm: (s, b) = W emb split in halves, out = norm(h) (1 + s) + b."""
    from core.unet import ResBlock
    torch.manual_seed(0)
    norm = lambda c: torch.nn.GroupNorm(2, c)  # noqa: E731
    block = ResBlock(4, 4, 6, 0.0, norm, "scale_shift")
    assert block.t_proj.out_features == 8
    x, emb = torch.randn(3, 4, 5, 5), torch.randn(3, 6)
    h = block.conv1(torch.nn.functional.silu(block.norm1(x)))
    s, b = block.t_proj(torch.nn.functional.silu(emb)).split(4, dim=1)
    h = block.norm2(h) * (1 + s[:, :, None, None]) + b[:, :, None, None]
    want = x + block.conv2(torch.nn.functional.silu(h))
    assert torch.allclose(block(x, emb), want, atol=1e-6)


def test_unknown_conditioning_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown conditioning 'film'; valid choices: 'add', 'scale_shift'"):
        UNet(conditioning="film")
