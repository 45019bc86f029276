"""Flower (Message API, flwr 1.42) `ClientApp` / `ServerApp` pair running the same local training and aggregation
as [`FederatedSimulation`], for real deployments (`flwr run`) or simulations."""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from .privacy import PrivacyAccountant
from .secure_aggregation import pairwise_seeds, remove_dropped_masks
from .simulation import (
    FederatedArguments,
    aggregate_uploads,
    apply_lora,
    exchange_keys,
    get_exchange_state,
    prepare_upload,
    train_client,
)

PARTICIPANTS_KEY = "secagg-participants"
DROPPED_KEY = "secagg-dropped"
ROUND_KEY = "server-round"


def initial_global_state(model_fn: Callable, fed_args: FederatedArguments, seed: int) -> dict[str, torch.Tensor]:
    """The exchanged state every client starts from: `model_fn()` (plus the seeded LoRA adapter)."""
    model = model_fn()
    if fed_args.use_lora:
        model = apply_lora(model, fed_args, seed=seed)
    return get_exchange_state(model, exchange_keys(model, fed_args.mode))


def make_client_app(
    model_fn: Callable,
    dataset_fn: Callable[[int], object],
    fed_args: FederatedArguments,
    training_args,
    data_collator: Callable | None = None,
    processing_class=None,
) -> ClientApp:
    """A Flower `ClientApp` whose `train` handler runs [`train_client`] on the node's partition.

    The node's partition comes from `context.node_config["partition-id"]`. Every round the model is rebuilt with
    `model_fn()` (and the seeded adapter), the received arrays are loaded, the client trains with the `Trainer`
    (Goldfish / DP-SGD from `training_args`) and replies with its state, or its masked update under secure
    aggregation. The client's privacy accountant persists in `context.state` across rounds.

    Args:
        model_fn (`Callable[[], PreTrainedModel]`): builds the (deterministic) base model.
        dataset_fn (`Callable[[int], datasets.Dataset]`): the tokenized training data of a partition id.
        fed_args ([`FederatedArguments`]): protocol options (must match the server's).
        training_args ([`PrivateTrainingArguments`]): local training template.
        data_collator (`Callable`, *optional*): collator for the `Trainer`.
        processing_class (*optional*): tokenizer passed to the `Trainer`.
    """
    app = ClientApp()

    def _partition(context: Context) -> int:
        if "partition-id" not in context.node_config:
            raise ValueError("The node config has no 'partition-id': start the SuperNode with --node-config.")
        return int(context.node_config["partition-id"])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = _partition(context)
        config = msg.content["config"]
        round_index = int(config[ROUND_KEY])
        global_state = msg.content["arrays"].to_torch_state_dict()
        model = model_fn()
        if fed_args.use_lora:
            model = apply_lora(model, fed_args, seed=training_args.seed)
        accountant = PrivacyAccountant(training_args.dp_accountant)
        if "privacy" in context.state:
            accountant.load_state_dict(json.loads(context.state["privacy"]["accountant"]))
        state, n, metrics = train_client(
            model,
            global_state,
            dataset_fn(pid),
            training_args,
            fed_args,
            pid,
            round_index,
            data_collator,
            processing_class,
            accountant,
        )
        context.state["privacy"] = ConfigRecord({"accountant": accountant.to_json()})
        participants = [int(i) for i in config[PARTICIPANTS_KEY]] if fed_args.secure_aggregation else []
        upload = prepare_upload(global_state, state, n, context.node_id, participants, fed_args, round_index)
        reply_metrics = {"train_loss": metrics["train_loss"], "num-examples": n, "partition-id": pid}
        if "dp_epsilon" in metrics:
            reply_metrics["dp_epsilon"] = metrics["dp_epsilon"]
        content = RecordDict({"arrays": ArrayRecord(upload), "metrics": MetricRecord(reply_metrics)})
        return Message(content, reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Secure-aggregation dropout recovery: reveal this node's pairwise seeds with the dropped nodes."""
        config = msg.content["config"]
        participants = [int(i) for i in config[PARTICIPANTS_KEY]]
        dropped = [int(i) for i in config[DROPPED_KEY]]
        seeds = pairwise_seeds(participants, fed_args.secure_aggregation_secret, int(config[ROUND_KEY]))
        me = context.node_id
        pairs = [(min(me, d), max(me, d)) for d in dropped]
        reply = ConfigRecord({"pairs": [x for p in pairs for x in p], "seeds": [seeds[p] for p in pairs]})
        return Message(RecordDict({"seeds": reply}), reply_to=msg)

    return app


class FederatedLoRAStrategy(FedAvg):
    """`FedAvg` whose aggregation is [`aggregate_uploads`]: LoRA factor averaging or merge-then-average, full FedAvg,
    client-level DP and secure aggregation with dropout recovery.

    Client replies are ordered by their `partition-id` metric before aggregation so that the result matches the
    in-process simulation exactly.

    Args:
        fed_args ([`FederatedArguments`]): protocol options.
        seed (`int`, *optional*, defaults to 0): seed of the server-side noise.
        **kwargs: passed to `flwr.serverapp.strategy.FedAvg` (`min_train_nodes`, `min_available_nodes`, ...).
    """

    def __init__(self, fed_args: FederatedArguments, seed: int = 0, **kwargs):
        kwargs.setdefault("fraction_evaluate", 0.0)
        super().__init__(weighted_by_key="num-examples", **kwargs)
        self.fed_args = fed_args
        self.seed = seed
        self._global: dict[str, torch.Tensor] | None = None
        self._participants: list[int] = []
        self._grid: Grid | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._global = arrays.to_torch_state_dict()
        self._grid = grid
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._participants = [int(m.metadata.dst_node_id) for m in messages]
        if self.fed_args.secure_aggregation:
            if len(messages) < 2:
                raise ValueError("Secure aggregation needs at least 2 sampled nodes per round.")
            for m in messages:
                m.content[self.configrecord_key][PARTICIPANTS_KEY] = list(self._participants)
        return messages

    def _recover_dropped(self, server_round: int, uploads, survivors: list[int]):
        dropped = [i for i in self._participants if i not in survivors]
        if not dropped:
            return uploads
        from .secure_aggregation import sum_masked

        config = ConfigRecord({PARTICIPANTS_KEY: self._participants, DROPPED_KEY: dropped, ROUND_KEY: server_round})
        queries = [
            Message(RecordDict({self.configrecord_key: config}), dst_node_id=n, message_type="query")
            for n in survivors
        ]
        replies = list(self._grid.send_and_receive(queries))
        seeds: dict[tuple[int, int], int] = {}
        for r in replies:
            if r.has_error():
                raise RuntimeError(f"Node {r.metadata.src_node_id} did not reveal its seeds; the round cannot finish.")
            rec = r.content["seeds"]
            flat, vals = list(rec["pairs"]), list(rec["seeds"])
            for j, v in enumerate(vals):
                seeds[(int(flat[2 * j]), int(flat[2 * j + 1]))] = int(v)
        return [remove_dropped_masks(sum_masked(uploads), survivors, dropped, seeds)]

    def aggregate_train(self, server_round: int, replies):
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        valid.sort(key=lambda m: int(m.content["metrics"].get("partition-id", m.metadata.src_node_id)))
        contents = [m.content for m in valid]
        uploads = [c["arrays"].to_torch_state_dict() for c in contents]
        weights = [float(c["metrics"][self.weighted_by_key]) for c in contents]
        if self.fed_args.secure_aggregation:
            uploads = self._recover_dropped(server_round, uploads, [int(m.metadata.src_node_id) for m in valid])
        new_state = aggregate_uploads(self._global, uploads, weights, self.fed_args, server_round, self.seed)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return ArrayRecord(new_state), metrics


def make_server_app(
    model_fn: Callable,
    fed_args: FederatedArguments,
    num_clients: int,
    seed: int = 0,
    on_finish: Callable[[dict[str, torch.Tensor], object], None] | None = None,
) -> ServerApp:
    """A Flower `ServerApp` running [`FederatedLoRAStrategy`] for `fed_args.num_rounds` rounds.

    Args:
        model_fn (`Callable[[], PreTrainedModel]`): builds the base model (same as the clients').
        fed_args ([`FederatedArguments`]): protocol options.
        num_clients (`int`): nodes sampled per round (all of them, as in the paper).
        seed (`int`, *optional*, defaults to 0): the training seed (adapter initialisation and server noise).
        on_finish (`Callable`, *optional*): called with the final global state and the Flower `Result`.
    """
    if num_clients < 1:
        raise ValueError(f"`num_clients` must be >= 1, got {num_clients}.")
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FederatedLoRAStrategy(
            fed_args, seed=seed, min_train_nodes=num_clients, min_available_nodes=num_clients
        )
        initial = initial_global_state(model_fn, fed_args, seed)
        result = strategy.start(
            grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=fed_args.num_rounds, timeout=24 * 3600
        )
        if on_finish is not None:
            on_finish(result.arrays.to_torch_state_dict(), result)

    return app
