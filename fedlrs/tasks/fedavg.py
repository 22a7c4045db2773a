"""DP-FedAvg of one global linear model as a task (:class:`GlobalLinearTask`): the baseline of :func:`fedlrs.simulations.private_baselines.dp_fedavg_global`.

Shared state ``{"theta": (d,)}``, no personal state. A round: each sampled user solves its local
proximal problem for the published ``theta`` (:func:`local_prox_updates`) and sends the update
``delta_i = t_i - theta``, clipped to L2 norm ``clip`` when private (one part ``"delta"`` (d,));
the server steps ``theta <- theta + lr * sum_i delta_i / (q N)`` (released: noised first).
"""

from __future__ import annotations

from typing import Any

import torch

from fedlrs.core import UserData, sufficient_statistics
from fedlrs.privacy import clip_scales
from fedlrs.protocol.parts import Part
from fedlrs.tasks.base import State, Sums, TaskBase, count

Tensor = torch.Tensor
#: the one part of a DP-FedAvg contribution
PART = "delta"


def local_prox_updates(data: UserData, theta: Tensor, *, prox: float, ridge: float = 1e-6) -> Tensor:
    """``delta_i = argmin_t (1/m_i)||y_i - X_i t||^2 + mu ||t - theta||^2 - theta`` for every user, (n, d).

    Closed form: ``(S_i + mu I) delta_i = s_i - S_i theta`` with ``S_i = X_i^T X_i / m_i``,
    ``s_i = X_i^T y_i / m_i``.
    """
    stats = sufficient_statistics(data)
    m = stats.count.clamp_min(1).view(-1, 1)
    S = stats.xtx / m.unsqueeze(-1)
    s = stats.xty / m
    eye = torch.eye(data.dim, dtype=S.dtype, device=S.device)
    rhs = s - S @ theta
    return torch.linalg.solve(S + (prox + ridge) * eye, rhs)


class GlobalLinearTask(TaskBase):
    """One ``theta`` for every user (DP-FedAvg with a proximal local step); ``settings``: a
    :class:`~fedlrs.simulations.private_baselines.FedAvgConfig` (prox, ridge, clip, server_lr, rounds, sample_rate, privacy)."""

    name = "fedavg-global"

    def __init__(self, settings: Any, dim: int, *, dtype: torch.dtype = torch.float64, device: Any = "cpu"):
        self.settings, self.dim, self.dtype, self.device = settings, dim, dtype, device

    def parts(self, phase: str, shared: State) -> list[Part]:
        return [Part(PART, (self.dim,), float(self.settings.clip))]

    def init_shared(self, generator: torch.Generator) -> State:
        """``theta = 0`` (public)."""
        return {"theta": torch.zeros(self.dim, dtype=self.dtype, device=self.device)}

    def client_step(self, shared: State, personal: State, data: UserData, phase: str) -> tuple[Sums, State]:
        """``{"delta": sum_i s_i delta_i, "users": n}``, ``s_i`` clipping ``||delta_i||`` to ``clip`` when private (else 1)."""
        c = self.settings
        updates = local_prox_updates(data, shared["theta"], prox=c.prox, ridge=c.ridge)
        if c.private:
            updates = updates * clip_scales(updates.norm(dim=1), bound=c.clip).unsqueeze(1)
        return {PART: updates.sum(0), "users": count(data.num_users)}, personal

    def server_step(self, shared: State, phase: str, sums: Sums, normalizer: float, round_number: int) -> State:
        """``theta + lr * delta / normalizer``."""
        return {"theta": shared["theta"] + self.settings.server_lr * (sums[PART] / normalizer)}
