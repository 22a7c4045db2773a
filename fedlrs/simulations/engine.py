"""The fast in-process engine: every user of a federation as one batch, T rounds of AMHT-LRS.

One round (DESIGN.md section 2): the sampled users fit ``w_i, b_i`` for the
published ``U`` (:func:`fedlrs.core.solve_local`), form their contribution, the
server sums the contributions and updates ``U`` ("ls": exact least squares,
"gd": a gradient step), then re-orthonormalizes. The engine calls the same
``fedlrs.core`` functions as the Flower client and server; only the batching differs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from fedlrs.core import (
    LocalFit,
    UserData,
    UserStats,
    gd_gradient_sum,
    gd_residual_vectors,
    gd_step,
    logistic_residual_vectors,
    ls_solve,
    ls_system,
    moment_sum,
    random_orthonormal,
    solve_local,
    solve_local_logistic,
    sufficient_statistics,
    top_eigenvectors,
    user_parameters,
)

Tensor = torch.Tensor

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class EngineConfig:
    """Every knob of an AMHT-LRS run, validated once.

    rank, sparsity: r and k of ``theta_i = U w_i + b_i``. rounds: T. mode: "ls" or "gd".
    loss: "squared" or "logistic" (logistic needs mode "gd"). init: "moments" or "random".
    sample_rate: q, each user takes part in a round with probability q (Poisson sampling).
    ridge_w, ridge_b: local ridge penalties; ridge_u: ridge of the "ls" U solve;
    gd_learning_rate: step of the "gd" update; refine_steps, starts: local support search.
    """

    rank: int
    sparsity: int
    rounds: int = 10
    mode: Literal["ls", "gd"] = "ls"
    loss: Literal["squared", "logistic"] = "squared"
    init: Literal["moments", "random"] = "moments"
    sample_rate: float = 1.0
    ridge_w: float = 1e-6
    ridge_b: float = 1e-6
    ridge_u: float = 1e-6
    gd_learning_rate: float = 1.0
    refine_steps: int = 2
    starts: int = 8
    logistic_iterations: int = 8
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank == {self.rank}, must be >= 1.")
        if self.sparsity < 0:
            raise ValueError(f"sparsity == {self.sparsity}, must be >= 0.")
        if self.rounds < 0:
            raise ValueError(f"rounds == {self.rounds}, must be >= 0.")
        if self.mode not in ("ls", "gd"):
            raise ValueError(f"mode == {self.mode!r}, must be 'ls' or 'gd'.")
        if self.loss not in ("squared", "logistic"):
            raise ValueError(f"loss == {self.loss!r}, must be 'squared' or 'logistic'.")
        if self.loss == "logistic" and self.mode != "gd":
            raise ValueError("loss == 'logistic' needs mode == 'gd' (the exact 'ls' update is for the squared loss).")
        if self.init not in ("moments", "random"):
            raise ValueError(f"init == {self.init!r}, must be 'moments' or 'random'.")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate == {self.sample_rate}, must be in (0, 1].")
        for name in ("ridge_w", "ridge_b", "ridge_u"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} == {getattr(self, name)}, must be >= 0.")
        if self.gd_learning_rate <= 0:
            raise ValueError(f"gd_learning_rate == {self.gd_learning_rate}, must be > 0.")
        if self.starts < 1:
            raise ValueError(f"starts == {self.starts}, must be >= 1.")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype == {self.dtype!r}, must be one of {sorted(DTYPES)}.")

    def check_data(self, dim: int) -> None:
        """Refuse a rank or sparsity that does not fit dimension ``dim``."""
        if self.rank > dim:
            raise ValueError(f"rank == {self.rank}, must be <= the dimension d == {dim}.")
        if self.sparsity >= dim:
            raise ValueError(f"sparsity == {self.sparsity}, must be < the dimension d == {dim}.")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass
class EngineResult:
    """The learned ``U``, every user's ``w_i`` and ``b_i`` for the final ``U``, and per-round metrics.

    ``history[t]`` describes ``U`` after t updates (t = 0 is the initialization).
    """

    U: Tensor
    fit: LocalFit
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def theta(self) -> Tensor:
        """``theta_i = U w_i + b_i`` (n, d)."""
        return user_parameters(self.U, self.fit)

    def to_json(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the configuration, the per-round history and the final metrics as JSON."""
        payload = {"config": self.config, "history": self.history, "final": self.history[-1] if self.history else {}}
        payload.update(extra or {})
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))


Evaluator = Callable[[Tensor, LocalFit], dict]


