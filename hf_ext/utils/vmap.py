"""Running a transformers model's forward under `torch.func` transforms (`vmap` over `grad`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: Messages of the errors torch.func raises for a forward it cannot transform: data-dependent control flow under
#: vmap (`.item()`), or an in-place change of a captured tensor under grad (peft's `target_parameters` LoRA, whose
#: parametrizations set the weight in place). Callers fall back to one backward pass per example on these.
FUNC_TRANSFORM_ERRORS = ("vmap", "During a grad (vjp, jvp, grad, etc) transform")


def is_func_transform_error(err: BaseException) -> bool:
    """Whether `err` is torch.func refusing to transform the forward (see `FUNC_TRANSFORM_ERRORS`)."""
    return isinstance(err, RuntimeError) and any(marker in str(err) for marker in FUNC_TRANSFORM_ERRORS)


# local functions registered as input-embedding forward hooks by transformers' `enable_input_require_grads` and by
# peft's fallback for models without it
_REQUIRE_GRADS_HOOK_NAMES = ("make_inputs_require_grads", "make_inputs_require_grad")


def hide_input_require_grads_hooks(model: torch.nn.Module) -> list[tuple[dict, list]]:
    """Remove the forward hooks of `enable_input_require_grads` from their modules' hook dicts.

    A hook is recognised by its handle, kept by the `PreTrainedModel` (`_require_grads_hooks`), or by its function's
    name: a second `enable_input_require_grads` call (e.g. `peft.prepare_model_for_kbit_training`, then `Trainer` with
    gradient checkpointing) registers another hook and drops the handle of the first.
    Returns, per modified hook dict, the dict and its entries before the removal, to be restored by the caller.
    """
    handle_ids = set()
    for module in model.modules():
        handles = list(getattr(module, "_require_grads_hooks", None) or [])
        handles.append(getattr(module, "_require_grads_hook", None))
        handle_ids.update(getattr(handle, "id", None) for handle in handles if handle is not None)
    hidden: list[tuple[dict, list]] = []
    for module in model.modules():
        hooks = module._forward_hooks
        remove = [
            key
            for key, hook in hooks.items()
            if key in handle_ids or getattr(hook, "__name__", None) in _REQUIRE_GRADS_HOOK_NAMES
        ]
        if remove:
            hidden.append((hooks, list(hooks.items())))
            for key in remove:
                del hooks[key]
    return hidden


def _use_eager_attention(model: torch.nn.Module) -> tuple[torch.nn.Module, str] | None:
    """Switch a transformers model (or the base model of a peft model) to eager attention; returns the model and the
    implementation to restore, or `None` when nothing was changed."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    current = getattr(getattr(base, "config", None), "_attn_implementation", None)
    if current in (None, "eager") or not hasattr(base, "set_attn_implementation"):
        return None
    base.set_attn_implementation("eager")
    return base, current


@contextmanager
def prepared_for_vmap(model: torch.nn.Module) -> Iterator[None]:
    """Make `model`'s forward runnable under `torch.func.vmap(torch.func.grad(...))`, restoring it afterwards.

    * A transformers model is switched to eager attention: sdpa mask creation branches on the data (it checks
      whether a padding mask can be dropped), which `vmap` refuses.
    * The input-embedding forward hooks of `enable_input_require_grads` (registered by `Trainer` with
      `gradient_checkpointing=True` and by `peft.prepare_model_for_kbit_training`) are taken out: they call
      `output.requires_grad_()`, which `torch.func` transforms refuse. They only matter for a backward pass through
      frozen embeddings and are put back in their original order, their handles still valid.

    Both are restored on exit, also on error.
    """
    restore = _use_eager_attention(model)
    try:
        hidden = hide_input_require_grads_hooks(model)
        try:
            yield
        finally:
            for hooks, saved in hidden:
                hooks.clear()
                hooks.update(saved)
    finally:
        if restore is not None:
            base, implementation = restore
            base.set_attn_implementation(implementation)
