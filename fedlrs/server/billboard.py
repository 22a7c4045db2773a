"""The billboard: the server side of AMHT-LRS over Flower's Grid (DESIGN.md sections 2-4).

The rounds are the one loop (:func:`fedlrs.tasks.loop.run_task`) of the linear task over the Grid
(:class:`fedlrs.server.grid_transport.GridTransport`). Per round: Poisson-sample the connected nodes
(the engine's random convention, :func:`fedlrs.privacy.sampling.sample_nodes`), send them the published ``U``, collect replies
with a timeout, refuse any reply that is not exactly a valid clipped
contribution (:func:`fedlrs.protocol.validation.validate_reply`), release the sum through the
engine's own :class:`fedlrs.privacy.release.PrivateServer` (events, calibration,
budget check, ledger record, noise, normalisation by the expected count ``q N``)
or, outside private mode, divide by ``q N`` as the engine does, update ``U`` with
the engine's :func:`~fedlrs.tasks.linear.server_step`, checkpoint, publish.
Resumes from its checkpoint directory; writes the privacy report of
:func:`fedlrs.privacy.write_privacy_report` and ``run.json``.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from fedlrs.federation_config import FederationConfig
from fedlrs.privacy import Ledger
from fedlrs.privacy.release import PrivateServer
from fedlrs.protocol.messages import BILLBOARD, CLIP_BOUND, PERSONALIZE, ROUND_CONFIG, message_type
from fedlrs.protocol.parts import Phase, expected_parts
from fedlrs.server.checkpoint import LEDGER_FILE, Checkpoint, load_checkpoint, save_checkpoint
from fedlrs.server.secure_aggregation import SecureAggregation
from fedlrs.server.validation import require_replies
from fedlrs.server.grid_transport import GridBoard, GridTransport, Refusal, connected_nodes, server_log
from fedlrs.tasks.linear import LinearTask
from fedlrs.tasks.loop import run_task


RUN_FILE = "run.json"
#: keys that do not change what is computed, so a resumed run may change them
OPERATIONAL_KEYS = frozenset({"round-timeout", "max-in-flight", "wait-for-nodes", "min-nodes", "checkpoint-dir", "report-dir",
                              "personalize-at-end", "noise-seed", "secagg-shares", "secagg-threshold"})


_log = functools.partial(server_log, "fedlrs")


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


class Billboard(GridBoard):
    """Publishes ``U`` and updates it from the clipped contributions of Poisson-sampled nodes (the messaging of :class:`GridBoard`)."""

    def __init__(self, config: FederationConfig):
        super().__init__(min_nodes=config.min_nodes, round_timeout=config.round_timeout, max_in_flight=config.max_in_flight, dtype=config.torch_dtype)
        self.config = config
        self.checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
        self.fingerprint = {k: v for k, v in config.to_dict().items() if k not in OPERATIONAL_KEYS}
        self.engine_config = config.engine_config()
        self.private: PrivateServer | None = None
        self.secure = None if config.secure_aggregation == "off" else SecureAggregation(config)

    # ------------------------------------------------------------------ messaging
    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        return connected_nodes(grid, self.config.min_nodes, self.config.wait_for_nodes)

    def _content(self, U: torch.Tensor | None, round_number: int) -> RecordDict:
        settings = {"round": round_number}
        if self.clip_bound is not None:
            settings[CLIP_BOUND] = self.clip_bound
        content = RecordDict({ROUND_CONFIG: ConfigRecord(settings)})
        if U is not None:
            content[BILLBOARD] = ArrayRecord({"U": Array(U.detach().cpu().numpy())})
        return content

    def published(self, shared: dict) -> torch.Tensor:
        """What the devices get of the loop's shared state: ``U`` (the bound travels in the round config)."""
        return shared["U"]

    def _published_arrays(self, U: torch.Tensor | None) -> list[np.ndarray]:
        """What a SecAgg+ request carries for the devices: ``[U]`` (nothing for the moments init)."""
        return [] if U is None else [U.detach().cpu().numpy()]

    def _parts(self, phase: Phase) -> dict[str, tuple[tuple[int, ...], float]]:
        """``{name: (shape, L2 bound)}`` of a valid reply in ``phase`` (:func:`~fedlrs.protocol.parts.expected_parts`)."""
        return expected_parts(self.config, phase, self.clip_bound)

    def _message_type(self, phase: Phase) -> str:
        """The message that asks the nodes for their contribution in ``phase``."""
        return message_type(phase)

    def _collect_secure(self, grid: Grid, nodes: list[int], phase: Phase, U: torch.Tensor | None, round_number: int) -> dict[str, torch.Tensor]:
        """The sum of the contributions of the nodes that stayed through SecAgg+ (:mod:`fedlrs.server.secure_aggregation`)."""
        z = None
        if self.private is not None:
            z = self.private.init_noise_multiplier if phase == "moments" else self.private.noise_multiplier
        outcome = self.secure.collect(grid, nodes, phase, self._published_arrays(U), round_number, noise_multiplier=z)
        folder = self._report_folder()
        if folder is not None:  # what the server has now seen is on disk before anything else happens
            folder.mkdir(parents=True, exist_ok=True)
            self.secure.write_facts(folder, self.config.delta)
        refused = {node for node, _ in outcome.refusals}
        self.refusals += [Refusal(round_number, node, reason) for node, reason in outcome.refusals]
        self.dropped += [(round_number, node) for node in outcome.missing if node not in refused]
        self.counted[round_number] = len(outcome.counted)
        require_replies(round_number, len(nodes), len(outcome.counted), self.config.min_nodes)
        return outcome.sums

    # ------------------------------------------------------------------ privacy
    def _open_ledger(self) -> Ledger | None:
        if not self.config.private:
            return None
        if self.checkpoint_dir is None:
            return Ledger()
        path = self.checkpoint_dir / LEDGER_FILE
        if path.is_file() and path.stat().st_size > 0:
            return Ledger.load(path)
        c = self.config  # the header records what the audit checks the report against
        return Ledger(path, budget=self.engine_config.budget.to_dict(), plan={"rounds": c.num_server_rounds, "sample_rate": c.sample_rate})

    # ------------------------------------------------------------------ the run
    def _checkpoint(self, round_number: int, shared: dict[str, torch.Tensor], generator: torch.Generator) -> None:
        """Save the shared state after ``round_number`` updates, the sampler's state, z, the ledger's length and the clip bound."""
        if self.checkpoint_dir is None:
            return
        private = self.private
        z = None if private is None else private.noise_multiplier
        save_checkpoint(self.checkpoint_dir, Checkpoint(round_number, shared, generator.get_state(),
                                                        -1.0 if z is None else z,
                                                        0 if private is None else len(private.ledger),
                                                        self.fingerprint, self.clip_bound))

    def _resume(self, ledger: Ledger | None, generator: torch.Generator) -> Checkpoint | None:
        """The checkpoint to go on from, with the sampler's state restored into ``generator``; None: a fresh start.

        Refuses a ledger with fewer events than the checkpoint saw (it lost some) and, on a
        fresh start, a ledger that already holds events (a used budget cannot start over).
        Under secure aggregation the facts of the earlier process's releases are kept (the
        epsilon against the server counts every sum the server has seen).
        Call :meth:`_restore_noise_multiplier` once ``self.private`` exists.
        """
        checkpoint = load_checkpoint(self.checkpoint_dir, self.fingerprint) if self.checkpoint_dir else None
        if checkpoint is None:
            if ledger is not None and len(ledger):
                raise RuntimeError(f"{ledger.path} holds events but there is no checkpoint beside it; "
                                   f"refusing to start over on a used ledger.")
            return None
        if ledger is not None and len(ledger) < checkpoint.ledger_events:
            raise RuntimeError(f"the ledger has {len(ledger)} events, the checkpoint saw {checkpoint.ledger_events}: "
                               f"the ledger lost events; refusing to resume.")
        generator.set_state(checkpoint.generator_state)
        if self.secure is not None and self._report_folder() is not None:
            self.secure.load_earlier(self._report_folder())
        _log(INFO, "resumed from %s after round %d", self.checkpoint_dir, checkpoint.round)
        return checkpoint

    def _restore_noise_multiplier(self, checkpoint: Checkpoint) -> None:
        """The z calibrated before round 1 of the interrupted run (not calibrated again)."""
        if self.private is not None:
            self.private.noise_multiplier = None if checkpoint.noise_multiplier < 0 else checkpoint.noise_multiplier

    def run(self, grid: Grid) -> BillboardResult:
        """Run (or resume) the rounds on the one loop (:func:`fedlrs.tasks.loop.run_task`: the linear task over
        the Grid, :class:`~fedlrs.server.grid_transport.GridTransport`); returns the final ``U`` and what happened."""
        c = self.config
        generator = torch.Generator().manual_seed(c.seed)
        ledger = self._open_ledger()
        nodes = self._wait_for_nodes(grid)
        _log(INFO, "%d nodes connected", len(nodes))
        # the engine's private server step: events, calibration, budget, release (one implementation)
        self.private = None if ledger is None else PrivateServer(self.engine_config, ledger, retry_ids=True)
        if self.private is not None:  # the clip histograms' noise is planned for the expected count at the start
            self.private.expected_count = c.sample_rate * len(nodes)
        checkpoint = self._resume(ledger, generator)
        resume = None
        if checkpoint is not None:
            # the bound: the center of the next clip phase's grid (adaptive clipping; None before the first)
            resume = (checkpoint.round, {"U": checkpoint.shared["U"].to(c.torch_dtype), "bound": checkpoint.clip_bound})
            self._restore_noise_multiplier(checkpoint)
        elif not nodes:
            raise RuntimeError(f"no node connected within wait-for-nodes == {c.wait_for_nodes} s.")

        def record(round_number: int, shared: dict) -> None:
            self.clip_bound = shared.get("bound")  # checkpointed: the center of the next clip phase's grid
            self._checkpoint(round_number, {"U": shared["U"]}, generator)
            if round_number > 0:
                sampled = self.sampled[round_number]
                _log(INFO, "round %d: %d sampled, %d counted, U published", round_number, len(sampled),
                     len(sampled) - sum(1 for r, _ in self.dropped if r == round_number)
                     - sum(1 for x in self.refusals if x.round == round_number))

        outcome = run_task(LinearTask(self.engine_config, c.dim), GridTransport(self, grid, nodes), generator=generator, private=self.private,
                           rounds=c.num_server_rounds, record=record, resume=resume)
        U, completed = outcome.shared["U"], outcome.completed
        if outcome.stopped != "rounds done":
            _log(WARNING, "round %d not done: %s", completed + 1, outcome.stopped)
        if c.personalize_at_end:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            self._exchange(grid, nodes, PERSONALIZE, U, completed)
        z = None if self.private is None else self.private.noise_multiplier
        result = BillboardResult(U, completed, outcome.stopped, z, ledger, self.refusals, self.dropped, self.sampled)
        self.write_report(result)
        return result

    def run_facts(self, result: BillboardResult) -> dict:
        """What happened in this run (not privacy numbers): rounds, why it stopped, refused and missing replies."""
        return {"rounds_completed": result.rounds_completed, "stopped": result.stopped,
                "refused_replies": len(result.refusals), "missing_replies": len(result.dropped),
                "counted_replies": {str(r): n for r, n in sorted(self.counted.items())},
                "refusals": [asdict(r) for r in result.refusals],
                "missing": [{"round": r, "node_id": n} for r, n in result.dropped]}

    def _report_folder(self) -> Path | None:
        """``report-dir``, else ``checkpoint-dir``, else None (nothing is written)."""
        return Path(self.config.report_dir) if self.config.report_dir else self.checkpoint_dir

    def write_report(self, result: BillboardResult) -> Path | None:
        """``run.json`` (the run's facts) and, for a private run, the privacy report of :mod:`fedlrs.privacy.report`.

        Written to ``report-dir`` (default: ``checkpoint-dir``; nothing when both are empty):
        ``privacy_report.json``, ``privacy_report.md``, ``epsilon.png``, which ``fedlrs privacy audit``
        checks; its ``config`` holds the run config and the run's facts under ``"run"``. Under secure
        aggregation also ``secure_aggregation.json`` (every cohort's facts, the epsilon against the server)
        and, in the report's ``config``, the mode and what protects against whom.
        """
        c = self.config
        folder = self._report_folder()
        if folder is None:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        facts = {"private": c.private, **self.run_facts(result)}
        tmp = folder / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps({"config": c.to_dict(), "run": facts}, indent=2, default=float))
        os.replace(tmp, folder / RUN_FILE)
        extra = {}
        if self.secure is not None:
            self.secure.write_facts(folder, c.delta)
            extra = {"secure_aggregation": self.secure.summary()}
        if self.private is not None and len(self.private.ledger):
            self.private.write_report(folder, {**c.to_dict(), **extra, "run": {k: facts[k] for k in (
                "rounds_completed", "stopped", "refused_replies", "missing_replies")}})
        return folder
