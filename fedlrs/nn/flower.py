"""The network methods on Flower: the rules of :func:`fedlrs.nn.federated.run_federated`, one user per node.

Selected by the run config's ``task`` (``"nn-digits"``, ``"nn-movielens"``, ``"nn-synthetic"``;
``"linear"``, the default, is the AMHT-LRS billboard). Node ``partition-id`` i is user i of
:func:`fedlrs.nn.tasks.load_task` ``(task, seed=data-seed, quick=nn-quick)``, so the
federation has as many nodes as the task has users.

Round t, as in the in-process loop (same seed, same sampler, same release):

* server (:class:`NetworkBillboard`): checks the budget and names the event ``"round-t"``,
  Poisson-samples the connected nodes (:func:`fedlrs.server.sampling.poisson_sample`), sends
  each the shared state (message ``train.nn``: ArrayRecord ``shared`` and ``round-config``);
* client (:func:`train_nn`): ``local_update`` of its own ``w_i, b_i`` (kept in
  ``context.state``, never sent), ``contribution``, flattened and clipped to ``nn-clip``;
  replies with that vector alone (ArrayRecord ``contribution``, array ``contribution`` (D,));
* server: refuses any reply that is not exactly such a vector (keys, shape, dtype, finite,
  norm <= ``nn-clip``; :func:`fedlrs.server.validation.validate_reply`), sums the rest in node
  order, releases ``(sum + N(0, z^2 C^2 I)) / (q N)`` through the ledger
  (:func:`fedlrs.nn.federated.release_mean`), and steps with ``method.apply``.

At the end (``personalize-at-end``) every node personalizes (``query.nn_personalize``) and keeps it.

As on the linear billboard, ``checkpoint-dir`` holds the shared state, the round, the sampler's
state and z after every round (atomically) beside the append-only ledger, and a restarted server
goes on from there (:meth:`~fedlrs.server.billboard.Billboard._resume`); a node with a
``state-dir`` keeps its personal state there too, so a restarted SuperNode goes on with its own
``w_i, b_i``.

Secure aggregation (``secure-aggregation = server-noise | distributed-noise``) works as on the
linear billboard (:mod:`fedlrs.server.secure_aggregation`): the shared state goes out as the
SecAgg+ request's arrays, each device answers with its clipped vector in the integer wire format
(one part, ``contribution`` (D,), bound ``nn-clip``), masked, and the server unmasks only the
cohort's sum and releases it through the ledger.
"""

from __future__ import annotations

import functools
import math
import zipfile
from dataclasses import dataclass, field
from logging import INFO, WARNING

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from fedlrs.client.data import DataError
from fedlrs.client.state import read_arrays, save_arrays, state_path
from fedlrs.federation_config import FederationConfig
from fedlrs.nn.federated import (
    PART,
    NetworkConfig,
    clipped_sum,
    contribution_shapes,
    flat_contributions,
    initial_state,
    prepare_examples,
    private_server,
    release_mean,
    round_event,
)
from fedlrs.nn.lrs import LRSNetwork
from fedlrs.nn.method import FederatedMethod, State, UserExamples
from fedlrs.nn.network import flat_size, unflatten
from fedlrs.nn.tasks import TASKS, Task, load_task
from fedlrs.privacy import BudgetExceededError
from fedlrs.server.billboard import ROUND_CONFIG, Billboard, BillboardResult
from fedlrs.server.sampling import poisson_sample
from fedlrs.simulations.engine import PrivateServer

LINEAR = "linear"
#: values of the run config's ``task``
TASK_CHOICES = (LINEAR, *TASKS)
TRAIN_NN = "train.nn"
PERSONALIZE_NN = "query.nn_personalize"
SHARED = "shared"
CONTRIBUTION = "contribution"
PERSONAL_STATE = "fedlrs.nn-personal"
PERSONAL_STATE_FILE = "fedlrs-nn-personal-state.npz"

#: NetworkConfig field -> the run-config key it comes from
_NETWORK_KEYS = {"rounds": "num-server-rounds", "sample_rate": "sample-rate", "clip": "nn-clip", "private": "private",
                 "target_epsilon": "target-epsilon", "delta": "delta", "accountant": "accountant",
                 "noise_multiplier": "noise-multiplier", "noise_seed": "noise-seed", "seed": "seed", "dtype": "dtype"}
