"""The federated LoRA task of a Flower App, built from the run config (`[tool.flwr.app.config]` in the app's
`pyproject.toml`, overridable with `flwr run --run-config`). The ServerApp and the ClientApp of
`examples/flower_app` are [`run_config_server_app`] and [`run_config_client_app`]; the same [`FlowerTask`] drives
the in-process [`FederatedSimulation`], so a deployment can be checked against it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.corpus import corpus_domains
from ..data.tokenizer import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE
from .simulation import AGGREGATIONS, FederatedArguments

# run-config key -> (type, default)
RUN_CONFIG_DEFAULTS: dict[str, tuple[type, Any]] = {
    "num-server-rounds": (int, 2),
    "num-partitions": (int, 2),
    "local-steps": (int, 2),
    "batch-size": (int, 4),
    "learning-rate": (float, 5e-3),
    "lora-r": (int, 4),
    "lora-alpha": (float, 8.0),
    "aggregation": (str, "factors"),
    "secure-aggregation": (bool, True),
    "secagg-max-weight": (float, 1000.0),
    "secagg-clipping-range": (float, 8.0),
    "secagg-max-colluders": (int, 0),
    "dp-clip-norm": (float, 0.0),
    "dp-noise-multiplier": (float, 0.0),
    "dp-delta": (float, 1e-5),
    "dp-noise-seed": (int, -1),
    "seed": (int, 0),
    "docs-per-client": (int, 4),
    "block-size": (int, 32),
    "vocab-size": (int, 512),
    "hidden-size": (int, 32),
    "output-path": (str, ""),
    # node-local folder (default <tmp>/hf_ext_flower): the Trainer's output_dir and each node's durable per-run state
    # (DP accountant, SecAgg+ round record) that a restarted SuperNode resumes from; keep it on persistent storage
    "work-dir": (str, ""),
    # seconds the ServerApp waits for the replies of each exchange (one per plain round, each of the 4 SecAgg+ stages)
    "round-timeout": (float, 600.0),
    # false: a round must aggregate every partition's update, else the run fails and nothing is written
    "accept-partial-rounds": (bool, False),
}


# numeric run-config key -> (the values it accepts, in words; the check of a finite value)
RUN_CONFIG_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "num-server-rounds": (">= 1", lambda v: v >= 1),
    # one group of the embedded corpus' domains per client: more partitions than domains failed on the nodes, after
    # the run had started, naming the library's `num_clients`
    "num-partitions": (
        f"between 1 and {len(corpus_domains())} (one group of the embedded corpus' domains per client)",
        lambda v: 1 <= v <= len(corpus_domains()),
    ),
    "local-steps": (
        ">= 1 (optimizer steps per client and round; the App has no epoch-based fallback)",
        lambda v: v >= 1,
    ),
    "batch-size": (">= 1", lambda v: v >= 1),
    "learning-rate": ("finite and > 0", lambda v: v > 0),
    "lora-r": (">= 1", lambda v: v >= 1),
    "lora-alpha": ("finite and > 0", lambda v: v > 0),
    "secagg-max-weight": ("finite and > 0", lambda v: v > 0),
    "secagg-clipping-range": ("finite and > 0", lambda v: v > 0),
    "secagg-max-colluders": (">= 0", lambda v: v >= 0),
    "dp-clip-norm": ("finite and >= 0 (0: DP-SGD off)", lambda v: v >= 0),
    "dp-noise-multiplier": ("finite and >= 0", lambda v: v >= 0),
    "dp-delta": ("in (0, 1)", lambda v: 0 < v < 1),
    "dp-noise-seed": (">= 0, or -1 for secret noise", lambda v: v >= -1),
    "seed": (">= 0", lambda v: v >= 0),
    "docs-per-client": (">= 1", lambda v: v >= 1),
    "block-size": (">= 2 (a block needs a next-token target)", lambda v: v >= 2),
    "vocab-size": (
        f"in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] (at least the byte alphabet plus special tokens; at most 2**20: the "
        "BPE trainer reserves memory in proportion to it)",
        lambda v: MIN_VOCAB_SIZE <= v <= MAX_VOCAB_SIZE,
    ),
    "hidden-size": (
        "a positive multiple of 8 (the tiny Llama's 4 attention heads, each with an even head dimension for its "
        "rotary position embeddings)",
        lambda v: v >= 8 and v % 8 == 0,
    ),
    "round-timeout": ("a finite number of seconds > 0", lambda v: v > 0),
}


def parse_run_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a Flower run config against [`RUN_CONFIG_DEFAULTS`] (unknown keys and wrong types are errors)."""
    unknown = set(run_config) - set(RUN_CONFIG_DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown run-config keys {sorted(unknown)}; known: {sorted(RUN_CONFIG_DEFAULTS)}.")
    out = {}
    for key, (typ, default) in RUN_CONFIG_DEFAULTS.items():
        value = run_config.get(key, default)
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise TypeError(f"run-config `{key}` must be {typ.__name__}, got {value!r}.")
        out[key] = value
    return out


def check_run_config(cfg: Mapping[str, Any]) -> None:
    """Refuse (`ValueError`) run-config values the apps cannot run with, naming the run-config keys to change: every
    numeric key outside its range ([`RUN_CONFIG_RANGES`]: NaN and infinite values too), then the combinations."""
    for key, (accepted, ok) in RUN_CONFIG_RANGES.items():
        value = cfg[key]
        if not (math.isfinite(value) and ok(value)):
            raise ValueError(f"run-config `{key}` must be {accepted}, got {value!r}.")
    if cfg["aggregation"] not in AGGREGATIONS:  # FederatedArguments refused it naming the recipe's --aggregation
        raise ValueError(f"run-config `aggregation` must be one of {list(AGGREGATIONS)}, got {cfg['aggregation']!r}.")
    n = cfg["num-partitions"]
    if cfg["secure-aggregation"]:
        c = cfg["secagg-max-colluders"]
        if n < 2:
            raise ValueError(
                f"run-config `secure-aggregation=true` needs `num-partitions` >= 2 (SecAgg+ hides each update in the "
                f"sum of at least 2 clients), got num-partitions={n}: start more SuperNodes and raise `num-partitions`, "
                "or set `secure-aggregation=false`."
            )
        if c < 0 or (n + c) // 2 + 1 > n:
            raise ValueError(
                f"run-config `secagg-max-colluders={c}` is not possible with `num-partitions={n}`: the SecAgg+ "
                f"threshold (n + c) // 2 + 1 = {(n + c) // 2 + 1} would exceed the {n} clients. Set "
                f"`secagg-max-colluders` to a value in [0, {n - 1}] or raise `num-partitions`."
            )


def check_output_path(path: str) -> None:
    """Refuse (`ValueError`), on the ServerApp's machine before the first round, a run-config `output-path` the final
    global state could not be written to: an existing folder (or a folder at `<output-path>.json`), or a path under a
    file or under a folder that cannot be written. Nothing is created. Empty: no result file, nothing to check."""
    if not path:
        return
    fix = "Set `output-path` to a file path in a folder you can write to"
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise ValueError(
            f"run-config `output-path`={path!r} is a folder; the ServerApp writes the final global adapter to the file "
            f"`output-path` (safetensors) and its metadata to `<output-path>.json`. {fix}, e.g. "
            f"`output-path='{os.path.join(path, 'global.safetensors')}'`."
        )
    if os.path.isdir(path + ".json"):
        raise ValueError(
            f"run-config `output-path`={path!r}: {path + '.json'!r}, where the run's metadata goes, is a folder. "
            f"Remove it, or {fix[0].lower() + fix[1:]}."
        )
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):  # the nearest existing folder (the missing ones are created at the save)
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            f"run-config `output-path`={path!r} cannot be written: {existing!r} is a file, not a folder. {fix}."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"run-config `output-path`={path!r} cannot be written: the folder {existing!r} is not writable. {fix}."
        )


