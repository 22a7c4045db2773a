"""Secure aggregation on the billboard: Flower's SecAgg+ run for the billboard's own cohort.

The billboard samples (Poisson) and accounts itself; Flower 1.41's
:class:`~flwr.server.workflow.SecAggPlusWorkflow` is built around the legacy fit
stage (a ``LegacyContext`` with a ``Strategy``). :class:`SecureAggregation` calls the
workflow's four stages (setup, share keys, collect masked vectors, unmask) once per
release with an adapter strategy, :class:`~fedlrs.server.secagg_grid.CohortStrategy`, whose ``configure_fit``
returns the sampled nodes (``U``, or a network's shared state, and the
:class:`~fedlrs.protocol.wire.WireSettings` as FitIns) and whose ``aggregate_fit``
receives the unmasked aggregate. Between the share-keys and the masked-vector stages it
forgets the nodes that left before sharing their keys
(:meth:`SecureAggregation._run_stages`: Flower's unmask stage would otherwise abort on them).
The workflow talks to the nodes through :class:`~fedlrs.server.secagg_grid.ProtocolGrid`, a view of the billboard's Grid
that pulls every 0.1 s and refuses (logs, drops: the node counts as dropped out) any reply that
is not the answer of the node the message went to, or not of the stage's exact form, so a
hostile reply never reaches Flower's code.

What the workflow does to the vector, and how it is undone exactly: each client's vector
is multiplied by its weight ``num_examples / max_weight`` (1 / 1 here), clipped to
``[-clipping_range, clipping_range]`` and stochastically rounded onto ``quantization_range``
levels; the server sums modulo ``modulus_range``, removes the masks, dequantizes, subtracts
the clients' offsets and divides by the summed weights: a weighted average. With the
device's wire format (:mod:`fedlrs.protocol.wire`: integers ``u`` in ``[0, 2**31)``
sent as ``u - 2**30``) and ``clipping_range = 2**30``, ``quantization_range = 2**31``,
``modulus_range = 2**62`` the clipping and the rounding are the identity and the average is
``(S - n 2**30) / n`` with ``S = sum_i u_i < n 2**31`` exactly: :meth:`SecureAggregation._unmasked`
recovers ``S`` (float64 is exact far beyond ``2**41``) and the signed sum modulo ``2**31``.

The server never holds a device's vector: only masked vectors (uniform modulo ``2**62``),
encrypted key shares and public keys, and the unmasked sum of at least ``threshold`` devices.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from logging import WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common import parameters_to_ndarrays
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from fedlrs.federation_config import FederationConfig
from fedlrs.privacy import DpEvent, GaussianSumRelease, per_part_noise_multiplier
from fedlrs.privacy.distributed import (ShareRelease, ToppedUpGaussianSumRelease, grid_bits, server_view_epsilon,
                                        share_variance)
from fedlrs.protocol.parts import Part, Phase
from fedlrs.protocol.wire import (CLIPPING_RANGE, MAX_WEIGHT, MODULUS_RANGE, RING, WireSettings, decode, signed_sums,
                                  use_strong_masks, wire_parts)
from fedlrs.server.secagg_grid import CohortStrategy, ProtocolGrid

#: what each mode writes in the note of its ledger events (the ledger says which mode released)
NOTES = {"server-noise": "secure aggregation (SecAgg+); noise added by the server after unmasking",
         "distributed-noise": "secure aggregation (SecAgg+); discrete Gaussian shares added by the devices before "
                              "masking, topped up by the server to the accounted total"}
#: the facts of every secure release, beside run.json (realized counts: keep it with the operator)
FACTS_FILE = "secure_aggregation.json"


def _log(level: int, message: str, *args) -> None:
    from flwr.common.logger import log

    log(level, "[fedlrs] " + message, *args)


def install_strong_masks() -> None:
    """Make Flower's SecAgg+ workflow draw its masks from :func:`~fedlrs.protocol.wire.shake_masks` (idempotent, process-wide)."""
    use_strong_masks(importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow"))


def protocol_sizes(cohort: int, *, shares: float, threshold: float) -> tuple[int, int]:
    """``(k, t)``: each node's key shares (itself included) and the shares needed to rebuild a secret.

    ``k = cohort`` for ``shares == 1`` (every node a neighbour of every other), else
    ``round(shares * cohort)`` made odd (SecAgg+ neighbourhoods), at least 3, at most the cohort;
    ``t = max(2, ceil(threshold * k))``, below ``k`` when ``k < cohort`` (Flower's rule). A node
    may lose ``k - t`` of its neighbours; ``t > k / 2`` keeps an unmask request from gathering
    both secrets of one node.
    """
    k = cohort if shares >= 1 else round(shares * cohort)
    if k < cohort and k % 2 == 0:
        k += 1
    k = min(max(k, 3), cohort)
    t = min(max(2, math.ceil(threshold * k)), k if k == cohort else k - 1)
    return k, t


@dataclass
class SecureRound:
    """What one secure aggregation gave the billboard, and what happened.

    ``sums``: the decoded sums of the ``counted`` devices (zeros when ``aborted``);
    ``signed``: their integer form (grid units, None when aborted); ``bits``: the grid
    ``2**-bits`` of the clipping bounds; ``share_variance``: each device's share (grid
    units, 0 in mode "server-noise"); ``num_shares``, ``threshold``: the SecAgg+ sizes.
    """

    release: str
    phase: str
    sampled: list[int]
    counted: list[int] = field(default_factory=list)
    refusals: list[tuple[int, str]] = field(default_factory=list)
    aborted: str = ""
    bits: int = 0
    share_variance: int = 0
    num_shares: int = 0
    threshold: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    signed: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def missing(self) -> list[int]:
        """Sampled nodes whose contribution is not in the sum (dropped out, refused, or the protocol aborted)."""
        return sorted(set(self.sampled) - set(self.counted))

    def facts(self, parts: list[Part]) -> dict:
        """JSON-ready: the cohort, who was counted, refused or missing, why it aborted, the grid and share sizes."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("sums", "signed", "refusals")}
        out["missing"] = self.missing
        out["refusals"] = [{"node_id": n, "reason": r} for n, r in self.refusals]
        out["l2_grid_units"] = 2.0 ** self.bits * math.sqrt(len(parts))
        out["dim"] = sum(p.size for p in parts)
        return out


class SecureAggregation:
    """The billboard's secure collection and release (``secure-aggregation`` "server-noise" or "distributed-noise").

    :meth:`collect` runs SecAgg+ for a cohort and returns the decoded sum of the devices that
    stayed (:class:`SecureRound`); :meth:`release` noises it through the ledger (the event's note
    names the mode): in "server-noise" the usual :class:`~fedlrs.privacy.GaussianSumRelease`, in
    "distributed-noise" :class:`~fedlrs.privacy.distributed.ToppedUpGaussianSumRelease`, which adds
    only the shares of the devices that dropped out. :meth:`write_facts` writes every round's
    facts and the epsilon against a curious server (:func:`~fedlrs.privacy.distributed.server_view_epsilon`).
    """

    def __init__(self, config: FederationConfig):
        self.config = config
        self.mode = config.secure_aggregation
        self.rounds: list[SecureRound] = []
        self.earlier: list[dict] = []  # facts of the releases of an interrupted process of this run
        self.note = NOTES[self.mode]

    def load_earlier(self, folder: Path) -> None:
        """Keep the releases in ``folder/secure_aggregation.json`` (an interrupted process of this run wrote them)."""
        path = Path(folder) / FACTS_FILE
        if not path.is_file():
            return
        facts = json.loads(path.read_text())
        if facts.get("mode") != self.mode:
            raise ValueError(f"{path} is of mode {facts.get('mode')!r}, this run is {self.mode!r}.")
        self.earlier = list(facts["releases"])

    def noise_std_units(self, phase: Phase, noise_multiplier: float | None) -> float:
        """Std of the devices' summed shares per coordinate, in clipping bounds: ``z sqrt(P)`` (0 unless distributed)."""
        if self.mode != "distributed-noise":
            return 0.0
        if noise_multiplier is None or not noise_multiplier > 0:
            raise ValueError(f"noise_multiplier == {noise_multiplier!r}: distributed noise needs the accounted z > 0.")
        return per_part_noise_multiplier(accounted=noise_multiplier, parts=len(wire_parts(self.config, phase)))

    def collect(self, grid: Grid, nodes: list[int], phase: Phase, published: list[np.ndarray], round_number: int, *,
                noise_multiplier: float | None = None) -> SecureRound:
        """SecAgg+ over ``nodes``: the sum of the contributions of those that stayed to the masked-vector stage.

        ``published``: what the devices need to compute their contribution (``[U]``, ``[]`` for the
        moments init, a network's shared state in its order), sent as the FitIns parameters.
        """
        parts = wire_parts(self.config, phase)
        release = "init" if phase == "moments" else f"round-{round_number}"
        outcome = SecureRound(release, phase, sorted(nodes))
        outcome.sums = {p.name: torch.zeros(p.shape, dtype=self.config.torch_dtype) for p in parts}
        self.rounds.append(outcome)
        std = self.noise_std_units(phase, noise_multiplier)
        if len(nodes) < 2:
            outcome.aborted = f"{len(nodes)} node(s) in the cohort; SecAgg+ needs 2 to hide a contribution"
            _log(WARNING, "%s: %s: nothing is counted", release, outcome.aborted)
            return outcome
        outcome.bits = grid_bits(cohort=len(nodes), noise_std_units=std)
        outcome.share_variance = share_variance(noise_std_units=std, bits=outcome.bits, shares=len(nodes)) if std else 0
        outcome.num_shares, outcome.threshold = protocol_sizes(len(nodes), shares=self.config.secagg_shares,
                                                               threshold=self.config.secagg_threshold)
        settings = WireSettings(phase, round_number, outcome.bits, outcome.share_variance)
        strategy = CohortStrategy(sorted(nodes), published, settings)
        view = ProtocolGrid(grid, cohort=nodes, parts=parts, timeout=self.config.round_timeout, label=release)
        workflow = SecAggPlusWorkflow(
            num_shares=1.0 if outcome.num_shares == len(nodes) else outcome.num_shares,
            reconstruction_threshold=outcome.threshold, max_weight=MAX_WEIGHT, clipping_range=CLIPPING_RANGE,
            quantization_range=RING, modulus_range=MODULUS_RANGE, timeout=self.config.round_timeout)
        state = RecordDict({"config": ConfigRecord({"current_round": round_number}), "parameters": ArrayRecord()})
        context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}),
                                strategy=strategy)
        install_strong_masks()
        try:
            self._run_stages(workflow, view, context)
            outcome.signed = self._unmasked(strategy.results, len(parts))
        except Exception as error:  # noqa: BLE001 - a failed protocol counts nothing; the run goes on
            outcome.aborted = str(error) or type(error).__name__
            _log(WARNING, "%s: secure aggregation aborted (%s): nothing is counted", release, outcome.aborted)
        else:
            outcome.counted = sorted(int(proxy.node_id) for proxy, _ in strategy.results)
            outcome.sums = decode(outcome.signed, parts, bits=outcome.bits, dtype=self.config.torch_dtype)
        outcome.refusals = view.refusals
        return outcome

    @staticmethod
    def _run_stages(workflow: SecAggPlusWorkflow, grid: Grid, context: LegacyContext) -> None:
        """The workflow's four stages in order, forgetting the nodes that left before the masks were made.

        Flower 1.41's unmask stage counts every node that left after the setup as dropped and asks
        for the shares of its mask key, which a node that left before sharing keys never gave (the
        round would abort), and removes the masks of a dropped node with all its neighbours, also
        those that never shared a mask with it. A node that did not finish the share-keys stage
        made no mask with anyone, so it leaves the cohort and every neighbourhood there.
        """
        state = WorkflowState()
        for name in ("setup", "share_keys", "collect_masked_vectors", "unmask"):
            if not getattr(workflow, f"{name}_stage")(grid, context, state):
                raise RuntimeError(f"SecAgg+ halted at its {name} stage (too few nodes left, or no shares to "
                                   f"rebuild the masks)")
            if name == "share_keys":
                keyed = set(state.active_node_ids)
                state.sampled_node_ids = keyed
                state.nid_to_neighbours = {n: neighbours & keyed for n, neighbours in state.nid_to_neighbours.items()
                                           if n in keyed}

    @staticmethod
    def _unmasked(results: list, num_parts: int) -> list[np.ndarray]:
        """The signed integer sums from the workflow's average ``(S - n 2**30) / n`` (see the module docstring)."""
        n = len(results)
        arrays = parameters_to_ndarrays(results[0][1].parameters)
        if len(arrays) != num_parts:
            raise RuntimeError(f"the unmasked aggregate has {len(arrays)} arrays, expected {num_parts}")
        ring_sums = []
        for average in arrays:
            total = np.rint(np.asarray(average, dtype=np.float64) * n + n * (RING // 2))
            if not np.isfinite(total).all() or total.min(initial=0) < 0 or total.max(initial=0) >= n * RING:
                raise RuntimeError("the unmasked sum is outside [0, n 2**31): the masks did not cancel")
            ring_sums.append(total.astype(np.int64))
        return signed_sums(ring_sums)

    def noise_present(self, outcome: SecureRound, noise_multiplier: float) -> float:
        """Accounted multiplier of the shares in the sum: ``z sqrt(counted / sampled)`` (0 unless distributed).

        The shares of the devices that stayed, each of variance ``>= (z sqrt(P) 2**bits)^2 / sampled``
        (rounded up); the top-up adds what the others would have brought.
        """
        if self.mode != "distributed-noise" or outcome.aborted:
            return 0.0
        return noise_multiplier * math.sqrt(min(1.0, len(outcome.counted) / len(outcome.sampled)))

    def release(self, private, sums: dict[str, torch.Tensor], event: DpEvent, expected_count: float) -> dict[str, torch.Tensor]:
        """Noise the sums of the last :meth:`collect` through the ledger (event first, its note naming the mode), over ``expected_count``.

        ``private`` is the billboard's :class:`~fedlrs.privacy.release.PrivateServer` (its ledger,
        noise source and budget).
        """
        outcome = self.rounds[-1]
        parts = wire_parts(self.config, outcome.phase)
        kwargs = dict(noise_multiplier=event.noise_multiplier, bounds={p.name: p.bound for p in parts},
                      expected_count=expected_count, noise=private.noise,
                      symmetric_parts=frozenset(p.name for p in parts if p.symmetric))
        if self.mode == "distributed-noise":
            mechanism = ToppedUpGaussianSumRelease(noise_present=self.noise_present(outcome, event.noise_multiplier),
                                                   **kwargs)
        else:
            mechanism = GaussianSumRelease(**kwargs)
        return mechanism.release(sums, ledger=private.ledger, event=replace(event, note=self.note),
                                 budget=private.budget)

    def server_view(self, delta: float) -> dict:
        """Epsilon against a curious server for a user in every release (distributed noise only), and what it rests on."""
        if self.mode != "distributed-noise":
            return {"epsilon": None, "protection": "none beyond SecAgg+: the server sees the exact sum of the cohort's "
                                                   "clipped contributions (at least `threshold` of them)"}
        facts = self.earlier + [r.facts(wire_parts(self.config, r.phase)) for r in self.rounds]
        releases = [ShareRelease(shares=len(f["counted"]), sigma2=f["share_variance"], l2=f["l2_grid_units"], dim=f["dim"])
                    for f in facts if f["counted"]]
        epsilon = server_view_epsilon(releases, delta=delta) if releases else 0.0
        return {"epsilon": epsilon, "delta": delta, "releases": len(releases),
                "protection": "the devices' discrete Gaussian shares present in each unmasked sum (those that dropped "
                              "out are missing), KLS 2021 Prop. 14; zero-out neighbours, no sampling amplification "
                              "(the server knows the cohort), a user taken to be in every release"}

    def summary(self) -> dict:
        """For the privacy report: the mode and what protects against whom (no realized counts)."""
        public = ("the ledger's events (the noise is the accounted total: "
                  + ("added by the server after unmasking" if self.mode == "server-noise" else
                     "the devices' discrete Gaussian shares, topped up by the server for those that dropped out")
                  + "); quantized contributions stay within their clipping bounds")
        server = ("nothing beyond SecAgg+: the server learns the exact sum of the cohort, never one contribution"
                  if self.mode == "server-noise" else
                  f"the shares present in each unmasked sum; epsilon in {FACTS_FILE} (server_view)")
        return {"mode": self.mode, "protocol": "Flower SecAgg+ with SHAKE-256 masks",
                "secagg_shares": self.config.secagg_shares, "secagg_threshold": self.config.secagg_threshold,
                "against_whoever_reads_U": public, "against_the_server": server}

    def write_facts(self, folder: Path, delta: float) -> Path:
        """``secure_aggregation.json``: the mode, every release's facts (an interrupted process's first) and the
        epsilon against the server; the billboard rewrites it (atomically) after every SecAgg+ run."""
        facts = {"mode": self.mode, "server_view": self.server_view(delta),
                 "releases": self.earlier + [r.facts(wire_parts(self.config, r.phase)) for r in self.rounds]}
        path = folder / FACTS_FILE
        tmp = folder / (FACTS_FILE + ".tmp")
        tmp.write_text(json.dumps(facts, indent=2, default=float))
        os.replace(tmp, path)
        return path
