"""Any network method (:class:`~fedlrs.nn.method.FederatedMethod`: LRS-NN, FedAvg, FedAvg+FT, FedRep) as a task.

:class:`NetworkTask` is :func:`fedlrs.tasks.network.run_federated`'s round written against the task
contract. Shared state ``{"state": the method's shared state, "bound": C_t}``; personal states the
method's (kept by the transport); one phase ``"round"`` whose parts are ``"contribution"`` (D,), the
user's whole flattened contribution clipped to ``C_t`` (private), and with adaptive clipping the
one-hot bin ``"H"`` of its norm on the grid around ``C_t``, released in the same event
(:func:`fedlrs.nn.federated.release_parts`); the server step ``method.apply(state, unflatten(s / (q N)))``
and ``C_{t+1}`` from the released histogram (:func:`fedlrs.nn.federated.next_bound`).
:func:`run_federated` runs it on the one loop (:func:`fedlrs.tasks.loop.run_task`) over the
in-process batched transport with ``run_federated``'s evaluation schedule and final
personalisation, and gives the same result for the same seed (tests/test_tasks_loop.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from fedlrs.nn.federated import (
    PART,
    FederatedResult,
    NetworkConfig,
    clipped_parts,
    contribution_shapes,
    flat_contributions,
    initial_state,
    next_bound,
    prepare_examples,
    private_server,
    release_parts,
    round_parts,
)
from fedlrs.nn.method import FederatedMethod, UserExamples
from fedlrs.nn.network import flat_size, unflatten
from fedlrs.privacy.events import DpEvent
from fedlrs.privacy.ledger import Ledger
from fedlrs.privacy.release import PrivateServer
from fedlrs.protocol.parts import Part
from fedlrs.tasks.base import State, Sums, TaskBase, count
from fedlrs.tasks.loop import InProcessTransport, run_task


class NetworkTask(TaskBase):
    """A :class:`~fedlrs.nn.method.FederatedMethod` under a :class:`~fedlrs.nn.federated.NetworkConfig` (module docstring).

    The local updates draw from their own generator (``settings.seed + 1``), as in ``run_federated``.
    ``expected_count`` (q N) and ``noise_multiplier`` (the round z, None when not private): public numbers
    fixed before round 1 that the noise-aware next bound reads (:func:`~fedlrs.nn.federated.next_bound`).
    """

    name = "nn"

    def __init__(self, method: FederatedMethod, settings: NetworkConfig, *, expected_count: float = 1.0, noise_multiplier: float | None = None):
        self.method, self.settings = method, settings
        self.expected_count, self.noise_multiplier = expected_count, noise_multiplier
        self.local_generator = torch.Generator().manual_seed(settings.seed + 1)
        self.shapes: dict[str, torch.Size] | None = None

    def init_shared(self, generator: torch.Generator) -> State:
        """``method.init_shared(generator)`` on the run's device and dtype (its contribution's shapes are read from it), ``C_1 = clip``."""
        state = initial_state(self.method, self.settings, generator)
        self.shapes = contribution_shapes(self.method, state)
        return {"state": state, "bound": float(self.settings.clip)}

    def init_personal(self, shared: State, num_users: int) -> State:
        return self.method.init_personal(shared["state"], num_users)

    def parts(self, phase: str, shared: State) -> list[Part]:
        parts = round_parts(self.settings, flat_size(self.shapes), shared["bound"])
        return [Part(name, shape, bound) for name, (shape, bound) in parts.items()]

    def client_step(self, shared: State, personal: State, data: UserExamples, phase: str) -> tuple[Sums, State]:
        """``{"contribution": sum_i clip_C(g_i)[, "H": sum_i h_i], "users": n}`` after the users' local update (their new personal states)."""
        updated = self.method.local_update(shared["state"], personal, data, self.local_generator)
        contribution = self.method.contribution(shared["state"], updated, data, self.local_generator)
        return {**clipped_parts(flat_contributions(contribution, self.shapes), self.settings, shared["bound"]), "users": count(data.num_users)}, updated

    def release(self, private: PrivateServer, phase: str, shared: State, sums: Sums, event: DpEvent, expected_count: float) -> Sums:
        """The contribution and (adaptive clipping) the histogram in one event, the histogram at its noise weight."""
        return release_parts(sums, self.settings, expected_count, private, event, shared["bound"])

    def server_step(self, shared: State, phase: str, sums: Sums, normalizer: float, round_number: int) -> State:
        """``method.apply(state, unflatten(s / normalizer))`` and the next bound (:func:`~fedlrs.nn.federated.next_bound`)."""
        released = {name: total / normalizer for name, total in sums.items()}
        state = self.method.apply(shared["state"], unflatten(released[PART], self.shapes))
        bound = next_bound(released, self.settings, shared["bound"], noise_multiplier=self.noise_multiplier, expected_count=self.expected_count)
        return {"state": state, "bound": bound}


def run_federated(method: FederatedMethod, train: UserExamples, config: NetworkConfig, *, ledger: Ledger | None = None,
                  evaluate: Callable[[State, State], dict] | None = None, on_round: Callable[[dict], None] | None = None) -> FederatedResult:
    """Run ``config.rounds`` rounds of ``method`` over the users of ``train`` (the rules of :mod:`fedlrs.nn.federated`).

    ``evaluate(shared, personal)`` returns metrics of the current shared state and
    the users' current personal states (call ``method.personalize`` inside it when
    the metric needs it); it runs at round 0 and per ``config.evaluate_every``.
    ``on_round(entry)`` sees each history entry. With ``config.private`` every
    round is recorded in ``ledger`` (in memory when None) before its release; a
    round the budget cannot pay for is not run (``result.stopped`` says so). At the
    end every user's personal state is ``method.personalize(shared, personal, train)``.
    The round is :class:`NetworkTask`'s on the one loop (:func:`fedlrs.tasks.loop.run_task`).
    """
    if train.num_users == 0:
        raise ValueError("train has no users; the federation needs at least one.")
    train = prepare_examples(train, config)
    private = private_server(config, ledger)
    task = NetworkTask(method, config, expected_count=config.sample_rate * train.num_users,
                       noise_multiplier=None if private is None else private.noise_multiplier)
    transport = InProcessTransport(task, train, dtype=config.torch_dtype, device=config.device)
    started, history, bounds = time.perf_counter(), [], [float(config.clip)]

    def write(round_number: int, shared: State) -> None:
        entry: dict[str, Any] = {"round": round_number, "seconds": time.perf_counter() - started}
        if evaluate is not None:
            entry.update(evaluate(shared["state"], transport.personal_states(shared)))
        history.append(entry)
        if on_round is not None:
            on_round(entry)

    def record(round_number: int, shared: State) -> None:
        if round_number > 0:
            bounds.append(shared["bound"])  # the next round's: bounds[t - 1] is round t's
        every = config.evaluate_every
        if round_number in (0, config.rounds) or (every and round_number % every == 0):
            write(round_number, shared)

    outcome = run_task(task, transport, generator=torch.Generator().manual_seed(config.seed), private=private, device=config.device, record=record)
    shared = outcome.shared
    if history[-1]["round"] != outcome.completed:
        write(outcome.completed, shared)
    personal = method.personalize(shared["state"], transport.personal_states(shared), train, task.local_generator)
    return FederatedResult(shared["state"], personal, history, config.to_dict(), outcome.stopped, outcome.completed,
                           ledger=None if private is None else private.ledger,
                           noise_multiplier=None if private is None else private.noise_multiplier,
                           clip_bounds=bounds[:outcome.completed] if config.private else [], _private=private)