def check_work_dir(path: str) -> None:
    """Create the run-config `work-dir` on this node and check that files can be written there (the Trainer's
    `output_dir` and the node's durable state); refuse (`ValueError`) a file or an unwritable path, naming the key."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"run-config `work-dir`={path!r} is a file, not a folder. Set `work-dir` to a folder this node can write "
            "to (on persistent storage: it keeps the node's privacy accountant and SecAgg+ round record)."
        )
    from ..utils.io import ensure_writable_dir

    ensure_writable_dir(path, "run-config `work-dir`")


@dataclass
class FlowerTask:
    """Everything both apps need: deterministic model and data builders and the protocol options."""

    config: dict[str, Any]
    fed_args: FederatedArguments
    training_args: Any
    tokenizer: Any = field(repr=False)
    _datasets: dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def num_clients(self) -> int:
        return self.config["num-partitions"]

    @property
    def seed(self) -> int:
        return self.config["seed"]

    def model_fn(self):
        """The tiny Llama every process builds identically (seeded), with eager attention for DP-SGD."""
        from transformers import LlamaConfig, LlamaForCausalLM

        h = self.config["hidden-size"]
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            cfg = LlamaConfig(
                vocab_size=len(self.tokenizer),
                hidden_size=h,
                intermediate_size=2 * h,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=4,
                max_position_embeddings=256,
                tie_word_embeddings=True,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            model = LlamaForCausalLM(cfg)
        model.set_attn_implementation("eager")
        return model

    def dataset_fn(self, partition_id: int):
        """Partition `partition_id` of the embedded corpus: one group of domains per client (non-IID)."""
        if not 0 <= partition_id < self.num_clients:
            raise ValueError(f"partition-id {partition_id} is outside [0, {self.num_clients}) (num-partitions).")
        if partition_id not in self._datasets:
            from ..data import load_corpus
            from .simulation import build_client_dataset, split_by_column

            parts = split_by_column(load_corpus("train"), "domain", self.num_clients)
            part = parts[partition_id]
            part = part.select(range(min(self.config["docs-per-client"], len(part))))
            self._datasets[partition_id] = build_client_dataset(
                part, [], self.tokenizer, self.config["block-size"], seed=self.seed
            )
        return self._datasets[partition_id]


def task_from_run_config(run_config: Mapping[str, Any]) -> FlowerTask:
    """Build the [`FlowerTask`] of a run config (see [`RUN_CONFIG_DEFAULTS`])."""
    from ..data import build_tokenizer
    from .trainer import PrivateTrainingArguments

    cfg = parse_run_config(run_config)
    check_run_config(cfg)
    # a leading `~` is the home folder of the machine that builds the task (ServerApp: output-path; each node:
    # work-dir); taken literally it created a folder named `~` in the SuperLink's or SuperNode's working folder
    for key in ("output-path", "work-dir"):
        cfg[key] = os.path.expanduser(cfg[key])
    dp = cfg["dp-clip-norm"] > 0
    if cfg["dp-noise-multiplier"] > 0 and not dp:
        raise ValueError("run-config `dp-noise-multiplier` > 0 needs `dp-clip-norm` > 0 (else DP would be off).")
    fed_args = FederatedArguments(
        num_rounds=cfg["num-server-rounds"],
        local_steps=cfg["local-steps"],
        lora_r=cfg["lora-r"],
        lora_alpha=cfg["lora-alpha"],
        aggregation=cfg["aggregation"],
        secure_aggregation=cfg["secure-aggregation"],
        secagg_max_weight=cfg["secagg-max-weight"],
        secagg_clipping_range=cfg["secagg-clipping-range"],
        secure_aggregation_max_colluders=cfg["secagg-max-colluders"],
    )
    work = default_work_dir(cfg)
    training_args = PrivateTrainingArguments(
        output_dir=work,
        per_device_train_batch_size=cfg["batch-size"],
        learning_rate=cfg["learning-rate"],
        lr_scheduler_type="constant",
        report_to="none",
        disable_tqdm=True,
        logging_steps=1000,
        save_strategy="no",
        use_cpu=True,
        seed=cfg["seed"],
        max_grad_norm=0.0 if dp else 1.0,
        dp_clip_norm=cfg["dp-clip-norm"] if dp else None,
        dp_noise_multiplier=cfg["dp-noise-multiplier"],
        dp_delta=cfg["dp-delta"],
        # -1 (default): secret DP noise; a seed >= 0 makes the noise reproducible by anyone who knows the run config
        # (the ClientApp refuses it unless the node config opts in: check_node_privacy)
        dp_noise_seed=cfg["dp-noise-seed"] if cfg["dp-noise-seed"] >= 0 else None,
    )
    return FlowerTask(cfg, fed_args, training_args, build_tokenizer(cfg["vocab-size"]))


def save_global_state(state: Mapping[str, torch.Tensor], path: str, metadata: Mapping[str, Any]) -> None:
    """Write the final global state (safetensors) to `path` and its metadata (strict JSON) to `<path>.json`, each
    atomically: an old `<path>.json` is removed first, the weights are written, the JSON last (with the weights'
    SHA-256), so a present JSON always describes the weights next to it."""
    import hashlib

    from safetensors.torch import save

    from ..utils.io import atomic_open, atomic_write_results

    data = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
    if os.path.exists(path + ".json"):
        os.remove(path + ".json")
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    meta = {
        **dict(metadata),
        "weights_file": os.path.basename(path),
        "weights_sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_results(path + ".json", meta)


def task_work_dir(task: FlowerTask) -> str:
    """The node-local folder a task writes to: its Trainer's `output_dir` (the run config's `work-dir`, default
    `<tmp>/hf_ext_flower`)."""
    return getattr(task.training_args, "output_dir", None) or default_work_dir(task.config)


def default_work_dir(cfg: Mapping[str, Any]) -> str:
    """The run config's `work-dir`, or `<tmp>/hf_ext_flower` when it is empty."""
    return cfg["work-dir"] or os.path.join(tempfile.gettempdir(), "hf_ext_flower")


