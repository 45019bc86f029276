"""Configuration of a layer-paired ("layer parallel") causal LM built from a Llama-family source model."""

from __future__ import annotations

import copy
import dataclasses
import numbers
import sys

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec, remap_legacy_layer_types
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import logging

logger = logging.get_logger(__name__)

SUPPORTED_SOURCE_MODEL_TYPES = ("llama", "mistral", "qwen2")


# `hf_ext.utils.checks`' rules for ints and bools, repeated here: a model folder imports nothing from hf_ext (its saved
# code also loads with `trust_remote_code=True`, e.g. in lm-eval's `--model hf` without hf_ext).
def _is_int(value) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_bool(value) -> bool:
    """A bool (numpy's `bool_` too)."""
    numpy = sys.modules.get("numpy")  # without numpy imported there is no numpy bool
    return isinstance(value, bool) or (numpy is not None and isinstance(value, numpy.bool_))


def _python_int(value):
    """A numpy integer as the Python int it holds; anything else unchanged, for the checks to refuse."""
    return int(value) if _is_int(value) else value


LP_MODES = ("sublayer", "block")
LP_MLP_NORMS = ("per_layer", "official_tp_split")

# Attributes copied from the source config so that caches, masks and `generate` read them from the top-level config.
_MIRRORED_SOURCE_ATTRIBUTES = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "max_position_embeddings",
    "sliding_window",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "use_cache",
)
# Attributes derived in `__post_init__` from the source config and the pairing: the cache slots and their attention
# types. Not settings: a value given to the constructor, as a `from_pretrained` / `AutoConfig` keyword or set on a
# built config must equal the derived one (a saved file repeats them), anything else is refused by name.
_DERIVED_SLOT_ATTRIBUTES = ("num_hidden_layers", "layer_types")
# Set once `__post_init__` has built the mirrors; from then on setting a mirrored attribute also sets the source's.
_WRITE_THROUGH = "_lp_mirrors_write_through"
# Fields that decide the pairing, the cache slots and the weight layout: validated and derived in `__post_init__`
# only, so they cannot be changed on a built config (`__setattr__`); `from_pretrained` keywords for them (and for the
# mirrored attributes) go to the constructor instead (`from_dict`).
_STRUCTURAL_ATTRIBUTES = ("source_config", "lp_start", "lp_end", "lp_pairs", "lp_mode", "lp_mlp_norm", "lp_merged")
# Source-config fields that decide the shapes and the number of the saved weights (see `weight_layout`).
_LAYOUT_SOURCE_FIELDS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
)


# Source-config fields that a copy put back on a built config may change: they do not change what a built model
# computes (weight initialisation, bookkeeping, output switches, which the top-level config decides).
_FUNCTION_NEUTRAL_SOURCE_FIELDS = (
    "initializer_range",  # transformers' `_config_zero_init` (common tests, weight-init helpers)
    "_name_or_path",
    "transformers_version",
    "architectures",
    "output_attentions",
    "output_hidden_states",
    "dtype",  # the weights' dtype: `model.to(...)` changes it, the function stays (rv15b)
    "torch_dtype",
    "use_cache",  # decided by the top-level config and each call
    "return_dict",
)


# Keywords the source config classes accept besides their fields (transformers' legacy RoPE spellings).
_LEGACY_SOURCE_KEYWORDS = ("rope_scaling", "rope_theta")


def _source_only_keys(model_type, keys) -> list[str]:
    """The keys among `keys` that are settings of a `model_type` source config only (`rope_parameters`,
    `attention_dropout`, `hidden_act`, `attention_bias`, ...): fields of its config class that are neither fields of
    `LayerParallelConfig` nor its mirrored or derived attributes. Given at the top level they belong to the source
    config (`source_config={key: ...}`); kept there they would be inert."""
    if model_type not in SUPPORTED_SOURCE_MODEL_TYPES:
        return []
    source_class = CONFIG_MAPPING[model_type]
    source_fields = (
        {f.name for f in dataclasses.fields(source_class)} if dataclasses.is_dataclass(source_class) else set()
    )
    source_fields.update(_LEGACY_SOURCE_KEYWORDS)
    top_fields = {f.name for f in dataclasses.fields(LayerParallelConfig)}
    top_fields.update(_MIRRORED_SOURCE_ATTRIBUTES + _DERIVED_SLOT_ATTRIBUTES + _STRUCTURAL_ATTRIBUTES)
    return [key for key in keys if key in source_fields and key not in top_fields]


def _source_model_type(source):
    """`model_type` of a source config given as a dict or a config object (`None` when it has none)."""
    return source.get("model_type") if isinstance(source, dict) else getattr(source, "model_type", None)


def _same_function(key: str, current, value) -> bool:
    """Whether `value` may replace the `source_config` `current` of a built config: a config of the same class whose
    `to_dict()` equals the current one except for `_FUNCTION_NEUTRAL_SOURCE_FIELDS` (transformers' tests and
    weight-init helpers put back a copy with another `initializer_range`). Another activation, RoPE, dropout, norm
    epsilon or weight layout would be saved while a model built from the config kept computing the old function.
    Any other structural field must keep its value."""
    if key != "source_config" or type(value) is not type(current) or not isinstance(current, PreTrainedConfig):
        return False

    def function_fields(config):
        return {k: v for k, v in config.to_dict().items() if k not in _FUNCTION_NEUTRAL_SOURCE_FIELDS}

    return function_fields(value) == function_fields(current)


