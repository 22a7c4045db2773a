"""The billboard: the server side of AMHT-LRS over Flower's Grid (DESIGN.md sections 2-4).

Per round: Poisson-sample the connected nodes (the engine's random convention,
:mod:`fedlrs.server.sampling`), send them the published ``U``, collect replies
with a timeout, refuse any reply that is not exactly a valid clipped
contribution (:mod:`fedlrs.server.validation`), release the sum through
:class:`fedlrs.privacy.mechanism.GaussianSumRelease` (budget check, ledger record,
noise, normalisation by the expected count ``q N``) or, outside private mode,
divide by ``q N`` as the engine does, update ``U`` with the same ``fedlrs.core``
call as the engine, checkpoint, publish. Resumes from its checkpoint directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedlrs.client.contribution import Phase, expected_parts
from fedlrs.core import gd_step, ls_solve, random_orthonormal, top_eigenvectors
from fedlrs.federation_config import FederationConfig
from fedlrs.privacy import BudgetExceededError, DpEvent, Ledger, PrivacyBudget, calibrate_noise_multiplier
from fedlrs.privacy.mechanism import GaussianSumRelease
from fedlrs.privacy.noise import GaussianNoise
from fedlrs.server.checkpoint import LEDGER_FILE, Checkpoint, load_checkpoint, save_checkpoint
from fedlrs.server.sampling import poisson_sample
from fedlrs.server.validation import RefusedReply, validate_reply

_LOG = logging.getLogger("fedlrs.server")

BILLBOARD = "billboard"
ROUND_CONFIG = "round-config"
#: keys that do not change what is computed, so a resumed run may change them
OPERATIONAL_KEYS = frozenset({"round-timeout", "wait-for-nodes", "min-nodes", "checkpoint-dir", "report-path",
                              "personalize-at-end", "noise-seed"})


def _log(level: int, message: str, *args) -> None:
    from flwr.common.logger import log

    log(level, "[fedlrs] " + message, *args)


@dataclass
class Refusal:
    """A reply the billboard did not count, and why."""

    round: int
    node_id: int
    reason: str


@dataclass
class BillboardResult:
    """What a run of the billboard produced."""

    U: torch.Tensor
    rounds_completed: int
    stopped: str
    noise_multiplier: float | None
    ledger: Ledger | None
    refusals: list[Refusal] = field(default_factory=list)
    dropped: list[tuple[int, int]] = field(default_factory=list)  # (round, node id) that never replied
    sampled: dict[int, list[int]] = field(default_factory=dict)


class Billboard:
    """Publishes ``U`` and updates it from the clipped contributions of Poisson-sampled nodes."""

    def __init__(self, config: FederationConfig):
        self.config = config
        self.checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
        self.fingerprint = {k: v for k, v in config.to_dict().items() if k not in OPERATIONAL_KEYS}
        self.refusals: list[Refusal] = []
        self.dropped: list[tuple[int, int]] = []
        self.sampled: dict[int, list[int]] = {}
        seed = config.noise_seed
        self.noise = GaussianNoise(secure=seed < 0, seed=None if seed < 0 else seed)
        self.budget = PrivacyBudget(epsilon=config.target_epsilon, delta=config.delta, accountant=config.accountant)

    # ------------------------------------------------------------------ messaging
    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.config.wait_for_nodes
        while True:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            if len(nodes) >= self.config.min_nodes or time.monotonic() >= deadline:
                return nodes
            time.sleep(0.5)

    def _content(self, U: torch.Tensor | None, round_number: int) -> RecordDict:
        content = RecordDict({ROUND_CONFIG: ConfigRecord({"round": round_number})})
        if U is not None:
            content[BILLBOARD] = ArrayRecord({"U": Array(U.detach().cpu().numpy())})
        return content

    def _exchange(self, grid: Grid, nodes: list[int], message_type: str, U: torch.Tensor | None, round_number: int) -> list[Message]:
        timeout = self.config.round_timeout
        messages = [Message(self._content(U, round_number), dst_node_id=node, message_type=message_type,
                            group_id=str(round_number), ttl=timeout + 30) for node in nodes]
        return list(grid.send_and_receive(messages, timeout=timeout)) if messages else []

    def _collect(self, grid: Grid, nodes: list[int], phase: Phase, U: torch.Tensor | None, round_number: int) -> dict[str, torch.Tensor]:
        """The sum of the valid contributions of ``nodes``; refused and missing replies are logged and skipped."""
        parts = expected_parts(self.config, phase)
        sums = {name: torch.zeros(shape, dtype=self.config.torch_dtype) for name, (shape, _) in parts.items()}
        message_type = "train.moments" if phase == "moments" else "train"
        replies = self._exchange(grid, nodes, message_type, U, round_number)
        asked, seen, accepted = set(nodes), set(), {}
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            try:
                if node not in asked:
                    raise RefusedReply("the node was not sampled in this round.")
                if node in seen:
                    raise RefusedReply("a second reply from the same node.")
                seen.add(node)
                accepted[node] = validate_reply(reply, parts, self.config.torch_dtype)
            except RefusedReply as error:
                self.refusals.append(Refusal(round_number, node, str(error)))
                _log(WARNING, "round %d: refused the reply of node %d: %s", round_number, node, error)
        for node in sorted(asked - seen):
            self.dropped.append((round_number, node))
            _log(WARNING, "round %d: node %d did not reply within %.1f s; the round goes on without it",
                 round_number, node, self.config.round_timeout)
        for node in sorted(accepted):  # a fixed order: the sum does not depend on arrival order
            for name, value in accepted[node].items():
                sums[name] += value.to(sums[name].dtype)
        return sums

    # ------------------------------------------------------------------ privacy
    def _open_ledger(self) -> Ledger | None:
        if not self.config.private:
            return None
        if self.checkpoint_dir is None:
            return Ledger()
        path = self.checkpoint_dir / LEDGER_FILE
        if path.is_file() and path.stat().st_size > 0:
            return Ledger.load(path)
        return Ledger(path)

    @staticmethod
    def _release_id(ledger: Ledger, base: str) -> str:
        """``base``, or ``base-retry-k`` when a crashed attempt already recorded it (it is counted, conservatively)."""
        if base not in ledger:
            return base
        k = 1
        while f"{base}-retry-{k}" in ledger:
            k += 1
        return f"{base}-retry-{k}"

    def _event(self, ledger: Ledger, kind: str, round_number: int, z: float, q: float) -> DpEvent:
        base = "init" if kind == "init" else f"round-{round_number}"
        return DpEvent(release_id=self._release_id(ledger, base), kind=kind, noise_multiplier=z, sample_rate=q,
                       round=round_number, time=time.time())

    def _release(self, sums: dict[str, torch.Tensor], *, ledger: Ledger, event: DpEvent, bounds: dict[str, float],
                 expected_count: float, symmetric: frozenset[str]) -> dict[str, torch.Tensor]:
        release = GaussianSumRelease(noise_multiplier=event.noise_multiplier, bounds=bounds,
                                     expected_count=expected_count, noise=self.noise, symmetric_parts=symmetric)
        return release.release(sums, ledger=ledger, event=event, budget=self.budget)

    # ------------------------------------------------------------------ the run
    def _initial_subspace(self, grid: Grid, nodes: list[int], generator: torch.Generator, ledger: Ledger | None) -> torch.Tensor:
        c = self.config
        if c.init == "random":
            return random_orthonormal(c.dim, c.rank, generator=generator, dtype=c.torch_dtype)
        sums = self._collect(grid, nodes, "moments", None, 0)
        M = sums["M"]
        if ledger is not None:
            event = self._event(ledger, "init", 0, c.init_noise_multiplier, 1.0)
            M = self._release(sums, ledger=ledger, event=event, bounds={"M": c.clip_moments},
                              expected_count=float(max(len(nodes), 1)), symmetric=frozenset({"M"}))["M"]
        return top_eigenvectors(M, c.rank)

    def _noise_multiplier(self, ledger: Ledger | None) -> float | None:
        c = self.config
        if ledger is None:
            return None
        if c.noise_multiplier > 0:
            return c.noise_multiplier
        if c.num_server_rounds == 0:
            return None
        return calibrate_noise_multiplier(target_epsilon=c.target_epsilon, delta=c.delta, sample_rate=c.sample_rate,
                                          rounds=c.num_server_rounds, accountant=c.accountant,
                                          prior_events=ledger.events)

    def _checkpoint(self, round_number: int, U: torch.Tensor, generator: torch.Generator, z: float | None,
                    ledger: Ledger | None) -> None:
        if self.checkpoint_dir is None:
            return
        save_checkpoint(self.checkpoint_dir, Checkpoint(round_number, U, generator.get_state(),
                                                        -1.0 if z is None else z,
                                                        0 if ledger is None else len(ledger), self.fingerprint))

    def run(self, grid: Grid) -> BillboardResult:
        """Run (or resume) the rounds; returns the final ``U`` and what happened."""
        c = self.config
        generator = torch.Generator().manual_seed(c.seed)
        ledger = self._open_ledger()
        nodes = self._wait_for_nodes(grid)
        _log(INFO, "%d nodes connected", len(nodes))
        checkpoint = load_checkpoint(self.checkpoint_dir, self.fingerprint) if self.checkpoint_dir else None
        if checkpoint is not None:
            U, start = checkpoint.U.to(c.torch_dtype), checkpoint.round
            generator.set_state(checkpoint.generator_state)
            z = None if checkpoint.noise_multiplier < 0 else checkpoint.noise_multiplier
            if ledger is not None and len(ledger) < checkpoint.ledger_events:
                raise RuntimeError(f"the ledger has {len(ledger)} events, the checkpoint saw {checkpoint.ledger_events}: "
                                   f"the ledger lost events; refusing to resume.")
            _log(INFO, "resumed from %s after round %d", self.checkpoint_dir, start)
        else:
            if not nodes:
                raise RuntimeError(f"no node connected within wait-for-nodes == {c.wait_for_nodes} s.")
            if ledger is not None and len(ledger):
                raise RuntimeError(f"{ledger.path} holds events but there is no checkpoint beside it; "
                                   f"refusing to start over on a used ledger.")
            U, start = self._initial_subspace(grid, nodes, generator, ledger), 0
            z = self._noise_multiplier(ledger)
            self._checkpoint(0, U, generator, z, ledger)
        stopped = "rounds done"
        completed = start
        for round_number in range(start + 1, c.num_server_rounds + 1):
            nodes = sorted(int(n) for n in grid.get_node_ids())
            sampled = poisson_sample(nodes, c.sample_rate, generator)
            self.sampled[round_number] = sampled
            normalizer = c.sample_rate * len(nodes)
            event = None
            if ledger is not None:
                event = self._event(ledger, "round", round_number, z, c.sample_rate)
                try:
                    self.budget.check(ledger, event)
                except BudgetExceededError as error:
                    stopped = f"budget: {error}"
                    _log(WARNING, "round %d not started: %s", round_number, error)
                    break
            sums = self._collect(grid, sampled, "round", U, round_number)
            if ledger is not None:
                parts = expected_parts(c, "round")
                try:
                    sums = self._release(sums, ledger=ledger, event=event,
                                         bounds={name: bound for name, (_, bound) in parts.items()},
                                         expected_count=max(normalizer, 1e-12),
                                         symmetric=frozenset({"A"}) if c.mode == "ls" else frozenset())
                except BudgetExceededError as error:
                    stopped = f"budget: {error}"
                    break
                normalizer = 1.0
            if c.mode == "ls":
                U = ls_solve(sums["A"], sums["c"], rank=c.rank, normalizer=normalizer, ridge=c.ridge_u)
            else:
                U = gd_step(U, sums["G"], normalizer=normalizer, learning_rate=c.gd_learning_rate)
            self._checkpoint(round_number, U, generator, z, ledger)
            completed = round_number
            _log(INFO, "round %d: %d sampled, %d counted, U published", round_number, len(sampled),
                 len(sampled) - sum(1 for r, _ in self.dropped if r == round_number)
                 - sum(1 for x in self.refusals if x.round == round_number))
        if c.personalize_at_end:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            self._exchange(grid, nodes, "query.personalize", U, completed)
        result = BillboardResult(U, completed, stopped, z, ledger, self.refusals, self.dropped, self.sampled)
        self.write_report(result)
        return result

    def write_report(self, result: BillboardResult) -> Path | None:
        """The privacy report (JSON): every event of the ledger and epsilon recomputed from it."""
        c = self.config
        path = Path(c.report_path) if c.report_path else (self.checkpoint_dir / "privacy-report.json" if self.checkpoint_dir else None)
        if path is None:
            return None
        report = {"private": c.private, "rounds_completed": result.rounds_completed, "stopped": result.stopped,
                  "config": c.to_dict(), "refused_replies": len(result.refusals), "missing_replies": len(result.dropped)}
        if result.ledger is not None:
            account = result.ledger.account(delta=c.delta, accountant=c.accountant)
            report.update({"noise_multiplier": result.noise_multiplier, "delta": c.delta,
                           "target_epsilon": c.target_epsilon, "accountant": account.accountant_used,
                           "epsilon": account.epsilon, "events": [e.to_dict() for e in result.ledger.events]})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=float))
        os.replace(tmp, path)
        return path
