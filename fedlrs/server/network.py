"""A network task on the server: the billboard's rules for a network method's shared state (``task = "nn-*"``).

Round t is :class:`fedlrs.tasks.network.NetworkTask`'s on the one loop (:func:`fedlrs.tasks.loop.run_task`)
over the Grid (:class:`fedlrs.server.grid_transport.GridTransport`), as the in-process
:func:`fedlrs.tasks.network.run_federated` runs it over a batch (same seed, same sampler, same release):
the loop checks the budget and names the event ``"round-t"``, Poisson-samples the connected nodes,
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

import functools
import math
from dataclasses import dataclass, field
from logging import INFO, WARNING

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from fedlrs.federation_config import FederationConfig
from fedlrs.nn.federated import HISTOGRAM, contribution_shapes, private_server, round_parts
from fedlrs.nn.method import FederatedMethod, State
from fedlrs.nn.network import flat_size
from fedlrs.nn.run_config import NETWORK_TASKS, check_network_knobs, contribution_dimension, network_setup
from fedlrs.privacy.release import PrivateServer
from fedlrs.protocol.messages import CLIP_BOUND, PERSONALIZE_NN, ROUND_CONFIG, SHARED, TRAIN_NN, state_arrays
from fedlrs.protocol.validation import require_one_hot
from fedlrs.server.billboard import Billboard, BillboardResult
from fedlrs.server.grid_transport import GridTransport, server_log
from fedlrs.tasks.loop import run_task
from fedlrs.tasks.network import NetworkTask


_log = functools.partial(server_log, "fedlrs.nn")


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
        if config.task not in NETWORK_TASKS:
            raise ValueError(f"task == {config.task!r} is not a network run (one of {list(NETWORK_TASKS)}): it has a billboard of its own.")
        self.network = check_network_knobs(config)
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

    def _content(self, shared: State | None, round_number: int) -> RecordDict:
        settings = {"round": round_number}
        if self.network.adaptive:
            settings[CLIP_BOUND] = self.clip_bound
        content = RecordDict({ROUND_CONFIG: ConfigRecord(settings)})
        if shared is not None:
            content[SHARED] = ArrayRecord({k: Array(a) for k, a in state_arrays(shared).items()})
        return content

    def published(self, shared: State) -> State:
        """What the devices get of the loop's shared state: the method's state (the bound travels in the round config)."""
        return shared["state"]

    def run(self, grid: Grid) -> NetworkBillboardResult:
        """``num-server-rounds`` rounds of the network method over the connected nodes on the one loop
        (:func:`fedlrs.tasks.loop.run_task`: :class:`~fedlrs.tasks.network.NetworkTask` over the Grid,
        :class:`~fedlrs.server.grid_transport.GridTransport`; see the module docstring)."""
        c, net = self.config, self.network
        generator = torch.Generator().manual_seed(c.seed)
        ledger = self._open_ledger()
        nodes = self._wait_for_nodes(grid)
        _log(INFO, "%d nodes connected (task %s)", len(nodes), c.task)
        checkpoint = self._resume(ledger, generator)
        if checkpoint is not None:
            state = {k: v.to(device=net.device, dtype=net.torch_dtype) for k, v in checkpoint.shared.items()}
            self.private = None if ledger is None else PrivateServer(net, ledger, retry_ids=True)
            self._restore_noise_multiplier(checkpoint)
            resume = (checkpoint.round, {"state": state, "bound": net.clip if checkpoint.clip_bound is None else checkpoint.clip_bound})
        else:
            if not nodes:
                raise RuntimeError(f"no node connected within wait-for-nodes == {c.wait_for_nodes} s.")
            self.private, resume = private_server(net, ledger, retry_ids=True), None
        task = NetworkTask(self.method, net, expected_count=c.sample_rate * len(nodes),
                           noise_multiplier=None if self.private is None else self.private.noise_multiplier)
        shared = resume[1] if resume is not None else task.init_shared(generator)
        task.shapes = contribution_shapes(self.method, shared["state"])
        self.dimension = flat_size(task.shapes)
        if self.secure is not None and self.dimension != contribution_dimension(c):
            raise ValueError(f"the method's contribution has {self.dimension} numbers, the devices' wire format "
                             f"{contribution_dimension(c)}: secure aggregation needs the run config's own method.")
        bounds: dict[int, float] = {}

        def record(round_number: int, shared: State) -> None:
            if round_number > 0 and net.private:
                bounds[round_number] = self.clip_bound  # the bound this round clipped to (sent with its request)
            self.clip_bound = shared["bound"]  # checkpointed: the next round's
            self._checkpoint(round_number, shared["state"], generator)
            if round_number > 0:
                _log(INFO, "round %d: %d sampled, %d counted, shared state published", round_number, len(self.sampled[round_number]),
                     self.counted.get(round_number, 0))

        self.clip_bound = shared["bound"]
        if resume is None:
            record(0, shared)  # the initial state's checkpoint
        outcome = run_task(task, GridTransport(self, grid, nodes), generator=generator, private=self.private, rounds=net.rounds,
                           device=net.device, record=record, resume=(0, shared) if resume is None else resume)
        shared, completed = outcome.shared["state"], outcome.completed
        if outcome.stopped != "rounds done":
            _log(WARNING, "round %d not released: %s", completed + 1, outcome.stopped)
        if c.personalize_at_end:
            self._exchange(grid, sorted(int(n) for n in grid.get_node_ids()), PERSONALIZE_NN, shared, completed)
        z = None if self.private is None else self.private.noise_multiplier
        result = NetworkBillboardResult(shared.get("U"), completed, outcome.stopped, z, ledger, self.refusals, self.dropped,
                                        self.sampled, shared=shared, clip_bounds=bounds)
        self.write_report(result)
        return result
