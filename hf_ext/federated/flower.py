"""Flower (flwr 1.42) `ClientApp` / `ServerApp` pair running the same local training and aggregation as
[`FederatedSimulation`], for real deployments (`flwr run` against a SuperLink and SuperNodes) or in-process grids.

Without secure aggregation the apps use Flower's Message API (`flwr.serverapp.strategy.FedAvg` subclass). With
`fed_args.secure_aggregation` they use Flower's own SecAgg+ protocol: the server runs `SecAggPlusWorkflow` inside
Flower's `DefaultWorkflow` and the clients run `secaggplus_mod`, so of the clients' updates the server only ever sees
their weighted mean (each reply's weight, partition id and epsilon travel in the clear; the training loss is not sent
under DP-SGD or secure aggregation, see [`reports_train_loss`]). hf_ext's client mods in front of it ([`secagg_client_mods`]) refuse requests a malicious server
could exploit (re-run rounds, thresholds below the colluder bound, inconsistent unmask requests); what they cannot
close in flwr 1.42 (unauthenticated keys, no consistency round) is in docs/federated.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from .privacy import PrivacyAccountant
from .simulation import (
    FederatedArguments,
    aggregate_uploads,
    apply_lora,
    apply_secure_mean,
    exchange_keys,
    get_exchange_state,
    prepare_upload,
    train_client,
    upload_weight,
)

ROUND_KEY = "server-round"


def initial_global_state(model_fn: Callable, fed_args: FederatedArguments, seed: int) -> dict[str, torch.Tensor]:
    """The exchanged state every client starts from: `model_fn()` (plus the seeded LoRA adapter)."""
    model = model_fn()
    if fed_args.use_lora:
        model = apply_lora(model, fed_args, seed=seed)
    return get_exchange_state(model, exchange_keys(model, fed_args.mode))


def _partition(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError("The node config has no 'partition-id': start the SuperNode with --node-config.")
    return int(context.node_config["partition-id"])


def reports_train_loss(fed_args: FederatedArguments, training_args) -> bool:
    """Whether a client sends its training loss to the server. Not under DP-SGD (the loss is computed from the records
    without clipping or noise: a neighbouring dataset changes it deterministically, outside what the accountant
    covers) and not under secure aggregation (a per-client statistic in the clear, where the server should learn
    only the sum of the updates)."""
    return getattr(training_args, "dp_clip_norm", None) is None and not fed_args.secure_aggregation


def _mean_train_loss(weights, metrics) -> dict[str, float]:
    """`{"train_loss": example-weighted mean}` when every client reported its loss, else `{}`."""
    if not metrics or any("train_loss" not in m for m in metrics):
        return {}
    return {"train_loss": sum(w * float(m["train_loss"]) for w, m in zip(weights, metrics)) / sum(weights)}


def _local_round(model_fn, dataset_fn, fed_args, training_args, data_collator, processing_class, context, state, r):
    """Rebuild the model, train on this node's partition from `state`, persist the accountant in `context.state`."""
    pid = _partition(context)
    model = model_fn()
    if fed_args.use_lora:
        model = apply_lora(model, fed_args, seed=training_args.seed)
    accountant = PrivacyAccountant(training_args.dp_accountant)
    if "privacy" in context.state:
        accountant.load_state_dict(json.loads(context.state["privacy"]["accountant"]))
    new_state, n, metrics = train_client(
        model, state, dataset_fn(pid), training_args, fed_args, pid, r, data_collator, processing_class, accountant
    )
    context.state["privacy"] = ConfigRecord({"accountant": accountant.to_json()})
    reply = {"num-examples": n, "partition-id": pid}
    if reports_train_loss(fed_args, training_args):
        reply["train_loss"] = metrics["train_loss"]
    if "dp_epsilon" in metrics:
        reply["dp_epsilon"] = metrics["dp_epsilon"]
    return new_state, n, reply


