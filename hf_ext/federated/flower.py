"""Flower (flwr 1.42) `ClientApp` / `ServerApp` pair running the same local training and aggregation as
[`FederatedSimulation`], for real deployments (`flwr run` against a SuperLink and SuperNodes) or in-process grids.

Without secure aggregation the apps use Flower's Message API (`flwr.serverapp.strategy.FedAvg` subclass). With
`fed_args.secure_aggregation` they use Flower's own SecAgg+ protocol: the server runs `SecAggPlusWorkflow` inside
Flower's `DefaultWorkflow` and the clients run `secaggplus_mod`, so the server receives the clients' updates masked
and unmasks only their weighted mean (each reply's weight, partition id and epsilon travel in the clear; the training
loss is not sent under DP-SGD or secure aggregation, see [`reports_train_loss`]). The mean hides one update only
among updates the server does not know: a malicious server that sends every node but a victim a global state making
their updates zero (an all-zero LoRA adapter) or known, or training instructions that do (a run config with learning
rate 0), reads the victim's update off the mean (model inconsistency, Pasquini et al., CCS 2022). Flower's SecAgg+
messages have no field through which nodes could sign and compare the state and instructions they received, so this
stays open here (the in-process protocol binds both); DP-SGD on the nodes bounds what the update reveals, and a
deployment can have each node check the digest of the arrays and run config it received
(`global_state_digest(arrays, config)`) against one published out of band (docs/federated.md). hf_ext's client mods in front of `secaggplus_mod` ([`secagg_client_mods`]) refuse requests
a malicious server could exploit (re-run rounds, thresholds below the colluder bound, a SecAgg+ setup with other
`max_weight` / `clipping_range` / quantization or modulus ranges than the node's own configuration implies, which
would let the server scale every update but a victim's to ~0 whatever the digests, inconsistent unmask requests);
what they cannot close in flwr 1.42 (unauthenticated keys, no consistency round, model inconsistency) is in
docs/federated.md.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
except ImportError as err:  # Flower is an optional extra
    if (getattr(err, "name", None) or "flwr").split(".")[0] != "flwr":
        raise
    raise ModuleNotFoundError(
        f"hf_ext's Flower apps need Flower 1.42 ({err}): install the extra with `pip install 'hf_ext[flower]'` "
        "(or `pip install -e '.[flower]'` from a checkout).",
        name="flwr",
    ) from err

from ..utils.checks import is_int
from .aggregation import NonFiniteStateError, client_update
from .privacy import PrivacyAccountant, poisson_batches_per_epoch, poisson_sample_rate
from .secure_aggregation import (
    SECAGG_MAX_RELATIVE_ERROR,  # noqa: F401  (re-exported: the result metadata and callers read it from here)
    SECAGG_WARN_RELATIVE_ERROR,
    check_rounding_error,
    rounding_error_bound,
)
from .simulation import (
    FederatedArguments,
    aggregate_uploads,
    apply_lora,
    apply_secure_mean,
    check_client_learning_rates,
    check_no_per_client_settings,
    exchange_keys,
    fan_in_fan_out_modules,
    get_exchange_state,
    prepare_upload,
    train_client,
    upload_weight,
)

ROUND_KEY = "server-round"


def initial_global_state(model_fn: Callable, fed_args: FederatedArguments, seed: int) -> dict[str, torch.Tensor]:
    """The exchanged state every client starts from: `model_fn()` (plus the seeded LoRA adapter)."""
    return _initial_state_and_layout(model_fn, fed_args, seed)[0]


def _initial_state_and_layout(
    model_fn: Callable, fed_args: FederatedArguments, seed: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """[`initial_global_state`] and, in `"merge_then_average"` mode, the model's [`fan_in_fan_out_modules`] (the
    modules whose merged LoRA delta is transposed, e.g. GPT-2's Conv1D)."""
    model = model_fn()
    if fed_args.use_lora:
        model = apply_lora(model, fed_args, seed=seed)
    state = get_exchange_state(model, exchange_keys(model, fed_args.mode))
    layout = fan_in_fan_out_modules(model, fed_args.lora_scaling) if fed_args.mode == "merge_then_average" else []
    return state, layout


def _partition(context: Context) -> int:
    from .flower_task import node_partition_id

    return node_partition_id(context.node_config)


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


NODE_STATE_FOLDER = "hf_ext-node-state"
PRIVACY_STATE_FILE = "privacy.json"
GUARD_STATE_FILE = "secagg-guard.json"


class PrivacyHistoryUnknownError(RuntimeError):
    """A DP-SGD client was asked to train a round > 1 of a run without any record of its earlier rounds (neither in
    `context.state` nor in its durable node state): starting a fresh accountant would under-report its epsilon."""


def node_state_path(state_dir: str, run_id: int, partition_id: int, name: str) -> str:
    """The file `name` of the durable, node-local state of partition `partition_id` in Flower run `run_id`:
    `<state_dir>/hf_ext-node-state/run-<run_id>/partition-<partition_id>/<name>`."""
    return os.path.join(state_dir, NODE_STATE_FOLDER, f"run-{int(run_id)}", f"partition-{int(partition_id)}", name)


def _read_node_state(path: str, run_id: int, partition_id: int, what: str, key: str) -> dict:
    """The record at `path` (written by [`_write_node_state`]), checked to belong to this run and partition; a record
    that cannot be read is an error (its history is unknown), never an empty one."""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError) as err:
        raise PrivacyHistoryUnknownError(
            f"The persisted {what} {path!r} cannot be read ({err}); refusing to continue without it."
        ) from err
    if not isinstance(record, dict) or key not in record:
        raise PrivacyHistoryUnknownError(f"The persisted {what} {path!r} has no {key!r}; refusing to continue.")
    if (record.get("run_id"), record.get("partition_id")) != (int(run_id), int(partition_id)):
        raise PrivacyHistoryUnknownError(
            f"The persisted {what} {path!r} does not belong to run {run_id}, partition-id {partition_id}; refusing."
        )
    return record


def _write_node_state(path: str, run_id: int, partition_id: int, record: dict) -> None:
    """Write `record` (with its run id and partition id) to `path` atomically (temporary file, fsync, rename)."""
    from ..utils.io import atomic_write_json

    atomic_write_json(path, {"run_id": int(run_id), "partition_id": int(partition_id), **record})


def _restore_accountant(context: Context, pid: int, r: int, training_args, state_dir: str | None) -> PrivacyAccountant:
    """This partition's accountant for round `r`: from `context.state` (same SuperNode process), else from its durable
    node state (a restarted SuperNode); under DP-SGD a round > 1 with neither is refused
    ([`PrivacyHistoryUnknownError`]): the node cannot know how much privacy its partition has already spent."""
    return _restore_privacy(context, pid, r, training_args, state_dir)[0]


def _restore_privacy(
    context: Context, pid: int, r: int, training_args, state_dir: str | None
) -> tuple[PrivacyAccountant, int | None]:
    """[`_restore_accountant`] and the last round this node trained in this run (`None`: none on record)."""
    accountant = PrivacyAccountant(training_args.dp_accountant)
    if "privacy" in context.state:
        record = context.state["privacy"]
        accountant.load_state_dict(json.loads(record["accountant"]))
        return accountant, (int(record["last-round"]) if "last-round" in record else None)
    if state_dir is None or getattr(training_args, "dp_clip_norm", None) is None:
        return accountant, None
    path = node_state_path(state_dir, context.run_id, pid, PRIVACY_STATE_FILE)
    last = None
    if os.path.exists(path):
        saved = _read_node_state(path, context.run_id, pid, "privacy accountant", "accountant")
        accountant.load_state_dict(saved["accountant"])
        last = int(saved["last_round"]) if "last_round" in saved else None
    elif r > 1:
        raise PrivacyHistoryUnknownError(
            f"Asked to train round {r} of run {context.run_id} with DP-SGD, but this node (partition-id {pid}) has no "
            f"record of its privacy accountant: not in its Flower context.state (a restarted SuperNode) and not at "
            f"{path!r} (the run config's `work-dir` is node-local; was it removed, or is this another machine?). Its "
            "privacy history is unknown, so it refuses to train rather than report an epsilon that starts from zero."
        )
    return accountant, last


NODE_MAX_EPSILON_KEY = "dp-max-epsilon"
NODE_MAX_DELTA_KEY = "dp-max-delta"


def _node_epsilon_bound(context: Context) -> tuple[float, float] | None:
    """`(dp-max-epsilon, dp-max-delta)` of this node's node config, type-checked; `None` without `dp-max-epsilon`."""
    from .flower_task import _node_value

    if NODE_MAX_EPSILON_KEY not in context.node_config:
        return None
    return _node_value(context.node_config, NODE_MAX_EPSILON_KEY), _node_value(context.node_config, NODE_MAX_DELTA_KEY)