#: LRSNetwork argument -> the run-config key it comes from
_METHOD_KEYS = {"rank": "nn-rank", "sparsity": "nn-sparsity", "local_steps": "nn-local-steps", "lr_w": "nn-lr-w",
                "lr_b": "nn-lr-b", "server_lr": "nn-server-lr", "subspace_lr": "nn-subspace-lr"}


def _log(level: int, message: str, *args) -> None:
    from flwr.common.logger import log

    log(level, "[fedlrs.nn] " + message, *args)


def _kebab_error(error: ValueError, keys: dict[str, str]) -> ValueError:
    """``error`` with the first ``name ==`` of a known argument renamed to its run-config key."""
    text = str(error)
    for name, key in keys.items():
        if text.startswith(f"{name} =="):
            return ValueError(key + text[len(name):])
    return ValueError(text)


def network_config(config: FederationConfig) -> NetworkConfig:
    """The :class:`NetworkConfig` of a network run (errors name the run-config key)."""
    values = {name: getattr(config, key.replace("-", "_")) for name, key in _NETWORK_KEYS.items()}
    try:
        return NetworkConfig(**values)
    except ValueError as error:
        raise _kebab_error(error, _NETWORK_KEYS) from error


def check_network_knobs(config: FederationConfig) -> None:
    """Refuse a network run whose loop knobs break a rule, or that asks for what it cannot do (errors in kebab-case)."""
    if config.task not in TASK_CHOICES:
        raise ValueError(f"task == {config.task!r}, must be one of {list(TASK_CHOICES)}.")
    if config.task == LINEAR:
        return
    network_config(config)


@functools.lru_cache(maxsize=2)
def node_task(name: str, seed: int, quick: bool) -> Task:
    """The task, loaded once per process (every simulated node of the process shares it)."""
    return load_task(name, seed=seed, quick=quick)


def network_method(config: FederationConfig, task: Task) -> FederatedMethod:
    """LRS-NN on the task's network and loss with the run's ``nn-*`` knobs (errors name the run-config key)."""
    knobs = {name: getattr(config, key.replace("-", "_")) for name, key in _METHOD_KEYS.items()}
    try:
        return LRSNetwork(task.make_module, loss=task.loss, **knobs)
    except ValueError as error:
        raise _kebab_error(error, _METHOD_KEYS) from error


@functools.lru_cache(maxsize=4)
def _setup(config: FederationConfig) -> tuple[Task, FederatedMethod, NetworkConfig]:
    task = node_task(config.task, config.data_seed, config.nn_quick)
    return task, network_method(config, task), network_config(config)


@functools.lru_cache(maxsize=4)
def network_shapes(config: FederationConfig) -> tuple[dict[str, torch.Size], dict[str, torch.Size]]:
    """``(shared shapes, contribution shapes)`` of the run's method, both in their order (no data needed)."""
    _, method, net = _setup(config)
    shared = initial_state(method, net, torch.Generator().manual_seed(0))
    return {k: v.shape for k, v in shared.items()}, contribution_shapes(method, shared)


def contribution_dimension(config: FederationConfig) -> int:
    """D, the length of one user's flattened contribution (the one part sent, ``contribution``)."""
    return flat_size(network_shapes(config)[1])


# ---------------------------------------------------------------------- records
def state_to_record(state: State) -> ArrayRecord:
    """Tensors as an ArrayRecord, in the state's order."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in state.items()})


def record_to_state(record: ArrayRecord, dtype: torch.dtype) -> State:
    """Inverse of :func:`state_to_record` (float arrays in ``dtype``), in the record's order."""
    out = {}
    for k in record.keys():
        value = torch.from_numpy(record[k].numpy().copy())
        out[k] = value.to(dtype) if value.is_floating_point() else value
    return out


# ---------------------------------------------------------------------- client
def node_examples(config: FederationConfig, node_config) -> tuple[FederatedMethod, NetworkConfig, UserExamples]:
    """The run's method and loop config, and this node's examples (user ``partition-id`` of the task; n = 1)."""
    task, method, net = _setup(config)
    for key in ("partition-id", "num-partitions"):
        if key not in node_config:
            raise DataError(f"task == {config.task!r} needs {key!r} in the node config.")
    index, users = int(node_config["partition-id"]), int(node_config["num-partitions"])
    if users != task.train.num_users:
        raise DataError(f"num-partitions == {users}, must be the {task.train.num_users} users of task {config.task!r} "
                        f"(nn-quick == {config.nn_quick}).")
    if not 0 <= index < users:
        raise DataError(f"partition-id == {index}, must be in [0, num-partitions == {users}).")
    return method, net, prepare_examples(task.train.select(torch.tensor([index])), net)


