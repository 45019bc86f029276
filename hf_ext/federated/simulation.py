"""In-process federated simulation: clients trained in turn with the `Trainer` from identical starts, FedAvg rounds."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.utils import logging

from ..utils.checks import is_bool, is_int, is_real, store_python_scalars
from .aggregation import (
    AGGREGATION_MODES,
    add_server_noise,
    aggregate_round,
    apply_mean_update,
    client_update,
    lora_pairs,
)
from .privacy import PrivacyAccountant, derive_seed, secret_noise_generator
from .secure_aggregation import (
    MAX_FRAC_BITS,
    SECAGG_WARN_RELATIVE_ERROR,
    IdentityDirectory,
    SecAggClientState,
    ServerView,
    check_rounding_error,
    default_threshold,
    rounding_error_bound,
    secure_aggregate,
)

logger = logging.get_logger(__name__)

STATE_FILE = "global_state.safetensors"
# how LoRA updates are averaged: the factors A and B each, or each client's merged weights (--aggregation)
AGGREGATIONS = ("factors", "merge_then_average")
META_FILE = "federated_state.json"
# how `save_state` writes the history: JSON with tagged tuples, non-str-keyed dicts, numpy values and tensors, so that
# `load_state` restores it with its types (states saved before it have no tag and plain JSON)
HISTORY_ENCODING = "hf_ext-typed-json-v1"
_TYPE_TAG = "__hf_ext_type__"
_HISTORY_TYPES = (
    "None, bool, int, float, str, list, tuple, dict (keys of these types too), numpy scalars and arrays and torch "
    "tensors of bool, integer or float dtype"
)


def encode_history(value: Any, where: str = "history") -> Any:
    """`value` (a [`FederatedSimulation`] history, or any part of it) as JSON-ready data from which
    [`decode_history`] rebuilds an equal value of the same types: dict keys keep their types (an int key stays an
    int), tuples stay tuples, numpy scalars and arrays keep their dtype, tensors their dtype and shape (restored on
    CPU), and floats are exact (NaN and infinities included).

    Raises `TypeError` naming the place (`where`, e.g. `history[2]['mem'][10]`) of a value of another type: it could
    not be restored as it was (e.g. a set, a custom object, a `str` subclass)."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [encode_history(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind is tuple:
        return {_TYPE_TAG: "tuple", "items": [encode_history(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if kind is dict:
        if all(type(k) is str for k in value) and _TYPE_TAG not in value:
            return {k: encode_history(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {
            _TYPE_TAG: "dict",
            "items": [
                [encode_history(k, f"{where} key {k!r}"), encode_history(v, f"{where}[{k!r}]")]
                for k, v in value.items()
            ],
        }
    if isinstance(value, torch.Tensor) and kind is torch.Tensor:
        if value.is_complex() or value.layout != torch.strided or value.device.type == "meta":
            raise TypeError(f"{where} is a {value.dtype} {value.layout} tensor: {_history_type_hint()}")
        return {
            _TYPE_TAG: "tensor",
            "dtype": str(value.dtype).removeprefix("torch."),
            "shape": list(value.shape),
            "items": value.detach().cpu().reshape(-1).tolist(),
        }
    import numpy as np

    if isinstance(value, np.generic | np.ndarray) and value.dtype.kind in "biuf" and value.dtype.itemsize <= 8:
        if isinstance(value, np.ndarray):
            if kind is not np.ndarray:
                raise TypeError(f"{where} is a {kind.__qualname__}: {_history_type_hint()}")
            return {
                _TYPE_TAG: "ndarray",
                "dtype": value.dtype.name,
                "shape": list(value.shape),
                "items": value.reshape(-1).tolist(),
            }
        return {_TYPE_TAG: "numpy", "dtype": value.dtype.name, "value": value.item()}
    raise TypeError(f"{where} is a {kind.__module__}.{kind.__qualname__}: {_history_type_hint()}")


def _history_type_hint() -> str:
    return (
        f"a round's history is saved as typed JSON, which restores exactly {_HISTORY_TYPES}; return those from "
        "`round_callback` (e.g. `float(x)`, `sorted(a_set)`)."
    )


def decode_history(value: Any) -> Any:
    """Inverse of [`encode_history`] (after a JSON round trip)."""
    if isinstance(value, list):
        return [decode_history(v) for v in value]
    if not isinstance(value, dict):
        return value
    if _TYPE_TAG not in value:
        return {k: decode_history(v) for k, v in value.items()}
    tag = value[_TYPE_TAG]
    if tag == "tuple":
        return tuple(decode_history(v) for v in value["items"])
    if tag == "dict":
        return {decode_history(k): decode_history(v) for k, v in value["items"]}
    if tag == "tensor":
        dtype = getattr(torch, value["dtype"])
        return torch.tensor(value["items"], dtype=dtype).reshape(value["shape"])
    if tag in ("numpy", "ndarray"):
        import numpy as np

        if tag == "numpy":
            return np.dtype(value["dtype"]).type(value["value"])
        return np.array(value["items"], dtype=value["dtype"]).reshape(value["shape"])
    raise ValueError(f"Unknown {_TYPE_TAG} {tag!r} in a saved history (written by a newer hf_ext?).")


def _json_constant(name: str) -> float:
    # NaN / Infinity as the math module's objects: a history holding `math.nan` then compares equal after loading
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[name]


@dataclass
class FederatedArguments:
    """Federated protocol options shared by the in-process simulation and the Flower apps."""

    num_rounds: int = field(default=3, metadata={"help": "Number of FedAvg rounds (every client trains each round)."})
    local_steps: int = field(
        default=10, metadata={"help": "Optimizer steps per client per round; <= 0 means use --local_epochs."}
    )
    local_epochs: float = field(default=1.0, metadata={"help": "Epochs per client per round when local_steps <= 0."})
    use_lora: bool = field(default=True, metadata={"help": "Train LoRA adapters (True) or the full model (False)."})
    aggregation: str = field(
        default="factors",
        metadata={
            "help": "LoRA aggregation: 'factors' (average A and B separately; communicates only the adapter) or "
            "'merge_then_average' (average the merged updates B@A exactly, fresh adapter every round). Full "
            "fine-tuning always averages all weights."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated LoRA target modules, or 'all-linear'."}
    )
    client_learning_rates: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated learning rate per client (default: --learning_rate). Refused with "
            "--secure_aggregation: a server could set every client but one to a negligible rate and read that "
            "client's update off the sum."
        },
    )
    client_dp_clip_norm: float | None = field(
        default=None, metadata={"help": "Client-level DP: clip each client's update to this L2 norm; None disables."}
    )
    client_dp_noise_multiplier: float = field(
        default=0.0,
        metadata={
            "help": "Client-level DP: server noise std in units of the per-client sensitivity C / num_clients (the "
            "released update is the sum of the clipped updates divided by the fixed number of clients)."
        },
    )
    client_dp_noise_seed: int | None = field(
        default=None,
        metadata={
            "help": "Client-level DP: seed of the server noise, for reproducible runs (tests). Default None: secret "
            "noise drawn from the OS randomness every round. Setting it VOIDS the guarantee against anyone who knows "
            "the seed."
        },
    )
    secure_aggregation: bool = field(
        default=False,
        metadata={
            "help": "Secure aggregation (SecAgg: X25519 key agreement, AES-CTR masks, Shamir-shared self masks): the "
            "server sees only the sum of the updates. Flower deployments use Flower's SecAgg+ workflow and mod."
        },
    )
    secure_aggregation_threshold: int | None = field(
        default=None,
        metadata={
            "help": "Shamir threshold t (shares needed to unmask); must exceed half the clients. Default n // 2 + 1: "
            "up to n - t clients may drop out per round."
        },
    )
    secure_aggregation_max_colluders: int = field(
        default=0,
        metadata={
            "help": "Secure aggregation: how many clients may collude with a malicious server. Clients refuse a round "
            "whose threshold t has 2t <= n + max_colluders, and the default threshold becomes (n + c) // 2 + 1 "
            "(fewer dropouts tolerated)."
        },
    )
    secure_aggregation_frac_bits: int = field(
        default=24,
        metadata={
            "help": "Fixed-point fractional bits (0-40) used to encode uploads for secure aggregation: a client whose "
            "weighted update would be rounded with a relative error above 1e-2 warns, above 0.5 (the update is lost) "
            "the round is refused."
        },
    )
    secagg_clipping_range: float = field(
        default=8.0,
        metadata={
            "help": "Flower SecAgg+: weighted update values must lie in [-range, range] (Flower clips them); clients "
            "refuse to upload values outside instead of being clipped silently."
        },
    )
    secagg_max_weight: float = field(
        default=1000.0,
        metadata={"help": "Flower SecAgg+: the largest client weight (examples); uploads are scaled by w / max."},
    )

    def __post_init__(self):
        store_python_scalars(self)  # numpy numbers and bools as Python ones (then checked): the arguments are saved
        for name in ("use_lora", "secure_aggregation"):  # a string "false" would be truthy and switch it on
            value = getattr(self, name)
            if not is_bool(value):
                raise TypeError(f"--{name} must be a bool (True or False), got {value!r}.")
            setattr(self, name, bool(value))  # a numpy bool as the Python bool
        for name in ("num_rounds", "local_steps", "lora_r"):  # counts: 2.5 rounds or steps would run as 2 or 3
            value = getattr(self, name)
            if not is_int(value):
                raise ValueError(f"--{name} must be an integer, got {value!r}.")
        if self.secure_aggregation_threshold is not None and not is_int(self.secure_aggregation_threshold):
            raise ValueError(
                f"--secure_aggregation_threshold must be an integer, got {self.secure_aggregation_threshold!r}."
            )
        if self.num_rounds < 1:
            raise ValueError(f"--num_rounds must be >= 1, got {self.num_rounds}.")
        if not (is_real(self.lora_dropout) and 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"--lora_dropout must be a number in [0, 1), got {self.lora_dropout!r}.")
        if not is_real(self.local_epochs) or math.isnan(self.local_epochs):
            raise ValueError(f"--local_epochs must be a number, got {self.local_epochs!r}.")
        if self.local_steps <= 0 and not 0 < self.local_epochs < math.inf:
            raise ValueError(
                f"Set --local_steps > 0 or a finite --local_epochs > 0 (local work per round), got --local_steps "
                f"{self.local_steps} and --local_epochs {self.local_epochs!r}."
            )
        targets = self.lora_target_modules
        if self.use_lora and (not isinstance(targets, str) or not [x for x in targets.split(",") if x.strip()]):
            raise ValueError(
                f"--lora_target_modules must be 'all-linear' or a comma-separated list of module names (e.g. "
                f"'q_proj,v_proj'), got {targets!r}."
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"--aggregation must be one of {list(AGGREGATIONS)}, got {self.aggregation!r}.")
        if self.aggregation == "merge_then_average" and not self.use_lora:
            raise ValueError(
                "--aggregation merge_then_average merges LoRA factors, so it needs --use_lora (without LoRA the full "
                "weights are averaged as they are: drop --aggregation, or keep --use_lora)."
            )
        if self.use_lora and (self.lora_r < 1 or not (is_real(self.lora_alpha) and 0 < self.lora_alpha < math.inf)):
            raise ValueError(
                f"--lora_r must be >= 1 and --lora_alpha a finite number > 0 (the LoRA scaling is lora_alpha / r), got "
                f"{self.lora_r!r}, {self.lora_alpha!r}."
            )
        if self.client_dp_clip_norm is not None and not (
            is_real(self.client_dp_clip_norm) and 0 < self.client_dp_clip_norm < math.inf
        ):
            raise ValueError(
                f"--client_dp_clip_norm must be a finite number > 0 or None (off), got {self.client_dp_clip_norm!r}."
            )
        if not (is_real(self.client_dp_noise_multiplier) and 0 <= self.client_dp_noise_multiplier < math.inf):
            raise ValueError(
                f"--client_dp_noise_multiplier must be a finite number >= 0, got {self.client_dp_noise_multiplier!r}."
            )
        if self.client_dp_noise_multiplier > 0 and self.client_dp_clip_norm is None:
            raise ValueError("--client_dp_noise_multiplier needs --client_dp_clip_norm (the sensitivity).")
        seed = self.client_dp_noise_seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"--client_dp_noise_seed must be an integer or None (secret noise), got {seed!r}.")
        if self.client_learning_rates is not None and not isinstance(self.client_learning_rates, str):
            raise ValueError(
                f"--client_learning_rates must be a string of comma-separated floats (e.g. '0.01,0.02') or None, got "
                f"{self.client_learning_rates!r}."
            )
        if self.client_learning_rates:
            self.learning_rates()
        check_no_per_client_settings(self)
        if self.secure_aggregation_threshold is not None and self.secure_aggregation_threshold < 2:
            raise ValueError(f"--secure_aggregation_threshold must be >= 2, got {self.secure_aggregation_threshold}.")
        for name in ("secagg_clipping_range", "secagg_max_weight"):
            value = getattr(self, name)
            if not (is_real(value) and 0 < value < math.inf):
                raise ValueError(f"--{name} must be a finite number > 0, got {value!r}.")
        c = self.secure_aggregation_max_colluders
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ValueError(f"--secure_aggregation_max_colluders must be an integer >= 0, got {c!r}.")
        bits = self.secure_aggregation_frac_bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= MAX_FRAC_BITS:
            raise ValueError(
                f"--secure_aggregation_frac_bits must be an integer in [0, {MAX_FRAC_BITS}] (default 24), got {bits!r}."
            )

    def threshold(self, num_clients: int) -> int:
        """The Shamir threshold for `num_clients` participants, validated: `2t > n + max_colluders` and `t <= n`."""
        c = self.secure_aggregation_max_colluders
        if num_clients < 2:  # no --secure_aggregation_max_colluders fixes this: the threshold is at least 2
            raise ValueError(
                f"--secure_aggregation needs at least 2 clients (it hides each update in a sum), got {num_clients}: "
                "add clients or turn secure aggregation off."
            )
        if self.secure_aggregation_threshold is None:
            try:
                return default_threshold(num_clients, c)
            except ValueError:
                raise ValueError(
                    f"--secure_aggregation_max_colluders {c} is too large for {num_clients} clients (the threshold "
                    f"would exceed the number of clients): lower it to at most {num_clients - 1} or add clients."
                ) from None
        t = self.secure_aggregation_threshold
        if not (2 * t > num_clients + c and t <= num_clients):
            raise ValueError(
                f"--secure_aggregation_threshold {t} for {num_clients} clients and --secure_aggregation_max_colluders "
                f"{c} must be > {(num_clients + c) / 2} (else a malicious server with {c} colluding clients can "
                f"collect both secrets of one client) and <= {num_clients}: raise the threshold, lower "
                "--secure_aggregation_max_colluders, or leave the threshold unset for the default (n + c) // 2 + 1."
            )
        return t

    @property
    def mode(self) -> str:
        """The aggregation mode of [`aggregate_round`]."""
        return self.aggregation if self.use_lora else "full"

    @property
    def lora_scaling(self) -> float | None:
        return self.lora_alpha / self.lora_r if self.use_lora else None

    def learning_rates(self) -> list[float] | None:
        if not self.client_learning_rates:
            return None
        try:
            rates = [float(x) for x in self.client_learning_rates.split(",")]
        except ValueError as err:
            raise ValueError(
                f"--client_learning_rates must be comma-separated floats, got {self.client_learning_rates!r}."
            ) from err
        if not all(0 < r < math.inf for r in rates):  # NaN fails too
            raise ValueError(
                f"--client_learning_rates must all be finite and > 0, got {self.client_learning_rates!r}."
            )
        return rates

    def target_modules(self) -> str | list[str]:
        t = self.lora_target_modules.strip()
        return t if t == "all-linear" else [x.strip() for x in t.split(",") if x.strip()]


def apply_lora(model, fed_args: FederatedArguments, seed: int = 0):
    """Wrap `model` in a PEFT LoRA model with a deterministic adapter initialisation (seeded)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=fed_args.lora_r,
        lora_alpha=fed_args.lora_alpha,
        lora_dropout=fed_args.lora_dropout,
        target_modules=fed_args.target_modules(),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(model, config)


# FederatedArguments fields from which each client takes its own entry by its index. Every client receives (and, with
# secure aggregation, binds into its signed digest) the same value, so the digest cannot tell an honest setting from
# one a server chose to single a client out: refused with secure aggregation ([`check_no_per_client_settings`]).
PER_CLIENT_SETTINGS = ("client_learning_rates",)


def check_no_per_client_settings(fed_args) -> None:
    """Refuse (`ValueError`) a per-client setting ([`PER_CLIENT_SETTINGS`]: each client picks its own entry by its
    index) together with secure aggregation. Clients legitimately train with different values of such a setting, so
    the round-config digest every client signs ([`round_training_config`]) is the same for an honest list and for one
    that gives every client but a victim a negligible learning rate (`"1e-30,5e-3,1e-30"`): the others' updates
    vanish and the secure sum is the victim's update. No bound on the values closes this (a bounded ratio still lets
    the server scale the others' updates down), so the combination is refused."""
    if not fed_args.secure_aggregation:
        return
    for name in PER_CLIENT_SETTINGS:
        if getattr(fed_args, name):
            raise ValueError(
                f"--{name} cannot be used with --secure_aggregation: each client picks its own entry by its index, "
                "and every client receives the same list, so the digest of the round config the clients sign cannot "
                "tell an honest list from one a server chose to set every client but one to a negligible value "
                "(e.g. '1e-30,5e-3,1e-30'), whose secure sum is then that client's update. Drop "
                f"--{name} (every client uses the shared setting) or turn secure aggregation off."
            )


def check_client_learning_rates(fed_args: FederatedArguments, num_clients: int) -> None:
    """`--client_learning_rates`, when given, has one value per client of the federation (`num_clients`), and is not
    combined with secure aggregation ([`check_no_per_client_settings`])."""
    check_no_per_client_settings(fed_args)
    lrs = fed_args.learning_rates()
    if lrs is not None and len(lrs) != num_clients:
        raise ValueError(
            f"--client_learning_rates has {len(lrs)} values for {num_clients} clients; give one per client."
        )


def fan_in_fan_out_modules(model, lora_scaling: float | None = None) -> list[str]:
    """The prefixes (state-dict names) of the LoRA modules of a PEFT `model` whose base weight is stored as
    `(in, out)` (GPT-2's `Conv1D`; PEFT's `fan_in_fan_out`), for the `fan_in_fan_out` argument of
    `aggregate_round` / `client_update` in `"merge_then_average"` mode.

    It also refuses (`ValueError`, naming the module) LoRA layers that mode cannot merge as `scaling * B @ A`: DoRA,
    LoRA bias, other LoRA variants, LoRA on layers other than Linear/Conv1D/Embedding (e.g. Conv2d), and, with
    `lora_scaling`, a layer whose scaling differs from it (e.g. rsLoRA's `lora_alpha / sqrt(r)`).
    """
    from peft.tuners.lora.layer import Embedding, Linear, LoraLayer

    out = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        adapters = list(module.scaling)
        refuse = None
        if any(module.use_dora.get(a, False) for a in adapters):
            refuse = "uses DoRA (use_dora=True)"
        elif any(module.lora_bias.get(a, False) for a in adapters):
            refuse = "has a LoRA bias (lora_bias=True)"
        elif any(module.lora_variant.get(a) is not None for a in adapters):
            variant = next(module.lora_variant[a] for a in adapters if module.lora_variant.get(a) is not None)
            refuse = f"uses the LoRA variant {type(variant).__name__}"
        elif type(module) not in (Linear, Embedding):
            refuse = f"is a {type(module).__name__} LoRA layer (only Linear, Conv1D and Embedding layers are merged)"
        elif lora_scaling is not None and any(not math.isclose(module.scaling[a], lora_scaling) for a in adapters):
            refuse = (
                f"has the scaling {[module.scaling[a] for a in adapters]}, not lora_alpha / r = {lora_scaling} "
                "(e.g. use_rslora=True)"
            )
        if refuse is not None:
            raise ValueError(
                f"aggregation='merge_then_average' cannot merge the LoRA module {name!r}: it {refuse}. Train a plain "
                "LoRA adapter (`apply_lora`) or use aggregation='factors'."
            )
        if type(module) is Linear and module.fan_in_fan_out:
            out.append(name)
    return out


def exchange_keys(model, mode: str) -> list[str]:
    """Names of the tensors exchanged each round: trainable parameters, plus the adapted modules' base weights in
    `"merge_then_average"` mode (where LoRA layers the mode cannot merge are refused: [`fan_in_fan_out_modules`])."""
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"`mode` must be one of {AGGREGATION_MODES}, got {mode!r}.")
    keys = [n for n, p in model.named_parameters() if p.requires_grad]
    if not keys:
        raise ValueError("The model has no trainable parameters to federate.")
    if mode == "merge_then_average":
        state_keys = set(model.state_dict())
        pairs = lora_pairs({k: None for k in keys})
        if not pairs:
            raise ValueError("aggregation='merge_then_average' needs a LoRA (PEFT) model.")
        fan_in_fan_out_modules(model)
        for prefix in pairs:
            base = f"{prefix}.base_layer.weight"
            if base not in state_keys:
                raise ValueError(f"Cannot find the base weight {base!r} of the LoRA module {prefix!r}.")
            keys.append(base)
    return keys


def get_exchange_state(model, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    return {k: sd[k].detach().to("cpu").clone().contiguous() for k in keys}


def set_exchange_state(model, state: dict[str, torch.Tensor]) -> None:
    """Load exchanged tensors into `model` in place, with clear errors for mismatched adapters."""
    own = model.state_dict()
    for k, v in state.items():
        if k not in own:
            raise ValueError(
                f"Received tensor {k!r} that the local model does not have: the adapter configuration (target "
                "modules, adapter name) differs between server and client."
            )
        if tuple(own[k].shape) != tuple(v.shape):
            raise ValueError(
                f"Received {k!r} with shape {tuple(v.shape)} but the local model has {tuple(own[k].shape)}: the LoRA "
                "rank or model size differs between server and client."
            )
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].device, own[k].dtype))


