"""Flower's SecAgg+ workflow run for the billboard's own cohort: the adapters between the two.

Flower 1.41's :class:`~flwr.server.workflow.SecAggPlusWorkflow` is built around the legacy fit
stage (a ``LegacyContext`` with a ``Strategy``). :class:`CohortStrategy`'s ``configure_fit``
returns the sampled nodes (the published arrays and the
:class:`~fedlrs.protocol.wire.WireSettings` as FitIns) and its ``aggregate_fit`` keeps the
unmasked aggregate. :class:`ProtocolGrid` is the billboard's Grid as the workflow sees it:
it pulls every 0.1 s and refuses (logs, drops: the node counts as dropped out) any reply that
is not the answer of the node the message went to, or not of the stage's exact form, so a
hostile reply never reaches Flower's code. Used by :class:`fedlrs.server.secure_aggregation.SecureAggregation`.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import FitIns, bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_public_key

from fedlrs.protocol.parts import Part
from fedlrs.protocol.wire import MODULUS_RANGE, NUM_EXAMPLES, WireSettings
from fedlrs.server.validation import RefusedReply, unavailable_notice

#: seconds between two pulls of a stage's replies
PULL_INTERVAL = 0.1
_FITRES = {"fitres.parameters", "fitres.metrics", "fitres.num_examples", "fitres.status"}


def _log(level: int, message: str, *args) -> None:
    from flwr.common.logger import log

    log(level, "[fedlrs] " + message, *args)


class _Proxy(ClientProxy):
    """A node of the cohort, as the legacy ``configure_fit`` names it; the workflow only reads ``node_id``."""

    def __init__(self, node_id: int):
        super().__init__(str(node_id))
        self.node_id = node_id

    def _unused(self, *args, **kwargs):
        raise NotImplementedError("the SecAgg+ workflow sends messages through the Grid, not through proxies.")

    get_properties = get_parameters = fit = evaluate = reconnect = _unused


class CohortStrategy(Strategy):
    """``configure_fit``: the billboard's cohort with the published arrays and the wire settings; ``aggregate_fit``: keeps the results."""

    def __init__(self, nodes: list[int], published: list[np.ndarray], settings: WireSettings):
        self.nodes, self.settings = nodes, settings
        self.parameters = ndarrays_to_parameters(list(published))
        self.results: list | None = None

    def configure_fit(self, server_round, parameters, client_manager):
        return [(_Proxy(node), FitIns(self.parameters, self.settings.to_config())) for node in self.nodes]

    def aggregate_fit(self, server_round, results, failures):
        self.results = list(results)
        return None, {}

    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class ProtocolGrid(Grid):
    """The billboard's Grid as the SecAgg+ workflow sees it: fast pulls, a timeout, replies checked per stage."""

    def __init__(self, grid: Grid, *, cohort: list[int], parts: list[Part], timeout: float, label: str):
        self.grid, self.cohort, self.parts, self.timeout, self.label = grid, set(cohort), parts, timeout, label
        self.refusals: list[tuple[int, str]] = []

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def push_messages(self, messages):
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        """Push, pull every :data:`PULL_INTERVAL` s until all replied or ``round-timeout``; keep the valid replies."""
        messages = list(messages)
        stages = [str(m.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]) for m in messages]
        sent = {mid: (m.metadata.dst_node_id, stage)
                for mid, m, stage in zip(self.grid.push_messages(messages), messages, stages)}
        pending, replies = set(sent), []
        deadline = time.monotonic() + self.timeout
        while pending:
            pulled = list(self.grid.pull_messages(list(pending)))
            for reply in pulled:
                message_id = reply.metadata.reply_to_message_id
                if message_id not in pending:
                    continue
                pending.discard(message_id)
                node, stage = sent[message_id]
                notice = unavailable_notice(reply)
                if notice is not None:  # the node dropped out; nothing to refuse
                    _log(INFO, "%s: node %d is unavailable at stage %s (SuperLink: %s)", self.label, node, stage, notice)
                    continue
                try:
                    if int(reply.metadata.src_node_id) != node:
                        raise RefusedReply(f"node {reply.metadata.src_node_id} answered the message sent to node {node}.")
                    self._check(stage, reply, node)
                except RefusedReply as error:
                    self.refusals.append((int(reply.metadata.src_node_id), f"{stage}: {error}"))
                    _log(WARNING, "%s: refused the %s reply of node %d: %s", self.label, stage,
                         reply.metadata.src_node_id, error)
                    continue
                replies.append(reply)
            if not pending or time.monotonic() >= deadline:
                break
            if not pulled:
                time.sleep(PULL_INTERVAL)
        stage = stages[0] if stages else "-"
        _log(INFO, "%s: SecAgg+ stage %s, %d of %d nodes answered", self.label, stage, len(replies), len(messages))
        return replies

    def _check(self, stage: str, reply: Message, node: int) -> None:
        """Refuse a reply that is not exactly what the stage's protocol allows (never reaches Flower's code)."""
        if reply.has_error():
            raise RefusedReply(f"the client reported an error: {reply.error.reason!r}")
        content = reply.content
        allowed = {RECORD_KEY_CONFIGS} | (_FITRES if stage == Stage.COLLECT_MASKED_VECTORS else set())
        if set(content.keys()) != allowed or RECORD_KEY_CONFIGS not in content.config_records:
            raise RefusedReply(f"records {sorted(content.keys())}, must be {sorted(allowed)}.")
        configs = content.config_records[RECORD_KEY_CONFIGS]
        expected = {Stage.SETUP: {Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2},
                    Stage.SHARE_KEYS: {Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST},
                    Stage.COLLECT_MASKED_VECTORS: {Key.MASKED_PARAMETERS},
                    Stage.UNMASK: {Key.NODE_ID_LIST, Key.SHARE_LIST}}[stage]
        if set(configs.keys()) != expected:
            raise RefusedReply(f"keys {sorted(configs.keys())}, must be {sorted(expected)}.")
        if stage == Stage.SETUP:
            keys = [configs[Key.PUBLIC_KEY_1], configs[Key.PUBLIC_KEY_2]]
            if not all(isinstance(k, bytes) for k in keys) or keys[0] == keys[1]:
                raise RefusedReply("public keys must be two distinct byte strings.")
            try:
                for key in keys:
                    bytes_to_public_key(key)
            except Exception as error:  # noqa: BLE001 - any parsing failure is the client's fault
                raise RefusedReply(f"a public key does not parse: {error}") from error
        elif stage == Stage.SHARE_KEYS:
            self._lists(configs, Key.DESTINATION_LIST, int, Key.CIPHERTEXT_LIST, bytes, node, others=True)
        elif stage == Stage.UNMASK:
            self._lists(configs, Key.NODE_ID_LIST, int, Key.SHARE_LIST, bytes, node, others=False)
        else:
            self._masked(content, configs)

    def _lists(self, configs, ids_key, ids_type, values_key, values_type, node: int, *, others: bool) -> None:
        ids, values = configs[ids_key], configs[values_key]
        if not isinstance(ids, list) or not isinstance(values, list) or len(ids) != len(values):
            raise RefusedReply(f"{ids_key} and {values_key} must be lists of the same length.")
        if not all(type(i) is ids_type for i in ids) or not all(type(v) is values_type for v in values):
            raise RefusedReply(f"{ids_key} must hold {ids_type.__name__}s and {values_key} {values_type.__name__}s.")
        if len(set(ids)) != len(ids) or not set(ids) <= self.cohort or (others and node in ids):
            raise RefusedReply(f"{ids_key} must name distinct nodes of the cohort" + (" other than the sender." if others else "."))

    def _masked(self, content: RecordDict, configs: ConfigRecord) -> None:
        try:
            fitres = compat.recorddict_to_fitres(content, keep_input=True)
        except Exception as error:  # noqa: BLE001
            raise RefusedReply(f"the fit result does not parse: {error}") from error
        if fitres.parameters.tensors or fitres.metrics or fitres.num_examples != NUM_EXAMPLES:
            raise RefusedReply("a masked reply carries nothing in the clear: no parameters, no metrics, "
                               f"num_examples == {NUM_EXAMPLES}.")
        vectors = configs[Key.MASKED_PARAMETERS]
        shapes = [(1,)] + [(p.size,) for p in self.parts]
        if not isinstance(vectors, list) or len(vectors) != len(shapes) or not all(isinstance(v, bytes) for v in vectors):
            raise RefusedReply(f"masked parameters must be {len(shapes)} byte strings.")
        for raw, shape in zip(vectors, shapes):
            try:
                array = bytes_to_ndarray(raw)
            except Exception as error:  # noqa: BLE001
                raise RefusedReply(f"a masked vector does not decode: {error}") from error
            if array.dtype != np.int64 or array.shape != shape or array.min(initial=0) < 0 \
                    or array.max(initial=0) >= MODULUS_RANGE:
                raise RefusedReply(f"a masked vector is {array.dtype} {array.shape}, must be int64 {shape} "
                                   f"in [0, 2**62).")
