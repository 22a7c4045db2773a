"""Quantization and distributed noise for secure aggregation (DESIGN.md section 3, steps 2-3).

Under secure aggregation (:mod:`fedlrs.server.secure_aggregation`) every device
sends an integer vector that is masked, summed in a finite ring and unmasked by
the server as a sum only. This module holds the maths of that integer vector,
no Flower and no I/O:

* :func:`quantize_unit`: a contribution scaled by its clipping bound (unit norm)
  to the integer grid of step ``2**-bits``, *after* shrinking it so that the
  rounded vector still has L2 norm <= ``2**bits``: the quantized contribution is
  within the clipping bound C exactly, so the sensitivity the ledger accounts
  (C, add/remove one user) is unchanged by quantization.
* :func:`sample_discrete_gaussian`: exact samples of the discrete Gaussian
  ``N_Z(0, sigma^2)``, ``P[x] ~ exp(-x^2 / (2 sigma^2))`` on the integers
  (Canonne, Kamath & Steinke 2020, "The Discrete Gaussian for Differential
  Privacy", Algorithms 1-3), integer arithmetic only, randomness from the OS.
  Each device adds one such share to every coordinate in mode "distributed-noise".
* :func:`ddg_rdp`: Renyi DP of the sum of ``n`` independent discrete Gaussian
  shares (Kairouz, Liu & Steinke 2021, "The Distributed Discrete Gaussian
  Mechanism for Federated Learning with Secure Aggregation", Prop. 14 with the
  tau of Thm. 1), and :func:`server_view_epsilon`: what a curious server that
  sees the unmasked sums (and who took part) can learn about one user.
* :class:`ToppedUpGaussianSumRelease`: the server's release when the sums
  already carry the devices' shares: it adds only the Gaussian noise missing to
  reach the accounted total (the shares of devices that dropped out).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedlrs.privacy.accountants import RDP_ORDERS, epsilon_from_rdp, validate_delta
from fedlrs.privacy.mechanism import GaussianSumRelease

#: Flower's SecAgg+ quantizes to ``[0, 2**31)`` (it casts to int32): the ring of one coordinate
RING_BITS = 31
#: a share is Gaussian-tailed: the grid keeps room for this many standard deviations of the summed noise
NOISE_TAIL = 40.0


def grid_bits(*, cohort: int, noise_std_units: float = 0.0, ring_bits: int = RING_BITS) -> int:
    """The finest grid ``2**-bits`` (in units of the clipping bound) whose sums never wrap around.

    Each of the ``cohort`` quantized coordinates is at most ``2**bits`` in absolute value
    (a unit-norm vector), the summed shares (standard deviation ``noise_std_units``
    clipping bounds) stay below :data:`NOISE_TAIL` standard deviations except with
    probability below 1e-300, and the centred ring holds ``(-2**(ring_bits-1), 2**(ring_bits-1))``:
    ``bits = floor(log2(2**(ring_bits-1) / (cohort + NOISE_TAIL * noise_std_units)))``.
    """
    if cohort < 1:
        raise ValueError(f"cohort == {cohort}, must be >= 1.")
    if not (math.isfinite(noise_std_units) and noise_std_units >= 0):
        raise ValueError(f"noise_std_units == {noise_std_units!r}, must be a finite number >= 0.")
    bits = math.floor(ring_bits - 1 - math.log2(cohort + NOISE_TAIL * noise_std_units))
    if bits < 8:
        raise ValueError(f"a cohort of {cohort} with noise std {noise_std_units:g} leaves {bits} bits per "
                         f"coordinate in a ring of 2**{ring_bits}; at least 8 are needed.")
    return bits


def quantize_unit(values: np.ndarray, *, bits: int) -> np.ndarray:
    """Integers ``k = rint(2**bits * s * v)`` of L2 norm <= ``2**bits``, for a flat ``v`` of norm <= 1.

    Nearest rounding moves each coordinate by at most 1/2, so ``||k|| <= 2**bits s ||v|| + sqrt(D)/2``;
    the shrink ``s = min(1, b / ||v||)``, ``b = 1 - sqrt(D) / 2**(bits+1)``, makes that ``<= 2**bits``.
    The bound is then checked exactly on the integers (and the shrink tightened if floating
    point ever broke it). Rounding is deterministic, so a symmetric input stays symmetric.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        raise ValueError("values must be finite.")
    scale = float(2 ** bits)
    budget = 1.0 - math.sqrt(v.size) / (2.0 * scale)
    if budget <= 0:
        raise ValueError(f"bits == {bits} is too coarse for {v.size} coordinates (needs 2**bits > sqrt(D)/2).")
    norm = float(np.linalg.norm(v))
    shrink = 1.0 if norm <= budget else budget / norm
    limit = (1 << bits) ** 2
    while True:
        k = np.rint(v * (shrink * scale)).astype(np.int64)
        if sum(x * x for x in k.tolist()) <= limit:
            return k
        shrink *= 1.0 - 2.0 ** -30