NODE_LEDGER_KEY = "dp-ledger"
LEDGER_FORMAT = "hf_ext-dp-ledger"
LEDGER_VERSION = 1
LEDGER_LOCK_TIMEOUT_S = 120.0
_PER_RUN_BOUND_WARNED: list[bool] = []  # the one-time warning of `dp-max-epsilon` without `dp-ledger` (per process)


class PrivacyLedgerError(PrivacyHistoryUnknownError):
    """The node's `dp-ledger` (its record of every run's DP-SGD on each partition) cannot be read or locked, is
    malformed, or records this partition under another accountant: the partition's privacy spent across runs is
    unknown, so the node refuses to train (never an empty ledger)."""


def _node_ledger(context: Context) -> str | None:
    """The node config's `dp-ledger` path, type-checked; `None` without it."""
    from .flower_task import _node_value

    if NODE_LEDGER_KEY not in context.node_config:
        return None
    return _node_value(context.node_config, NODE_LEDGER_KEY)


class _LedgerLock:
    """The ledger's file lock (`<ledger>.lock`): several SuperNodes on one machine may share a ledger."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        from filelock import FileLock, Timeout

        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise PrivacyLedgerError(
                f"The folder of this node's `{NODE_LEDGER_KEY}` {self.path!r} does not exist; refusing to train "
                "(a mistyped path would start an empty ledger). Create it, or fix the path in `--node-config`."
            )
        self.lock = FileLock(self.path + ".lock", timeout=LEDGER_LOCK_TIMEOUT_S)
        try:
            self.lock.acquire()
        except (Timeout, OSError) as err:
            raise PrivacyLedgerError(
                f"Cannot lock this node's `{NODE_LEDGER_KEY}` {self.path!r} ({type(err).__name__}: {err}); refusing "
                "to train without it."
            ) from err
        return self

    def __exit__(self, *exc):
        self.lock.release()
        return False


def read_privacy_ledger(path: str) -> list[dict]:
    """The entries of the node's privacy ledger at `path` (`[]` when the file does not exist yet), each
    `{"run_id", "partition_id", "accountant", "history", ...}`; a ledger that cannot be read or is malformed raises
    [`PrivacyLedgerError`]. Call it under the ledger's lock."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            ledger = json.load(fh)
    except (OSError, ValueError) as err:
        raise PrivacyLedgerError(
            f"This node's `{NODE_LEDGER_KEY}` {path!r} cannot be read ({err}); its partitions' privacy spent in "
            "earlier runs is unknown, so it refuses to train. Restore the file (or move it away only if the data it "
            "covers is never trained again)."
        ) from err
    bad = None
    if not isinstance(ledger, dict) or ledger.get("format") != LEDGER_FORMAT:
        bad = f"it is not an hf_ext privacy ledger (no 'format': {LEDGER_FORMAT!r})"
    elif ledger.get("version") != LEDGER_VERSION:
        bad = f"its version {ledger.get('version')!r} is not {LEDGER_VERSION}"
    elif not isinstance(ledger.get("entries"), list):
        bad = "it has no 'entries' list"
    entries, seen = [], set()
    for entry in [] if bad else ledger["entries"]:
        ids = [entry.get(k) if isinstance(entry, dict) else None for k in ("run_id", "partition_id")]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            bad = f"entry {entry!r:.120} has no integer run_id / partition_id"
        elif tuple(ids) in seen:
            bad = f"run {ids[0]}, partition-id {ids[1]} is recorded twice"
        else:
            try:
                checked = PrivacyAccountant(entry.get("accountant"))
                checked.load_state_dict({"accountant": entry.get("accountant"), "history": entry.get("history")})
            except ValueError as err:
                bad = f"the entry of run {ids[0]}, partition-id {ids[1]} is not a privacy history ({err})"
        if bad:
            break
        seen.add(tuple(ids))
        entries.append(entry)
    if bad:
        raise PrivacyLedgerError(
            f"This node's `{NODE_LEDGER_KEY}` {path!r} is malformed: {bad}. Its partitions' privacy spent in earlier "
            "runs is unknown, so it refuses to train; restore the file from a backup."
        )
    return entries


def _ledger_runs(
    path: str, entries: list[dict], run_id: int, pid: int, accountant: PrivacyAccountant, before=None
) -> list[dict]:
    """The other runs' entries of partition `pid` in the ledger (refusing another accountant kind, and an entry of
    this run that the node's own accountant does not extend: the node lost state the ledger still counts). After a
    round, `before` is the accountant's history before it: this run's entry must not hold more (a round of the run
    recorded meanwhile, by a concurrent message or another node of the partition, would be overwritten)."""
    mine = [e for e in entries if e["partition_id"] == pid]
    other_kind = sorted({e["run_id"] for e in mine if e["accountant"] != accountant.accountant})
    if other_kind:
        raise PrivacyLedgerError(
            f"This node's `{NODE_LEDGER_KEY}` {path!r} records runs {other_kind} of partition-id {pid} under another "
            f"accountant than this run's {accountant.accountant!r}; the two cannot be composed here, so it refuses to "
            "train. Train this partition with the accountant of the earlier runs (PrivateTrainingArguments.dp_accountant)."
        )
    held = accountant.history if before is None else before
    for e in mine:
        if e["run_id"] == int(run_id) and not _extends(held, e["history"]):
            recorded = sum(int(h[2]) for h in e["history"])
            raise PrivacyLedgerError(
                f"This node's `{NODE_LEDGER_KEY}` {path!r} records more DP-SGD for run {run_id}, partition-id "
                f"{pid} ({recorded} steps) than the node's accountant of the run holds "
                f"({sum(int(h[2]) for h in held)}): its node state was lost, or another round of the run was "
                "trained meanwhile on this partition; it refuses to continue the run (submit a new run if the "
                "budget allows)."
            )
    return sorted((e for e in mine if e["run_id"] != int(run_id)), key=lambda e: e["run_id"])


def _extends(history, recorded) -> bool:
    """Whether the steps of `history` begin with those of `recorded` (lists of `(q, sigma, steps)`; consecutive steps
    at the same `(q, sigma)` may be merged in either)."""
    expand = [[float(q), float(s), int(n)] for q, s, n in history]
    i = 0
    for q, s, n in recorded:
        n = int(n)
        while n > 0:
            if i >= len(expand) or expand[i][:2] != [float(q), float(s)]:
                return False
            take = min(n, expand[i][2])
            n -= take
            expand[i][2] -= take
            if expand[i][2] == 0:
                i += 1
    return True


def compose_ledger(others: list[dict], accountant: PrivacyAccountant) -> PrivacyAccountant:
    """A fresh accountant (of `accountant`'s kind) stepping every event of the `others` runs, then `accountant`'s."""
    total = PrivacyAccountant(accountant.accountant, accountant.pld_discretization)
    for history in [e["history"] for e in others] + [accountant.history]:
        for q, s, n in history:
            total.step(q, s, n)
    return total


def check_ledger_epsilon(total: PrivacyAccountant, bound, run_id: int, others: list[dict], pid: int, what: str):
    """Refuse (`ValueError`) when `total` ([`compose_ledger`]: every run of partition `pid` on record plus this one)
    is above the node's `dp-max-epsilon` at `dp-max-delta`; `what` opens the message. Returns the epsilon."""
    max_eps, max_delta = bound
    eps = total.get_epsilon(max_delta)
    if not eps <= max_eps:
        runs = sorted({e["run_id"] for e in others} | {int(run_id)})
        raise ValueError(
            f"{what} would bring this node's total epsilon on partition-id {pid} across runs "
            f"{', '.join(map(str, runs))} (this run: {run_id}; {total.steps} DP-SGD steps in all, the other runs' "
            f"from its `{NODE_LEDGER_KEY}`) to {eps:.4g} at delta {max_delta:g}, above its node config "
            f"`{NODE_MAX_EPSILON_KEY}={max_eps:g}`, a budget over all runs; it refuses. The earlier runs have spent "
            "the partition's budget: serve it no more runs (or a run within what is left: a larger "
            "`dp-noise-multiplier`, fewer rounds / steps), or raise `dp-max-epsilon` in the node's `--node-config` "
            "if its operator accepts the larger total."
        )
    return eps


def _write_ledger_entry(path: str, entries: list[dict], run_id: int, pid: int, accountant, r: int, args) -> None:
    """Replace (or add) the entry of (`run_id`, `pid`) in the ledger with `accountant`'s history, atomically."""
    from ..utils.io import atomic_write_json

    entry = {
        "run_id": int(run_id),
        "partition_id": int(pid),
        "accountant": accountant.accountant,
        "pld_discretization": accountant.pld_discretization,
        "history": [list(h) for h in accountant.history],
        "last_round": int(r),
        "dp_delta": getattr(args, "dp_delta", None),
    }
    kept = [e for e in entries if (e["run_id"], e["partition_id"]) != (int(run_id), int(pid))]
    atomic_write_json(path, {"format": LEDGER_FORMAT, "version": LEDGER_VERSION, "entries": [*kept, entry]})


