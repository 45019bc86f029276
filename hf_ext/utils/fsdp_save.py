"""A final `save_model` that writes the whole model under FSDP with a sharded state dict."""

from __future__ import annotations


class WholeModelSaveMixin:
    """Mixin for a `transformers.Trainer` (subclass) whose final `save_model` writes a `from_pretrained` folder also
    under FSDP with `fsdp_state_dict_type: SHARDED_STATE_DICT` (the shipped FSDP2 accelerate configs).

    There transformers' `save_model` writes no model at all (only its FULL_STATE_DICT branch saves), so a recipe's
    output folder held a config and a tokenizer but no weights. Here the final save (and `push_to_hub`'s) gathers the
    full state dict on every rank (a collective) and the main process writes it with `_save` (`save_pretrained`,
    config, tokenizer). Checkpoints stay sharded as configured: `_save_checkpoint` marks its own `save_model` call.
    Call `save_model` on every process, as with `Trainer`."""

    _whole_model_saving_checkpoint = False

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        self._whole_model_saving_checkpoint = True  # its model is saved as the FSDP plugin says
        try:
            return super()._save_checkpoint(model, trial, *args, **kwargs)
        finally:
            self._whole_model_saving_checkpoint = False

    def _fsdp_sharded_state_dict(self) -> bool:
        """FSDP with a state dict type other than FULL_STATE_DICT: transformers' `save_model` then saves no model."""
        if not getattr(self, "is_fsdp_enabled", False):
            return False
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        return plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not self._fsdp_sharded_state_dict() or self._whole_model_saving_checkpoint:
            return super().save_model(output_dir, _internal_call=_internal_call)
        folder = output_dir if output_dir is not None else self.args.output_dir
        state_dict = self.accelerator.get_state_dict(self.model)  # a collective: every rank gathers
        self._save(folder, state_dict=state_dict)  # writes on the process that should save only
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)
