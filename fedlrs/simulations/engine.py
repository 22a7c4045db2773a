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

from fedlrs.core import LocalFit, random_orthonormal, top_eigenvectors, user_parameters
from fedlrs.privacy import (
    BudgetExceededError,
    DpEvent,
    Ledger,
    PrivacyBudget,
    write_privacy_report,
)
from fedlrs.privacy.adaptive import CLIP_START, quantile_bound, relative_grid
from fedlrs.privacy.release import PrivateServer
from fedlrs.privacy.sampling import sample_users
from fedlrs.privacy.settings import SpentEpsilon
from fedlrs.tasks.linear import release_clip, release_init, release_round, server_step

from .chunks import USERS, Federation, as_federation, released_parts
from .engine_config import DTYPES, EngineConfig  # noqa: F401 - DTYPES: the engine's dtypes, also for the network loop
from .synthetic import synthetic_evaluator  # noqa: F401 - run_engine's usual evaluate, importable beside it

Tensor = torch.Tensor


@dataclass
class EngineResult(SpentEpsilon):
    """The learned ``U``, every user's ``w_i`` and ``b_i`` for the final ``U``, and per-round metrics.

    ``history[t]`` describes ``U`` after t updates (t = 0 is the initialization). ``fit`` is None after ``run_engine(keep_fit=False)``.
    """

    U: Tensor
    fit: LocalFit | None
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


def initial_subspace(federation: Federation, generator: torch.Generator, private: PrivateServer | None = None) -> Tensor:
    """Random orthonormal U, or the top-r eigenvectors of ``M = sum_i sum_j y_ij^2 x_ij x_ij^T`` ("moments").

    Privately: ``M = (sum_i s_i M_i + E) / N`` with ``s_i`` clipping ``||M_i||_F`` to ``clip_moments`` (adaptive
    clipping: ``s_i = 1 / ||M_i||_F``, bound 1; :func:`fedlrs.simulations.chunks.moment_partial_sums`)
    and symmetric Gaussian ``E``, released as the ledger's ``"init"`` event.
    """
    c = federation.config
    if c.init == "random":
        return random_orthonormal(federation.dim, c.rank, generator=generator, dtype=c.torch_dtype, device=c.device)
    sums = federation.moments()
    check_contributors(sums, federation.num_users)
    if private is None:
        return top_eigenvectors(sums["M"], c.rank)
    return top_eigenvectors(release_init(private, sums["M"], federation.num_users), c.rank)


def check_contributors(sums: dict[str, Tensor], expected: int) -> None:
    """Refuse sums that do not count every contributor (a lost partial sum); nothing is released from them."""
    counted = int(sums[USERS]) if USERS in sums else -1
    if counted != expected:
        raise RuntimeError(f"the sums count {counted} contributors, the step has {expected}: a partial sum is missing; nothing was released.")


def update_subspace(federation: Federation, U: Tensor, fit: LocalFit | None, index: Tensor | None, normalizer: float, private: PrivateServer | None = None,
                    event: DpEvent | None = None, bound: float | None = None, round_number: int = 1) -> Tensor:
    """The server's step from the contributions of the users at ``index`` (all when None) in round ``round_number``.

    ``fit`` is theirs when already made (None: each chunk's local step runs here). The sums
    (:func:`fedlrs.simulations.chunks.round_partial_sums`, added over chunks or shards) must count
    every sampled user. Privately each user's contribution is clipped ("ls": ``A_i`` to ``clip_a``
    and ``c_i`` to ``clip_c``; "gd": ``G_i = e_i w_i^T`` to ``clip_g``; the unit-free step: ``Delta_i`` and ``P_i``
    at the round's ``bound``, also without privacy) and the sums are released through the ledger.
    """
    sums = federation.round_sums(U, index, fit, bound)
    check_contributors(sums, federation.num_users if index is None else len(index))
    sums = {name: sums[name] for name in released_parts(federation.config)}  # the other names are counts
    if private is not None:
        sums, normalizer = release_round(private, sums, event, normalizer, U.shape[0], bound), 1.0
    return server_step(federation.config, U, sums, normalizer, round_number)


def choose_clip_bound(federation: Federation, U: Tensor, fit_all: LocalFit | None, private: PrivateServer | None, round_number: int, generator: torch.Generator,
                      center: float = CLIP_START) -> float:
    """The first phase of a round with the unit-free step: its own Poisson sample sends the bins of its contributions' norms
    on the grid around ``center`` (the previous round's bound; :func:`fedlrs.privacy.adaptive.relative_grid`)
    (:func:`fedlrs.simulations.chunks.clip_partial_sums`, added over chunks or shards, counting every sampled user), the
    server (privately: releases the histogram as a ``"clip"`` event and) sets the round's bound, the ``clip_quantile``
    of the histogram (:func:`fedlrs.privacy.adaptive.quantile_bound`). ``fit_all``: every user's fit for ``U`` when made."""
    c = federation.config
    index = sample_users(federation.num_users, c.sample_rate, generator, c.device)
    sums = federation.clip_sums(U, index, fit_all if index is None else None, center)
    check_contributors(sums, federation.num_users if index is None else len(index))
    histogram, normalizer = {"H": sums["H"]}, c.sample_rate * federation.num_users
    fractions = histogram["H"] / normalizer if private is None else release_clip(private, histogram, private.event("clip", round_number), normalizer)["H"]
    return quantile_bound(fractions, relative_grid(center, dtype=c.torch_dtype, device=c.device), c.clip_quantile)


def run_engine(
    data,
    config: EngineConfig,
    *,
    evaluate: Evaluator | None = None,
    progress: bool = False,
    on_round: Callable[[dict], None] | None = None,
    ledger: Ledger | None = None,
    keep_fit: bool = True,
) -> EngineResult:
    """Run ``config.rounds`` rounds of AMHT-LRS over ``data`` and return U, the users' fits and the history.

    ``data``: a :class:`UserData` (in memory), a source such as :class:`fedlrs.data.ParquetFederation`
    (streamed from disk each round) or a federation (:class:`fedlrs.simulations.ray_engine.RayFederation`);
    see :func:`fedlrs.simulations.chunks.as_federation`. ``keep_fit=False`` skips the final local fit
    of every user (``result.fit`` None), which a streamed federation of millions may not need.

    ``evaluate(U, fit)`` returns metrics of a full local fit of every user for ``U``;
    it runs at initialization and after every round (skip it for timing). With
    ``config.private`` every release goes through ``ledger`` (in memory when None),
    which the result carries; a round the budget cannot pay for is not run.
    """
    federation = as_federation(data, config)
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
    bound_before = CLIP_START  # the center of the next clip phase's grid
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
            bound = choose_clip_bound(federation, U, fit_all, private, round_number, generator, bound_before)
            bound_before = bound
            clip_bounds.append(bound)
        index = sample_users(federation.num_users, config.sample_rate, generator, config.device)
        # every user takes part (index None) and the evaluation already fitted them all for this U
        fit = fit_all if index is None else None
        U = update_subspace(federation, U, fit, index, config.sample_rate * federation.num_users, private, event, bound, round_number)
        fit_all = record(round_number, U)
        task.advance()
    task.close()
    final_fit = fit_all if fit_all is not None or not keep_fit else federation.local_fit(U)
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