def _warn_per_run_bound_once() -> None:
    """One warning per process: `dp-max-epsilon` without `dp-ledger` bounds each run, not the node's total."""
    if _PER_RUN_BOUND_WARNED:
        return
    _PER_RUN_BOUND_WARNED.append(True)
    import warnings

    warnings.warn(
        f"This node's `{NODE_MAX_EPSILON_KEY}` bounds each Flower run on its own: a server that submits more runs on "
        f"the same partition gets each within the bound, not their composition. Set `{NODE_LEDGER_KEY}=<file>` in "
        "the node's `--node-config` to bound the total across runs (docs/federated.md).",
        UserWarning,
        stacklevel=3,
    )


def planned_round_steps(training_args, fed_args: FederatedArguments, num_examples: int) -> tuple[float, int]:
    """`(sample_rate, steps)` of one client round of DP-SGD on `num_examples` examples, as [`PrivateTrainer`] runs it:
    `fed_args.local_steps` steps, or `ceil(local_epochs x batches per epoch)` with `round(1 / q)` Poisson batches per
    epoch, at the Poisson rate `q = batch size / num_examples` (at most 1)."""
    q = poisson_sample_rate(training_args.per_device_train_batch_size, num_examples)
    if fed_args.local_steps > 0:
        return q, int(fed_args.local_steps)
    return q, math.ceil(fed_args.local_epochs * poisson_batches_per_epoch(q))


def check_round_request(r: int, last_round: int | None, num_rounds: int, pid: int, run_id: int) -> None:
    """Refuse (`ValueError`) to train round `r` unless `1 <= r <= num_rounds` (the run's rounds, run config
    `num-server-rounds`) and `r` is above `last_round`, the last round this node trained in this run: every training
    releases an update computed from the node's data, so a server sending a round again or beyond the run would get
    more releases than the node agreed to (and, under DP-SGD, spend epsilon past what the run config planned)."""
    if not 1 <= r <= num_rounds:
        raise ValueError(
            f"Asked to train round {r} of run {run_id}, but the run has rounds 1..{num_rounds} (run config "
            "`num-server-rounds`, FederatedArguments.num_rounds); this node (partition-id "
            f"{pid}) refuses to train outside them. Submit a new run with more `num-server-rounds` instead."
        )
    if last_round is not None and r <= last_round:
        raise ValueError(
            f"Asked to train round {r} of run {run_id}, but this node (partition-id {pid}) already trained round "
            f"{last_round}; it refuses to train a round again (each training releases another update of its data)."
        )


def check_round_epsilon(
    accountant: PrivacyAccountant, sample_rate: float, noise_multiplier: float, steps: int, bound, r: int, pid: int
) -> float:
    """Refuse (`ValueError`) to train round `r` when the node's epsilon at its node config's `dp-max-delta` after the
    round's planned `steps` (at `sample_rate`, `noise_multiplier`) would exceed its `dp-max-epsilon` (`bound`:
    [`_node_epsilon_bound`]). Returns that epsilon; `accountant` is left unchanged."""
    max_eps, max_delta = bound
    after = PrivacyAccountant(accountant.accountant, accountant.pld_discretization)
    after.load_state_dict(accountant.state_dict())
    after.step(sample_rate, noise_multiplier, steps)
    eps = after.get_epsilon(max_delta)
    if not eps <= max_eps:
        raise ValueError(
            f"Training round {r} ({steps} DP-SGD steps at sampling rate {sample_rate:.4g}, noise multiplier "
            f"{noise_multiplier:g}) would bring this node's epsilon (partition-id {pid}) to {eps:.4g} at delta "
            f"{max_delta:g}, above its node config `{NODE_MAX_EPSILON_KEY}={max_eps:g}`; it refuses to train. Submit "
            f"a run within the bound (fewer `num-server-rounds` / `local-steps`, a larger `dp-noise-multiplier`), or "
            f"raise `{NODE_MAX_EPSILON_KEY}` in the node's `--node-config`."
        )
    return eps


def _local_round(
    model_fn, dataset_fn, fed_args, training_args, data_collator, processing_class, context, state, r, state_dir=None
):
    """Rebuild the model, train on this node's partition from `state`, persist the accountant in `context.state`
    and, under DP-SGD, durably in `state_dir` and in the node config's `dp-ledger` if set (before the reply leaves
    the node; with `dp-max-epsilon`, the ledger's composition of every run on the partition is checked before and
    after training)."""
    from .flower_task import check_node_config_keys

    pid = _partition(context)
    check_node_config_keys(context.node_config)  # a mistyped requirement must not be ignored
    check_no_per_client_settings(fed_args)  # before anything else: no entry a server picked for this index is used
    if "num-partitions" in context.node_config:
        check_client_learning_rates(fed_args, int(context.node_config["num-partitions"]))
    lrs = fed_args.learning_rates()
    if lrs is not None and not 0 <= pid < len(lrs):
        raise ValueError(
            f"--client_learning_rates has {len(lrs)} values but this node trains partition {pid}; give one per client."
        )
    dp_on = getattr(training_args, "dp_clip_norm", None) is not None
    bound = _node_epsilon_bound(context)
    if bound is not None and not dp_on:
        raise ValueError(
            f"This node's node config sets `{NODE_MAX_EPSILON_KEY}`, which requires DP-SGD, but the run trains "
            "without it (run config `dp-clip-norm`, PrivateTrainingArguments.dp_clip_norm); it refuses to train. "
            f"Submit the run with DP-SGD, or drop `{NODE_MAX_EPSILON_KEY}` from the node's `--node-config`."
        )
    accountant, last_round = _restore_privacy(context, pid, r, training_args, state_dir)
    check_round_request(r, last_round, fed_args.num_rounds, pid, context.run_id)
    dataset = dataset_fn(pid)
    ledger = _node_ledger(context)  # type-checked in every run
    if not dp_on:
        ledger = None  # a run without DP-SGD has no accountant: it is not recorded (docs/federated.md)
    if bound is not None and ledger is None:
        _warn_per_run_bound_once()
    if bound is not None:  # before training: a refused round trains nothing and releases nothing
        q, steps = planned_round_steps(training_args, fed_args, len(dataset))
        check_round_epsilon(accountant, q, training_args.dp_noise_multiplier, steps, bound, r, pid)
    if ledger is not None:
        with _LedgerLock(ledger):
            entries = read_privacy_ledger(ledger)
        others = _ledger_runs(ledger, entries, context.run_id, pid, accountant)
        if bound is not None:
            planned = compose_ledger(others, accountant)
            planned.step(q, training_args.dp_noise_multiplier, steps)
            what = f"Training round {r} ({steps} DP-SGD steps at sampling rate {q:.4g}, noise multiplier "
            what += f"{training_args.dp_noise_multiplier:g})"
            check_ledger_epsilon(planned, bound, context.run_id, others, pid, what)
    before = [list(h) for h in accountant.history]  # the ledger's entry of this run must not hold more after training
    model = model_fn()
    if fed_args.use_lora:
        model = apply_lora(model, fed_args, seed=training_args.seed)
    new_state, n, metrics = train_client(
        model, state, dataset, training_args, fed_args, pid, r, data_collator, processing_class, accountant
    )
    if bound is not None and not accountant.get_epsilon(bound[1]) <= bound[0]:
        # the steps the Trainer ran differ from the plan: the update stays on the node (nothing is spent or recorded)
        raise ValueError(
            f"Round {r} ran {accountant.steps} DP-SGD steps in all and this node's epsilon (partition-id {pid}) "
            f"reached {accountant.get_epsilon(bound[1]):.4g} at delta {bound[1]:g}, above its node config "
            f"`{NODE_MAX_EPSILON_KEY}={bound[0]:g}`; it refuses to upload this round's update."
        )
    if ledger is not None:  # checked and written under one lock: a run recorded meanwhile is composed too
        with _LedgerLock(ledger):
            entries = read_privacy_ledger(ledger)
            others = _ledger_runs(ledger, entries, context.run_id, pid, accountant, before)
            if bound is not None:
                what = f"Round {r} ran {accountant.steps} DP-SGD steps in this run and uploading its update"
                check_ledger_epsilon(compose_ledger(others, accountant), bound, context.run_id, others, pid, what)
            _write_ledger_entry(ledger, entries, context.run_id, pid, accountant, r, training_args)
    if state_dir is not None and dp_on:
        path = node_state_path(state_dir, context.run_id, pid, PRIVACY_STATE_FILE)
        _write_node_state(path, context.run_id, pid, {"last_round": int(r), "accountant": accountant.state_dict()})
    context.state["privacy"] = ConfigRecord({"accountant": accountant.to_json(), "last-round": int(r)})
    # the aggregation weight: the number of examples, or 1 under client-level DP (uniform DP-FedAvg: the server needs
    # no count, so none leaves the node in the clear)
    reply = {"num-examples": int(upload_weight(n, fed_args)), "partition-id": pid}
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
    refuse_imprecise_secagg: bool = True,
    state_dir: str | None = None,
) -> ClientApp:
    """A Flower `ClientApp` whose training runs [`train_client`] on the node's partition.

    The node's partition comes from `context.node_config["partition-id"]`. Every round the model is rebuilt with
    `model_fn()` (and the seeded adapter), the received global state is loaded, the client trains with the `Trainer`
    (Goldfish / DP-SGD from `training_args`) and replies with its state; with secure aggregation it replies with its
    update through Flower's `secaggplus_mod`, which masks it, behind hf_ext's guard mods ([`secagg_client_mods`]).
    The client's privacy accountant and its last SecAgg+ round persist in `context.state` across rounds and, because a
    restarted SuperNode starts with an empty `context.state`, durably in node-local files under `state_dir`
    ([`node_state_path`]: keyed by run id and partition id, written atomically after each round's training and before
    the reply, or at SecAgg+ setup before any share leaves). A restarted node resumes from them; under DP-SGD a
    node asked to train a round > 1 without either record refuses ([`PrivacyHistoryUnknownError`]).

    Args:
        model_fn (`Callable[[], PreTrainedModel]`): builds the (deterministic) base model.
        dataset_fn (`Callable[[int], datasets.Dataset]`): the tokenized training data of a partition id.
        fed_args ([`FederatedArguments`]): protocol options (must match the server's).
        training_args ([`PrivateTrainingArguments`]): local training template.
        data_collator (`Callable`, *optional*): collator for the `Trainer`.
        processing_class (*optional*): tokenizer passed to the `Trainer`.
        refuse_imprecise_secagg (`bool`, *optional*, defaults to `True`): with secure aggregation, refuse to upload
            an update whose expected SecAgg+ quantization error exceeds `SECAGG_MAX_RELATIVE_ERROR` (0.5; above
            `SECAGG_WARN_RELATIVE_ERROR`, 1e-2, it warns) ([`check_secagg_range`]); `False` only warns (a weight
            that SecAgg+ would round to 0 is refused either way).
        state_dir (`str`, *optional*): the node-local folder of the durable per-run state (defaults to
            `training_args.output_dir`; the Flower App passes its run config's `work-dir`).
    """
    if state_dir is None:
        state_dir = getattr(training_args, "output_dir", None)
        if not state_dir:
            raise ValueError("make_client_app needs a `state_dir` (or `training_args.output_dir`) for its node state.")
    if fed_args.secure_aggregation:
        check_no_per_client_settings(fed_args)
        return _make_secagg_client_app(
            model_fn,
            dataset_fn,
            fed_args,
            training_args,
            data_collator,
            processing_class,
            refuse_imprecise_secagg,
            state_dir=state_dir,
        )
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
            state_dir=state_dir,
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


