"""The contribution spec: what a device sends in each phase, part by part (DESIGN.md sections 2-3).

One :class:`Part` per released sum: its name, shape, L2 clipping bound and whether it is
symmetric (then the release adds symmetric noise and SecAgg+ sends the upper triangle only).
The client clips to it (:mod:`fedlrs.client.contribution`), the server validates replies
against it (:mod:`fedlrs.protocol.validation`), the release noises for its bounds and the
wire format quantizes it (:mod:`fedlrs.protocol.wire`). Written once, here.

AMHT-LRS (``task = "linear"``):

* ``"moments"`` (private init): ``M`` (d, d), symmetric, bound ``clip-moments``;
* ``"round"`` in mode "ls": ``A`` (dr, dr), symmetric, bound ``clip-a``, and ``c`` (dr,), bound ``clip-c``;
  in mode "gd": ``G`` (d, r), bound ``clip-g``.

A network task (``task = "nn-*"``) has rounds only, with one part ``contribution`` (D,), bound ``nn-clip``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

Phase = Literal["moments", "round"]
#: the phases of a run: the private moments init, then the rounds
PHASES = ("moments", "round")


@dataclass(frozen=True)
class Part:
    """One part of a contribution: its name, shape, L2 clipping bound and symmetry."""

    name: str
    shape: tuple[int, ...]
    bound: float
    symmetric: bool = False

    @property
    def size(self) -> int:
        """Numbers sent on the wire: ``n (n + 1) / 2`` for a symmetric (n, n) part, else every entry."""
        n = self.shape[-1]
        return n * (n + 1) // 2 if self.symmetric else math.prod(self.shape)


def linear_parts(config: Any, phase: Phase, dim: int) -> list[Part]:
    """The AMHT-LRS parts of ``phase`` for dimension ``dim`` (``config``: rank, mode and the ``clip_*`` bounds).

    ``config`` is a :class:`~fedlrs.federation_config.FederationConfig` or an
    :class:`~fedlrs.simulations.engine.EngineConfig`; the bounds are finite (the configured ``clip_*``).
    """
    if phase not in PHASES:
        raise ValueError(f"phase == {phase!r}, must be one of {list(PHASES)}.")
    d, r = dim, config.rank
    if phase == "moments":
        return [Part("M", (d, d), float(config.clip_moments), True)]
    if config.mode == "ls":
        return [Part("A", (d * r, d * r), float(config.clip_a), True), Part("c", (d * r,), float(config.clip_c))]
    return [Part("G", (d, r), float(config.clip_g))]


def contribution_parts(config: Any, phase: Phase) -> list[Part]:
    """The parts of a contribution of the run ``config`` (a :class:`~fedlrs.federation_config.FederationConfig`)
    in ``phase``, with their (finite) clipping bounds.

    A network task (``task != "linear"``) has one part, ``contribution`` (D,), bounded by ``nn-clip``,
    D being the length of its method's flattened contribution.
    """
    if config.task != "linear":
        from fedlrs.nn.run_config import PART, contribution_dimension

        return [Part(PART, (contribution_dimension(config),), float(config.nn_clip))]
    return linear_parts(config, phase, config.dim)


def expected_parts(config: Any, phase: Phase) -> dict[str, tuple[tuple[int, ...], float]]:
    """``{name: (shape, L2 bound)}`` of the parts of ``phase``: the bounds a device clips to and a reply
    is checked against (infinite when the run is not private: nothing is scaled)."""
    return {p.name: (p.shape, p.bound if config.private else math.inf) for p in contribution_parts(config, phase)}
