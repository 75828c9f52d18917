import math

import pytest
import torch

from core.schedules import make_schedule, respace, spaced_timesteps


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [50, 1000, 4000])
def test_schedule_is_monotone_float64_and_length_T(name, T):
    s = make_schedule(name, T)
    for field in (s.betas, s.alphas_cumprod, s.posterior_variance):
        assert field.dtype == torch.float64 and field.shape == (T,)
    assert (s.betas > 0).all() and (s.betas <= 0.999).all()
    assert (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("T", [1000, 250])
def test_linear_matches_ddpm_scaled_by_1000_over_T(T):
    s = make_schedule("linear", T)
    assert s.betas[0].item() == pytest.approx(1e-4 * 1000 / T, rel=1e-9)
    assert s.betas[-1].item() == pytest.approx(0.02 * 1000 / T, rel=1e-9)
    assert torch.allclose(s.betas[1:] - s.betas[:-1], (s.betas[1] - s.betas[0]).expand(T - 1), rtol=1e-6)


def test_cosine_matches_improved_ddpm_alpha_bar():
    T, s_ = 1000, 0.008
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2  # noqa: E731
    s = make_schedule("cosine", T)
    unclipped = s.betas < 0.999
    want = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    assert unclipped[: T - 1].all()
    assert torch.allclose(s.alphas_cumprod[:-1], want[:-1], rtol=1e-10)
    assert s.betas[-1].item() == 0.999  # clipped at the singular end


def test_spaced_timesteps_are_the_ddim_subsequence():
    assert spaced_timesteps(1000, 10) == list(range(0, 1000, 100))
    assert spaced_timesteps(10, 10) == list(range(10))
    assert spaced_timesteps(1000, 3) == [0, 333, 666]


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_respacing_keeps_alpha_bar_at_kept_steps(name, steps):
    s = make_schedule(name, 1000)
    kept = spaced_timesteps(1000, steps)
    r = respace(s, kept)
    assert torch.equal(r.timesteps, torch.tensor(kept))
    assert torch.allclose(r.alphas_cumprod, s.alphas_cumprod[kept], rtol=1e-12)
    assert torch.allclose(torch.cumprod(1 - r.betas, 0), s.alphas_cumprod[kept], rtol=1e-10)
    assert r.alphas_cumprod_prev[0].item() == 1.0


def test_bad_schedule_arguments_name_the_choices():
    with pytest.raises(ValueError, match=r"unknown schedule 'quadratic'.*'linear', 'cosine'"):
        make_schedule("quadratic", 1000)
    with pytest.raises(ValueError, match=r"schedule 'linear' with T=10 has betas outside \(0, 1\)"):
        make_schedule("linear", 10)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, T=100\], got 101"):
        spaced_timesteps(100, 101)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, T=100\], got 0"):
        spaced_timesteps(100, 0)