def split_by_column(dataset, column: str = "domain", num_clients: int = 3) -> list:
    """Non-IID split: whole groups of `column` values (domains, sources) go to clients, balancing sizes greedily.

    Returns:
        `list[datasets.Dataset]`: one dataset per client; each holds complete groups.
    """
    if column not in dataset.column_names:
        raise ValueError(f"`column`={column!r} is not a dataset column (columns: {dataset.column_names}).")
    values = dataset[column]
    groups: dict[Any, list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault(v, []).append(i)
    if num_clients < 1 or num_clients > len(groups):
        raise ValueError(
            f"`num_clients`={num_clients} must be between 1 and the number of distinct {column!r} values "
            f"({len(groups)}): every client needs data."
        )
    buckets: list[list[int]] = [[] for _ in range(num_clients)]
    for _, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0]))):
        smallest = min(range(num_clients), key=lambda c: len(buckets[c]))
        buckets[smallest] += idx
    return [dataset.select(sorted(b)) for b in buckets]


def canary_rows(texts: Sequence[str], tokenizer, block_size: int) -> dict[str, list[list[int]]]:
    """Tokenize each canary copy as its own right-padded block (labels -100 on padding), so packing never splits a
    canary across blocks. A copy longer than `block_size` tokens is cut to its first `block_size` tokens, with a
    warning: measure memorization on that part only (the federated recipe cuts its canaries to fit)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    cut = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cut += len(ids) > block_size
        ids = ids[:block_size]
        n = len(ids)
        rows["input_ids"].append(ids + [pad] * (block_size - n))
        rows["attention_mask"].append([1] * n + [0] * (block_size - n))
        rows["labels"].append(ids + [-100] * (block_size - n))
    if cut:
        logger.warning(
            "%d of %d canary copies are longer than block_size=%d tokens and train on their first %d tokens only: "
            "probe and score them on that part (or raise block_size), else memorization is measured on text never "
            "trained on.",
            cut,
            len(texts),
            block_size,
            block_size,
        )
    return rows


def build_client_dataset(text_dataset, canary_texts: Sequence[str], tokenizer, block_size: int, seed: int = 42):
    """Pack a client's documents into blocks, add one block per canary copy, shuffle."""
    from datasets import Dataset, concatenate_datasets

    from ..data import pack_dataset

    packed = pack_dataset(text_dataset, tokenizer, block_size) if len(text_dataset) else None
    if packed is not None and not len(packed):
        # documents shorter than one block in all: packing drops the partial block, so they would vanish (with
        # canaries the client silently trained on its canaries only; without, the error said it had no documents)
        raise ValueError(
            f"The client's {len(text_dataset)} documents hold fewer tokens than one block of block_size={block_size} "
            "tokens, so packing keeps none of them: lower block_size (Flower App: run config `block-size`; recipe: "
            "--block_size) or give the client more documents (`docs-per-client`, --docs_per_client)."
        )
    parts = [packed] if packed is not None else []
    if canary_texts:
        parts.append(
            Dataset.from_dict(canary_rows(canary_texts, tokenizer, block_size)).cast(parts[0].features)
            if parts
            else Dataset.from_dict(canary_rows(canary_texts, tokenizer, block_size))
        )
    if not parts:
        raise ValueError("The client has neither documents nor canaries: every client needs data.")
    return concatenate_datasets(parts).shuffle(seed=seed)