def resolve_pairs(
    num_layers: int, start: int | None = None, end: int | None = None, pairs: list | tuple | None = None
) -> list[list[int]]:
    """Turn a paired range `[start, end)` or an explicit list of pairs into a validated, sorted list of pairs.

    Args:
        num_layers (`int`): Number of decoder layers of the source model.
        start (`int`, *optional*): First paired layer (inclusive). Pairs are `(start, start + 1)`, `(start + 2,
            start + 3)`, ...
        end (`int`, *optional*): End of the paired range (exclusive); `end - start` must be even.
        pairs (`list`, *optional*): Explicit pairs `[[i, i + 1], ...]` of adjacent, non-overlapping layers; excludes
            `start`/`end`.

    Returns:
        `list[list[int]]`: the pairs, sorted by layer index. Empty when `start == end` or `pairs == []`.

    Raises:
        `ValueError`: for an odd-length, reversed or out-of-range `[start, end)`, and for pairs that are not two
            adjacent layers, fall outside `[0, num_layers)` or overlap.
    """
    if pairs is not None and (start is not None or end is not None):
        raise ValueError("Give either `pairs` or the range `start`/`end`, not both.")
    if pairs is None:
        if start is None and end is None:
            return []
        if start is None or end is None:
            raise ValueError(f"Give both `start` and `end` of the paired range (got start={start}, end={end}).")
        if not _is_int(start) or not _is_int(end):
            raise TypeError(f"`start` and `end` must be integers, got start={start!r}, end={end!r}.")
        start, end = int(start), int(end)  # numpy integers too
        if not 0 <= start <= end <= num_layers:
            raise ValueError(
                f"The paired range [start={start}, end={end}) is out of range for a model with {num_layers} layers; "
                f"use 0 <= start <= end <= {num_layers}."
            )
        if (end - start) % 2:
            raise ValueError(
                f"The paired range [start={start}, end={end}) has odd length {end - start}; layers are paired two by "
                f"two, so use an even length (e.g. end={end - 1} or end={end + 1})."
            )
        return [[i, i + 1] for i in range(start, end, 2)]
    if hasattr(pairs, "tolist") and not isinstance(pairs, list | tuple):  # a numpy array of pairs
        pairs = pairs.tolist()
    if not isinstance(pairs, list | tuple):
        raise TypeError(f"`pairs` must be a list of [i, i + 1] pairs, got {type(pairs).__name__}.")
    out: list[list[int]] = []
    for pair in pairs:
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not all(_is_int(i) for i in pair):
            raise ValueError(f"Each entry of `pairs` must be two layer indices [i, i + 1], got {pair!r}.")
        a, b = int(pair[0]), int(pair[1])
        if b != a + 1:
            raise ValueError(f"Pair {list(pair)} does not hold two adjacent layers; use [{a}, {a + 1}].")
        if not 0 <= a < b < num_layers:
            raise ValueError(
                f"Pair {list(pair)} is out of range for a model with {num_layers} layers (indices 0..{num_layers - 1})."
            )
        out.append([a, b])
    out.sort()
    for prev, nxt in zip(out, out[1:]):
        if nxt[0] <= prev[1]:
            raise ValueError(f"Pairs {prev} and {nxt} overlap; every layer can belong to at most one pair.")
    return out


def _mirror_value(source, key: str):
    """The value the top-level config mirrors for `key`: the source's, with the defaults of a source config that
    leaves `head_dim`, `num_key_value_heads` or `sliding_window` unset."""
    value = getattr(source, key, None)
    if value is None and key == "head_dim":
        return source.hidden_size // source.num_attention_heads
    if value is None and key == "num_key_value_heads":
        return source.num_attention_heads
    return value


def layer_attention_types(config) -> list[str]:
    """Attention type (`"full_attention"` or `"sliding_attention"`) of each layer of a Llama, Mistral or Qwen2
    config, as that architecture's own model applies it. Llama has no sliding-window attention (`LlamaForCausalLM`
    ignores `sliding_window` and `layer_types` in its config): full attention everywhere. Mistral uses one type for
    every layer, from `sliding_window` alone (`MistralModel` ignores `layer_types`, which some checkpoints carry).
    Qwen2 (and any other config) follows its `layer_types`, or `sliding_window` for every layer without them."""
    model_type = getattr(config, "model_type", None)
    if model_type == "llama":
        return ["full_attention"] * config.num_hidden_layers
    types = getattr(config, "layer_types", None)
    if types is not None and model_type != "mistral":
        return list(types)
    kind = "sliding_attention" if getattr(config, "sliding_window", None) is not None else "full_attention"
    return [kind] * config.num_hidden_layers


def check_pair_attention_types(pairs: list, layer_types: list[str]) -> None:
    """Raise a `ValueError` for the first pair whose two layers have different attention types (full vs sliding)."""
    for a, b in pairs:
        if layer_types[a] != layer_types[b]:
            raise ValueError(
                f"Layers {a} and {b} use different attention types ({layer_types[a]} vs {layer_types[b]}) and "
                "cannot be paired; choose pairs whose layers share the attention type."
            )


