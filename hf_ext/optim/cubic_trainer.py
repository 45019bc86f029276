"""`CubicNewtonTrainer`: HF `Trainer` driving `CubicNewton` with a closure per batch."""

from __future__ import annotations

import inspect
import json
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..utils.checks import is_real, refuse_optimizer_flags, store_python_scalars
from ..utils.resume import LossWindowResumeMixin
from .cubic_newton import (
    HESSIAN_MODES,
    MOMENTUM_TYPES,
    SOLVERS,
    CubicNewton,
    CubicStepStats,
    check_second_order_support,
    make_flat_loss,
)
from .serialization import SafetensorsOptimizerStateMixin

__all__ = ["CubicNewtonTrainer", "CubicNewtonTrainingArguments"]

STATS_WINDOW_NAME = "cubic_stats_window.json"  # the steps since the last log, in a checkpoint
# CubicNewton's default `dense_max_dim`, the one the optimizer this trainer builds has
DENSE_MAX_DIM = inspect.signature(CubicNewton).parameters["dense_max_dim"].default


def _refuse_multiple_processes(world_size: int = 1) -> None:
    """Raise a `ValueError` when this process is one of several: launched by `torchrun --nproc_per_node N` /
    `accelerate launch --num_processes N` (the launcher's world size in the environment, set before any process group
    exists) or with `world_size` (the arguments' own) above 1. CubicNewton's step differentiates each process's own
    batch with `torch.func` and all-reduces nothing, so the ranks would train apart (or, where accelerate saw no
    distributed setup, each train the whole run alone into the same `--output_dir`)."""
    from ..utils.distributed import launched_processes

    n = max(launched_processes(), world_size)
    if n > 1:
        raise ValueError(
            f"CubicNewtonTrainer runs in one process, but this run has {n} (torchrun --nproc_per_node / accelerate "
            "launch --num_processes / DDP): each cubic step differentiates the process's own batch with torch.func and "
            "all-reduces nothing, so the ranks' weights would drift apart without an error. Launch it in one process "
            "(`python train.py ...` or `accelerate launch --num_processes 1 ...`) and raise "
            "--per_device_train_batch_size for larger batches."
        )


#: hf_ext's own folder: frames in it are skipped when a warning names the user's line ([`_user_stacklevel`])
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _user_stacklevel() -> int:
    """The `stacklevel` for a warning raised by the function calling this one that names the first frame outside
    hf_ext (the user's line, also when a subclass of the trainer in hf_ext constructs it), as Python 3.12's
    `skip_file_prefixes` would; this package supports 3.11."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _fresh_running_stats(module: torch.nn.Module) -> bool:
    """Whether a normalisation layer's running statistics are still its initial ones: no batch tracked, mean 0 and
    variance 1 (a layer loaded from a checkpoint saved without `num_batches_tracked` counts as trained by its
    statistics)."""
    tracked = getattr(module, "num_batches_tracked", None)
    if isinstance(tracked, torch.Tensor) and int(tracked) > 0:
        return False
    mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
    moved_mean = isinstance(mean, torch.Tensor) and bool((mean != 0).any())
    moved_var = isinstance(var, torch.Tensor) and bool((var != 1).any())
    return not (moved_mean or moved_var)


def _warn_about_frozen_running_stats(model: torch.nn.Module) -> None:
    """Warn when `model` has normalisation layers with running statistics (BatchNorm, InstanceNorm with
    `track_running_stats`) that are still freshly initialised: each cubic step runs the model in eval mode, so they
    normalise with the statistics they have when training starts and never update them, and a fresh layer keeps mean 0
    and variance 1, i.e. it does not normalise at all, in training and in evaluation alike. Layers with trained
    statistics stay frozen at them (what fine-tuning with frozen BatchNorm statistics does, the use the docs
    recommend): no warning. The warning names the user's line (the first frame outside hf_ext)."""
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._NormBase)
        and module.track_running_stats
        and _fresh_running_stats(module)
    ]
    if names:
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        warnings.warn(
            f"CubicNewtonTrainer: the model has {len(names)} normalisation layers with running statistics "
            f"({', '.join(names[:3])}{more}) still at their initial values. Each cubic step runs the model in eval mode (the gradient "
            "and its Hessian-vector products must see one function), so these layers normalise with their current "
            "running statistics and never update them: a freshly initialised layer keeps mean 0 and variance 1 and "
            "does not normalise. Fine-tune from trained statistics, or replace the layers (e.g. GroupNorm / "
            "LayerNorm).",
            stacklevel=_user_stacklevel(),
        )


