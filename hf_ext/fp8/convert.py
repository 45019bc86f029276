"""Put every transformer-block linear of a model in FP8: one entry point, three backends.

- "torchao" (default): torchao's `Float8Linear` (tensorwise or rowwise dynamic scaling) via
  `torchao.float8.convert_to_float8_training`; runs on CPU too (torchao's emulated GEMM by default when no CUDA
  device is available; torch's far slower CPU `_scaled_mm` with `emulate=False`).
- "te": NVIDIA Transformer Engine `te.Linear` under `te.autocast` with `DelayedScaling` (HYBRID, amax history 1024,
  "max"), FOG's recipe. Needs CUDA and `transformer_engine`; imported only when asked for.
- "emulated": [`Fp8Linear`] (pure torch, current or delayed scaling), optionally with FP8 attention BMMs.

With `fp8_attention=True`, "te" and "emulated" also run the attention BMMs in FP8.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import weakref
from collections.abc import Callable
from numbers import Integral

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from .emulation import default_amax_group

BACKENDS = ("torchao", "te", "emulated")
TORCHAO_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")


def _output_embedding_names(model: nn.Module) -> set[str]:
    """Names of the output-embedding (LM head) modules of `model`: the module `get_output_embeddings()` returns and
    any linear, or peft layer wrapping one, named `lm_head` / `embed_out` / `output`. Every linear inside one of them
    is the head too (peft's `modules_to_save` copies, a LoRA layer's `base_layer`); a container that only shares the
    name (BERT's `layer.0.output`, which holds a block linear) is not listed."""
    names = set()
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    peft_layers = _peft_layer_types()
    for name, module in model.named_modules():
        if head is not None and module is head:
            names.add(name)
        elif name.split(".")[-1] in ("lm_head", "embed_out", "output") and isinstance(
            module, (nn.Linear,) + peft_layers
        ):
            names.add(name)
    return names


def _peft_layer_types() -> tuple[type, ...]:
    """peft's tuner layer and auxiliary wrapper classes; none in a process that never imported peft (no peft layer can
    exist there)."""
    if "peft" not in sys.modules:
        return ()
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return BaseTunerLayer, AuxiliaryTrainingWrapper


def _peft_adapter_names(model: nn.Module) -> set[str]:
    """Names of the peft sub-modules that are adapters, not the model's own layers: every attribute a peft tuner layer
    lists in `adapter_layer_names` (LoRA's `lora_A` / `lora_B` / `lora_embedding_*`, DoRA's magnitude, IA3, ...) and
    every wrapper of `modules_to_save` / `trainable_token_indices` (its original module and its trainable copies). A
    LoRA layer's `base_layer` is the wrapped layer itself and is not listed."""
    if not _peft_layer_types():
        return set()
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    names = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, AuxiliaryTrainingWrapper):
            names.add(name)
        elif isinstance(module, BaseTunerLayer):
            names.update(prefix + attr for attr in getattr(module, "adapter_layer_names", ()))
    return names


def _under(fqn: str, names: set[str]) -> bool:
    """Whether `fqn` is one of `names` or a sub-module of one, or one of them seen under a wrapper prefix ("module.",
    "base_model.model."); sub-modules seen under a prefix are recognised by identity in `fp8_target_filter`."""
    return any(fqn == n or fqn.startswith(f"{n}.") or fqn.endswith(f".{n}") for n in names)


def _check_switches(caller: str, **switches) -> None:
    for name, value in switches.items():
        if not isinstance(value, bool):  # a string "False" would read as True
            raise ValueError(f"{caller}: {name} must be True or False, got {value!r}.")


def _python_bools(*values):
    """`values` with numpy's `bool_` as the Python `bool` it holds (the rest as given, for `_check_switches`):
    `torchao_config` and `te_recipe` passed numpy booleans through before they checked their switches."""
    import numpy

    return tuple(bool(v) if isinstance(v, numpy.bool_) else v for v in values)


def _compile_skip_modules(skip_modules) -> list[re.Pattern]:
    """`skip_modules` as compiled regexes; a bare string (which would be read one character per regex) or an invalid
    regex is a `ValueError` naming the argument."""
    if skip_modules is None:
        return []
    if isinstance(skip_modules, str):
        raise ValueError(f"skip_modules must be a list of regexes, not a string; use skip_modules=[{skip_modules!r}].")
    listed = isinstance(skip_modules, (list, tuple, set, frozenset))
    if not listed or not all(isinstance(p, str) for p in skip_modules):
        raise ValueError(f"skip_modules must be a list of regex strings, got {skip_modules!r}.")
    patterns = []
    for pattern in skip_modules:
        try:
            patterns.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"skip_modules: {pattern!r} is not a valid regular expression ({err}).") from None
    return patterns


