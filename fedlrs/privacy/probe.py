"""Empirical privacy audit: a lower bound on epsilon from canary users, beside the accounted epsilon.

One-run audit of Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1)
training run" (NeurIPS 2023), Section 3 and Algorithm 1 (its (epsilon, delta)
p-value, Theorem 3.3 / Appendix).

The harness runs the release path of a private "gd" round as the server does,
with the same pieces (:func:`fedlrs.privacy.poisson_sample`, :func:`clip`,
:class:`GaussianSumRelease` recording every round in a :class:`Ledger`, the
noise multiplier from :func:`calibrate_noise_multiplier`), on a federation of
``background`` ordinary users plus ``canaries`` canary users:

* canary ``j`` owns coordinate ``j`` of the flattened ``G`` (d x r) and, when it
  takes part in a round, contributes ``C e_j``, a contribution of norm exactly
  the clipping bound C (the worst case the noise is calibrated for);
* the ordinary users contribute random directions clipped to C on the other
  coordinates;
* each canary is **included in the federation independently with probability
  1/2** (the audit's secret coin ``S_j``); included canaries are then Poisson
  sampled each round like everybody else.

The observer sees every released, noised sum ``(sum + N(0, (z C)^2)) / (q N)``
(more than ``U``, which is computed from them: a valid and stronger observer),
scores canary ``j`` by the sum over rounds of coordinate ``j``, guesses the
``k`` top-scored canaries "in" and the ``k`` bottom-scored "out", and counts
the correct guesses ``v`` out of ``r = 2k``. If the mechanism is
(epsilon, delta)-DP, ``P[v correct] <= p_value(epsilon)`` below; the largest
epsilon rejected at confidence ``1 - alpha`` is the lower bound. Several
``k`` are tried, Bonferroni-corrected (each at ``alpha / len(k)``), so the
reported maximum is still a valid lower bound at ``1 - alpha``.

With ``adaptive`` the bound C of each round is learned as the server does with adaptive
clipping (:mod:`fedlrs.privacy.adaptive`): every round first releases the noised histogram of
the contributions' norms of its own Poisson sample (a ``"clip"`` event; the canaries' norm is
``4 clip``, the others' spread over two octaves around ``clip``), the bound is its median, the
canaries contribute ``C e_j`` clipped to it, and z is calibrated with the clip events included.

A lower bound above the accounted epsilon means a bug in clipping, noise or
accounting. A lower bound below it proves nothing about the guarantee; this
one-run audit is known to be loose for Gaussian mechanisms at small epsilon.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from fedlrs.privacy.adaptive import calibrate_adaptive, clip_grid, clip_noise_multiplier, norm_bins, quantile_bound
from fedlrs.privacy.calibration import calibrate_noise_multiplier
from fedlrs.privacy.clipping import clip
from fedlrs.privacy.events import DpEvent
from fedlrs.privacy.ledger import Ledger
from fedlrs.privacy.mechanism import GaussianSumRelease
from fedlrs.privacy.noise import GaussianNoise
from fedlrs.privacy.sampling import poisson_sample

#: noise multiplier of the test-only "noise off" setting (GaussianSumRelease needs z > 0)
NOISE_OFF = 1e-12
#: fractions of the canaries guessed on each side ("in" and "out")
GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Upper bound on ``P[>= correct right out of guesses]`` for an (epsilon, delta)-DP mechanism.

    Steinke, Nasr & Jagielski 2023, Theorem 3.3 (Algorithm in the appendix):
    with ``p = e^eps / (1 + e^eps)``, ``beta = P[Binomial(r, p) >= v]`` and
    ``alpha = max_{1 <= i <= v} P[v - i <= Binomial(r, p) < v] / i``, the p-value is
    ``min(1, beta + 2 m delta alpha)`` (m canaries, r guesses, v correct).
    """
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(f"correct == {correct}, guesses == {guesses}, canaries == {canaries}; "
                         f"must be 0 <= correct <= guesses <= canaries.")
    p = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(correct - 1, guesses, p))
    alpha = 0.0
    if correct > 0:
        i = np.arange(1, correct + 1)
        alpha = float(np.max(np.cumsum(stats.binom.pmf(correct - i, guesses, p)) / i))
    return min(1.0, beta + alpha * delta * 2 * canaries)