#: Client Trainer seeds are `seed + CLIENT_SEED_STRIDE * round + client`: unique per (round, client) only while every
#: client index is below the stride. Kept as it is (the published federated numbers and the resume of runs in progress
#: depend on these seeds); a federation with more clients is warned about (`client_seed_collision_warning`).
CLIENT_SEED_STRIDE = 1000


def client_seed_collision_warning(num_clients: int) -> None:
    """Warn (once per call site) that with more than `CLIENT_SEED_STRIDE` clients two (round, client) pairs share a
    Trainer seed: client `c + 1000` in round `r` trains with client `c`'s seed of round `r + 1` (same data order when
    their datasets have the same length, same dropout masks). The data seed and DP noise seeds are hashed from
    (seed, round, client) and do not collide."""
    if num_clients > CLIENT_SEED_STRIDE:
        warnings.warn(
            f"{num_clients} clients: the client Trainer seed is seed + {CLIENT_SEED_STRIDE} * round + client, so with "
            f"more than {CLIENT_SEED_STRIDE} clients client c + {CLIENT_SEED_STRIDE} of round r shares the seed (data "
            f"order, dropout) of client c in round r + 1. Kept for reproducibility of earlier runs; the data seed "
            "(set data_seed) and the DP noise seeds are hashed per (round, client) and stay distinct.",
            UserWarning,
            stacklevel=3,
        )