@dataclass
class CubicNewtonTrainingArguments(TrainingArguments):
    """`TrainingArguments` for `CubicNewtonTrainer`. `learning_rate` multiplies the cubic step (1.0 = the plain method)
    and LR schedulers scale it; clipping, mixed precision and gradient accumulation do not apply and are refused."""

    learning_rate: float = field(default=1.0, metadata={"help": "Multiplier of the cubic step (1.0 = plain method)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Schedule of the step multiplier."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Must stay 0: the cubic term regularises the step."})
    cubic_M: float = field(default=10.0, metadata={"help": "Cubic regularisation constant M (M/6 convention)."})
    cubic_momentum: str = field(
        default="hessian_corrected",
        metadata={
            "help": f"Gradient momentum: one of {MOMENTUM_TYPES} (hessian_corrected costs one more HVP per step with "
            "a fresh or window Hessian; docs/optim.md)."
        },
    )
    cubic_alpha: float = field(default=0.1, metadata={"help": "Gradient momentum weight alpha (schedule floor)."})
    cubic_beta: float = field(default=0.1, metadata={"help": "Hessian momentum weight beta (schedule floor)."})
    cubic_alpha_power: float = field(default=0.0, metadata={"help": "alpha_t = max(alpha, t^-power); 0: constant."})
    cubic_beta_power: float = field(default=0.0, metadata={"help": "beta_t = max(beta, t^-power); 0: constant."})
    cubic_max_extrapolation: float = field(
        default=10.0, metadata={"help": "Cap on the factor (1-alpha)/alpha of --cubic_momentum extrapolated."}
    )
    cubic_hessian: str = field(
        default="fresh",
        metadata={
            "help": f"Hessian estimate: one of {HESSIAN_MODES} (dense only for tiny models; window keeps its last "
            "batches and points in each checkpoint)."
        },
    )
    cubic_hessian_window: int = field(default=3, metadata={"help": "Past batches used by cubic_hessian=window."})
    cubic_solver: str = field(default="lanczos", metadata={"help": f"Sub-problem solver: one of {SOLVERS}."})
    cubic_krylov_dim: int = field(default=10, metadata={"help": "Lanczos subspace size (HVPs per solve)."})
    cubic_gd_iters: int = field(
        default=500,
        metadata={
            "help": "Maximum iterations (HVPs) of the gradient-descent solver; it stops earlier at its tolerance, "
            "which near the hard case it may not reach (docs/optim.md)."
        },
    )
    cubic_M_rule: str = field(default="fixed", metadata={"help": "fixed or adaptive (doubling/halving M)."})
    cubic_M_min: float = field(
        default=1e-6, metadata={"help": "Lower bound of M (--cubic_M must not be below it; the adaptive rule's floor)."}
    )
    cubic_M_max: float = field(
        default=1e8, metadata={"help": "Upper bound of M (--cubic_M must not exceed it; the adaptive rule's cap)."}
    )
    cubic_max_step_norm: float | None = field(default=None, metadata={"help": "Cap on the step norm (None: none)."})
    cubic_convention: str = field(default="M/6", metadata={"help": "Cubic term convention: M/6 or M/3."})
    cubic_hvp_mode: str = field(
        default="auto",
        metadata={
            "help": "Hessian-vector products (and the dense Hessian of --cubic_hessian dense): auto "
            "(forward-over-reverse, or double backward where torch's forward-mode AD fails on the loss, e.g. a "
            "regression head's MSE), forward_over_reverse or double_backward."
        },
    )

    def __post_init__(self):
        store_python_scalars(self, base=TrainingArguments)  # numpy numbers as Python ones: to_json_string() works
        # before TrainingArguments starts a process group (and before the option check below builds a CubicNewton,
        # whose data-parallel warning every rank used to print ahead of the trainer's refusal)
        _refuse_multiple_processes()
        super().__post_init__()
        if self.gradient_accumulation_steps != 1:
            raise ValueError(
                "CubicNewtonTrainer needs --gradient_accumulation_steps 1: every step solves a cubic model built from "
                "one batch's loss function; raise --per_device_train_batch_size for larger batches instead."
            )
        if self.max_grad_norm and self.max_grad_norm > 0:
            raise ValueError("--max_grad_norm must be 0 for cubic Newton (the cubic term regularises the step).")
        if self.bf16 or self.fp16:
            raise ValueError("Cubic Newton needs fp32 Hessian-vector products; drop --bf16/--fp16.")
        if self.gradient_checkpointing:
            # train() would turn it on in the model and the first step would refuse it (check_second_order_support)
            raise ValueError(
                "--gradient_checkpointing breaks the exact Hessian-vector products of cubic Newton (and each step runs "
                "the model in eval mode, where it would save nothing); drop --gradient_checkpointing."
            )
        if self.label_smoothing_factor:
            raise ValueError(
                f"--label_smoothing_factor {self.label_smoothing_factor} would be ignored in training: each cubic step "
                "differentiates the model's own loss (`outputs.loss`), while evaluate() would smooth. Leave it at 0."
            )
        if self.neftune_noise_alpha is not None:
            raise ValueError(
                f"--neftune_noise_alpha {self.neftune_noise_alpha} would be ignored: NEFTune only adds its embedding "
                "noise in training mode, and each cubic step evaluates the model in eval mode (so that the gradient and "
                "its Hessian-vector products see the same function). Leave it unset (None)."
            )
        refuse_optimizer_flags(
            self,
            "CubicNewtonTrainer always builds CubicNewton (set it with the --cubic_* options)",
            "Drop --optim, or use transformers' Trainer for the optimizers --optim names.",
            "Configure CubicNewton with the --cubic_* options instead.",
        )
        if self.weight_decay:
            raise ValueError(
                f"--weight_decay {self.weight_decay} would be ignored: CubicNewton has no weight decay. Leave it at 0 "
                "and add an L2 term to the model's loss if you need one."
            )
        for name in ("adam_beta1", "adam_beta2", "adam_epsilon"):
            default = TrainingArguments.__dataclass_fields__[name].default
            if getattr(self, name) != default:
                raise ValueError(
                    f"--{name} {getattr(self, name)} would be ignored: CubicNewton has no Adam moments (its momentum "
                    f"options are --cubic_momentum, --cubic_alpha and --cubic_beta). Leave it at {default}."
                )
        if self.cubic_momentum not in MOMENTUM_TYPES:
            raise ValueError(f"--cubic_momentum must be one of {MOMENTUM_TYPES}, got {self.cubic_momentum!r}.")
        if self.cubic_hessian not in HESSIAN_MODES:
            raise ValueError(f"--cubic_hessian must be one of {HESSIAN_MODES}, got {self.cubic_hessian!r}.")
        if self.cubic_solver not in SOLVERS:
            raise ValueError(f"--cubic_solver must be one of {SOLVERS}, got {self.cubic_solver!r}.")
        if not is_real(self.cubic_M) or not self.cubic_M > 0:
            raise ValueError(f"--cubic_M must be a number > 0, got {self.cubic_M!r}.")
        if self.cubic_M_rule not in ("fixed", "adaptive"):
            raise ValueError(f"--cubic_M_rule must be 'fixed' or 'adaptive', got {self.cubic_M_rule!r}.")
        if self.cubic_M_rule == "adaptive" and self.cubic_momentum != "none":
            raise ValueError(
                f"--cubic_M_rule adaptive needs --cubic_momentum none (got {self.cubic_momentum!r}): the adaptive "
                "rule's acceptance test only holds for the gradient at the current point (deterministic use). Use "
                "--cubic_M_rule fixed with momentum."
            )
        # every other option as CubicNewton checks it, now rather than when train() builds the optimizer
        try:
            CubicNewton([torch.zeros(1, requires_grad=True)], **self.cubic_newton_kwargs())
        except ValueError as err:
            raise ValueError(
                f"{err} (CubicNewtonTrainingArguments: `M` is --cubic_M, `lr` is --learning_rate, `cubic_convention` "
                "is --cubic_convention, and any other keyword `x` is --cubic_x.)"
            ) from None

    def cubic_newton_kwargs(self) -> dict:
        """The keyword arguments of the `CubicNewton` that `CubicNewtonTrainer` builds from these arguments."""
        return dict(
            M=self.cubic_M,
            lr=self.learning_rate,
            momentum=self.cubic_momentum,
            alpha=self.cubic_alpha,
            beta=self.cubic_beta,
            alpha_power=self.cubic_alpha_power,
            beta_power=self.cubic_beta_power,
            max_extrapolation=self.cubic_max_extrapolation,
            hessian=self.cubic_hessian,
            hessian_window=self.cubic_hessian_window,
            solver=self.cubic_solver,
            krylov_dim=self.cubic_krylov_dim,
            gd_iters=self.cubic_gd_iters,
            M_rule=self.cubic_M_rule,
            M_min=self.cubic_M_min,
            M_max=self.cubic_M_max,
            max_step_norm=self.cubic_max_step_norm,
            cubic_convention=self.cubic_convention,
            hvp_mode=self.cubic_hvp_mode,
        )


class _CubicStatsCallback(TrainerCallback):
    def __init__(self, trainer: CubicNewtonTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        opt = self.trainer._cubic_optimizer()
        if opt is not None and opt.last_stats is not None:
            self.trainer.cubic_history.append(opt.last_stats)
            self.trainer._stats_window.append(opt.last_stats)


class CubicNewtonTrainer(LossWindowResumeMixin, SafetensorsOptimizerStateMixin, Trainer):
    """A `Trainer` whose optimizer is `CubicNewton`.

    `training_step` does no backward pass: it hands the optimizer a closure that builds `f(flat_params)` for the
    current batch with `torch.func.functional_call` (model in eval mode so dropout masks cannot differ between the
    gradient and its Hessian-vector products; BatchNorm running statistics therefore stay as they are, and the
    trainer warns about such layers); `optimizer.step()` then computes the gradient, the HVPs and the cubic step.
    Logs add `cubic/model_decrease` and `cubic/step_norm` (means since the last log), `cubic/M` (the last step's
    M, in `--cubic_convention`, as `--cubic_M` is given) and `cubic/oracle_calls` (cumulative gradient + Hessian +
    HVP evaluations). A batch whose gradient, Hessian or HVPs are not finite (e.g. a NaN feature) makes the step raise
    a `ValueError` with every `--cubic_solver`, before the weights or the optimizer state change. Optimizer state (gradient/Hessian
    estimates, previous point, counters) is checkpointed as safetensors + JSON.

    Requirements (checked at construction): eager or sdpa attention for HF models (sdpa, and modules calling torch's
    SDPA themselves, e.g. `nn.MultiheadAttention`, run it on its math backend in each step's loss function), no gradient checkpointing,
    `gradient_accumulation_steps=1`, one process (the functional step does not all-reduce), float32 or float64
    trainable parameters (`--bf16/--fp16` are refused by the arguments, a model already in low precision here).
    """

    # compares its optimizer options flag by flag after the checkpoint's are restored (`_load_optimizer_and_scheduler`)
    compares_optimizer_options_on_resume = True

    def __init__(self, model=None, args: TrainingArguments | None = None, **kwargs):
        if args is None:
            args = CubicNewtonTrainingArguments(output_dir="trainer_output")
        if not isinstance(args, CubicNewtonTrainingArguments):
            raise TypeError("CubicNewtonTrainer needs `args` to be a CubicNewtonTrainingArguments instance.")
        if model is None:
            raise ValueError("CubicNewtonTrainer needs a `model` (model_init is not supported).")
        check_second_order_support(model)
        low = sorted(
            {str(p.dtype) for p in model.parameters() if p.requires_grad} - {"torch.float32", "torch.float64"}
        )
        if low:
            raise ValueError(
                f"CubicNewtonTrainer needs float32 (or float64) trainable parameters, got {', '.join(low)}: "
                "Hessian-vector products in low precision are too noisy for the cubic model. Convert the model with "
                "`model.float()` before building the trainer."
            )
        dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if args.cubic_hessian == "dense" and dim > DENSE_MAX_DIM:
            # CubicNewton refuses it when train() builds the optimizer, naming its keyword arguments, not the flags
            raise ValueError(
                f"--cubic_hessian dense keeps a {dim}x{dim} Hessian of the model's {dim} trainable parameters, above "
                f"CubicNewton's limit of {DENSE_MAX_DIM}: use --cubic_hessian window or fresh with --cubic_solver "
                "lanczos (or gd) for this model."
            )
        if kwargs.get("optimizers", (None, None))[0] is not None:
            raise ValueError("CubicNewtonTrainer builds its own CubicNewton optimizer; do not pass `optimizers`.")
        if kwargs.get("optimizer_cls_and_kwargs") is not None:
            raise ValueError(
                "CubicNewtonTrainer builds its own CubicNewton optimizer; do not pass `optimizer_cls_and_kwargs` (it "
                "would be ignored). Set CubicNewton's options with the --cubic_* training arguments."
            )
        _refuse_multiple_processes(args.world_size)
        _warn_about_frozen_running_stats(model)
        super().__init__(model=model, args=args, **kwargs)
        if self.neftune_noise_alpha is not None:  # set on `args` after they were checked
            raise ValueError(
                f"CubicNewtonTrainer: neftune_noise_alpha={self.neftune_noise_alpha} would be ignored (NEFTune adds noise "
                "only in training mode; the cubic step runs the model in eval mode). Set args.neftune_noise_alpha=None."
            )
        if self.compute_loss_func is not None or type(self).compute_loss is not Trainer.compute_loss:
            raise ValueError(
                "CubicNewtonTrainer builds each step's loss function from the model's own loss (`outputs.loss`); a "
                "`compute_loss_func` or a `compute_loss` override would be bypassed in training (and used by "
                "evaluate()). Put the loss into the model's forward instead."
            )
        self.cubic_history: list = []
        self._stats_window: list = []
        self.add_callback(_CubicStatsCallback(self))

    def _cubic_optimizer(self) -> CubicNewton | None:
        opt = self.optimizer
        while opt is not None and not isinstance(opt, CubicNewton):
            opt = getattr(opt, "optimizer", None)
        return opt

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            params = [p for p in (self.model if model is None else model).parameters() if p.requires_grad]
            self.optimizer = CubicNewton(params, **self.args.cubic_newton_kwargs())
        return self.optimizer

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # the cubic/* log values are means over the steps since the last log: a new call starts with none (an
        # interrupted call's would leak into the first log), and a resumed one takes its checkpoint's
        self._stats_window = []
        # `cubic_history` as this call found it: each attempt of the loop starts from there (`_inner_training_loop`)
        self._history_at_train_start = len(self.cubic_history)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _inner_training_loop(self, *args, **kwargs):
        # Each run of the loop (once per `train()` call, and again for each retry of `auto_find_batch_size` after an
        # out-of-memory error, which restarts at step 0 or at the resumed checkpoint's step) starts with the stats of
        # this call's start: a failed attempt's steps would otherwise stay in `cubic_history` and in the window of
        # the first cubic/* log. A resume then loads its checkpoint's window (`_load_optimizer_and_scheduler`).
        self._stats_window = []
        del self.cubic_history[getattr(self, "_history_at_train_start", len(self.cubic_history)) :]
        return super()._inner_training_loop(*args, **kwargs)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            from ..utils.io import atomic_write_json

            window = [asdict(stats) for stats in self._stats_window]
            atomic_write_json(os.path.join(output_dir, STATS_WINDOW_NAME), window, None)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self._cubic_optimizer() is not None:
            self._refuse_changed_options(checkpoint)
        path = os.path.join(checkpoint, STATS_WINDOW_NAME) if checkpoint is not None else None
        if path is not None and os.path.isfile(path):  # none in older checkpoints: the first log covers fewer steps
            with open(path, encoding="utf-8") as fh:
                self._stats_window = [CubicStepStats(**stats) for stats in json.load(fh)]
        opt = self._cubic_optimizer()
        if checkpoint is not None and opt is not None:
            module = self.accelerator.unwrap_model(self.model)
            device = self.args.device

            def make_loss(sample):
                batch = {k: v.to(device) for k, v in sample.items()}
                return make_flat_loss(module, batch)[0]

            opt.rebuild_window(make_loss)

    def _refuse_changed_options(self, checkpoint: str) -> None:
        """Refuse a resume whose `--cubic_*` options differ from the checkpoint's: torch's `load_state_dict` restores
        the whole param group, where CubicNewton keeps its configuration, so the run would silently go on with the
        checkpoint's options while its arguments (and every later checkpoint's `training_args.bin`) name the new ones.
        Not compared: `lr` (the lr scheduler sets it every step) and, under `--cubic_M_rule adaptive`, `M` (the rule
        changes it every step)."""
        group = self._cubic_optimizer().param_groups[0]
        expected = self.args.cubic_newton_kwargs()
        adaptive = "adaptive" in (group.get("M_rule"), expected["M_rule"])
        changed = []
        for key, new in expected.items():
            if key == "lr" or (key == "M" and adaptive):
                continue
            saved = group.get(key)
            if saved != new:
                flag = f"--{key}" if key.startswith("cubic_") else f"--cubic_{key}"
                changed.append(f"{flag} {saved!r} in the checkpoint, {new!r} now")
        if changed:
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r} was trained with other CubicNewton options: "
                f"{'; '.join(changed)}. A resume restores the checkpoint's optimizer configuration, so the new values "
                "would be silently ignored. Resume with the checkpoint's values, or start a new run (from the "
                "checkpoint's weights, without resume_from_checkpoint) to use the new ones."
            )

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        model.eval()
        inputs = self._prepare_inputs(inputs)
        module = self.accelerator.unwrap_model(model)
        batch = {k: v for k, v in inputs.items()}
        # the batch goes with the closure so that a hessian="window" checkpoint can rebuild the window's loss functions
        sample = batch if all(isinstance(v, torch.Tensor) for v in batch.values()) else None
        self._cubic_optimizer().set_closure(lambda: make_flat_loss(module, batch)[0], sample=sample)
        with torch.no_grad():
            out = module(**batch)
        loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
        if loss is None:  # a ModelOutput without a loss used to raise a bare KeyError: 'loss'
            raise ValueError(
                f"The model returned no loss on a training batch with keys {sorted(batch)}: CubicNewtonTrainer "
                "differentiates the model's own loss (`outputs.loss`). Include `labels` in the batches (e.g. with "
                "`DataCollatorForLanguageModeling(tokenizer, mlm=False)` for a causal LM)."
            )
        return loss.detach()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        opt = self._cubic_optimizer()
        if "loss" in logs and self._stats_window and opt is not None:
            n = len(self._stats_window)
            logs["cubic/model_decrease"] = sum(s.model_decrease for s in self._stats_window) / n
            logs["cubic/step_norm"] = sum(s.step_norm for s in self._stats_window) / n
            logs["cubic/M"] = self._stats_window[-1].M
            st = opt._st
            logs["cubic/oracle_calls"] = float(st["grad_evals"] + st["hess_evals"] + st["hvp_evals"])
            self._stats_window = []
        # Trainer's `grad_norm` is the norm of `.grad`, which the closure-based cubic step never fills (it was logged
        # as 0.0 at every step); the cubic/* values are this trainer's own measurements.
        logs.pop("grad_norm", None)
        super().log(logs, start_time)
