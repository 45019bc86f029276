"""A Trainer that passes FP8 recipe kwargs (e.g. an all-block-linears `AORecipeKwargs`) to its Accelerator."""

from __future__ import annotations

from transformers import Trainer


class Fp8Trainer(Trainer):
    """`Trainer` for `accelerate launch --mixed_precision fp8`: adds `fp8_recipe_kwargs` (default: torchao with every
    block linear in FP8, only the LM head kept out; see [`ao_recipe_kwargs`]) to the Accelerator's handlers.

    Without `--mixed_precision fp8` (or `ACCELERATE_MIXED_PRECISION=fp8`) it behaves like `Trainer`.

    Args:
        fp8_recipe_kwargs (*optional*): An accelerate recipe handler (`AORecipeKwargs`, `TERecipeKwargs`).
        *args, **kwargs: As `Trainer`.
    """

    def __init__(self, *args, fp8_recipe_kwargs=None, **kwargs):
        self.fp8_recipe_kwargs = fp8_recipe_kwargs
        self._fp8_model = kwargs.get("model") if "model" in kwargs else (args[0] if args else None)
        super().__init__(*args, **kwargs)

    def _build_accelerator_args(self, **kwargs):
        out = super()._build_accelerator_args(**kwargs)
        if getattr(self.args, "mixed_precision", "no") != "fp8":
            return out
        handler = self.fp8_recipe_kwargs
        if handler is None:
            from .convert import ao_recipe_kwargs

            handler = ao_recipe_kwargs(self._fp8_model)
        out["kwargs_handlers"] = [*(out.get("kwargs_handlers") or []), handler]
        out["mixed_precision"] = "fp8"
        return out
