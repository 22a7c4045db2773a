"""A fake Grid that calls a ClientApp in-process: the ServerApp's unit tests without Ray or a SuperLink."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

# tamper(node_id, message, reply) -> reply | None (None: the node never answers)
Tamper = Callable[[int, Message, Message], Message | None]


class FakeGrid(Grid):
    """Nodes ``1..N`` run ``client_app`` with ``partition-id = node_id - 1`` and their own ``context.state``."""

    def __init__(self, client_app: ClientApp, num_nodes: int, *, run_config: dict | None = None,
                 node_configs: dict[int, dict] | None = None, tamper: Tamper | None = None):
        self.client_app = client_app
        self.run_config = dict(run_config or {})
        self.tamper = tamper
        self.contexts: dict[int, Context] = {}
        for node in range(1, num_nodes + 1):
            node_config = {"partition-id": node - 1, "num-partitions": num_nodes}
            node_config.update((node_configs or {}).get(node, {}))
            self.contexts[node] = Context(run_id=1, node_id=node, node_config=node_config, state=RecordDict(),
                                          run_config=dict(self.run_config))
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._run = None

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages):
        """Each node answers at once (or never, when ``tamper`` returns None); the replies wait to be pulled."""
        ids = []
        for message in messages:
            self.sent.append(message)
            message_id = f"m{len(self.sent)}"
            message.metadata.__dict__["_message_id"] = message_id  # as InMemoryGrid does; replies refer to it
            ids.append(message_id)
            node = message.metadata.dst_node_id
            if node not in self.contexts:
                continue
            # a copy, as a real transport delivers: a ClientApp (the SecAgg+ mod pops its stage) may change what it got
            reply = self.client_app(copy.deepcopy(message), self.contexts[node])
            if self.tamper is not None:
                reply = self.tamper(node, message, reply)
            if reply is not None:
                self._replies[reply.metadata.reply_to_message_id] = reply
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))