def make_client_app(
    model_fn: Callable,
    dataset_fn: Callable[[int], object],
    fed_args: FederatedArguments,
    training_args,
    data_collator: Callable | None = None,
    processing_class=None,
) -> ClientApp:
    """A Flower `ClientApp` whose training runs [`train_client`] on the node's partition.

    The node's partition comes from `context.node_config["partition-id"]`. Every round the model is rebuilt with
    `model_fn()` (and the seeded adapter), the received global state is loaded, the client trains with the `Trainer`
    (Goldfish / DP-SGD from `training_args`) and replies with its state; with secure aggregation it replies with its
    update through Flower's `secaggplus_mod`, which masks it, behind hf_ext's guard mods ([`secagg_client_mods`]).
    The client's privacy accountant and its last SecAgg+ round persist in `context.state` across rounds.

    Args:
        model_fn (`Callable[[], PreTrainedModel]`): builds the (deterministic) base model.
        dataset_fn (`Callable[[int], datasets.Dataset]`): the tokenized training data of a partition id.
        fed_args ([`FederatedArguments`]): protocol options (must match the server's).
        training_args ([`PrivateTrainingArguments`]): local training template.
        data_collator (`Callable`, *optional*): collator for the `Trainer`.
        processing_class (*optional*): tokenizer passed to the `Trainer`.
    """
    if fed_args.secure_aggregation:
        return _make_secagg_client_app(model_fn, dataset_fn, fed_args, training_args, data_collator, processing_class)
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        round_index = int(msg.content["config"][ROUND_KEY])
        global_state = msg.content["arrays"].to_torch_state_dict()
        state, _, reply = _local_round(
            model_fn,
            dataset_fn,
            fed_args,
            training_args,
            data_collator,
            processing_class,
            context,
            global_state,
            round_index,
        )
        content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(reply)})
        return Message(content, reply_to=msg)

    return app


NODE_REFUSE_DROPOUTS_KEY = "secagg-refuse-dropouts"


def check_unmask_request(configs, node_id: int, refuse_dropouts: bool = False) -> None:
    """Refuse a SecAgg+ unmask request that would reveal both secrets of a client.

    flwr 1.42's `secaggplus_mod` answers an unmask request with self-mask shares for every node listed active and
    mask-key shares for every node listed dead, without checking the lists: a server that lists an uploader as both
    (or lists this node as dead) gets enough shares to unmask that upload. Raises `ValueError` on such a request.
    """
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    active = [int(n) for n in configs.get(Key.ACTIVE_NODE_ID_LIST, [])]
    dead = [int(n) for n in configs.get(Key.DEAD_NODE_ID_LIST, [])]
    both = sorted(set(active) & set(dead))
    if both:
        raise ValueError(f"SecAgg+ unmask request lists nodes {both} as both active and dead; refusing to answer.")
    if len(set(active)) != len(active) or len(set(dead)) != len(dead):
        raise ValueError("SecAgg+ unmask request repeats node ids; refusing to answer.")
    if int(node_id) in dead or int(node_id) not in active:
        raise ValueError(f"SecAgg+ unmask request does not list this node ({node_id}) as active; refusing to answer.")
    if refuse_dropouts and dead:
        raise ValueError(
            f"SecAgg+ unmask request lists nodes {sorted(dead)} as dead and this node runs with "
            f"{NODE_REFUSE_DROPOUTS_KEY}=true (no mask-key share ever leaves it); refusing to answer."
        )


def secagg_unmask_guard_mod(msg, ctxt, call_next):
    """Flower client mod, placed before `secaggplus_mod`: checks unmask requests with [`check_unmask_request`].

    flwr 1.42 has no consistency round, so a malicious server can show different nodes different dead lists (each
    list passes this check) and rebuild the mask keys of every peer a victim masked with (see docs/federated.md). A
    node started with `--node-config "secagg-refuse-dropouts=true"` never reveals a mask-key share, which closes that
    attack at the price of losing any round in which a node drops out after key sharing.
    """
    from flwr.app.message_type import MessageType
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        configs = msg.content.config_records[RECORD_KEY_CONFIGS]
        if configs.get(Key.STAGE) == Stage.UNMASK:
            refuse = ctxt.node_config.get(NODE_REFUSE_DROPOUTS_KEY, False)
            if not isinstance(refuse, bool):
                raise ValueError(f"node config {NODE_REFUSE_DROPOUTS_KEY!r} must be true or false, got {refuse!r}.")
            check_unmask_request(configs, msg.metadata.dst_node_id, refuse_dropouts=refuse)
    return call_next(msg, ctxt)


