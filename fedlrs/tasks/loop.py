"""The one round loop: sample, check the budget, collect, release through the ledger, server step, record (DESIGN.md section 4).

:func:`run_task` drives any :class:`~fedlrs.tasks.base.Task` over a transport:

    shared <- task.init_shared(generator)
    for phase in task.init_phases():                                   (every user, the "init" event)
        shared <- step(phase, all users)
    record(0, shared)
    for t in 1..T:
        budget.check(ledger, every phase's event) -- refused: stop ("budget: ...")
        for phase in task.round_phases(shared):  (e.g. "clip", then "round")
            S    ~ Poisson(q) over the N users                          (privacy.sampling, the run's generator)
            s    = transport.collect(phase, shared, S)                  (clipped sums, counting |S| users)
            s    = task.release(private, phase, shared, s, event)       (budget -> ledger -> noise, / q N)
            shared <- task.server_step(shared, phase, s, normalizer)    (normalizer q N; 1 when released)
        record(t, shared)

A **transport** has ``num_users`` and ``collect(phase, shared, index, round_number) -> sums`` (the
users at ``index``, sorted, None for all) and may have ``start_round(t)`` (called before round t's
budget check: a Flower transport refreshes its nodes, so ``num_users`` may change between rounds) and
``release(...)`` (a release of its own, e.g. SecAgg+'s, through the same PrivateServer; None: the task's): :class:`InProcessTransport` (every user a slice of one batch,
personal states kept beside the data; the network methods, DP-FedAvg), the engine's chunked
federations (:class:`fedlrs.simulations.chunks.Federation`: in memory, Parquet, Ray). The Flower
Grid (the billboards) is the other kind of transport: one message per sampled node, the sums
added (or opened by SecAgg+) on the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fedlrs.privacy.budget import BudgetExceededError
from fedlrs.privacy.release import PrivateServer
from fedlrs.privacy.sampling import sample_users
from fedlrs.tasks.base import ROUND, USERS, State, Sums, Task, zero_sums

Tensor = torch.Tensor


class Transport(Protocol):
    """Where the users are: ``collect`` asks the users at ``index`` (all when None) for their clipped sums of ``phase``."""

    num_users: int

    def collect(self, phase: str, shared: State, index: Tensor | None, round_number: int) -> Sums:
        ...


@dataclass
class LoopResult:
    """The final shared state, the last round completed and why the loop stopped ("rounds done" or "budget: ...")."""

    shared: State
    completed: int
    stopped: str = "rounds done"


def check_contributors(sums: Sums, expected: int) -> None:
    """Refuse sums that do not count every contributor (a lost partial sum); nothing is released from them."""
    counted = int(sums[USERS]) if USERS in sums else -1
    if counted != expected:
        raise RuntimeError(f"the sums count {counted} contributors, the step has {expected}: a partial sum is missing; nothing was released.")


def step(task: Task, transport: Transport, phase: str, shared: State, index: Tensor | None, *, private: PrivateServer | None,
         round_number: int, normalizer: float) -> State:
    """One phase: collect the clipped sums of the users at ``index``, release them (private), the server step.

    Only the phase's parts are released (any other entry of the sums, such as ``"users"``, is a
    count, checked against the sample). Privately the event is ``"init"`` (round 0),
    ``"round-t"`` (phase :data:`~fedlrs.tasks.base.ROUND`) or ``"round-t-<phase>"``.
    """
    sums = transport.collect(phase, shared, index, round_number)
    check_contributors(sums, transport.num_users if index is None else len(index))
    sums = {p.name: sums[p.name] for p in task.parts(phase, shared)}
    if private is not None:
        event = phase_event(private, phase, round_number)
        own = getattr(transport, "release", None)
        released = None if own is None else own(private, phase, shared, sums, event, normalizer)
        sums, normalizer = (task.release(private, phase, shared, sums, event, normalizer) if released is None else released), 1.0
    return task.server_step(shared, phase, sums, normalizer, round_number)


def phase_event(private: PrivateServer, phase: str, round_number: int):
    """The ledger event of ``phase`` in round ``round_number`` (:meth:`PrivateServer.event <fedlrs.privacy.release.PrivateServer.event>`):
    ``"init"`` in round 0, ``"round-t-clip"`` for the phase ``"clip"`` (its own noise multiplier), ``"round-t"`` for :data:`ROUND`."""
    kind = "init" if round_number == 0 else phase
    if kind not in ("init", "clip", ROUND):
        raise ValueError(f"phase == {phase!r} has no ledger event: a round's phases are 'clip' and {ROUND!r}.")
    return private.event(kind, round_number)


def check_plan(task: Task, private: PrivateServer, num_users: int) -> None:
    """The private steps of :func:`run_task` before any data is read, on ``private``'s ledger (give it a throwaway one).

    As the loop: the init phases' ``"init"`` event through the budget and into the ledger (an
    init over budget raises :class:`~fedlrs.privacy.budget.BudgetExceededError` here as there),
    the calibration of the round z for the expected cohort ``q N``, then round 1's events through
    the accountant (a z too small to account raises here; a round over budget does not: the loop
    stops before it). An impossible plan thus fails before a run touches any file.
    """
    private.expected_count = task.settings.sample_rate * num_users
    if task.init_phases():
        init = phase_event(private, "init", 0)
        private.budget.check(private.ledger, init)
        private.ledger.record(init)
    if private.calibrate() is not None:
        try:
            private.budget.check(private.ledger, [phase_event(private, phase, 1) for phase in task.round_phases({})])
        except BudgetExceededError:
            pass


def run_task(task: Task, transport: Transport, *, generator: torch.Generator, private: PrivateServer | None = None, rounds: int | None = None,
             device: Any = "cpu", record: Callable[[int, State], None] | None = None, resume: tuple[int, State] | None = None) -> LoopResult:
    """Run the init phases and ``rounds`` (default ``task.settings.rounds``) rounds of ``task`` over ``transport`` (module docstring).

    ``generator`` draws the initial state and every Poisson sample, in that order (the engine's
    convention: the same seed gives the same samples in every transport). ``private``: the run's
    :class:`~fedlrs.privacy.release.PrivateServer` (None: nothing is clipped for privacy, noised
    or recorded); its round z is calibrated after the init phases, unless already set. A round the
    budget cannot pay for (all its phases' events) is not started, and a release the budget refuses ends the run
    (``stopped`` says so; what that round changed is not recorded). ``record(t, shared)`` sees the
    state after round t (t = 0: after the init): evaluation, history, checkpoints, progress.
    ``resume = (t, shared)``: go on after round t from a checkpoint's state (no init, no
    ``record(t)``); the caller restores ``generator``'s state and the ledger with it.
    """
    settings = task.settings
    rounds = settings.rounds if rounds is None else rounds
    num_users = transport.num_users
    start_round = getattr(transport, "start_round", None)
    start, shared = resume if resume is not None else (0, task.init_shared(generator))
    if resume is None:
        for phase in task.init_phases():
            shared = step(task, transport, phase, shared, None, private=private, round_number=0, normalizer=float(num_users))
    if private is not None:
        private.calibrate()
    if record is not None and resume is None:
        record(0, shared)
    result = LoopResult(shared, start)
    for round_number in range(start + 1, rounds + 1):
        if start_round is not None:
            start_round(round_number)
        num_users = transport.num_users
        try:
            phases = task.round_phases(shared)
            if private is not None:  # the whole round, every phase's event, or nothing of it
                private.budget.check(private.ledger, [phase_event(private, phase, round_number) for phase in phases])
            for phase in phases:
                index = sample_users(num_users, settings.sample_rate, generator, device)
                shared = step(task, transport, phase, shared, index, private=private, round_number=round_number,
                              normalizer=settings.sample_rate * num_users)
        except BudgetExceededError as error:
            result.stopped = f"budget: {error}"
            break
        result.shared, result.completed = shared, round_number
        if record is not None:
            record(round_number, shared)
    return result


def _select(personal: State, index: Tensor | None) -> State:
    return dict(personal) if index is None else {k: v[index] for k, v in personal.items()}


def _put(personal: State, index: Tensor | None, update: State) -> State:
    if index is None:
        return dict(update)
    out = {k: v.clone() for k, v in personal.items()}
    for k, v in update.items():
        out[k][index] = v
    return out


class InProcessTransport:
    """Every user of a federation as one slice of a batch, their personal states kept beside their data (the in-process devices).

    ``data`` has ``num_users`` and ``select(index)``; ``personal`` is a dict of tensors with a
    leading user dimension (None: ``task.init_personal(shared, N)`` when first needed, or empty for a
    stateless task). ``collect`` runs the task's client step on the sampled users at once and keeps
    their new personal states; a phase nobody was sampled into gives zero sums of the parts' shapes
    (released all the same), in ``dtype`` on ``device``.
    """

    def __init__(self, task: Task, data, personal: State | None = None, *, dtype: torch.dtype = torch.float64, device: Any = "cpu"):
        self.task, self.data, self.personal = task, data, None if personal is None else dict(personal)
        self.num_users, self.dtype, self.device = data.num_users, dtype, device

    def personal_states(self, shared: State) -> State:
        """Every user's personal state (made by ``task.init_personal(shared, N)`` the first time)."""
        if self.personal is None:
            init = getattr(self.task, "init_personal", None)
            self.personal = {} if init is None else dict(init(shared, self.num_users))
        return self.personal

    def collect(self, phase: str, shared: State, index: Tensor | None, round_number: int = 0) -> Sums:
        personal = self.personal_states(shared)
        if index is not None and len(index) == 0:
            return zero_sums(self.task.parts(phase, shared), dtype=self.dtype, device=self.device)
        data = self.data if index is None else self.data.select(index)
        sums, updated = self.task.client_step(shared, _select(personal, index), data, phase)
        self.personal = _put(personal, index, updated)
        return sums
