"""The task contract: what a federated task owns, for every loop and every transport (DESIGN.md section 4).

A task is neither client nor server. It owns

* its **settings** (``task.settings``: an :class:`~fedlrs.tasks.linear_config.EngineConfig`,
  a :class:`~fedlrs.nn.federated.NetworkConfig`, ...: rounds, sample rate and the privacy settings
  that :class:`~fedlrs.privacy.release.PrivateServer` reads);
* its **phases**: ``init_phases()`` run once before round 1 over every user (q = 1, released as
  the ledger's ``"init"`` event), ``round_phases(shared)`` run in order in each round, each over its
  own Poisson sample (the phase ``"round"`` is the round's ``"round-t"`` event, the phase
  ``"clip"``, the norm histogram of adaptive clipping, the event ``"round-t-clip"``);
* the **parts** each phase releases (``parts(phase, shared)``: :class:`fedlrs.protocol.parts.Part`,
  name, shape, L2 bound, symmetric; importable from here, for a task outside ``tasks/``): the spec the
  devices clip to and the release noises for;
* its **initial shared state** (``init_shared(generator)``: public, data-independent);
* its **client step** ``client_step(shared, personal, data, phase) -> (sums, personal)``: the
  users of ``data`` (a batch with a leading user dimension; one user on a Flower node) compute
  their contributions for ``shared`` from their personal state, clip each to the parts' bounds and
  return the sums over the batch (plus the count ``"users"``) and their new personal states;
* its **server step** ``server_step(shared, phase, sums, normalizer, round_number) -> shared``:
  the new shared state from the (released) sums, the mean being ``sums / normalizer`` (the
  expected count ``q N``; 1 after a private release, which divides already).

A private release goes through :meth:`TaskBase.release`: the one release sequence of
:meth:`PrivateServer.release_parts <fedlrs.privacy.release.PrivateServer.release_parts>` (budget
check, ledger record, noise) for the phase's parts. A task may override it to weight the noise
between parts or release a phase's parts under more than one event (always through the
PrivateServer). The loop (:mod:`fedlrs.tasks.loop`) drives a task over a transport.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from fedlrs.privacy.events import DpEvent
from fedlrs.privacy.release import PrivateServer
from fedlrs.protocol.parts import Part

Tensor = torch.Tensor
#: a shared or personal state: named tensors (and, for a task's own bookkeeping, numbers such as a round's clip bound)
State = dict[str, Any]
#: named sums over a batch of users
Sums = dict[str, Tensor]
#: the count entry of every sum: the number of contributors, checked before a release and never released
USERS = "users"
#: the phase that ends a round: its release is the round's ``"round-t"`` event
ROUND = "round"


@runtime_checkable
class Task(Protocol):
    """One federated task (module docstring); implementations: :class:`fedlrs.tasks.linear.LinearTask`,
    :class:`fedlrs.tasks.fedavg.GlobalLinearTask`, :class:`fedlrs.tasks.network.NetworkTask`, and beside
    their maths :class:`fedlrs.recsys.model.RecsysTask` and :class:`fedlrs.recsys.private.PrivateLrsTask`."""

    name: str
    settings: Any

    def init_phases(self) -> tuple[str, ...]:
        """Phases run once before round 1, over every user, released as ``"init"`` (e.g. ``("moments",)``; often none)."""
        ...

    def round_phases(self, shared: State) -> tuple[str, ...]:
        """The phases of a round, in order, the last one :data:`ROUND` (e.g. ``("clip", "round")``)."""
        ...

    def parts(self, phase: str, shared: State) -> list[Part]:
        """What a user releases in ``phase`` for ``shared``: name, shape, L2 bound, symmetric."""
        ...

    def init_shared(self, generator: torch.Generator) -> State:
        """The shared state before the init phases (public: no user's data)."""
        ...

    def client_step(self, shared: State, personal: Any, data: Any, phase: str) -> tuple[Sums, Any]:
        """The summed clipped contributions of the users of ``data`` (with ``"users"``) and their new personal states."""
        ...

    def server_step(self, shared: State, phase: str, sums: Sums, normalizer: float, round_number: int) -> State:
        """The new shared state from the released ``sums`` of ``phase`` (mean: ``sums / normalizer``)."""
        ...

    def release(self, private: PrivateServer, phase: str, shared: State, sums: Sums, event: DpEvent, expected_count: float) -> Sums:
        """The noised ``sums / expected_count`` through the ledger (:meth:`TaskBase.release`)."""
        ...


class TaskBase:
    """Defaults of the contract: no init phase, one phase per round, the release of the phase's parts as they are."""

    name = "task"
    settings: Any = None

    def init_phases(self) -> tuple[str, ...]:
        return ()

    def round_phases(self, shared: State) -> tuple[str, ...]:
        return (ROUND,)

    def release(self, private: PrivateServer, phase: str, shared: State, sums: Sums, event: DpEvent, expected_count: float) -> Sums:
        """``(sum_i clip(x_i) + N(0, z^2 C_p^2)) / expected_count`` per part ``p`` of ``phase``: budget, ledger, noise
        (:meth:`PrivateServer.release_parts <fedlrs.privacy.release.PrivateServer.release_parts>`, the one release sequence)."""
        return private.release_parts(sums, event, self.parts(phase, shared), expected_count)

    def parts(self, phase: str, shared: State) -> list[Part]:
        raise NotImplementedError


def zero_sums(parts: list[Part], *, dtype: torch.dtype, device) -> Sums:
    """The sums of no user: zeros of every part's shape, and ``"users": 0`` (a round nobody was sampled into is still released)."""
    return {**{p.name: torch.zeros(p.shape, dtype=dtype, device=device) for p in parts}, USERS: torch.tensor(0.0, dtype=torch.float64)}


def count(num_users: int) -> Tensor:
    """The ``"users"`` entry of a sum over ``num_users`` users."""
    return torch.tensor(float(num_users), dtype=torch.float64)