def fp8_target_filter(
    model: nn.Module, include_lm_head: bool = False, skip_modules: list[str] | None = None
) -> Callable[[nn.Module, str], bool]:
    """A `(module, fqn) -> bool` filter selecting every `nn.Linear` except the LM head and any linear inside it (unless
    `include_lm_head`), peft's adapter sub-modules (`lora_A`, `lora_B`, the `modules_to_save` copies, ...; a LoRA
    layer's `base_layer` is selected) and names matching a regex of `skip_modules`. Usable as torchao's
    `module_filter_fn` and accelerate's `AORecipeKwargs(module_filter_func=...)` (accelerate's default would also skip
    the first block linear)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fp8_target_filter: model must be a torch.nn.Module, got {type(model).__name__}.")
    _check_switches("fp8_target_filter", include_lm_head=include_lm_head)
    patterns = _compile_skip_modules(skip_modules)
    kept_out = _peft_adapter_names(model) | (set() if include_lm_head else _output_embedding_names(model))
    # by identity too: a caller (DDP, accelerate) may name the modules from another root than `model`
    kept_out_modules = weakref.WeakSet(m for n in kept_out for m in model.get_submodule(n).modules())

    tuner_layers = _peft_layer_types()[:1]  # peft's BaseTunerLayer, or () without peft

    def _filter(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, nn.Linear):
            return False
        if tuner_layers and isinstance(module, tuner_layers):
            # a peft adapter layer that is itself an nn.Linear (VBLoRA, RandLoRA, ...): its `base_layer` is the
            # model's linear and is selected; replacing the adapter layer would drop the adapter
            return False
        if module in kept_out_modules or _under(fqn, kept_out):
            return False
        return not any(p.search(fqn) for p in patterns)

    return _filter


def fp8_target_modules(model: nn.Module, include_lm_head: bool = False, skip_modules: list[str] | None = None):
    """Names of the linears [`convert`] would put in FP8 (for counting and for error messages); the branch-wise weights
    of layer-paired block pairs, which it first splits into per-branch linears, are listed by [`fp8_branch_targets`]."""
    keep = fp8_target_filter(model, include_lm_head, skip_modules)
    return [name for name, m in model.named_modules() if keep(m, name)]


def fp8_branch_targets(
    model: nn.Module, include_lm_head: bool = False, skip_modules: list[str] | None = None
) -> list[tuple[str, str, list[tuple[str, int, int]]]]:
    """The stacked branch-wise weights [`convert`] splits into one `nn.Linear` per branch and puts in FP8: the output
    projection (`BranchwiseLinear`, group `branches`) and gate / up weights (`BranchwiseGatedMLP`, groups
    `gate_branches` / `up_branches`) of a layer-paired model's merged `lp_mode="block"` pairs, which are batched
    einsums, not `nn.Linear`. One `(module name, group, [(linear name, in_features, out_features), ...])` per group
    with a branch the filter of [`fp8_target_filter`] selects under its future name (`...o_proj.branches.0`,
    `...mlp.gate_branches.1`, ...; `skip_modules` regexes apply to those names)."""
    keep = fp8_target_filter(model, include_lm_head, skip_modules)
    probe = nn.Linear(1, 1, device="meta")  # stands for a per-branch linear that does not exist yet
    found = []
    for name, module in model.named_modules():
        shapes = getattr(module, "branch_linear_shapes", None)
        if not callable(shapes) or not callable(getattr(module, "split_branches", None)):
            continue
        for group, (branches, in_features, out_features) in shapes().items():
            linears = [(f"{name}.{group}.{b}", in_features, out_features) for b in range(branches)]
            selected = [linear for linear in linears if keep(probe, linear[0])]
            if selected:
                found.append((name, group, selected))
    return found


def _check_branch_targets(model: nn.Module, targets) -> None:
    """Refuse, before anything changes, branch-wise weights that cannot be split into per-branch linears: sharded by
    tensor parallelism (one branch per rank, the pair's partial sums) or wrapped by peft adapters."""
    for name, group, _ in targets:
        module = model.get_submodule(name)
        weight_name = module._BRANCH_GROUPS[group][0] if hasattr(module, "_BRANCH_GROUPS") else group
        if isinstance(getattr(module, weight_name, None), DTensor):
            from transformers.distributed.parallel_utils import replace_layer_number_by_wildcard

            style = (getattr(model, "tp_plan", None) or {}).get(replace_layer_number_by_wildcard(name))
            raise ValueError(
                f"convert: {name}.{weight_name} is split by the tensor-parallel style {style!r} (one branch per "
                f"rank, whose outputs are partial sums until the pair's all-reduce); FP8 runs on shards of the plain "
                f"column- / row-wise splits only ({', '.join(_FP8_TP_STYLES)}). Keep it in high precision with "
                f"skip_modules (e.g. skip_modules=[{group!r}])."
            )
        if name.rpartition(".")[2] == "base_layer":
            groups = [g for n, g, _ in targets if n == name]
            raise ValueError(
                f"convert: {name} ({type(module).__name__}) is wrapped by a peft adapter layer, so its branch-wise "
                f"weights ({', '.join(groups)}) cannot be split into per-branch FP8 linears. Convert first, then "
                f"`get_peft_model` (the documented order), or keep them in high precision with skip_modules={groups!r}."
            )


def _split_branch_targets(model: nn.Module, targets) -> None:
    """Split the planned branch-wise weights into per-branch `nn.Linear` modules (same function, same state dict)."""
    for name, group, _ in targets:
        model.get_submodule(name).split_branches([group])


def fp8_converted_modules(model: nn.Module) -> list[str]:
    """Names of the modules that currently run in FP8 (torchao `Float8Linear`, `te.Linear` or [`Fp8Linear`])."""
    from .emulation import Fp8Linear

    out = []
    for name, module in model.named_modules():
        cls = type(module)
        if isinstance(module, Fp8Linear) or cls.__name__ == "Float8Linear":
            out.append(name)
        elif cls.__module__.startswith("transformer_engine") and cls.__name__ == "Linear":
            out.append(name)
    return out


def _check_dims(model: nn.Module, names: list[str], pad_inner_dim: bool, backend: str, branch_targets=()) -> None:
    modules = dict(model.named_modules())
    sizes = [(n, modules[n].in_features, modules[n].out_features) for n in names]
    sizes += [linear for _, _, linears in branch_targets for linear in linears]  # the split's future linears
    bad = [f"{n} ({fan_in}->{fan_out})" for n, fan_in, fan_out in sizes if fan_in % 16 or fan_out % 16]
    if not bad:
        return
    if backend == "te" or not pad_inner_dim:
        hint = "Transformer Engine cannot pad" if backend == "te" else "or pass pad_inner_dim=True to pad the GEMMs"
        raise ValueError(
            f"FP8 GEMMs need in/out features divisible by 16; these linears are not: {', '.join(bad[:6])}"
            f"{' ...' if len(bad) > 6 else ''}. Use multiples of 16 (hidden, intermediate, head sizes), "
            f"list them in skip_modules, {hint}."
        )


def convert(
    model: nn.Module,
    backend: str = "torchao",
    *,
    recipe: str = "tensorwise",
    scaling: str = "delayed",
    fp8_format: str = "hybrid",
    amax_history_len: int = 1024,
    amax_compute_algo: str = "max",
    margin: int = 0,
    include_lm_head: bool = False,
    skip_modules: list[str] | None = None,
    fp8_attention: bool = False,
    pad_inner_dim: bool = False,
    emulate: bool | None = None,
    amax_reduction_group=None,
    fsdp_float8_all_gather: bool = False,
) -> nn.Module:
    """Run every block linear (QKV, O, MLP up/gate/down) of `model` in FP8, for the forward and both backward GEMMs.

    The LM head stays in high precision unless `include_lm_head=True`; embeddings are lookups, not GEMMs, and are
    never converted. Conversion is in place; parameter names (and so `save_pretrained` files) are unchanged, except in
    the merged `lp_mode="block"` pairs of a layer-paired model: their output projection (`BranchwiseLinear`) and MLP
    gate / up weights (`BranchwiseGatedMLP`) are batched einsums over the two branches, which `convert` first splits
    into one `nn.Linear` per branch (`...o_proj.branches.<b>`, `...mlp.gate_branches.<b>`, `...mlp.up_branches.<b>`,
    the same function) and then converts like every other linear; their state dict keeps the stacked names and
    shapes (`...o_proj.weight`, `...mlp.gate_weight`), so `save_pretrained` still writes the plain model's files. The
    documented order with peft is `convert` first, then `get_peft_model`; a model already wrapped by peft converts
    the same block linears (a LoRA layer's `base_layer`), while peft's adapters (`lora_A` / `lora_B`, ...) and the
    modules of `modules_to_save` (both copies, e.g. of the LM head) stay in high precision.

    Args:
        model (`nn.Module`): Typically a `PreTrainedModel` in FP32 or BF16.
        backend (`str`, defaults to `"torchao"`): "torchao", "te" or "emulated".
        recipe (`str`, defaults to `"tensorwise"`): torchao recipe: "tensorwise", "rowwise", "rowwise_with_gw_hp".
        scaling (`str`, defaults to `"delayed"`): emulated backend: "delayed" (amax history) or "current".
        fp8_format (`str`, defaults to `"hybrid"`): te / emulated: "hybrid" (E4M3 fwd, E5M2 grads) or "e4m3".
        amax_history_len (`int`, defaults to 1024): te / emulated delayed scaling history length.
        amax_compute_algo (`str`, defaults to `"max"`): te / emulated: "max" or "most_recent".
        margin (`int`, defaults to 0): te / emulated scaling margin (scale / 2**margin).
        include_lm_head (`bool`, defaults to `False`): Also put the LM head in FP8 (FOG keeps it in BF16). With
            `backend="te"` the head must be untied from the input embeddings (a `ValueError` otherwise).
        skip_modules (`list[str]`, *optional*): Regexes of module names to keep in high precision (for the branch-wise
            weights of block pairs: the per-branch names above, e.g. `["gate_branches", "up_branches"]`).
        fp8_attention (`bool`, defaults to `False`): Also run the attention BMMs QK^T and PV in FP8. emulated: the
            model's attention implementation becomes "fp8_emulated" (pure torch). te: it becomes "te_fp8_dpa" (one
            `te.DotProductAttention` per layer, see [`te_attention_forward`]) and the recipe gets `fp8_dpa=True`;
            needs a CUDA GPU of compute capability 9.0+ and Transformer Engine, checked before anything changes.
            Attention calls Transformer Engine cannot run in FP8 (KV-cache decode steps, token counts not a multiple
            of 8, left-padded or custom masks) run in transformers' SDPA instead. Not available with torchao.
        pad_inner_dim (`bool`, defaults to `False`): Allow linears whose sizes are not multiples of 16 (torchao pads
            the GEMMs; padding with zeros is exact, so the emulated backend needs no padding).
        emulate (`bool`, *optional*): torchao: run its emulated GEMM (the same FP8 quantisation, the product of the
            dequantised operands in high precision) instead of `torch._scaled_mm`. Default (`None`): `True` when no
            CUDA device is available, `False` otherwise; torch's CPU `_scaled_mm` is a reference kernel (about 700x
            slower than the emulation in torch 2.13: ~40 s against 0.06 s for a 2048x128x384 step), and a model
            converted on CPU before it is moved to a GPU must not run emulated there.
        fsdp_float8_all_gather (`bool`, defaults to `False`): torchao tensorwise: when the model is then sharded
            with FSDP2 (`fully_shard`, accelerate's FSDP plugin with `fsdp_version=2`), all-gather the sharded
            weights in FP8 (half the communication of BF16). The weights become torchao's all-gather tensors; the
            model's `state_dict()` (and so `save_pretrained`) holds the plain high-precision weights.
        amax_reduction_group (*optional*): te / emulated delayed scaling: `torch.distributed` group over which the
            amaxes are maxed (all data-parallel ranks then share histories and scales). Default: the whole world when
            `torch.distributed` is initialised with more than one rank at the time of the forward, else none. The te backend enables FP8 per forward only when the
            token count is a multiple of 8 (Transformer Engine's GEMM rule), e.g. not for most `generate` steps.

    A model sharded by transformers' tensor parallelism (`from_pretrained(..., distributed_config=...)`) is
    converted on its shards with `backend="torchao"`, `recipe="tensorwise"`: the FP8 linears keep the sharded weights
    and get the same tensor-parallel forward hooks. A model sharded otherwise (FSDP2) is refused: convert first.

    Returns:
        `nn.Module`: `model`, converted in place.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}.")
    if backend not in BACKENDS:
        raise ValueError(f"convert: backend={backend!r} is not supported; choose one of {', '.join(BACKENDS)}.")
    _check_switches(
        "convert", include_lm_head=include_lm_head, fp8_attention=fp8_attention, pad_inner_dim=pad_inner_dim,
        fsdp_float8_all_gather=fsdp_float8_all_gather,
    )  # fmt: skip
    if emulate is not None:
        _check_switches("convert", emulate=emulate)
    if recipe not in TORCHAO_RECIPES:  # checked for every backend: a typo must not pass silently
        raise ValueError(f"convert: recipe={recipe!r} is not a torchao recipe; choose one of {TORCHAO_RECIPES}.")
    if backend != "torchao":  # torchao-only switches asked of another backend would silently do nothing
        for name, value in (("emulate", emulate), ("fsdp_float8_all_gather", fsdp_float8_all_gather)):
            if value:
                raise ValueError(f"convert: {name}=True is a torchao option; drop it or use backend='torchao'.")
    given = dict(
        recipe=recipe, scaling=scaling, fp8_format=fp8_format, amax_history_len=amax_history_len,
        amax_compute_algo=amax_compute_algo, margin=margin,
    )  # fmt: skip
    for name, takers in _BACKEND_OPTIONS.items():  # an option of another backend would silently do nothing
        default = _CONVERT_DEFAULTS[name]
        value = given[name]
        if value == default and type(value) is type(default):
            continue
        if backend == "emulated" and scaling == "current" and name in ("amax_history_len", "amax_compute_algo"):
            raise ValueError(
                f"convert: {name}={value!r} is a delayed-scaling option, but scaling='current' keeps no amax history; "
                "drop it or use scaling='delayed'."
            )
        if backend not in takers:
            raise ValueError(
                f"convert: {name}={value!r} is an option of backend {' / '.join(repr(t) for t in takers)}, not of "
                f"backend={backend!r}, which would ignore it; drop it or use "
                f"backend={takers[0]!r}."
            )
    if amax_reduction_group is not None and (backend == "torchao" or scaling != "delayed"):
        raise ValueError(
            "convert: amax_reduction_group is a delayed-scaling option (backend='te', or backend='emulated' with "
            "scaling='delayed'); torchao's and current scaling keep no amax history to reduce."
        )
    if backend == "te" and include_lm_head and _head_tied_to_embeddings(model):
        # te.Linear gets a weight of its own (a copy): the head would silently stop being tied to the embeddings
        raise ValueError(
            "convert: include_lm_head=True with backend='te' needs an untied LM head (tie_word_embeddings=False), as "
            "the reference's --fp8-lmhead: Transformer Engine's linear keeps its own copy of the weight, so the head "
            "would stop sharing the input embeddings' weight. Untie the head, use backend='torchao' / 'emulated' "
            "(which keep the tie), or leave the head in high precision (include_lm_head=False)."
        )
    if fp8_attention and backend == "torchao":
        raise ValueError(
            "convert: fp8_attention=True is not available with backend='torchao' (torchao has no FP8 attention); use "
            "backend='te' (Transformer Engine, CUDA compute capability 9.0+) or backend='emulated'."
        )
    from .emulation import AMAX_ALGOS, SCALINGS, _check_history_and_margin, fp8_dtypes

    if scaling not in SCALINGS:
        raise ValueError(f"convert: scaling={scaling!r} is not supported; choose one of {SCALINGS}.")
    if amax_compute_algo not in AMAX_ALGOS:
        raise ValueError(f"convert: amax_compute_algo={amax_compute_algo!r}; choose one of {AMAX_ALGOS}.")
    try:
        _check_history_and_margin(amax_history_len, margin)
    except ValueError as err:
        raise ValueError(f"convert: {err}") from None
    fp8_dtypes(fp8_format)
    _compile_skip_modules(skip_modules)
    if fp8_attention and getattr(model, "config", None) is None:
        raise ValueError("convert: fp8_attention=True needs a transformers model (with .config).")
    if fp8_attention and backend == "te":
        from .te_attention import check_te_attention_available

        check_te_attention_available()
    if fp8_converted_modules(model):
        raise ValueError("convert: model already has FP8 modules; convert a fresh (high-precision) model.")
    names = fp8_target_modules(model, include_lm_head, skip_modules)
    branch_targets = fp8_branch_targets(model, include_lm_head, skip_modules)
    if not names and not branch_targets:
        raise ValueError("convert: no nn.Linear to convert (after include_lm_head / skip_modules).")
    tp_styles = _tensor_parallel_styles(model, names, backend, recipe)
    _check_branch_targets(model, branch_targets)
    _check_dims(model, names, pad_inner_dim, backend, branch_targets)
    if backend == "te" and branch_targets:  # checked again by _convert_te; here before the split changes anything
        _import_te()
        if not torch.cuda.is_available():
            raise ValueError("convert(backend='te') needs a CUDA device; use backend='torchao' or 'emulated' on CPU.")
    if branch_targets:
        # merged block pairs' branch-wise einsums become one nn.Linear per branch, converted like every other linear
        _split_branch_targets(model, branch_targets)
        names = fp8_target_modules(model, include_lm_head, skip_modules)

    if backend == "torchao":
        if emulate is None:  # no FP8 GEMM kernel worth the name without CUDA (see the docstring)
            emulate = not torch.cuda.is_available()
        _convert_torchao(model, names, recipe, pad_inner_dim, emulate, fsdp_float8_all_gather)
        _reinstall_tensor_parallel_hooks(model, tp_styles)
    elif backend == "te":
        te_fp8_recipe = _convert_te(
            model, names, fp8_format, amax_history_len, amax_compute_algo, margin, amax_reduction_group, fp8_attention
        )
        if fp8_attention:
            from .te_attention import register_te_attention

            _use_attention(model, register_te_attention())
    else:
        _convert_emulated(
            model, names, scaling, fp8_format, amax_history_len, amax_compute_algo, margin, amax_reduction_group
        )
        if fp8_attention:
            from .emulation import register_fp8_attention

            _use_attention(model, register_fp8_attention())
    model.hf_ext_fp8 = {
        "backend": backend,
        "recipe": recipe if backend == "torchao" else scaling,
        "modules": names,
        "fp8_attention": fp8_attention,
    }
    if backend == "te":
        model.hf_ext_fp8["te_recipe"] = te_fp8_recipe
    return model


def _head_tied_to_embeddings(model: nn.Module) -> bool:
    """Whether `model`'s output embeddings (LM head) share their weight with its input embeddings."""
    get_out, get_in = getattr(model, "get_output_embeddings", None), getattr(model, "get_input_embeddings", None)
    if not callable(get_out) or not callable(get_in):
        return False
    head, embed = get_out(), get_in()
    weight = getattr(head, "weight", None)
    return weight is not None and weight is getattr(embed, "weight", None)


# The backends each scaling option acts on (convert refuses a non-default value of it for any other backend).
_BACKEND_OPTIONS = {
    "recipe": ("torchao",),
    "scaling": ("emulated",),  # Transformer Engine runs delayed scaling (DelayedScaling) only
    "fp8_format": ("te", "emulated"),
    "amax_history_len": ("te", "emulated"),
    "amax_compute_algo": ("te", "emulated"),
    "margin": ("te", "emulated"),
}
_CONVERT_DEFAULTS = {
    name: param.default for name, param in inspect.signature(convert).parameters.items() if name in _BACKEND_OPTIONS
}


# transformers' tensor-parallel styles under which a torchao Float8Linear computes on its shard what the unsharded one
# does (a plain linear on a column or row slice). Others (e.g. a layer-parallel block pair's branch-wise projections,
# whose style keeps a partial sum for a later all-reduce and runs on local tensors) are refused.
_FP8_TP_STYLES = ("colwise", "rowwise", "colwise_gather_output")


def _tensor_parallel_styles(model: nn.Module, names: list[str], backend: str, recipe: str) -> dict[str, tuple]:
    """For a model sharded by transformers' tensor parallelism (`from_pretrained(..., distributed_config=...)`): the
    parallel style and mesh of every target linear whose weight is sharded, so that the FP8 linears replacing them
    get the same forward hooks. Raises before anything changes when the weights are sharded another way (FSDP2) or
    the backend / recipe cannot run on shards."""
    sharded = [n for n in names if isinstance(model.get_submodule(n).weight, DTensor)]
    if not sharded:
        return {}
    from transformers.distributed.parallel_utils import replace_layer_number_by_wildcard

    plan = getattr(model, "tp_plan", None) or {}
    styles = {}
    for name in sharded:
        module = model.get_submodule(name)
        style = plan.get(replace_layer_number_by_wildcard(name))
        if style is None or not getattr(module, "_is_hooked", False):
            raise ValueError(
                f"convert: {name} (and {len(sharded) - 1} more) already holds sharded weights that transformers' "
                "tensor parallelism did not shard (a model wrapped by FSDP2?). Convert the unsharded model first, "
                "then shard it (FSDP2: convert, then `fully_shard` / accelerate's FSDP plugin)."
            )
        if style not in _FP8_TP_STYLES:
            raise ValueError(
                f"convert: {name} is split by the tensor-parallel style {style!r}; FP8 runs on shards of the plain "
                f"column- / row-wise splits only ({', '.join(_FP8_TP_STYLES)}). Keep such modules in high precision "
                f"with skip_modules (e.g. skip_modules=[{re.escape(name.rsplit('.', 1)[-1])!r}])."
            )
        styles[name] = (style, module.weight.device_mesh)
    if backend != "torchao" or recipe != "tensorwise":
        raise ValueError(
            f"convert: {sharded[0]} is sharded by tensor parallelism; FP8 on tensor-parallel shards needs "
            f"backend='torchao' with recipe='tensorwise' (one scale per tensor, from the amax over all shards), not "
            f"backend={backend!r}, recipe={recipe!r}."
        )
    return styles


def _reinstall_tensor_parallel_hooks(model: nn.Module, styles: dict[str, tuple]) -> None:
    """Give each FP8 linear that replaced a tensor-parallel linear the forward hooks of its style (transformers
    installs them on the module object, so the replacement starts without them); its weight is the same DTensor."""
    if not styles:
        return
    from transformers.distributed.tensor_parallel import ALL_PARALLEL_STYLES

    for name, (style, mesh) in styles.items():
        module = model.get_submodule(name)
        ALL_PARALLEL_STYLES[style].install_forward(module, mesh)
        module._is_hooked = True


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def torchao_config(
    recipe: str = "tensorwise",
    pad_inner_dim: bool = False,
    emulate: bool = False,
    fsdp_float8_all_gather: bool = False,
):
    """torchao `Float8LinearConfig` for a recipe name (or torchao's `Float8LinearRecipeName`), with `pad_inner_dim`,
    `emulate` and (tensorwise only, under FSDP2) `enable_fsdp_float8_all_gather` set. An unknown recipe or an on/off
    switch that is not a `bool` (numpy's included; a string "False" would read as True) is a `ValueError` naming the
    argument."""
    import dataclasses

    from torchao.float8 import Float8LinearConfig, Float8LinearRecipeName

    if isinstance(recipe, Float8LinearRecipeName):  # torchao's own name for a recipe, which from_recipe_name takes
        recipe = recipe.value
    pad_inner_dim, emulate, fsdp_float8_all_gather = _python_bools(pad_inner_dim, emulate, fsdp_float8_all_gather)
    if recipe not in TORCHAO_RECIPES:  # torchao itself only asserts
        raise ValueError(
            f"torchao_config: recipe={recipe!r} is not a torchao recipe; choose one of {TORCHAO_RECIPES}."
        )
    _check_switches(
        "torchao_config", pad_inner_dim=pad_inner_dim, emulate=emulate, fsdp_float8_all_gather=fsdp_float8_all_gather
    )
    if fsdp_float8_all_gather and recipe != "tensorwise":
        raise ValueError(
            f"FP8 all-gather under FSDP2 needs torchao's tensorwise recipe, not recipe={recipe!r}; use "
            "recipe='tensorwise' or turn fsdp_float8_all_gather off."
        )
    cfg = Float8LinearConfig.from_recipe_name(recipe)
    return dataclasses.replace(
        cfg, pad_inner_dim=pad_inner_dim, emulate=emulate, enable_fsdp_float8_all_gather=fsdp_float8_all_gather
    )


def _convert_torchao(model, names, recipe, pad_inner_dim, emulate, fsdp_float8_all_gather=False) -> None:
    from torchao.float8 import convert_to_float8_training

    wanted = set(names)
    convert_to_float8_training(
        model,
        module_filter_fn=lambda mod, fqn: fqn in wanted,
        config=torchao_config(recipe, pad_inner_dim, emulate, fsdp_float8_all_gather),
    )
    if fsdp_float8_all_gather:
        # the weights become torchao's FP8 all-gather wrappers, which have no storage of their own: without FSDP2
        # (which saves its own DTensors) save_pretrained / safetensors would fail on them, so the state dict holds
        # the high-precision tensors they wrap (loading copies into the wrappers, which stay)
        model.register_state_dict_post_hook(_plain_fp8_weights_hook)


def _fp8_cast_weight_type() -> type | None:
    """torchao's FP8 all-gather weight wrapper class (`enable_fsdp_float8_all_gather`), `None` without torchao."""
    try:
        from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor
    except ImportError:  # pragma: no cover - torchao is a runtime dependency
        return None
    return WeightWithDynamicFloat8CastTensor


def plain_fp8_weights(state_dict: dict) -> dict:
    """`state_dict` with every torchao FP8 all-gather weight wrapper (`WeightWithDynamicFloat8CastTensor`, what
    `enable_fsdp_float8_all_gather` makes of an unsharded `Float8Linear` weight) replaced by the high-precision tensor
    it holds, so that safetensors / `save_pretrained` can write it. Other values are kept; the dict is changed in
    place and returned."""
    cast = _fp8_cast_weight_type()
    if cast is not None:
        for key, value in state_dict.items():
            if isinstance(value, cast):
                state_dict[key] = value._tensor.detach()
    return state_dict


def _plain_fp8_weights_hook(module, state_dict, prefix, local_metadata) -> None:
    plain_fp8_weights(state_dict)


def fsdp2_in_use(fsdp_plugin=None, training_args=None) -> bool:
    """Whether the run shards the model with FSDP2 (`fully_shard`): the given accelerate `FullyShardedDataParallelPlugin`
    has `fsdp_version=2`; else `TrainingArguments(fsdp=..., fsdp_config={"version": 2})` (its `fsdp_plugin_args`);
    else `accelerate launch` with an FSDP config of `fsdp_version: 2` (`ACCELERATE_USE_FSDP=true`, `FSDP_VERSION=2`
    in the environment)."""
    import os

    if fsdp_plugin is not None:
        return int(getattr(fsdp_plugin, "fsdp_version", None) or 1) == 2
    plugin_args = getattr(training_args, "fsdp_plugin_args", None)
    if plugin_args:
        return int(plugin_args.get("fsdp_version", 1)) == 2
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    return os.environ.get("FSDP_VERSION", "1").strip() == "2"


def _convert_emulated(model, names, scaling, fp8_format, history, algo, margin, amax_reduction_group=None) -> None:
    from .emulation import Fp8Linear

    for name in names:
        linear = model.get_submodule(name)
        _replace(
            model,
            name,
            Fp8Linear.from_linear(
                linear,
                scaling=scaling,
                fp8_format=fp8_format,
                amax_history_len=history,
                amax_compute_algo=algo,
                margin=margin,
                amax_reduction_group=amax_reduction_group,
            ),
        )


def _use_attention(model: nn.Module, name: str) -> None:
    """Switch a transformers model to the registered attention implementation `name`."""
    config = model.config
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(name)
            return
        except (ValueError, ImportError, KeyError):
            pass
    config._attn_implementation = name


def te_recipe(
    fp8_format: str = "hybrid",
    amax_history_len: int = 1024,
    amax_compute_algo: str = "max",
    margin=0,
    fp8_dpa: bool = False,
):
    """Transformer Engine `DelayedScaling` recipe (FOG's: HYBRID, history 1024, "max", margin 0); `fp8_dpa=True` also
    runs `te.DotProductAttention`'s QKᵀ and PV in FP8 (FOG's `--fp8-dot-product-attention`). The arguments are
    checked as [`convert`] checks them, before Transformer Engine is imported (`ValueError` naming the argument):
    `fp8_format` "hybrid" or "e4m3" (any other string, e.g. "HYBRID", gave an all-E4M3 recipe), `amax_compute_algo`
    "max", "most_recent" or a callable (Transformer Engine's custom algorithm), `amax_history_len` a positive int,
    `margin` a non-negative int, `fp8_dpa` a bool."""
    from .emulation import AMAX_ALGOS, _check_history_and_margin, fp8_dtypes

    try:
        fp8_dtypes(fp8_format)
        _check_history_and_margin(amax_history_len, margin)
    except ValueError as err:
        raise ValueError(f"te_recipe: {err}") from None
    if not callable(amax_compute_algo) and amax_compute_algo not in AMAX_ALGOS:
        raise ValueError(
            f"te_recipe: amax_compute_algo={amax_compute_algo!r}; choose one of {AMAX_ALGOS} (or pass a callable)."
        )
    (fp8_dpa,) = _python_bools(fp8_dpa)
    _check_switches("te_recipe", fp8_dpa=fp8_dpa)
    from transformer_engine.common.recipe import DelayedScaling, Format

    return DelayedScaling(
        margin=margin,
        fp8_format=Format.HYBRID if fp8_format == "hybrid" else Format.E4M3,
        amax_history_len=amax_history_len,
        amax_compute_algo=amax_compute_algo,
        fp8_dpa=fp8_dpa,
    )


def _import_te():
    try:
        import transformer_engine.pytorch as te
    except ImportError as err:
        raise ImportError(
            "convert(backend='te') needs NVIDIA Transformer Engine on a CUDA machine with an FP8 GPU (SM89+): "
            "`pip install transformer-engine[pytorch]`. Use backend='torchao' or 'emulated' elsewhere."
        ) from err
    return te


def _convert_te(model, names, fp8_format, history, algo, margin, amax_reduction_group=None, fp8_dpa=False):
    import torch

    te = _import_te()
    if not torch.cuda.is_available():
        raise ValueError("convert(backend='te') needs a CUDA device; use backend='torchao' or 'emulated' on CPU.")
    recipe = te_recipe(fp8_format, history, algo, margin, fp8_dpa=fp8_dpa)
    for name in names:
        lin = model.get_submodule(name)
        new = te.Linear(
            lin.in_features,
            lin.out_features,
            bias=lin.bias is not None,
            params_dtype=lin.weight.dtype,
            device=lin.weight.device,
        )
        with torch.no_grad():
            new.weight.copy_(lin.weight)
            if lin.bias is not None:
                new.bias.copy_(lin.bias)
        _replace(model, name, new)
    autocast = getattr(te, "autocast", None)
    forward = model.forward

    @functools.wraps(forward)
    def forward_in_fp8(*args, **kwargs):
        # FP8 only where TE's GEMM shape rule holds (rows % 8): a generate() decode step or an odd eval batch runs in
        # high precision instead of failing TE's divisibility assertion.
        enabled = te_fp8_shape_ok(_token_rows(args, kwargs))
        # the default group is resolved per forward: a model converted before the process group exists (before
        # TrainingArguments / Accelerator start it) still reduces over the data-parallel ranks
        group = amax_reduction_group if amax_reduction_group is not None else default_amax_group()
        if autocast:
            ctx = autocast(enabled=enabled, recipe=recipe, amax_reduction_group=group)
        else:
            ctx = te.fp8_autocast(enabled=enabled, fp8_recipe=recipe, fp8_group=group)
        with ctx:
            return forward(*args, **kwargs)

    model.forward = forward_in_fp8
    return recipe


def te_fp8_shape_ok(rows: int | None) -> bool:
    """Whether Transformer Engine can run this forward's block GEMMs in FP8: the token count (GEMM rows) must be a
    multiple of 8 (feature sizes, multiples of 16, are checked at conversion). `None` (unknown) is allowed."""
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, Integral) or rows < 0):
        raise ValueError(f"te_fp8_shape_ok: rows must be a token count (an int >= 0) or None, got {rows!r}.")
    return rows is None or rows % 8 == 0