def client_training_args(training_args, fed_args: FederatedArguments, client_index: int, round_index: int):
    """The per-client, per-round `TrainingArguments`: its own output folder, seed, step budget and learning rate.

    With secure aggregation a per-client setting ([`PER_CLIENT_SETTINGS`], e.g. `client_learning_rates`) is refused
    here too ([`check_no_per_client_settings`]), also when set on the arguments after their checks ran: the client
    never trains with an entry a server picked for its index."""
    check_no_per_client_settings(fed_args)
    if client_index >= CLIENT_SEED_STRIDE:  # a Flower node with partition id >= 1000 (the simulation warns earlier)
        client_seed_collision_warning(client_index + 1)
    lrs = fed_args.learning_rates()
    changes: dict[str, Any] = {
        "output_dir": os.path.join(training_args.output_dir, f"client-{client_index}"),
        "seed": training_args.seed + CLIENT_SEED_STRIDE * round_index + client_index,
        # every client and round draws its own Poisson batches (and, with the opt-in seed, its own DP noise)
        "data_seed": None
        if training_args.data_seed is None
        else derive_seed("data", training_args.data_seed, round_index, client_index) % 2**31,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
    }
    if fed_args.local_steps > 0:
        changes["max_steps"] = fed_args.local_steps
    else:
        changes["max_steps"] = -1
        changes["num_train_epochs"] = fed_args.local_epochs
    if lrs is not None:
        changes["learning_rate"] = lrs[client_index]
    if getattr(training_args, "dp_noise_seed", None) is not None:
        changes["dp_noise_seed"] = derive_seed("dp-noise", training_args.dp_noise_seed, round_index, client_index)
    return dataclasses.replace(training_args, **changes)