SECAGG_SETUP_SOURCES = {  # SecAgg+ setup key -> where a node's own value comes from (named in a refusal)
    "max_weight": "run config `secagg-max-weight` (FederatedArguments.secagg_max_weight; 1 under client-level DP)",
    "clipping_range": "run config `secagg-clipping-range` (FederatedArguments.secagg_clipping_range)",
    "target_range": "hf_ext's SECAGG_QUANTIZATION_RANGE (2^22), fixed",
    "mod_range": "hf_ext's SECAGG_MODULUS_RANGE (2^32), fixed",
}


def secagg_setup_parameters(fed_args: FederatedArguments) -> dict[str, float | int]:
    """The numeric SecAgg+ setup parameters that `fed_args` fixes, keyed as in Flower's setup message
    (`secaggplus_constants.Key`): `max_weight` ([`secagg_max_weight`]), `clipping_range`
    (`fed_args.secagg_clipping_range`), `target_range` (`SECAGG_QUANTIZATION_RANGE`) and `mod_range`
    (`SECAGG_MODULUS_RANGE`). [`make_server_app`] configures `SecAggPlusWorkflow` with them and every node's round
    guard refuses a setup that differs ([`check_setup_parameters`])."""
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    return {
        Key.MAX_WEIGHT: float(secagg_max_weight(fed_args)),
        Key.CLIPPING_RANGE: float(fed_args.secagg_clipping_range),
        Key.TARGET_RANGE: SECAGG_QUANTIZATION_RANGE,
        Key.MOD_RANGE: SECAGG_MODULUS_RANGE,
    }


def check_setup_parameters(configs, expected: dict[str, float | int]) -> None:
    """Refuse (`ValueError`) a SecAgg+ setup whose numeric parameters differ from `expected`, the ones this node's own
    configuration implies ([`secagg_setup_parameters`]).

    flwr 1.42's `secaggplus_mod` uses whatever the server's setup message says: a server that sends every node but a
    victim `max_weight=1e12` (their weights round to 0 at 2^22 levels) or a tiny `clipping_range` (their updates are
    clipped to almost nothing) receives the victim's update as the "mean". The arrays and the run config every node
    receives stay the same, so a digest check of those does not see it; this check does.
    """
    for key, want in expected.items():
        got = configs.get(key)
        real = isinstance(got, (int, float)) and not isinstance(got, bool)
        if not real or got != want:  # Python compares int and float exactly
            raise ValueError(
                f"SecAgg+ setup refused: the server sent {key}={got!r}, but this node's configuration implies "
                f"{key}={want!r} (from {SECAGG_SETUP_SOURCES.get(key, 'this node')}). A server sending nodes different "
                "SecAgg+ settings can scale every update but one to ~0 and read that one off the mean; every node and "
                "the server must run with the same setting."
            )


def _round_id(msg) -> int:
    try:
        return int(msg.metadata.group_id)
    except (TypeError, ValueError):
        raise ValueError(
            f"SecAgg+ message carries no round id (group_id={msg.metadata.group_id!r}); refusing. Flower's "
            "SecAggPlusWorkflow sets it to the server round."
        ) from None


def make_secagg_round_guard_mod(
    max_colluders: int = 0, state_dir: str | None = None, *, setup_parameters: dict[str, float | int]
):
    """A Flower client mod, placed before `secaggplus_mod`, enforcing per-node round bookkeeping, the colluder bound
    and the node's own SecAgg+ setup parameters.

    The node keeps the last round it served in `context.state` (record `GUARD_STATE_KEY`). A SecAgg+ setup message is
    refused unless its round id is above that, its threshold passes [`check_setup_request`] and its `max_weight`,
    `clipping_range`, `target_range` and `mod_range` equal `setup_parameters` ([`check_setup_parameters`]); the round
    is then recorded before anything is shared, and every later stage must carry the same round id. `context.state` lives in
    the SuperNode's memory for one run: a new run starts without a record, and so would a restarted SuperNode, which
    a server could then ask to serve a round again. With `state_dir` the record is also written atomically to the
    node-local file [`node_state_path`]`(state_dir, run_id, partition_id, GUARD_STATE_FILE)` before the setup is
    passed on, and read back when `context.state` lacks it, so a restarted node still refuses a served round.

    The run config is chosen by whoever submits the run (the server side), so a node operator sets its own bound with
    `flower-supernode --node-config "secagg-max-colluders=<c>"`; the larger of that and `max_colluders` applies.

    Args:
        max_colluders (`int`, *optional*, defaults to 0): how many nodes may collude with the server
            (`FederatedArguments.secure_aggregation_max_colluders`).
        state_dir (`str`, *optional*): the node-local folder of the durable record (None: `context.state` only).
        setup_parameters (`dict`): the setup parameters this node's configuration implies,
            [`secagg_setup_parameters`]`(fed_args)`.
    """
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    from .secure_aggregation import _check_colluders

    _check_colluders(max_colluders)
    required = {Key.MAX_WEIGHT, Key.CLIPPING_RANGE, Key.TARGET_RANGE, Key.MOD_RANGE}
    if not isinstance(setup_parameters, dict) or set(setup_parameters) != required:
        raise ValueError(
            f"`setup_parameters` must be a dict with exactly the keys {sorted(required)} "
            f"(secagg_setup_parameters(fed_args)), got {setup_parameters!r}."
        )
    setup_parameters = dict(setup_parameters)

    def secagg_round_guard_mod(msg, ctxt, call_next):
        from flwr.app import ConfigRecord
        from flwr.app.message_type import MessageType
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

        if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
            configs = msg.content.config_records[RECORD_KEY_CONFIGS]
            stage = configs.get(Key.STAGE)
            round_id = _round_id(msg)
            record = ctxt.state.config_records.get(GUARD_STATE_KEY)
            path = None
            if state_dir is not None:
                pid = _partition(ctxt)
                path = node_state_path(state_dir, ctxt.run_id, pid, GUARD_STATE_FILE)
                if record is None and os.path.exists(path):
                    saved = _read_node_state(path, ctxt.run_id, pid, "SecAgg+ round record", "last_round")
                    saved_round, writer = int(saved["last_round"]), saved.get("node_id")
                    # a record of this very round written by another node id is what a second node configured with
                    # the same partition-id and work-dir leaves (the ServerApp refuses the duplicate partition ids);
                    # a restarted node with a stable id (SuperNode authentication) or any older round is refused
                    if not (saved_round == round_id and writer is not None and int(writer) != int(ctxt.node_id)):
                        record = ConfigRecord({"last-round": saved_round})
                        ctxt.state.config_records[GUARD_STATE_KEY] = record
            last = None if record is None else int(record["last-round"])
            if stage == Stage.SETUP:
                node_bound = ctxt.node_config.get(NODE_MAX_COLLUDERS_KEY, 0)
                if isinstance(node_bound, bool) or not isinstance(node_bound, int) or node_bound < 0:
                    raise ValueError(
                        f"node config {NODE_MAX_COLLUDERS_KEY!r} must be an integer >= 0, got {node_bound!r}."
                    )
                check_setup_request(configs, round_id, last, max(max_colluders, node_bound))
                check_setup_parameters(configs, setup_parameters)
                if path is not None:  # durably first: a restart must not forget a round whose shares may have left
                    _write_node_state(path, ctxt.run_id, pid, {"last_round": round_id, "node_id": int(ctxt.node_id)})
                ctxt.state.config_records[GUARD_STATE_KEY] = ConfigRecord({"last-round": round_id})
            elif last != round_id:
                raise ValueError(
                    f"SecAgg+ stage {stage!r} of round {round_id}, but this node set up round {last}; refusing."
                )
        return call_next(msg, ctxt)

    return secagg_round_guard_mod


