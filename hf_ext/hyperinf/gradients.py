"""Per-example gradients over the LoRA parameters of a peft model, in the rank-first layout, streamed batch by batch.

The rank-first layout puts the LoRA rank on the first axis of every tracked matrix: the gradient of `lora_A`
(shape `(r, d_in)`) is kept as is, the gradient of `lora_B` (shape `(d_out, r)`) is transposed to `(r, d_out)`.
Other tracked parameters (by default the output-projection weight of the trainable copies that peft keeps in
`modules_to_save`, e.g. a classification head's) keep their first axis first (`(out, in)`; a bias becomes `(1, d)`).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..utils.vmap import is_func_transform_error, prepared_for_vmap
from .influence import _user_stacklevel

_A_PARTS = ("lora_A", "lora_embedding_A")
_B_PARTS = ("lora_B", "lora_embedding_B")
_MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "labels",
    "decoder_input_ids",
    "decoder_attention_mask",
    "pixel_values",
    "image_sizes",
)
# inputs with one fixed shape per example (images): stacked, never padded
_STACKED_INPUTS = ("pixel_values", "image_sizes")


@dataclass(frozen=True)
class TrackedMatrix:
    """One tracked parameter and how its gradient is laid out.

    Attributes:
        name (`str`): the parameter's name in `model.named_parameters()`.
        kind (`str`): `"lora_A"`, `"lora_B"` or `"other"` (a `modules_to_save` or DoRA parameter).
        param_shape (`tuple[int, ...]`): the parameter's shape.
        shape (`tuple[int, int]`): the rank-first `(r, d)` shape of one example's gradient.
        adapter (`str`, *optional*): the adapter the parameter belongs to (set by `tracked_lora_parameters`); when
            given, `check_adapter_in_forward` (run by every `PerExampleGradients.iterate`) refuses a LoRA layer that
            does not apply it (another adapter made active after the estimator was created or fitted).
    """

    name: str
    kind: str
    param_shape: tuple[int, ...]
    shape: tuple[int, int]
    adapter: str | None = None

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


def _rank_first_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 1:
        return (1, shape[0])
    if kind == "lora_B":
        rest = 1
        for i, size in enumerate(shape):
            if i != 1:
                rest *= size
        return (shape[1], rest)
    rest = 1
    for size in shape[1:]:
        rest *= size
    return (shape[0], rest)


def to_rank_first(grads: torch.Tensor, matrix: TrackedMatrix) -> torch.Tensor:
    """Reshape a batch of gradients `(B, *param_shape)` to the rank-first layout `(B, r, d)`."""
    batch = grads.shape[0]
    if len(matrix.param_shape) >= 2 and matrix.kind == "lora_B":
        grads = grads.movedim(2, 1)
    return grads.reshape(batch, *matrix.shape)


def find_lora_layers(model: torch.nn.Module) -> list[str]:
    """Names of the peft LoRA layers (`peft.tuners.lora.LoraLayer`) inside `model`."""
    from peft.tuners.lora import LoraLayer

    return [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def default_adapter_name(model: torch.nn.Module) -> str:
    active = getattr(model, "active_adapter", None)
    if isinstance(active, (list, tuple)):
        active = active[0] if active else None
    return active if isinstance(active, str) else "default"


MODULES_TO_SAVE_MODES = ("output", "all", "none")


def _output_projection_weights(model: torch.nn.Module, saved_prefixes: set[str]) -> set[str]:
    """For each `modules_to_save` copy (given by its name prefix), the name of the weight of its last linear layer.

    That layer is the output projection: the copy itself for a plain head (`score`, `classifier`), `out_proj` for
    RoBERTa's `dense -> out_proj` classification head. Copies without a linear layer (e.g. an embedding) yield none.
    """
    from transformers.pytorch_utils import Conv1D

    names = set()
    for prefix in saved_prefixes:
        last = None
        for sub_name, sub in model.get_submodule(prefix).named_modules():
            if isinstance(sub, (torch.nn.Linear, Conv1D)):
                last = sub_name
        if last is not None:
            names.add(f"{prefix}.{last}.weight" if last else f"{prefix}.weight")
    return names


def tracked_lora_parameters(
    model: torch.nn.Module, adapter_name: str | None = None, modules_to_save: str = "output"
) -> list[TrackedMatrix]:
    """The parameters whose gradients enter the influence computation, in `named_parameters()` order.

    These are the LoRA matrices of `adapter_name` (whether or not they currently require grad, so a model loaded for
    inference works too) and, depending on `modules_to_save`, parameters of the adapter's `modules_to_save` copies
    (for sequence classification, the trained head). `adapter_name` defaults to the model's active adapter; when
    several adapters are active (`model.base_model.set_adapter([...])`) it must be given, and the parameters of the
    other active adapters are then held fixed, as the base model's (they still enter the forward).

    * `"output"` (default, as the reference): only the weight of each copy's output projection, i.e. its last
      linear layer (`score.weight`, `classifier.weight`, or `out_proj.weight` of RoBERTa's two-layer head); no bias,
      no hidden `dense` layer;
    * `"all"`: every parameter of the copies (biases as `1 x d` matrices);
    * `"none"`: LoRA matrices only.

    Raises:
        `TypeError`: `model` is not a `torch.nn.Module`.
        `ValueError`: `model` has no LoRA layers for the adapter, the adapter is not active (the forward would not use
            it: `model.set_adapter(adapter_name)` first), a LoRA layer of the adapter is merged
            (`model.unmerge_adapter()` first) or disabled (`with model.disable_adapter():`), several adapters are
            active and `adapter_name` is not given, or `modules_to_save` is not a known mode.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module (a peft LoRA model), got {type(model).__name__}.")
    if modules_to_save not in MODULES_TO_SAVE_MODES:
        raise ValueError(
            f"`modules_to_save` must be one of {MODULES_TO_SAVE_MODES} (which parameters of the adapter's "
            f"modules_to_save copies to track), got {modules_to_save!r}."
        )
    if not find_lora_layers(model):
        raise ValueError(
            f"`model` ({type(model).__name__}) has no LoRA layers. Wrap it first, e.g. "
            "`peft.get_peft_model(model, peft.LoraConfig(target_modules=[...]))`, and fine-tune the adapter."
        )
    active = active_lora_adapters(model)
    if adapter_name is None and len(active) > 1:
        raise ValueError(
            f"`model` has several active adapters {active} and `adapter_name` is not given: influence is computed "
            "through the parameters of one adapter, and tracking only the first would leave the others out without a "
            f"word. Pass `adapter_name` (e.g. `adapter_name={active[0]!r}`; the other active adapters' parameters are "
            "then fixed, as the base model's), or activate one adapter first with `model.set_adapter(name)`."
        )
    adapter = adapter_name or default_adapter_name(model)
    candidates: list[tuple[str, str, tuple[int, ...], str | None]] = []
    for name, param in model.named_parameters():
        parts = name.split(".")
        kind, saved_prefix = None, None
        for i, part in enumerate(parts[:-1]):
            if parts[i + 1] != adapter:
                continue
            if part in _A_PARTS:
                kind = "lora_A"
            elif part in _B_PARTS:
                kind = "lora_B"
            elif part == "modules_to_save":
                kind, saved_prefix = "other", ".".join(parts[: i + 2])
            elif part.startswith("lora_"):
                kind = "other"
            if kind is not None:
                break
        if kind is not None:
            candidates.append((name, kind, tuple(param.shape), saved_prefix))
    saved = {prefix for *_, prefix in candidates if prefix is not None}
    keep_saved = _output_projection_weights(model, saved) if modules_to_save == "output" else set()
    tracked: list[TrackedMatrix] = []
    for name, kind, shape, saved_prefix in candidates:
        if saved_prefix is not None and (
            modules_to_save == "none" or (modules_to_save == "output" and name not in keep_saved)
        ):
            continue
        tracked.append(TrackedMatrix(name, kind, shape, _rank_first_shape(kind, shape), adapter))
    if not any(m.kind in ("lora_A", "lora_B") for m in tracked):
        raise ValueError(
            f"`model` has LoRA layers but none for adapter {adapter!r}; pass `adapter_name` with one of its adapters."
        )
    if active and adapter not in active:
        raise ValueError(
            f"`adapter_name`={adapter!r} is not an active adapter of `model` (active: {active}): the forward pass does "
            f"not use its LoRA matrices, so their gradients, and every influence score, would be zero. Activate it "
            f"first with `model.set_adapter({adapter!r})`, or pass `adapter_name={active[0]!r}`."
        )
    check_adapter_in_forward(model, tracked)
    return tracked


def check_adapter_in_forward(model: torch.nn.Module, tracked: list[TrackedMatrix]) -> None:
    """Raise a `ValueError` naming the first LoRA layer holding a tracked matrix whose forward skips its LoRA matrices.

    peft's LoRA layers use only their base layer when an adapter is merged into it (`model.merge_adapter()`: `merged`)
    or when adapters are disabled (`with model.disable_adapter():`: `disable_adapters`). The function is the same, but
    the LoRA matrices' gradients are all zero, so TracIn would score through the head alone (or return zeros) and the
    other methods would fail on all-zero gradients. Likewise a layer whose active adapters do not include the tracked
    matrix's `adapter` (`model.set_adapter("other")` after the estimator was created or fitted): every gradient, and
    so every score of a fitted estimator, would be zero.
    """
    from peft.tuners.lora import LoraLayer

    layers = {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    seen: set[str] = set()
    for matrix in tracked:
        parts = matrix.name.split(".")
        owner = next(
            (prefix for i in range(len(parts) - 1, 0, -1) if (prefix := ".".join(parts[:i])) in layers), None
        )
        if owner is None or owner in seen:
            continue
        seen.add(owner)
        layer = layers[owner]
        if getattr(layer, "merged", False):
            raise ValueError(
                f"`model`'s LoRA layer {owner!r} has adapter(s) {list(getattr(layer, 'merged_adapters', []))} merged "
                "into its base weights (`model.merge_adapter()`): its forward no longer uses the LoRA matrices, so "
                "their gradients are all zero and the influence scores would leave the adapter out. Call "
                "`model.unmerge_adapter()` first (merge again afterwards if needed)."
            )
        if getattr(layer, "disable_adapters", False):
            raise ValueError(
                f"`model`'s LoRA layer {owner!r} has its adapters disabled (inside `with model.disable_adapter():`, or "
                "after `disable_adapter_layers()`): its forward does not use the LoRA matrices, so their gradients "
                "are all zero and the influence scores would leave the adapter out. Compute influence outside the "
                "`disable_adapter()` context (or call `model.base_model.enable_adapter_layers()` first)."
            )
        adapter = matrix.adapter
        applied = getattr(layer, "active_adapters", None) or []
        applied = [applied] if isinstance(applied, str) else list(applied)
        if adapter is not None and adapter not in applied:
            other = repr(applied[0]) if len(applied) == 1 else str(applied)
            raise ValueError(
                f"`model`'s LoRA layer {owner!r} applies adapter(s) {applied}, not {adapter!r}, the adapter whose LoRA "
                "matrices are tracked (the estimator's `adapter_name`, the one it was created for and fitted on): the "
                "forward pass does not use them, so their gradients, and every influence score, would be zero (was "
                "another adapter made active with `model.set_adapter(...)` after the estimator was created?). Call "
                f"`model.set_adapter({adapter!r})` to score the adapter it was fitted on"
                + (
                    f", or, to attribute {other}, create a new `InfluenceEstimator(model, adapter_name=...)` for it "
                    "and `fit` it again."
                    if applied
                    else "."
                )
            )


def active_lora_adapters(model: torch.nn.Module) -> list[str]:
    """Adapters that the LoRA layers of `model` apply in the forward pass (sorted; empty if none is reported)."""
    from peft.tuners.lora import LoraLayer

    active: set[str] = set()
    for module in model.modules():
        if isinstance(module, LoraLayer):
            names = getattr(module, "active_adapters", None) or []
            active.update([names] if isinstance(names, str) else names)
    return sorted(active)


def _is_causal_lm(model: torch.nn.Module) -> bool:
    """A decoder-only language model whose labels default to its `input_ids`: a `*ForCausalLM` class or any class
    in transformers' causal-LM auto mapping (`GPT2LMHeadModel`, `XLNetLMHeadModel`, ...); encoder-decoders never."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        return False
    name = type(base).__name__
    return name.endswith("ForCausalLM") or name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def model_input_names(model: torch.nn.Module) -> set[str]:
    """Dataset columns that are passed to the model: the usual text inputs, the decoder inputs of encoder-decoders
    and the images of vision-language models (`pixel_values`, `image_sizes`) that its `forward` accepts."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return {name for name in _MODEL_INPUTS if name in params}


class PaddingCollator:
    """Right-pads a list of examples to one batch of tensors.

    `input_ids`/`token_type_ids`/`position_ids` are padded with `pad_token_id` (0 for the last two), `attention_mask`
    with 0 and token-level `labels` with -100, each column to its own longest row (an encoder-decoder's targets may be
    longer than its inputs). Scalar labels (classification) and floating-point label vectors (one
    per example: multi-label classification's multi-hot targets, multi-output regression) are stacked. With
    `causal_lm_labels`, a causal LM example without `labels` (absent or `None`) gets its own: its `input_ids`, -100
    where its `attention_mask` is 0 (and on the padding), so an example's labels never depend on the batch it is in.
    An example without `attention_mask` (when some others of the batch have one) gets the model's default, ones over
    its tokens. The examples of a batch must have the same model inputs otherwise (a column present, and not `None`,
    in every example or in none: `uniform_inputs`); a batch mixing them is a `ValueError` naming the example and the
    column.

    Args:
        input_names (`Sequence[str]`): columns to keep.
        pad_token_id (`int`, *optional*, defaults to 0): padding id of `input_ids`.
        causal_lm_labels (`bool`, *optional*, defaults to `False`): build `labels` from `input_ids` when absent.
    """

    def __init__(self, input_names: Sequence[str], pad_token_id: int | None = 0, causal_lm_labels: bool = False):
        self.input_names = tuple(input_names)
        self.pad_token_id = pad_token_id
        self.causal_lm_labels = causal_lm_labels

    @property
    def uniform_inputs(self) -> tuple[str, ...]:
        """The columns that every example of a batch must have or none must: those of `input_names` that are not
        completed per example (`attention_mask`, and a causal LM's `labels`)."""
        filled = {"attention_mask"} | ({"labels"} if self.causal_lm_labels else set())
        return tuple(key for key in self.input_names if key not in filled)

    def __call__(self, examples: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        check_same_inputs(examples, self.uniform_inputs)
        if "attention_mask" in self.input_names and any(ex.get("attention_mask") is not None for ex in examples):
            examples = [
                ex if ex.get("attention_mask") is not None else {**ex, "attention_mask": [1] * len(ex["input_ids"])}
                for ex in examples
            ]
        if self.causal_lm_labels:
            examples = [ex if ex.get("labels") is not None else with_causal_lm_labels(ex) for ex in examples]
        lengths = [len(ex["input_ids"]) for ex in examples]
        longest = max(lengths)
        needs_padding = min(lengths) != longest
        pad_id = 0 if self.pad_token_id is None else self.pad_token_id
        batch: dict[str, torch.Tensor] = {}
        for key in self.input_names:
            if examples[0].get(key) is None:
                continue
            values = [ex[key] for ex in examples]
            first = torch.as_tensor(values[0])
            if first.ndim == 0 or key in _STACKED_INPUTS or (key == "labels" and _label_vector(values[0])):
                tensors = [torch.as_tensor(v) for v in values]
                if any(t.shape != first.shape for t in tensors):
                    raise ValueError(
                        f"`{key}` has different shapes within a batch ({sorted({tuple(t.shape) for t in tensors})}); "
                        "resize the images to one shape (e.g. with the model's image processor) first."
                    )
                batch[key] = torch.stack(tensors)
                continue
            fill = {"input_ids": pad_id, "decoder_input_ids": pad_id, "attention_mask": 0, "labels": -100}.get(key, 0)
            # each column to its own longest row: an encoder-decoder's targets (labels, decoder inputs) may be longer
            # than its inputs (they were padded to the inputs' length and failed to fit)
            width = max(torch.as_tensor(value).shape[0] for value in values)
            out = torch.full((len(values), width), fill, dtype=first.dtype)
            for row, value in enumerate(values):
                value = torch.as_tensor(value)
                out[row, : value.shape[0]] = value
            batch[key] = out
        if "attention_mask" in self.input_names and "attention_mask" not in batch and needs_padding:
            mask = torch.zeros((len(examples), longest), dtype=torch.long)
            for row, length in enumerate(lengths):
                mask[row, :length] = 1
            batch["attention_mask"] = mask
        return batch


def with_causal_lm_labels(example: Mapping) -> dict:
    """`example` with the labels a causal LM takes when none are given: its own `input_ids`, -100 where its own
    `attention_mask` is 0."""
    labels = torch.as_tensor(example["input_ids"]).clone()
    mask = example.get("attention_mask")
    if mask is not None:
        mask = torch.as_tensor(mask)
        if mask.shape == labels.shape:
            labels[mask == 0] = -100
    return {**example, "labels": labels}


def present_inputs(example: Mapping, input_names: Sequence[str]) -> frozenset[str]:
    """The columns of `input_names` that `example` has (and that are not `None`)."""
    return frozenset(key for key in input_names if example.get(key) is not None)


def check_same_inputs(
    examples: Sequence[Mapping],
    input_names: Sequence[str],
    indices: Sequence[int] | None = None,
    reference: tuple[int, frozenset[str]] | None = None,
) -> None:
    """Refuse examples that do not have the same model inputs (`input_names` present and not `None`) as the first
    (or as `reference`, an `(index, columns)` pair): a batch built from them would take its columns from one example,
    dropping another's column (e.g. its -100 label masks) or failing on it. `indices` name the examples (default:
    their positions in the batch)."""

    def where(pos: int) -> str:
        return f"example {indices[pos]}" if indices is not None else f"example {pos} of the batch"

    if reference is None:
        ref_name, ref_keys = where(0), present_inputs(examples[0], input_names)
    else:
        ref_name, ref_keys = f"example {reference[0]}", reference[1]
    for pos, example in enumerate(examples):
        keys = present_inputs(example, input_names)
        if keys == ref_keys:
            continue
        key = min(keys ^ ref_keys)
        has, lacks = (where(pos), ref_name) if key in keys else (ref_name, where(pos))
        raise ValueError(
            f"{has} has a `{key}` column and {lacks} has none (or `None`): the examples must have the same model "
            f"inputs, since a batch of examples with and without `{key}` would drop it or fail, and the scores would "
            f"depend on `batch_size`. Give every example a `{key}`, or none."
        )


def _label_vector(labels) -> bool:
    """Whether `labels` are one floating-point target vector of the example (multi-hot targets of multi-label
    classification, several regression outputs), not token labels (integer ids, -100 for tokens that do not count)."""
    if labels is None or isinstance(labels, int | float):
        return False
    tensor = torch.as_tensor(labels)
    return tensor.ndim == 1 and tensor.is_floating_point()


# Columns with one entry per input token: cut with `input_ids` when an example's stored padding is removed.
_TOKEN_LEVEL = ("input_ids", "attention_mask", "labels", "token_type_ids", "position_ids")
# Model inputs that must have exactly one entry per input token when 1-D (refused otherwise, naming the example).
_PER_INPUT_TOKEN = ("attention_mask", "token_type_ids", "position_ids")


def check_dataset(dataset, name: str, model: torch.nn.Module) -> None:
    """Raise a clear error when `dataset` cannot feed the influence computation."""
    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"`{name}` must be a datasets.Dataset (or a list of dicts), got {type(dataset).__name__}.")
    if isinstance(dataset, Mapping):
        kind = f"a mapping ({type(dataset).__name__} with keys {list(dataset)[:5]})"
        if type(dataset).__name__.endswith("DatasetDict"):
            raise TypeError(f"`{name}` must be a datasets.Dataset, got {kind}; pass one split, e.g. `{name}['train']`.")
        raise TypeError(
            f"`{name}` must be a datasets.Dataset (or a list of dicts), got {kind}. Columns (one list per column, as "
            f"a tokenizer returns them) are not examples: convert them with `datasets.Dataset.from_dict(dict({name}))`."
        )
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty; pass at least one tokenized example.")
    first = dataset[0]
    if not isinstance(first, Mapping) or "input_ids" not in first:
        raise ValueError(f"`{name}` must have an `input_ids` column (tokenize it first).")
    if "labels" not in first and not _is_causal_lm(model):
        other = next((key for key in ("label", "label_ids") if key in first), None)
        if other is not None:  # the GLUE / `datasets` convention, which Trainer's collators rename to `labels`
            raise ValueError(
                f"`{name}` has a `{other}` column but no `labels`: the model's forward (and so its loss) takes "
                f"`labels`, which Trainer's data collators make of `{other}` on the fly; rename it first, e.g. "
                f"`{name} = {name}.rename_column({other!r}, 'labels')` (a list of dicts: "
                f"`[{{**ex, 'labels': ex[{other!r}]}} for ex in {name}]`)."
            )
        raise ValueError(
            f"`{name}` has no `labels` column; the influence of an example is defined through its loss, so add the "
            "labels the model was fine-tuned on."
        )


def _input_embedding(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module that embeds the model's `input_ids`, through peft's wrappers: a LoRA on the embedding (its base
    layer), the embedding in `modules_to_save` (the copy the forward uses) or with `trainable_token_indices` (its base
    layer); `None` where the model has none."""
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    for _ in range(8):  # wrappers may nest (a LoRA on trainable tokens)
        if isinstance(embedding, torch.nn.Embedding) or embedding is None:
            return embedding
        copies = getattr(embedding, "modules_to_save", None)
        if isinstance(copies, torch.nn.ModuleDict) and hasattr(embedding, "original_module"):
            active = getattr(embedding, "active_adapters", None) or []
            active = [active] if isinstance(active, str) else list(active)
            used = [copies[name] for name in active if name in copies]
            inner = used[0] if used and not getattr(embedding, "disable_adapters", False) else embedding.original_module
        elif hasattr(embedding, "get_base_layer"):
            inner = embedding.get_base_layer()
        elif isinstance(getattr(embedding, "token_adapter", None), torch.nn.Module):
            inner = embedding.token_adapter
        else:
            return embedding
        if inner is embedding:
            return embedding
        embedding = inner
    return embedding


class PerExampleGradients:
    """Streams per-example gradients of the model's loss over the tracked parameters.

    Each example's loss is the model's own `outputs.loss` on that example alone (for causal LMs: mean over its
    tokens), computed in `eval()` mode so that dropout (also LoRA dropout) is off. With `method="vmap"` one batch is
    one `torch.func.vmap(torch.func.grad_and_value(...))` call over `torch.func.functional_call` (for the duration of
    that call, transformers models are switched to eager attention, since sdpa mask creation branches on the data, and
    the input-embedding hooks of `enable_input_require_grads` are taken out); `method="loop"` runs one backward pass
    per example (slower; for models whose forward cannot be vmapped). An example whose loss is NaN with a finite
    gradient (no counted label) is a `ValueError` naming its index.

    Args:
        model (`torch.nn.Module`): the peft LoRA model.
        tracked (`list[TrackedMatrix]`): from `tracked_lora_parameters`.
        batch_size (`int`, *optional*, defaults to 8): examples per vmapped call.
        method (`str`, *optional*, defaults to `"vmap"`): `"vmap"` or `"loop"`.
        data_collator (`Callable`, *optional*): turns a list of examples into a batch dict; default `PaddingCollator`.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): dtype of the returned gradients.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tracked: list[TrackedMatrix],
        batch_size: int = 8,
        method: str = "vmap",
        data_collator: Callable | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        if method not in ("vmap", "loop"):
            raise ValueError(f"`per_example_gradients` must be 'vmap' or 'loop', got {method!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            # a negative size made `iterate` yield no batch at all (an "empty training set" later), 0 a raw range()
            # error
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"`dtype` must be a floating torch.dtype, got {dtype!r}.")
        if not isinstance(tracked, (list, tuple)) or not tracked or not all(
            isinstance(m, TrackedMatrix) for m in tracked
        ):
            raise TypeError(
                "`tracked` must be a non-empty list of TrackedMatrix, e.g. `tracked_lora_parameters(model)`, got "
                f"{type(tracked).__name__}."
            )
        params = dict(model.named_parameters())
        missing = [m.name for m in tracked if m.name not in params]
        if missing:
            raise ValueError(
                f"`tracked` names parameters that `model` does not have ({missing[0]!r}); build it with "
                "`tracked_lora_parameters(model)` on this model."
            )
        if data_collator is not None and not callable(data_collator):
            raise TypeError(
                f"`data_collator` must be a callable (list of examples -> batch of tensors) or None, got "
                f"{type(data_collator).__name__}."
            )
        self.model = model
        self.tracked = tracked
        self.batch_size = batch_size
        self.method = method
        self.dtype = dtype
        self.causal_lm = _is_causal_lm(model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.encoder_decoder = bool(getattr(getattr(base, "config", None), "is_encoder_decoder", False))
        self.pad_token_id = getattr(getattr(model, "config", None), "pad_token_id", None)
        self.data_collator = data_collator or PaddingCollator(
            sorted(model_input_names(model)), pad_token_id=self.pad_token_id, causal_lm_labels=self.causal_lm
        )
        self._params = dict(model.named_parameters())
        embedding = _input_embedding(model)
        #: Rows of the model's input embedding (`None` when it is not an `nn.Embedding`): the range `input_ids` are
        #: checked against (see `_check_token_ids`); Idefics' decoupled embedding adds `num_additional_embeddings`.
        self.embedding_rows = None
        if isinstance(embedding, torch.nn.Embedding):
            extra = getattr(embedding, "num_additional_embeddings", 0)
            self.embedding_rows = embedding.num_embeddings + (extra if isinstance(extra, int) else 0)

    def _check_token_ids(self, example: Mapping, index: int) -> None:
        """Refuse `input_ids` outside the model's input embedding by example and id: they failed in the forward with
        a bare `IndexError: index out of range in self` naming no example (a CUDA device-side assert on GPU). Examples
        that carry images (`pixel_values`, `image_sizes`) are left to the model: vision-language models replace
        placeholder ids, which may lie outside the embedding, before it."""
        ids = example.get("input_ids")
        if self.embedding_rows is None or ids is None or isinstance(ids, int | float):
            return
        if any(example.get(key) is not None for key in _STACKED_INPUTS):  # images: placeholder ids are the model's
            return
        ids = torch.as_tensor(ids)
        if ids.numel() == 0 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            return
        bad = (ids < 0) | (ids >= self.embedding_rows)
        if bool(bad.any()):
            position = int(bad.flatten().nonzero()[0])
            raise ValueError(
                f"example {index} has input_ids {int(ids.flatten()[position])} (at position {position}) outside the "
                f"model's input embedding of {self.embedding_rows} rows (ids 0..{self.embedding_rows - 1}): was the "
                "dataset tokenized with another tokenizer? Tokenize it with the model's tokenizer, or, if the "
                "tokenizer added tokens, resize the embedding first (`model.resize_token_embeddings(len(tokenizer))`)."
            )

    def _device(self) -> torch.device:
        return self._params[self.tracked[0].name].device

    def _loss(self, params: dict[str, torch.Tensor], example: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {key: value.unsqueeze(0) for key, value in example.items()}
        return torch.func.functional_call(self.model, params, args=(), kwargs=inputs).loss

    def _batch_grads(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The rank-first per-example gradients of `batch` and the per-example losses they come from."""
        params = {m.name: self._params[m.name].detach() for m in self.tracked}
        mask = batch.get("attention_mask")
        use_vmap = self.method == "vmap" and (mask is None or bool(mask.all()))
        if use_vmap and mask is not None:
            # an all-ones mask is the default; dropping it keeps mask creation free of data-dependent branches
            batch = {key: value for key, value in batch.items() if key != "attention_mask"}
        grads = None
        if use_vmap:
            # the outer no_grad keeps trainable parameters that are not tracked (e.g. a head's bias) from recording an
            # autograd graph through the per-example gradients; torch.func.grad itself ignores an outer no_grad
            try:
                with torch.no_grad(), self._prepared_for_vmap():
                    grads, losses = torch.func.vmap(torch.func.grad_and_value(self._loss), in_dims=(None, 0))(
                        params, batch
                    )
            except RuntimeError as err:
                if not is_func_transform_error(err):
                    raise
                # e.g. vision-language models check the image-token count with `.item()` inside their forward;
                # peft's `target_parameters` LoRA (parametrizations) changes a tensor in place under torch.func.grad
                warnings.warn(
                    f"{type(self._base_model()).__name__}'s forward cannot run under torch.func.vmap "
                    f"({str(err).splitlines()[0][:120]}); using one backward pass per example instead (pass "
                    "per_example_gradients='loop' to skip this attempt).",
                    UserWarning,
                    stacklevel=_user_stacklevel(),  # the caller's line (stacklevel=2 named this module's own loop)
                )
                self.method = "loop"
        if grads is None:
            per_example: list[dict[str, torch.Tensor]] = []
            row_losses: list[torch.Tensor] = []
            size = next(iter(batch.values())).shape[0]
            for row in range(size):
                leaf = {name: p.clone().requires_grad_(True) for name, p in params.items()}
                loss = self._loss(leaf, {key: value[row] for key, value in batch.items()})
                values = torch.autograd.grad(loss, list(leaf.values()), allow_unused=True)
                per_example.append({n: torch.zeros_like(leaf[n]) if g is None else g for n, g in zip(leaf, values)})
                row_losses.append(loss.detach())
            grads = {name: torch.stack([ex[name] for ex in per_example]) for name in params}
            losses = torch.stack(row_losses)
        return {m.name: to_rank_first(grads[m.name].to(self.dtype), m) for m in self.tracked}, losses.detach()

    def iterate(
        self, dataset, progress: bool = False, desc: str = "gradients", offset: int = 0, first: Mapping | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield `{name: (B, r, d) tensor}` for consecutive batches of `dataset`, in dataset order.

        `dataset` may be one process's part of a larger set, starting at its example `offset` (errors name the
        example's index in the whole set) whose first example is `first` (the reference of the inputs every example
        must have, see `_check_same_inputs`).

        Examples are never padded for the gradient computation: within a window of `16 * batch_size` consecutive
        examples they are grouped by length, each group is differentiated in chunks of `batch_size`, and the
        gradients are put back in order. Padding would change the loss of bidirectional encoders and make the mask
        data-dependent under `vmap`.
        """
        from tqdm.auto import tqdm

        check_adapter_in_forward(self.model, self.tracked)
        device = self._device()
        was_training = self.model.training
        self.model.eval()
        window = 16 * self.batch_size
        reference = None
        if first is not None and isinstance(self.data_collator, PaddingCollator):
            reference = (0, present_inputs(first, self.data_collator.uniform_inputs))
        try:
            for start in tqdm(range(0, len(dataset), window), desc=desc, disable=not progress, leave=False):
                examples = [
                    self._as_alone(dataset[i], offset + i) for i in range(start, min(start + window, len(dataset)))
                ]
                reference = self._check_same_inputs(examples, offset + start, reference)
                groups: dict[int, list[int]] = {}
                for row, example in enumerate(examples):
                    groups.setdefault(len(example["input_ids"]), []).append(row)
                out = {m.name: torch.empty(len(examples), *m.shape, dtype=self.dtype) for m in self.tracked}
                for rows in groups.values():
                    for chunk_start in range(0, len(rows), self.batch_size):
                        chunk = rows[chunk_start : chunk_start + self.batch_size]
                        batch = self.data_collator([examples[row] for row in chunk])
                        batch = {key: value.to(device) for key, value in batch.items()}
                        grads, losses = self._batch_grads(batch)
                        self._check_losses(losses, grads, [offset + start + row for row in chunk])
                        index = torch.tensor(chunk)
                        for name, value in grads.items():
                            out[name][index] = value.to(out[name].device)
                for sub in range(0, len(examples), self.batch_size):
                    yield {name: value[sub : sub + self.batch_size].to(device) for name, value in out.items()}
        finally:
            self.model.train(was_training)

    def _check_same_inputs(
        self, examples: Sequence[Mapping], start: int, reference: tuple[int, frozenset[str]] | None
    ) -> tuple[int, frozenset[str]] | None:
        """With the default collator, every example of the dataset must have the model inputs of its first example
        (`PaddingCollator.uniform_inputs`: `attention_mask` and a causal LM's `labels` apart, which an example without
        them gets on its own), so that whether a dataset is accepted, and its scores, do not depend on how its
        examples fall into batches. Returns the reference `(index, columns)`."""
        if not isinstance(self.data_collator, PaddingCollator):
            return reference
        names = self.data_collator.uniform_inputs
        if reference is None:
            reference = (start, present_inputs(examples[0], names))
        check_same_inputs(examples, names, indices=range(start, start + len(examples)), reference=reference)
        return reference

    def _as_alone(self, example: Mapping, index: int) -> Mapping:
        """`example` without the padding it was stored with: leading and trailing positions whose `attention_mask` is
        0 are cut from every token-level column, so each example is differentiated exactly as alone, also on models
        with absolute positions (GPT-2, BERT), where left padding would shift every position. Token `labels` (other
        than an encoder-decoder's) and a 1-D `attention_mask`, `token_type_ids` or `position_ids` must have one entry
        per input token."""
        n = len(example["input_ids"])
        if n == 0:
            raise ValueError(
                f"example {index} has an empty input_ids: it has no token to score (e.g. a blank text line); drop it "
                "(dataset.filter(lambda r: len(r['input_ids']) > 0))."
            )
        for key in _PER_INPUT_TOKEN:
            value = example.get(key)
            if value is None or isinstance(value, int | float):
                continue
            if torch.as_tensor(value).ndim == 1 and len(value) != n:
                # a shorter column was padded with zeros to the batch's width (or, alone in its batch, broadcast), an
                # all-ones mask of the wrong length was dropped under vmap but passed to the model by the loop: the
                # scores were wrong and depended on `batch_size` and `per_example_gradients`
                raise ValueError(
                    f"example {index} has {len(value)} `{key}` entries for {n} input_ids: `{key}` needs one entry per "
                    f"input token, as the model's forward does (was `input_ids` truncated without its `{key}`?)."
                )
        labels = example.get("labels")
        vector = _label_vector(labels)
        if not self.encoder_decoder and labels is not None and not vector and not isinstance(labels, int | float):
            if torch.as_tensor(labels).ndim == 1 and len(labels) != n:
                raise ValueError(
                    f"example {index} has {len(labels)} labels for {n} input_ids; token labels need one entry per "
                    "input token (-100 for tokens that do not count), as the model's own loss does (a multi-label "
                    "or multi-output target is a floating-point vector)."
                )
        trimmed = self._trimmed(example, index, n, vector)
        self._check_token_ids(trimmed, index)  # on the ids the model embeds (stored padding cut)
        if self.causal_lm:  # on the row as it is differentiated (stored padding cut)
            self._check_labelled_next_token(trimmed, index)
        return trimmed

    def _trimmed(self, example: Mapping, index: int, n: int, vector: bool) -> Mapping:
        """`example` with the leading and trailing positions of `attention_mask` 0 cut from its token columns."""
        mask = example.get("attention_mask")
        if mask is None:
            return example
        keep = torch.as_tensor(mask)
        if keep.ndim != 1 or len(keep) != n or bool(keep.all()):
            return example
        real = keep.nonzero().flatten()
        if real.numel() == 0:
            raise ValueError(f"example {index} has an attention_mask of zeros only: it has no token to score.")
        lo, hi = int(real[0]), int(real[-1]) + 1
        out = dict(example)
        for key, value in example.items():
            if key == "labels" and (vector or self.encoder_decoder):
                continue  # a target vector, or an encoder-decoder's targets: not aligned with the input tokens
            if key in _TOKEN_LEVEL and value is not None and not isinstance(value, int | float):
                if torch.as_tensor(value).ndim == 1 and len(value) == n:
                    out[key] = value[lo:hi]
        return out

    @staticmethod
    def _check_losses(losses: torch.Tensor, grads: Mapping[str, torch.Tensor], indices: Sequence[int]) -> None:
        """Every head's loss on an example without a counted label (a classification label -100, token labels all
        -100, an encoder-decoder target of -100 only) is NaN with a zero gradient, which would score it 0 as a
        training example and shrink the mean of an evaluation set. A NaN loss with a NaN gradient (non-finite weights,
        overflow) is left to the influence engine's own check."""
        finite_grads = torch.stack([torch.isfinite(g.flatten(1)).all(1) for g in grads.values()]).all(0)
        bad = (~torch.isfinite(losses.flatten()) & finite_grads.to(losses.device)).nonzero().flatten()
        if bad.numel():
            raise ValueError(
                f"example {indices[int(bad[0])]} has no loss: the model's loss on it is NaN (no counted label, e.g. a "
                "classification label -100, or token labels that are all -100 where the attention mask is 1), so it "
                "has no influence to compute; drop it or give it a label."
            )

    @staticmethod
    def _check_labelled_next_token(example: Mapping, index: int) -> None:
        """A causal LM's loss on an example is the mean over its labelled next tokens (`labels[1:]` not -100, where
        the attention mask is 1): an example without one (one token, labels all -100) has a NaN loss and a zero
        gradient, which would score it 0 as a training example and shrink the mean of an evaluation set."""
        labels = example.get("labels")
        labels = torch.as_tensor(example["input_ids"] if labels is None else labels)
        if labels.ndim != 1:
            return
        counted = labels[1:] != -100
        mask = example.get("attention_mask")
        if mask is not None and torch.as_tensor(mask).ndim == 1 and len(mask) == len(labels):
            counted &= torch.as_tensor(mask)[1:].bool()
        if not bool(counted.any()):
            raise ValueError(
                f"example {index} has no labelled next token (one token, or labels -100 after the first token): the "
                "model's loss on it is undefined (NaN), so it has no influence to compute; drop it."
            )

    def _base_model(self) -> torch.nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _prepared_for_vmap(self):
        """`hf_ext.utils.vmap.prepared_for_vmap` for this model: eager attention and no input-require-grads hooks for
        one vmapped call. Only the vmapped calls run in eager mode: the per-example backward passes (`"loop"`, padded
        batches) keep the model's own attention (transformers' eager attention yields NaN on fully masked rows in
        float64)."""
        return prepared_for_vmap(self.model)
