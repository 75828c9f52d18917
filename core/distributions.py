"""Gaussian log-densities and KLs used by the variational bound, all elementwise."""
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
