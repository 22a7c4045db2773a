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
from typing import Callable

import torch

from fedlrs.core import (
    ls_part_vectors,
    moment_norms,
    LocalFit,
    UserData,
    UserStats,
    gd_gradient_sum,
    gd_residual_vectors,
    logistic_residual_vectors,
    ls_system,
    moment_sum,
    random_orthonormal,
    solve_local,
    solve_local_logistic,
    sufficient_statistics,
    top_eigenvectors,
    unit_free_gradients,
    user_parameters,
)

from fedlrs.privacy import (
    BudgetExceededError,
    DpEvent,
    Ledger,
    PrivacyBudget,
    clip_scales,
    ls_part_scales,
    write_privacy_report,
)
from fedlrs.privacy.adaptive import (
    clip_grid,
    clip_histogram,
    clipped_round_parts,
    quantile_bound,
)
from fedlrs.privacy.release import PrivateServer
from fedlrs.privacy.sampling import sample_users
from fedlrs.privacy.settings import SpentEpsilon
from fedlrs.tasks.linear import release_clip, release_init, release_round, server_step

from .engine_config import DTYPES, EngineConfig  # noqa: F401 - DTYPES: the engine's dtypes, also for the network loop
from .synthetic import synthetic_evaluator  # noqa: F401 - run_engine's usual evaluate, importable beside it

Tensor = torch.Tensor

@dataclass
class EngineResult(SpentEpsilon):
    """The learned ``U``, every user's ``w_i`` and ``b_i`` for the final ``U``, and per-round metrics.

    ``history[t]`` describes ``U`` after t updates (t = 0 is the initialization).
    """

    U: Tensor
    fit: LocalFit
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    stopped: str = "rounds done"
    ledger: Ledger | None = None
    noise_multiplier: float | None = None
    clip_bounds: list[float] = field(default_factory=list)

    @property
    def theta(self) -> Tensor:
        """``theta_i = U w_i + b_i`` (n, d)."""
        return user_parameters(self.U, self.fit)

    def ledger_delta(self) -> float:
        return self.config["delta"]

    def write_privacy_report(self, out_dir: str | Path) -> dict:
        """``privacy_report.json``, ``privacy_report.md`` and ``epsilon.png`` of this private run (:func:`fedlrs.privacy.write_privacy_report`)."""
        if self.ledger is None:
            raise ValueError("this run was not private: there is no ledger to report.")
        c = self.config
        budget = PrivacyBudget(epsilon=c["target_epsilon"], delta=c["delta"], accountant=c["accountant"])
        return write_privacy_report(
            self.ledger, out_dir=out_dir, delta=c["delta"], config=c, budget=budget, planned_rounds=c["rounds"], calibrated_noise_multiplier=self.noise_multiplier
        )

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
            stats = self.selected_stats(index)
            return solve_local(U, stats, sparsity=c.sparsity, ridge_w=c.ridge_w, ridge_b=c.ridge_b, refine_steps=c.refine_steps, starts=c.starts)
        data = self.data if index is None else self.data.select(index)
        return solve_local_logistic(
            U, data, sparsity=c.sparsity, ridge_w=c.ridge_w, ridge_b=c.ridge_b, iterations=c.logistic_iterations, refine_steps=c.refine_steps
        )

    def selected_stats(self, index: Tensor | None) -> UserStats:
        """Statistics of the users at ``index`` (all, without a copy, when None)."""
        return self.stats if index is None else self.stats.select(index)

    def residual_vectors(self, U: Tensor, fit: LocalFit, index: Tensor | None) -> Tensor:
        """``e_i`` of the "gd" contribution ``G_i = e_i w_i^T`` of the users at ``index`` (all when None)."""
        if self.config.loss == "squared":
            return gd_residual_vectors(self.selected_stats(index), U, fit.w, fit.b)
        data = self.data if index is None else self.data.select(index)
        return logistic_residual_vectors(data, user_parameters(U, fit))


def initial_subspace(federation: Federation, generator: torch.Generator, private: PrivateServer | None = None) -> Tensor:
    """Random orthonormal U, or the top-r eigenvectors of ``M = sum_i sum_j y_ij^2 x_ij x_ij^T`` ("moments").

    Privately: ``M = (sum_i s_i M_i + E) / N`` with ``s_i`` clipping ``||M_i||_F`` to ``clip_moments``
    and symmetric Gaussian ``E``, released as the ledger's ``"init"`` event.
    """
    c = federation.config
    if c.init == "random":
        return random_orthonormal(federation.data.dim, c.rank, generator=generator, dtype=c.torch_dtype, device=c.device)
    if private is None:
        return top_eigenvectors(moment_sum(federation.data), c.rank)
    norms = moment_norms(federation.data)
    if c.adaptive:  # unit-free: every user sends M_i / ||M_i||_F
        scales = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, torch.ones_like(norms)), torch.zeros_like(norms))
    else:
        scales = clip_scales(norms, bound=c.clip_moments)
    return top_eigenvectors(release_init(private, moment_sum(federation.data, weights=scales), federation.num_users), c.rank)


