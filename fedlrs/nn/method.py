"""The contract every federated network method obeys: LRS-NN, FedAvg, FedAvg+FT, FedRep.

A method splits what it learns into a **shared** state (published by the server
each round: e.g. ``U``, ``theta_0`` and the shared layers for LRS-NN, the whole
network for FedAvg, the body for FedRep) and a **personal** state per user that
never leaves the device (``w_i, b_i``; FedRep's head; nothing for FedAvg).
All personal tensors and all user data carry a leading user dimension ``n``:
the in-process loop (:mod:`fedlrs.nn.federated`) calls a method with every
sampled user at once, a Flower ClientApp with ``n = 1``. No method clips,
noises or normalises: the loop does that through :mod:`fedlrs.privacy`
(user-level clipping of the flattened contribution, Gaussian noise on the sum,
division by the expected count ``q N``), so the privacy rules are written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from fedlrs.core.stats import PaddedUsers

Tensor = torch.Tensor
State = dict[str, Tensor]


@dataclass(frozen=True)
class UserExamples(PaddedUsers):
    """Examples of ``n`` users, padded to a common length ``m_max`` (:class:`fedlrs.core.stats.PaddedUsers`).

    Attributes
    ----------
    X : Tensor (n, m_max, *input_shape)
    y : Tensor (n, m_max): class labels (int64) or targets (float)
    mask : Tensor (n, m_max), bool; True for a real example, padded rows never enter a loss.
    """

    def to(self, device: torch.device | str | None = None) -> "UserExamples":
        return UserExamples(self.X.to(device), self.y.to(device), self.mask.to(device))


@runtime_checkable
class FederatedMethod(Protocol):
    """One federated network method; all tensors of a state share one device and dtype.

    Round t of the loop, for the Poisson-sampled users S_t:

        personal[S_t] <- local_update(shared, personal[S_t], data[S_t])
        g_i           <- contribution(shared, personal[S_t], data[S_t])   (per user, unclipped)
        shared        <- apply(shared, (sum_i clip_C(g_i) + N(0, sigma^2 C^2 I)) / (q N))

    and at evaluation every user's personal state is ``personalize(shared, personal, data)``.
    """

    name: str

    def init_shared(self, generator: torch.Generator) -> State:
        """The shared state before round 1 (a public, data-independent initialisation)."""
        ...

    def init_personal(self, shared: State, num_users: int) -> State:
        """Personal states of ``num_users`` new users (leading dimension ``num_users``)."""
        ...

    def local_update(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """The users' new personal states after local training against the published ``shared``."""
        ...

    def contribution(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """Per-user contributions to the shared state (leading dim n), before clipping.

        Each value has shape ``(n, *shared[key].shape)`` for a subset of the shared keys.
        """
        ...

    def apply(self, shared: State, mean_contribution: State) -> State:
        """The server's step: the new shared state from the released mean contribution."""
        ...

    def personalize(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """Personal states used at evaluation (e.g. fine-tuning for FedAvg+FT)."""
        ...

    def predict(self, shared: State, personal: State, X: Tensor) -> Tensor:
        """Outputs ``(n, m, *output_shape)`` for inputs ``X (n, m, *input_shape)`` of the n users."""
        ...

    def personal_size(self, shared: State) -> int:
        """Numbers a user stores for its personal state (LRS-NN: ``r + 2k``, a k-sparse b stored as index/value)."""
        ...
