"""Pure aggregation math for federated averaging of full models and LoRA adapters (no Flower, no Trainer)."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence

import torch

from ..utils.checks import is_real, python_scalar
from .privacy import check_clip_norm

AGGREGATION_MODES = ("factors", "merge_then_average", "full")

_LORA_A = re.compile(r"^(?P<prefix>.*)\.lora_A(?:\.(?P<adapter>[^.]+))?\.weight$")
# PEFT's embedding LoRA stores its factors as bare parameters: `...embed_tokens.lora_embedding_A[.<adapter>]`
_LORA_EMBEDDING_A = re.compile(r"^(?P<prefix>.*)\.lora_embedding_A(?:\.(?P<adapter>[^.]+))?$")
# every PEFT LoRA entry has a `.lora_<name>` component; merge_then_average can merge only the plain factors
_LORA_COMPONENT = re.compile(r"\.(?P<name>lora_[A-Za-z0-9_]+)(?:\.|$)")
_MERGEABLE_LORA_KEY = re.compile(r"\.(?:lora_[AB](?:\.[^.]+)?\.weight|lora_embedding_[AB](?:\.[^.]+)?)$")
_LORA_VARIANTS = {
    "lora_magnitude_vector": "DoRA (use_dora=True)",
    "lora_bias": "a LoRA bias (lora_bias=True)",
}


class NonFiniteStateError(ValueError):
    """The aggregation would return a global state with a NaN or inf entry; it is refused instead of returned.

    Attributes: `key` (the first non-finite tensor of the state), `num_bad` (its NaN/inf entries), `numel` and
    `dtype` (its size and dtype), `max_abs_update` (the largest |entry| of the update added to it, NaN when the update
    itself is not finite)."""

    def __init__(self, message: str, key: str, num_bad: int, numel: int, dtype: torch.dtype, max_abs_update: float):
        super().__init__(message)
        self.key, self.num_bad, self.numel, self.dtype = key, num_bad, numel, dtype
        self.max_abs_update = max_abs_update


def _check_weights(weights: Sequence[float], n: int) -> torch.Tensor:
    if len(weights) != n:
        raise ValueError(f"`weights` has {len(weights)} entries for {n} client states; pass one weight per client.")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"`weights` must be finite and non-negative (e.g. example counts), got {list(weights)}.")
    if float(w.sum()) <= 0:
        raise ValueError(
            "`weights` sum to zero: every client reported 0 examples. Give each participating client data, or drop "
            "clients with no data before aggregating."
        )
    return w / w.sum()


def _all_finite(t: torch.Tensor) -> bool:
    """Whether no entry of the floating tensor `t` is NaN or inf. A finite sum proves it (one NaN or inf entry makes
    the sum NaN or inf) at a tenth of the cost of `isfinite`; a non-finite sum, which finite entries can also give by
    overflowing it, is decided by `isfinite`."""
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def check_finite_states(
    states: Sequence[Mapping[str, torch.Tensor]],
    argument: str = "client_states",
    client_names: Sequence[str] | None = None,
) -> None:
    """Raise a `ValueError` naming the client and the tensor when a floating tensor of a state holds NaN or inf.

    One diverged, faulty or malicious client would otherwise make the averaged global state non-finite without any
    error (the secure-aggregation paths refuse such an upload when encoding it).

    Args:
        states (`Sequence[Mapping[str, torch.Tensor]]`): the state dicts to check (one per client).
        argument (`str`, *optional*, defaults to `"client_states"`): the argument name used in error messages.
        client_names (`Sequence[str]`, *optional*): how to name each client in the message (e.g. its partition id);
            defaults to `argument[i]`.
    """
    if client_names is not None and len(client_names) != len(states):
        raise ValueError(f"`client_names` has {len(client_names)} entries for {len(states)} client states.")
    for i, sd in enumerate(states):
        for key, t in sd.items():
            if torch.is_floating_point(t) and not _all_finite(t):
                bad = int((~torch.isfinite(t)).sum())
                who = client_names[i] if client_names is not None else f"`{argument}[{i}]`"
                raise ValueError(
                    f"{who} sent a non-finite tensor {key!r} ({bad} of {t.numel()} entries are NaN or inf): its "
                    "training diverged or the upload is corrupt, and averaging it would make the global state "
                    "non-finite. Drop that client from the round, or lower its learning rate and retrain."
                )


def check_compatible_states(
    states: Sequence[Mapping[str, torch.Tensor]],
    argument: str = "client_states",
    names: Sequence[str] | None = None,
) -> None:
    """Raise a `ValueError` unless all state dicts have the same keys, shapes and dtypes as the first one.

    A tensor whose dtype differs from the first state's is refused: an integer tensor where the others are floating
    would otherwise be copied from the first state and the others' values dropped, and mixed floating precisions mean
    the clients did not train the same configuration.

    Args:
        states (`Sequence[Mapping[str, torch.Tensor]]`): the state dicts to compare (e.g. one per client); the first
            is the reference the others are compared with.
        argument (`str`, *optional*, defaults to `"client_states"`): the argument name used in error messages.
        names (`Sequence[str]`, *optional*): how to name each state in the messages, `names[0]` the reference (e.g.
            `["the global state", "client 0", ...]`); defaults to `argument[i]`.
    """
    if isinstance(states, Mapping | str | bytes) or not isinstance(states, Sequence):
        raise TypeError(
            f"`{argument}` must be a sequence (list or tuple) of state dicts, one per client, got "
            f"{type(states).__name__}: pass e.g. `[state_0, state_1]`, not a mapping of them."
        )
    if len(states) == 0:
        raise ValueError(f"`{argument}` is empty: aggregate at least one client state.")
    for i, sd in enumerate(states):
        who = names[i] if names is not None and len(names) == len(states) else f"`{argument}[{i}]`"
        if not isinstance(sd, Mapping):
            raise TypeError(f"{who} must be a state dict (a mapping of names to tensors), got {type(sd).__name__}.")
        bad = next((k for k, v in sd.items() if not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            raise TypeError(
                f"{who}'s entry {bad!r} is a {type(sd[bad]).__name__}, not a torch.Tensor: pass state dicts of "
                "tensors (e.g. `torch.from_numpy(array)` for numpy arrays)."
            )
    if names is not None and len(names) != len(states):
        raise ValueError(f"`names` has {len(names)} entries for {len(states)} states.")
    label = list(names) if names is not None else [f"`{argument}[{i}]`" for i in range(len(states))]
    ref = states[0]
    ref_keys = set(ref)
    for i, sd in enumerate(states):  # not states[1:]: a deque is a Sequence that cannot be sliced
        if i == 0:
            continue
        keys = set(sd)
        if keys != ref_keys:
            missing, extra = sorted(ref_keys - keys)[:3], sorted(keys - ref_keys)[:3]
            raise ValueError(
                f"{label[i]} sent other tensors than {label[0]} has: missing keys {missing}, unexpected keys {extra}. "
                "All clients must train the same adapter (same target_modules, rank and adapter name) on the same "
                "base model."
            )
        for key in ref:
            if tuple(sd[key].shape) != tuple(ref[key].shape):
                raise ValueError(
                    f"{label[i]} sent {key!r} with shape {tuple(sd[key].shape)}, but {label[0]} has "
                    f"{tuple(ref[key].shape)}: clients use different LoRA ranks or models. Use one configuration for "
                    "all clients."
                )
            if sd[key].dtype != ref[key].dtype:
                raise ValueError(
                    f"{label[i]} sent {key!r} in dtype {sd[key].dtype}, but {label[0]} has {ref[key].dtype}: every "
                    "client must send its adapter in the dtype of the global state (load the models with the same "
                    "`dtype`)."
                )


def fedavg(client_states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Federated averaging: the weighted mean `sum_c w_c x_c / sum_c w_c` of every tensor.

    Applied to PEFT adapter state dicts this averages the LoRA factors A and B separately ("factor averaging",
    the communication-efficient default); note that `mean(B) @ mean(A) != mean(B @ A)` unless clients agree.

    Args:
        client_states (`Sequence[Mapping[str, torch.Tensor]]`): one state dict per client, identical keys and shapes.
        weights (`Sequence[float]`): one non-negative weight per client, usually its number of training examples.

    Returns:
        `dict[str, torch.Tensor]`: the weighted mean, in the dtype of the first client's tensors. Accumulation
        is done in float64 in client order, so the result does not depend on how clients are transported.
    """
    check_compatible_states(client_states)
    check_finite_states(client_states)
    return _weighted_mean(client_states, _check_weights(weights, len(client_states)))


