"""The server's private side, shared by every loop: events, calibration, the release, the report.

One release sequence (DESIGN.md section 3): :meth:`GaussianSumRelease.release
<fedlrs.privacy.mechanism.GaussianSumRelease.release>` checks the budget, records the event in
the ledger (fsynced), and only then noises and normalises the sums. :class:`PrivateServer`
names the events, calibrates z and hands its sums to that sequence; the engine, the network
loop, both Flower billboards (also through SecAgg+) and the recommender (in process and on
Flower) release through it, with the parts of the contribution spec (:mod:`fedlrs.protocol.parts`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import torch

from fedlrs.privacy.adaptive import calibrate_adaptive, clip_noise_multiplier
from fedlrs.privacy.calibration import calibrate_noise_multiplier
from fedlrs.privacy.events import DpEvent
from fedlrs.privacy.ledger import Ledger
from fedlrs.privacy.mechanism import GaussianSumRelease
from fedlrs.privacy.noise import GaussianNoise
from fedlrs.privacy.report import write_privacy_report

Tensor = torch.Tensor


class PrivateServer:
    """The server's private side, shared by the engine, the network loop and the Flower billboards: events, calibration, release.

    ``config``: an :class:`~fedlrs.tasks.linear_config.EngineConfig`, a
    :class:`~fedlrs.nn.federated.NetworkConfig` or a DP-FedAvg config (its privacy settings, rounds, sample rate,
    and ``clip_releases``: whether each round's clip histogram is a release of its own, planned in the calibration).

    Events: ``"init"`` (the moments init, all users, q = 1), ``"round-t"`` (Poisson
    rate q) and, with adaptive clipping, ``"round-t-clip"`` (the noised norm histogram), each recorded in the ledger before its noised sum is used
    (:class:`fedlrs.privacy.GaussianSumRelease`). ``retry_ids`` (the billboard, which
    resumes on a persistent ledger): a release id already in the ledger becomes
    ``"<id>-retry-k"`` (a crash-replayed round, accounted again, conservatively); the
    engine, on a fresh ledger, never needs it. ``init_ratio`` (rho): the init's z is ``rho z`` when
    calibrated jointly with the rounds' z (:meth:`plan_joint`; 1 for the moments init, private LRS's
    bias release sets its share of the budget with it). ``write_report`` writes the report that
    ``fedlrs privacy audit`` checks.
    """

    def __init__(self, config, ledger: Ledger, *, retry_ids: bool = False, init_ratio: float = 1.0):
        if isinstance(init_ratio, bool) or not isinstance(init_ratio, (int, float)) or not 0 < init_ratio < float("inf"):
            raise ValueError(f"init_ratio == {init_ratio!r}, must be a finite number > 0.")
        self.config, self.ledger, self.retry_ids, self.init_ratio = config, ledger, retry_ids, init_ratio
        seed = config.noise_seed
        self.noise = GaussianNoise(secure=seed < 0, seed=None if seed < 0 else seed)
        self.budget = config.budget
        self.noise_multiplier: float | None = None
        self.expected_count = 0.0

    def release_id(self, base: str) -> str:
        """``base``, or with ``retry_ids`` the first ``base-retry-k`` not yet in the ledger."""
        if not self.retry_ids or base not in self.ledger:
            return base
        k = 1
        while f"{base}-retry-{k}" in self.ledger:
            k += 1
        return f"{base}-retry-{k}"

    def event(self, kind: str, round_number: int) -> DpEvent:
        c = self.config
        if kind == "init":
            return DpEvent(release_id=self.release_id("init"), kind="init", noise_multiplier=self.init_noise_multiplier, sample_rate=1.0, round=0, time=time.time())
        if kind == "clip":
            z = clip_noise_multiplier(self.noise_multiplier, self.expected_count)
            return DpEvent(release_id=self.release_id(f"round-{round_number}-clip"), kind="clip", noise_multiplier=z, sample_rate=c.sample_rate, round=round_number, time=time.time(),
                           note="noised histogram of the contributions' norms (adaptive clipping)")
        return DpEvent(release_id=self.release_id(f"round-{round_number}"), kind="round", noise_multiplier=self.noise_multiplier, sample_rate=c.sample_rate, round=round_number, time=time.time())

    def release(self, sums: dict[str, Tensor], event: DpEvent, bounds: dict[str, float], expected_count: float, symmetric=frozenset(), noise_weights=None) -> dict[str, Tensor]:
        """Budget check, ledger record (flushed), then the noised sums divided by the expected count."""
        mechanism = GaussianSumRelease(noise_multiplier=event.noise_multiplier, bounds=bounds, expected_count=expected_count, noise=self.noise, symmetric_parts=symmetric,
                                       noise_weights=noise_weights)
        return mechanism.release(sums, ledger=self.ledger, event=event, budget=self.budget)

    def release_parts(self, sums: dict[str, Tensor], event: DpEvent, parts: Iterable, expected_count: float, noise_weights=None) -> dict[str, Tensor]:
        """:meth:`release` for the parts of a contribution spec (:class:`fedlrs.protocol.parts.Part`: name, bound, symmetric)."""
        parts = list(parts)
        return self.release(sums, event, {p.name: p.bound for p in parts}, expected_count,
                            frozenset(p.name for p in parts if p.symmetric), noise_weights)

    @property
    def init_noise_multiplier(self) -> float:
        """The init's z: configured, or (``init_noise_multiplier == 0``) ``init_ratio`` times the round z of the joint calibration."""
        return self.config.init_noise_multiplier or self.init_ratio * self.plan_joint()

    def plan_joint(self) -> float:
        """The round z of a plan of one init (q = 1, z ``init_ratio z``) and every round, calibrated together to the target."""
        if self.noise_multiplier is None:
            self.noise_multiplier = self.config.noise_multiplier or self._calibrated(init_ratio=self.init_ratio, prior=())
        return self.noise_multiplier

    def _calibrated(self, *, init_ratio: float, prior) -> float:
        """z of the rounds for the planned releases after ``prior`` (with separate clip releases, their histograms too)."""
        c = self.config
        if c.clip_releases:
            return calibrate_adaptive(target_epsilon=c.target_epsilon, delta=c.delta, rounds=c.rounds, sample_rate=c.sample_rate, expected_count=self.expected_count,
                                      init_ratio=init_ratio, accountant=c.accountant, prior_events=prior)
        return calibrate_noise_multiplier(target_epsilon=c.target_epsilon, delta=c.delta, sample_rate=c.sample_rate, rounds=c.rounds, accountant=c.accountant,
                                          init_ratio=init_ratio, prior_events=prior)

    def calibrate(self) -> float | None:
        """The round noise multiplier: the configured one, or calibrated after the events already spent."""
        c = self.config
        if self.noise_multiplier is not None or c.rounds == 0:
            return self.noise_multiplier
        if c.noise_multiplier > 0:
            self.noise_multiplier = c.noise_multiplier
        else:
            self.noise_multiplier = self._calibrated(init_ratio=0.0, prior=self.ledger.events)
        return self.noise_multiplier

    def write_report(self, out_dir: str | Path, config: dict) -> dict:
        """``privacy_report.json/.md`` and ``epsilon.png`` (:func:`fedlrs.privacy.write_privacy_report`) for this ledger.

        The plan is ``rounds`` rounds at the round z; the budget is the target. ``config`` is stored as is.
        """
        c = self.config
        return write_privacy_report(self.ledger, out_dir=out_dir, delta=c.delta, config=config, budget=self.budget, planned_rounds=c.rounds, calibrated_noise_multiplier=self.noise_multiplier)
