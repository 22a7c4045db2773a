"""Epsilon of a sequence of events, from three standard accountants.

Pure functions: ``compute_epsilon(events, delta=..., accountant=...)`` is all a
ledger, a budget, a report or an audit ever calls, so epsilon is always
recomputed from the recorded events and never kept as a running number.

All events are Poisson-sampled Gaussian mechanisms (add/remove one user), so
the history reduces to groups ``(z, q) -> total count``; composition is
commutative, and every accountant below composes the groups.

* ``"rdp"``: Renyi DP of the sampled Gaussian mechanism (Mironov 2017,
  "Renyi Differential Privacy"; Mironov, Talwar & Zhang 2019, "Renyi
  Differential Privacy of the Sampled Gaussian Mechanism"), composed by adding
  the RDP curves, converted with Balle et al. 2020 Thm 21:
  ``eps = min_a RDP(a) + log((a-1)/a) - (log delta + log a)/(a-1)``
  (``opacus.accountants.analysis.rdp``). Loosest, cheapest, always available.
* ``"prv"``: numerical composition of privacy loss random variables
  (Gopi, Lee & Wutschitz 2021), Opacus ``PRVAccountant``; the upper bound of
  its epsilon estimate is returned. Guarded: if the discretisation would be too
  large, or the computation fails, RDP is used instead and the result says so.
* ``"pld"``: privacy loss distributions (Doroshenko, Ghazi, Kamath, Kumar &
  Manurangsi 2022, "Connect the Dots"), ``dp_accounting.pld.PLDAccountant`` on
  ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)), count)``
  (pessimistic estimate). Guarded like PRV.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedlrs.privacy.events import DpEvent

Accountant = Literal["rdp", "prv", "pld"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "pld")

#: RDP orders (Opacus' defaults extended to large orders for small epsilons).
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512, 1024])

#: PRV: most grid points of the discretised domain before falling back to RDP.
PRV_MAX_POINTS = 5_000_000
#: PRV / PLD: most distinct (z, q) groups before falling back to RDP.
MAX_GROUPS = 64
#: PLD: finest loss discretisation; coarsened in proportion to epsilon above 10
#: so that the work stays bounded (a pessimistic PLD stays an upper bound at any grid).
PLD_BASE_INTERVAL = 1e-4

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpsilonResult:
    """Epsilon at ``delta`` and which accountant actually produced it.

    ``accountant_used`` differs from ``accountant`` only when a guarded
    accountant (PRV, PLD) fell back to RDP; ``warning`` then says why. RDP is an
    upper bound on the same guarantee, so a fallback only ever accounts more.
    """

    epsilon: float
    delta: float
    accountant: str
    accountant_used: str
    warning: str | None = None

    @property
    def fell_back(self) -> bool:
        """True when the requested accountant was replaced by RDP."""
        return self.accountant_used != self.accountant


def validate_delta(delta: float) -> float:
    """Return ``delta`` as a float, refusing anything outside (0, 1)."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta) \
            or not 0 < delta < 1:
        raise ValueError(f"delta == {delta!r}, must be in (0, 1).")
    return float(delta)


def validate_accountant(accountant: str) -> str:
    """Return ``accountant`` if it is one of ``ACCOUNTANTS``."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant == {accountant!r}, must be one of {list(ACCOUNTANTS)}.")
    return accountant


def group_events(events: Iterable[DpEvent]) -> list[tuple[float, float, int]]:
    """Reduce events to ``[(noise_multiplier, sample_rate, total_count)]``, first-seen order.

    Composition of the same mechanism k times is its k-fold self-composition,
    and composition is commutative, so this loses nothing.
    """
    groups: dict[tuple[float, float], int] = {}
    for event in events:
        if not isinstance(event, DpEvent):
            raise TypeError(f"event == {event!r}, must be a DpEvent.")
        key = (event.noise_multiplier, event.sample_rate)
        groups[key] = groups.get(key, 0) + event.count
    return [(z, q, n) for (z, q), n in groups.items()]


def rdp_curve(*, noise_multiplier: float, sample_rate: float, count: int) -> np.ndarray:
    """RDP of ``count`` sampled Gaussian mechanisms at :data:`RDP_ORDERS`.

    ``count * RDP_a(SGM(q, z))`` (Mironov, Talwar & Zhang 2019, Sec. 3.3);
    RDP composes by addition (Mironov 2017, Prop. 1).
    """
    return count * np.asarray(_unit_rdp(float(noise_multiplier), float(sample_rate)))


@functools.lru_cache(maxsize=4096)
def _unit_rdp(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """One step of Opacus' ``compute_rdp``; memoised (pure), since a run repeats one (z, q)."""
    from opacus.accountants.analysis import rdp as opacus_rdp

    try:
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            curve = tuple(float(v) for v in opacus_rdp.compute_rdp(
                q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS)))
    except (ArithmeticError, FloatingPointError) as error:  # z**2 underflows to 0, or the RDP overflows
        curve = (math.inf,)
        reason = str(error)
    else:
        reason = "not finite"
    if not all(math.isfinite(v) for v in curve):
        raise ValueError(f"noise_multiplier == {noise_multiplier!r} (sample_rate == {sample_rate!r}) is too small "
                         f"to account: its RDP overflows ({reason}), so its epsilon is unbounded.")
    return curve


