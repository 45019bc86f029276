"""FOG model configuration.

FOG ("Fast and Outlier-Guarded") is a Llama-like decoder whose blocks are changed so that every GEMM inside them can
run in FP8 for the whole of a long pretraining run: no pre-norm, a post-norm on each sublayer output with gains
initialised to 1/sqrt(L), QK-RMSNorm with frozen unit gains and a fixed softmax scale (bounding every attention
logit), an up-scaled input embedding, no final norm, and an ungated xIELU MLP. Every switch is a config field so the
Llama-style baseline is the same class with other values (`FogConfig.llama_baseline()`).
"""

from __future__ import annotations

import math
import numbers
import sys

from transformers import PreTrainedConfig

# "gelu" is exact (erf) GELU as in the reference code; "gelu_tanh" is the tanh approximation (option).
# "smooth_swiglu" scales the linear branch by 1/max|gate| per token and multiplies the down-projection output back, as
# Megatron's `scaled_swiglu` does in the reference code; "smooth_swiglu_product" instead divides silu(gate)*up by its
# own per-token max (an earlier hf_ext form, kept as an option).
FOG_ACTIVATIONS = ("xielu", "gelu", "gelu_tanh", "swiglu", "smooth_swiglu", "smooth_swiglu_product")
GATED_ACTIVATIONS = ("swiglu", "smooth_swiglu", "smooth_swiglu_product")
QK_NORM_TYPES = ("none", "rms", "dyt")


