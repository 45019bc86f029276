"""The small causal decoder used by the grokking papers (Grokfast, NeuralGrok), as a `PreTrainedModel`."""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutput
from transformers.utils import can_return_tuple

from ..utils.checks import is_bool


class GrokDecoderConfig(PreTrainedConfig):
    r"""
    Configuration of [`GrokDecoderForCausalLM`], the 2-layer, width-128 decoder of the grokking papers.

    Args:
        vocab_size (`int`, *optional*, defaults to 99):
            Number of tokens: `p` operands, `=` and the operator tokens (`p + 2` for a binary task with `p = 97`).
            Use [`arithmetic_vocab_size`] to get the right value for a task.
        hidden_size (`int`, *optional*, defaults to 128):
            Width of the residual stream.
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Number of decoder blocks (2 for the binary tasks, 4 for `a*c+b*d-e`).
        num_attention_heads (`int`, *optional*, defaults to 4):
            Attention heads per block; must divide `hidden_size`.
        max_position_embeddings (`int`, *optional*, defaults to 16):
            Number of learned positions (at least the sequence length of the task).
        mlp_ratio (`int`, *optional*, defaults to 4):
            MLP width as a multiple of `hidden_size`.

        The sizes and counts above must be positive ints (checked when the config and the model are built); numpy
        integers are accepted and stored as Python ints, so that the config can be saved.
        overwrite_residual_with_norm (`bool`, *optional*, defaults to `True`):
            Keep the reference quirk `x = ln_1(x); x = x + attn(x)` (the residual stream is replaced by its
            normalised value before attention). `False` gives standard pre-LN blocks.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Share one matrix between the token embeddings and the head. The reference decoder is untied.

        The two switches must be bools (numpy's too, stored as Python bools); a string such as "false" is refused.
    """

    model_type = "grok_decoder"

    vocab_size: int = 99
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 16
    mlp_ratio: int = 4
    overwrite_residual_with_norm: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_architecture()  # transformers runs it only when the config is saved

    def validate_architecture(self):
        # counts must be positive ints (not bools): 0 or -1 layers built a model with no blocks, mlp_ratio=0
        # zero-width MLPs, and both trained without complaint
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "mlp_ratio",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"GrokDecoderConfig.{name}={value!r} must be a positive int.")
            # any integer type (e.g. numpy's) is stored as a Python int: the config is saved as JSON
            setattr(self, name, int(value))
        # switches must be bools: the string "false" is truthy (it kept the residual quirk on), and a numpy bool
        # (accepted, stored as a Python bool) would make the config unsaveable
        for name in ("overwrite_residual_with_norm", "tie_word_embeddings"):
            value = getattr(self, name)
            if not is_bool(value):
                raise ValueError(f"GrokDecoderConfig.{name}={value!r} must be a bool (True or False).")
            setattr(self, name, bool(value))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads={self.num_attention_heads}."
            )