def _check_lp_merged(value) -> None:
    """`lp_merged` must be a bool (numpy's too, stored as Python's by the config): `"false"` or `0` would otherwise pick
    the weight layout by truthiness."""
    if not _is_bool(value):
        raise TypeError(
            f"lp_merged must be True or False, got {value!r} ({type(value).__name__}); a saved config.json stores it "
            "as the JSON boolean true or false."
        )


class _SlotConfigs(tuple):
    """`LayerParallelConfig.per_layer_config`: one config per KV-cache slot, indexed as transformers indexes its own
    per-layer view (an int, a slice, or a layer type such as `"full_attention"`)."""

    def __new__(cls, configs, owner):
        view = super().__new__(cls, configs)
        view._owner = owner
        return view

    def __getitem__(self, key):
        if isinstance(key, str):  # RoPE set-up asks per layer type; RoPE does not differ between slots
            if key not in self._owner.layer_types:
                raise ValueError(
                    f"Layer type {key!r} is not one of config.layer_types {sorted(set(self._owner.layer_types))}."
                )
            return self._owner
        return super().__getitem__(key)


class LayerParallelConfig(PreTrainedConfig):
    r"""
    Configuration of [`LayerParallelForCausalLM`]: a Llama-family model (`llama`, `mistral` or `qwen2` decoder
    blocks) in which some pairs of adjacent layers run in parallel instead of one after the other.

    For a pair of pre-norm layers (a, b) the "sublayer" form (the one of the reference code) computes

        h = x + A_a(N1_a(x)) + A_b(N1_b(x))      # both attentions read x
        y = h + M_a(N2_a(h)) + M_b(N2_b(h))      # both MLPs read h

    and the "block" form computes `y = x + f_a(x) + f_b(x)` with `f(x) = layer(x) - x`.

    With `lp_merged=True` each pair is stored as one wide layer: the RMSNorm gains are folded into the projections
    and the heads / MLP neurons of both layers are concatenated (exact; grouped-query attention is preserved). A
    merged pair uses one KV-cache slot with twice the KV heads; an unmerged pair uses two slots. Cache slots are
    numbered contiguously, so `num_hidden_layers` of this config is the number of cache slots and `layer_types` their
    attention types. Both are derived from `source_config` and the pairing: another value (as an argument, a
    `from_pretrained` keyword or set on a built config) raises a `ValueError`.

    Args:
        source_config (`dict` or `PreTrainedConfig`):
            Config of the source model (model type `llama`, `mistral` or `qwen2`). Required: build the config with
            [`convert_to_layer_parallel`] or pass the source model's `config` (a nested sub-config, so
            `attn_implementation` given to this config also reaches it). A config object is copied, so the source
            model's own config never changes with this one.
        lp_start (`int`, *optional*):
            First layer of the paired range (inclusive).
        lp_end (`int`, *optional*):
            End of the paired range (exclusive). `lp_end - lp_start` must be even.
        lp_pairs (`list[list[int]]`, *optional*):
            Explicit list of adjacent pairs instead of a range, e.g. `[[4, 5], [8, 9]]`. Filled from the range when
            the range is given.
        lp_mode (`str`, *optional*, defaults to `"sublayer"`):
            `"sublayer"` (both attentions read x, then both MLPs read h) or `"block"` (whole blocks in parallel).
        lp_mlp_norm (`str`, *optional*, defaults to `"per_layer"`):
            `"per_layer"`: each MLP normalises h with its own gain. `"official_tp_split"`: the first half of the
            neurons of both MLPs uses layer a's gain and the second half layer b's gain, as the reference 2-GPU
            tensor-parallel code computes it. Only with `lp_mode="sublayer"`.
        lp_merged (`bool`, *optional*, defaults to `True`):
            Whether each pair is stored as one wide layer (`True`) or as two branches whose outputs are summed. Must
            be a `bool` (a string such as `"false"` or an integer is refused with a `TypeError`).
        lp_weight_layout (`dict`, *optional*):
            Written on save: the source-config fields and pairing that decide the shapes of the saved weights. When a
            saved config is loaded and its `source_config` or pairing no longer matches this record (for example
            `source_config.num_hidden_layers` was edited), loading fails instead of initialising layers at random.
            Anything but a dict or `None` raises a `TypeError`.

    Example:

    ```python
    >>> from transformers import LlamaConfig
    >>> from hf_ext.models.layer_parallel import LayerParallelConfig
    >>> config = LayerParallelConfig(source_config=LlamaConfig(num_hidden_layers=8).to_dict(), lp_start=4, lp_end=8)
    >>> config.lp_pairs, config.num_hidden_layers
    ([[4, 5], [6, 7]], 6)
    ```
    """

    model_type = "layer_parallel"
    # Tensor-parallel plan of the base model (Llama's): heads and MLP neurons column-wise, output projections row-wise.
    # A merged pair stores layer a's heads / neurons first and layer b's second, so at TP=2 this split puts exactly
    # one source layer of the pair on each rank, and the pair costs one all-reduce per sublayer instead of two.
    # Unmerged pairs add the same rules for their two branches (see `LayerParallelModel.init_parallel_plans`).
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    sub_configs_defaults = {
        "source_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", optional=True),
    }
    source_config: dict | PreTrainedConfig | None = None
    lp_start: int | None = None
    lp_end: int | None = None
    lp_pairs: list | None = None
    lp_mode: str = "sublayer"
    lp_mlp_norm: str = "per_layer"
    lp_merged: bool = True
    lp_weight_layout: dict | None = None

    def __post_init__(self, **kwargs):
        # A mirrored attribute given here (`LayerParallelConfig(source_config=..., pad_token_id=7)`, or a kwarg of
        # `from_pretrained`) is a setting of the source model: it goes to the (copied) source config below, which the
        # mirrors are then read from. The derived counts (cache slots, their layer types) are always recomputed;
        # a value given for them must be the recomputed one.
        overrides = {key: kwargs.pop(key) for key in _MIRRORED_SOURCE_ATTRIBUTES if key in kwargs}
        derived_given = {key: kwargs.pop(key) for key in _DERIVED_SLOT_ATTRIBUTES if key in kwargs}
        # Any other setting of the source model (`rope_parameters`, `attention_dropout`, `hidden_act`, ...) given at
        # the top level goes into the source config before it is built, as `source_config={key: ...}` would: kept at
        # the top level it would be saved but ignored by the model, which reads the source config.
        source_settings = {
            key: kwargs.pop(key) for key in _source_only_keys(_source_model_type(self.source_config), list(kwargs))
        }
        if self.lp_weight_layout is not None and not isinstance(self.lp_weight_layout, dict):
            raise TypeError(
                f"lp_weight_layout must be a dict (the record of the weight layout that `save_pretrained` writes) or "
                f"None, got {self.lp_weight_layout!r} ({type(self.lp_weight_layout).__name__}). Restore the value "
                "`save_pretrained` wrote in config.json, or drop `lp_weight_layout` to load without the check."
            )
        src = self.source_config
        if src is None:
            raise ValueError(
                "LayerParallelConfig needs `source_config`, the config of the Llama, Mistral or Qwen2 model whose layers "
                "are paired (e.g. `LayerParallelConfig(source_config=llama.config, lp_start=4, lp_end=8)`), or build the "
                "model with `convert_to_layer_parallel(llama, start, end)`. A saved config.json without "
                "`source_config` is incomplete: save the model again with `save_pretrained`."
            )
        if isinstance(src, dict):
            src_type = src.get("model_type")
            if src_type is None:
                raise ValueError("source_config is a dict without `model_type`; add e.g. model_type='llama'.")
            if src_type not in SUPPORTED_SOURCE_MODEL_TYPES:
                raise ValueError(
                    f"source_config has model_type {src_type!r}; layer pairing supports "
                    f"{list(SUPPORTED_SOURCE_MODEL_TYPES)}."
                )
            self.source_config = {k: v for k, v in src.items() if k != "transformers_version"} | source_settings
        elif isinstance(src, PreTrainedConfig) and source_settings:
            # rebuilt from its dict with the settings, so that the source config class checks and completes them
            # (e.g. `rope_parameters` without `rope_theta`) as it does for `source_config={key: ...}`
            self.source_config = {k: v for k, v in src.to_dict().items() if k != "transformers_version"}
            self.source_config.update(source_settings)
        elif isinstance(src, PreTrainedConfig):
            # A copy: the source model's own config must not change with this one (attention kernel, edits of
            # mirrored attributes, which write through to `source_config`).
            self.source_config = copy.deepcopy(src)
        else:
            raise TypeError(f"source_config must be a dict or a PreTrainedConfig, got {type(src).__name__}.")
        super().__post_init__(**kwargs)  # builds the source sub-config and passes `attn_implementation` down to it
        src = self.source_config
        saved_types = layer_attention_types(src) if src.model_type in SUPPORTED_SOURCE_MODEL_TYPES else None
        for key, value in overrides.items():
            if _mirror_value(src, key) != value:  # a saved file repeats the mirrors: those are not settings
                setattr(src, key, value)
                # A config that records its saved weights' layout describes a built model: a keyword (e.g.
                # `from_pretrained(path, sliding_window=4)`) must not change its layers' attention types.
                if self.lp_weight_layout is not None and layer_attention_types(src) != saved_types:
                    raise ValueError(
                        f"{key}={value!r} changes the attention types of the saved model's layers from "
                        f"{sorted(set(saved_types))} to {sorted(set(layer_attention_types(src)))}: the loaded model "
                        "would compute another function than the saved one. Drop the keyword, or convert a source "
                        f"model whose config has {key}={value!r} again with `convert_to_layer_parallel`."
                    )
        if src.model_type not in SUPPORTED_SOURCE_MODEL_TYPES:
            raise ValueError(
                f"source_config has model_type {src.model_type!r}; layer pairing supports "
                f"{list(SUPPORTED_SOURCE_MODEL_TYPES)} (pre-norm decoder blocks with RMSNorm, attention and a gated MLP)."
            )
        if self.lp_mode not in LP_MODES:
            raise ValueError(f"lp_mode must be one of {list(LP_MODES)}, got {self.lp_mode!r}.")
        _check_lp_merged(self.lp_merged)
        if self.lp_mlp_norm not in LP_MLP_NORMS:
            raise ValueError(f"lp_mlp_norm must be one of {list(LP_MLP_NORMS)}, got {self.lp_mlp_norm!r}.")
        if self.lp_mlp_norm == "official_tp_split":
            if self.lp_mode != "sublayer":
                raise ValueError(
                    "lp_mlp_norm='official_tp_split' only exists for lp_mode='sublayer' (in 'block' mode each MLP reads "
                    "its own branch); use lp_mlp_norm='per_layer'."
                )
            if src.intermediate_size % 2:
                raise ValueError(
                    f"lp_mlp_norm='official_tp_split' splits the MLP neurons in halves, so intermediate_size must be "
                    f"even (got {src.intermediate_size}); use lp_mlp_norm='per_layer'."
                )
        num_layers = src.num_hidden_layers
        if self.lp_start is not None or self.lp_end is not None:
            range_pairs = resolve_pairs(num_layers, self.lp_start, self.lp_end)
            if self.lp_pairs is not None and resolve_pairs(num_layers, pairs=self.lp_pairs) != range_pairs:
                raise ValueError(
                    f"lp_pairs={self.lp_pairs} disagrees with the range [lp_start={self.lp_start}, "
                    f"lp_end={self.lp_end}); give one of them."
                )
            self.lp_pairs = range_pairs
        else:
            self.lp_pairs = resolve_pairs(num_layers, pairs=self.lp_pairs if self.lp_pairs is not None else [])
        source_types = self.source_layer_types()
        check_pair_attention_types(self.lp_pairs, source_types)

        for key in _MIRRORED_SOURCE_ATTRIBUTES:
            if hasattr(src, key) or key in ("head_dim", "num_key_value_heads", "sliding_window"):
                setattr(self, key, _mirror_value(src, key))
        slot_types = self._slot_layer_types()
        self.layer_types = slot_types
        self.num_hidden_layers = len(slot_types)
        saved_layout, self.lp_weight_layout = self.lp_weight_layout, self.weight_layout()
        if saved_layout is not None and saved_layout != self.lp_weight_layout:
            changed = sorted(
                key
                for key in set(saved_layout) | set(self.lp_weight_layout)
                if saved_layout.get(key) != self.lp_weight_layout.get(key)
            )
            details = ", ".join(
                f"{k}: saved {saved_layout.get(k)!r} -> now {self.lp_weight_layout.get(k)!r}" for k in changed
            )
            raise ValueError(
                f"This layer-parallel config was edited after its weight layout was recorded (`lp_weight_layout`, set "
                f"when a config is built and kept in its config.json: {details}). Weights saved with it "
                "only fit the recorded layout, so the changed layers would be initialised at random. Restore the "
                "original values (or drop the `from_pretrained` keyword that changes them), or convert the source "
                "model again with `convert_to_layer_parallel`. To build a new, untrained architecture on purpose, drop "
                "`lp_weight_layout` from the config."
            )
        for key, value in derived_given.items():
            if value is not None and not self._is_derived_value(key, value):
                raise self._derived_error(key, value)
        object.__setattr__(self, _WRITE_THROUGH, True)

    def _slot_layer_types(self) -> list[str]:
        """Attention type of each KV-cache slot: one slot per sequential layer and per merged pair, two per unmerged
        pair (`layer_types`; their number is `num_hidden_layers`)."""
        source_types = self.source_layer_types()
        slot_types = []
        for kind, layers in self.build_blocks():
            if kind == "pair" and not self.lp_merged:
                slot_types += [source_types[layers[0]], source_types[layers[1]]]
            else:
                slot_types.append(source_types[layers[0]])
        return slot_types

    def _is_derived_value(self, key: str, value) -> bool:
        """Whether `value` is the value this config derived for `num_hidden_layers` / `layer_types`."""
        current = self.__dict__.get(key)
        if key == "layer_types":
            return isinstance(value, list | tuple) and remap_legacy_layer_types(list(value)) == current
        return isinstance(value, int) and not isinstance(value, bool) and value == current

    def _derived_error(self, key: str, value) -> ValueError:
        src = self.source_config
        if (
            key == "layer_types"
            and getattr(src, "model_type", None) == "llama"
            and getattr(src, "sliding_window", None) is not None
            and isinstance(value, list | tuple)
            and "sliding_attention" in remap_legacy_layer_types(list(value))
        ):
            # saved by an hf_ext that applied a Llama source config's `sliding_window` (LlamaForCausalLM ignores it)
            return ValueError(
                f"layer_types={list(value)!r} asks for sliding-window attention in a model converted from a Llama "
                f"source (source_config.sliding_window={getattr(src, 'sliding_window', None)!r}), which has none: "
                "LlamaForCausalLM ignores `sliding_window`. Folders saved before hf_ext 2026-12-05 from such a source "
                "applied the window and so did not compute the source model's function. To load these weights with the "
                "source's full attention, delete the `layer_types` entry from the folder's config.json (it is derived "
                "again), or convert the source model again with `convert_to_layer_parallel`."
            )
        model_type = getattr(src, "model_type", None)
        if (
            key == "layer_types"
            and model_type in ("llama", "mistral")
            and getattr(src, "layer_types", None) is not None
            and isinstance(value, list | tuple)
        ):
            # saved by an hf_ext that applied a Llama / Mistral source config's `layer_types` (their models ignore it)
            return ValueError(
                f"layer_types={list(value)!r} follows the `layer_types` of a {model_type} source config, which "
                f"{'LlamaForCausalLM' if model_type == 'llama' else 'MistralForCausalLM'} ignores (its layers use "
                f"{sorted(set(self.layer_types))}). Folders saved before hf_ext 2026-12-07 from such a source applied "
                "them and so did not compute the source model's function. To load these weights with the source's own "
                "attention, delete the top-level `layer_types` entry from the folder's config.json (it is derived "
                "again), or convert the source model again with `convert_to_layer_parallel`."
            )
        return ValueError(
            f"{key} of a LayerParallelConfig is derived, not set: source_config ({src.num_hidden_layers} layers) with "
            f"lp_pairs={self.lp_pairs} (lp_merged={self.lp_merged}) gives {self.num_hidden_layers} cache slots with "
            f"layer_types={self.layer_types}, got {key}={value!r}. A model with another depth is another model: pass "
            "source_config={'num_hidden_layers': ...} (the source depth) and lp_pairs=[[i, i + 1], ...] (the pairing) "
            "to build a new config, or convert the source model again with `convert_to_layer_parallel`. A model loaded "
            "with `from_pretrained` keeps the layers of its saved weights: drop the keyword. A dict from `to_dict()` "
            "whose source config or pairing was changed: drop num_hidden_layers and layer_types from it."
        )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        # transformers sets `from_pretrained` keywords with `setattr` after `__post_init__`, which would skip the
        # validation, the derived cache slots and the check against the saved `lp_weight_layout`. The structural and
        # mirrored keywords are constructor arguments instead: `from_pretrained(path, lp_merged=False)` on a folder
        # saved merged then fails with the layout `ValueError` naming `lp_merged`, before any weight is initialised.
        config_dict = dict(config_dict)
        saved_types = config_dict.get("layer_types") if config_dict.get("lp_weight_layout") is not None else None
        given = {key: kwargs.pop(key) for key in _STRUCTURAL_ATTRIBUTES + _MIRRORED_SOURCE_ATTRIBUTES if key in kwargs}
        source_type = _source_model_type(given.get("source_config")) or _source_model_type(
            config_dict.get("source_config")
        )
        if config_dict.get("lp_weight_layout") is not None:
            # A saved file with a top-level copy of a source setting (written by hf_ext before 2026-12-05, which kept
            # `LayerParallelConfig(..., rope_parameters=...)` there): the saved model ignored it, so the loaded one
            # does too, rather than compute another function than the saved one.
            saved_source = config_dict.get("source_config")
            for key in _source_only_keys(source_type, list(config_dict)):
                value = config_dict.pop(key)
                if not isinstance(saved_source, dict) or saved_source.get(key) != value:
                    logger.warning(
                        f"config.json has {key}={value!r} at its top level, where earlier hf_ext versions stored but "
                        f"never applied it: the saved model computes source_config's {key}, and so does the loaded "
                        f"one. To apply it, load with `from_pretrained(path, {key}=...)` (or source_config={{{key!r}: "
                        "...}), and delete the top-level entry from config.json."
                    )
        # A keyword that is a setting of the source model (`from_pretrained(path, rope_parameters=...)`, as for the
        # source model's own folder) updates the source config, exactly as `source_config={key: ...}` does; left in
        # `kwargs` it would reach the model's constructor, which takes no such argument.
        source_settings = {key: kwargs.pop(key) for key in _source_only_keys(source_type, list(kwargs))}
        if source_settings:
            base = given.get("source_config", config_dict.get("source_config"))
            if isinstance(base, dict):
                given["source_config"] = {**base, **source_settings}
            else:  # a config object: the constructor routes them into its copy
                given.update(source_settings)
        if given or config_dict.get("lp_weight_layout") is None:
            # The saved cache slots describe the saved structure, which these keywords may change, or which was edited
            # on purpose (a file without the layout record builds a new architecture): they are derived again. A file
            # with the record keeps them, so that a hand-edited `num_hidden_layers` is refused like a keyword.
            for key in _DERIVED_SLOT_ATTRIBUTES:
                config_dict.pop(key, None)
        # the derived fields too: checked against the derived values by the constructor (transformers would set them
        # after it, leaving a config that disagrees with the model)
        given.update({key: kwargs.pop(key) for key in _DERIVED_SLOT_ATTRIBUTES if key in kwargs})
        if "source_config" in given:
            saved, new = config_dict.get("source_config"), given["source_config"]
            if isinstance(saved, dict) and isinstance(new, dict):  # a partial dict updates the saved source config
                given["source_config"] = {**saved, **new}
            for key in _MIRRORED_SOURCE_ATTRIBUTES:  # the saved mirrors repeat the source config being replaced
                config_dict.pop(key, None)
        if "lp_pairs" in given:  # a new pairing replaces the saved one, whichever way it was given
            config_dict.pop("lp_start", None)
            config_dict.pop("lp_end", None)
        if "lp_start" in given or "lp_end" in given:
            config_dict.pop("lp_pairs", None)
        config_dict.update(given)
        out = super().from_dict(config_dict, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        if (
            ("source_config" in given or source_settings)
            and isinstance(saved_types, list)
            and remap_legacy_layer_types(list(saved_types)) != config.layer_types
        ):
            # `from_pretrained(path, source_config={"sliding_window": 4})`: the saved weights' layout still fits, but
            # the loaded model would use other attention masks than the saved one.
            keywords = (
                ", ".join(f"{key}={value!r}" for key, value in source_settings.items())
                if source_settings
                else f"source_config={given['source_config']!r}"
            )
            raise ValueError(
                f"The keyword {keywords} changes the attention types of the saved "
                f"model's cache slots from layer_types={saved_types} to {config.layer_types}: the loaded model would "
                "compute another function than the saved one. Drop the keyword, or convert a source model with that "
                "setting again with `convert_to_layer_parallel`."
            )
        return out

    def __setattr__(self, key, value):
        if key == "lp_merged":
            _check_lp_merged(value)
            value = bool(value)  # numpy's bool_ as the JSON-serialisable Python bool
        elif key in ("lp_start", "lp_end"):
            value = _python_int(value)  # numpy integers as Python ints (config.json); resolve_pairs checks them
        if (
            key in _DERIVED_SLOT_ATTRIBUTES
            and self.__dict__.get(_WRITE_THROUGH)
            and not self._is_derived_value(key, value)
        ):
            raise self._derived_error(key, value)
        if key in _STRUCTURAL_ATTRIBUTES and self.__dict__.get(_WRITE_THROUGH):
            current = self.__dict__.get(key)
            if key == "source_config" and isinstance(value, dict) and isinstance(current, PreTrainedConfig):

                def plain(d):  # a sub-config in its parent's `to_dict()` has no transformers_version
                    return {k: v for k, v in d.items() if k != "transformers_version"}

                if plain(value) == plain(current.to_dict()):  # `config.update(config.to_dict())`: nothing changes
                    return
            if value is not current and value != current and not _same_function(key, current, value):
                # The pairing decides the cache slots, layer types and weight layout (derived and checked once, in
                # `__post_init__`) and the modules of a model built from this config: a later change would be
                # ignored by that model and saved as a different one.
                raise ValueError(
                    f"{key} cannot be changed on a built LayerParallelConfig (it is {current!r}, got {value!r}): the "
                    "cache slots, the weight layout and the modules of a model built from it follow from it. Build a "
                    f"new config, LayerParallelConfig({'source_config=...' if key == 'source_config' else f'source_config=..., {key}=...'}), "
                    "or convert the source model again with `convert_to_layer_parallel`."
                )
        if self.__dict__.get(_WRITE_THROUGH) and _source_only_keys(
            _source_model_type(self.__dict__.get("source_config")), [key]
        ):
            # A setting of the source model (`config.rope_parameters = ...`) on a built config: kept at the top level
            # it would be saved but never read; a model built from this config keeps the rotary embedding, dropout
            # and activation of its source config.
            raise ValueError(
                f"{key} is a setting of the source model, not of a built LayerParallelConfig: set at the top level it "
                f"would be saved but ignored. Build a new config with LayerParallelConfig(source_config=..., "
                f"{key}=...) (or source_config={{{key!r}: ...}}), load with `from_pretrained(path, {key}=...)`, or "
                "convert a source model with that setting again with `convert_to_layer_parallel`."
            )
        if key in _MIRRORED_SOURCE_ATTRIBUTES and self.__dict__.get(_WRITE_THROUGH):
            self._check_slot_types_kept(key, value)
        super().__setattr__(key, value)
        # A mirrored attribute set on a built config (`config.tie_word_embeddings = True`, `config.pad_token_id = ...`,
        # `resize_token_embeddings` setting `vocab_size`) goes to the source config too: that is what is saved, and the
        # mirrors are read back from it, so without this the change would be lost (or the weights mis-loaded) on reload.
        if key in _MIRRORED_SOURCE_ATTRIBUTES and self.__dict__.get(_WRITE_THROUGH):
            src = self.__dict__.get("source_config")
            if isinstance(src, PreTrainedConfig) and getattr(src, key, None) != value:
                setattr(src, key, value)

    def _check_slot_types_kept(self, key: str, value) -> None:
        """Refuse setting the mirrored `key` to `value` on a built config when that changes the attention types of the
        cache slots (`sliding_window` on a Mistral source): a model built from this config picked its full or
        sliding-window masks at construction and would keep them, while the saved config (and a reload) would use
        the new ones."""
        src = self.__dict__.get("source_config")
        if not isinstance(src, PreTrainedConfig) or getattr(src, key, None) == value:
            return
        trial = copy.copy(src)
        trial.__dict__[key] = value
        new_types = layer_attention_types(trial)
        if new_types != self.source_layer_types():
            raise ValueError(
                f"{key}={value!r} cannot be set on a built LayerParallelConfig: it changes the source layers' attention "
                f"types from {sorted(set(self.source_layer_types()))} to {sorted(set(new_types))}, which a model built "
                "from this config keeps (it would compute the old attention while a saved and reloaded copy computed "
                f"the new one). Convert a source model whose config has {key}={value!r} again with "
                "`convert_to_layer_parallel` instead."
            )

    def _check_source_types_unedited(self) -> None:
        """Refuse to save a config whose `source_config` was edited directly (e.g. `config.source_config.sliding_window
        = 4`) so that its layers' attention types differ from the cache slots the config (and its model) was built
        with: the saved model would compute another function than the one in memory."""
        if not self.__dict__.get(_WRITE_THROUGH) or self.lp_pairs is None:
            return
        derived = self._slot_layer_types()
        if derived != self.layer_types:
            raise ValueError(
                f"config.source_config was edited after this LayerParallelConfig was built: its attention settings "
                f"(sliding_window / layer_types) now give the cache slots layer_types={derived}, while the config and "
                f"a model built from it use layer_types={self.layer_types}. Saving it would give a model that computes "
                "another function. Restore the source config's value, or convert a source model with the new setting "
                "again with `convert_to_layer_parallel`."
            )

    def save_pretrained(self, save_directory, *args, **kwargs):
        self._check_source_types_unedited()
        return super().save_pretrained(save_directory, *args, **kwargs)

    def weight_layout(self) -> dict:
        """The fields that decide the number and shapes of this model's weights: the source-config fields of
        `_LAYOUT_SOURCE_FIELDS` (prefixed `source.`) and the pairing (`lp_pairs`, `lp_mode`, `lp_merged`,
        `lp_mlp_norm`). Stored as `lp_weight_layout` and checked again when a saved config is loaded."""
        src = self.source_config
        layout = {f"source.{key}": getattr(src, key, None) for key in _LAYOUT_SOURCE_FIELDS}
        layout["source.model_type"] = src.model_type
        layout.update(
            lp_pairs=[list(p) for p in self.lp_pairs],
            lp_mode=self.lp_mode,
            lp_merged=self.lp_merged,
            lp_mlp_norm=self.lp_mlp_norm,
        )
        return layout

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop(_WRITE_THROUGH, None)
        if isinstance(self.source_config, PreTrainedConfig) and self.lp_pairs is not None:
            output["lp_weight_layout"] = self.weight_layout()  # record the layout as it is now, not at construction
            # the cache slots too, as a reload derives them (a mirrored `sliding_window` set since may change the types)
            output["layer_types"] = self._slot_layer_types()
            output["num_hidden_layers"] = len(output["layer_types"])
            # The saved mirrors repeat the source config as it is now (it may have been edited directly), so that a
            # reload, which reads a differing top-level value as a setting of the source, sees no conflict.
            for key in _MIRRORED_SOURCE_ATTRIBUTES:
                if key in output:
                    output[key] = _mirror_value(self.source_config, key)
        return output

    def source_layer_types(self) -> list[str]:
        """Attention type (`"full_attention"` or `"sliding_attention"`) of each layer of the source model."""
        return layer_attention_types(self.source_config)

    def build_blocks(self) -> list[tuple[str, list[int]]]:
        """The execution plan: `("layer", [i])` for a sequential layer, `("pair", [i, i + 1])` for a pair."""
        paired = {a: b for a, b in self.lp_pairs}
        blocks, i = [], 0
        while i < self.source_config.num_hidden_layers:
            if i in paired:
                blocks.append(("pair", [i, paired[i]]))
                i += 2
            else:
                blocks.append(("layer", [i]))
                i += 1
        return blocks

    @property
    def per_layer_config(self) -> tuple[PreTrainedConfig, ...]:
        """transformers' per-layer view of the config, one entry per KV-cache slot (`config.num_hidden_layers`).

        transformers sizes caches from it (`get_head_shapes`, the eagerly allocated `StaticCache` of `generate`, its
        tensor-parallel head split), and its generation tests read each layer's heads from it. A merged pair's slot
        is this config with the heads of both layers (`kv_heads_per_slot`, `attention_heads_per_slot`); every other
        slot is this config itself. The global `num_attention_heads` / `num_key_value_heads` stay those of one source
        layer, so code that reads them keeps working.
        """
        slots = []
        for kv_heads, heads in zip(self.kv_heads_per_slot(), self.attention_heads_per_slot()):
            if kv_heads == self.num_key_value_heads:
                slots.append(self)
                continue
            slot = copy.copy(self)
            slot.__dict__[_WRITE_THROUGH] = False  # a shallow copy shares `source_config`: never write into it
            slot.__dict__.update(num_key_value_heads=kv_heads, num_attention_heads=heads)
            slots.append(slot)
        return _SlotConfigs(slots, self)

    @per_layer_config.setter
    def per_layer_config(self, value) -> None:
        if value is not None:  # transformers resets it to `None` on some paths; that is a no-op here
            raise ValueError(
                "LayerParallelConfig derives its per-slot shapes from `source_config` and `lp_pairs`; "
                "`per_layer_config` cannot be set. Pair other layers (lp_pairs=...) or edit the source config instead."
            )

    def kv_heads_per_slot(self) -> list[int]:
        """Number of key/value heads of each KV-cache slot (`config.num_hidden_layers` entries).

        A merged pair stores the keys and values of both of its layers in one slot, so its slot holds
        `2 * num_key_value_heads` heads; every other slot holds `num_key_value_heads`. Code that sizes caches itself
        (rather than letting the cache grow) must use this instead of `num_key_value_heads`.
        """
        heads: list[int] = []
        for kind, _ in self.build_blocks():
            if kind == "pair" and self.lp_merged:
                heads.append(2 * self.num_key_value_heads)
            else:
                heads += [self.num_key_value_heads] * (2 if kind == "pair" else 1)
        return heads

    def attention_heads_per_slot(self) -> list[int]:
        """Number of attention (query) heads of each slot (`config.num_hidden_layers` entries).

        This is the head count of the map `output_attentions=True` returns for the slot: a merged pair runs both of
        its layers' heads in one attention call (layer `i` first, then layer `i + 1`), so its map has
        `2 * num_attention_heads` heads; every other slot has `num_attention_heads`. To get one map per source layer,
        use `LayerParallelPreTrainedModel.attentions_per_source_layer`.
        """
        return [h // self.num_key_value_heads * self.num_attention_heads for h in self.kv_heads_per_slot()]

    @property
    def effective_depth(self) -> int:
        """Number of sequential residual blocks (source depth minus the number of pairs)."""
        return self.source_config.num_hidden_layers - len(self.lp_pairs)


__all__ = ["LayerParallelConfig", "resolve_pairs"]
