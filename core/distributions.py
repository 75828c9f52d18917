"""Gaussian log-densities and KLs used by the variational bound (elementwise), and seeded noise."""
import torch
from torch.special import log_ndtr, ndtr


def normal_kl(mean1, log_var1, mean2, log_var2):
    """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)) in nats, elementwise."""
    return 0.5 * (-1.0 + log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * torch.exp(-log_var2))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """log p(x) for 8-bit data scaled to [-1, 1] under a Gaussian discretized into 256 bins of
    width 2/255, with the edge bins extended to -inf and +inf (Ho et al. 2020, Eq. 13). Nats."""
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + 1 / 255)
    lower = inv_std * (x - mean - 1 / 255)
    inside = torch.log((ndtr(upper) - ndtr(lower)).clamp(min=1e-12))
    return torch.where(x < -0.999, log_ndtr(upper), torch.where(x > 0.999, log_ndtr(-lower), inside))


def randn(shape, generator=None, *, device=None, dtype=None):
    """N(0, I) of `shape` (B, ...). `generator` is one torch.Generator for the whole tensor, or a
    sequence of B generators, row i drawn from generator i, so an example's draw does not depend on
    which batch it is in (EDM's generate.py seeds each image the same way)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    _check_per_example(shape, generator)
    return torch.stack([torch.randn(shape[1:], generator=g, device=device, dtype=dtype) for g in generator])


def rand(shape, generator=None, *, device=None, dtype=None):
    """U[0, 1) of `shape`, with `generator` as in `randn`."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=device, dtype=dtype)
    _check_per_example(shape, generator)
    return torch.stack([torch.rand(shape[1:], generator=g, device=device, dtype=dtype) for g in generator])


def _check_per_example(shape, generators):
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} per-example generators for a batch of {shape[0]}")
