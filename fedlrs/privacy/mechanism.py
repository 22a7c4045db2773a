"""The server-side release: budget check, ledger record, noise, normalisation.

Used by the fast engine and the Flower server alike, so noise is never added
inline anywhere else (DESIGN 3.3-3.5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedlrs.privacy.budget import PrivacyBudget
from fedlrs.privacy.events import DpEvent, per_part_noise_multiplier
from fedlrs.privacy.ledger import Ledger
from fedlrs.privacy.noise import GaussianNoise

Tensor = torch.Tensor


def part_noise_stds(noise_multiplier: float, bounds: Mapping[str, float], noise_weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Std of the noise that :class:`GaussianSumRelease` adds to each part's sum at accounted z ``noise_multiplier``:
    ``z a_p sqrt(sum_q a_q^-2) C_p`` (``z sqrt(P) C_p`` for equal weights ``a_p``, the default)."""
    a = {p: 1.0 for p in bounds} if noise_weights is None else noise_weights
    if len(set(a.values())) == 1:
        sigma = per_part_noise_multiplier(accounted=noise_multiplier, parts=len(bounds))
        return {p: sigma * c for p, c in bounds.items()}
    k = math.sqrt(sum(w ** -2 for w in a.values()))
    return {p: noise_multiplier * a[p] * k * c for p, c in bounds.items()}


class GaussianSumRelease:
    """Release noised sums of clipped contributions, normalised by the expected count.

    Each part p (e.g. ``"A"`` and ``"c"`` in "ls" mode, ``"M"`` for the
    moments init) is a sum of per-user contributions clipped to L2 norm C_p.
    With P parts and accounted noise multiplier z, part p is released as

        ``(sum_p + N(0, (sigma C_p)^2 I)) / (q N)``,  ``sigma = z sqrt(P)``,

    which is the Gaussian mechanism with multiplier z on all parts scaled by
    1/C_p (joint sensitivity sqrt(P); see :func:`accounted_noise_multiplier`).
    With ``noise_weights`` a_p part p gets ``sigma_p = z a_p sqrt(sum_q a_q^-2)`` instead
    (scaled by 1/(sigma_p C_p) the parts have unit noise and joint sensitivity
    ``sqrt(sum_p sigma_p^-2) = 1/z``): equal weights are the rule above; a part with a
    large weight (a side statistic such as the curvature of adaptive clipping) costs
    little of the budget. Parts in ``symmetric_parts`` get symmetric noise (:meth:`GaussianNoise.sample`).
    The divisor is the expected count ``q N``, never the realized count.

    Parameters
    ----------
    noise_multiplier : float
        The accounted z, as recorded in the ledger's events.
    bounds : dict[str, float]
        Clipping bound C_p of every part.
    expected_count : float
        ``q * N``.
    noise : GaussianNoise
    symmetric_parts : frozenset[str]
    """

    def __init__(self, *, noise_multiplier: float, bounds: Mapping[str, float], expected_count: float,
                 noise: GaussianNoise, symmetric_parts: frozenset[str] = frozenset(),
                 noise_weights: Mapping[str, float] | None = None) -> None:
        for name, value in [("noise_multiplier", noise_multiplier), ("expected_count", expected_count),
                            *((f"bounds[{p!r}]", c) for p, c in bounds.items())]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} == {value!r}, must be a finite number > 0.")
        if not bounds:
            raise ValueError("bounds == {}, must name at least one part.")
        unknown = set(symmetric_parts) - set(bounds)
        if unknown:
            raise ValueError(f"symmetric_parts == {sorted(symmetric_parts)}, must be among the parts "
                             f"{sorted(bounds)}.")
        if not isinstance(noise, GaussianNoise):
            raise TypeError(f"noise == {noise!r}, must be a GaussianNoise.")
        self.noise_multiplier = float(noise_multiplier)
        self.bounds = {p: float(c) for p, c in bounds.items()}
        self.expected_count = float(expected_count)
        self.noise = noise
        self.symmetric_parts = frozenset(symmetric_parts)
        weights = {p: 1.0 for p in bounds} if noise_weights is None else dict(noise_weights)
        if set(weights) != set(bounds) or not all(isinstance(a, (int, float)) and math.isfinite(a) and a > 0 for a in weights.values()):
            raise ValueError(f"noise_weights == {noise_weights!r}, must give a finite number > 0 for each part {sorted(bounds)}.")
        self.noise_weights = {p: float(a) for p, a in weights.items()}

    def noise_stds(self) -> dict[str, float]:
        """Std of the noise added to each part's sum (:func:`part_noise_stds`)."""
        return part_noise_stds(self.noise_multiplier, self.bounds, self.noise_weights)

    def release(self, sums: Mapping[str, Tensor], *, ledger: Ledger, event: DpEvent,
                budget: PrivacyBudget | None = None) -> dict[str, Tensor]:
        """Check the budget, record ``event`` (fsynced), then noise and normalise every part.

        Returns ``{p: (sums[p] + noise_p) / expected_count}``. Nothing is noised
        or returned unless the event is durably in the ledger; a refused budget
        (:class:`BudgetExceededError`) or a duplicate ``release_id`` leaves the
        ledger untouched and releases nothing.
        """
        if set(sums) != set(self.bounds):
            raise ValueError(f"sums has parts {sorted(sums)}, must have {sorted(self.bounds)}.")
        if event.noise_multiplier > self.noise_multiplier * (1 + 1e-12):
            raise ValueError(f"event.noise_multiplier == {event.noise_multiplier}, must be <= the "
                             f"release's noise_multiplier == {self.noise_multiplier} (the ledger may "
                             f"not claim more noise than is added).")
        for p in self.symmetric_parts:
            shape = tuple(sums[p].shape)
            if len(shape) < 2 or shape[-1] != shape[-2]:
                raise ValueError(f"sums[{p!r}] has shape {shape}, must be square to be symmetric.")
        if budget is not None:
            budget.check(ledger, event)
        ledger.record(event)
        stds = self.noise_stds()
        return {p: (s + self.noise.sample(s.shape, std=stds[p], symmetric=p in self.symmetric_parts,
                                          dtype=s.dtype, device=s.device)) / self.expected_count
                for p, s in sums.items()}


def method_of_moments_release(*, noise_multiplier: float, bound: float, expected_count: float,
                              noise: GaussianNoise) -> GaussianSumRelease:
    """The private init: one symmetric part ``"M"`` (d, d) clipped to ``bound``.

    ``M = (sum_i s_i M_i + E) / (q N)`` with symmetric ``E``, upper triangle
    ~ N(0, (z C)^2). Record it with an event of ``kind="init"``.
    """
    return GaussianSumRelease(noise_multiplier=noise_multiplier, bounds={"M": bound},
                              expected_count=expected_count, noise=noise,
                              symmetric_parts=frozenset({"M"}))