class FogConfig(PreTrainedConfig):
    r"""
    Configuration of a [`FogModel`] / [`FogForCausalLM`]. The defaults are the FOG recipe ("FOG-strong" flags of the
    reference implementation) at the 390M size; use [`FogConfig.fog`] and [`FogConfig.llama_baseline`] for the two
    named recipes at any size.

    Example:

    ```python
    >>> from hf_ext.models.fog import FogConfig
    >>> config = FogConfig.fog(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, vocab_size=4096)
    >>> baseline = FogConfig.llama_baseline(hidden_size=128, num_hidden_layers=4, num_attention_heads=4)
    ```
    """

    model_type = "fog"
    keys_to_ignore_at_inference = ["cache"]
    default_theta = 500_000.0
    # transformers' tensor parallelism (`from_pretrained(..., distributed_config=DistributedConfig(tp_size=N))`):
    # heads and MLP neurons column-wise, output projections row-wise, as for Llama. The per-head QK norm and the
    # xIELU activation act on this rank's heads / neurons only: their parameters (trainable gains, DyT and xIELU
    # alphas) are replicated and the gradient of every backward pass is summed over the TP group
    # (`FogReplicatedGradSum`, registered by the modeling file). Smooth-SwiGLU's per-token scale is reduced
    # (max) over the TP group (see `FogMLP`).
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.q_norm": "fog_replicated_grad_sum",
        "layers.*.self_attn.k_norm": "fog_replicated_grad_sum",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.act_fn": "fog_replicated_grad_sum",
        "layers.*.mlp.down_proj": "rowwise",
    }

    vocab_size: int = 131072
    hidden_size: int = 1024
    intermediate_size: int = 6144
    num_hidden_layers: int = 16
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "xielu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    pre_norm: bool = False
    post_norm: bool = True
    qk_norm: str = "rms"
    freeze_qk_gain: bool = True
    qk_norm_init: float = 1.0
    dyt_alpha_init: float = 1.0
    softmax_scale: float | None = 0.125
    layerscale: bool = True
    layerscale_init: float | None = None
    input_upscale: float | None = 50.0
    final_layernorm: bool = False
    mlp_alpha: float | None = None
    scaled_output_init: bool = True
    xielu_alpha_p_init: float = 0.8
    xielu_alpha_n_init: float = 0.8
    xielu_beta: float = 0.5
    xielu_eps: float = -1e-6

    def __post_init__(self, **kwargs):
        self._resolve_and_validate_fields()
        super().__post_init__(**kwargs)
        self._validate_positions()

    def _resolve_and_validate_fields(self) -> None:
        self._store_python_scalars()
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self._validate_fog_fields()
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    def check_fields(self) -> None:
        """Check every field again, with the errors of construction. FogConfig is not a `@strict` dataclass, so a
        field assigned after construction (`config.hidden_act = "silu"`) is not checked by the assignment; the FOG
        model classes call this before building (a bad value would otherwise build a model that fails late with an
        unrelated error, or silently runs another architecture, e.g. GELU for an unknown `hidden_act`)."""
        self._resolve_and_validate_fields()
        self._validate_positions()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """transformers' `from_dict` (what `from_pretrained` and `AutoConfig.from_pretrained` call), then
        [`check_fields`]: transformers builds the config from the saved dict and only then assigns the keyword
        overrides (`AutoConfig.from_pretrained(folder, hidden_size=-5)`, `hidden_act="bogus"`), unchecked, so a bad
        override was only refused when a model was built from the config (or not at all for config-only use)."""
        result = super().from_dict(config_dict, **kwargs)
        (result[0] if isinstance(result, tuple) else result).check_fields()
        return result

    def _store_python_scalars(self) -> None:
        """Numbers and switches given as numpy scalars (`np.int64(64)`, `np.float32(1e-5)`, `np.True_`) are taken as
        the Python int / float / bool they hold (then checked as such), so that the config stays JSON-serialisable;
        the same for the top-level values of `rope_parameters` and the ids of an `eos_token_id` list."""
        for name in FogConfig.__annotations__:
            setattr(self, name, _python_scalar(getattr(self, name)))
        if isinstance(self.eos_token_id, list):
            self.eos_token_id = [_python_scalar(i) for i in self.eos_token_id]
        if isinstance(self.rope_parameters, dict):
            self.rope_parameters = {key: _python_scalar(value) for key, value in self.rope_parameters.items()}

    def _validate_positions(self) -> None:
        """Fields transformers leaves unchecked whose bad values fail late (an embedding assertion) or silently (a
        NaN rotary frequency table; a negative padding index that wraps to a real token's row)."""
        value = self.max_position_embeddings
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"FogConfig.max_position_embeddings must be a positive integer, got {value!r}.")
        theta = (self.rope_parameters or {}).get("rope_theta")
        if not _is_real(theta) or not math.isfinite(theta) or theta <= 0:
            raise ValueError(
                f"FogConfig: rope_theta (rope_parameters['rope_theta']) must be a finite number > 0, got {theta!r}."
            )
        self._validate_rope_parameters()
        pad = self.pad_token_id
        if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad < self.vocab_size):
            raise ValueError(
                f"FogConfig.pad_token_id must be None or a token id in [0, vocab_size={self.vocab_size}), got {pad!r}."
            )

    def _validate_rope_parameters(self) -> None:
        """transformers' own RoPE validation, as `LlamaConfig` runs it (required keys per `rope_type`, e.g. llama3's
        `factor`), with its `KeyError` as a `ValueError`; a `rope_type` transformers has no initialiser for; and the
        scaling numbers it only warns about (see `_check_rope_numbers`)."""
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        rope = self.rope_parameters
        if not isinstance(rope, dict):
            raise ValueError(f"FogConfig.rope_parameters must be a dict, got {type(rope).__name__}.")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(
                f"FogConfig: rope_parameters['rope_type']={rope_type!r} is unknown; choose one of "
                f"{', '.join(['default', *sorted(ROPE_INIT_FUNCTIONS)])}."
            )
        _check_rope_numbers(rope, rope_type)  # first: transformers divides by original_max_position_embeddings
        try:
            self.validate_rope()
        except KeyError as err:
            raise ValueError(f"FogConfig.rope_parameters: {err.args[0] if err.args else err}") from None

    def _validate_fog_fields(self) -> None:
        for name in _BOOL_FIELDS:  # checked first: pre_norm="False" is truthy and read as True below
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"FogConfig.{name} must be True or False, got {value!r}.")
        for name in ("bos_token_id", "eos_token_id"):  # transformers reads them as token ids (or a list for EOS)
            value = getattr(self, name)
            ids = value if isinstance(value, list) and name == "eos_token_id" else [value]
            if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
                allowed = "a token id, a list of token ids" if name == "eos_token_id" else "a token id"
                raise ValueError(f"FogConfig.{name} must be None or {allowed} (a non-negative int), got {value!r}.")
        if self.rope_parameters is not None and not isinstance(self.rope_parameters, dict):
            raise ValueError(
                f"FogConfig.rope_parameters must be a dict (e.g. {{'rope_type': 'default', 'rope_theta': 10000.0}}) or "
                f"None, got {type(self.rope_parameters).__name__}."
            )
        for name in ("xielu_alpha_p_init", "xielu_alpha_n_init", "xielu_beta", "xielu_eps", "dyt_alpha_init"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
                raise ValueError(f"FogConfig.{name} must be a finite number (float32 range), got {value!r}.")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"FogConfig.{name} must be a positive integer, got {value!r}.")
        for name in ("num_key_value_heads", "head_dim"):  # None (the default) is resolved from the fields above
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"FogConfig.{name} must be a positive integer or None, got {value!r}.")
        for name in ("softmax_scale", "input_upscale", "layerscale_init", "mlp_alpha", "qk_norm_init"):
            value = getattr(self, name)
            if value is None and name != "qk_norm_init":
                continue
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                none = "" if name == "qk_norm_init" else " or None"
                raise ValueError(f"FogConfig.{name} must be a finite number > 0{none}, got {value!r}.")
        for name in ("rms_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"FogConfig.{name} must be a finite number >= 0, got {value!r}.")
        if not _is_real(self.attention_dropout) or not 0 <= self.attention_dropout < 1:
            raise ValueError(f"FogConfig.attention_dropout must be in [0, 1), got {self.attention_dropout!r}.")
        if self.pre_norm and self.post_norm:
            raise ValueError(
                "FogConfig: pre_norm=True and post_norm=True cannot be combined (the same norm slot serves as either); "
                "use pre_norm=True, post_norm=False for the Llama baseline or pre_norm=False, post_norm=True for FOG."
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"FogConfig: num_attention_heads={self.num_attention_heads} must divide hidden_size="
                f"{self.hidden_size}; pick a head count that divides it or set head_dim explicitly."
            )
        if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"FogConfig: num_key_value_heads={self.num_key_value_heads} must be positive and divide "
                f"num_attention_heads={self.num_attention_heads} (grouped-query attention)."
            )
        head_dim = self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads
        if head_dim % 2:
            raise ValueError(f"FogConfig: head_dim={head_dim} must be even for rotary embeddings.")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in FOG_ACTIVATIONS:
            raise ValueError(
                f"FogConfig: unknown hidden_act={self.hidden_act!r}; choose one of {', '.join(FOG_ACTIVATIONS)}."
            )
        if not isinstance(self.qk_norm, str) or self.qk_norm not in QK_NORM_TYPES:
            raise ValueError(f"FogConfig: unknown qk_norm={self.qk_norm!r}; choose one of {', '.join(QK_NORM_TYPES)}.")
        if not self.xielu_alpha_n_init > self.xielu_beta:
            raise ValueError(
                f"FogConfig: xielu_alpha_n_init={self.xielu_alpha_n_init} must exceed xielu_beta={self.xielu_beta} "
                "(alpha_n = beta + softplus(raw) > beta)."
            )
        if not self.xielu_alpha_p_init > 0:
            raise ValueError(f"FogConfig: xielu_alpha_p_init must be > 0, got {self.xielu_alpha_p_init}.")

    @property
    def is_gated_mlp(self) -> bool:
        """Whether the MLP has a gate projection (SwiGLU variants)."""
        return self.hidden_act in GATED_ACTIVATIONS

    @property
    def resolved_layerscale_init(self) -> float:
        """Initial value of the post-norm gains / LayerScale: `layerscale_init` or 1/sqrt(num_hidden_layers)."""
        return self.layerscale_init if self.layerscale_init is not None else 1.0 / math.sqrt(self.num_hidden_layers)

    @classmethod
    def fog(cls, swiglu_intermediate_size: int | None = None, **kwargs) -> FogConfig:
        """The FOG recipe: post-norm with 1/sqrt(L) gains, frozen QK-RMSNorm, softmax scale 0.125, input x50, xIELU.

        The input multiplier is `1 / initializer_range` (50 at the default 0.02), as the reference's `--input-upscale`
        derives it from the init std so that the residual stream starts at unit scale; an `input_upscale` passed here
        wins.

        Args:
            swiglu_intermediate_size (`int`, *optional*):
                MLP width a SwiGLU model of the same size would use. An ungated MLP (xIELU, GeLU) then gets 1.5x this
                width, rounded up to a multiple of 16, so that both recipes have the same parameter count where 1.5x
                it is a multiple of 16 (a multiple of 32; otherwise the ungated MLP is slightly wider). A positive
                integer (a `ValueError` otherwise); ignored when `intermediate_size` is passed.
            kwargs: Any other [`FogConfig`] field.
        """
        values = dict(
            pre_norm=False,
            post_norm=True,
            qk_norm="rms",
            freeze_qk_gain=True,
            softmax_scale=0.125,
            layerscale=True,
            input_upscale=50.0,
            final_layernorm=False,
            hidden_act="xielu",
        )
        values.update(kwargs)
        std = values.get("initializer_range", cls.initializer_range)
        if "input_upscale" not in kwargs and _is_real(_python_scalar(std)) and math.isfinite(std) and std > 0:
            values["input_upscale"] = 1.0 / float(std)  # a bad or zero std is refused (or kept at x50) by the config
        swiglu_intermediate_size = _check_swiglu_width("fog", swiglu_intermediate_size)
        if swiglu_intermediate_size is not None and "intermediate_size" not in kwargs:
            gated = values["hidden_act"] in GATED_ACTIVATIONS
            values["intermediate_size"] = (
                swiglu_intermediate_size if gated else _ungated_width(swiglu_intermediate_size)
            )
        return cls(**values)

    @classmethod
    def llama_baseline(cls, swiglu_intermediate_size: int | None = None, **kwargs) -> FogConfig:
        """The Llama-3-style baseline built from the same class: pre-norm RMSNorm, SwiGLU, final norm, 1/sqrt(d) scale.

        Args:
            swiglu_intermediate_size (`int`, *optional*): SwiGLU MLP width (same as `intermediate_size`), a positive
                integer.
            kwargs: Any other [`FogConfig`] field.
        """
        values = dict(
            pre_norm=True,
            post_norm=False,
            qk_norm="none",
            freeze_qk_gain=False,
            softmax_scale=None,
            layerscale=False,
            input_upscale=None,
            final_layernorm=True,
            hidden_act="swiglu",
        )
        values.update(kwargs)
        swiglu_intermediate_size = _check_swiglu_width("llama_baseline", swiglu_intermediate_size)
        if swiglu_intermediate_size is not None and "intermediate_size" not in kwargs:
            values["intermediate_size"] = swiglu_intermediate_size
        return cls(**values)