def _weighted_mean(client_states: Sequence[Mapping[str, torch.Tensor]], p: torch.Tensor) -> dict[str, torch.Tensor]:
    """[`fedavg`] without its checks, for states already checked; `p`: the normalized weights."""
    out: dict[str, torch.Tensor] = {}
    for key, ref in client_states[0].items():
        if not torch.is_floating_point(ref):
            out[key] = ref.clone()
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for pc, sd in zip(p.tolist(), client_states):
            acc += pc * sd[key].detach().to("cpu", torch.float64)
        out[key] = acc.to(ref.dtype)
    return out


def lora_pairs(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """Map each LoRA-adapted module prefix to its `(lora_A key, lora_B key)` in a (PEFT) state dict.

    Works for keys with or without the adapter name (`...q_proj.lora_A.weight` as returned by
    `peft.get_peft_model_state_dict`, or `...q_proj.lora_A.default.weight` from `model.state_dict()`), and for PEFT's
    embedding LoRA (`...embed_tokens.lora_embedding_A[.default]` / `lora_embedding_B`, see [`lora_embedding_modules`]).
    """
    pairs: dict[str, tuple[str, str]] = {}
    for key in state:
        m = _LORA_A.match(key)
        if m is not None:
            b_key = key.replace(".lora_A", ".lora_B", 1)
        else:
            m = _LORA_EMBEDDING_A.match(key)
            if m is None:
                continue
            b_key = key.replace(".lora_embedding_A", ".lora_embedding_B", 1)
        if b_key not in state:
            raise ValueError(f"LoRA state has {key!r} but no matching {b_key!r}: the adapter state is incomplete.")
        pairs[m.group("prefix")] = (key, b_key)
    return pairs


def lora_embedding_modules(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The prefixes of the embedding modules adapted with LoRA in a (PEFT) state dict (`lora_embedding_A/B` keys)."""
    return sorted(m.group("prefix") for key in state if (m := _LORA_EMBEDDING_A.match(key)) is not None)


def check_mergeable_lora_state(
    state: Mapping[str, torch.Tensor], argument: str = "client_state", client_name: str | None = None
) -> None:
    """Raise a `ValueError` naming the key when a state holds a LoRA entry that `"merge_then_average"` cannot merge.

    The mode merges `scaling * B @ A` (Linear and Conv1D layers) and PEFT's embedding LoRA; any other LoRA entry
    (DoRA's `lora_magnitude_vector`, a `lora_bias`, the `lora_B` bias, ...) changes the merged weights in another way,
    and averaging it as a plain tensor would not give the average of the clients' merged models. `client_name`
    (e.g. a partition id) names the state in the message instead of `argument`.
    """
    for key in state:
        m = _LORA_COMPONENT.search(key)
        if m is None or _MERGEABLE_LORA_KEY.search(key) is not None:
            continue
        name = m.group("name")
        variant = _LORA_VARIANTS.get(name, "a LoRA variant other than plain LoRA")
        if name in ("lora_A", "lora_B") and key.endswith(".bias"):
            variant = _LORA_VARIANTS["lora_bias"]
        who = client_name if client_name is not None else f"`{argument}`"
        raise ValueError(
            f"{who} sent {key!r}, an entry of {variant}: aggregation='merge_then_average' merges only plain "
            "LoRA factors (`scaling * B @ A` into Linear/Conv1D weights, and embedding LoRA) and cannot merge it. "
            "Train a plain LoRA adapter (no DoRA, no LoRA bias) or use aggregation='factors'."
        )


def _check_fan_in_fan_out(fan_in_fan_out: Collection[str], pairs: Mapping[str, tuple[str, str]]) -> set[str]:
    if isinstance(fan_in_fan_out, str):
        raise TypeError(
            f"`fan_in_fan_out` must be a collection of module prefixes, got the string {fan_in_fan_out!r}: wrap it "
            "in a list."
        )
    transposed = set(fan_in_fan_out)
    unknown = sorted(transposed - set(pairs))
    if unknown:
        raise ValueError(
            f"`fan_in_fan_out` names {unknown[:3]}, which are not LoRA modules of the state (its modules: "
            f"{sorted(pairs)[:3]}...): pass the prefixes of [`fan_in_fan_out_modules`] of the same model."
        )
    return transposed


def lora_delta(
    state: Mapping[str, torch.Tensor], scaling: float, fan_in_fan_out: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """The dense weight update of every LoRA module in `state`, keyed by module prefix, as PEFT merges it.

    That is `scaling * B @ A` for a Linear layer, its transpose `scaling * (B @ A).T` for a layer that stores its
    weight as `(in, out)` (GPT-2's `Conv1D`, PEFT's `fan_in_fan_out`: list those prefixes in `fan_in_fan_out`, e.g.
    [`fan_in_fan_out_modules`] of the model) and for an embedding LoRA (`lora_embedding_A/B`, always transposed, as
    PEFT's `Embedding.get_delta_weight`). Entries of other LoRA variants (DoRA, LoRA bias) are refused
    ([`check_mergeable_lora_state`]). Float64.
    """
    from peft.utils import transpose

    scaling = _check_lora_scaling(scaling, "scaling")
    check_mergeable_lora_state(state, "state")
    pairs = lora_pairs(state)
    if not pairs:
        raise ValueError("No `lora_A`/`lora_B` weights found in the state dict: is this a LoRA adapter state?")
    transposed = _check_fan_in_fan_out(fan_in_fan_out, pairs) | set(lora_embedding_modules(state))
    return {
        prefix: transpose(
            state[b].detach().to("cpu", torch.float64) @ state[a].detach().to("cpu", torch.float64),
            prefix in transposed,
        )
        * scaling
        for prefix, (a, b) in pairs.items()
    }


def merge_then_average(
    client_states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    scaling: float,
    fan_in_fan_out: Collection[str] = (),
) -> dict[str, torch.Tensor]:
    """Exact average of the clients' merged LoRA updates: `sum_c p_c * scaling * B_c @ A_c` per module (transposed
    for `fan_in_fan_out` and embedding modules, as PEFT merges them: [`lora_delta`]).

    This is what averaging the clients' *merged* models computes (the reference implementation merges each client
    and averages full weights); the result has rank up to `num_clients * r` and is added to the base weights, after
    which every client starts the next round from a fresh adapter.

    Args:
        client_states (`Sequence[Mapping[str, torch.Tensor]]`): one LoRA adapter state dict per client.
        weights (`Sequence[float]`): non-negative client weights (example counts).
        scaling (`float`): the LoRA scaling `lora_alpha / r`.
        fan_in_fan_out (`Collection[str]`, *optional*): the prefixes of the modules that store their weight as
            `(in, out)` (GPT-2 `Conv1D`; [`fan_in_fan_out_modules`] of the model).

    Returns:
        `dict[str, torch.Tensor]`: float64 dense updates keyed by the adapted module prefix, each in the layout of
        the module's base weight.

    Raises:
        `ValueError`: as [`fedavg`], a client state with a NaN or inf entry (naming the client and the tensor), and a
            client whose `scaling * B @ A` overflows float64; a `scaling` that is not a finite number > 0.
    """
    check_compatible_states(client_states)
    check_finite_states(client_states)
    scaling = _check_lora_scaling(scaling, "scaling")
    p = _check_weights(weights, len(client_states))
    out: dict[str, torch.Tensor] = {}
    for i, (pc, sd) in enumerate(zip(p.tolist(), client_states)):
        deltas = lora_delta(sd, scaling, fan_in_fan_out)
        _check_finite_update(deltas, f"`client_states[{i}]`", "merge_then_average")
        for prefix, delta in deltas.items():
            out[prefix] = out[prefix] + pc * delta if prefix in out else pc * delta
    return out


def state_norm(state: Mapping[str, torch.Tensor]) -> float:
    """The global L2 norm over all floating tensors of a state dict."""
    total = 0.0
    for t in state.values():
        if torch.is_floating_point(t):
            total += float(t.detach().to(torch.float64).pow(2).sum())
    return math.sqrt(total)


def clip_update(update: Mapping[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """Scale a client update so that its global L2 norm is at most `max_norm` (unchanged when already within).

    An update with a non-finite norm (a NaN or inf entry) is refused (`ValueError`): scaling it cannot bound it
    (an inf entry times 0 is NaN, and `min(1, C / nan)` would keep it unscaled)."""
    max_norm = check_clip_norm(max_norm)
    norm = state_norm(update)
    if not math.isfinite(norm):
        key = next(
            (k for k, t in update.items() if torch.is_floating_point(t) and not _all_finite(t)), None
        )  # the norm of finite float entries is finite in float64
        raise ValueError(
            f"The update to clip has a non-finite L2 norm ({norm}): its tensor {key!r} holds NaN or inf entries, and "
            "clipping cannot bound it. Refuse that client's update (its training diverged or its upload is corrupt)."
        )
    factor = min(1.0, max_norm / (norm + 1e-12))
    return {k: v * factor if torch.is_floating_point(v) else v for k, v in update.items()}


def _check_lora_scaling(scaling, argument: str = "lora_scaling") -> float:
    if scaling is None:
        raise ValueError(f"`{argument}` (lora_alpha / r) is required for mode='merge_then_average'.")
    scaling = python_scalar(scaling)  # numpy numbers and 0-d tensors as the Python numbers they hold
    if not is_real(scaling) or not (0 < scaling < math.inf):
        raise ValueError(
            f"`{argument}` must be a finite real number > 0 (the LoRA scaling lora_alpha / r), got {scaling!r}."
        )
    return float(scaling)


def client_update(
    global_state: Mapping[str, torch.Tensor],
    client_state: Mapping[str, torch.Tensor],
    mode: str = "factors",
    lora_scaling: float | None = None,
    clip_norm: float | None = None,
    fan_in_fan_out: Collection[str] = (),
) -> dict[str, torch.Tensor]:
    """What a client contributes to the round: its update relative to the round's global state.

    - `"factors"` / `"full"`: `x_client - x_global` for every tensor.
    - `"merge_then_average"`: the dense LoRA update `scaling * B @ A` per adapted module, as PEFT merges it
      ([`lora_delta`]: transposed for the `fan_in_fan_out` prefixes and embedding LoRA; the adapter starts fresh
      every round, so this is the whole change of the merged weights), keyed by module prefix, plus
      `x_client - x_global` for every other exchanged tensor that is neither a LoRA factor nor an adapted base weight
      (e.g. PEFT `modules_to_save` copies), keyed by its state-dict name.

    With `clip_norm` the update is clipped to that global L2 norm (client-level DP clipping, done on the client so it
    composes with secure aggregation). Updates are float64.
    """
    _check_mode(mode)
    if clip_norm is not None:
        clip_norm = check_clip_norm(clip_norm, "clip_norm", " (or None)")
    if mode == "merge_then_average":
        _check_lora_scaling(lora_scaling)
        check_mergeable_lora_state(client_state)
        update = lora_delta(client_state, lora_scaling, fan_in_fan_out)
        pairs = lora_pairs(client_state)
        skip = {k for pair in pairs.values() for k in pair} | {f"{prefix}.base_layer.weight" for prefix in pairs}
        others = [k for k in client_state if k not in skip and torch.is_floating_point(client_state[k])]
        if others:
            check_compatible_states([global_state, client_state], "client_state")
            for k in others:
                update[k] = client_state[k].detach().to("cpu", torch.float64) - global_state[k].detach().to(
                    "cpu", torch.float64
                )
    else:
        check_compatible_states([global_state, client_state], "client_state")
        update = {
            k: client_state[k].detach().to("cpu", torch.float64) - global_state[k].detach().to("cpu", torch.float64)
            for k in global_state
            if torch.is_floating_point(global_state[k])
        }
    return clip_update(update, clip_norm) if clip_norm is not None else update


def _check_num_clients(num_clients, present: int | None = None) -> int:
    if isinstance(num_clients, bool) or not isinstance(num_clients, int):
        hint = (
            " (client-level DP now uses the fixed number of clients, not the client weights: pass e.g. "
            "`num_clients=len(all_clients)`)"
            if isinstance(num_clients, Sequence | torch.Tensor)
            else ""
        )
        raise TypeError(f"`num_clients` must be an integer, got {num_clients!r}{hint}.")
    if num_clients < 1:
        raise ValueError(f"`num_clients` must be >= 1, got {num_clients}.")
    if present is not None and present > num_clients:
        raise ValueError(
            f"{present} client updates for `num_clients`={num_clients}: `num_clients` is the fixed size of the "
            "federation the noise is calibrated for and cannot be smaller than the number of updates."
        )
    return num_clients


def dp_fedavg_mean(updates: Sequence[Mapping[str, torch.Tensor]], num_clients: int) -> dict[str, torch.Tensor]:
    """The client-level DP estimator: `sum_c u_c / num_clients` with a *fixed* denominator (DP-FedAvg, McMahan et al.
    2018, with uniform client weights).

    Dividing by the fixed number of clients of the federation, not by the number (or the weights) of the clients
    present, makes the sensitivity `clip_norm / num_clients` when one client is added or removed (a dropped client
    contributes 0): this is what [`add_server_noise`] is calibrated for. Client weights (example counts) are not used,
    so no client can raise its influence by reporting a large weight. An update with a NaN or inf entry is refused
    (`ValueError` naming it), as in [`fedavg`].
    """
    check_compatible_states(updates, "updates")
    check_finite_states(updates, "updates")
    n = _check_num_clients(num_clients, len(updates))
    out: dict[str, torch.Tensor] = {}
    for key, ref in updates[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for u in updates:
            acc += u[key].detach().to("cpu", torch.float64)
        out[key] = acc / n
    return out


def add_server_noise(
    mean_update: Mapping[str, torch.Tensor],
    clip_norm: float,
    noise_multiplier: float,
    num_clients: int,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """Gaussian noise for client-level DP on the fixed-denominator mean of clipped updates ([`dp_fedavg_mean`]).

    Neighbouring relation: add or remove one client (its clipped update, of norm at most `clip_norm`). The released
    `sum_c u_c / num_clients` then moves by at most `clip_norm / num_clients`, so the noise std is
    `noise_multiplier * clip_norm / num_clients` (DP-FedAvg). Replacing one client's update by another moves it by up
    to twice that (a noise multiplier `sigma` then gives the guarantee of `sigma / 2` under add/remove).

    Args:
        mean_update (`Mapping[str, torch.Tensor]`): the fixed-denominator mean of the clipped updates.
        clip_norm (`float`): the per-client clip norm `C`.
        noise_multiplier (`float`): `sigma`, the noise std in units of the sensitivity.
        num_clients (`int`): the fixed number of clients of the federation (the denominator of the mean).
        generator (`torch.Generator`, *optional*): the noise source; defaults to a fresh [`secret_noise_generator`]
            (never torch's global RNG): noise regenerable from a known seed gives no privacy.

    Returns:
        `tuple[dict[str, torch.Tensor], float]`: the noised mean update and the noise std.
    """
    sigma = python_scalar(noise_multiplier)  # numpy numbers and 0-d tensors as Python ones: `std` is a float
    if not (is_real(sigma) and 0 <= sigma < math.inf):
        raise ValueError(f"`noise_multiplier` must be a finite number >= 0, got {noise_multiplier!r}.")
    noise_multiplier = float(sigma)
    clip_norm = check_clip_norm(clip_norm, "clip_norm")
    n = _check_num_clients(num_clients)
    std = noise_multiplier * clip_norm / n
    if std == 0:
        return dict(mean_update), 0.0
    if generator is None:
        from .privacy import secret_noise_generator

        generator = secret_noise_generator()
    out = dict(mean_update)
    for k in sorted(mean_update):  # sorted: the noise does not depend on the dict's insertion order
        v = mean_update[k]
        out[k] = v + torch.normal(0.0, std, size=v.shape, generator=generator, dtype=torch.float64)
    return out, std


def apply_mean_update(
    global_state: Mapping[str, torch.Tensor],
    mean_update: Mapping[str, torch.Tensor],
    mode: str = "factors",
    base_weight_key: str = "{prefix}.base_layer.weight",
) -> dict[str, torch.Tensor]:
    """The next global state: `x_global + mean_update`; in `"merge_then_average"` mode the dense update of each
    adapted module (keyed by module prefix) is added to its base weight, other trained tensors (keyed by their own
    name, e.g. `modules_to_save`) get their mean update, and the adapter entries keep their round-start (fresh)
    values.

    Raises [`NonFiniteStateError`] (a `ValueError`) naming the tensor when an entry of the result is NaN or inf, e.g.
    a finite update whose sum with the base weight overflows the state's dtype (float32 above 3.4e38), instead of
    returning a state that would be applied and written as a complete run."""
    _check_mode(mode)
    out = {k: v.detach().clone() for k, v in global_state.items()}
    for k, u in mean_update.items():
        key = base_weight_key.format(prefix=k) if mode == "merge_then_average" and k not in global_state else k
        if key not in global_state:
            hint = " (send base weights together with the adapter in this mode)" if mode != "factors" else ""
            raise ValueError(f"The update has {key!r}, which is not in `global_state`{hint}.")
        g = global_state[key]
        if tuple(u.shape) != tuple(g.shape):
            hint = ""
            if mode == "merge_then_average" and k not in global_state and tuple(u.shape) == tuple(g.shape)[::-1]:
                hint = (
                    f": the module {k!r} stores its weight as (in, out) (e.g. GPT-2's Conv1D, PEFT's fan_in_fan_out); "
                    "pass its prefix in `fan_in_fan_out` (`fan_in_fan_out_modules(model)`)"
                )
            raise ValueError(f"Update for {key!r} has shape {tuple(u.shape)}, global state {tuple(g.shape)}{hint}.")
        out[key] = (g.detach().to("cpu", torch.float64) + u.to(torch.float64)).to(g.dtype)
        if torch.is_floating_point(out[key]) and not _all_finite(out[key]):
            raise _non_finite_state_error(key, out[key], u)
    return out


def _non_finite_state_error(key: str, new: torch.Tensor, update: torch.Tensor) -> NonFiniteStateError:
    num_bad = int((~torch.isfinite(new)).sum())
    u = update.detach().to("cpu", torch.float64)
    if bool(torch.isfinite(u).all()):
        max_abs = float(u.abs().max()) if u.numel() else 0.0
        cause = (
            f"the update is finite, its largest |entry| {max_abs:.3g}, but added to the global state it exceeds "
            f"{torch.finfo(new.dtype).max:.3g}, the largest {new.dtype}"
        )
    else:
        max_abs = math.nan
        cause = "the update itself has NaN or inf entries"
    message = (
        f"The aggregated global state is not finite: {key!r} has {num_bad} of {new.numel()} entries NaN or inf "
        f"({cause}). It is refused (not returned, so neither applied nor written). A client's update is far too "
        "large: its training diverged, or its upload is faulty or malicious. Drop that client from the round (or "
        "lower its learning rate and retrain), or bound every update with client-level DP clipping "
        "(`client_clip_norm`; FederatedArguments' `client_dp_clip_norm`, the recipe's --client_dp_clip_norm)."
    )
    return NonFiniteStateError(message, key, num_bad, new.numel(), new.dtype, max_abs)


def _check_finite_update(update: Mapping[str, torch.Tensor], who: str, mode: str) -> None:
    """Refuse a client whose sent tensors are finite but whose float64 update is not (e.g. `scaling * B @ A` of
    float64 factors above 1e154), naming it."""
    for key, t in update.items():
        if not _all_finite(t):
            how = (
                "scaling * B @ A of its LoRA factors"
                if mode == "merge_then_average"
                else "its state minus the global state"
            )
            raise ValueError(
                f"{who}'s update {key!r} is not finite ({int((~torch.isfinite(t)).sum())} of {t.numel()} entries are "
                f"NaN or inf in float64) although the tensors it sent are finite: {how} overflows. Its training "
                "diverged or its upload is faulty or malicious; averaging it would make the global state non-finite. "
                "Drop that client from the round, or lower its learning rate and retrain."
            )


def _check_mode(mode: str) -> None:
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"`mode` must be one of {AGGREGATION_MODES}, got {mode!r}.")


def aggregate_round(
    global_state: Mapping[str, torch.Tensor],
    client_states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    mode: str = "factors",
    lora_scaling: float | None = None,
    client_clip_norm: float | None = None,
    client_noise_multiplier: float = 0.0,
    generator: torch.Generator | None = None,
    num_clients: int | None = None,
    client_names: Sequence[str] | None = None,
    fan_in_fan_out: Collection[str] = (),
) -> dict[str, torch.Tensor]:
    """One server step, from the round's global state and the clients' returned states.

    Modes:
        - `"factors"` (default for LoRA): the adapter tensors (`lora_A`, `lora_B`) are averaged one by one, which is
          FedAvg of the factors; `mean(B) @ mean(A)` is not the mean of the clients' `B @ A`.
        - `"merge_then_average"`: `global_state` holds the base weights of the adapted modules and the fresh adapter
          every client started from; the exact average `sum_c p_c s B_c A_c` is added to the base weights and the
          adapter is reset to its round-start value (what averaging merged models does, as in the reference code).
          Each module's update is the delta PEFT merges ([`lora_delta`]): modules that store their weight as
          `(in, out)` (GPT-2 `Conv1D`) must be listed in `fan_in_fan_out`; embedding LoRA is handled from its key
          names; DoRA, LoRA bias and other variants are refused.
        - `"full"`: every tensor is averaged (full fine-tuning).

    With `client_clip_norm` (client-level DP) each client's update is clipped, the updates are summed and divided by
    the fixed `num_clients` ([`dp_fedavg_mean`]; `weights` are then not used) and Gaussian noise of std
    `client_noise_multiplier * client_clip_norm / num_clients` is added ([`add_server_noise`]): DP under adding or
    removing one client.

    Args:
        global_state (`Mapping[str, torch.Tensor]`): the state sent to the clients this round.
        client_states (`Sequence[Mapping[str, torch.Tensor]]`): the states returned by the clients, in a fixed order.
        weights (`Sequence[float]`): client weights (example counts).
        mode (`str`, *optional*, defaults to `"factors"`): `"factors"`, `"merge_then_average"` or `"full"`.
        lora_scaling (`float`, *optional*): `lora_alpha / r`, required for `"merge_then_average"`.
        client_clip_norm (`float`, *optional*): enables client-level clipping and noise when set.
        client_noise_multiplier (`float`, *optional*, defaults to 0): noise multiplier for client-level DP.
        generator (`torch.Generator`, *optional*): noise source (keep it secret); defaults to a fresh
            [`secret_noise_generator`].
        num_clients (`int`, *optional*): client-level DP only: the fixed number of clients of the federation, the
            denominator of the mean whatever the clients present; defaults to `len(client_states)` (all present).
        client_names (`Sequence[str]`, *optional*): one name per client for error messages (e.g. its partition id).
        fan_in_fan_out (`Collection[str]`, *optional*): `"merge_then_average"` only: the prefixes of the adapted
            modules whose weight is stored as `(in, out)` (GPT-2 `Conv1D`, PEFT's `fan_in_fan_out`), e.g.
            [`fan_in_fan_out_modules`] of the model.

    Returns:
        `dict[str, torch.Tensor]`: the next global state with the keys and dtypes of `global_state`.

    Raises:
        `ValueError`: among others, when a client's state holds a NaN or inf entry (naming the client and the tensor):
            it would make the global state non-finite; when its state differs from `global_state` in keys, shapes or
            dtypes (naming the client); and [`NonFiniteStateError`] when finite states would still give a non-finite
            global state (e.g. `scaling * B @ A` above the float32 range in `"merge_then_average"` mode), naming the
            client whose update alone does so where there is one.
    """
    _check_mode(mode)
    if client_clip_norm is not None:
        client_clip_norm = check_clip_norm(client_clip_norm, "client_clip_norm", " (or None)")
    if client_names is not None and len(client_names) != len(client_states):
        raise ValueError(f"`client_names` has {len(client_names)} entries for {len(client_states)} client states.")
    names = (
        list(client_names)
        if client_names is not None
        else [f"`client_states[{i}]`" for i in range(len(client_states))]
    )
    if mode == "merge_then_average":
        _check_lora_scaling(lora_scaling)
        for i, sd in enumerate(client_states):
            check_mergeable_lora_state(
                sd, f"client_states[{i}]", client_names[i] if client_names is not None else None
            )
    if len(client_states) == 0:
        raise ValueError("`client_states` is empty: aggregate at least one client state.")
    # each client against the global state it trained from (named as such, not as one of the clients)
    check_compatible_states([global_state, *client_states], "client_states", ["the global state", *names])
    check_finite_states(client_states, "client_states", names)
    p = _check_weights(weights, len(client_states)).tolist()
    updates = []
    for who, sd in zip(names, client_states):
        update = client_update(global_state, sd, mode, lora_scaling, None, fan_in_fan_out)
        _check_finite_update(update, who, mode)
        updates.append(clip_update(update, client_clip_norm) if client_clip_norm is not None else update)
    if client_clip_norm is None:  # the updates were checked finite above (clipping keeps them finite)
        mean = _weighted_mean(updates, _check_weights(p, len(updates)))
    else:
        n = _check_num_clients(len(client_states) if num_clients is None else num_clients, len(client_states))
        mean = dp_fedavg_mean(updates, n)
        mean, _ = add_server_noise(mean, client_clip_norm, client_noise_multiplier, n, generator)
    try:
        return apply_mean_update(global_state, mean, mode)
    except NonFiniteStateError as err:
        raise _blame_non_finite_aggregate(err, global_state, updates, names, mode, client_clip_norm) from err


def _blame_non_finite_aggregate(
    err: NonFiniteStateError,
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[Mapping[str, torch.Tensor]],
    names: Sequence[str],
    mode: str,
    client_clip_norm: float | None,
) -> NonFiniteStateError:
    """The error for a non-finite aggregate, naming the client(s) whose own (clipped) update, added to the global state,
    is already non-finite: without client-level DP the aggregate is a convex combination of those per-client states,
    so it can only overflow where one of them does. `err` itself when no client's update does so alone."""
    culprits: list[tuple[str, NonFiniteStateError]] = []
    for who, update in zip(names, updates):
        try:
            apply_mean_update(global_state, update, mode)
        except NonFiniteStateError as own:
            culprits.append((who, own))
    if not culprits:
        return err
    who, own = culprits[0]
    how = (
        "scaling * B @ A of the LoRA factors it sent, merged into the base weight,"
        if mode == "merge_then_average"
        else "its update, added to the global state,"
    )
    others = ""
    if len(culprits) > 1:
        others = f" ({len(culprits) - 1} more client(s) do the same: {', '.join(c for c, _ in culprits[1:4])})"
    dp = (
        ""
        if client_clip_norm is not None
        else (
            ", or bound every update with client-level DP clipping (`client_clip_norm`; FederatedArguments' "
            "`client_dp_clip_norm`, the recipe's --client_dp_clip_norm)"
        )
    )
    message = (
        f"{who}'s update makes the global state non-finite{others}: the tensors it sent are finite, but {how} gives "
        f"{own.key!r} {own.num_bad} of {own.numel} NaN or inf entries (its largest |update entry| is "
        f"{own.max_abs_update:.3g}; {own.dtype} holds at most {torch.finfo(own.dtype).max:.3g}). The round's aggregate "
        f"({err.key!r}: {err.num_bad} of {err.numel} entries NaN or inf) is refused, not returned, so it is neither "
        "applied nor written. That client's training diverged, or its upload is faulty or malicious: drop it from the "
        f"round (or lower its learning rate and retrain){dp}."
    )
    return NonFiniteStateError(message, err.key, err.num_bad, err.numel, err.dtype, err.max_abs_update)