GUARD_STATE_KEY = "hf_ext.secagg-guard"
NODE_MAX_COLLUDERS_KEY = "secagg-max-colluders"


def check_setup_request(configs, round_id: int, last_round: int | None, max_colluders: int = 0) -> None:
    """Refuse (`ValueError`) a SecAgg+ setup request that a malicious server could exploit.

    - Round bookkeeping: `round_id` (the message's group id, which Flower's `SecAggPlusWorkflow` sets to the server
      round) must exceed `last_round`, the last round this node served: a server re-running a round over another
      subset of nodes could subtract the two sums.
    - Colluder bound: with `k` share holders per node (`Key.SHARE_NUMBER`, every sampled node with our server) and
      threshold `t`, a server lying about dropouts with `max_colluders` colluding nodes collects both secrets of a node
      when `2t <= k + max_colluders`.
    """
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    from .secure_aggregation import check_colluder_bound

    if last_round is not None and round_id <= last_round:
        raise ValueError(
            f"SecAgg+ setup for round {round_id}, but this node already served round {last_round}; refusing (a server "
            "re-running a round over another subset of nodes could subtract the two sums)."
        )
    shares, threshold = int(configs.get(Key.SHARE_NUMBER, 0)), int(configs.get(Key.THRESHOLD, 0))
    try:
        check_colluder_bound(threshold, shares, max_colluders)
    except ValueError as err:
        raise ValueError(f"SecAgg+ setup refused: {err} (server argument: --secure_aggregation_threshold)") from None


def _round_id(msg) -> int:
    try:
        return int(msg.metadata.group_id)
    except (TypeError, ValueError):
        raise ValueError(
            f"SecAgg+ message carries no round id (group_id={msg.metadata.group_id!r}); refusing. Flower's "
            "SecAggPlusWorkflow sets it to the server round."
        ) from None


def make_secagg_round_guard_mod(max_colluders: int = 0):
    """A Flower client mod, placed before `secaggplus_mod`, enforcing per-node round bookkeeping and the colluder bound.

    The node keeps the last round it served in `context.state` (record `GUARD_STATE_KEY`). A SecAgg+ setup message is
    refused unless its round id is above that and its threshold passes [`check_setup_request`]; the round is then
    recorded before anything is shared, and every later stage must carry the same round id. `context.state` lives in
    the SuperNode's memory for one run: a new run (or a restarted SuperNode) starts without a record.

    The run config is chosen by whoever submits the run (the server side), so a node operator sets its own bound with
    `flower-supernode --node-config "secagg-max-colluders=<c>"`; the larger of that and `max_colluders` applies.

    Args:
        max_colluders (`int`, *optional*, defaults to 0): how many nodes may collude with the server
            (`FederatedArguments.secure_aggregation_max_colluders`).
    """
    from .secure_aggregation import _check_colluders

    _check_colluders(max_colluders)

    def secagg_round_guard_mod(msg, ctxt, call_next):
        from flwr.app import ConfigRecord
        from flwr.app.message_type import MessageType
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

        if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
            configs = msg.content.config_records[RECORD_KEY_CONFIGS]
            stage = configs.get(Key.STAGE)
            round_id = _round_id(msg)
            record = ctxt.state.config_records.get(GUARD_STATE_KEY)
            last = None if record is None else int(record["last-round"])
            if stage == Stage.SETUP:
                node_bound = ctxt.node_config.get(NODE_MAX_COLLUDERS_KEY, 0)
                if isinstance(node_bound, bool) or not isinstance(node_bound, int) or node_bound < 0:
                    raise ValueError(
                        f"node config {NODE_MAX_COLLUDERS_KEY!r} must be an integer >= 0, got {node_bound!r}."
                    )
                check_setup_request(configs, round_id, last, max(max_colluders, node_bound))
                ctxt.state.config_records[GUARD_STATE_KEY] = ConfigRecord({"last-round": round_id})
            elif last != round_id:
                raise ValueError(
                    f"SecAgg+ stage {stage!r} of round {round_id}, but this node set up round {last}; refusing."
                )
        return call_next(msg, ctxt)

    return secagg_round_guard_mod