# ---------------------------------------------------------------- exact discrete Gaussian (CKS 2020)
def _bernoulli(num: int, den: int, rng: random.Random) -> bool:
    """Bernoulli(num / den), 0 <= num <= den."""
    return rng.randrange(den) < num


def _bernoulli_exp_at_most_1(num: int, den: int, rng: random.Random) -> bool:
    """Bernoulli(exp(-num/den)) for 0 <= num/den <= 1 (CKS 2020, Algorithm 1, first part)."""
    k = 1
    while _bernoulli(num, den * k, rng):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(num: int, den: int, rng: random.Random) -> bool:
    """Bernoulli(exp(-num/den)) for num/den >= 0 (CKS 2020, Algorithm 1)."""
    while num > den:
        if not _bernoulli_exp_at_most_1(1, 1, rng):
            return False
        num -= den
    return _bernoulli_exp_at_most_1(num, den, rng)


def _discrete_laplace(t: int, rng: random.Random) -> int:
    """``P[x] ~ exp(-|x| / t)`` on the integers, t >= 1 an integer (CKS 2020, Algorithm 2)."""
    while True:
        u = rng.randrange(t)
        if not _bernoulli_exp(u, t, rng):
            continue
        v = 0
        while _bernoulli_exp_at_most_1(1, 1, rng):
            v += 1
        magnitude = v * t + u
        negative = rng.randrange(2) == 1
        if negative and magnitude == 0:
            continue
        return -magnitude if negative else magnitude


def discrete_gaussian(sigma2: int, rng: random.Random) -> int:
    """One exact sample of ``N_Z(0, sigma2)`` for an integer ``sigma2 >= 1`` (CKS 2020, Algorithm 3).

    A discrete Laplace candidate ``y`` of scale ``t = floor(sqrt(sigma2)) + 1`` is kept with
    probability ``exp(-(|y| - sigma2/t)^2 / (2 sigma2))``.
    """
    t = math.isqrt(sigma2) + 1
    while True:
        y = _discrete_laplace(t, rng)
        if _bernoulli_exp((abs(y) * t - sigma2) ** 2, 2 * sigma2 * t * t, rng):
            return y


def sample_discrete_gaussian(size: int, *, sigma2: int, rng: random.Random | None = None) -> np.ndarray:
    """``size`` independent samples of ``N_Z(0, sigma2)`` as int64 (``rng`` None: the OS's entropy).

    ``sigma2`` is an integer (a share variance is rounded *up* to one: more noise, never less).
    """
    if isinstance(sigma2, bool) or not isinstance(sigma2, int) or sigma2 < 1:
        raise ValueError(f"sigma2 == {sigma2!r}, must be an integer >= 1.")
    rng = random.SystemRandom() if rng is None else rng
    return np.fromiter((discrete_gaussian(sigma2, rng) for _ in range(size)), dtype=np.int64, count=size)


def share_variance(*, noise_std_units: float, bits: int, shares: int) -> int:
    """The integer variance of one device's share when ``shares`` devices carry a total std of ``noise_std_units`` bounds.

    ``ceil((noise_std_units * 2**bits)**2 / shares)``: rounded up, so the shares of a full cohort carry
    at least the calibrated total.
    """
    if shares < 1:
        raise ValueError(f"shares == {shares}, must be >= 1.")
    total = (noise_std_units * 2 ** bits) ** 2
    return max(1, math.ceil(total / shares))


# ---------------------------------------------------------------- accounting of the shares
def ddg_tau(*, sigma: float, shares: int) -> float:
    """``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1))`` (KLS 2021, Thm. 1); 0 for one share."""
    return 10.0 * sum(math.exp(-2.0 * math.pi ** 2 * sigma ** 2 * k / (k + 1)) for k in range(1, shares))