def _node_generator(config: FederationConfig, node_config, round_number: int) -> torch.Generator:
    """The node's own randomness for a round: seeded by (seed, partition-id, round)."""
    partition = int(node_config.get("partition-id", 0))
    return torch.Generator().manual_seed((config.seed * 1_000_003 + partition) * 100_003 + round_number)


def _personal(context: Context, method: FederatedMethod, shared: State, dtype: torch.dtype) -> State:
    """This user's personal state: from ``context.state``, else from the node's ``state-dir``, else a fresh one.

    A file whose arrays do not have the shapes this run's method gives (another ``nn-rank``,
    another task) is not used: the user starts afresh and the run goes on.
    """
    if PERSONAL_STATE in context.state.array_records:
        return record_to_state(context.state.array_records[PERSONAL_STATE], dtype)
    fresh = method.init_personal(shared, 1)
    path = state_path(context.node_config, PERSONAL_STATE_FILE)
    if path is not None and path.is_file():
        try:
            stored = {k: torch.from_numpy(v) for k, v in read_arrays(path).items()}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            _log(WARNING, "%s unreadable (%s); the personal state starts afresh", path, error)
            return fresh
        if {k: tuple(v.shape) for k, v in stored.items()} == {k: tuple(v.shape) for k, v in fresh.items()}:
            return {k: stored[k].to(fresh[k].dtype) for k in fresh}
        _log(WARNING, "%s holds a personal state of other shapes (another task or nn-rank); it starts afresh", path)
    return fresh


def _keep_personal(context: Context, personal: State) -> None:
    """Keep the personal state in ``context.state`` and, when the node has a ``state-dir``, on disk (atomically)."""
    context.state.array_records[PERSONAL_STATE] = state_to_record(personal)
    path = state_path(context.node_config, PERSONAL_STATE_FILE)
    if path is not None:
        save_arrays(path, {k: v.detach().cpu().numpy() for k, v in personal.items()})


def _received(message: Message, dtype: torch.dtype) -> tuple[State, int]:
    content = message.content
    return record_to_state(content.array_records[SHARED], dtype), int(content.config_records[ROUND_CONFIG]["round"])


def train_nn(message: Message, context: Context, config: FederationConfig) -> Message:
    """One round on the device: ``local_update``, then the flattened contribution clipped to ``nn-clip`` and nothing else.

    ``w_i, b_i`` (the personal state) stay in ``context.state``; the reply holds one
    array, ``contribution`` (D,), scaled to L2 norm <= C when the run is private.
    """
    method, net, data = node_examples(config, context.node_config)
    shared, round_number = _received(message, net.torch_dtype)
    vector = _local_round(method, net, data, shared, round_number, context, config)
    return Message(RecordDict({CONTRIBUTION: ArrayRecord({PART: Array(vector.detach().cpu().numpy())})}), reply_to=message)


def _local_round(method: FederatedMethod, net: NetworkConfig, data: UserExamples, shared: State, round_number: int,
                 context: Context, config: FederationConfig) -> torch.Tensor:
    """``local_update`` of the kept personal state (kept again), then the contribution flattened and clipped."""
    generator = _node_generator(config, context.node_config, round_number)
    personal = method.local_update(shared, _personal(context, method, shared, net.torch_dtype), data, generator)
    contribution = method.contribution(shared, personal, data, generator)
    vector = clipped_sum(flat_contributions(contribution, contribution_shapes(method, shared)), net)
    _keep_personal(context, personal)
    return vector


def secure_contribution_nn(published: list, round_number: int, context: Context, config: FederationConfig) -> dict[str, torch.Tensor]:
    """Under secure aggregation: :func:`train_nn`'s step for the shared state received as the FitIns arrays
    (in the shared state's order), returning ``{"contribution": vector}`` for the wire format.

    Raises ValueError when the arrays are not the run's shared state (count or shapes).
    """
    method, net, data = node_examples(config, context.node_config)
    shapes = network_shapes(config)[0]
    if len(published) != len(shapes) or any(tuple(a.shape) != tuple(s) for a, s in zip(published, shapes.values())):
        raise ValueError(f"the shared state must be {len(shapes)} arrays of shapes {[tuple(s) for s in shapes.values()]}, "
                         f"got {[tuple(a.shape) for a in published]}.")
    shared = {k: torch.from_numpy(a.copy()).to(net.torch_dtype) for k, a in zip(shapes, published)}
    return {PART: _local_round(method, net, data, shared, round_number, context, config)}