def epsilon_from_rdp(rdp: np.ndarray, *, delta: float) -> tuple[float, str | None]:
    """Convert an RDP curve at :data:`RDP_ORDERS` to epsilon at ``delta``.

    ``eps = min_a rdp(a) + log((a-1)/a) - (log delta + log a)/(a-1)``
    (Balle et al. 2020, Thm 21, as in Opacus). Returns ``(epsilon, warning)``;
    the warning is set when the optimum lies at the edge of the orders (the
    bound is still valid, only looser).
    """
    from opacus.accountants.analysis import rdp as opacus_rdp

    if not np.any(rdp):
        return 0.0, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eps, _order = opacus_rdp.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    message = "; ".join(str(w.message) for w in caught) or None
    return max(float(eps), 0.0), message


def _rdp_epsilon(groups: Sequence[tuple[float, float, int]], delta: float) -> tuple[float, str | None]:
    total = np.zeros(len(RDP_ORDERS))
    for z, q, n in groups:
        total = total + rdp_curve(noise_multiplier=z, sample_rate=q, count=n)
    return epsilon_from_rdp(total, delta=delta)


def _prv_epsilon(groups: Sequence[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size

    if len(groups) > MAX_GROUPS:
        raise ValueError(f"{len(groups)} distinct (z, q) groups, PRV allows at most {MAX_GROUPS}.")
    eps_error, delta_error = 0.01, delta / 1000
    counts = [n for _, _, n in groups]
    prvs = [PoissonSubsampledGaussianPRV(q, z) for z, q, _ in groups]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half_width = compute_safe_domain_size(prvs=prvs, max_self_compositions=counts,
                                              eps_error=eps_error, delta_error=delta_error)
    # the mesh PRVAccountant will use (Gopi et al. 2021, Sec. 5)
    mesh = eps_error / math.sqrt(sum(counts) * math.log(12 / delta_error) / 2)
    points = 2 * half_width / mesh
    if not math.isfinite(points) or points > PRV_MAX_POINTS:
        raise ValueError(f"PRV grid of {points:.3g} points exceeds {PRV_MAX_POINTS}.")
    accountant = PRVAccountant()
    accountant.history = [(z, q, n) for z, q, n in groups]
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps = float(accountant.get_epsilon(delta=delta, eps_error=eps_error, delta_error=delta_error))
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"PRV returned epsilon == {eps!r}.")
    return eps


def _pld_epsilon(groups: Sequence[tuple[float, float, int]], delta: float,
                 rdp_epsilon: float) -> float:
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    if len(groups) > MAX_GROUPS:
        raise ValueError(f"{len(groups)} distinct (z, q) groups, PLD allows at most {MAX_GROUPS}.")
    interval = PLD_BASE_INTERVAL * max(1.0, rdp_epsilon / 10.0)
    accountant = PLDAccountant(neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
                               value_discretization_interval=interval)
    for z, q, n in groups:
        accountant.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), n))
    eps = float(accountant.get_epsilon(delta))
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"PLD returned epsilon == {eps!r}.")
    return eps


def compute_epsilon(events: Iterable[DpEvent], *, delta: float,
                    accountant: Accountant = "rdp") -> EpsilonResult:
    """Epsilon at ``delta`` of all ``events`` composed (user-level, add/remove one user).

    Parameters
    ----------
    events : iterable of DpEvent
        The releases, e.g. ``ledger.events``.
    delta : float
        Target delta in (0, 1).
    accountant : {"rdp", "prv", "pld"}
        See the module docstring for the formulas and papers. PRV and PLD fall
        back to RDP (``accountant_used == "rdp"``, ``warning`` set, logged) when
        their work would be too large or they fail.

    Examples
    --------
    >>> from fedlrs.privacy.events import DpEvent
    >>> e = DpEvent(release_id="rounds", kind="round", noise_multiplier=1.0,
    ...             sample_rate=0.05, count=200, round=1, time=0.0)
    >>> round(compute_epsilon([e], delta=1e-5).epsilon, 2)
    5.37
    """
    delta = validate_delta(delta)
    validate_accountant(accountant)
    groups = group_events(events)
    if not groups:
        return EpsilonResult(0.0, delta, accountant, accountant)
    rdp_eps, rdp_warning = _rdp_epsilon(groups, delta)
    if accountant == "rdp":
        return EpsilonResult(rdp_eps, delta, accountant, "rdp", rdp_warning)
    try:
        if accountant == "prv":
            eps = _prv_epsilon(groups, delta)
        else:
            eps = _pld_epsilon(groups, delta, rdp_eps)
        return EpsilonResult(eps, delta, accountant, accountant)
    except (MemoryError, ValueError, RuntimeError, ArithmeticError) as error:
        reason = f"{accountant.upper()} accountant failed ({error}); fell back to RDP."
        _LOG.warning(reason)
        return EpsilonResult(rdp_eps, delta, accountant, "rdp",
                             reason if rdp_warning is None else f"{reason} {rdp_warning}")