@dataclass(frozen=True)
class ShareRelease:
    """What one unmasked sum carried, for the accounting against the server that saw it.

    ``shares``: devices whose share (and contribution) is in the sum; ``sigma2``: the
    integer variance parameter of each share (grid units); ``l2``: the L2 sensitivity of
    one device's quantized contribution in grid units (``2**bits sqrt(P)`` for P parts);
    ``dim``: the number of summed integer coordinates.
    """

    shares: int
    sigma2: int
    l2: float
    dim: int

    def rdp(self, orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
        """:func:`ddg_rdp` of this release at ``orders``."""
        return ddg_rdp(shares=self.shares, sigma=math.sqrt(self.sigma2), l2=self.l2, dim=self.dim, orders=orders)


def ddg_rdp(*, shares: int, sigma: float, l2: float, dim: int, orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
    """RDP at ``orders`` of ``sum_i (x_i + Y_i)``, ``Y_i ~ N_Z(0, sigma^2)^dim`` i.i.d., one ``x_i`` changed.

    KLS 2021, Prop. 14 (with Thm. 1's tau), for neighbours that differ in one device's integer
    vector by at most ``l2`` (L2) and ``l1 = l2 min(sqrt(dim), l2)`` (L1; integers), the number of
    shares ``n`` being the same on both sides (zero-out: the device is there, its data replaced)::

        eps(a) = min(a/2 s2^2 + tau dim,  a/2 (s2^2 + 2 s1 tau + tau^2 dim),  a/2 (s2 + sqrt(dim) tau)^2)

    with ``s2 = l2 / (sqrt(n) sigma)``, ``s1 = l1 / (sqrt(n) sigma)``. No sampling amplification.
    With tau = 0 it is the Gaussian mechanism's ``a/2 s2^2``.
    """
    if shares < 1 or not sigma >= 0.5 or not l2 > 0 or dim < 1:
        raise ValueError(f"shares == {shares}, sigma == {sigma}, l2 == {l2}, dim == {dim}: "
                         f"need shares >= 1, sigma >= 1/2, l2 > 0, dim >= 1.")
    tau = ddg_tau(sigma=sigma, shares=shares)
    s2 = l2 / (math.sqrt(shares) * sigma)
    s1 = l2 * min(math.sqrt(dim), l2) / (math.sqrt(shares) * sigma)
    a = np.asarray(orders, dtype=np.float64)
    return np.minimum.reduce([a / 2 * s2 ** 2 + tau * dim, a / 2 * (s2 ** 2 + 2 * s1 * tau + tau ** 2 * dim),
                              a / 2 * (s2 + math.sqrt(dim) * tau) ** 2])


def server_view_epsilon(releases: Sequence[ShareRelease], *, delta: float) -> float:
    """Epsilon at ``delta`` against a curious server, for a user present in every one of ``releases``.

    The server runs the sampling, so it knows who took part: no amplification (q = 1); the
    neighbouring relation is zero-out (the user's contribution replaced by zero, its share
    still there). RDP curves of :func:`ddg_rdp` composed by addition, converted as the ledger's
    RDP accountant does (Balle et al. 2020, Thm. 21). ``inf`` when a release carried no share.
    """
    delta = validate_delta(delta)
    if any(r.shares < 1 or r.sigma2 < 1 for r in releases):
        return math.inf
    total = np.zeros(len(RDP_ORDERS))
    for release in releases:
        total = total + release.rdp()
    return epsilon_from_rdp(total, delta=delta)[0]


class ToppedUpGaussianSumRelease(GaussianSumRelease):
    """:class:`GaussianSumRelease` for sums that already carry independent noise of accounted multiplier ``noise_present``.

    The devices' shares in mode "distributed-noise" (those of the devices that dropped
    out are missing). The release adds ``N(0, (z^2 - z_present^2) P C_p^2)`` to part p, so
    the total variance is the accounted ``(z sqrt(P) C_p)^2`` whatever the number of shares:
    the ledger's event (noise multiplier z, recorded before the release) describes the
    total, and ``z_present <= z`` is required (a sum may not carry more noise than accounted
    for the top-up to be non-negative; more noise would only be conservative, but it is refused
    here so that the arithmetic stays exact).
    """

    def __init__(self, *, noise_present: float, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(noise_present, bool) or not isinstance(noise_present, (int, float)) \
                or not 0 <= noise_present <= self.noise_multiplier * (1 + 1e-12):
            raise ValueError(f"noise_present == {noise_present!r}, must be in [0, noise_multiplier == "
                             f"{self.noise_multiplier}].")
        self.noise_present = min(float(noise_present), self.noise_multiplier)

    def noise_stds(self) -> dict[str, float]:
        """Std of the top-up on each part: ``sqrt(1 - (z_present / z)^2) z sqrt(P) C_p``."""
        factor = math.sqrt(max(0.0, 1.0 - (self.noise_present / self.noise_multiplier) ** 2))
        return {p: factor * s for p, s in super().noise_stds().items()}