def secagg_client_mods(fed_args: FederatedArguments, state_dir: str | None = None) -> list:
    """The client mods of a SecAgg+ `ClientApp`, in order: the round guard (bookkeeping, colluder bound, the setup
    parameters `fed_args` implies; its record kept durably under `state_dir` if given), the unmask guard, then
    Flower's `secaggplus_mod`."""
    from flwr.client.mod import secaggplus_mod

    return [
        make_secagg_round_guard_mod(
            fed_args.secure_aggregation_max_colluders,
            state_dir=state_dir,
            setup_parameters=secagg_setup_parameters(fed_args),
        ),
        secagg_unmask_guard_mod,
        secaggplus_mod,
    ]


def _make_secagg_client_app(
    model_fn,
    dataset_fn,
    fed_args,
    training_args,
    data_collator,
    processing_class,
    refuse_imprecise=False,
    state_dir=None,
):
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
                state_dir=state_dir,
            )
            update = prepare_upload(global_state, state, fed_args, initial_layout())
            weight = int(upload_weight(n, fed_args))  # 1 under client-level DP (uniform DP-FedAvg)
            check_secagg_range(update, weight, fed_args, refuse_imprecise=refuse_imprecise)
            # the update's own keys (in merge_then_average mode the dense B @ A per module, not the exchanged
            # tensors), in the order the server reads them back (`secagg_upload_keys`)
            return [update[k].detach().cpu().numpy() for k in sorted(update)], weight, reply

    cache: dict[str, list[str]] = {}

    def _fill_cache():
        if "keys" not in cache:
            state, layout = _initial_state_and_layout(model_fn, fed_args, training_args.seed)
            cache["keys"], cache["layout"] = list(state), layout

    def initial_keys():
        _fill_cache()
        return cache["keys"]

    def initial_layout():
        _fill_cache()
        return cache["layout"]

    def client_fn(context: Context):
        return _LoRAClient(context).to_client()

    return ClientApp(client_fn=client_fn, mods=secagg_client_mods(fed_args, state_dir=state_dir))


SECAGG_QUANTIZATION_RANGE = 2**22  # Flower's default `quantization_range`, passed explicitly by make_server_app
SECAGG_MODULUS_RANGE = 2**32  # Flower's default `modulus_range`, passed explicitly by make_server_app
# above SECAGG_WARN_RELATIVE_ERROR (1e-2) of expected relative L2 quantization error a client warns, above
# SECAGG_MAX_RELATIVE_ERROR (0.5) it refuses: the rule of the in-process secure aggregation too (.secure_aggregation)


def secagg_max_weight(fed_args: FederatedArguments) -> float:
    """The `max_weight` of Flower's SecAgg+: `fed_args.secagg_max_weight`, or 1 under client-level DP, where every
    client uploads with weight 1 ([`upload_weight`]). SecAgg+ scales each upload by `weight / max_weight` before
    quantizing to 2^22 levels over `[-clipping_range, clipping_range]`: weight-1 uploads scaled by 1/1000 would fall
    below one quantization level and the aggregate would carry rounding noise as large as the update itself."""
    return 1.0 if fed_args.client_dp_clip_norm is not None else fed_args.secagg_max_weight


def secagg_quantization_error(
    update: dict[str, torch.Tensor], num_examples: int, fed_args: FederatedArguments
) -> float:
    """An upper bound on the expected relative L2 error that Flower's SecAgg+ quantization adds to this client's
    contribution `(num_examples / max_weight) * update`.

    flwr 1.42's `secaggplus_mod` rounds the weight ratio to `round(ratio * 2^22) / 2^22` and each scaled entry
    stochastically to a step `2 * clipping_range / 2^22`: the rounding error of an entry has a standard deviation of
    at most half a step, so over `d` entries the error has an RMS norm of at most `sqrt(d) * step / 2`, relative to
    `ratio * ||update||`; the weight's relative rounding error is added. 0 for an all-zero update (nothing to lose).
    """
    ratio = num_examples / secagg_max_weight(fed_args)
    step = 2 * fed_args.secagg_clipping_range / SECAGG_QUANTIZATION_RANGE
    error = rounding_error_bound(update, ratio, step)
    if error == 0.0:
        return 0.0
    q_ratio = round(ratio * SECAGG_QUANTIZATION_RANGE)
    if q_ratio == 0:
        return math.inf
    return error + abs(q_ratio / SECAGG_QUANTIZATION_RANGE - ratio) / ratio


