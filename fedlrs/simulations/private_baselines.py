"""Baselines that baselines.py does not hold: a DP-FedAvg global model and the classical MixedLM.

- :func:`dp_fedavg_global`: one ``theta`` for all users trained federatedly. Each round the
  Poisson-sampled users (rate q) solve their local proximal problem
  ``argmin_t (1/m_i)||y_i - X_i t||^2 + mu ||t - theta||^2`` (a d x d solve on the user's
  own statistics) and send the update ``delta_i = t_i - theta``; privately ``delta_i`` is
  clipped to L2 norm ``clip`` and the sum is released through
  :class:`fedlrs.privacy.release.PrivateServer` (ledger first, noise ``z clip``, divided by
  the expected count ``q N``). The server steps ``theta <- theta + lr * mean delta``.
  z is calibrated to (epsilon, delta) for the planned rounds by the PrivateServer; the task is
  :class:`fedlrs.tasks.fedavg.GlobalLinearTask`, run by the one loop (:mod:`fedlrs.tasks.loop`).
- :func:`mixedlm_random_slopes`: ``statsmodels`` MixedLM with a random intercept and
  random slopes per user (the classical model of the HSB data), predicting with the
  fixed effects plus each user's predicted random effects (BLUPs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedlrs.core import UserData
from fedlrs.privacy import Ledger, RunSettings, SpentEpsilon
from fedlrs.privacy.release import PrivateServer
from fedlrs.tasks.fedavg import GlobalLinearTask
from fedlrs.tasks.loop import InProcessTransport, run_task

if TYPE_CHECKING:
    from fedlrs.tasks.linear_config import EngineConfig

Tensor = torch.Tensor


@dataclass(frozen=True)
class FedAvgConfig(RunSettings):
    """Knobs of :func:`dp_fedavg_global`.

    rounds: T (20 here); sample_rate: q; seed (those of :class:`~fedlrs.privacy.settings.RunSettings`); prox: mu of the local proximal solve; server_lr: step on the
    mean update; clip: L2 bound of ``delta_i``. The privacy knobs (keyword-only) are those of
    :class:`~fedlrs.privacy.settings.RunSettings`: with ``private`` every round is
    clipped, noised and accounted, z calibrated to (target_epsilon, delta) unless
    ``noise_multiplier > 0`` fixes it.
    """

    rounds: int = 20
    prox: float = 1.0
    server_lr: float = 1.0
    ridge: float = 1e-6
    clip: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1:
            raise ValueError(f"rounds == {self.rounds}, must be >= 1.")
        for name in ("prox", "server_lr", "clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} == {getattr(self, name)}, must be > 0.")

    @property
    def clip_releases(self) -> bool:
        """Never: DP-FedAvg clips at the fixed ``clip``, with no clip histograms to plan for (:class:`~fedlrs.privacy.release.PrivateServer`)."""
        return False


@dataclass
class FedAvgResult(SpentEpsilon):
    """The global ``theta`` (d,), per-round history, the ledger (private runs) and z."""

    theta: Tensor
    history: list[dict] = field(default_factory=list)
    ledger: Ledger | None = None
    noise_multiplier: float | None = None
    delta: float | None = None
    stopped: str = "rounds done"

    def thetas(self, num_users: int) -> Tensor:
        """The same ``theta`` for every user, (n, d)."""
        return self.theta.unsqueeze(0).expand(num_users, -1).clone()

    def ledger_delta(self) -> float:
        return self.delta


def dp_fedavg_global(data: UserData, config: FedAvgConfig, *, ledger: Ledger | None = None, evaluate=None) -> FedAvgResult:
    """Train one global linear model federatedly, privately when ``config.private`` (module docstring).

    The rounds are the one loop (:func:`fedlrs.tasks.loop.run_task`) of
    :class:`fedlrs.tasks.fedavg.GlobalLinearTask`, every user a slice of one batch; privately through
    :class:`fedlrs.privacy.release.PrivateServer` (events ``"round-t"``, z calibrated before round 1
    after the events already in ``ledger``, budget check, ledger record, noise); a round the budget
    cannot pay for is not run (``result.stopped``). ``evaluate(theta)`` (optional) adds metrics to each round's history entry.
    """
    task = GlobalLinearTask(config, data.dim, dtype=data.X.dtype, device=data.X.device)
    private = PrivateServer(config, ledger if ledger is not None else Ledger()) if config.private else None
    history: list[dict] = []

    def record(round_number: int, shared: dict) -> None:
        if round_number > 0:
            history.append({"round": round_number, **(evaluate(shared["theta"]) if evaluate is not None else {})})

    outcome = run_task(task, InProcessTransport(task, data, dtype=data.X.dtype, device=data.X.device), generator=torch.Generator().manual_seed(config.seed),
                       private=private, record=record)
    result = FedAvgResult(outcome.shared["theta"], history, stopped=outcome.stopped)
    if private is not None:
        result.ledger, result.noise_multiplier, result.delta = private.ledger, private.noise_multiplier, config.delta
    return result


def long_format(data: UserData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the real examples: features (N, d), targets (N,), user index (N,)."""
    mask = data.mask.cpu().numpy()
    users = np.broadcast_to(np.arange(data.num_users)[:, None], mask.shape)[mask]
    return data.X.cpu().numpy()[mask].astype(float), data.y.cpu().numpy()[mask].astype(float), users