# settings kept out of a round's bound training config ([`round_training_config`]): noise seeds, secrets of the opt-in
# reproducible DP noise; their digest goes to the server and every peer, and a low-entropy seed could be searched for
_UNBOUND_SETTINGS = ("federated.client_dp_noise_seed", "training.dp_noise_seed")


def round_training_config(training_args, fed_args: FederatedArguments, round_index: int) -> dict[str, Any]:
    """The training instructions of round `round_index`, the same for every client, as a flat `{name: value}` mapping of
    `int`, `float`, `bool`, `str` and `None` values: what each client binds with the global state it received into its
    secure-aggregation advertisement (`SecAggClient(round_config=...)`, [`global_state_digest`]), so a server cannot
    send some clients instructions that make their updates zero (`learning_rate=0`, zero local steps, a warmup that
    never leaves 0, ...) unnoticed.

    It holds `"round"`, every [`FederatedArguments`] field as `"federated.<name>"` and every field of the
    `training_args` template (`TrainingArguments.to_dict()`, tokens masked) as `"training.<name>"`: everything
    [`client_training_args`] derives a client's arguments from besides the client's index (its own seed, output
    folder follow from these and the index). List and mapping values are bound as sorted-key JSON text; the opt-in DP
    noise seeds (`dp_noise_seed`, `client_dp_noise_seed`) are left out, since the digest is seen by the server and
    every peer.

    A setting from which each client picks its own entry by its index ([`PER_CLIENT_SETTINGS`]:
    `--client_learning_rates`) is the same text for every client, so binding it cannot reveal that a server singled
    a client out with it; secure aggregation refuses such settings ([`check_no_per_client_settings`]), and so does
    this function when `fed_args.secure_aggregation` is set.
    """
    if not isinstance(fed_args, FederatedArguments):
        raise TypeError(f"`fed_args` must be a FederatedArguments instance, got {type(fed_args).__name__}.")
    if not is_int(round_index):
        raise ValueError(f"`round_index` must be an integer, got {round_index!r}.")
    check_no_per_client_settings(fed_args)
    config: dict[str, Any] = {"round": int(round_index)}
    settings = [("federated", f.name, getattr(fed_args, f.name)) for f in dataclasses.fields(fed_args)]
    settings += [("training", name, value) for name, value in training_args.to_dict().items()]
    for group, name, value in settings:
        key = f"{group}.{name}"
        if key in _UNBOUND_SETTINGS:
            continue
        if value is not None and type(value) not in (bool, int, float, str):
            try:
                value = json.dumps(value, sort_keys=True, separators=(",", ":"))
            except (TypeError, ValueError) as err:
                raise TypeError(
                    f"Cannot bind the {group} setting {name!r} = {value!r} into the round config (not a scalar, and "
                    f"not JSON: {err}); give it as an int, float, bool, str, None, or a list / dict of those."
                ) from None
        config[key] = value
    return config


def train_client(
    model,
    global_state: dict[str, torch.Tensor],
    train_dataset,
    training_args,
    fed_args: FederatedArguments,
    client_index: int,
    round_index: int,
    data_collator=None,
    processing_class=None,
    accountant: PrivacyAccountant | None = None,
    callbacks: list | None = None,
) -> tuple[dict[str, torch.Tensor], int, dict[str, float]]:
    """Local work of one client in one round (shared by the simulation and the Flower `ClientApp`).

    Loads `global_state` into `model`, trains with [`PrivateTrainer`] (Goldfish / DP-SGD per `training_args`) and
    returns `(state, num_examples, metrics)` with the exchanged tensors after training.
    """
    from transformers import default_data_collator

    from .trainer import PrivateTrainer, PrivateTrainingArguments

    if train_dataset is None or len(train_dataset) == 0:
        raise ValueError(f"Client {client_index} has no training data: give every client at least one example.")
    if not isinstance(training_args, PrivateTrainingArguments):
        raise TypeError("`training_args` must be a PrivateTrainingArguments instance.")
    set_exchange_state(model, global_state)
    args = client_training_args(training_args, fed_args, client_index, round_index)
    trainer = PrivateTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=data_collator or default_data_collator,
        processing_class=processing_class,
        accountant=accountant,
        callbacks=callbacks,
    )
    result = trainer.train()
    metrics = {"train_loss": float(result.training_loss), "num-examples": len(train_dataset)}
    if args.dp_clip_norm is not None:
        metrics["dp_epsilon"] = trainer.accountant.get_epsilon(args.dp_delta)
    return get_exchange_state(model, list(global_state)), len(train_dataset), metrics