def check_secagg_range(
    update: dict[str, torch.Tensor], num_examples: int, fed_args: FederatedArguments, refuse_imprecise: bool = True
) -> None:
    """Refuse (`ValueError`) an upload that Flower's SecAgg+ would distort silently.

    - Clipping: SecAgg+ clips `(num_examples / max_weight) * update` to `[-clipping_range, clipping_range]` before
      quantizing; clipped values would bias the aggregate.
    - Precision: with `max_weight` far above the client's number of examples the scaled update shrinks towards one
      quantization step (max_weight 1e5 for ~300 examples: 12% error, 1e6: 112%). Above an expected relative error
      ([`secagg_quantization_error`], an upper bound) of `SECAGG_WARN_RELATIVE_ERROR` (1e-2) the client warns loudly
      (`UserWarning` and a Flower log line); above `SECAGG_MAX_RELATIVE_ERROR` (0.5: the unbiased rounding noise is
      of the order of the update itself) it refuses, unless `refuse_imprecise=False` (then it warns). A small update
      (a low learning rate, few local steps, a converged round) raises the relative error too, so the refusal is
      kept for errors that leave little of the update; between the two a run proceeds with a warning.
    - Zero weight: a weight ratio `num_examples / max_weight` below half a step of 2^22 levels rounds to 0, so the
      upload would count for nothing (and if every node's did, the server's mean would divide by 0): always refused,
      whatever `refuse_imprecise`.

    The messages name the Flower run-config key first, then the `FederatedArguments` field / recipe flag.
    """
    max_weight = secagg_max_weight(fed_args)
    ratio = num_examples / max_weight
    bad = [k for k, v in update.items() if v.numel() and not bool(torch.isfinite(v).all())]
    if bad:  # NaN would pass the range check below and quantize to finite garbage in the aggregate
        raise ValueError(f"The update is not finite (NaN/inf in {bad[:3]}); refusing to upload it to SecAgg+.")
    peak = max((float(v.abs().max()) for v in update.values() if v.numel()), default=0.0)
    if ratio > 1:
        raise ValueError(
            f"num_examples={num_examples} exceeds the SecAgg+ max_weight {max_weight}: raise run config "
            "`secagg-max-weight` (FederatedArguments.secagg_max_weight, --secagg_max_weight)."
        )
    if round(ratio * SECAGG_QUANTIZATION_RANGE) == 0:  # whatever the update, and also with refuse_imprecise=False
        raise ValueError(
            f"The SecAgg+ weight num_examples / max_weight = {num_examples} / {max_weight:g} rounds to 0 at "
            f"SecAgg+'s 2^22 levels: this upload would count for nothing in the mean (and if every node's weight "
            "rounded to 0 the server would divide by 0). Lower run config `secagg-max-weight` "
            "(FederatedArguments.secagg_max_weight, --secagg_max_weight) towards the largest client's number of "
            "examples."
        )
    if ratio * peak > fed_args.secagg_clipping_range:
        fix = (
            f"beyond the SecAgg+ clipping range {fed_args.secagg_clipping_range} (SecAgg+ would clip it): raise run "
            "config `secagg-clipping-range` (FederatedArguments.secagg_clipping_range, --secagg_clipping_range) or "
            "lower the learning rate."
        )
        # the size goes to this node's log only: a client's exception text reaches the server, and the update's
        # largest entry is what secure aggregation hides
        _node_log(f"The weighted update reaches {ratio * peak:.3g}, {fix}")
        raise ValueError(f"The weighted update reaches {fix} (Its size is in this node's log, not sent.)")
    error = secagg_quantization_error(update, num_examples, fed_args)
    if error > SECAGG_WARN_RELATIVE_ERROR:  # the message only; check_rounding_error decides
        step = 2 * fed_args.secagg_clipping_range / SECAGG_QUANTIZATION_RANGE
        if fed_args.client_dp_clip_norm is not None:
            fix = (
                "under client-level DP max_weight is 1: lower run config `secagg-clipping-range` "
                "(FederatedArguments.secagg_clipping_range) towards the largest update entry"
            )
        else:
            fix = (
                f"lower run config `secagg-max-weight` (FederatedArguments.secagg_max_weight, --secagg_max_weight) "
                f"towards the largest client's number of examples (this client has {num_examples}), or lower "
                "`secagg-clipping-range` if the updates allow"
            )
        how = (
            f"it is scaled by num_examples / max_weight = {num_examples} / {max_weight:g} before rounding to steps of "
            f"{step:.3g} (2 * clipping range / 2^22); {fix}."
        )
        message = (
            f"SecAgg+ would quantize this update with an expected relative error of up to {error:.3g}, above "
            f"{SECAGG_WARN_RELATIVE_ERROR:g}: {how}"
        )
        # refused: the error (a function of the update's norm) stays in this node's log, out of the text sent
        refusal = (
            f"SecAgg+ would quantize this update with an expected relative error above {SECAGG_MAX_RELATIVE_ERROR:g} "
            f"(the value is in this node's log, not sent): {how}"
        )
        check_rounding_error(error, message, refuse_imprecise, log=_node_log, refusal=refusal)


def _node_log(text: str) -> None:
    """A warning in this node's Flower log (stays on the node)."""
    from logging import WARNING

    from flwr.common import log

    log(WARNING, "%s", text)