def save_result(state: Mapping[str, torch.Tensor], path: str, metadata: Mapping[str, Any], rescue_dir: str) -> None:
    """[`save_global_state`] to `path`; if that fails (the path turned into a folder, its folder into a file, a full
    disk), save the same state and metadata into a new folder under `rescue_dir` (else under the system temp folder)
    and raise `RuntimeError` naming `output-path`, the reason and where the trained adapter is, instead of losing it."""
    try:
        save_global_state(state, path, metadata)
        return
    except OSError as err:
        reason = f"{err.strerror or err}" + (f": {err.filename!r}" if err.filename else "")
        failure = err
    from ..utils.io import make_temp_dir

    rescued = None
    for parent in (rescue_dir, tempfile.gettempdir()):
        try:
            os.makedirs(parent, exist_ok=True)
            rescued = os.path.join(make_temp_dir(parent, "hf_ext_flower_result-"), "global.safetensors")
            save_global_state(state, rescued, metadata)
            break
        except OSError:
            rescued = None
    where = (
        f"The trained global adapter was saved to {rescued!r} (and its metadata to {rescued + '.json'!r}) instead"
        if rescued
        else "It could not be saved anywhere else either"
    )
    raise RuntimeError(
        f"The run finished, but run-config `output-path`={path!r} could not be written ({reason}). {where}. Set "
        "`output-path` to a file path in a folder you can write to."
    ) from failure


