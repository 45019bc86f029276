"""Weight decay grouping that follows a model's own `decay_parameter_names()` (FOG's reference grouping)."""

from __future__ import annotations


class ModelDecayNamesMixin:
    """Mixin for a `transformers.Trainer` (subclass): when the model defines `decay_parameter_names()` (hf_ext's FOG:
    trainable matrices only, as its reference groups them), the optimizer `Trainer` builds decays exactly those
    parameters; other models keep `Trainer`'s name patterns. `Trainer`'s patterns would also decay FOG's xIELU
    scalars (`act_fn.alpha_p`, `act_fn.alpha_n`), which the reference never decays."""

    def get_decay_parameter_names(self, model) -> list[str]:
        own = getattr(model, "decay_parameter_names", None)
        if not callable(own):
            return super().get_decay_parameter_names(model)
        # The method may belong to a wrapped model (peft's PeftModel forwards attribute lookups to it), whose names
        # lack the wrapper's prefix: match parameters by identity and return the names `model` itself uses.
        owner = getattr(own, "__self__", model)
        names = set(own())
        chosen = {id(p) for n, p in owner.named_parameters() if n in names}
        return [n for n, p in model.named_parameters() if id(p) in chosen]

    def _load_optimizer_and_scheduler(self, checkpoint):
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except ValueError as err:
            own = getattr(self.model, "decay_parameter_names", None)
            if not callable(own) or "doesn't match the size of optimizer's group" not in str(err):
                raise
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r}: the checkpoint's optimizer param groups do not match the "
                "weight decay groups this trainer builds from the model's decay_parameter_names() (FOG: trainable "
                "matrices only). Checkpoints of MetadataTrainer, GrapeTrainer and PrivateTrainer written before "
                "2026-12-07 grouped a FOG model with transformers' name patterns, which also decayed the xIELU "
                "scalars (act_fn.alpha_p / alpha_n), so they cannot be resumed with the new groups. Start a new run "
                f"from the checkpoint's weights (from_pretrained({checkpoint!r}) / --model_name_or_path, without "
                "resume_from_checkpoint), or resume with the hf_ext version that wrote it."
            ) from err
