"""Calibrate the noise multiplier to a target (epsilon, delta) before training."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from fedlrs.privacy.accountants import Accountant, compute_epsilon, validate_accountant, validate_delta
from fedlrs.privacy.events import DpEvent

#: Largest noise multiplier calibration will consider.
MAX_NOISE_MULTIPLIER = 1e4


class CalibrationError(ValueError):
    """No noise multiplier meets the target (e.g. the prior events already exceed it)."""


def _planned_epsilon(z: float, *, sample_rate: float, rounds: int, delta: float,
                     accountant: Accountant, prior_events: Sequence[DpEvent], init_ratio: float = 0.0,
                     planned_events: Callable[[float], Sequence[DpEvent]] | None = None) -> float:
    if planned_events is not None:
        return compute_epsilon([*prior_events, *planned_events(z)], delta=delta, accountant=accountant).epsilon
    planned = [DpEvent(release_id="planned-rounds", kind="round", noise_multiplier=z,
                       sample_rate=sample_rate, count=rounds, round=1, time=0.0,
                       note="calibration only, never recorded")]
    if init_ratio > 0:
        planned.append(DpEvent(release_id="planned-init", kind="init", noise_multiplier=z * init_ratio,
                               sample_rate=1.0, round=0, time=0.0, note="calibration only, never recorded"))
    return compute_epsilon([*prior_events, *planned], delta=delta, accountant=accountant).epsilon


def calibrate_noise_multiplier(*, target_epsilon: float, delta: float, sample_rate: float,
                               rounds: int, accountant: Accountant = "rdp",
                               prior_events: Sequence[DpEvent] = (),
                               tolerance: float = 1e-3, init_ratio: float = 0.0,
                               planned_events: Callable[[float], Sequence[DpEvent]] | None = None) -> float:
    """Smallest noise multiplier z (to ``tolerance``, relative) with epsilon <= target.

    With ``init_ratio > 0`` the plan also holds one init release of every user
    (q = 1, no amplification) with noise multiplier ``init_ratio * z``: the private
    method-of-moments init calibrated jointly with the rounds. ``planned_events(z)``, when
    given, replaces the plan (rounds and init) by the events it returns for a trial z
    (e.g. the clip histograms of adaptive clipping, :mod:`fedlrs.privacy.adaptive`).

    Finds z such that ``epsilon(prior_events + rounds x SGM(q, z), delta) <=
    target_epsilon`` under ``accountant`` (see :func:`compute_epsilon`), by
    bisection on z (epsilon decreases with z): a bracket ``lo < z <= hi`` with
    ``eps(lo) > target >= eps(hi)`` is halved until ``hi - lo <= tolerance * hi``.
    The upper end ``hi`` is returned, so the result never overshoots the target:
    its epsilon was computed and is <= ``target_epsilon``. Trial points are
    interpolated in (log z, log epsilon), with a bisection safeguard.

    Examples
    --------
    >>> round(calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5,
    ...                                  sample_rate=0.05, rounds=200), 2)
    1.79
    """
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)) \
            or not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"target_epsilon == {target_epsilon!r}, must be a finite number > 0.")
    delta = validate_delta(delta)
    validate_accountant(accountant)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) \
            or not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate == {sample_rate!r}, must be in (0, 1].")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds == {rounds!r}, must be an integer >= 1.")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance == {tolerance!r}, must be in (0, 1).")
    if not (isinstance(init_ratio, (int, float)) and math.isfinite(init_ratio) and init_ratio >= 0):
        raise ValueError(f"init_ratio == {init_ratio!r}, must be a finite number >= 0 (0: no init in the plan).")
    prior = tuple(prior_events)
    if prior:
        spent = compute_epsilon(prior, delta=delta, accountant=accountant).epsilon
        if spent >= target_epsilon:
            raise CalibrationError(f"prior events already spend epsilon == {spent:.4g}, "
                                   f"must be < target_epsilon == {target_epsilon}.")

    def eps(z: float) -> float:
        return _planned_epsilon(z, sample_rate=sample_rate, rounds=rounds, delta=delta,
                                accountant=accountant, prior_events=prior, init_ratio=init_ratio,
                                planned_events=planned_events)

    lo, hi = 0.0, 1.0
    eps_hi = eps(hi)
    while eps_hi > target_epsilon:
        lo, eps_lo, hi = hi, eps_hi, 2 * hi
        if hi > MAX_NOISE_MULTIPLIER:
            raise CalibrationError(f"no noise multiplier <= {MAX_NOISE_MULTIPLIER:g} reaches "
                                   f"target_epsilon == {target_epsilon} at delta == {delta}.")
        eps_hi = eps(hi)
    if lo == 0.0:  # z = 1 already meets the target: find a lower end that misses it
        lo = hi / 2
        while (eps_lo := eps(lo)) <= target_epsilon:
            hi, eps_hi, lo = lo, eps_lo, lo / 2
            if lo < 1e-3:
                return hi
    return _shrink_bracket(eps, target=target_epsilon, lo=lo, eps_lo=eps_lo, hi=hi, eps_hi=eps_hi,
                           tolerance=tolerance)


def _shrink_bracket(eps, *, target: float, lo: float, eps_lo: float, hi: float, eps_hi: float,
                    tolerance: float) -> float:
    """Shrink ``eps(lo) > target >= eps(hi)`` until ``hi - lo <= tolerance * hi``; return ``hi``.

    Safeguarded bisection: the trial point is the root of the line through
    ``(log z, log eps)`` at both ends (epsilon is close to a power of z),
    nudged by ``tolerance / 2`` alternately above and below so that the
    bracket closes from both sides, kept inside the bracket, and replaced by
    the midpoint whenever one end has moved three times in a row.
    """
    log_target = math.log(target)
    aim_up, same_side, last_side = True, 0, None
    while hi - lo > tolerance * hi:
        width = hi - lo
        if same_side >= 3 or width <= 4 * tolerance * hi or eps_hi <= 0:
            trial = (lo + hi) / 2
        else:
            f_lo, f_hi = math.log(eps_lo) - log_target, math.log(eps_hi) - log_target
            log_root = math.log(lo) + f_lo / (f_lo - f_hi) * (math.log(hi) - math.log(lo))
            trial = math.exp(log_root) * (1 + tolerance / 2 if aim_up else 1 - tolerance / 2)
            trial = min(max(trial, lo + 0.02 * width), hi - 0.02 * width)
        eps_trial = eps(trial)
        side = "hi" if eps_trial <= target else "lo"
        if side == "hi":
            hi, eps_hi, aim_up = trial, eps_trial, False
        else:
            lo, eps_lo, aim_up = trial, eps_trial, True
        same_side = same_side + 1 if side == last_side else 1
        last_side = side
    return hi