def result_metadata(task: FlowerTask, rounds: list[dict]) -> dict[str, Any]:
    """The structured `<output-path>.json` of a finished run: the run config, every round's number of clients,
    partition ids and metrics, the largest epsilon over the clients (float, or None without DP-SGD) and the
    secure-aggregation settings."""
    from .flower import (
        SECAGG_MAX_RELATIVE_ERROR,
        SECAGG_QUANTIZATION_RANGE,
        SECAGG_WARN_RELATIVE_ERROR,
        secagg_max_weight,
    )

    fed, n = task.fed_args, task.num_clients
    eps = [r["metrics"]["dp_epsilon_max"] for r in rounds if "dp_epsilon_max" in r["metrics"]]
    secagg = {"enabled": bool(fed.secure_aggregation)}
    if fed.secure_aggregation:
        secagg.update(
            threshold=fed.threshold(n),
            max_colluders=fed.secure_aggregation_max_colluders,
            max_weight=float(secagg_max_weight(fed)),
            clipping_range=float(fed.secagg_clipping_range),
            quantization_range=SECAGG_QUANTIZATION_RANGE,
            warn_relative_quantization_error=SECAGG_WARN_RELATIVE_ERROR,
            max_relative_quantization_error=SECAGG_MAX_RELATIVE_ERROR,
        )
    return {
        "run_config": dict(task.config),
        "num_rounds": len(rounds),
        "expected_clients_per_round": n,
        "all_rounds_complete": all(r["num_clients"] == n for r in rounds),
        "rounds": rounds,
        "dp_epsilon_max": float(max(eps)) if eps else None,
        "secure_aggregation": secagg,
    }