def secagg_client_mods(fed_args: FederatedArguments) -> list:
    """The client mods of a SecAgg+ `ClientApp`, in order: the round guard (bookkeeping, colluder bound), the unmask
    guard, then Flower's `secaggplus_mod`."""
    from flwr.client.mod import secaggplus_mod

    return [
        make_secagg_round_guard_mod(fed_args.secure_aggregation_max_colluders),
        secagg_unmask_guard_mod,
        secaggplus_mod,
    ]


def _make_secagg_client_app(model_fn, dataset_fn, fed_args, training_args, data_collator, processing_class):
    from flwr.client import NumPyClient

    class _LoRAClient(NumPyClient):
        def __init__(self, context: Context):
            self._context = context

        def fit(self, parameters, config):
            keys = sorted(initial_keys())
            if len(parameters) != len(keys):
                raise ValueError(
                    f"Received {len(parameters)} arrays but the local model exchanges {len(keys)}: the adapter "
                    "configuration differs between server and client."
                )
            global_state = {k: torch.from_numpy(np.array(p, copy=True)) for k, p in zip(keys, parameters)}
            state, n, reply = _local_round(
                model_fn,
                dataset_fn,
                fed_args,
                training_args,
                data_collator,
                processing_class,
                self._context,
                global_state,
                int(config[ROUND_KEY]),
            )
            update = prepare_upload(global_state, state, fed_args)
            weight = int(upload_weight(n, fed_args))  # 1 under client-level DP (uniform DP-FedAvg)
            check_secagg_range(update, weight, fed_args)
            return [update[k].detach().cpu().numpy() for k in keys], weight, reply

    cache: dict[str, list[str]] = {}

    def initial_keys():
        if "keys" not in cache:
            cache["keys"] = list(initial_global_state(model_fn, fed_args, training_args.seed))
        return cache["keys"]

    def client_fn(context: Context):
        return _LoRAClient(context).to_client()

    return ClientApp(client_fn=client_fn, mods=secagg_client_mods(fed_args))


def secagg_max_weight(fed_args: FederatedArguments) -> float:
    """The `max_weight` of Flower's SecAgg+: `fed_args.secagg_max_weight`, or 1 under client-level DP, where every
    client uploads with weight 1 ([`upload_weight`]). SecAgg+ scales each upload by `weight / max_weight` before
    quantizing to 2^22 levels over `[-clipping_range, clipping_range]`: weight-1 uploads scaled by 1/1000 would fall
    below one quantization level and the aggregate would carry rounding noise as large as the update itself."""
    return 1.0 if fed_args.client_dp_clip_norm is not None else fed_args.secagg_max_weight


def check_secagg_range(update: dict[str, torch.Tensor], num_examples: int, fed_args: FederatedArguments) -> None:
    """Flower's SecAgg+ clips `(num_examples / max_weight) * update` to `[-clipping_range, clipping_range]` before
    quantizing; refuse to upload values it would clip silently (that would bias the aggregate)."""
    max_weight = secagg_max_weight(fed_args)
    ratio = num_examples / max_weight
    bad = [k for k, v in update.items() if v.numel() and not bool(torch.isfinite(v).all())]
    if bad:  # NaN would pass the range check below and quantize to finite garbage in the aggregate
        raise ValueError(f"The update is not finite (NaN/inf in {bad[:3]}); refusing to upload it to SecAgg+.")
    peak = max((float(v.abs().max()) for v in update.values() if v.numel()), default=0.0)
    if ratio > 1:
        raise ValueError(
            f"num_examples={num_examples} exceeds the SecAgg+ max_weight {max_weight} (--secagg_max_weight): raise it."
        )
    if ratio * peak > fed_args.secagg_clipping_range:
        raise ValueError(
            f"The weighted update reaches {ratio * peak:.3g}, beyond --secagg_clipping_range="
            f"{fed_args.secagg_clipping_range} (SecAgg+ would clip it): raise the range or lower the learning rate."
        )


