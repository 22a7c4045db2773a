"""The contribution spec: what a device sends in each phase, part by part (DESIGN.md sections 2-3).

One :class:`Part` per released sum: its name, shape, L2 clipping bound and whether it is
symmetric (then the release adds symmetric noise and SecAgg+ sends the upper triangle only).
The client clips to it (:mod:`fedlrs.client.contribution`), the server validates replies
against it (:mod:`fedlrs.protocol.validation`), the release noises for its bounds and the
wire format quantizes it (:mod:`fedlrs.protocol.wire`). Written once, here.

AMHT-LRS (``task = "linear"``):

* ``"moments"`` (private init): ``M`` (d, d), symmetric, bound ``clip-moments`` (``clip-quantile > 0``:
  each user sends ``M_i / ||M_i||_F``, bound 1);
* ``"clip"`` (the unit-free "gd" step, ``clip-quantile > 0``): ``H`` (9,), the one-hot bin (on the grid around the previous bound) of the
  norm of the user's unit-free contribution (:mod:`fedlrs.privacy.adaptive`), bound 1;
* ``"round"`` in mode "ls": ``A`` (dr, dr), symmetric, bound ``clip-a``, and ``c`` (dr,), bound ``clip-c``
  (private with ``clip-quantile > 0``: unit-free, ``A_i / ||A_i||_F`` bound 1 and ``c_i / ||A_i||_F`` bound 1);
  in mode "gd": ``G`` (d, r), bound ``clip-g``; with the unit-free step ``G`` (d, r) bounded by the
  round's bound (the clip phase's quantile) and ``P`` (r, r), symmetric, bound 1.

A network task (``task = "nn-*"``) has rounds only, with one part ``contribution`` (D,), bound ``nn-clip``;
with adaptive clipping (private, ``clip-quantile > 0``) the bound is the round's ``C_t`` and a second part
``H`` (K,), bound 1, is the one-hot bin of the norm of the unclipped contribution on the grid around ``C_t``
(:func:`fedlrs.nn.federated.round_parts`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from fedlrs.privacy.adaptive import CLIP_WINDOW
from fedlrs.privacy.clipping import LS_UNIT_FREE_C_BOUND

Phase = Literal["moments", "clip", "round"]
#: the phases of a run: the private moments init, then the rounds (each preceded by a clip phase in the unit-free step)
PHASES = ("moments", "clip", "round")


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


def _engine(config: Any) -> Any:
    """The run's :class:`~fedlrs.tasks.linear_config.EngineConfig` (``config`` itself when it is one)."""
    return config.engine_config() if hasattr(config, "engine_config") else config


def linear_parts(config: Any, phase: Phase, dim: int, bound: float | None = None) -> list[Part]:
    """The AMHT-LRS parts of ``phase`` for dimension ``dim`` (``config``: rank, mode and the ``clip_*`` bounds).

    ``config`` is a :class:`~fedlrs.federation_config.FederationConfig` or an
    :class:`~fedlrs.tasks.linear_config.EngineConfig`; the bounds are finite. ``bound`` is the
    round's clip bound of the unit-free step (required there, ignored elsewhere).
    """
    if phase not in PHASES:
        raise ValueError(f"phase == {phase!r}, must be one of {list(PHASES)}.")
    engine = _engine(config)
    d, r = dim, config.rank
    if phase == "clip":
        return [Part("H", (2 * CLIP_WINDOW + 1,), 1.0)]
    if phase == "moments":
        return [Part("M", (d, d), 1.0 if engine.unit_free_init else float(config.clip_moments), True)]
    if engine.unit_free:
        if bound is None:
            raise ValueError("a round of the unit-free step has no parts without the round's clip bound (bound == None).")
        return [Part("G", (d, r), float(bound)), Part("P", (r, r), 1.0, True)]
    if config.mode == "ls" and engine.unit_free_ls:
        return [Part("A", (d * r, d * r), 1.0, True), Part("c", (d * r,), LS_UNIT_FREE_C_BOUND)]
    if config.mode == "ls":
        return [Part("A", (d * r, d * r), float(config.clip_a), True), Part("c", (d * r,), float(config.clip_c))]
    return [Part("G", (d, r), float(config.clip_g))]


def contribution_parts(config: Any, phase: Phase, bound: float | None = None) -> list[Part]:
    """The parts of a contribution of the run ``config`` (a :class:`~fedlrs.federation_config.FederationConfig`)
    in ``phase``, with their (finite) clipping bounds; ``bound``: the round's bound of the unit-free step.

    A network task (``task != "linear"``): :func:`fedlrs.nn.federated.round_parts` for D, the length of its
    method's flattened contribution, and the round's bound (``nn-clip`` when ``bound`` is None).
    """
    if config.task != "linear":
        from fedlrs.nn.federated import round_parts
        from fedlrs.nn.run_config import contribution_dimension, network_config

        parts = round_parts(network_config(config), contribution_dimension(config), float(config.nn_clip if bound is None else bound))
        return [Part(name, shape, part_bound) for name, (shape, part_bound) in parts.items()]
    return linear_parts(config, phase, config.dim, bound)


def expected_parts(config: Any, phase: Phase, bound: float | None = None) -> dict[str, tuple[tuple[int, ...], float]]:
    """``{name: (shape, L2 bound)}`` of the parts of ``phase``: the bounds a device clips to and a reply
    is checked against; ``bound`` is the round's clip bound of the unit-free step.

    Outside private mode the bounds of the "moments" and the "ls" / raw "gd" parts are infinite
    (nothing is scaled); those of the clip phase and of the unit-free step stay (they are the step's own).
    """
    parts = contribution_parts(config, phase, bound)
    scaled = config.private or phase == "clip" or (phase == "round" and _engine(config).unit_free and config.task == "linear")
    return {p.name: (p.shape, p.bound if scaled else math.inf) for p in parts}