def run_config_server_app(task_fn: Callable[[Mapping[str, Any]], FlowerTask] = task_from_run_config):
    """A `ServerApp` that builds its task from the run's config and writes the final global state to the
    run config's `output-path` (if set), with [`result_metadata`] in `<output-path>.json`.

    Every round must aggregate the update of each of the `num-partitions` clients (unless `accept-partial-rounds`):
    a failed, timed-out (`round-timeout`) or halted round, or two nodes with the same partition id, make the ServerApp
    raise [`RoundFailedError`] naming the round and the clients, and nothing is written to `output-path`."""
    from flwr.serverapp import Grid, ServerApp

    from .flower import RoundFailedError, make_server_app

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context) -> None:
        task = task_fn(context.run_config)
        path = task.config["output-path"]
        check_output_path(path)  # before the first round: a bad path used to fail only at the final save
        out: dict[str, Any] = {}
        rounds: list[dict] = []

        def finish(state, result):
            out["state"] = state
            out["result"] = result

        inner = make_server_app(
            task.model_fn,
            task.fed_args,
            task.num_clients,
            seed=task.seed,
            on_finish=finish,
            timeout=task.config["round-timeout"],
            min_round_clients=1 if task.config["accept-partial-rounds"] else task.num_clients,
            on_round=rounds.append,
        )
        try:
            inner(grid, context)
        except RoundFailedError as err:
            if path:
                raise RoundFailedError(f"{err} Nothing was written to output-path {path!r}.") from err
            raise
        if len(rounds) != task.config["num-server-rounds"] or "state" not in out:  # defensive: never a stale result
            raise RoundFailedError(
                f"The run aggregated {len(rounds)} of {task.config['num-server-rounds']} rounds; nothing was written."
            )
        if path:
            save_result(out["state"], path, result_metadata(task, rounds), task_work_dir(task))

    return app


# The run config is written by the server side (whoever submits the run with `flwr run`): under the malicious-server
# threat model it chooses every privacy setting of the run. These node-config keys (`flower-supernode --node-config
# "key=value ..."`) let a node operator pin the settings it needs; a run config outside them is refused on the node.
# key -> (type, default, meaning)
NODE_PRIVACY_KEYS: dict[str, tuple[type, Any, str]] = {
    "dp-allow-server-noise-seed": (
        bool,
        False,
        "accept a run-config `dp-noise-seed` >= 0 (reproducible DP-SGD noise and sampling: whoever knows the seed, "
        "the server first, can regenerate and subtract the noise); tests only",
    ),
    "dp-min-noise-multiplier": (
        float,
        0.0,
        "the smallest run-config `dp-noise-multiplier` the node trains with; > 0 also requires DP-SGD "
        "(`dp-clip-norm` > 0)",
    ),
    "dp-max-epsilon": (
        float,
        math.inf,
        "the largest epsilon (at delta `dp-max-delta`) the node accepts for the whole run, computed before training "
        "from the run config's batch size, local steps, rounds and noise multiplier and the node's data size, and "
        "checked again before every round against the node's own accountant; also requires DP-SGD. Without "
        "`dp-ledger` it bounds each run on its own; with it, the total over every run on the partition",
    ),
    "dp-ledger": (
        str,
        None,
        "a node-local JSON file (chosen by the node's operator, shared by the node's SuperNodes) recording the DP-SGD "
        "history of every run on each partition; with `dp-max-epsilon`, every round is checked against the "
        "composition of all runs on record",
    ),
    "dp-max-delta": (
        float,
        1e-5,
        "the delta at which `dp-max-epsilon` is checked; a run-config `dp-delta` above it is refused when it is set",
    ),
    "secagg-required": (
        bool,
        False,
        "refuse a run config with `secure-aggregation=false` (the node would upload its trained state in the clear)",
    ),
}


