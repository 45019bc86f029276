"""Weight decay grouping that follows a model's own `decay_parameter_names()` (FOG's reference grouping)."""

from __future__ import annotations

from transformers.utils import logging

logger = logging.get_logger(__name__)


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
            return
        except ValueError as err:
            own = getattr(self.model, "decay_parameter_names", None)
            if not callable(own) or "doesn't match the size of optimizer's group" not in str(err):
                raise
            error = err
        # A checkpoint of MetadataTrainer, GrapeTrainer, PrivateTrainer or NeuralGrokTrainer written before they followed the model's
        # names (2026-12-07): its two groups are transformers' name patterns (FOG's xIELU scalars decayed). The run
        # resumes with the groups it was trained with, exactly as it was going.
        restore = self._regroup_by_name_patterns()
        if restore is not None:
            try:
                super()._load_optimizer_and_scheduler(checkpoint)
            except ValueError:
                restore()
            else:
                logger.warning(
                    "resume_from_checkpoint=%r: the checkpoint's optimizer grouped the model by transformers' name "
                    "patterns (hf_ext trainers before 2026-12-07, which also decayed FOG's xIELU scalars "
                    "act_fn.alpha_p / alpha_n); the resumed run keeps those groups, as it was trained. Start a new run "
                    "for the model's own decay_parameter_names() grouping.",
                    checkpoint,
                )
                return
        raise ValueError(
            f"resume_from_checkpoint={checkpoint!r}: the checkpoint's optimizer param groups match neither the "
            "weight decay groups this trainer builds from the model's decay_parameter_names() (FOG: trainable "
            "matrices only) nor transformers' name patterns (which hf_ext's MetadataTrainer, GrapeTrainer, "
            "PrivateTrainer and NeuralGrokTrainer (AdamW) used before 2026-12-07, also decaying FOG's xIELU scalars act_fn.alpha_p / alpha_n). "
            f"Start a new run from the checkpoint's weights (from_pretrained({checkpoint!r}) / --model_name_or_path, "
            "without resume_from_checkpoint), or resume with the hf_ext version that wrote it."
        ) from error

    def _regroup_by_name_patterns(self):
        """Put the parameters of the optimizer `Trainer.create_optimizer` built (two groups: decayed, then not) into
        the groups transformers' name patterns give, in place (the scheduler keeps its two groups); returns a function
        that puts them back, or `None` where the optimizer is not that layout."""
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's AcceleratedOptimizer
        groups = getattr(optimizer, "param_groups", None)
        if not isinstance(groups, list) or len(groups) != 2 or groups[1].get("weight_decay") != 0.0:
            return None
        patterns = set(super().get_decay_parameter_names(self.model))
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        decay = [p for n, p in named if n in patterns]
        rest = [p for n, p in named if n not in patterns]
        if {id(p) for g in groups for p in g["params"]} != {id(p) for _, p in named}:
            return None
        before = [g["params"] for g in groups]
        groups[0]["params"], groups[1]["params"] = decay, rest

        def restore():
            for group, params in zip(groups, before, strict=True):
                group["params"] = params

        return restore