#: Switches that must be real booleans (a string such as "False" or a None would be read by truthiness).
_BOOL_FIELDS = (
    "pre_norm", "post_norm", "freeze_qk_gain", "layerscale", "final_layernorm", "scaled_output_init", "attention_bias",
    "mlp_bias", "tie_word_embeddings", "use_cache",
)  # fmt: skip
_FLOAT32_MAX = 3.4028234663852886e38


def _is_real(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _python_scalar(value):
    """`value` as the Python bool / int / float it holds when it is a bool, integer or real number of another type
    (numpy's), else unchanged for the checks to refuse. `hf_ext.utils.checks.python_scalar`'s rule, repeated here:
    a model folder imports nothing from hf_ext (its saved code also loads with `trust_remote_code=True`)."""
    numpy = sys.modules.get("numpy")  # without numpy imported there is no numpy bool to convert
    if isinstance(value, bool) or (numpy is not None and isinstance(value, numpy.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


#: RoPE scaling numbers that must be finite and > 0 (0, a negative value or NaN makes a NaN or inf rotary table).
_ROPE_POSITIVE = (
    "factor", "attention_factor", "beta_fast", "beta_slow", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings",
)  # fmt: skip
#: RoPE types whose `factor` transformers documents as >= 1 (it only logs a warning for a smaller one).
_ROPE_FACTOR_AT_LEAST_ONE = ("linear", "dynamic", "yarn", "longrope", "llama3")


def _check_rope_numbers(rope: dict, rope_type: str) -> None:
    """The numbers of `rope_parameters` that transformers' `validate_rope` only warns about (or not at all), refused
    by key: a NaN, inf, zero or negative scaling number builds a NaN rotary table, which under SDPA silently zeroes
    every attention output."""
    for key in _ROPE_POSITIVE:
        value = rope.get(key)
        if value is None:
            continue
        if not _is_real(value) or not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"FogConfig: rope_parameters[{key!r}] must be a finite number > 0, got {value!r} "
                f"(rope_type={rope_type!r})."
            )
    factor = rope.get("factor")
    if factor is not None and rope_type in _ROPE_FACTOR_AT_LEAST_ONE and factor < 1:
        raise ValueError(
            f"FogConfig: rope_parameters['factor'] must be >= 1 for rope_type={rope_type!r} (the context extension "
            f"ratio), got {factor!r}; use 1.0 for no scaling, or rope_type='default'."
        )
    for key in ("mscale", "mscale_all_dim"):
        value = rope.get(key)
        if value is not None and (not _is_real(value) or not math.isfinite(value)):
            raise ValueError(f"FogConfig: rope_parameters[{key!r}] must be a finite number, got {value!r}.")
    partial = rope.get("partial_rotary_factor")
    if partial is not None and (not _is_real(partial) or partial != 1):
        # FOG rotates the whole head: a partial factor was ignored with the default RoPE (silently another model)
        # and broke the forward with a shape error with the scaled ones, whose tables it shortens
        raise ValueError(
            f"FogConfig: rope_parameters['partial_rotary_factor']={partial!r}, but FOG applies RoPE to the whole head "
            "(head_dim); partial rotary embeddings are not implemented. Drop the key (or set it to 1.0)."
        )
    for key in ("short_factor", "long_factor"):
        values = rope.get(key)
        if values is None:
            continue
        if not isinstance(values, list | tuple) or not all(
            _is_real(v) and math.isfinite(v) and v > 0 for v in values
        ):
            raise ValueError(f"FogConfig: rope_parameters[{key!r}] must be a list of finite numbers > 0, got {values!r}.")


def _check_swiglu_width(recipe: str, value) -> int | None:
    """`swiglu_intermediate_size` is checked itself, before `fog` turns it into a 1.5x ungated width (a float, a bool
    or a string would otherwise be rounded, or fail there with an error naming neither it nor the fix). Any integer
    type (e.g. numpy's) is accepted and returned as a Python int, so that the config stays JSON-serialisable."""
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(
            f"FogConfig.{recipe}: swiglu_intermediate_size must be a positive integer (the SwiGLU MLP width) or None, "
            f"got {value!r}."
        )
    return int(value)


def _ungated_width(swiglu_width: int) -> int:
    return int(math.ceil(1.5 * swiglu_width / 16) * 16)


__all__ = ["FogConfig"]