def aggregate_train_metrics(records: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """The round's training metrics from the clients' replies: the example-weighted mean `train_loss` (when every client
    reports it: not under DP-SGD or secure aggregation, see [`reports_train_loss`]) and
    `dp_epsilon_max`, the largest epsilon over the clients (a privacy guarantee is per client: a mean would understate
    the worst one), as the secure-aggregation path reports them. The weight and `partition-id` are not metrics."""
    metrics = [next(iter(record.metric_records.values())) for record in records]
    weights = [float(m[weighting_metric_name]) for m in metrics]
    out = _mean_train_loss(weights, metrics)
    eps = [float(m["dp_epsilon"]) for m in metrics if "dp_epsilon" in m]
    if eps:
        out["dp_epsilon_max"] = max(eps)
    return MetricRecord(out)


class RoundFailedError(RuntimeError):
    """A federated round did not aggregate what it had to: fewer clients' updates than required (error replies,
    missing replies after the timeout, a halted SecAgg+ round) or two replies with the same partition id."""


def _reply_partition(msg) -> int | None:
    """The `partition-id` a reply reports in the clear (in its metrics), if any."""
    if msg.has_error():
        return None
    for record in msg.content.metric_records.values():
        if "partition-id" in record:
            return int(record["partition-id"])
    return None


class _RoundMonitor:
    """Per-round bookkeeping of both server paths: which nodes each exchange was sent to, which replied, which
    failed (and why), the partition ids they reported; the outcome of each round; the first failure."""

    def __init__(self, num_clients: int, min_round_clients: int | None, timeout: float | None, on_round=None):
        if min_round_clients is not None and not 1 <= min_round_clients <= num_clients:
            raise ValueError(f"`min_round_clients` must be in [1, {num_clients}] or None, got {min_round_clients}.")
        self.num_clients = num_clients
        self.min_round_clients = min_round_clients
        self.timeout = timeout
        self.on_round = on_round
        self.node_partition: dict[int, int] = {}
        self.exchanges: list[dict] = []  # of the current round
        self.failure: RoundFailedError | None = None
        self.rounds: list[dict] = []

    def start_round(self) -> None:
        self.exchanges = []

    def record(self, stage: str, sent, replies) -> None:
        ok, errors = {}, {}
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if msg.has_error():
                errors[node] = msg.error.reason
            else:
                ok[node] = _reply_partition(msg)
                if ok[node] is not None:
                    self.node_partition[node] = ok[node]
        self.exchanges.append({"stage": stage, "sent": [int(n) for n in sent], "ok": ok, "errors": errors})

    def _name(self, node: int) -> str:
        pid = self.node_partition.get(node)
        return f"node {node}" + ("" if pid is None else f" (partition-id {pid})")

    def problems(self) -> list[str]:
        """What went wrong with which node in this round, once per node, in stage order."""
        seen, out = set(), []
        wait = "" if self.timeout is None else f" within the {self.timeout:g} s timeout (run config `round-timeout`)"
        for ex in self.exchanges:
            for node in ex["sent"]:
                if node in seen:
                    continue
                if node in ex["errors"]:
                    reason = str(ex["errors"][node]).rstrip(". ")
                    out.append(f"{self._name(node)} failed in {ex['stage']}: {reason}")
                elif node not in ex["ok"]:
                    out.append(f"{self._name(node)} sent no reply in {ex['stage']}{wait}")
                else:
                    continue
                seen.add(node)
        return out

    def fail(self, server_round: int, reason: str) -> RoundFailedError:
        lines = [f"Round {server_round} failed: {reason}."]
        problems = self.problems()
        if problems:
            lines.append("Failed or missing clients: " + "; ".join(problems) + ".")
        err = RoundFailedError(" ".join(lines))
        if self.failure is None:
            self.failure = err
        return err

    def check(self, server_round: int, replies: list[tuple[int, int | None]]) -> RoundFailedError | None:
        """The failure of a round whose aggregation would use `replies` (node id, reported partition id), or None."""
        for node, pid in replies:
            if pid is not None:
                self.node_partition[int(node)] = pid
        partitions = [pid for _, pid in replies]
        known = [p for p in partitions if p is not None]
        dups = sorted({p for p in known if known.count(p) > 1})
        if dups:
            nodes = "; ".join(
                f"partition-id {p} from nodes {sorted(int(n) for n, q in replies if q == p)}" for p in dups
            )
            return self.fail(
                server_round,
                f"partition ids {dups} were reported by more than one node ({nodes}): every SuperNode needs its own "
                "`--node-config partition-id` (a duplicate trains one partition twice and another never)",
            )
        need = self.min_round_clients
        if need is not None and len(partitions) < need:
            expected = (
                f"all {self.num_clients} clients (num-partitions)"
                if need == self.num_clients
                else f"at least {need} of {self.num_clients} clients"
            )
            missing = sorted(set(range(self.num_clients)) - set(known))
            return self.fail(
                server_round,
                f"aggregated the updates of {len(partitions)} clients (partition ids {sorted(known)}) where {expected} "
                f"were required; partition ids without an update: {missing}",
            )
        return None

    def connected_nodes(
        self, server_round: int, count: Callable[[], int], wait: Callable[[float], None], need: int
    ) -> int:
        """How many nodes to sample this round. Flower waits for `num_clients` connected nodes before it samples
        (the Message API `FedAvg` without limit, the legacy client manager of SecAgg+ 24 h), so a SuperNode that
        died in an earlier round, and that the SuperLink dropped after its missed heartbeats, stalled the next round
        before any timeout applied. With a `timeout`, wait at most that long for all of them: with fewer, sample the
        connected nodes if they are at least `need` (the round then aggregates what it gets), else fail the round
        naming the missing nodes (raises [`RoundFailedError`] where `min_round_clients` is set; returns 0, a skipped
        round, where it is not). Without a timeout: `num_clients` (Flower's own wait)."""
        if self.timeout is None:
            return self.num_clients
        import time

        deadline = time.monotonic() + self.timeout
        connected = count()
        while connected < self.num_clients and time.monotonic() < deadline:
            wait(min(1.0, max(0.0, deadline - time.monotonic())))
            connected = count()
        if connected >= self.num_clients:
            return self.num_clients
        if connected >= need:
            return connected
        if self.min_round_clients is None:
            return 0
        self.start_round()
        raise self.fail(
            server_round,
            f"only {connected} of the {self.num_clients} nodes (num-partitions) were connected after waiting "
            f"{self.timeout:g} s (run config `round-timeout`), where {need} were required (a SuperNode that stopped "
            "is dropped by the SuperLink after its missed heartbeats); restart the missing SuperNodes with their "
            "`--node-config partition-id`",
        )

    def succeeded(self, server_round: int, partitions: list[int | None], metrics) -> None:
        entry = {
            "round": server_round,
            "num_clients": len(partitions),
            "partition_ids": sorted(p for p in partitions if p is not None),
            "metrics": {k: float(v) for k, v in dict(metrics or {}).items()},
        }
        self.rounds.append(entry)
        if self.on_round is not None:
            self.on_round(entry)


class FederatedLoRAStrategy(FedAvg):
    """`FedAvg` (Message API) whose aggregation is [`aggregate_uploads`]: LoRA factor averaging or
    merge-then-average, full FedAvg, and client-level DP. Used without secure aggregation.

    Client replies are ordered by their `partition-id` metric before aggregation so that the result matches the
    in-process simulation exactly. Two replies with the same partition id raise [`RoundFailedError`]; so does a round
    with fewer than `min_round_clients` valid replies (error replies, or nodes that did not reply within the timeout).

    Args:
        fed_args ([`FederatedArguments`]): protocol options.
        seed (`int`, *optional*, defaults to 0): the public training seed; it does not drive the client-level DP
            noise (secret unless `fed_args.client_dp_noise_seed` is set).
        num_clients (`int`, *optional*): the federation size that client-level DP divides by (default
            `min_train_nodes`), fixed whatever the number of replies.
        min_round_clients (`int`, *optional*): the fewest clients whose updates a round must aggregate; `None`
            (default) accepts any round with at least one valid reply and skips a round without one.
        timeout (`float`, *optional*): the reply timeout the strategy is started with (named in the error only).
        on_round (`Callable[[dict], None]`, *optional*): called with each aggregated round's record (round, number
            of clients, partition ids, metrics).
        fan_in_fan_out (`Sequence[str]`, *optional*): `"merge_then_average"` mode: the model's
            [`fan_in_fan_out_modules`] (modules that store their weight as `(in, out)`, e.g. GPT-2's Conv1D).
        **kwargs: passed to `flwr.serverapp.strategy.FedAvg` (`min_train_nodes`, `min_available_nodes`, ...).
    """

    def __init__(
        self,
        fed_args: FederatedArguments,
        seed: int = 0,
        num_clients: int | None = None,
        min_round_clients: int | None = None,
        timeout: float | None = None,
        on_round: Callable[[dict], None] | None = None,
        fan_in_fan_out: Sequence[str] = (),
        **kwargs,
    ):
        if fed_args.secure_aggregation:
            raise ValueError("With secure aggregation use make_server_app (Flower's SecAggPlusWorkflow).")
        kwargs.setdefault("fraction_evaluate", 0.0)
        kwargs.setdefault("train_metrics_aggr_fn", aggregate_train_metrics)
        super().__init__(weighted_by_key="num-examples", **kwargs)
        self.fed_args = fed_args
        self.seed = seed
        self.fan_in_fan_out = list(fan_in_fan_out)
        self.num_clients = num_clients if num_clients is not None else self.min_train_nodes
        self.monitor = _RoundMonitor(self.num_clients, min_round_clients, timeout, on_round)
        self._global: dict[str, torch.Tensor] | None = None
        self._sent: list[int] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        import time

        self._global = arrays.to_torch_state_dict()
        config[ROUND_KEY] = server_round
        need = self.monitor.min_round_clients or 1
        sample = self.monitor.connected_nodes(server_round, lambda: len(list(grid.get_node_ids())), time.sleep, need)
        if sample == 0:
            self._sent = []
            return []
        # Flower samples max(fraction_train * connected, min_train_nodes) and waits for min_available_nodes of them:
        # with fewer connected nodes than `num_clients` (a node stopped), sample the connected ones for this round
        saved = self.min_train_nodes, self.min_available_nodes
        self.min_train_nodes = self.min_available_nodes = min(sample, self.min_train_nodes)
        try:
            messages = list(super().configure_train(server_round, arrays, config, grid))
        finally:
            self.min_train_nodes, self.min_available_nodes = saved
        self._sent = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        self.monitor.start_round()
        self.monitor.record("the train message", self._sent, replies)
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        partitions = [_reply_partition(m) for m in valid]
        failure = self.monitor.check(server_round, [(m.metadata.src_node_id, p) for m, p in zip(valid, partitions)])
        if failure is not None:
            raise failure
        if not valid:
            return None, None
        valid.sort(key=lambda m: int(m.content["metrics"].get("partition-id", m.metadata.src_node_id)))
        contents = [m.content for m in valid]
        uploads = [c["arrays"].to_torch_state_dict() for c in contents]
        weights = [float(c["metrics"][self.weighted_by_key]) for c in contents]
        names = [
            f"The client of partition-id {_reply_partition(m)} (node {m.metadata.src_node_id}, round {server_round})"
            for m in valid
        ]
        new_state = aggregate_uploads(
            self._global,
            uploads,
            weights,
            self.fed_args,
            server_round,
            self.seed,
            num_clients=self.num_clients,
            client_names=names,
            fan_in_fan_out=self.fan_in_fan_out,
        )
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        self.monitor.succeeded(server_round, partitions, metrics)
        return ArrayRecord(new_state), metrics


class _RecordingGrid:
    """A view of a `Grid` that reports every `send_and_receive` exchange to a [`_RoundMonitor`]."""

    def __init__(self, grid, monitor: _RoundMonitor):
        self._grid, self._monitor, self.stage = grid, monitor, "?"

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._monitor.record(self.stage, [m.metadata.dst_node_id for m in messages], replies)
        return replies


def _checked_secagg_workflow(monitor: _RoundMonitor, **kwargs):
    """Flower's `SecAggPlusWorkflow` whose halted rounds are not silent: with `monitor.min_round_clients` set a halt
    is a round failure (recorded, raised by the ServerApp after the workflow), else a warning. Once a round has
    failed, the remaining rounds send nothing."""
    from logging import INFO, WARNING

    from flwr.common import log
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

    class CheckedSecAggPlusWorkflow(SecAggPlusWorkflow):
        def __call__(self, grid, context) -> None:
            if monitor.failure is not None:
                return
            server_round = int(context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
            monitor.start_round()
            view = _RecordingGrid(grid, monitor)
            state = WorkflowState()
            steps = (
                ("the SecAgg+ setup stage", self.setup_stage),
                ("the SecAgg+ share-keys stage", self.share_keys_stage),
                ("the SecAgg+ collect-masked-vectors stage (training)", self.collect_masked_vectors_stage),
                ("the SecAgg+ unmask stage", self.unmask_stage),
            )
            log(INFO, "Secure aggregation commencing.")
            for stage, step in steps:
                view.stage = stage
                if not step(view, context, state):
                    if monitor.failure is not None:  # the strategy refused the aggregate
                        return
                    reason = f"secure aggregation halted in {stage} (too few nodes left for the threshold)"
                    if monitor.min_round_clients is not None:
                        monitor.fail(server_round, reason)
                    else:
                        log(WARNING, "Round %s: %s; the global state is unchanged.", server_round, reason)
                    return
            log(INFO, "Secure aggregation completed.")

    return CheckedSecAggPlusWorkflow(**kwargs)


def secagg_upload_keys(initial: dict[str, torch.Tensor], fed_args: FederatedArguments) -> list[str]:
    """The names of the arrays a SecAgg+ client uploads, in upload order: the keys of its update
    ([`client_update`]), i.e. the exchanged tensors, or in `"merge_then_average"` mode the adapted modules (dense
    `B @ A` updates) and the other exchanged tensors."""
    return sorted(client_update(initial, initial, fed_args.mode, fed_args.lora_scaling))


def make_secagg_strategy(
    fed_args: FederatedArguments,
    initial: dict[str, torch.Tensor],
    num_clients: int,
    seed: int,
    monitor: _RoundMonitor | None = None,
):
    """A legacy Flower strategy for `SecAggPlusWorkflow`: it receives only the securely aggregated weighted mean of
    the clients' updates (every `FitRes` carries that same mean), adds client-level DP noise if configured and
    applies the mean to the global state ([`apply_secure_mean`]). With a `monitor`, a round whose replies repeat a
    partition id or number fewer than `monitor.min_round_clients` is recorded as failed and not applied."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    keys = sorted(initial)
    upload_keys = secagg_upload_keys(initial, fed_args)
    monitor = monitor if monitor is not None else _RoundMonitor(num_clients, None, None)

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
            # fewer nodes than the threshold cannot complete a SecAgg+ round
            need = max(monitor.min_round_clients or 1, fed_args.threshold(num_clients))
            sample = monitor.connected_nodes(
                server_round,
                client_manager.num_available,
                lambda seconds: client_manager.wait_for(num_clients, timeout=seconds),
                need,
            )
            if sample == 0:  # too few nodes and no minimum required: the workflow skips the round, with a warning
                return []
            saved = self.min_fit_clients, self.min_available_clients
            self.min_fit_clients = self.min_available_clients = min(sample, self.min_fit_clients)
            try:
                return super().configure_fit(server_round, parameters, client_manager)
            finally:
                self.min_fit_clients, self.min_available_clients = saved

        def aggregate_fit(self, server_round, results, failures):
            partitions = [int(r.metrics["partition-id"]) if "partition-id" in r.metrics else None for _, r in results]
            replies = [(proxy.node_id, p) for (proxy, _), p in zip(results, partitions)]
            if monitor.check(server_round, replies) is not None or not results:
                return None, {}
            mean_arrays = parameters_to_ndarrays(results[0][1].parameters)
            if len(mean_arrays) != len(upload_keys):
                raise ValueError(
                    f"The securely aggregated update has {len(mean_arrays)} arrays but this server expects "
                    f"{len(upload_keys)}: the adapter configuration or aggregation mode differs between server and "
                    "clients."
                )
            mean = {k: torch.from_numpy(np.asarray(a, dtype=np.float64)) for k, a in zip(upload_keys, mean_arrays)}
            bad = [k for k, v in mean.items() if not bool(torch.isfinite(v).all())]
            if bad:  # flwr divides the unmasked sum by the sum of the quantized weights, 0 if every one rounded to 0
                monitor.fail(
                    server_round,
                    f"the securely aggregated mean is not finite (NaN/inf in {bad[:3]}): SecAgg+ divides the sum by the "
                    "sum of the uploads' quantized weights, which is 0 when every node's num_examples / max_weight "
                    "rounds to 0; lower run config `secagg-max-weight` (FederatedArguments.secagg_max_weight). The "
                    "global state is not updated",
                )
                return None, {}
            weights = [float(res.num_examples) for _, res in results]
            try:
                new = apply_secure_mean(
                    self.global_state, mean, weights, fed_args, server_round, num_clients=num_clients
                )
            except NonFiniteStateError as err:  # a finite mean whose sum with the global state overflows its dtype
                monitor.fail(server_round, f"{err} The global state is not updated")
                return None, {}
            self.global_state = new
            metrics = _mean_train_loss(weights, [r.metrics for _, r in results])
            eps = [float(r.metrics["dp_epsilon"]) for _, r in results if "dp_epsilon" in r.metrics]
            if eps:
                metrics["dp_epsilon_max"] = max(eps)
            monitor.succeeded(server_round, partitions, metrics)
            return ndarrays_to_parameters([new[k].numpy() for k in keys]), metrics

    return SecAggLoRAStrategy()


def make_server_app(
    model_fn: Callable,
    fed_args: FederatedArguments,
    num_clients: int,
    seed: int = 0,
    on_finish: Callable[[dict[str, torch.Tensor], object], None] | None = None,
    timeout: float | None = None,
    min_round_clients: int | None = None,
    on_round: Callable[[dict], None] | None = None,
) -> ServerApp:
    """A Flower `ServerApp` running FedAvg over LoRA adapters (or full weights) for `fed_args.num_rounds` rounds.

    With `fed_args.secure_aggregation` it runs Flower's `DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`
    with every sampled client as a share holder and the Shamir threshold of `fed_args.threshold(num_clients)`
    (an honest majority), so up to `num_clients - threshold` clients may drop out of a round.

    Two replies with the same `partition-id` always fail the run ([`RoundFailedError`]). With `min_round_clients`
    set, so does any round that aggregates fewer clients' updates (error replies, nodes without a reply within
    `timeout`, a halted SecAgg+ round): the ServerApp raises naming the round and the failed or missing nodes, and
    `on_finish` is not called. Without it (default) a round without any update leaves the global state unchanged.

    Args:
        model_fn (`Callable[[], PreTrainedModel]`): builds the base model (same as the clients').
        fed_args ([`FederatedArguments`]): protocol options.
        num_clients (`int`): nodes sampled per round (all of them, as in the paper); at most 1023 with secure
            aggregation (the SecAgg+ field of 2^32 holds that many 2^22-level uploads).
        seed (`int`, *optional*, defaults to 0): the training seed (adapter initialisation and server noise).
        on_finish (`Callable`, *optional*): called with the final global state and the Flower result / history.
        timeout (`float`, *optional*): seconds to wait for the replies of each exchange, passed to Flower
            (`FedAvg.start(timeout=...)`: one exchange per round; `SecAggPlusWorkflow(timeout=...)`: each of the
            four SecAgg+ stages), and the longest wait for all `num_clients` nodes to be connected before a round
            samples them (with fewer: the connected ones if they are at least `min_round_clients`, and the SecAgg+
            threshold, else the round fails). None: 24 h per round without secure aggregation, no limit with it,
            and Flower's own wait for the nodes.
        min_round_clients (`int`, *optional*): the fewest clients whose updates every round must aggregate
            (`num_clients` to require all of them).
        on_round (`Callable[[dict], None]`, *optional*): called with the record of each aggregated round
            (`round`, `num_clients`, `partition_ids`, `metrics`).
    """
    if not is_int(num_clients) or num_clients < 1:
        raise ValueError(f"`num_clients` must be an integer >= 1 (nodes sampled per round), got {num_clients!r}.")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"`timeout` must be > 0 seconds or None, got {timeout}.")
    if fed_args.secure_aggregation:
        if num_clients < 2:
            raise ValueError(
                f"Secure aggregation needs at least 2 clients (SecAgg+ hides each update in a sum), got {num_clients}: "
                "add clients or turn secure aggregation off."
            )
        most = SECAGG_MODULUS_RANGE // SECAGG_QUANTIZATION_RANGE - 1
        if num_clients > most:  # flwr only checks an integer num_shares; ours is the float 1.0 (every node)
            raise ValueError(
                f"Secure aggregation over {num_clients} clients would overflow Flower's SecAgg+ field: each node "
                f"uploads values of up to 2^22 (quantization range) that are summed modulo 2^32, so more than {most} "
                "nodes wrap around and the aggregate is silently wrong. Use at most "
                f"{most} clients per round or turn secure aggregation off."
            )
        threshold = fed_args.threshold(num_clients)
    _RoundMonitor(num_clients, min_round_clients, timeout)  # validates min_round_clients
    check_client_learning_rates(fed_args, num_clients)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        initial, layout = _initial_state_and_layout(model_fn, fed_args, seed)
        if not fed_args.secure_aggregation:
            strategy = FederatedLoRAStrategy(
                fed_args,
                fan_in_fan_out=layout,
                seed=seed,
                num_clients=num_clients,
                min_round_clients=min_round_clients,
                timeout=timeout,
                on_round=on_round,
                min_train_nodes=num_clients,
                min_available_nodes=num_clients,
            )
            result = strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(initial),
                num_rounds=fed_args.num_rounds,
                timeout=timeout if timeout is not None else 24 * 3600,
            )
            if on_finish is not None:
                on_finish(result.arrays.to_torch_state_dict(), result)
            return
        from flwr.common.secure_aggregation.secaggplus_constants import Key
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.workflow import DefaultWorkflow

        monitor = _RoundMonitor(num_clients, min_round_clients, timeout, on_round)
        strategy = make_secagg_strategy(fed_args, initial, num_clients, seed, monitor=monitor)
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=fed_args.num_rounds), strategy=strategy)
        setup = secagg_setup_parameters(fed_args)  # what every node's round guard expects
        secagg = _checked_secagg_workflow(
            monitor,
            num_shares=1.0,  # every sampled client holds a share of every other client's secrets
            reconstruction_threshold=threshold,
            max_weight=setup[Key.MAX_WEIGHT],  # 1 under client-level DP (weight-1 uploads)
            clipping_range=setup[Key.CLIPPING_RANGE],
            quantization_range=setup[Key.TARGET_RANGE],
            modulus_range=setup[Key.MOD_RANGE],
            timeout=timeout,
        )
        DefaultWorkflow(fit_workflow=secagg)(grid, legacy)
        if monitor.failure is not None:
            raise monitor.failure
        if on_finish is not None:
            on_finish({k: v.clone() for k, v in strategy.global_state.items()}, legacy.history)

    return app