def aggregate_train_metrics(records: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """The round's training metrics from the clients' replies: the example-weighted mean `train_loss` (when every client
    reports it: not under DP-SGD or secure aggregation, see [`reports_train_loss`]) and
    `dp_epsilon_max`, the largest client's epsilon (a privacy guarantee is per client: a mean would understate the
    worst one), as the secure-aggregation path reports them. The weight and `partition-id` are not metrics."""
    metrics = [next(iter(record.metric_records.values())) for record in records]
    weights = [float(m[weighting_metric_name]) for m in metrics]
    out = _mean_train_loss(weights, metrics)
    eps = [float(m["dp_epsilon"]) for m in metrics if "dp_epsilon" in m]
    if eps:
        out["dp_epsilon_max"] = max(eps)
    return MetricRecord(out)


class FederatedLoRAStrategy(FedAvg):
    """`FedAvg` (Message API) whose aggregation is [`aggregate_uploads`]: LoRA factor averaging or
    merge-then-average, full FedAvg, and client-level DP. Used without secure aggregation.

    Client replies are ordered by their `partition-id` metric before aggregation so that the result matches the
    in-process simulation exactly.

    Args:
        fed_args ([`FederatedArguments`]): protocol options.
        seed (`int`, *optional*, defaults to 0): the public training seed; it does not drive the client-level DP
            noise (secret unless `fed_args.client_dp_noise_seed` is set).
        num_clients (`int`, *optional*): the federation size that client-level DP divides by (default
            `min_train_nodes`), fixed whatever the number of replies.
        **kwargs: passed to `flwr.serverapp.strategy.FedAvg` (`min_train_nodes`, `min_available_nodes`, ...).
    """

    def __init__(self, fed_args: FederatedArguments, seed: int = 0, num_clients: int | None = None, **kwargs):
        if fed_args.secure_aggregation:
            raise ValueError("With secure aggregation use make_server_app (Flower's SecAggPlusWorkflow).")
        kwargs.setdefault("fraction_evaluate", 0.0)
        kwargs.setdefault("train_metrics_aggr_fn", aggregate_train_metrics)
        super().__init__(weighted_by_key="num-examples", **kwargs)
        self.fed_args = fed_args
        self.seed = seed
        self.num_clients = num_clients if num_clients is not None else self.min_train_nodes
        self._global: dict[str, torch.Tensor] | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._global = arrays.to_torch_state_dict()
        config[ROUND_KEY] = server_round
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        valid.sort(key=lambda m: int(m.content["metrics"].get("partition-id", m.metadata.src_node_id)))
        contents = [m.content for m in valid]
        uploads = [c["arrays"].to_torch_state_dict() for c in contents]
        weights = [float(c["metrics"][self.weighted_by_key]) for c in contents]
        new_state = aggregate_uploads(
            self._global, uploads, weights, self.fed_args, server_round, self.seed, num_clients=self.num_clients
        )
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return ArrayRecord(new_state), metrics


def make_secagg_strategy(fed_args: FederatedArguments, initial: dict[str, torch.Tensor], num_clients: int, seed: int):
    """A legacy Flower strategy for `SecAggPlusWorkflow`: it receives only the securely aggregated weighted mean of
    the clients' updates (every `FitRes` carries that same mean), adds client-level DP noise if configured and
    applies the mean to the global state ([`apply_secure_mean`])."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    keys = sorted(initial)

    class SecAggLoRAStrategy(LegacyFedAvg):
        def __init__(self):
            super().__init__(
                fraction_fit=1.0,
                fraction_evaluate=0.0,
                min_fit_clients=num_clients,
                min_evaluate_clients=0,
                min_available_clients=num_clients,
                initial_parameters=ndarrays_to_parameters([initial[k].numpy() for k in keys]),
                on_fit_config_fn=lambda r: {ROUND_KEY: r},
            )
            self.global_state = {k: v.clone() for k, v in initial.items()}

        def configure_fit(self, server_round, parameters, client_manager):
            arrays = parameters_to_ndarrays(parameters)
            self.global_state = {k: torch.from_numpy(np.array(a, copy=True)) for k, a in zip(keys, arrays)}
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            if not results:
                return None, {}
            mean_arrays = parameters_to_ndarrays(results[0][1].parameters)
            mean = {k: torch.from_numpy(np.asarray(a, dtype=np.float64)) for k, a in zip(keys, mean_arrays)}
            weights = [float(res.num_examples) for _, res in results]
            new = apply_secure_mean(self.global_state, mean, weights, fed_args, server_round, num_clients=num_clients)
            self.global_state = new
            metrics = _mean_train_loss(weights, [r.metrics for _, r in results])
            eps = [float(r.metrics["dp_epsilon"]) for _, r in results if "dp_epsilon" in r.metrics]
            if eps:
                metrics["dp_epsilon_max"] = max(eps)
            return ndarrays_to_parameters([new[k].numpy() for k in keys]), metrics

    return SecAggLoRAStrategy()


def make_server_app(
    model_fn: Callable,
    fed_args: FederatedArguments,
    num_clients: int,
    seed: int = 0,
    on_finish: Callable[[dict[str, torch.Tensor], object], None] | None = None,
    timeout: float | None = None,
) -> ServerApp:
    """A Flower `ServerApp` running FedAvg over LoRA adapters (or full weights) for `fed_args.num_rounds` rounds.

    With `fed_args.secure_aggregation` it runs Flower's `DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`
    with every sampled client as a share holder and the Shamir threshold of `fed_args.threshold(num_clients)`
    (an honest majority), so up to `num_clients - threshold` clients may drop out of a round.

    Args:
        model_fn (`Callable[[], PreTrainedModel]`): builds the base model (same as the clients').
        fed_args ([`FederatedArguments`]): protocol options.
        num_clients (`int`): nodes sampled per round (all of them, as in the paper).
        seed (`int`, *optional*, defaults to 0): the training seed (adapter initialisation and server noise).
        on_finish (`Callable`, *optional*): called with the final global state and the Flower result / history.
        timeout (`float`, *optional*): seconds to wait for replies in each stage (None: wait for all).
    """
    if num_clients < 1:
        raise ValueError(f"`num_clients` must be >= 1, got {num_clients}.")
    if fed_args.secure_aggregation:
        threshold = fed_args.threshold(num_clients)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        initial = initial_global_state(model_fn, fed_args, seed)
        if not fed_args.secure_aggregation:
            strategy = FederatedLoRAStrategy(
                fed_args,
                seed=seed,
                num_clients=num_clients,
                min_train_nodes=num_clients,
                min_available_nodes=num_clients,
            )
            result = strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(initial),
                num_rounds=fed_args.num_rounds,
                timeout=timeout or 24 * 3600,
            )
            if on_finish is not None:
                on_finish(result.arrays.to_torch_state_dict(), result)
            return
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

        strategy = make_secagg_strategy(fed_args, initial, num_clients, seed)
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=fed_args.num_rounds), strategy=strategy)
        secagg = SecAggPlusWorkflow(
            num_shares=1.0,  # every sampled client holds a share of every other client's secrets
            reconstruction_threshold=threshold,
            max_weight=secagg_max_weight(fed_args),  # 1 under client-level DP (weight-1 uploads)
            clipping_range=fed_args.secagg_clipping_range,
            timeout=timeout,
        )
        DefaultWorkflow(fit_workflow=secagg)(grid, legacy)
        if on_finish is not None:
            on_finish({k: v.clone() for k, v in strategy.global_state.items()}, legacy.history)

    return app