def prepare_upload(
    global_state: dict[str, torch.Tensor],
    client_state: dict[str, torch.Tensor],
    fed_args: FederatedArguments,
    fan_in_fan_out: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """What a client contributes: its trained state, or, with secure aggregation, its update relative to
    `global_state` (clipped first when client-level DP is on), which is then masked. `fan_in_fan_out`: the
    model's [`fan_in_fan_out_modules`] (`"merge_then_average"` mode)."""
    if not fed_args.secure_aggregation:
        return client_state
    return client_update(
        global_state,
        client_state,
        fed_args.mode,
        fed_args.lora_scaling,
        fed_args.client_dp_clip_norm,
        fan_in_fan_out=fan_in_fan_out,
    )


def check_fixed_point_precision(
    update: dict[str, torch.Tensor], weight: float, fed_args: FederatedArguments, client_index: int
) -> None:
    """Refuse (`ValueError`) an upload that the in-process secure aggregation would round away, and warn about a
    coarse one, by the rule of the Flower SecAgg+ path (`check_secagg_range`): the client's upload `weight * update` is
    rounded to steps of `2^-secure_aggregation_frac_bits`, and its relative error ([`rounding_error_bound`]) is checked
    with [`check_rounding_error`]."""
    bits = fed_args.secure_aggregation_frac_bits
    error = rounding_error_bound(update, weight, 2.0**-bits)
    check_rounding_error(
        error,
        f"Secure aggregation would round client {client_index}'s upload (its update times its weight {weight:g}) to "
        f"steps of 2^-{bits} (--secure_aggregation_frac_bits {bits}) with a relative error of up to {error:.3g}, above "
        f"{SECAGG_WARN_RELATIVE_ERROR:g}: raise --secure_aggregation_frac_bits (default 24).",
        log=logger.warning,
    )


def server_noise_generator(fed_args: FederatedArguments, round_index: int) -> torch.Generator:
    """The generator of a round's client-level DP noise: secret ([`secret_noise_generator`]) unless
    `fed_args.client_dp_noise_seed` is set (reproducible, no privacy against whoever knows that seed)."""
    if fed_args.client_dp_noise_seed is None:
        return secret_noise_generator()
    return torch.Generator().manual_seed(derive_seed("client-dp-noise", fed_args.client_dp_noise_seed, round_index))


def upload_weight(num_examples: int, fed_args: FederatedArguments) -> float:
    """A client's aggregation weight: its number of examples, or 1 under client-level DP (uniform DP-FedAvg)."""
    return 1.0 if fed_args.client_dp_clip_norm is not None else float(num_examples)


def aggregate_uploads(
    global_state: dict[str, torch.Tensor],
    uploads: Sequence[dict[str, torch.Tensor]],
    weights: Sequence[float],
    fed_args: FederatedArguments,
    round_index: int,
    seed: int = 0,
    num_clients: int | None = None,
    client_names: Sequence[str] | None = None,
    fan_in_fan_out: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """The server step without secure aggregation (shared by the simulation and the Flower `ServerApp`).

    `seed` (the public training seed) does not influence the client-level DP noise, which comes from
    [`server_noise_generator`]. `num_clients` is the fixed federation size that client-level DP divides by
    (default: the number of uploads). An upload with a NaN or inf entry is refused (`ValueError`) naming the
    client (`client_names[i]`, default `client_states[i]`) and the tensor. `fan_in_fan_out`: the model's
    [`fan_in_fan_out_modules`] (`"merge_then_average"` mode)."""
    del seed  # the noise must not be a function of the public seed
    generator = server_noise_generator(fed_args, round_index) if fed_args.client_dp_clip_norm is not None else None
    return aggregate_round(
        global_state,
        uploads,
        weights,
        fed_args.mode,
        fed_args.lora_scaling,
        fed_args.client_dp_clip_norm,
        fed_args.client_dp_noise_multiplier,
        generator,
        num_clients=num_clients,
        client_names=client_names,
        fan_in_fan_out=fan_in_fan_out,
    )


def apply_secure_mean(
    global_state: dict[str, torch.Tensor],
    mean_update: dict[str, torch.Tensor],
    weights: Sequence[float],
    fed_args: FederatedArguments,
    round_index: int,
    seed: int = 0,
    num_clients: int | None = None,
) -> dict[str, torch.Tensor]:
    """The server step after secure aggregation: it only has the weighted mean of the updates and the weights.

    Under client-level DP the clients upload with weight 1 ([`upload_weight`]); the mean is turned into the
    fixed-denominator estimate `sum_c u_c / num_clients` (`num_clients`: the federation size, default the number of
    weights) and noised with [`add_server_noise`] from [`server_noise_generator`] (never from `seed`)."""
    del seed
    mean = {k: v.to(torch.float64) for k, v in mean_update.items()}
    if fed_args.client_dp_clip_norm is not None:
        if any(float(w) != 1.0 for w in weights):
            raise ValueError(
                f"Under client-level DP every client uploads with weight 1 (uniform DP-FedAvg), got weights "
                f"{list(weights)}: use `upload_weight` for the secure-aggregation weights."
            )
        n = len(weights) if num_clients is None else num_clients
        if not isinstance(n, int) or n < len(weights):
            raise ValueError(f"`num_clients` must be an integer >= the {len(weights)} uploads, got {num_clients!r}.")
        mean = {k: v * (len(weights) / n) for k, v in mean.items()}  # sum of the updates / fixed federation size
        mean, _ = add_server_noise(
            mean,
            fed_args.client_dp_clip_norm,
            fed_args.client_dp_noise_multiplier,
            n,
            server_noise_generator(fed_args, round_index),
        )
    return apply_mean_update(global_state, mean, fed_args.mode)


class FederatedSimulation:
    """Run FedAvg rounds in one process: every round each client starts from the same global state, trains with the
    `Trainer`, and the server aggregates. Works under `accelerate launch` (one process).

    Args:
        model (`PreTrainedModel`): the base model. With `fed_args.use_lora` it is wrapped with a seeded LoRA adapter,
            so every client starts from identical weights and adapter initialisation.
        client_datasets (`Sequence[datasets.Dataset]`): one tokenized dataset (`input_ids`, `labels`, ...) per client.
        fed_args ([`FederatedArguments`]): protocol options.
        training_args ([`PrivateTrainingArguments`]): local-training template (Goldfish, DP-SGD, optimizer, seed).
        data_collator (`Callable`, *optional*): collator for the clients' Trainers.
        processing_class (*optional*): the tokenizer, passed to the Trainers.
        round_callback (`Callable`, *optional*): `fn(round_index, simulation) -> dict | None`, called after every
            round (and before the first with index 0); returned metrics are stored in `history`. With `save_dir`
            (or [`save_state`]) its values must be of the types [`encode_history`] restores exactly.
    """

    def __init__(
        self,
        model,
        client_datasets: Sequence,
        fed_args: FederatedArguments,
        training_args,
        data_collator: Callable | None = None,
        processing_class=None,
        round_callback: Callable | None = None,
    ):
        from .trainer import PrivateTrainingArguments

        if not isinstance(training_args, PrivateTrainingArguments):
            raise TypeError("`training_args` must be a PrivateTrainingArguments instance.")
        if not isinstance(fed_args, FederatedArguments):
            raise TypeError("`fed_args` must be a FederatedArguments instance.")
        if len(client_datasets) < 1:
            raise ValueError("`client_datasets` is empty: pass one dataset per client.")
        for i, ds in enumerate(client_datasets):
            if ds is None or len(ds) == 0:
                raise ValueError(f"Client {i} has no data (`client_datasets[{i}]` is empty); drop it or give it data.")
        check_client_learning_rates(fed_args, len(client_datasets))
        client_seed_collision_warning(len(client_datasets))
        if fed_args.secure_aggregation and len(client_datasets) < 2:
            raise ValueError("Secure aggregation needs at least 2 clients.")
        self.fed_args = fed_args
        self.training_args = training_args
        self.client_datasets = list(client_datasets)
        self.data_collator = data_collator
        self.processing_class = processing_class
        self.round_callback = round_callback
        self.model = apply_lora(model, fed_args, seed=training_args.seed) if fed_args.use_lora else model
        self.keys = exchange_keys(self.model, fed_args.mode)
        # the modules whose merged LoRA delta is transposed (GPT-2 Conv1D), for merge_then_average
        self.fan_in_fan_out = (
            fan_in_fan_out_modules(self.model, fed_args.lora_scaling) if fed_args.mode == "merge_then_average" else []
        )
        self.global_state = get_exchange_state(self.model, self.keys)
        self.accountants = [PrivacyAccountant(training_args.dp_accountant) for _ in client_datasets]
        self.round = 0
        # rounds whose clients trained without DP-SGD: no finite epsilon holds for their data afterwards
        self.non_private_rounds = 0
        self.history: list[dict] = []
        self.last_server_view: ServerView | None = None
        if fed_args.secure_aggregation:
            fed_args.threshold(len(client_datasets))
            # the simulation plays every party, so it also provisions the clients' long-term identities (kept in
            # memory only: never written to a checkpoint) and keeps each client's round record
            self._secagg_identities, self.secagg_directory = IdentityDirectory.provision(range(len(client_datasets)))
            self.secagg_client_states = {c: SecAggClientState() for c in range(len(client_datasets))}

    @property
    def num_clients(self) -> int:
        return len(self.client_datasets)

    def run_round(self) -> dict:
        """Train every client once from the current global state and aggregate. Returns the round's record."""
        r = self.round + 1
        participants = list(range(self.num_clients))
        # the round's training instructions, from which every client derives its local training arguments
        round_config = round_training_config(self.training_args, self.fed_args, r)
        uploads, weights, client_metrics = [], [], []
        for c in participants:
            state, n, metrics = train_client(
                self.model,
                self.global_state,
                self.client_datasets[c],
                self.training_args,
                self.fed_args,
                c,
                r,
                self.data_collator,
                self.processing_class,
                self.accountants[c],
            )
            uploads.append(prepare_upload(self.global_state, state, self.fed_args, self.fan_in_fan_out))
            weights.append(upload_weight(n, self.fed_args))
            client_metrics.append(metrics)
        if self.fed_args.secure_aggregation:
            for c, upload, weight in zip(participants, uploads, weights):
                check_fixed_point_precision(upload, weight, self.fed_args, c)
            mean, _, self.last_server_view = secure_aggregate(
                dict(enumerate(uploads)),
                dict(enumerate(weights)),
                threshold=self.fed_args.threshold(self.num_clients),
                round_index=r,
                frac_bits=self.fed_args.secure_aggregation_frac_bits,
                max_colluders=self.fed_args.secure_aggregation_max_colluders,
                identities=self._secagg_identities,
                directory=self.secagg_directory,
                client_states=self.secagg_client_states,
                # what each client trained from and with: every client signs their digest, so inconsistent states or
                # training instructions abort the round
                global_states={c: self.global_state for c in participants},
                round_configs={c: round_config for c in participants},
            )
            self.global_state = apply_secure_mean(
                self.global_state, mean, weights, self.fed_args, r, num_clients=self.num_clients
            )
        else:
            self.global_state = aggregate_uploads(
                self.global_state,
                uploads,
                weights,
                self.fed_args,
                r,
                num_clients=self.num_clients,
                client_names=[f"client {c}" for c in participants],
                fan_in_fan_out=self.fan_in_fan_out,
            )
        set_exchange_state(self.model, self.global_state)
        self.round = r
        if self.training_args.dp_clip_norm is None:
            self.non_private_rounds += 1
        record = {"round": r, "clients": client_metrics}
        if self.training_args.dp_clip_norm is not None:
            record["dp_epsilon_max"] = (
                math.inf
                if self.non_private_rounds
                else max(a.get_epsilon(self.training_args.dp_delta) for a in self.accountants)
            )
        return record

    def run(self, num_rounds: int | None = None, save_dir: str | None = None) -> list[dict]:
        """Run rounds up to `num_rounds` (default `None`: `fed_args.num_rounds`), continuing from `self.round`.

        With `save_dir`, the global state, round index, history and privacy accountants are saved after every
        round in `save_dir/round-<r>` (safetensors + JSON, written atomically as a pair), loadable with
        [`load_state`].
        """
        if num_rounds is None:
            target = self.fed_args.num_rounds
        elif isinstance(num_rounds, bool) or not isinstance(num_rounds, int):
            raise TypeError(
                f"`num_rounds` must be an integer >= 1 or None (the configured rounds), got {num_rounds!r}."
            )
        elif num_rounds < 1:
            raise ValueError(
                f"`num_rounds` must be >= 1 (the round to run up to), got {num_rounds}; pass None for "
                f"`fed_args.num_rounds` ({self.fed_args.num_rounds})."
            )
        else:
            target = num_rounds
        if save_dir is not None:
            from ..utils import ensure_writable_dir

            ensure_writable_dir(save_dir, "save_dir")
        if self.round == 0 and self.round_callback is not None and not self.history:
            self.history.append({"round": 0, **(self.round_callback(0, self) or {})})
            if save_dir is not None:
                encode_history(self.history)  # a value save_state could not restore is refused before training
        while self.round < target:
            record = self.run_round()
            if self.round_callback is not None:
                record.update(self.round_callback(self.round, self) or {})
            self.history.append(record)
            if save_dir is not None:
                self.save_state(os.path.join(save_dir, f"round-{self.round}"))
        return self.history

    def save_state(self, path: str) -> None:
        """Save the global exchanged state (safetensors) and round, history and accountants (JSON) in folder `path`.

        The history is written with [`encode_history`], so [`load_state`] restores it with its types (int dict keys,
        tuples, numpy values, tensors): a resumed run's `history` equals the uninterrupted run's. A history value of
        another type is refused (`TypeError` naming where it is).

        The pair is written atomically: both files go to a temporary sibling folder, which then replaces `path`
        (the previous folder is moved aside and removed only afterwards), so a crash never leaves a mismatched or
        half-written pair under `path`. If the final rename fails, the previous folder is put back; if the process is
        killed between the two renames, [`load_state`] finds the moved-aside folder and restores it.
        """
        import shutil
        import tempfile

        from safetensors.torch import save_file

        from ..utils import make_temp_dir

        meta = {
            "round": self.round,
            "history_encoding": HISTORY_ENCODING,
            "history": encode_history(self.history),
            "accountants": [a.state_dict() for a in self.accountants],
            "non_private_rounds": self.non_private_rounds,
            "mode": self.fed_args.mode,
        }
        if self.fed_args.use_lora:  # what the exchanged factors mean: load_state refuses other settings
            meta["lora"] = {"lora_r": self.fed_args.lora_r, "lora_alpha": self.fed_args.lora_alpha}
        if self.fed_args.secure_aggregation:
            meta["secagg_client_states"] = [self.secagg_client_states[c].to_dict() for c in range(self.num_clients)]
        meta_text = json.dumps(meta, indent=2, default=float)  # serialise before touching the disk
        path = os.path.abspath(path)
        parent, name = os.path.dirname(path), os.path.basename(path)
        os.makedirs(parent, exist_ok=True)
        tmp = make_temp_dir(parent, f".{name}.tmp-")
        try:
            save_file(self.global_state, os.path.join(tmp, STATE_FILE))
            with open(os.path.join(tmp, META_FILE), "w") as fh:
                fh.write(meta_text)
                fh.flush()
                os.fsync(fh.fileno())
            old = None
            if os.path.lexists(path):
                old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
                os.rename(path, os.path.join(old, name))
            try:
                os.rename(tmp, path)
            except BaseException:
                if old is not None and not os.path.lexists(path):
                    os.rename(os.path.join(old, name), path)  # put the previous round back
                    shutil.rmtree(old, ignore_errors=True)
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _recover_moved_aside(path: str) -> None:
        """Put back the previous round that a [`save_state`] killed between its two renames left moved aside."""
        import glob
        import shutil

        path = os.path.abspath(path)
        parent, name = os.path.dirname(path), os.path.basename(path)
        saved = [
            os.path.join(old, name)
            for old in glob.glob(os.path.join(glob.escape(parent), glob.escape(f".{name}.old-") + "*"))
            if all(os.path.isfile(os.path.join(old, name, f)) for f in (STATE_FILE, META_FILE))
        ]
        if len(saved) != 1:
            return  # nothing (or nothing unambiguous) to recover: load_state's own error follows
        logger.warning(
            "%s was missing: a save of it was interrupted after moving the previous round aside; restoring that "
            "round from %s.",
            path,
            os.path.dirname(saved[0]),
        )
        os.rename(saved[0], path)
        shutil.rmtree(os.path.dirname(saved[0]), ignore_errors=True)

    def load_state(self, path: str) -> None:
        """Restore a state saved by [`save_state`]; [`run`] then continues with the next round.

        The history comes back with the types it had when saved. A state saved by hf_ext before the typed history
        encoding is loaded with its plain-JSON history (str keys, lists), with a warning."""
        from safetensors.torch import load_file

        if not os.path.lexists(path):
            self._recover_moved_aside(path)
        state_path, meta_path = os.path.join(path, STATE_FILE), os.path.join(path, META_FILE)
        if not (os.path.isfile(state_path) and os.path.isfile(meta_path)):
            raise ValueError(
                f"{path!r} is not a saved federated round: it needs both {STATE_FILE} and {META_FILE} (a folder "
                "missing one is incomplete, e.g. from an interrupted copy; load another round's folder)."
            )
        try:
            with open(meta_path) as fh:
                meta = json.load(fh, parse_constant=_json_constant)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{meta_path!r} is not valid JSON ({err}): the saved round is incomplete or corrupted; load the "
                "previous round's folder."
            ) from err
        if meta.get("mode") != self.fed_args.mode:
            raise ValueError(
                f"Saved round used mode {meta.get('mode')!r}, these arguments use {self.fed_args.mode!r}."
            )
        saved_lora = meta.get("lora")  # absent in rounds saved by an older hf_ext (and without LoRA)
        if saved_lora is not None and self.fed_args.use_lora:
            for name in ("lora_r", "lora_alpha"):
                if float(saved_lora[name]) != float(getattr(self.fed_args, name)):
                    raise ValueError(
                        f"The saved round was trained with {name}={saved_lora[name]!r}, these arguments have "
                        f"{name}={getattr(self.fed_args, name)!r}: the exchanged LoRA factors mean B @ A * lora_alpha "
                        f"/ lora_r, so continuing with another value would change the global update. Resume with "
                        f"--{name} {saved_lora[name]!r} (the saved run's value), or start a fresh run."
                    )
        state = load_file(state_path)
        if set(state) != set(self.keys):
            raise ValueError("The saved global state does not match this model's adapter/parameters.")
        for k in self.keys:
            if state[k].shape != self.global_state[k].shape:
                raise ValueError(
                    f"The saved global state's {k!r} has shape {tuple(state[k].shape)}, this model's "
                    f"{tuple(self.global_state[k].shape)}: the round was saved with another model or LoRA rank "
                    "(--lora_r); resume with the saved run's model and arguments."
                )
            if state[k].dtype != self.global_state[k].dtype:  # refused now, not after a round of training
                raise ValueError(
                    f"The saved global state's {k!r} is {state[k].dtype}, this model's {self.global_state[k].dtype}: "
                    "the round was saved from a model loaded in another dtype, and every client's upload would be "
                    "refused against it at the end of the next round. Load the model with the saved run's dtype "
                    f"(`dtype={state[k].dtype}`), or start a fresh run."
                )
        if len(meta["accountants"]) != self.num_clients:
            raise ValueError(
                f"Saved round has {len(meta['accountants'])} clients, this simulation {self.num_clients}."
            )
        accountants = [PrivacyAccountant(a.accountant, a.pld_discretization) for a in self.accountants]
        for acc, st in zip(accountants, meta["accountants"]):
            acc.load_state_dict(st)  # refuses a saved accountant other than the configured dp_accountant
        non_private = meta.get("non_private_rounds")
        saved_round = int(meta["round"])
        if not (is_int(non_private) and 0 <= non_private <= saved_round):
            # saved before the count: a client whose accountant holds no step after a round trained without DP-SGD
            non_private = saved_round if saved_round and any(not acc.steps for acc in accountants) else 0
        if non_private and self.training_args.dp_clip_norm is not None:
            raise ValueError(
                f"{path!r}: the saved run trained {non_private} of its {saved_round} rounds without DP-SGD "
                "(dp_clip_norm unset), so its clients' data took part in training without clipping or noise and no "
                "finite epsilon holds for it; continuing with DP-SGD would report an epsilon for the DP-SGD rounds "
                "only. Start a fresh DP-SGD run (a model not trained on these clients' data without DP), or continue "
                "without dp_clip_norm."
            )
        encoding = meta.get("history_encoding")
        if encoding == HISTORY_ENCODING:
            history = decode_history(meta["history"])
        elif encoding is None:
            history = meta["history"]
            logger.warning(
                "%s was saved by an older hf_ext, which wrote the history as plain JSON: it is restored as JSON "
                "stored it (dict keys as strings, tuples as lists), while the rounds run from here keep their own "
                "types. Rounds saved from now on restore the history with its types.",
                meta_path,
            )
        else:
            raise ValueError(
                f"{meta_path!r} stores its history as {encoding!r}, which this hf_ext cannot read (it reads "
                f"{HISTORY_ENCODING!r}): load it with the hf_ext version that saved it."
            )
        self.global_state = {k: state[k] for k in self.keys}
        set_exchange_state(self.model, self.global_state)
        self.round = int(meta["round"])
        self.history = history
        self.accountants = accountants
        self.non_private_rounds = int(non_private)
        if self.fed_args.secure_aggregation and "secagg_client_states" in meta:
            self.secagg_client_states = {
                c: SecAggClientState.from_dict(d) for c, d in enumerate(meta["secagg_client_states"])
            }