# the node-config keys of the SecAgg+ guard mods (read in .flower: NODE_MAX_COLLUDERS_KEY, NODE_REFUSE_DROPOUTS_KEY)
NODE_SECAGG_KEYS = ("secagg-max-colluders", "secagg-refuse-dropouts")
# node-config keys with these prefixes are hf_ext's requirements: an unknown one is a mistyped requirement
NODE_KEY_PREFIXES = ("dp-", "secagg-")


def check_node_config_keys(node_config: Mapping[str, Any]) -> None:
    """Refuse (`ValueError`) a node-config key in hf_ext's namespaces (`dp-*`, `secagg-*`) that no app reads: a
    mistyped privacy requirement (`secagg-requierd=true`, `dp-max-epsilom=1`) used to be ignored, and the node trained
    and uploaded without the protection its operator asked for."""
    import difflib

    known = sorted(set(NODE_PRIVACY_KEYS) | set(NODE_SECAGG_KEYS))
    unknown = sorted(str(k) for k in node_config if str(k).startswith(NODE_KEY_PREFIXES) and k not in known)
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else repr(k)
                 for k in unknown]  # fmt: skip
        raise ValueError(
            f"Unknown node-config keys {', '.join(hints)}: this node refuses to train rather than ignore a privacy "
            f"requirement. The node-config keys hf_ext reads are {known} (plus partition-id, num-partitions); restart "
            "the SuperNode with the key spelled as listed."
        )


def _node_value(node_config: Mapping[str, Any], key: str) -> Any:
    """The node-config value of a [`NODE_PRIVACY_KEYS`] key (its default when absent), type-checked."""
    typ, default, _ = NODE_PRIVACY_KEYS[key]
    if key not in node_config:
        return default
    value = node_config[key]
    if typ is str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"node-config `{key}` must be a non-empty path (a string), got {value!r} (`--node-config "
                f"\"{key}='/path/to/file.json'\"`)."
            )
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ValueError(
                f'node-config `{key}` must be true or false, got {value!r} (`--node-config "{key}=true"`).'
            )
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"node-config `{key}` must be a number, got {value!r}.")
    value = float(value)
    if key == "dp-max-delta" and not 0 < value < 1:
        raise ValueError(f"node-config `dp-max-delta` must be in (0, 1), got {value!r}.")
    if key == "dp-max-epsilon" and not value > 0:
        raise ValueError(f"node-config `dp-max-epsilon` must be > 0, got {value!r}.")
    if key == "dp-min-noise-multiplier" and not 0 <= value < math.inf:
        raise ValueError(f"node-config `dp-min-noise-multiplier` must be a finite number >= 0, got {value!r}.")
    return value


def node_partition_id(node_config: Mapping[str, Any]) -> int:
    """The node config's `partition-id`, an integer >= 0; refuse (`ValueError`, naming the key and the fix) a missing
    one or any other value (`1.5` used to train partition 1, `true` partition 1, and `abc` failed with Python's
    `invalid literal for int()`)."""
    fix = 'start the SuperNode with `--node-config "partition-id=<i> num-partitions=<n>"`, i in 0..n-1'
    if "partition-id" not in node_config:
        raise ValueError(f"The node config has no 'partition-id': {fix}.")
    value = node_config["partition-id"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"node-config `partition-id` must be an integer >= 0, got {value!r}: {fix}.")
    return value