class GrokDecoderBlock(nn.Module):
    """Causal self-attention block: LayerNorm, multi-head attention, LayerNorm, 4x GELU MLP."""

    def __init__(self, config: GrokDecoderConfig):
        super().__init__()
        dim = config.hidden_size
        self.overwrite_residual_with_norm = config.overwrite_residual_with_norm
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, config.num_attention_heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, config.mlp_ratio * dim), nn.GELU(), nn.Linear(config.mlp_ratio * dim, dim)
        )

    def forward(
        self, hidden_states: torch.Tensor, causal_mask: torch.Tensor, output_attentions: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The block's output; with `output_attentions=True`, also its attention probabilities per head,
        `(batch, heads, seq, seq)` (nn.MultiheadAttention's slower path, which returns them)."""
        # causal_mask: additive float mask, (seq, seq) or (batch * heads, seq, seq) as nn.MultiheadAttention takes it
        normed = self.ln_1(hidden_states)
        attn_out, weights = self.attn(
            normed,
            normed,
            normed,
            attn_mask=causal_mask,
            need_weights=output_attentions,
            average_attn_weights=False,
        )
        residual = normed if self.overwrite_residual_with_norm else hidden_states
        hidden_states = residual + attn_out
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return (hidden_states, weights) if output_attentions else hidden_states


class GrokDecoderForCausalLM(PreTrainedModel, GenerationMixin):
    """
    Token + learned position embeddings, `num_hidden_layers` [`GrokDecoderBlock`]s, a final LayerNorm and a
    bias-free head. Weights keep PyTorch's default initialisation, as in the reference code.

    The forward follows the causal-LM convention of transformers: `labels` are the input ids with `-100` where no
    loss is taken, and the logits at position `i` predict token `i + 1`. With the arithmetic datasets of this package
    only the answer is labelled, so the loss is the cross-entropy of the answer given the equation.

    `generate` works (greedy, sampling, beam search; also through peft with `task_type="CAUSAL_LM"`), but the model
    has no KV cache: every step runs the whole sequence again, which is what the model's size and its
    `max_position_embeddings` (prompt plus new tokens) make cheap. A cache passed to `generate`
    (`past_key_values=...`) and `inputs_embeds` prompts are refused.
    """

    config: GrokDecoderConfig
    config_class = GrokDecoderConfig
    base_model_prefix = "decoder"
    main_input_name = "input_ids"
    _no_split_modules = ["GrokDecoderBlock"]
    _tied_weights_keys = {"head.weight": "token_embeddings.weight"}

    def __init__(self, config: GrokDecoderConfig):
        config.validate_architecture()  # also a config changed after it was built
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(GrokDecoderBlock(config) for _ in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # the modules above already hold PyTorch's default initialisation; `post_init` must not draw it again (that
        # would change the weights a seed gives). `_init_weights` acts only afterwards, e.g. on the weights that
        # `from_pretrained` does not find in a checkpoint.
        self._constructor_initialised = True
        self.post_init()
        self._constructor_initialised = False
        if self.generation_config is not None:
            # no KV cache: generate feeds the whole sequence each step (prepare_inputs_for_generation ensures it
            # for a generation config that says otherwise, e.g. one loaded from an older folder)
            self.generation_config.use_cache = False

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate must not build a DynamicCache: the forward neither fills nor reads one
        return False

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs) -> dict:
        """The inputs of one generation step: always the whole sequence so far (the model has no KV cache)."""
        for name in ("cache", "past_key_values"):
            if kwargs.pop(name, None) is not None:
                raise ValueError(
                    f"GrokDecoderForCausalLM has no KV cache, but generate got `{name}`: drop it (each step runs "
                    "the whole sequence)."
                )
        if kwargs.pop("inputs_embeds", None) is not None:
            raise ValueError(
                "GrokDecoderForCausalLM.generate needs `input_ids`: without a KV cache, a prompt given as "
                "`inputs_embeds` cannot be run again at the later steps. Pass the prompt's token ids instead."
            )
        # the generation loop asks for the last token only (next_sequence_length=1) when `use_cache` is set
        kwargs.pop("next_sequence_length", None)
        return super().prepare_inputs_for_generation(input_ids, next_sequence_length=None, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's default initialisation, as the papers use (N(0, 1) embeddings, Kaiming-uniform linears, unit
        LayerNorms, Xavier-uniform attention input projection with zero biases). The constructor's modules already
        hold it; this gives it to the weights `from_pretrained` does not load (a checkpoint without them, or
        `ignore_mismatched_sizes=True` for another vocabulary), which were left uninitialised memory before. The
        `transformers.initialization` functions skip the weights that were loaded."""
        if getattr(self, "_constructor_initialised", False):
            return
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight.shape[1]) if module.weight.shape[1] > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            # after its `out_proj` (children are initialised first): the out_proj bias starts at zero
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
            init.zeros_(module.out_proj.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.token_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.head = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`): token ids (or `inputs_embeds`, not both).
            attention_mask (`torch.Tensor` of shape `(batch, seq_len)`, *optional*): 1 for real tokens, 0 for
                padding (left or right). Padded keys are masked and the real tokens of a row get the positions
                0, 1, ... they would have without the padding, so a padded row gives the logits of the sequence
                alone (at its real tokens). The arithmetic datasets have no padding and pass none.
            labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*): targets, `-100` where ignored.
            num_items_in_batch (`int`, *optional*): labelled tokens in the whole (accumulated) batch; when given the
                loss is the sum over this micro-batch divided by it, so gradient accumulation matches one big batch.
            inputs_embeds (`torch.Tensor` of shape `(batch, seq_len, hidden_size)`, *optional*): token embeddings
                instead of `input_ids`.
            output_hidden_states (`bool`, *optional*): also return the embeddings (token + position) and each block's
                output, `num_hidden_layers + 1` tensors (default: `config.output_hidden_states`).
            output_attentions (`bool`, *optional*): also return each block's attention probabilities,
                `(batch, heads, seq, seq)` (default: `config.output_attentions`).
            shift_labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*, keyword): targets already
                shifted (the target of position `i` at `i`, as transformers passes them under context parallelism);
                used instead of `labels`. Taken from `kwargs`, as transformers' models take it: a named parameter
                would make `Trainer` (and `find_labels`) expect a `shift_labels` column in every dataset.
            return_dict (`bool`, *optional*): `False` returns a tuple, as transformers' models do.

        Returns:
            [`~modeling_outputs.CausalLMOutput`] with `loss` (mean over labelled positions), `logits`, and
            `hidden_states` / `attentions` when asked for.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}.")
        if inputs_embeds is not None and (
            inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size
        ):
            raise ValueError(
                f"inputs_embeds must have shape (batch, seq_len, {self.config.hidden_size}), got "
                f"{tuple(inputs_embeds.shape)}."
            )
        batch_size, seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if seq_len > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {seq_len} exceeds max_position_embeddings={self.config.max_position_embeddings}."
            )
        if attention_mask is not None and tuple(attention_mask.shape) != (batch_size, seq_len):
            raise ValueError(
                f"attention_mask must have shape (batch, seq_len) = {(batch_size, seq_len)} (1: token, 0: padding), "
                f"got {tuple(attention_mask.shape)}."
            )
        hidden = self.token_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        device = hidden.device
        if attention_mask is None:
            positions = torch.arange(seq_len, device=device)[None]
            causal_mask = torch.full((seq_len, seq_len), float("-inf"), device=device, dtype=hidden.dtype)
            causal_mask = torch.triu(causal_mask, diagonal=1)
        else:
            # no branch on the mask's values: this also runs under torch.func.vmap (per-sample gradients)
            real = attention_mask.to(device=device, dtype=torch.bool)
            positions = (real.long().cumsum(-1) - 1).clamp(min=0)
            index = torch.arange(seq_len, device=device)
            causal = index[:, None] >= index[None, :]
            # a query attends to earlier real tokens, and to itself so that a padding query's row is never empty
            allowed = causal[None] & (real[:, None, :] | (index[:, None] == index[None, :])[None])
            causal_mask = torch.zeros(allowed.shape, device=device, dtype=hidden.dtype).masked_fill(
                ~allowed, float("-inf")
            )
            causal_mask = causal_mask.repeat_interleave(self.config.num_attention_heads, dim=0)
        shift_labels = kwargs.pop("shift_labels", None)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        hidden = hidden + self.position_embeddings(positions)
        all_hidden, all_attentions = [hidden], []
        for layer in self.layers:
            if output_attentions:
                hidden, weights = layer(hidden, causal_mask, output_attentions=True)
                all_attentions.append(weights)
            else:
                hidden = layer(hidden, causal_mask)
            all_hidden.append(hidden)
        logits = self.head(self.ln_f(hidden))
        loss = None
        if labels is not None or shift_labels is not None:
            if shift_labels is None:
                flat_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
                flat_labels = labels[:, 1:].reshape(-1)
            else:
                flat_logits = logits.reshape(-1, logits.shape[-1])
                flat_labels = shift_labels.reshape(-1)
            if num_items_in_batch is None:
                loss = nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
            else:
                loss = nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum")
                if isinstance(num_items_in_batch, torch.Tensor):
                    num_items_in_batch = num_items_in_batch.to(loss.device)
                loss = loss / num_items_in_batch
        return CausalLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )


def _register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..utils.auto_registration import declare_causal_lm

    AutoConfig.register(GrokDecoderConfig.model_type, GrokDecoderConfig, exist_ok=True)
    AutoModelForCausalLM.register(GrokDecoderConfig, GrokDecoderForCausalLM, exist_ok=True)
    declare_causal_lm(GrokDecoderConfig.model_type, GrokDecoderForCausalLM.__name__)


_register_auto_classes()
