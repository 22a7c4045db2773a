"""The fast in-process engine: every user of a federation as one batch, T rounds of AMHT-LRS.

One round (DESIGN.md section 2): the sampled users fit ``w_i, b_i`` for the
published ``U`` (:func:`fedlrs.core.solve_local`), form their contribution, the
server sums the contributions and updates ``U`` ("ls": exact least squares,
"gd": a gradient step), then re-orthonormalizes. The engine calls the same
``fedlrs.core`` functions as the Flower client and server; only the batching differs.
The rounds are the one loop (:mod:`fedlrs.tasks.loop`) of the linear task
(:class:`fedlrs.tasks.linear.LinearTask`) over the federation's chunks (:class:`FederationTransport`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from fedlrs.core import LocalFit, user_parameters
from fedlrs.privacy import Ledger, PrivacyBudget, write_privacy_report
from fedlrs.privacy.release import PrivateServer
from fedlrs.privacy.settings import SpentEpsilon
from fedlrs.tasks.linear import LinearTask, clip_center
from fedlrs.tasks.loop import run_task

from .chunks import Federation, as_federation  # noqa: F401 - Federation: importable beside run_engine (the tests)
from fedlrs.tasks.linear_config import DTYPES, EngineConfig  # noqa: F401 - DTYPES: the engine's dtypes, also for the network loop
from fedlrs.data.synthetic import synthetic_evaluator  # noqa: F401 - run_engine's usual evaluate, importable beside it

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


class FederationTransport:
    """The linear task's in-process transport over a federation (:class:`~fedlrs.simulations.chunks.Federation`, in memory or
    streamed, or :class:`~fedlrs.simulations.ray_engine.RayFederation`): :meth:`collect` adds the task's client step over its
    chunks or shards. ``fit_all``: every user's fit for the ``U`` it was made for (the evaluation's), which a phase over every
    user (q = 1) reuses instead of fitting again."""

    def __init__(self, federation):
        self.federation, self.num_users = federation, federation.num_users
        self.fit_all: LocalFit | None = None
        self.fit_for: Tensor | None = None

    def collect(self, phase: str, shared: dict, index: Tensor | None, round_number: int = 0) -> dict[str, Tensor]:
        """The sums of ``phase`` of the users at ``index`` (all when None), with their count ``"users"``."""
        if phase == "moments":
            return self.federation.moments()
        U = shared["U"]
        fit = self.fit_all if index is None and self.fit_for is U else None
        if phase == "clip":
            return self.federation.clip_sums(U, index, fit, clip_center(shared))
        return self.federation.round_sums(U, index, fit, shared.get("bound"))


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

    The rounds are the one loop (:func:`fedlrs.tasks.loop.run_task`) of the linear task
    (:class:`fedlrs.tasks.linear.LinearTask`: the moments init or a random ``U``; per round, with the
    unit-free step, a clip phase whose released histogram sets the round's bound; the round's sums,
    released, then the server step) over the federation's chunks (:class:`FederationTransport`).

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
    transport = FederationTransport(federation)
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    private = PrivateServer(config, ledger if ledger is not None else Ledger()) if config.private else None
    if private is not None:
        private.expected_count = config.sample_rate * federation.num_users
    history: list[dict] = []
    clip_bounds: list[float] = []
    bar = _progress(progress, config.rounds)

    def record(round_number: int, shared: dict) -> None:
        """Append the round's entry (``evaluate`` on a full local fit for ``U``, kept for the next phase over every user)."""
        U = shared["U"]
        entry = {"round": round_number, "seconds": time.perf_counter() - started}
        transport.fit_all, transport.fit_for = None, U
        if evaluate is not None:
            transport.fit_all = federation.local_fit(U)
            entry.update(evaluate(U, transport.fit_all))
        if round_number > 0:
            if config.unit_free:
                clip_bounds.append(shared["bound"])
            bar.advance()
        history.append(entry)
        if on_round is not None:
            on_round(entry)

    outcome = run_task(LinearTask(config, federation.dim), transport, generator=generator, private=private, device=config.device, record=record)
    bar.close()
    U = outcome.shared["U"]
    final_fit = transport.fit_all if transport.fit_all is not None or not keep_fit else federation.local_fit(U)
    result = EngineResult(U, final_fit, history, asdict(config))
    result.stopped = outcome.stopped
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
