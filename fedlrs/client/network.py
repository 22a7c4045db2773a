"""A network task on the device: the ClientApp's ``train.nn`` and ``query.nn_personalize`` (one user per node).

The rules of :func:`fedlrs.tasks.network.run_federated` for one user: round t,
:func:`train_nn` runs ``local_update`` of its own ``w_i, b_i`` (kept in ``context.state``,
never sent) for the received shared state, then ``contribution``, flattened and clipped to
``nn-clip``, and replies with that vector alone (ArrayRecord ``contribution``, array
``contribution`` (D,)). With adaptive clipping (private, ``clip-quantile > 0``) it clips to the
round's bound ``clip-bound`` of the round config and adds the array ``H``, the one-hot bin of the
unclipped vector's norm (:func:`fedlrs.nn.federated.clipped_parts`). Under secure aggregation the same step gives the vector that the
SecAgg+ mod masks (:func:`secure_contribution_nn`). At the end :func:`personalize_nn` keeps
``method.personalize``. A node with a ``state-dir`` keeps its personal state there too, so a
restarted SuperNode goes on with its own ``w_i, b_i``. The server side is :mod:`fedlrs.server.network`.
"""

from __future__ import annotations

import zipfile
from logging import WARNING

import torch
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from fedlrs.client.data import DataError
from fedlrs.client.state import read_arrays, save_arrays, state_path
from fedlrs.federation_config import FederationConfig
from fedlrs.nn.federated import NetworkConfig, clipped_parts, contribution_shapes, flat_contributions, prepare_examples
from fedlrs.nn.method import FederatedMethod, State, UserExamples
from fedlrs.nn.run_config import network_setup, network_shapes
from fedlrs.protocol.messages import CLIP_BOUND, CONTRIBUTION, ROUND_CONFIG, SHARED, state_arrays

PERSONAL_STATE = "fedlrs.nn-personal"
PERSONAL_STATE_FILE = "fedlrs-nn-personal-state.npz"


def _log(level: int, message: str, *args) -> None:
    from flwr.common.logger import log

    log(level, "[fedlrs.nn] " + message, *args)


def state_to_record(state: State) -> ArrayRecord:
    """Tensors as an ArrayRecord, in the state's order."""
    return ArrayRecord({k: Array(a) for k, a in state_arrays(state).items()})


def record_to_state(record: ArrayRecord, dtype: torch.dtype) -> State:
    """Inverse of :func:`state_to_record` (float arrays in ``dtype``), in the record's order."""
    out = {}
    for k in record.keys():
        value = torch.from_numpy(record[k].numpy().copy())
        out[k] = value.to(dtype) if value.is_floating_point() else value
    return out


def node_examples(config: FederationConfig, node_config) -> tuple[FederatedMethod, NetworkConfig, UserExamples]:
    """The run's method and loop config, and this node's examples (user ``partition-id`` of the task; n = 1)."""
    task, method, net = network_setup(config)
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


def round_bound(message: Message, net: NetworkConfig) -> float:
    """The bound to clip to: the round config's ``clip-bound`` with adaptive clipping (required), else ``nn-clip``."""
    if not net.adaptive:
        return net.clip
    settings = message.content.config_records[ROUND_CONFIG]
    bound = float(settings[CLIP_BOUND]) if CLIP_BOUND in settings else None
    if bound is None or not 0 < bound < float("inf"):
        raise ValueError(f"clip bound == {bound!r}: adaptive clipping needs the round's bound (finite, > 0) in the round config.")
    return bound


def train_nn(message: Message, context: Context, config: FederationConfig) -> Message:
    """One round on the device: ``local_update``, then the flattened contribution clipped to the round's bound and nothing else.

    ``w_i, b_i`` (the personal state) stay in ``context.state``; the reply holds the array
    ``contribution`` (D,), scaled to L2 norm <= C when the run is private, and with adaptive
    clipping ``H``, the one-hot bin of its unclipped norm.
    """
    method, net, data = node_examples(config, context.node_config)
    shared, round_number = _received(message, net.torch_dtype)
    parts = _local_round(method, net, data, shared, round_number, context, config, round_bound(message, net))
    return Message(RecordDict({CONTRIBUTION: ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in parts.items()})}), reply_to=message)


def _local_round(method: FederatedMethod, net: NetworkConfig, data: UserExamples, shared: State, round_number: int,
                 context: Context, config: FederationConfig, bound: float) -> dict[str, torch.Tensor]:
    """``local_update`` of the kept personal state (kept again), then the contribution's parts (:func:`clipped_parts`)."""
    generator = _node_generator(config, context.node_config, round_number)
    personal = method.local_update(shared, _personal(context, method, shared, net.torch_dtype), data, generator)
    contribution = method.contribution(shared, personal, data, generator)
    parts = clipped_parts(flat_contributions(contribution, contribution_shapes(method, shared)), net, bound)
    _keep_personal(context, personal)
    return parts


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
    return _local_round(method, net, data, shared, round_number, context, config, net.clip)  # fixed bound: adaptive is refused with SecAgg+


def personalize_nn(message: Message, context: Context, config: FederationConfig) -> Message:
    """``method.personalize`` for the published shared state, kept in ``context.state``; replies empty."""
    method, net, data = node_examples(config, context.node_config)
    shared, round_number = _received(message, net.torch_dtype)
    personal = method.personalize(shared, _personal(context, method, shared, net.torch_dtype), data,
                                  _node_generator(config, context.node_config, round_number))
    _keep_personal(context, personal)
    return Message(RecordDict(), reply_to=message)