def planned_epsilon(task: FlowerTask, partition_id: int, delta: float) -> float:
    """The epsilon at `delta` that DP-SGD reaches on partition `partition_id` over the whole run the run config
    describes (`num-server-rounds` x `local-steps` steps at the Poisson rate `batch-size / partition size`), by the
    accountant the clients report with; `inf` without DP-SGD noise."""
    from .privacy import PrivacyAccountant, poisson_sample_rate

    cfg = task.config
    if not cfg["dp-clip-norm"] > 0:
        return math.inf
    q = poisson_sample_rate(cfg["batch-size"], len(task.dataset_fn(partition_id)))
    accountant = PrivacyAccountant(task.training_args.dp_accountant)
    accountant.step(q, cfg["dp-noise-multiplier"], cfg["num-server-rounds"] * cfg["local-steps"])
    return accountant.get_epsilon(delta)


def check_node_privacy(node_config: Mapping[str, Any], task: FlowerTask) -> None:
    """Refuse (`ValueError`), on the node, a run config that breaks the node's own privacy requirements
    ([`NODE_PRIVACY_KEYS`]), naming the run-config key and the node-config key to change.

    The server side writes the run config and so chooses the DP-SGD noise, its seed and secure aggregation; a node
    that does not trust it pins them here. By default (no such key in the node config) only a server-chosen
    `dp-noise-seed` is refused (with DP-SGD on; without it the seed is unused)."""
    cfg = task.config
    dp_on = cfg["dp-clip-norm"] > 0
    # the seed drives the DP-SGD noise and Poisson sampling only: without DP-SGD it is unused
    if dp_on and cfg["dp-noise-seed"] >= 0 and not _node_value(node_config, "dp-allow-server-noise-seed"):
        raise ValueError(
            f"The run config sets `dp-noise-seed={cfg['dp-noise-seed']}`: the DP-SGD noise and batch sampling of this "
            "node would be a function of a seed the server knows, which could regenerate and subtract the noise. "
            "This node refuses it. Submit the run without `dp-noise-seed` (default -1: secret noise), or, for a "
            'test, start the SuperNode with `--node-config "dp-allow-server-noise-seed=true"`.'
        )
    if _node_value(node_config, "secagg-required") and not cfg["secure-aggregation"]:
        raise ValueError(
            "The run config sets `secure-aggregation=false`, and this node's node config `secagg-required=true` "
            "refuses to upload its trained state in the clear. Submit the run with `--run-config "
            "secure-aggregation=true`, or drop `secagg-required` from the node's `--node-config`."
        )
    min_sigma = _node_value(node_config, "dp-min-noise-multiplier")
    _node_value(node_config, "dp-ledger")  # type-checked before the run trains (read in .flower)
    max_eps = _node_value(node_config, "dp-max-epsilon")
    max_delta = _node_value(node_config, "dp-max-delta")
    wants_dp = [
        k for k, v in (("dp-min-noise-multiplier", min_sigma > 0), ("dp-max-epsilon", max_eps < math.inf)) if v
    ]
    if wants_dp and not dp_on:
        raise ValueError(
            f"The run config turns DP-SGD off (`dp-clip-norm={cfg['dp-clip-norm']}`), and this node's node config "
            f'`{wants_dp[0]}` requires it. Submit the run with `--run-config "dp-clip-norm=<C> '
            "dp-noise-multiplier=<sigma>\"`, or drop the key from the node's `--node-config`."
        )
    if cfg["dp-noise-multiplier"] < min_sigma:
        raise ValueError(
            f"The run config sets `dp-noise-multiplier={cfg['dp-noise-multiplier']}`, below this node's node config "
            f"`dp-min-noise-multiplier={min_sigma}`. Submit the run with a `dp-noise-multiplier` >= {min_sigma}, or "
            "lower `dp-min-noise-multiplier` in the node's `--node-config`."
        )
    if "dp-max-delta" in node_config and dp_on and cfg["dp-delta"] > max_delta:
        raise ValueError(
            f"The run config sets `dp-delta={cfg['dp-delta']}`, above this node's node config "
            f"`dp-max-delta={max_delta}`. Submit the run with a `dp-delta` <= {max_delta}, or raise `dp-max-delta` in "
            "the node's `--node-config`."
        )
    if max_eps < math.inf:
        eps = planned_epsilon(task, node_partition_id(node_config), max_delta)
        if not eps <= max_eps:
            raise ValueError(
                f"The run config's DP-SGD would spend epsilon {eps:.4g} at delta {max_delta:g} on this node "
                f"(`dp-noise-multiplier={cfg['dp-noise-multiplier']}`, `batch-size={cfg['batch-size']}`, "
                f"`local-steps={cfg['local-steps']}`, `num-server-rounds={cfg['num-server-rounds']}`), above its node "
                f"config `dp-max-epsilon={max_eps:g}`. Submit the run with a larger `dp-noise-multiplier` or fewer "
                "`num-server-rounds` / `local-steps` / a smaller `batch-size`, or raise `dp-max-epsilon` in the "
                "node's `--node-config`."
            )


