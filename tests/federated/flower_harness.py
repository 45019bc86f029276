"""A Ray-free, in-process Flower `Grid` for tests: messages are delivered to a `ClientApp` called in this process.

It relies on flwr internals (`TaskIdentity`) and is therefore kept in this one test helper, pinned to flwr 1.42.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from types import SimpleNamespace

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class InProcessGrid(Grid):
    """Delivers messages to `client_app` for `num_nodes` nodes (ids 1..n, partition ids 0..n-1) in order.

    `fail_nodes` lists node ids whose training messages are answered with an error (a client that drops out). With
    `errors_as_replies`, an exception raised by the `ClientApp` becomes an error reply, as a SuperNode sends it.
    `node_config` adds keys to every node's node config (e.g. `{"dp-allow-server-noise-seed": True}`).
    """

    def __init__(
        self,
        client_app,
        num_nodes: int,
        fail_nodes: Iterable[int] = (),
        run_config: dict | None = None,
        errors_as_replies: bool = False,
        node_config: dict | None = None,
    ):
        self.client_app = client_app
        self.errors_as_replies = errors_as_replies
        self.client_errors: list[tuple[int, str]] = []  # (node id, exception text) when errors_as_replies
        self.node_ids = list(range(1, num_nodes + 1))
        self.fail_nodes = set(fail_nodes)
        self.contexts = {
            n: Context(
                run_id=1,
                node_id=n,
                node_config={"partition-id": i, "num-partitions": num_nodes, **(node_config or {})},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i, n in enumerate(self.node_ids)
        }
        self._run = SimpleNamespace(run_id=1)  # what Flower's legacy client manager reads
        self.received: list[Message] = []  # every reply the server got: the server's view
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 1

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self):
        return list(self.node_ids)

    def push_messages(self, messages):
        raise RuntimeError("InProcessGrid only supports send_and_receive.")

    def pull_messages(self, message_ids):
        raise RuntimeError("InProcessGrid only supports send_and_receive.")

    @staticmethod
    def _is_training(msg) -> bool:
        """A failing node drops out when asked to train: the `train` message, or under SecAgg+ the stage that
        carries the training instructions (it has shared its keys by then, as a real dropout would)."""
        if msg.metadata.message_type != "train":
            return False
        cfg = msg.content.config_records.get("secaggplus_configs")
        return cfg is None or cfg.get("stage") == "collect_masked_vectors"

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.fail_nodes and self._is_training(msg):
                replies.append(Message(Error(code=0, reason="node dropped out"), reply_to=msg))
                continue
            TaskIdentity.node_id = node
            try:
                # deliver a copy, as the wire would: the SecAgg+ mod edits the content it receives in place
                replies.append(self.client_app(copy.deepcopy(msg), self.contexts[node]))
            except Exception as err:
                if not self.errors_as_replies:
                    raise
                self.client_errors.append((node, str(err)))
                replies.append(Message(Error(code=0, reason=str(err)), reply_to=msg))
            finally:
                TaskIdentity.node_id = 0
        self.received.extend(replies)
        return replies
