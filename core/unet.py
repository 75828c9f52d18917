"""The DDPM U-Net (Ho et al. 2020, App. B; PixelCNN++ backbone) with a selectable norm layer.
Downsampling is a stride-2 3x3 conv, upsampling nearest-neighbour x2 then a 3x3 conv, as in DDPM's
model: at the paper scale this gives its 35.7M parameters.

Feature maps are (B, C, H, W). The norm types, by what one mean/variance is taken over:
- "group":    each example, each group of channels, over (C/G, H, W)  (GroupNorm, G = gcd(groups, C));
- "batch":    each channel, over (B, H, W); running statistics are used in eval mode (BatchNorm2d);
- "layer":    each example, over all of (C, H, W), with a per-channel affine (GroupNorm with G = 1);
- "instance": each example, each channel, over (H, W), with a per-channel affine (InstanceNorm2d).

The time embedding enters each ResBlock by `conditioning` (CONDITIONINGS):
- "add":         h + W emb, a per-channel constant added before the second norm (DDPM, Ho et al. 2020);
- "scale_shift": norm(h) (1 + s) + b with (s, b) = W emb, after the second norm (improved-diffusion's
                 use_scale_shift_norm; Nichol & Dhariwal 2021; FiLM, Perez et al. 2018).
A norm whose statistics are per example and per channel over (H, W) subtracts that constant: with "add",
instance norm gives IN(h + W emb) = IN(h), so the model cannot see t (TIME_BLIND).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from core.registry import lookup

NORMS = {
    "group": lambda c, groups: nn.GroupNorm(math.gcd(groups, c), c),
    "batch": lambda c, groups: nn.BatchNorm2d(c),
    "layer": lambda c, groups: nn.GroupNorm(1, c),
    "instance": lambda c, groups: nn.InstanceNorm2d(c, affine=True),
}



def add(h, emb_out, norm):
    """DDPM: norm(h + c), c = emb_out (B, C) broadcast over (H, W)."""
    return norm(h + emb_out[:, :, None, None])


def scale_shift(h, emb_out, norm):
    """improved-diffusion's use_scale_shift_norm: norm(h) (1 + s) + b, (s, b) = emb_out split in two (B, C) halves."""
    s, b = emb_out[:, :, None, None].chunk(2, dim=1)
    return norm(h) * (1 + s) + b


CONDITIONINGS = {"add": add, "scale_shift": scale_shift}
EMB_WIDTH = {"add": 1, "scale_shift": 2}  # time projection outputs per channel
# (norm, conditioning) pairs whose model output does not depend on t, with the reason
TIME_BLIND = {("instance", "add"): "instance norm subtracts each channel's spatial mean, and 'add' conditioning adds "
                                   "the time embedding as a per-channel constant right before that norm, so "
                                   "IN(h + emb) = IN(h): the model cannot see the timestep; use conditioning = "
                                   "'scale_shift'"}


def time_blind(norm: str, conditioning: str, groups: int, widths) -> str | None:
    """Why a U-Net whose ResBlocks have these channel `widths` cannot see t, or None. GroupNorm with
    gcd(groups, C) = C groups at every width is instance norm, and blind with 'add' for the same reason."""
    if (norm, conditioning) in TIME_BLIND:
        return TIME_BLIND[(norm, conditioning)]
    if norm == "group" and conditioning == "add" and all(math.gcd(groups, c) == c for c in widths):
        return (f"groups = {groups} gives one channel per group at every width {sorted(set(widths))}, which is "
                "instance norm: " + TIME_BLIND[("instance", "add")].split(", so ", 1)[1] + " or fewer groups")
    return None


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, Sec. 3.5): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def feature_sides(resolution: int, mults) -> list[int]:
    """The feature-map sides of the U-Net's levels, largest first: the input side padded up to a
    multiple of 2^(levels-1), then halved per level. `attention` names sides from this list."""
    factor = 2 ** (len(mults) - 1)
    side = -(-resolution // factor) * factor
    return [side // 2**level for level in range(len(mults))]


class ResBlock(nn.Module):
    """norm -> SiLU -> conv, then the time embedding and norm by `conditioning` -> SiLU -> dropout -> conv,
    + (1x1) shortcut."""

    def __init__(self, c_in, c_out, t_dim, dropout, norm, conditioning="add"):
        super().__init__()
        self.condition = lookup(CONDITIONINGS, conditioning, "conditioning")
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.t_proj = nn.Linear(t_dim, EMB_WIDTH[conditioning] * c_out)
        self.norm2, self.drop = norm(c_out), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.condition(h, self.t_proj(F.silu(emb)), self.norm2)
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, c, heads, norm):
        super().__init__()
        if c % heads:
            raise ValueError(f"attention channels {c} are not divisible by heads={heads}")
        self.heads, self.norm = heads, norm(c)
        self.qkv, self.proj = nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x, emb=None):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))  # (B, C, H, W)