def check_node_config(node_config: Mapping[str, Any], task: FlowerTask) -> None:
    """Refuse (`ValueError`) a SuperNode whose `--node-config num-partitions` (the partitioning its `partition-id`
    refers to) differs from the run config's `num-partitions`, or a run config that breaks the node's privacy
    requirements ([`check_node_privacy`], [`NODE_PRIVACY_KEYS`]), or that has a `dp-*` / `secagg-*` key no app reads
    ([`check_node_config_keys`])."""
    check_node_config_keys(node_config)
    if "num-partitions" in node_config:
        value = node_config["num-partitions"]
        if isinstance(value, bool) or not isinstance(value, int) or value != task.num_clients:
            raise ValueError(
                f"This SuperNode's node config says num-partitions={value!r} but the run config says "
                f"num-partitions={task.num_clients}: its partition-id refers to another split of the data. Restart "
                'the SuperNode with a matching `--node-config "partition-id=<i> num-partitions=<n>"` or submit the '
                "run with `--run-config num-partitions=<n>`."
            )
    check_node_privacy(node_config, task)


def run_config_client_app(task_fn: Callable[[Mapping[str, Any]], FlowerTask] = task_from_run_config):
    """A `ClientApp` that builds its task (and, with secure aggregation, Flower's `secaggplus_mod`) from the run's
    config on the first message of each run and delegates every message to it. A node whose node-config
    `num-partitions` disagrees with the run config, or whose node config's privacy requirements the run config breaks
    ([`NODE_PRIVACY_KEYS`]: a server-chosen `dp-noise-seed` is refused unless `dp-allow-server-noise-seed=true`),
    refuses every message ([`check_node_config`]) before it trains or uploads anything."""
    from flwr.clientapp import ClientApp

    from .flower import make_client_app

    cache: dict[Any, Any] = {}

    def inner_app(context):
        key = json.dumps(dict(context.run_config), sort_keys=True, default=str)
        if key not in cache:
            task = task_fn(context.run_config)
            check_work_dir(task_work_dir(task))  # node-local: checked on each node before it trains
            cache.clear()
            app = make_client_app(
                task.model_fn, task.dataset_fn, task.fed_args, task.training_args, refuse_imprecise_secagg=True
            )
            cache[key] = (task, app, set())
        task, app, accepted = cache[key]
        node_key = json.dumps(dict(context.node_config), sort_keys=True, default=str)
        if node_key not in accepted:  # checked once per run and node config (the epsilon bound costs an accounting)
            check_node_config(context.node_config, task)
            accepted.add(node_key)
        return app

    app = ClientApp()

    @app.train()
    def train(msg, context):
        return inner_app(context)(msg, context)

    return app
