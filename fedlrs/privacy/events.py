"""Frozen privacy events: one per release (init, round or metric).

An event is plain data, in the spirit of dp-accounting's ``DpEvent``: it says
which mechanism was run and with which parameters, never how much privacy it
cost. Epsilon is always recomputed from a sequence of events
(:mod:`fedlrs.privacy.accountants`).

Every event here is a Poisson-sampled Gaussian mechanism under the
add/remove-one-user neighbouring relation: each registered user takes part
independently with probability ``sample_rate`` (q), the user's whole
contribution is clipped to L2 norm C, and the sum gets N(0, (z C)^2 I) noise,
z = ``noise_multiplier``. ``count`` identical releases may share one event
(self-composition, as ``SelfComposedDpEvent``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

EventKind = Literal["init", "round", "metric", "clip"]

EVENT_KINDS: frozenset[str] = frozenset({"init", "round", "metric", "clip"})
MECHANISMS: frozenset[str] = frozenset({"poisson_gaussian"})


class InvalidEventError(ValueError):
    """An event, or its serialized form, breaks one of the rules of :class:`DpEvent`."""


def _require_finite_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEventError(f"{name} == {value!r}, must be a real number.")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidEventError(f"{name} == {value!r}, must be finite.")
    return value


def _require_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEventError(f"{name} == {value!r}, must be an integer.")
    if value < minimum:
        raise InvalidEventError(f"{name} == {value!r}, must be >= {minimum}.")
    return value


def _require_str(name: str, value: Any, *, allowed: frozenset[str] | None = None,
                 nonempty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidEventError(f"{name} == {value!r}, must be a string.")
    if nonempty and not value.strip():
        raise InvalidEventError(f"{name} == {value!r}, must be a non-empty string.")
    if allowed is not None and value not in allowed:
        raise InvalidEventError(f"{name} == {value!r}, must be one of {sorted(allowed)}.")
    return value


@dataclass(frozen=True, kw_only=True)
class DpEvent:
    """One privacy-relevant release, recorded before it happens.

    Parameters
    ----------
    release_id : str
        Unique name of the release (e.g. ``"round-17"``); a ledger refuses a
        second event with the same id, so a replayed release is never counted twice.
    kind : {"init", "round", "metric", "clip"}
        What was released: the private initialisation, a training round, a
        privatized metric, or the noised histogram of contribution norms that
        sets a clip bound (adaptive clipping, :mod:`fedlrs.privacy.adaptive`).
    noise_multiplier : float
        The *accounted* noise multiplier z > 0: noise std divided by the L2
        sensitivity of the whole release (for P parts clipped separately, see
        :func:`accounted_noise_multiplier`).
    sample_rate : float
        Poisson sampling rate q in (0, 1]; q = 1 means every user takes part.
    count : int
        Number of identical releases this event stands for (>= 1).
    round : int
        Training round the release belongs to (>= 0; 0 for the initialisation).
    time : float
        Unix time at which the event was recorded (>= 0).
    mechanism : str
        Only ``"poisson_gaussian"`` is known to the accountants.
    note : str
        Free text for people.

    Examples
    --------
    >>> e = DpEvent(release_id="round-1", kind="round", noise_multiplier=1.0,
    ...             sample_rate=0.05, round=1, time=0.0)
    >>> DpEvent.from_dict(e.to_dict()) == e
    True
    """

    release_id: str
    kind: EventKind
    noise_multiplier: float
    sample_rate: float
    count: int = 1
    round: int
    time: float
    mechanism: str = "poisson_gaussian"
    note: str = ""

    def __post_init__(self) -> None:
        _require_str("release_id", self.release_id, nonempty=True)
        if "\n" in self.release_id or "\r" in self.release_id:
            raise InvalidEventError(f"release_id == {self.release_id!r}, must not contain a newline.")
        _require_str("kind", self.kind, allowed=EVENT_KINDS)
        z = _require_finite_float("noise_multiplier", self.noise_multiplier)
        if z <= 0:
            raise InvalidEventError(f"noise_multiplier == {z!r}, must be > 0.")
        q = _require_finite_float("sample_rate", self.sample_rate)
        if not 0 < q <= 1:
            raise InvalidEventError(f"sample_rate == {q!r}, must be in (0, 1].")
        _require_int("count", self.count, minimum=1)
        _require_int("round", self.round, minimum=0)
        t = _require_finite_float("time", self.time)
        if t < 0:
            raise InvalidEventError(f"time == {t!r}, must be >= 0.")
        _require_str("mechanism", self.mechanism, allowed=MECHANISMS)
        _require_str("note", self.note)
        # normalise ints given for float fields so that equality and JSON are stable
        object.__setattr__(self, "noise_multiplier", z)
        object.__setattr__(self, "sample_rate", q)
        object.__setattr__(self, "time", t)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict (``from_dict(to_dict(e)) == e``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Any) -> DpEvent:
        """Rebuild an event, refusing unknown or missing keys with a reason naming the key."""
        if not isinstance(data, dict):
            raise InvalidEventError(f"event == {data!r}, must be a JSON object.")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InvalidEventError(f"unknown event key {unknown[0]!r}; known keys are {names}.")
        missing = [n for n in names if n not in data]
        if missing:
            raise InvalidEventError(f"missing event key {missing[0]!r}.")
        return cls(**data)


def _require_parts(parts: Any) -> int:
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts == {parts!r}, must be an integer >= 1.")
    return parts


def _require_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} == {value!r}, must be a finite number > 0.")
    return float(value)


def accounted_noise_multiplier(*, noise_std_multiplier: float, parts: int) -> float:
    """Noise multiplier of a release of ``parts`` separately clipped parts.

    Part p is clipped to its own bound C_p and gets noise std ``sigma * C_p``.
    Scaling part p by 1/C_p gives every part sensitivity 1, so the released
    vector has joint L2 sensitivity sqrt(P) and per-coordinate noise std sigma:
    the Gaussian mechanism it is equivalent to has z = sigma / sqrt(P)
    (DESIGN 3.2; sqrt(2) for the two "ls" parts A and c).
    """
    return _require_positive("noise_std_multiplier", noise_std_multiplier) / math.sqrt(
        _require_parts(parts))


def per_part_noise_multiplier(*, accounted: float, parts: int) -> float:
    """Inverse of :func:`accounted_noise_multiplier`: sigma = z * sqrt(P)."""
    return _require_positive("accounted", accounted) * math.sqrt(_require_parts(parts))