def mixedlm_random_slopes(data: UserData, *, random_columns: list[int], feature_names: list[str] | None = None) -> tuple[Tensor, dict]:
    """Per-user ``theta_i`` (n, d) of a linear mixed model fitted by REML with ``statsmodels``.

    ``y_ij = x_ij . beta + z_ij . u_i + e_ij`` with ``z_ij`` the features at ``random_columns``
    (e.g. intercept and SES: random intercepts and slopes), ``u_i ~ N(0, Psi)``. Returns
    ``theta_i = beta + u_i`` (the predicted random effects placed at their columns) and a
    summary (fixed effects, random-effects covariance, converged).
    """
    import warnings

    import statsmodels.api as sm

    X, y, users = long_format(data)
    names = feature_names or [f"x{j}" for j in range(data.dim)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sm.MixedLM(y, X, groups=users, exog_re=X[:, random_columns])
        fit = model.fit(reml=True, method=["lbfgs", "powell"])
    beta = np.asarray(fit.fe_params, dtype=float)
    theta = np.tile(beta, (data.num_users, 1))
    for user, effects in fit.random_effects.items():
        theta[int(user), random_columns] += np.asarray(effects, dtype=float)
    summary = {
        "fixed_effects": dict(zip(names, beta.tolist())),
        "random_columns": [names[j] for j in random_columns],
        "random_effects_cov": np.asarray(fit.cov_re, dtype=float).tolist(),
        "residual_variance": float(fit.scale),
        "converged": bool(fit.converged),
    }
    return torch.as_tensor(theta, dtype=data.X.dtype, device=data.X.device), summary


def private_fedrep_config(*, clip: float, init_clip: float, rounds: int, learning_rate: float, epsilon: float, delta: float, rank: int, seed: int = 0,
                          dtype: str = "float64") -> "EngineConfig":
    """Private FedRep of Jain, Rush, Smith, Song and Thakurta (2021) as an engine configuration (no second copy of the loop).

    A private spectral init (``M_i = sum_j y_ij^2 x_ij x_ij^T`` clipped to ``init_clip``), then
    T = ``rounds`` rounds: ``w_i`` by least squares on the device, the gradient
    ``G_i = X_i^T (X_i U w_i - y_i) w_i^T / m_i`` clipped to ``clip``, ``U <- QR(U - lr (sum_i G_i + N(0, (z clip)^2)) / n)``;
    one noise multiplier z for the T + 1 full-batch Gaussian releases, calibrated to (epsilon, delta).
    It is the engine's mode "gd" with fixed bounds (``clip_quantile = 0``) and the joint init calibration.
    """
    from fedlrs.simulations.engine import EngineConfig

    return EngineConfig(rank=rank, sparsity=0, rounds=rounds, mode="gd", init="moments", private=True, target_epsilon=epsilon, delta=delta, clip_quantile=0.0,
                        clip_g=clip, clip_moments=init_clip, init_noise_multiplier=0.0, gd_learning_rate=learning_rate, noise_seed=seed, seed=seed, dtype=dtype)