class Federation:
    """The users' data on the engine's device, with the statistics the squared loss needs, computed once."""

    def __init__(self, data: UserData, config: EngineConfig):
        if data.num_users == 0:
            raise ValueError("the federation has no users.")
        if bool((data.counts == 0).any()):
            empty = int((data.counts == 0).nonzero()[0, 0])
            raise ValueError(f"user {empty} has no examples; every user needs at least one.")
        config.check_data(data.dim)
        self.config = config
        self.data = data.to(device=config.device, dtype=config.torch_dtype)
        self.stats: UserStats | None = sufficient_statistics(self.data) if config.loss == "squared" else None

    @property
    def num_users(self) -> int:
        return self.data.num_users

    def local_fit(self, U: Tensor, index: Tensor | None = None) -> LocalFit:
        """``w_i, b_i`` of the users at ``index`` (all when None) for ``U``: the client's local step."""
        c = self.config
        if c.loss == "squared":
            stats = self.stats if index is None else self.stats.select(index)
            return solve_local(U, stats, sparsity=c.sparsity, ridge_w=c.ridge_w, ridge_b=c.ridge_b, refine_steps=c.refine_steps, starts=c.starts)
        data = self.data if index is None else self.data.select(index)
        return solve_local_logistic(
            U, data, sparsity=c.sparsity, ridge_w=c.ridge_w, ridge_b=c.ridge_b, iterations=c.logistic_iterations, refine_steps=c.refine_steps
        )

    def residual_vectors(self, U: Tensor, fit: LocalFit, index: Tensor) -> Tensor:
        """``e_i`` of the "gd" contribution ``G_i = e_i w_i^T`` of the users at ``index``."""
        if self.config.loss == "squared":
            return gd_residual_vectors(self.stats.select(index), U, fit.w, fit.b)
        return logistic_residual_vectors(self.data.select(index), user_parameters(U, fit))


def initial_subspace(federation: Federation, generator: torch.Generator) -> Tensor:
    """Random orthonormal U, or the top-r eigenvectors of ``M = sum_i sum_j y_ij^2 x_ij x_ij^T`` ("moments")."""
    c = federation.config
    if c.init == "random":
        return random_orthonormal(federation.data.dim, c.rank, generator=generator, dtype=c.torch_dtype, device=c.device)
    return top_eigenvectors(moment_sum(federation.data), c.rank)


def sample_users(num_users: int, sample_rate: float, generator: torch.Generator, device) -> Tensor:
    """Indices of the users in this round: each independently with probability q (Poisson sampling)."""
    if sample_rate >= 1:
        return torch.arange(num_users, device=device)
    chosen = torch.rand(num_users, generator=generator) < sample_rate
    return chosen.nonzero().squeeze(-1).to(device)


def update_subspace(federation: Federation, U: Tensor, fit: LocalFit, index: Tensor, normalizer: float) -> Tensor:
    """The server's step from the contributions of the users at ``index`` (non-private)."""
    c = federation.config
    if c.mode == "ls":
        A, vec_c = ls_system(federation.stats.select(index), fit.w, fit.b)
        return ls_solve(A, vec_c, rank=c.rank, normalizer=normalizer, ridge=c.ridge_u)
    G = gd_gradient_sum(federation.residual_vectors(U, fit, index), fit.w)
    return gd_step(U, G, normalizer=normalizer, learning_rate=c.gd_learning_rate)


def run_engine(
    data: UserData,
    config: EngineConfig,
    *,
    evaluate: Evaluator | None = None,
    progress: bool = False,
    on_round: Callable[[dict], None] | None = None,
) -> EngineResult:
    """Run ``config.rounds`` rounds of AMHT-LRS over ``data`` and return U, the users' fits and the history.

    ``evaluate(U, fit)`` returns metrics of a full local fit of every user for ``U``;
    it runs at initialization and after every round (skip it for timing).
    """
    federation = Federation(data, config)
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    U = initial_subspace(federation, generator)
    history: list[dict] = []

    def record(round_number: int, U: Tensor, fit_all: LocalFit | None) -> LocalFit | None:
        entry = {"round": round_number, "seconds": time.perf_counter() - started}
        if evaluate is not None:
            fit_all = fit_all if fit_all is not None else federation.local_fit(U)
            entry.update(evaluate(U, fit_all))
        history.append(entry)
        if on_round is not None:
            on_round(entry)
        return fit_all

    record(0, U, None)
    task = _progress(progress, config.rounds)
    for round_number in range(1, config.rounds + 1):
        index = sample_users(federation.num_users, config.sample_rate, generator, config.device)
        fit = federation.local_fit(U, index)
        U = update_subspace(federation, U, fit, index, normalizer=config.sample_rate * federation.num_users)
        record(round_number, U, None)
        task.advance()
    task.close()
    final_fit = federation.local_fit(U)
    return EngineResult(U, final_fit, history, asdict(config))


class _progress:
    """A rich progress bar over rounds, or nothing."""

    def __init__(self, enabled: bool, total: int):
        self._bar = None
        if enabled and total:
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._bar.start()
            self._task = self._bar.add_task("rounds", total=total)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def synthetic_evaluator(reference, *, logistic: bool = False) -> Evaluator:
    """Metrics against a :class:`fedlrs.simulations.synthetic.SyntheticLRS`: distance, errors, support F1, test MSE/AUC."""
    from fedlrs.core import mean_relative_error, mean_user_auc, mean_user_mse, principal_angle_distance, support_f1

    def evaluate(U: Tensor, fit: LocalFit) -> dict:
        to = dict(device=U.device, dtype=U.dtype)
        theta = user_parameters(U, fit)
        test = reference.test.to(**to)
        metrics = {
            "distance": principal_angle_distance(U, reference.U_star.to(**to)),
            "relative_error": mean_relative_error(theta, reference.theta_star.to(**to)),
            "support_f1": support_f1(fit.b, reference.B_star.to(**to)),
        }
        if logistic:
            metrics["test_auc"] = mean_user_auc(test, theta)
        else:
            metrics["test_mse"] = mean_user_mse(test, theta)
        return metrics

    return evaluate
