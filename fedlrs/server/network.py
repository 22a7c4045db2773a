"""A network task on the server: the billboard's rules for a network method's shared state (``task = "nn-*"``).

Round t, as in the in-process loop :func:`fedlrs.tasks.network.run_federated` (same seed, same
sampler, same release): :class:`NetworkBillboard` checks the budget and names the event
``"round-t"``, Poisson-samples the connected nodes (:func:`fedlrs.privacy.sampling.sample_nodes`),
sends each the shared state (message ``train.nn``: ArrayRecord ``shared`` and ``round-config``);
the device (:mod:`fedlrs.client.network`) answers with its clipped flattened contribution; the
server refuses any reply that is not exactly such a vector (keys, shape, dtype, finite,
norm <= ``nn-clip``; :func:`fedlrs.protocol.validation.validate_reply`), sums the rest in node
order, releases ``(sum + N(0, z^2 C^2 I)) / (q N)`` through the ledger
(:func:`fedlrs.nn.federated.release_parts`), and steps with ``method.apply``. With adaptive clipping
(private, ``clip-quantile > 0``) the round config carries the round's bound ``clip-bound`` C_t
(``nn-clip`` in round 1), a reply also holds ``H``, the one-hot bin of its unclipped norm (refused
unless exactly one-hot: :func:`fedlrs.protocol.validation.require_one_hot`), both parts are released
together (one event) and C_{t+1} is :func:`fedlrs.nn.federated.next_bound` of the released ``H``
(the quantile over ``1 + D sigma^2 / (q N)^2``), as in the in-process loop. At the end
(``personalize-at-end``) every node personalizes (``query.nn_personalize``) and keeps it.

As on the linear billboard, ``checkpoint-dir`` holds the shared state, the round, the sampler's
state, z and the next round's clip bound after every round (atomically) beside the append-only
ledger, and a restarted server goes on from there (:meth:`~fedlrs.server.billboard.Billboard._resume`).

Secure aggregation (``secure-aggregation = server-noise | distributed-noise``) works as on the
linear billboard (:mod:`fedlrs.server.secure_aggregation`): the shared state goes out as the
SecAgg+ request's arrays, each device answers with its clipped vector in the integer wire format
(one part, ``contribution`` (D,), bound ``nn-clip``), masked, and the server unmasks only the
cohort's sum and releases it through the ledger. SecAgg+ runs with the fixed bound only: a private run
with ``clip-quantile > 0`` and secure aggregation is refused (:func:`fedlrs.nn.run_config.check_network_knobs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from logging import INFO, WARNING

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from fedlrs.federation_config import FederationConfig
from fedlrs.nn.federated import HISTOGRAM, PART, contribution_shapes, initial_state, next_bound, private_server, release_parts, round_event, round_parts
from fedlrs.nn.method import FederatedMethod, State
from fedlrs.nn.network import flat_size, unflatten
from fedlrs.nn.run_config import LINEAR, check_network_knobs, contribution_dimension, network_config, network_setup
from fedlrs.privacy import BudgetExceededError
from fedlrs.privacy.release import PrivateServer
from fedlrs.privacy.sampling import sample_nodes
from fedlrs.protocol.messages import CLIP_BOUND, PERSONALIZE_NN, ROUND_CONFIG, SHARED, TRAIN_NN, state_arrays
from fedlrs.protocol.validation import require_one_hot
from fedlrs.server.billboard import Billboard, BillboardResult


def _log(level: int, message: str, *args) -> None:
    from flwr.common.logger import log

    log(level, "[fedlrs.nn] " + message, *args)


@dataclass
class NetworkBillboardResult(BillboardResult):
    """A network run: ``shared`` is the final shared state (``U`` is its ``"U"`` when the method has one);
    ``clip_bounds``: round t -> its bound C_t (private runs, the rounds run by this process)."""

    shared: State = field(default_factory=dict)
    clip_bounds: dict[int, float] = field(default_factory=dict)


class NetworkBillboard(Billboard):
    """The billboard's messaging, reply checks, ledger and report, for a network method's shared state."""

    def __init__(self, config: FederationConfig, method: FederatedMethod | None = None):
        super().__init__(config)
        check_network_knobs(config)
        if config.task == LINEAR:
            raise ValueError("task == 'linear' is the AMHT-LRS Billboard, not a network run.")
        self.network = network_config(config)
        self.method = method if method is not None else network_setup(config)[1]
        self.dimension: int | None = None

    def _parts(self, phase) -> dict[str, tuple[tuple[int, ...], float]]:
        """``{name: (shape, bound)}`` of a valid reply: :func:`~fedlrs.nn.federated.round_parts` for the round's bound (infinite when not private)."""
        parts = round_parts(self.network, self.dimension, self.clip_bound)
        return {name: (shape, bound if self.network.private else math.inf) for name, (shape, bound) in parts.items()}

    def _validate(self, reply, parts) -> dict[str, torch.Tensor]:
        """The billboard's checks, and with adaptive clipping ``H`` exactly one-hot."""
        tensors = super()._validate(reply, parts)
        if HISTOGRAM in tensors:
            require_one_hot(HISTOGRAM, tensors[HISTOGRAM])
        return tensors

    def _message_type(self, phase) -> str:
        return TRAIN_NN

    def _published_arrays(self, shared: State | None) -> list:
        """Under secure aggregation the shared state goes out as the SecAgg+ request's arrays, in its order."""
        return [] if shared is None else [v.detach().cpu().numpy() for v in shared.values()]

    def _released(self, sums: dict[str, torch.Tensor], expected_count: float, event) -> dict[str, torch.Tensor]:
        """The released means of the round: through SecAgg+'s release (its ledger note names the mode) or :func:`release_parts`."""
        if self.secure is not None and self.private is not None:
            return self.secure.release(self.private, sums, event, max(expected_count, 1e-12))
        return release_parts(sums, self.network, expected_count, self.private, event, self.clip_bound)

    def _content(self, shared: State | None, round_number: int) -> RecordDict:
        settings = {"round": round_number}
        if self.network.adaptive:
            settings[CLIP_BOUND] = self.clip_bound
        content = RecordDict({ROUND_CONFIG: ConfigRecord(settings)})
        if shared is not None:
            content[SHARED] = ArrayRecord({k: Array(a) for k, a in state_arrays(shared).items()})
        return content

    def run(self, grid: Grid) -> NetworkBillboardResult:
        """``num-server-rounds`` rounds of the network method over the connected nodes (see the module docstring)."""
        c, net = self.config, self.network
        generator = torch.Generator().manual_seed(c.seed)
        ledger = self._open_ledger()
        nodes = self._wait_for_nodes(grid)
        _log(INFO, "%d nodes connected (task %s)", len(nodes), c.task)
        checkpoint = self._resume(ledger, generator)
        if checkpoint is not None:
            shared = {k: v.to(device=net.device, dtype=net.torch_dtype) for k, v in checkpoint.shared.items()}
            start = checkpoint.round
            self.private = None if ledger is None else PrivateServer(net, ledger, retry_ids=True)
            self._restore_noise_multiplier(checkpoint)
            self.clip_bound = net.clip if checkpoint.clip_bound is None else checkpoint.clip_bound
        else:
            if not nodes:
                raise RuntimeError(f"no node connected within wait-for-nodes == {c.wait_for_nodes} s.")
            shared, start = initial_state(self.method, net, generator), 0
            self.private = private_server(net, ledger, retry_ids=True)
            self.clip_bound = net.clip
            self._checkpoint(0, shared, generator)
        shapes = contribution_shapes(self.method, shared)
        self.dimension = flat_size(shapes)
        if self.secure is not None and self.dimension != contribution_dimension(c):
            raise ValueError(f"the method's contribution has {self.dimension} numbers, the devices' wire format "
                             f"{contribution_dimension(c)}: secure aggregation needs the run config's own method.")
        stopped, completed, bounds = "rounds done", start, {}
        for round_number in range(start + 1, net.rounds + 1):
            try:
                event = round_event(self.private, round_number)
                nodes = sorted(int(n) for n in grid.get_node_ids())
                sampled = sample_nodes(nodes, c.sample_rate, generator)
                self.sampled[round_number] = sampled
                sums = self._collect(grid, sampled, "round", shared, round_number)
                released = self._released(sums, c.sample_rate * len(nodes), event)
            except BudgetExceededError as error:
                stopped = f"budget: {error}"
                _log(WARNING, "round %d not released: %s", round_number, error)
                break
            shared = self.method.apply(shared, unflatten(released[PART], shapes))
            if net.private:
                bounds[round_number] = self.clip_bound
            self.clip_bound = next_bound(released, net, self.clip_bound, noise_multiplier=None if self.private is None else self.private.noise_multiplier,
                                          expected_count=c.sample_rate * len(nodes))
            self._checkpoint(round_number, shared, generator)
            completed = round_number
            _log(INFO, "round %d: %d sampled, %d counted, shared state published", round_number, len(sampled),
                 self.counted.get(round_number, 0))
        if c.personalize_at_end:
            self._exchange(grid, sorted(int(n) for n in grid.get_node_ids()), PERSONALIZE_NN, shared, completed)
        z = None if self.private is None else self.private.noise_multiplier
        result = NetworkBillboardResult(shared.get("U"), completed, stopped, z, ledger, self.refusals, self.dropped,
                                        self.sampled, shared=shared, clip_bounds=bounds)
        self.write_report(result)
        return result