def _token_rows(args, kwargs) -> int | None:
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is not None and hasattr(ids, "shape"):
        return int(ids.numel())
    embeds = kwargs.get("inputs_embeds")
    if embeds is not None and hasattr(embeds, "shape"):
        return int(embeds.shape[:-1].numel())
    return None


def ao_recipe_kwargs(
    model: nn.Module,
    recipe: str = "tensorwise",
    include_lm_head: bool = False,
    skip_modules: list[str] | None = None,
    pad_inner_dim: bool = False,
    emulate: bool | None = None,
    fsdp_float8_all_gather: bool | None = None,
):
    """accelerate `AORecipeKwargs` that converts every block linear (only the LM head stays out), for
    `Accelerator(mixed_precision="fp8", kwargs_handlers=[...])` or [`Fp8Trainer`]. accelerate's default filter would
    also keep the first linear (the first QKV projection) in high precision.

    Args:
        model (`nn.Module`): The model that will be prepared (used to find its LM head).
        recipe (`str`): torchao recipe name.
        include_lm_head, skip_modules, pad_inner_dim, emulate: As in [`convert`] (`emulate=None`: torchao's emulated
            GEMM when no CUDA device is available).
        fsdp_float8_all_gather (`bool`, *optional*): All-gather the FSDP2 shards in FP8 (tensorwise only). Default
            (`None`): on for the tensorwise recipe when the run uses FSDP2 (see [`fsdp2_in_use`]: `accelerate launch`
            with an FSDP config of `fsdp_version: 2`), off otherwise. Without FSDP2 it only wraps every FP8 weight in
            torchao's all-gather tensor; [`Fp8Trainer`] still saves plain weights then.

    The branch-wise weights of a layer-paired model's merged "block" pairs (see [`convert`]) are split into
    per-branch `nn.Linear` modules in `model` here, so that accelerate's conversion reaches them: call it on the model
    that will be prepared, before its optimizer is built.
    """
    from accelerate.utils import AORecipeKwargs

    if not isinstance(model, nn.Module):
        raise TypeError(
            f"ao_recipe_kwargs: model must be the torch.nn.Module that will be prepared, got {type(model).__name__}."
        )
    if recipe not in TORCHAO_RECIPES:
        raise ValueError(f"ao_recipe_kwargs: recipe={recipe!r}; choose one of {TORCHAO_RECIPES}.")
    _check_switches("ao_recipe_kwargs", include_lm_head=include_lm_head, pad_inner_dim=pad_inner_dim)
    if emulate is None:
        emulate = not torch.cuda.is_available()  # as convert: torch's CPU _scaled_mm is a reference kernel
    _check_switches("ao_recipe_kwargs", emulate=emulate)
    if fsdp_float8_all_gather is None:
        fsdp_float8_all_gather = recipe == "tensorwise" and fsdp2_in_use()
    _check_switches("ao_recipe_kwargs", fsdp_float8_all_gather=fsdp_float8_all_gather)
    names = fp8_target_modules(model, include_lm_head, skip_modules)
    branch_targets = fp8_branch_targets(model, include_lm_head, skip_modules)
    _check_branch_targets(model, branch_targets)
    _check_dims(model, names, pad_inner_dim, "torchao", branch_targets)
    # accelerate converts nn.Linear modules only: merged block pairs' branch-wise weights become per-branch linears
    _split_branch_targets(model, branch_targets)
    return AORecipeKwargs(
        config=torchao_config(recipe, pad_inner_dim, emulate, fsdp_float8_all_gather=fsdp_float8_all_gather),
        module_filter_func=fp8_target_filter(model, include_lm_head, skip_modules),
        pad_inner_dim=pad_inner_dim,
    )