def epsilon_lower_bound(*, canaries: int, guesses: int, correct: int, delta: float,
                        confidence: float = 0.95) -> float:
    """Largest epsilon whose :func:`p_value` is below ``1 - confidence`` (0 when none is), by bisection."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence == {confidence!r}, must be in (0, 1).")
    level = 1 - confidence

    def rejected(eps: float) -> bool:
        return p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta) < level

    if guesses == 0 or not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo


@dataclass(frozen=True)
class ProbeConfig:
    """One audit. ``target_epsilon=None`` with ``noise_off=True`` is the test-only run without noise."""

    target_epsilon: float | None = 4.0
    delta: float = 1e-5
    canaries: int = 5000
    background: int = 200
    rank: int = 2
    rounds: int = 20
    sample_rate: float = 0.5
    clip: float = 1.0
    confidence: float = 0.95
    noise_off: bool = False
    seed: int = 0
    accountant: str = "rdp"
    adaptive: bool = False

    def __post_init__(self) -> None:
        if self.noise_off == (self.target_epsilon is not None):
            raise ValueError(f"target_epsilon == {self.target_epsilon!r} with noise_off == {self.noise_off}; "
                             f"give exactly one of a target epsilon or noise_off.")
        for name in ("canaries", "background", "rank", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} == {getattr(self, name)}, must be >= 1.")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate == {self.sample_rate}, must be in (0, 1].")


@dataclass(frozen=True)
class ProbeResult:
    """What one audit found: the accounted epsilon (inf without noise) and the empirical lower bound."""

    target_epsilon: float | None
    accounted_epsilon: float
    lower_bound: float
    noise_multiplier: float
    canaries_in: int
    guesses: int
    correct: int
    config: dict

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=16)
def _calibrated(target_epsilon: float, delta: float, sample_rate: float, rounds: int, accountant: str) -> float:
    return calibrate_noise_multiplier(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate,
                                      rounds=rounds, accountant=accountant)


def run_probe(config: ProbeConfig) -> ProbeResult:
    """Plant the canaries, run ``rounds`` private releases, audit them (see the module docstring)."""
    c = config
    rng = np.random.default_rng(c.seed)
    generator = torch.Generator().manual_seed(c.seed)
    dim = math.ceil((c.canaries + c.background) / c.rank)  # canary j owns flat coordinate j
    size = dim * c.rank
    included = rng.random(c.canaries) < 0.5  # the secret coins S_j
    users = int(included.sum()) + c.background
    expected = c.sample_rate * (c.canaries + c.background)  # q N, N = registered users (as the server knows it)
    if c.noise_off:
        z = NOISE_OFF
    elif c.adaptive:
        z = calibrate_adaptive(target_epsilon=c.target_epsilon, delta=c.delta, rounds=c.rounds, sample_rate=c.sample_rate, expected_count=expected,
                               init_ratio=0.0, accountant=c.accountant)
    else:
        z = _calibrated(c.target_epsilon, c.delta, c.sample_rate, c.rounds, c.accountant)
    ledger = Ledger()
    noise = GaussianNoise(secure=False, seed=c.seed)
    edges = clip_grid()
    canary_ids = np.flatnonzero(included)
    background = torch.from_numpy(rng.standard_normal((c.background, size - c.canaries)))
    background = clip(background * (2 * c.clip / math.sqrt(size - c.canaries)), bound=c.clip)[0]
    scores = np.zeros(c.canaries)
    spread = torch.from_numpy(2.0 ** rng.uniform(-1, 1, c.background))  # the others' norms, relative to clip
    for round_number in range(1, c.rounds + 1):
        bound = c.clip
        if c.adaptive:
            counted = poisson_sample(users, sample_rate=c.sample_rate, generator=generator).numpy()
            norms = torch.cat([torch.full((int(counted[:len(canary_ids)].sum()),), 4 * c.clip, dtype=torch.float64),
                               c.clip * spread[torch.from_numpy(counted[len(canary_ids):])]])
            clip_event = DpEvent(release_id=f"round-{round_number}-clip", kind="clip", noise_multiplier=clip_noise_multiplier(z, expected),
                                 sample_rate=c.sample_rate, round=round_number, time=0.0, note="privacy probe")
            histogram = GaussianSumRelease(noise_multiplier=clip_event.noise_multiplier, bounds={"H": 1.0}, expected_count=expected, noise=noise)
            fractions = histogram.release({"H": norm_bins(norms, edges).sum(dim=0)}, ledger=ledger, event=clip_event)["H"]
            bound = quantile_bound(fractions, edges, 0.5)
        release = GaussianSumRelease(noise_multiplier=z, bounds={"G": bound}, expected_count=expected, noise=noise)
        taking_part = poisson_sample(users, sample_rate=c.sample_rate, generator=generator).numpy()
        total = torch.zeros(size, dtype=torch.float64)
        total[torch.from_numpy(canary_ids[taking_part[:len(canary_ids)]])] += bound
        total[c.canaries:] += background[torch.from_numpy(taking_part[len(canary_ids):])].sum(dim=0) * (bound / c.clip)
        event = DpEvent(release_id=f"round-{round_number}", kind="round", noise_multiplier=z,
                        sample_rate=c.sample_rate, round=round_number, time=0.0, note="privacy probe")
        released = release.release({"G": total.reshape(dim, c.rank)}, ledger=ledger, event=event)["G"]
        scores += released.reshape(-1)[:c.canaries].numpy() * expected / bound  # the observer knows q N and C
    accounted = math.inf if c.noise_off else ledger.epsilon(delta=c.delta, accountant=c.accountant)
    order = np.argsort(-scores, kind="stable")  # best "in" first
    best = (0.0, 0, 0)
    level = 1 - (1 - c.confidence) / len(GUESS_FRACTIONS)  # Bonferroni over the guess counts
    for fraction in GUESS_FRACTIONS:
        k = max(1, int(fraction * c.canaries))
        guessed_in, guessed_out = order[:k], order[-k:]
        correct = int(included[guessed_in].sum() + (~included[guessed_out]).sum())
        bound = epsilon_lower_bound(canaries=c.canaries, guesses=2 * k, correct=correct, delta=c.delta,
                                    confidence=level)
        if bound > best[0] or best[1] == 0:
            best = (bound, 2 * k, correct)
    return ProbeResult(c.target_epsilon, accounted, best[0], z, int(included.sum()), best[1], best[2], asdict(c))


def probe_table(results: list[ProbeResult]) -> str:
    """A Markdown table: target and accounted epsilon beside the empirical lower bound."""
    first = results[0].config
    lines = [f"Empirical privacy audit (`fedlrs privacy probe`): {first['canaries']} canaries (each included with "
             f"probability 1/2), {first['background']} other users, {first['rounds']} rounds at q = "
             f"{first['sample_rate']}, delta = {first['delta']:g}, lower bound at {first['confidence']:.0%} "
             f"confidence (Steinke, Nasr & Jagielski 2023)"
             + ("; adaptive clipping: each round's bound from a noised norm histogram, accounted." if first.get("adaptive") else "."),
             "",
             "| target epsilon | noise multiplier | accounted epsilon | empirical lower bound | correct / guesses | lower bound <= accounted |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        target = "noise off (test only)" if r.target_epsilon is None else f"{r.target_epsilon:g}"
        z = "0" if r.target_epsilon is None else f"{r.noise_multiplier:.4g}"
        accounted = "inf" if math.isinf(r.accounted_epsilon) else f"{r.accounted_epsilon:.3f}"
        lines.append(f"| {target} | {z} | {accounted} | {r.lower_bound:.3f} | {r.correct} / {r.guesses} | "
                     f"{'yes' if r.lower_bound <= r.accounted_epsilon else 'NO'} |")
    return "\n".join(lines) + "\n"


def write_probe_table(results: list[ProbeResult], out_dir: str | Path) -> Path:
    """``table.md`` and ``table.json`` in ``out_dir``; returns the Markdown path."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps([r.to_dict() for r in results], indent=2, default=float))
    path = out / "table.md"
    path.write_text(probe_table(results))
    return path