class UNet(nn.Module):
    """forward(x, t): x (B, channels, H, W), t LongTensor (B,) -> (B, out_channels, H, W).

    `model_channels` is the width of the first level (improved-diffusion's name); `base` is its
    older alias. Sides not divisible by 2^(levels-1) are zero-padded up, and the output is cropped
    back. `attention` lists feature-map sides (of the padded input) that get self-attention.
    `conditioning` (one of CONDITIONINGS) is how every ResBlock takes the time embedding.
    """

    def __init__(self, channels=1, base=32, mults=(1, 2, 2), res_blocks=2, attention=(), heads=1,
                 dropout=0.0, norm="group", groups=32, out_channels=None, resolution=28, model_channels=None,
                 conditioning="add"):
        super().__init__()
        base = model_channels or base
        make_norm = lookup(NORMS, norm, "norm")
        lookup(CONDITIONINGS, conditioning, "conditioning")
        norm_fn = lambda c: make_norm(c, groups)  # noqa: E731
        self.factor = 2 ** (len(mults) - 1)
        self.base, t_dim = base, 4 * base
        block = lambda c_in, c_out: ResBlock(c_in, c_out, t_dim, dropout, norm_fn, conditioning)  # noqa: E731
        self.t_mlp = nn.Sequential(nn.Linear(base, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.conv_in = nn.Conv2d(channels, base, 3, padding=1)

        res = feature_sides(resolution, mults)[0]
        self.down, skips, c = nn.ModuleList(), [base], base
        for level, mult in enumerate(mults):
            for _ in range(res_blocks):
                self.down.append(self._level(block(c, base * mult), norm_fn, res in attention, heads))
                c = base * mult
                skips.append(c)
            if level < len(mults) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
                res //= 2
        self.mid = nn.ModuleList([block(c, c), Attention(c, heads, norm_fn), block(c, c)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            for _ in range(res_blocks + 1):
                self.up.append(self._level(block(c + skips.pop(), base * mult), norm_fn, res in attention, heads))
                c = base * mult
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)))
                res *= 2
        self.norm_out = norm_fn(c)
        self.conv_out = nn.Conv2d(c, out_channels or channels, 3, padding=1)

    @staticmethod
    def _level(res_block, norm_fn, attend, heads):
        layers = [res_block]
        if attend:
            layers.append(Attention(res_block.conv2.out_channels, heads, norm_fn))
        return nn.ModuleList(layers)

    def forward(self, x, t):
        H, W = x.shape[-2:]
        f = self.factor
        x = F.pad(x, (0, -W % f, 0, -H % f))
        emb = self.t_mlp(timestep_embedding(t, self.base))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = _apply(layer, h, emb)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = _apply(layer, torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))[..., :H, :W]


def _apply(layer, h, emb):
    if isinstance(layer, nn.ModuleList):
        for block in layer:
            h = block(h, emb)
        return h
    return layer(h)  # a strided conv or an upsampling
