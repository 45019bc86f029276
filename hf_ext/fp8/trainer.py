"""A Trainer for FP8 pretraining: FP8 recipe kwargs for its Accelerator, the model's own weight-decay grouping, and a
warmup-stable-decay schedule whose cooldown length can be given as a fraction of the run."""

from __future__ import annotations

import inspect
import json
import math
import os

from transformers import Trainer
from transformers.trainer_utils import SchedulerType
from transformers.utils import logging

from ..utils.decay import ModelDecayNamesMixin
from ..utils.fsdp_save import WholeModelSaveMixin
from ..utils.resume import LossWindowResumeMixin
from .callback import Fp8HealthCallback, skip_vetoed_save

logger = logging.get_logger(__name__)

#: FP8 scaling state of a peft model's frozen base layers, written next to the adapter in each checkpoint.
FP8_STATE_FILE = "fp8_state.safetensors"


def _peft_fp8_buffers(model) -> dict:
    """The persistent `fp8_*` buffers (delayed-scaling amax histories of `convert(..., "emulated")`) of a peft model,
    by the model's own names; empty for any other model, whose checkpoint (`model.safetensors`) holds them."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a runtime dependency
        return {}
    if not isinstance(model, PeftModel):
        return {}
    buffers = {name for name, _ in model.named_buffers()}
    return {k: v for k, v in model.state_dict().items() if k in buffers and k.rpartition(".")[2].startswith("fp8_")}


def load_fp8_state(model, folder: str) -> bool:
    """Restore the frozen layers' FP8 scaling state of a peft model from `folder/fp8_state.safetensors`, the file
    `Fp8Trainer` writes beside a saved adapter (its base layers' delayed-scaling amax histories are not part of the
    adapter). For inference with an adapter reloaded by `PeftModel.from_pretrained` on a converted base: the model
    then scales its operands as the trained one did (without it, the histories start empty). Checkpoints are
    restored by `Fp8Trainer.train(resume_from_checkpoint=...)` itself.

    Returns:
        `bool`: `True` when a state was loaded, `False` for a model without such buffers or a folder without the file.

    Raises:
        `ValueError` when the file holds the state of other layers than the model's, or a buffer of another shape
        (e.g. written with another `amax_history_len`); nothing is loaded then.
    """
    if not isinstance(folder, str | os.PathLike):
        raise TypeError(f"load_fp8_state: folder must be a path (str or os.PathLike), got {type(folder).__name__}.")
    own = _peft_fp8_buffers(model)
    path = os.path.join(folder, FP8_STATE_FILE)
    if not own or not os.path.isfile(path):
        return False
    import torch
    from safetensors.torch import load_file

    saved = load_file(path)
    if set(saved) != set(own):
        raise ValueError(
            f"{path} holds the FP8 state of other layers ({len(saved)} buffers, {len(own)} expected); use the model "
            "(conversion and adapters) that wrote it."
        )
    for name, value in saved.items():  # Tensor.copy_ would broadcast a shorter history into every row
        if value.shape != own[name].shape:
            saved_len, own_len = _history_len(name, value.shape), _history_len(name, own[name].shape)
            history = (
                f" (amax_history_len={saved_len} in the file, {own_len} in the model; convert the model with "
                f"amax_history_len={saved_len})"
                if saved_len is not None and own_len is not None
                else ""
            )
            raise ValueError(
                f"{path}: buffer {name} has shape {tuple(value.shape)} in the file but {tuple(own[name].shape)} in the "
                f"model{history}; nothing was loaded. Use the model (conversion and adapters) that wrote it."
            )
    with torch.no_grad():
        for name, value in saved.items():
            own[name].copy_(value.to(own[name].device))
    return True


def _history_len(name: str, shape) -> int | None:
    """The `amax_history_len` of a delayed-scaling `fp8_amax_history` buffer (its rows), else `None`."""
    return shape[0] if name.endswith("fp8_amax_history") and len(shape) == 2 else None


def _checkpoint_world_size(checkpoint: str) -> int | None:
    """Processes that wrote `checkpoint`, from Trainer's RNG state files (`rng_state.pth` for one process,
    `rng_state_<rank>.pth` for several); `None` when it has none."""
    try:
        names = os.listdir(checkpoint)
    except OSError:
        return None
    if "rng_state.pth" in names:
        return 1
    ranks = [n for n in names if n.startswith("rng_state_") and n.endswith(".pth")]
    return len(ranks) or None


#: Written beside a checkpoint of a model with delayed-scaling FP8 layers: the rows each process trained per optimizer
#: step when it was written, which the output-gradient amaxes of its histories scale with (see
#: `_rescale_gradient_amax`).
FP8_BATCH_FILE = "fp8_batch.json"


def _delayed_layers(model) -> list:
    from .emulation import Fp8Linear

    return [m for m in model.modules() if isinstance(m, Fp8Linear) and m.scaling == "delayed"]


def _checkpoint_rows(checkpoint: str) -> int | None:
    """The rows per process and optimizer step recorded in `checkpoint`'s `fp8_batch.json`; `None` without one (a
    checkpoint written before it existed) or with an unreadable one."""
    from ..utils.checks import is_int

    try:
        with open(os.path.join(checkpoint, FP8_BATCH_FILE), encoding="utf-8") as fh:
            rows = json.load(fh).get("rows_per_process_step")
    except (OSError, ValueError, AttributeError):
        return None
    return rows if is_int(rows) and rows > 0 else None


def _scale_gradient_amax(model, factor: float, checkpoint: str, why: str) -> None:
    """Multiply the output-gradient column of `model`'s delayed-scaling amax histories (and the kept gradient scale) by
    `factor`, logging `why` (see `_rescale_gradient_amax`)."""
    import torch

    delayed = _delayed_layers(model)
    if factor == 1 or not delayed:
        return
    with torch.no_grad():
        for module in delayed:
            module.fp8_amax_history[:, 2] *= factor
            module.fp8_scale_amax[2] *= factor
    logger.info(
        f"{checkpoint}: {why}; the delayed-scaling FP8 output-gradient amax histories of {len(delayed)} layer(s) were "
        f"rescaled by {factor:g}, as each process's output gradient scales with 1 / the rows it trains per step."
    )


def _rescale_gradient_amax(checkpoint: str, model, world_size: int) -> None:
    """Carry delayed-scaling FP8 state over to a resume that trains another number of rows per process and step. Each
    rank records the amax of its own output gradient, the gradient of its share of the loss, and transformers
    normalises that share by the rows (tokens) the rank trains per optimizer step (per-device batch x gradient
    accumulation; also with `average_tokens_across_devices`, which multiplies by the world size what it divides by
    the whole batch's tokens): the gradient column scales with 1 / those rows, not with the world size. It is rescaled
    by `saved rows / rows` (exact for powers of two): a 2-rank checkpoint resumed in one process at the same global
    batch (twice the rows per process) halves it, one resumed with the same per-device flags (half the global batch)
    keeps it. `Fp8Trainer` does that at the start of each training-loop attempt, once the rows are known
    (`Fp8Trainer._fp8_rescale_for`); here, at load, only a checkpoint without `fp8_batch.json` (written before it
    existed) is rescaled, on the assumption that it is resumed at the same global batch: `world_size / saved`,
    warned. Forward columns (input, weight) do not depend on either."""
    if not _delayed_layers(model) or _checkpoint_rows(checkpoint) is not None:
        return
    saved = _checkpoint_world_size(checkpoint)
    if saved is None or saved == world_size:
        return
    factor = world_size / saved
    logger.warning(
        f"{checkpoint} has no {FP8_BATCH_FILE} (written before it existed): the FP8 output-gradient amax histories "
        f"are rescaled by {factor:g} on the assumption that this run keeps its global batch; with the same "
        "per-device batch and gradient accumulation instead, resume on the same number of processes."
    )
    why = f"it was written by {saved} process(es) and is resumed on {world_size}"
    _scale_gradient_amax(model, factor, checkpoint, why)


def resolve_wsd_kwargs(kwargs: dict | None, num_training_steps: int) -> dict:
    """`lr_scheduler_kwargs` for transformers' `warmup_stable_decay` with a fractional `num_decay_steps` resolved.

    transformers' `get_wsd_schedule` needs `num_decay_steps` as a step count; like `warmup_steps`, a float in (0, 1)
    here means that fraction of `num_training_steps` (the FOG reference cools down over the last 20%: 0.2), rounded
    to the nearest step and at least 1 (transformers rounds a warmup fraction up instead).

    The other keys are checked by name before any work: each must be an argument of transformers'
    `get_wsd_schedule`; `decay_type` / `warmup_type` one of its curves ("linear", "cosine", "1-sqrt"); `min_lr_ratio`
    a number in [0, 1] (below 0 the cooldown reaches a learning rate of 0 early, above 1 it rises over the peak);
    `num_cycles` a finite number.

    Args:
        kwargs (`dict`, *optional*): The user's `lr_scheduler_kwargs`.
        num_training_steps (`int`): Total optimizer steps of the run.

    Returns:
        `dict`: A copy with an integer `num_decay_steps`.
    """
    out = dict(kwargs or {})
    _check_wsd_options(out)
    if "num_decay_steps" not in out:
        raise ValueError(
            "lr_scheduler_type='warmup_stable_decay' needs num_decay_steps in lr_scheduler_kwargs (steps, or a float "
            'in (0, 1) for a fraction of the run), e.g. --lr_scheduler_kwargs \'{"num_decay_steps": 0.2, '
            '"decay_type": "1-sqrt"}\'.'
        )
    n = out["num_decay_steps"]
    if isinstance(n, bool) or not isinstance(n, int | float) or not math.isfinite(n) or n <= 0:
        raise ValueError(
            f"lr_scheduler_kwargs num_decay_steps={n!r} must be a positive number of steps or a fraction in (0, 1)."
        )
    if isinstance(n, float) and not n.is_integer():
        if not 0.0 < n < 1.0:
            raise ValueError(f"lr_scheduler_kwargs num_decay_steps={n} must be an int or a fraction in (0, 1).")
        out["num_decay_steps"] = max(1, round(n * num_training_steps))
    else:
        out["num_decay_steps"] = int(n)
    if out["num_decay_steps"] > num_training_steps:
        raise ValueError(
            f"lr_scheduler_kwargs num_decay_steps={out['num_decay_steps']} exceeds the run's {num_training_steps} "
            "steps; lower it or raise max_steps."
        )
    return out


#: The warmup and decay curves of transformers' `get_wsd_schedule` (it lists them inside the function only).
WSD_CURVES = ("linear", "cosine", "1-sqrt")


def _check_wsd_options(kwargs: dict) -> None:
    """The WSD `lr_scheduler_kwargs` other than `num_decay_steps`, by name (transformers checks the curve names only
    when the scheduler is built, and neither the range nor the type of `min_lr_ratio`)."""
    import inspect

    from transformers.optimization import get_wsd_schedule

    passed_by_trainer = {"optimizer", "num_warmup_steps", "num_training_steps"}
    known = [n for n in inspect.signature(get_wsd_schedule).parameters if n not in passed_by_trainer]
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:
        raise ValueError(
            f"lr_scheduler_kwargs {', '.join(map(repr, unknown))} is not an option of transformers' warmup_stable_decay "
            f"schedule; use {', '.join(known)}."
        )
    for name in ("warmup_type", "decay_type"):
        if name in kwargs and kwargs[name] not in WSD_CURVES:
            raise ValueError(
                f"lr_scheduler_kwargs {name}={kwargs[name]!r} is not a warmup_stable_decay curve; use one of "
                f"{', '.join(map(repr, WSD_CURVES))}."
            )
    for name, low, high in (("min_lr_ratio", 0.0, 1.0), ("num_cycles", -math.inf, math.inf)):
        if name not in kwargs:
            continue
        value = kwargs[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(
                f"lr_scheduler_kwargs {name}={value!r} must be a finite number, not {type(value).__name__}."
            )
        if not low <= value <= high:
            raise ValueError(
                f"lr_scheduler_kwargs {name}={value!r} must be in [0, 1]: the final learning rate as a fraction of the "
                "peak (below 0 the cooldown reaches 0 early, above 1 it rises over the peak)."
            )


def _check_optimizer_keeps_branch_weights(model, optimizer) -> None:
    """Refuse, before the model changes, a given optimizer that holds stacked branch-wise weights of a layer-paired
    model's merged block pairs: the default fp8 recipe ([`ao_recipe_kwargs`]) splits them into new per-branch
    parameters, so the optimizer would keep stepping the old ones and those weights would silently stop training."""
    if model is None or optimizer is None:
        return
    from .convert import fp8_branch_targets

    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    replaced = []
    for name, group, _ in fp8_branch_targets(model):
        module = model.get_submodule(name)
        for attr in module._BRANCH_GROUPS[group]:
            param = getattr(module, attr, None)
            if param is not None and id(param) in held:
                replaced.append(f"{name}.{attr}" if name else attr)
    if replaced:
        raise ValueError(
            f"Fp8Trainer: the optimizer passed as `optimizers` holds {len(replaced)} branch-wise weight(s) of the "
            f"model's merged block pairs ({', '.join(replaced[:3])}{', ...' if len(replaced) > 3 else ''}), which fp8 "
            "mixed precision splits into new per-branch FP8 linears, so they would silently stop training. Build "
            "the optimizer after the split (`fp8_recipe_kwargs=ao_recipe_kwargs(model)`, or "
            "`hf_ext.fp8.convert(model)`, first), or let the trainer build it (drop `optimizers`, or pass "
            "`optimizer_cls_and_kwargs`)."
        )


def _check_optimizer_trains_split_branches(model, optimizer) -> None:
    """Refuse a given optimizer built before a layer-paired model's merged block pairs were split into per-branch
    linears by the user (`ao_recipe_kwargs(model)` or `hf_ext.fp8.convert(model)` after the optimizer): it holds the
    stacked branch-wise weights the split replaced and misses the trainable per-branch parameters that replaced them,
    so those weights would silently not train. Only parameters the optimizer cannot know about are checked: an
    optimizer that never held a group's stacked weights (a deliberate subset, as `Trainer` allows), or that holds the
    new per-branch parameters, passes; frozen parameters are not required."""
    if model is None or optimizer is None:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    stale, missing = [], []
    for name, module in model.named_modules():
        replaced = getattr(module, "replaced_stacked_parameters", None)
        if not callable(replaced):
            continue
        prefix = f"{name}." if name else ""
        for group, stacked in replaced().items():
            kept = [f"{prefix}{attr}" for attr, p in stacked.items() if id(p) in held]
            if not kept:
                continue  # the optimizer never trained these weights: a choice, not a stale copy
            new = [
                (f"{prefix}{group}.{n}", p)
                for n, p in module.get_submodule(group).named_parameters()
                if p.requires_grad and id(p) not in held
            ]
            if new:
                stale += kept
                missing += [n for n, _ in new]
    if missing:
        raise ValueError(
            f"Fp8Trainer: the optimizer passed as `optimizers` was built before the model's merged block pairs were "
            f"split into per-branch linears (by `ao_recipe_kwargs(model)` or `hf_ext.fp8.convert(model)`): it holds "
            f"the replaced stacked weight(s) ({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}) and not the "
            f"{len(missing)} trainable parameter(s) that replaced them ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}), so those weights would silently not train. Build the optimizer "
            "after the split (after `ao_recipe_kwargs(model)` / `convert(model)`), or let the trainer build it (drop "
            "`optimizers`, or pass `optimizer_cls_and_kwargs`)."
        )


class Fp8Trainer(ModelDecayNamesMixin, LossWindowResumeMixin, WholeModelSaveMixin, Trainer):
    """`Trainer` for FP8 pretraining (`accelerate launch --mixed_precision fp8`, or a model converted with
    [`convert`]).

    - adds `fp8_recipe_kwargs` (default: torchao with every block linear in FP8, only the LM head kept out; see
      [`ao_recipe_kwargs`]) to the Accelerator's handlers when mixed precision is fp8;
    - decays exactly the parameters the model names in `decay_parameter_names()` (FOG: matrices only, as the
      reference does; no decay on norm gains, xIELU scalars, biases), falling back to `Trainer`'s name patterns for
      models without that method;
    - with `lr_scheduler_type="warmup_stable_decay"`, accepts a fractional `num_decay_steps` in
      `lr_scheduler_kwargs` (see [`resolve_wsd_kwargs`]) and otherwise uses transformers' own WSD schedule;
    - for a peft model (LoRA on a converted model), saves the frozen base layers' FP8 scaling state (the `emulated`
      backend's delayed-scaling amax histories, which the adapter checkpoint leaves out) in each checkpoint as
      `fp8_state.safetensors` and restores it on resume, so a resumed run continues as an uninterrupted one.

    Without fp8 mixed precision it trains like `Trainer` with the rules above (an explicit `fp8_recipe_kwargs` is
    refused then: it would be ignored).

    torchao's FP8 all-gather (`enable_fsdp_float8_all_gather`) is on in the default recipe only when the run uses
    FSDP2; a model whose weights are still torchao's all-gather wrappers without FSDP2 (an explicit recipe with it on,
    or `convert(..., fsdp_float8_all_gather=True)`) is saved with the plain high-precision weights.

    Args:
        fp8_recipe_kwargs (*optional*): An accelerate recipe handler (`AORecipeKwargs`, `TERecipeKwargs`), used under
            fp8 mixed precision (`accelerate launch --mixed_precision fp8`, `ACCELERATE_MIXED_PRECISION=fp8`).
        *args, **kwargs: As `Trainer`.
    """

    def __init__(self, *args, fp8_recipe_kwargs=None, **kwargs):
        training_args = kwargs["args"] if "args" in kwargs else (args[1] if len(args) > 1 else None)
        mixed_precision = (
            getattr(training_args, "mixed_precision", "no")
            if training_args is not None
            else os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # what Trainer's default arguments read
        )
        self._fp8_model = kwargs.get("model") if "model" in kwargs else (args[0] if args else None)
        try:
            optimizers = (
                inspect.signature(Trainer.__init__).bind_partial(self, *args, **kwargs).arguments.get("optimizers")
            )
        except TypeError:  # arguments Trainer does not take: its own __init__ below reports them
            optimizers = None
        optimizer = (optimizers or (None, None))[0]
        # a split the user made (ao_recipe_kwargs / convert) after building the optimizer, in every path
        _check_optimizer_trains_split_branches(self._fp8_model, optimizer)
        if mixed_precision == "fp8" and fp8_recipe_kwargs is None:  # the split this trainer is about to make
            _check_optimizer_keeps_branch_weights(self._fp8_model, optimizer)
        if fp8_recipe_kwargs is not None:
            from accelerate.utils import AORecipeKwargs, TERecipeKwargs

            if not isinstance(fp8_recipe_kwargs, (AORecipeKwargs, TERecipeKwargs)):
                # accelerate only asserts on a non-handler (gone under python -O); another handler (e.g.
                # DistributedDataParallelKwargs) took the recipe's place, so accelerate's default FP8 recipe ran
                raise TypeError(
                    "Fp8Trainer: fp8_recipe_kwargs must be an accelerate FP8 recipe handler, e.g. "
                    "hf_ext.fp8.ao_recipe_kwargs(model) (torchao) or accelerate.utils.TERecipeKwargs(...), got "
                    f"{type(fp8_recipe_kwargs).__name__} {fp8_recipe_kwargs!r:.80}."
                )
            if mixed_precision != "fp8":
                raise ValueError(
                    f"Fp8Trainer: fp8_recipe_kwargs is used only under fp8 mixed precision, but mixed precision is "
                    f"{mixed_precision!r}, so the run would train in high precision. Launch with `accelerate launch "
                    "--mixed_precision fp8` (or set ACCELERATE_MIXED_PRECISION=fp8 before building TrainingArguments), "
                    "or convert the model with hf_ext.fp8.convert(model, ...) and drop fp8_recipe_kwargs."
                )
        self.fp8_recipe_kwargs = fp8_recipe_kwargs
        super().__init__(*args, **kwargs)

    def _build_accelerator_args(self, **kwargs):
        out = super()._build_accelerator_args(**kwargs)
        if getattr(self.args, "mixed_precision", "no") != "fp8":
            return out
        from .convert import ao_recipe_kwargs, fsdp2_in_use

        fsdp2 = fsdp2_in_use(out.get("fsdp_plugin"), self.args)
        handler = self.fp8_recipe_kwargs
        if handler is None:
            handler = ao_recipe_kwargs(self._fp8_model, fsdp_float8_all_gather=fsdp2)
        elif getattr(getattr(handler, "config", None), "enable_fsdp_float8_all_gather", False) and not fsdp2:
            logger.warning(
                "fp8_recipe_kwargs turns torchao's FP8 all-gather (enable_fsdp_float8_all_gather) on, but this run "
                "does not use FSDP2: it only wraps every FP8 weight (saves write the plain weights). Build it with "
                "ao_recipe_kwargs(model) (on under FSDP2 only) or fsdp_float8_all_gather=False."
            )
        out["kwargs_handlers"] = [*(out.get("kwargs_handlers") or []), handler]
        out["mixed_precision"] = "fp8"
        return out

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # torchao's FP8 all-gather weight wrappers (enable_fsdp_float8_all_gather on a model FSDP2 does not shard) have
        # no storage safetensors can write: save the high-precision tensors they hold
        from .convert import _fp8_cast_weight_type, plain_fp8_weights

        cast = _fp8_cast_weight_type()
        if state_dict is None and cast is not None and self.model is not None:
            if any(isinstance(p, cast) for p in self.model.parameters()):
                state_dict = self.model.state_dict()
        if state_dict is not None:
            state_dict = plain_fp8_weights(state_dict)
        super()._save(output_dir, state_dict=state_dict)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # An Fp8HealthCallback's values join the row before Trainer.log: TensorBoard, W&B, ... run before user
        # callbacks, so values added in the callback's own on_log would reach log_history but not them.
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, Fp8HealthCallback):
                logs.update(callback.take_pending_logs())
        super().log(logs, *args, **kwargs)

    #: `_save_checkpoint` itself skips a checkpoint an [`Fp8HealthCallback`] vetoes (see `train_with_rollback`).
    _fp8_health_save_guard = True

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        # The last word on saving: Trainer sets `should_save` after the callbacks (save_strategy="best") and a callback
        # after the health callback may set it again; a checkpoint of the diverging state must never be written (with
        # save_total_limit its rotation would delete the rollback target).
        if skip_vetoed_save(self, self.callback_handler.callbacks):
            return None
        self._fp8_saving_checkpoint = (
            True  # its model is saved as the FSDP plugin says (sharded: by the optimizer save)
        )
        try:
            return super()._save_checkpoint(model, trial, *args, **kwargs)
        finally:
            self._fp8_saving_checkpoint = False

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`, which writes a whole model also under FSDP with a sharded state dict; for a peft model,
        whose saved adapter leaves out the base layers' FP8 scaling state (the delayed-scaling amax histories), that
        state is written beside it (`fp8_state.safetensors`), before `trainer_state.json` in a checkpoint, and
        `train(resume_from_checkpoint=)` restores it.

        Under FSDP with `fsdp_state_dict_type: SHARDED_STATE_DICT` (the shipped FSDP2 accelerate configs),
        transformers' `save_model` writes nothing; here the final save (and `push_to_hub`'s) gathers the full state
        dict on every rank and the main process writes it with `save_pretrained`, config and tokenizer, so the folder
        loads with `from_pretrained`. Checkpoints stay sharded as configured. Call it on every process.
        """
        super().save_model(output_dir, _internal_call=_internal_call)  # WholeModelSaveMixin: whole under FSDP
        if not self.args.should_save:
            return
        folder = output_dir if output_dir is not None else self.args.output_dir
        if getattr(self, "_fp8_saving_checkpoint", False) and _delayed_layers(self.model):
            # what the histories' output-gradient column was recorded with, for a resume with other batch flags
            from ..utils.io import atomic_write_json

            record = {"rows_per_process_step": self._fp8_rows(), "world_size": self.args.world_size}
            atomic_write_json(os.path.join(folder, FP8_BATCH_FILE), record, None)
        state = _peft_fp8_buffers(self.accelerator.unwrap_model(self.model, keep_torch_compile=False))
        if state:
            from safetensors.torch import save

            from ..utils.io import atomic_open

            folder = output_dir if output_dir is not None else self.args.output_dir
            with atomic_open(os.path.join(folder, FP8_STATE_FILE), "wb") as fh:
                fh.write(save({k: v.detach().contiguous().cpu() for k, v in state.items()}))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from ..utils.resume import refuse_weights_only_checkpoint

        refuse_weights_only_checkpoint(resume_from_checkpoint, "resume_from_checkpoint")  # before anything is restored
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_fp8_state(
            resume_from_checkpoint,
            model,
            "the frozen layers' FP8 scaling state starts empty, so the resumed run differs from an uninterrupted one",
        )
        target = model if model is not None else self.model
        # the rows this run trains per step are known once the training loop has its batch size (auto_find_batch_size
        # restores the checkpoint's after this load, and retries smaller ones): rescaled at each attempt's start
        self._fp8_resumed = (resume_from_checkpoint, _checkpoint_rows(resume_from_checkpoint), 1.0)
        _rescale_gradient_amax(resume_from_checkpoint, target, self.args.world_size)  # a checkpoint without the record
        if getattr(self, "_fp8_attempt_rows", None) is not None:  # loaded inside the loop (FSDP): its rows are known
            self._fp8_rescale_for(self._fp8_attempt_rows)

    def _fp8_rescale_for(self, rows: int) -> None:
        """Rescale a resumed checkpoint's output-gradient amaxes (see `_rescale_gradient_amax`) to `rows` per process
        and step, relative to the factor applied at an earlier attempt of `auto_find_batch_size`."""
        resumed = getattr(self, "_fp8_resumed", None)
        if resumed is None or resumed[1] is None:
            return
        checkpoint, saved_rows, applied = resumed
        factor = saved_rows / rows / applied
        self._fp8_resumed = (checkpoint, saved_rows, saved_rows / rows)
        why = f"it trained {saved_rows} row(s) per process and optimizer step, this run {rows}"
        _scale_gradient_amax(self.model, factor, checkpoint, why)

    def train(self, *args, **kwargs):
        self._fp8_resumed = self._fp8_attempt_rows = None
        try:
            return super().train(*args, **kwargs)
        finally:
            self._fp8_resumed = self._fp8_attempt_rows = None

    def _inner_training_loop(self, batch_size=None, *args, **kwargs):
        rows = int(batch_size or self._train_batch_size) * int(self.args.gradient_accumulation_steps)
        self._fp8_attempt_rows = rows
        self._fp8_rescale_for(rows)
        return super()._inner_training_loop(batch_size, *args, **kwargs)

    def _fp8_rows(self) -> int:
        """Rows this process trains per optimizer step (per-device batch x gradient accumulation)."""
        batch = getattr(self, "_train_batch_size", None) or self.args.train_batch_size
        return int(batch) * int(self.args.gradient_accumulation_steps)

    def _load_best_model(self) -> None:
        # `load_best_model_at_end`: the best checkpoint's adapter comes with that checkpoint's FP8 scaling state, not
        # the last step's
        super()._load_best_model()
        self._load_fp8_state(
            self.state.best_model_checkpoint, None, "the best adapter runs with the last step's FP8 scaling state"
        )

    def _load_fp8_state(self, checkpoint: str, model, consequence: str) -> None:
        """Restore a peft model's frozen-layer FP8 state from `checkpoint`'s `fp8_state.safetensors` (a no-op for other
        models); warn with `consequence` when the checkpoint has none."""
        target = self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)
        if _peft_fp8_buffers(target) and not load_fp8_state(target, checkpoint):
            logger.warning(f"{checkpoint} has no {FP8_STATE_FILE}: {consequence}.")

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # a multi-process evaluate() counts every evaluation row once (accelerate's padded repeats entered eval_loss)
        from ..utils.evaluation import eval_rows_once_prediction_step

        return eval_rows_once_prediction_step(
            self, super().prediction_step, model, inputs, prediction_loss_only, ignore_keys
        )

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if (
            self.lr_scheduler is not None
            or SchedulerType(self.args.lr_scheduler_type) != SchedulerType.WARMUP_STABLE_DECAY
        ):
            return super().create_scheduler(num_training_steps, optimizer)
        original = self.args.lr_scheduler_kwargs
        self.args.lr_scheduler_kwargs = resolve_wsd_kwargs(original, num_training_steps)
        warmup = self.args.get_warmup_steps(num_training_steps)
        decay = self.args.lr_scheduler_kwargs["num_decay_steps"]
        if warmup + decay > num_training_steps:
            logger.warning(
                f"warmup_stable_decay: warmup ({warmup} steps) + cooldown ({decay} steps) exceed the run's "
                f"{num_training_steps} steps, so the cooldown starts before the warmup ends and the peak learning "
                "rate is never reached; lower warmup_steps or num_decay_steps (or train longer)."
            )
        try:
            return super().create_scheduler(num_training_steps, optimizer)
        finally:
            self.args.lr_scheduler_kwargs = original