def personalize_nn(message: Message, context: Context, config: FederationConfig) -> Message:
    """``method.personalize`` for the published shared state, kept in ``context.state``; replies empty."""
    method, net, data = node_examples(config, context.node_config)
    shared, round_number = _received(message, net.torch_dtype)
    personal = method.personalize(shared, _personal(context, method, shared, net.torch_dtype), data,
                                  _node_generator(config, context.node_config, round_number))
    _keep_personal(context, personal)
    return Message(RecordDict(), reply_to=message)


# ---------------------------------------------------------------------- server
@dataclass
class NetworkBillboardResult(BillboardResult):
    """A network run: ``shared`` is the final shared state (``U`` is its ``"U"`` when the method has one)."""

    shared: State = field(default_factory=dict)


class NetworkBillboard(Billboard):
    """The billboard's messaging, reply checks, ledger and report, for a network method's shared state."""

    def __init__(self, config: FederationConfig, method: FederatedMethod | None = None):
        super().__init__(config)
        check_network_knobs(config)
        if config.task == LINEAR:
            raise ValueError("task == 'linear' is the AMHT-LRS Billboard, not a network run.")
        self.network = network_config(config)
        self.method = method if method is not None else _setup(config)[1]
        self.dimension: int | None = None

    def _parts(self, phase) -> dict[str, tuple[tuple[int, ...], float]]:
        return {PART: ((self.dimension,), self.network.clip if self.network.private else math.inf)}

    def _message_type(self, phase) -> str:
        return TRAIN_NN

    def _published_arrays(self, shared: State | None) -> list:
        """Under secure aggregation the shared state goes out as the SecAgg+ request's arrays, in its order."""
        return [] if shared is None else [v.detach().cpu().numpy() for v in shared.values()]

    def _mean(self, sums: dict[str, torch.Tensor], expected_count: float, event) -> torch.Tensor:
        """The released mean of the round: through SecAgg+'s release (its ledger note names the mode) or :func:`release_mean`."""
        if self.secure is not None and self.private is not None:
            return self.secure.release(self.private, sums, event, max(expected_count, 1e-12))[PART]
        return release_mean(sums[PART], self.network, expected_count, self.private, event)

    def _content(self, shared: State | None, round_number: int) -> RecordDict:
        content = RecordDict({ROUND_CONFIG: ConfigRecord({"round": round_number})})
        if shared is not None:
            content[SHARED] = state_to_record(shared)
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
        else:
            if not nodes:
                raise RuntimeError(f"no node connected within wait-for-nodes == {c.wait_for_nodes} s.")
            shared, start = initial_state(self.method, net, generator), 0
            self.private = private_server(net, ledger, retry_ids=True)
            self._checkpoint(0, shared, generator)
        shapes = contribution_shapes(self.method, shared)
        self.dimension = flat_size(shapes)
        if self.secure is not None and self.dimension != contribution_dimension(c):
            raise ValueError(f"the method's contribution has {self.dimension} numbers, the devices' wire format "
                             f"{contribution_dimension(c)}: secure aggregation needs the run config's own method.")
        stopped, completed = "rounds done", start
        for round_number in range(start + 1, net.rounds + 1):
            try:
                event = round_event(self.private, round_number)
                nodes = sorted(int(n) for n in grid.get_node_ids())
                sampled = poisson_sample(nodes, c.sample_rate, generator)
                self.sampled[round_number] = sampled
                sums = self._collect(grid, sampled, "round", shared, round_number)
                mean = self._mean(sums, c.sample_rate * len(nodes), event)
            except BudgetExceededError as error:
                stopped = f"budget: {error}"
                _log(WARNING, "round %d not released: %s", round_number, error)
                break
            shared = self.method.apply(shared, unflatten(mean, shapes))
            self._checkpoint(round_number, shared, generator)
            completed = round_number
            _log(INFO, "round %d: %d sampled, %d counted, shared state published", round_number, len(sampled),
                 self.counted.get(round_number, 0))
        if c.personalize_at_end:
            self._exchange(grid, sorted(int(n) for n in grid.get_node_ids()), PERSONALIZE_NN, shared, completed)
        z = None if self.private is None else self.private.noise_multiplier
        result = NetworkBillboardResult(shared.get("U"), completed, stopped, z, ledger, self.refusals, self.dropped,
                                        self.sampled, shared=shared)
        self.write_report(result)
        return result
