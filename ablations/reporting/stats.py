"""The tests behind the verdicts, in the standard library alone: Student's t, paired one-sided tests,
TOST for parity and Holm's step-down correction. No scipy: the t distribution's CDF has closed forms
for integer degrees of freedom, which is all a paired test over seeds needs.
"""
import math


def t_cdf(t: float, dof: int) -> float:
    """P(T <= t) for Student's t with an integer `dof` >= 1: Abramowitz & Stegun 26.7.3 (odd dof) and
    26.7.4 (even dof), with theta = atan(t / sqrt(dof)) and A = P(|T| < t) = 2 cdf - 1."""
    if dof < 1 or dof != int(dof):
        raise ValueError(f"t_cdf needs an integer dof >= 1, got {dof!r}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(t / math.sqrt(dof))
    c2 = math.cos(theta) ** 2
    if dof % 2:  # 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2.4/3.5 cos^4 + ... up to cos^(dof-3)))
        term, total = 1.0, 0.0
        for k in range(1, (dof - 1) // 2 + 1):
            total += term
            term *= 2 * k / (2 * k + 1) * c2
        a = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    else:  # sin (1 + 1/2 cos^2 + 1.3/2.4 cos^4 + ... up to cos^(dof-2))
        term, total = 1.0, 0.0
        for k in range(1, dof // 2 + 1):
            total += term
            term *= (2 * k - 1) / (2 * k) * c2
        a = math.sin(theta) * total
    return min(1.0, max(0.0, (1 + a) / 2))


def t_quantile(q: float, dof: int) -> float:
    """The t with t_cdf(t, dof) = q, by bisection (t_cdf is monotone)."""
    if not 0 < q < 1:
        raise ValueError(f"t_quantile needs 0 < q < 1, got {q!r}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, dof) > q:
        lo *= 2
    while t_cdf(hi, dof) < q:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, dof) < q else (lo, mid)
    return (lo + hi) / 2


def paired(d: list[float]) -> tuple[float, float, int]:
    """Mean, standard error and degrees of freedom of paired differences d (one per seed)."""
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return mean, sd / math.sqrt(n), n - 1


def _below(mean: float, se: float, dof: int, bound: float) -> float:
    """One-sided p of H1: mu < bound (H0: mu >= bound)."""
    if se == 0:
        return 0.0 if mean < bound else 1.0
    return t_cdf((mean - bound) / se, dof)


def p_lower(d: list[float]) -> float:
    """One-sided paired t test of 'a lower than b' (H1: mean d < 0)."""
    return _below(*paired(d), 0.0)


def p_higher(d: list[float]) -> float:
    """One-sided paired t test of 'a higher than b' (H1: mean d > 0)."""
    return p_lower([-x for x in d])


def p_two_sided(d: list[float]) -> float:
    return min(1.0, 2 * min(p_lower(d), p_higher(d)))


def p_tost(d: list[float], margin: float) -> float:
    """Two one-sided tests of parity, -margin < mean d < margin (Schuirmann 1987): the larger of the
    two one-sided p-values. p < alpha exactly when the (1 - 2 alpha) CI lies inside the margin."""
    mean, se, dof = paired(d)
    return max(_below(mean, se, dof, margin), _below(-mean, se, dof, margin))


def p_outside(d: list[float], margin: float) -> float:
    """The reverse of parity, |mean d| > margin: the two one-sided tests of leaving the margin, each at
    alpha / 2 (Bonferroni), so p < alpha exactly when the (1 - alpha) CI lies outside it."""
    mean, se, dof = paired(d)
    return min(1.0, 2 * min(_below(mean, se, dof, -margin), _below(-mean, se, dof, -margin)))


def ci(d: list[float], level: float) -> float:
    """Half-width of the two-sided `level` CI of mean d (Student's t)."""
    mean, se, dof = paired(d)
    return t_quantile(1 - (1 - level) / 2, dof) * se


def holm(p: list[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in input order: with p sorted ascending, the k-th
    (1-based) becomes max over j <= k of (m - j + 1) p_(j), capped at 1. Rejecting where the adjusted
    p < alpha controls the family-wise error rate at alpha."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def seeds_to_decide(d: list[float], expect: str, alpha: float, margin: float = 0.0, power: float = 0.8,
                    most: int = 100) -> int | None:
    """The seeds at which the finding's test, or its reverse, would pass at `alpha` with probability `power`
    if the observed mean and spread of d were the truth: the smallest n >= 2 whose power reaches it, a one-sided
    test's power taken as P(T_{n-1} <= delta sqrt(n) / sd - t_{1-alpha, n-1}), the shifted central t
    approximation of the noncentral t (one-sided, delta / sd = 1, alpha 0.05, power 0.8: 8 seeds, the exact
    answer). delta is |mean d|, with alpha halved when two-sided ("differs"). Parity's TOST passes when both of
    its one-sided tests do, deltas margin - mean and margin + mean: power P1 + P2 - 1, a lower bound; its
    reverse, |mean d| > margin, is one side at alpha / 2 with delta |mean d| - margin. None when no n up to
    `most` would: no difference, or too small a one for its spread."""
    mean, se, dof = paired(d)
    sd = se * math.sqrt(dof + 1)
    if expect == "parity" and abs(mean) < margin:
        sides, a = (margin - mean, margin + mean), alpha
    elif expect == "parity":
        sides, a = (abs(mean) - margin,), alpha / 2  # p_outside
    else:
        sides, a = (abs(mean),), alpha / 2 if expect == "differs" else alpha
    if min(sides) <= 0:
        return None
    if sd == 0:
        return 2
    for n in range(2, most + 1):
        t = t_quantile(1 - a, n - 1)
        if sum(t_cdf(delta * math.sqrt(n) / sd - t, n - 1) for delta in sides) - (len(sides) - 1) >= power:
            return n
    return None
