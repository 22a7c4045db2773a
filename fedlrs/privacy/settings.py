"""The user-level privacy knobs every private loop of fedlrs shares, validated in one place.

:class:`PrivacySettings` is a base of the run configurations (the AMHT-LRS engine's
:class:`~fedlrs.simulations.engine.EngineConfig`, the network loop's
:class:`~fedlrs.nn.federated.NetworkConfig`, DP-FedAvg's
:class:`~fedlrs.simulations.private_baselines.FedAvgConfig`); :class:`SpentEpsilon` is a
base of their results. The knobs are checked whether or not ``private`` is on, so a
configuration that would be refused once privacy is switched on is refused at once.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

from fedlrs.privacy.accountants import validate_accountant
from fedlrs.privacy.budget import PrivacyBudget
from fedlrs.privacy.ledger import Ledger


def require_number(name: str, value, rule: str, ok: Callable[[float], bool]) -> None:
    """Raise ``ValueError("<name> == <value>, <rule>.")`` unless ``value`` is a real number (not a bool) with ``ok(value)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(float(value)):
        raise ValueError(f"{name} == {value!r}, {rule}.")


def require_int(name: str, value, low: int | None = None) -> int:
    """Raise ``ValueError("<name> == <value>, must be an integer >= <low>.")`` unless ``value`` is an integer (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
        raise ValueError(f"{name} == {value!r}, must be an integer" + ("." if low is None else f" >= {low}."))
    return value


def renamed_error(error: ValueError, names: dict[str, str]) -> ValueError:
    """``error`` (``"<field> == <value>, <rule>."``, as these settings word it) with its leading field renamed by ``names``
    (e.g. to the run-config key the value came from); unchanged when it names no field of ``names``."""
    text = str(error)
    for name, key in names.items():
        if text.startswith(f"{name} =="):
            return ValueError(key + text[len(name):])
    return ValueError(text)


@dataclass(frozen=True, kw_only=True)
class PrivacySettings:
    """User-level (epsilon, delta)-DP of a run (DESIGN.md section 3).

    private: clip, noise and account every release. target_epsilon, delta: the budget
    (epsilon after the last planned release, at this delta). accountant: "rdp", "prv"
    or "pld", the one that calibrates z and checks the budget. noise_multiplier: the
    accounted z of a round, ``sigma = z * C`` for a sum of contributions clipped to C
    (0: calibrated to (target_epsilon, delta) for the planned rounds). noise_seed >= 0
    makes the noise reproducible (tests), -1 draws it from the OS.
    """

    private: bool = False
    target_epsilon: float = 2.0
    delta: float = 1e-5
    accountant: str = "rdp"
    noise_multiplier: float = 0.0
    noise_seed: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.private, bool):
            raise ValueError(f"private == {self.private!r}, must be True or False.")
        require_number("target_epsilon", self.target_epsilon, "must be a finite number > 0", lambda v: 0 < v < math.inf)
        require_number("delta", self.delta, "must be in (0, 1)", lambda v: 0 < v < 1)
        validate_accountant(self.accountant)
        require_number("noise_multiplier", self.noise_multiplier, "must be a finite number >= 0 (0: calibrate to target_epsilon)",
                       lambda v: 0 <= v < math.inf)
        require_int("noise_seed", self.noise_seed)
        if self.noise_seed < -1:
            raise ValueError(f"noise_seed == {self.noise_seed}, must be >= 0 (reproducible) or -1 (OS entropy).")

    @property
    def budget(self) -> PrivacyBudget:
        """The budget every release is checked against: ``(target_epsilon, delta)`` under ``accountant``."""
        return PrivacyBudget(epsilon=self.target_epsilon, delta=self.delta, accountant=self.accountant)


@dataclass(frozen=True, kw_only=True)
class RunSettings(PrivacySettings):
    """The settings every federated loop shares: the plan the accountant calibrates for, the seed, and the privacy knobs.

    rounds: T, the planned rounds. sample_rate: q, each user takes part in a round with
    probability q (Poisson sampling). seed: the run's generator (initial state, samples).
    The base of every loop's configuration (:class:`~fedlrs.simulations.engine.EngineConfig`,
    :class:`~fedlrs.nn.federated.NetworkConfig`, :class:`~fedlrs.recsys.model.RecsysConfig`,
    :class:`~fedlrs.simulations.private_baselines.FedAvgConfig`) and the common section of a
    Flower run's config (:mod:`fedlrs.federation_config`), so the defaults and rules are written once;
    a loop may refuse more (e.g. ``rounds == 0``).
    """

    rounds: int = 10
    sample_rate: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("rounds", self.rounds, 0)
        require_number("sample_rate", self.sample_rate, "must be in (0, 1]", lambda v: 0 < v <= 1)
        require_int("seed", self.seed)


class SpentEpsilon:
    """``epsilon()`` of a run's result: recomputed from its ledger at the run's delta.

    A subclass has a ``ledger`` (None when the run was not private) and says its delta
    through :meth:`ledger_delta`.
    """

    ledger: Ledger | None

    def ledger_delta(self) -> float:
        raise NotImplementedError

    def epsilon(self, accountant: str = "rdp") -> float | None:
        """Epsilon spent at the run's delta, recomputed from the ledger's events (None when not private)."""
        if self.ledger is None:
            return None
        return self.ledger.account(delta=self.ledger_delta(), accountant=accountant).epsilon