def update_subspace(federation: Federation, U: Tensor, fit: LocalFit, index: Tensor, normalizer: float, private: PrivateServer | None = None, event: DpEvent | None = None,
                    bound: float | None = None, round_number: int = 1) -> Tensor:
    """The server's step from the contributions of the users at ``index`` in round ``round_number``.

    Privately each user's contribution is clipped ("ls": ``A_i`` to ``clip_a`` and ``c_i`` to
    ``clip_c``; "gd": ``G_i = e_i w_i^T`` to ``clip_g``) and the sums are released through the ledger.
    """
    c = federation.config
    if c.mode == "ls":
        stats = federation.selected_stats(index)
        weights = {}
        if private is not None:
            g = ls_part_vectors(stats, fit.b)
            weights = dict(zip(("weights_A", "weights_c"), ls_part_scales(fit.w, stats.xtx, g, bound_A=c.clip_a, bound_c=c.clip_c)))
        A, vec_c = ls_system(stats, fit.w, fit.b, **weights)
        sums = {"A": A, "c": vec_c}
        if private is not None:
            sums, normalizer = release_round(private, sums, event, normalizer, U.shape[0]), 1.0
        return server_step(c, U, sums, normalizer)
    if c.unit_free:  # clipped at the round's bound also without privacy: robust to a few ill-fitted users
        delta, curvature = unit_free_gradients(federation.selected_stats(index), U, fit.w, fit.b)
        sums, _ = clipped_round_parts(delta, curvature, bound=bound)
        if private is not None:
            sums, normalizer = release_round(private, sums, event, normalizer, U.shape[0], bound), 1.0
        return server_step(c, U, sums, normalizer, round_number)
    e = federation.residual_vectors(U, fit, index)
    weights = None
    if private is not None:
        weights = clip_scales(e.norm(dim=1) * fit.w.norm(dim=1), bound=c.clip_g)
    sums = {"G": gd_gradient_sum(e, fit.w, weights)}
    if private is not None:
        sums, normalizer = release_round(private, sums, event, normalizer, U.shape[0]), 1.0
    return server_step(c, U, sums, normalizer)


def choose_clip_bound(federation: Federation, U: Tensor, fit_all: LocalFit | None, private: PrivateServer | None, round_number: int, generator: torch.Generator) -> tuple[float, LocalFit | None]:
    """The first phase of a round with the unit-free step: its own Poisson sample sends the bins of its contributions' norms,
    the server (privately: releases the histogram as a ``"clip"`` event and) sets the round's bound, the
    ``clip_quantile`` of the histogram (:func:`fedlrs.privacy.adaptive.quantile_bound`). Returns the bound and the full fit when it made one."""
    c = federation.config
    index = sample_users(federation.num_users, c.sample_rate, generator, c.device)
    if index is None and fit_all is None:
        fit_all = federation.local_fit(U)
    fit = fit_all if index is None else federation.local_fit(U, index)
    delta, _ = unit_free_gradients(federation.selected_stats(index), U, fit.w, fit.b)
    edges = clip_grid(dtype=c.torch_dtype, device=c.device)
    histogram, normalizer = clip_histogram(delta, edges), c.sample_rate * federation.num_users
    fractions = histogram["H"] / normalizer if private is None else release_clip(private, histogram, private.event("clip", round_number), normalizer)["H"]
    return quantile_bound(fractions, edges, c.clip_quantile), fit_all


def run_engine(
    data: UserData,
    config: EngineConfig,
    *,
    evaluate: Evaluator | None = None,
    progress: bool = False,
    on_round: Callable[[dict], None] | None = None,
    ledger: Ledger | None = None,
) -> EngineResult:
    """Run ``config.rounds`` rounds of AMHT-LRS over ``data`` and return U, the users' fits and the history.

    ``evaluate(U, fit)`` returns metrics of a full local fit of every user for ``U``;
    it runs at initialization and after every round (skip it for timing). With
    ``config.private`` every release goes through ``ledger`` (in memory when None),
    which the result carries; a round the budget cannot pay for is not run.
    """
    federation = Federation(data, config)
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    private = PrivateServer(config, ledger if ledger is not None else Ledger()) if config.private else None
    if private is not None:
        private.expected_count = config.sample_rate * federation.num_users
    U = initial_subspace(federation, generator, private)
    if private is not None:
        private.calibrate()
    history: list[dict] = []
    clip_bounds: list[float] = []
    stopped = "rounds done"

    def record(round_number: int, U: Tensor) -> LocalFit | None:
        """Append the round's entry; returns the full local fit for ``U`` when ``evaluate`` made one."""
        entry = {"round": round_number, "seconds": time.perf_counter() - started}
        fit_all = None
        if evaluate is not None:
            fit_all = federation.local_fit(U)
            entry.update(evaluate(U, fit_all))
        history.append(entry)
        if on_round is not None:
            on_round(entry)
        return fit_all

    fit_all = record(0, U)
    task = _progress(progress, config.rounds)
    for round_number in range(1, config.rounds + 1):
        event = None
        if private is not None:
            event = private.event("round", round_number)
            try:
                private.budget.check(private.ledger, event)
            except BudgetExceededError as error:
                stopped = f"budget: {error}"
                break
        bound = None
        if config.unit_free:
            bound, fit_all = choose_clip_bound(federation, U, fit_all, private, round_number, generator)
            clip_bounds.append(bound)
        index = sample_users(federation.num_users, config.sample_rate, generator, config.device)
        # every user takes part (index None) and the evaluation already fitted them all for this U
        fit = fit_all if index is None and fit_all is not None else federation.local_fit(U, index)
        U = update_subspace(federation, U, fit, index, config.sample_rate * federation.num_users, private, event, bound, round_number)
        fit_all = record(round_number, U)
        task.advance()
    task.close()
    final_fit = fit_all if fit_all is not None else federation.local_fit(U)
    result = EngineResult(U, final_fit, history, asdict(config))
    result.stopped = stopped
    result.clip_bounds = clip_bounds
    if private is not None:
        result.ledger = private.ledger
        result.noise_multiplier = private.noise_multiplier
    return result


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
