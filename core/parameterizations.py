"""What the network predicts. Each parameterization is three pure maps over the coefficients
a = sqrt(alpha_bar_t) and b = sqrt(1 - alpha_bar_t), where x_t = a x0 + b eps (Ho et al. Eq. 4):

- `target(x0, eps, c)`: what the network is trained to output;
- `to_x0(xt, out, c)` and `to_eps(xt, out, c)`: what an output implies.

`v = a eps - b x0` (Salimans & Ho 2022, Sec. 4), so x0 = a x_t - b v and eps = b x_t + a v.
`c` is anything with `.a` and `.b`: per-example tensors broadcastable to x, or scalars.
"""
from typing import Callable, NamedTuple


class Prediction(NamedTuple):
    target: Callable
    to_x0: Callable
    to_eps: Callable


PREDICTIONS = {
    "eps": Prediction(
        target=lambda x0, eps, c: eps,
        to_x0=lambda xt, out, c: (xt - c.b * out) / c.a,
        to_eps=lambda xt, out, c: out,
    ),
    "x0": Prediction(
        target=lambda x0, eps, c: x0,
        to_x0=lambda xt, out, c: out,
        to_eps=lambda xt, out, c: (xt - c.a * out) / c.b,
    ),
    "v": Prediction(
        target=lambda x0, eps, c: c.a * eps - c.b * x0,
        to_x0=lambda xt, out, c: c.a * xt - c.b * out,
        to_eps=lambda xt, out, c: c.b * xt + c.a * out,
    ),
}
