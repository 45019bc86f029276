"""`NeuralGrokTrainer`: a `Trainer` with NeuralGrok's bilevel amplifier, the Grokfast filters, AGE/AWE logging."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState

from ..utils.checks import is_bool as _is_bool
from ..utils.checks import is_int as _is_int
from ..utils.checks import is_real as _is_real
from ..utils.checks import reentrant_checkpointing, refuse_optimizer_flags
from ..utils.decay import ModelDecayNamesMixin
from ..utils.distributed import is_dtensor
from ..utils.evaluation import EvalRowsOnceMixin
from ..utils.fsdp_save import WholeModelSaveMixin
from ..utils.io import atomic_open, atomic_write_json
from ..utils.resume import LossWindowResumeMixin
from .amplifier import NeuralAmplifier, amplifier_outer_step
from .metrics import _answer_correct_rows, absolute_weight_entropy, weight_norm
from .optim import GradFilterOptimizer, GradientTransformOptimizer, GradNormOptimizer, NeuralGrokOptimizer
from .state import load_state, save_state, state_exists

logger = logging.getLogger(__name__)

GRADIENT_TRANSFORMS = ("none", "neuralgrok", "normalize", "grokfast_ema", "grokfast_ma")
# Where the outer step's gradient g_hat comes from (see `NeuralGrokConfig.outer_gradient`).
OUTER_GRADIENTS = ("recompute", "next_step")
# Transforms that clip after rewriting the gradient (a positive `max_grad_norm` would clip before them).
CLIPPING_TRANSFORMS = ("neuralgrok", "normalize")
AMPLIFIER_NAME = "neuralgrok_amplifier.safetensors"
# the folder `save_model()` writes the trained amplifier to (`NeuralAmplifier.save_pretrained`)
AMPLIFIER_FOLDER = "neuralgrok_amplifier"
META_OPTIMIZER_PREFIX = "neuralgrok_meta_optimizer"
TRANSFORM_STATE_PREFIX = "gradient_transform_state"
TRAINER_STATE_NAME = "neuralgrok_state.json"
# `NeuralGrokConfig`'s own bool fields, type-checked in `__post_init__`
SWITCHES = ("grokfast_warmup", "coupled_weight_decay", "track_entropy", "track_train_accuracy")


@dataclass
class NeuralGrokConfig(TrainingArguments):
    r"""
    [`TrainingArguments`] for [`NeuralGrokTrainer`]. Defaults follow the NeuralGrok reference setup (the reference
    code's `torch.optim.Adam` with coupled L2 weight decay 1e-3, batch 512, lr 1e-3, betas (0.9, 0.98), 10 warm-up
    steps, then constant lr; T = 4; meta-Adam lr 1e-4) except the amplifier width, which defaults to the paper text's
    hidden 32 (see `amplifier_hidden_dims`). `coupled_weight_decay=False` uses `args.optim` (AdamW) instead; with it
    we measured no speed-up from NeuralGrok (see docs/neuralgrok.md). With `coupled_weight_decay=True` a non-default
    `optim`, `optim_args` or `optim_target_modules` is refused (it would be ignored).

    `max_grad_norm` defaults to 0: NeuralGrok clips *after* its transform (`amplifier_clip_norm`); a positive
    `max_grad_norm` would clip the raw gradient before it and is rejected with `gradient_transform="neuralgrok"` or
    `"normalize"`.
    """

    gradient_transform: str = field(
        default="neuralgrok",
        metadata={
            "help": "Gradient transform before the base optimizer: none, neuralgrok, normalize (the control: "
            "NeuralGrok with a uniform amplifier, i.e. per-tensor normalisation to amplifier_c, then the same clip), "
            "grokfast_ema, grokfast_ma."
        },
    )
    amplifier_hidden_dims: list[int] = field(
        default_factory=lambda: [32, 32],
        metadata={"help": "Hidden widths of the amplifier MLP 1 -> h... -> 1 (reference code: 64 128 64)."},
    )
    amplifier_c: float = field(
        default=1.0, metadata={"help": "Norm c of each transformed gradient tensor (neuralgrok and normalize)."}
    )
    amplifier_clip_norm: float = field(
        default=1.0, metadata={"help": "Global-norm clip applied after the transform (neuralgrok, normalize; 0: off)."}
    )
    outer_every: int = field(default=4, metadata={"help": "Period T: one amplifier (outer) update every T steps."})
    outer_gradient: str = field(
        default="recompute",
        metadata={
            "help": "Gradient the outer step transforms. recompute (the reference): after every T-th step, the "
            "gradient of that step's batch at the new parameters, one extra forward/backward of the model. next_step: "
            "the outer step runs at the start of the following step's optimizer step and transforms that step's own "
            "gradient (the same parameters, the next batch), so it needs no extra forward/backward."
        },
    )
    meta_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the amplifier's Adam."})
    meta_weight_decay: float = field(
        default=1e-3,
        metadata={
            "help": "Weight decay of the amplifier's Adam. Not tied to weight_decay (the reference code uses the base "
            "optimizer's weight decay; equal at the default 1e-3): pass the same value to follow it."
        },
    )
    virtual_lr: float | None = field(
        default=None,
        metadata={
            "help": "Step size of the virtual SGD step in the outer loss; default: the lr of the last real step (the "
            "base learning rate where that is 0, at the first step of a warm-up)."
        },
    )
    outer_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Batch size for the outer loss; default: per_device_train_batch_size. Memory only: the outer loss "
            "is the mean over all labelled tokens of the outer set, however it is batched."
        },
    )
    outer_max_samples: int | None = field(
        default=None,
        metadata={"help": "Use a fixed random sample of this many outer examples (default: the whole outer set)."},
    )
    grokfast_alpha: float = field(default=0.98, metadata={"help": "Grokfast-EMA momentum alpha."})
    grokfast_lamb: float | None = field(
        default=None, metadata={"help": "Grokfast amplification lambda; default 2.0 for EMA, 5.0 for MA."}
    )
    grokfast_window: int = field(default=100, metadata={"help": "Grokfast-MA window size."})
    grokfast_warmup: bool = field(default=True, metadata={"help": "Grokfast-MA: filter off until the window is full."})
    coupled_weight_decay: bool = field(
        default=True,
        metadata={
            "help": "Use torch.optim.Adam with L2 weight decay added to the gradient on every parameter (the reference "
            "code; the setting in which NeuralGrok's speed-up reproduces). With NeuralGrok the L2 term is added after "
            "the transform. False: args.optim (AdamW by default, decoupled weight decay)."
        },
    )
    track_entropy: bool = field(
        default=True, metadata={"help": "Log AGE of raw/transformed gradients and AWE of the weights."}
    )
    track_train_accuracy: bool = field(
        default=True, metadata={"help": "Log the accuracy of the labelled tokens on the training batches."}
    )
    # Reference-code defaults.
    per_device_train_batch_size: int = field(default=512, metadata={"help": "Batch size per device."})
    per_device_eval_batch_size: int = field(default=1024, metadata={"help": "Evaluation batch size per device."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Base optimizer learning rate."})
    adam_beta2: float = field(default=0.98, metadata={"help": "Adam beta2 (base and meta optimizer)."})
    weight_decay: float = field(default=1e-3, metadata={"help": "Base optimizer weight decay."})
    warmup_steps: float = field(default=10, metadata={"help": "Linear warm-up steps."})
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "Learning-rate schedule."})
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Clip of the raw gradient before any transform (0 = off; see the class doc)."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing strategy."})

    def __post_init__(self):
        if self.gradient_transform not in GRADIENT_TRANSFORMS:
            raise ValueError(
                f"gradient_transform={self.gradient_transform!r} must be one of {list(GRADIENT_TRANSFORMS)}."
            )
        if not _is_int(self.outer_every) or self.outer_every < 1:
            raise ValueError(f"outer_every={self.outer_every!r} must be a positive int (the period T).")
        if self.outer_gradient not in OUTER_GRADIENTS:
            raise ValueError(f"outer_gradient={self.outer_gradient!r} must be one of {list(OUTER_GRADIENTS)}.")
        self._check_amplifier_arguments()
        if self.virtual_lr is not None and (not _is_real(self.virtual_lr) or not 0 < self.virtual_lr < math.inf):
            raise ValueError(
                f"virtual_lr={self.virtual_lr!r} must be a finite number > 0, or None for the base learning rate."
            )
        for name in ("outer_batch_size", "outer_max_samples"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name}={value!r} must be a positive int or None.")
        if self.grokfast_lamb is not None and (not _is_real(self.grokfast_lamb) or not math.isfinite(self.grokfast_lamb)):
            raise ValueError(
                f"grokfast_lamb={self.grokfast_lamb!r} must be a finite number (or None for the default)."
            )
        if not _is_real(self.grokfast_alpha) or not 0.0 <= self.grokfast_alpha < 1.0:
            raise ValueError(f"grokfast_alpha={self.grokfast_alpha!r} must be a number in [0, 1).")
        for name in SWITCHES:
            value = getattr(self, name)
            if not _is_bool(value):
                raise ValueError(
                    f"{name}={value!r} must be a bool (True or False); a string such as 'false' would count as True."
                )
        if not _is_int(self.grokfast_window) or self.grokfast_window < 1:
            raise ValueError(f"grokfast_window={self.grokfast_window!r} must be a positive int (the MA window size).")
        self._check_base_optimizer_arguments()
        self._store_python_types()
        if self.gradient_transform in CLIPPING_TRANSFORMS and self.max_grad_norm and self.max_grad_norm > 0:
            raise ValueError(
                f"max_grad_norm={self.max_grad_norm} would clip the raw gradient before the {self.gradient_transform} "
                "transform. "
                "Set max_grad_norm=0 and use amplifier_clip_norm (clipping after the transform, as in the paper)."
            )
        super().__post_init__()

    def _check_amplifier_arguments(self) -> None:
        """The amplifier's and its meta-Adam's options; also checked when `NeuralGrokTrainer` rebuilds the amplifier
        for a `train()` with `model_init` (a hyperparameter-search trial sets them on these arguments unchecked)."""
        dims = self.amplifier_hidden_dims
        if not isinstance(dims, list | tuple) or not dims or any(not _is_int(h) or h <= 0 for h in dims):
            raise ValueError(
                f"amplifier_hidden_dims={dims!r} must be a list of positive ints, e.g. [32, 32] (--amplifier_hidden_dims "
                "32 32)."
            )
        # numbers must be numbers (`True` passed `0 < True < inf` and acted as 1; a string failed only in torch) and
        # switches bools (the string "false" is truthy)
        if not _is_real(self.amplifier_c) or not 0 < self.amplifier_c < math.inf:
            raise ValueError(f"amplifier_c={self.amplifier_c!r} must be a finite number > 0.")
        # inf: no clipping; NaN would turn every update into NaN
        if not _is_real(self.amplifier_clip_norm) or not self.amplifier_clip_norm >= 0:
            raise ValueError(f"amplifier_clip_norm={self.amplifier_clip_norm!r} must be a number >= 0 (0 disables it).")
        if not _is_real(self.meta_learning_rate) or not 0 < self.meta_learning_rate < math.inf:
            raise ValueError(f"meta_learning_rate={self.meta_learning_rate!r} must be a finite number > 0.")
        if not _is_real(self.meta_weight_decay) or not 0 <= self.meta_weight_decay < math.inf:
            raise ValueError(
                f"meta_weight_decay={self.meta_weight_decay!r} (the amplifier's Adam weight decay) must be a finite "
                "number >= 0."
            )

    def _store_python_types(self) -> None:
        """Store this class's checked numbers and switches as Python `int` / `float` / `bool`: numpy values pass the
        checks, and would make `to_json_string()` (logged by e.g. the TensorBoard callback) fail."""
        self.outer_every = int(self.outer_every)
        self.amplifier_hidden_dims = [int(h) for h in self.amplifier_hidden_dims]
        self.grokfast_window = int(self.grokfast_window)
        for name in ("outer_batch_size", "outer_max_samples"):
            if getattr(self, name) is not None:
                setattr(self, name, int(getattr(self, name)))
        reals = ("amplifier_c", "amplifier_clip_norm", "meta_learning_rate", "meta_weight_decay", "grokfast_alpha")
        for name in (*reals, "virtual_lr", "grokfast_lamb"):
            if getattr(self, name) is not None:  # virtual_lr and grokfast_lamb may be None
                setattr(self, name, float(getattr(self, name)))
        for name in SWITCHES:
            setattr(self, name, bool(getattr(self, name)))

    def _check_base_optimizer_arguments(self) -> None:
        """Refuse, by name, base-optimizer options that would be ignored or that torch's Adam (base and meta optimizer)
        would refuse only when the trainer or `train()` builds it."""
        if self.coupled_weight_decay:  # create_optimizer builds torch.optim.Adam itself: --optim and its options unread
            refuse_optimizer_flags(
                self,
                "with coupled_weight_decay=True (the default, the reference setup) NeuralGrokTrainer always builds "
                "torch.optim.Adam with coupled L2 weight decay (--learning_rate, --adam_beta1/--adam_beta2, "
                "--adam_epsilon, --weight_decay)",
                "Drop --optim, or set coupled_weight_decay=False to train with the optimizer --optim names.",
                "Drop it, or set coupled_weight_decay=False to use --optim and its options.",
            )
        if not _is_real(self.learning_rate) or not 0.0 <= self.learning_rate < math.inf:
            raise ValueError(f"--learning_rate must be a finite number >= 0, got {self.learning_rate!r}.")
        if self.gradient_transform == "neuralgrok" and self.virtual_lr is None and self.learning_rate == 0:
            raise ValueError(
                "--learning_rate 0 with gradient_transform='neuralgrok' leaves the outer step without a virtual step "
                "size (virtual_lr defaults to the learning rate): set --learning_rate > 0 or give virtual_lr."
            )
        if not _is_real(self.weight_decay) or not 0.0 <= self.weight_decay < math.inf:
            raise ValueError(
                f"--weight_decay must be a finite number >= 0 (0 disables it), got {self.weight_decay!r}."
            )
        if not _is_real(self.adam_epsilon) or not 0.0 <= self.adam_epsilon < math.inf:
            raise ValueError(f"--adam_epsilon must be a finite number >= 0, got {self.adam_epsilon!r}.")
        for name in ("adam_beta1", "adam_beta2"):  # the base Adam's and the amplifier's meta-Adam's betas
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"--{name} must lie in [0, 1), got {value!r}.")



def transform_options(args, transform=None) -> dict:
    """The options of the gradient transform that live only on its wrapper (attributes, in no state dict): the
    amplifier's clip norm (neuralgrok, normalize), the outer period T (neuralgrok) and the Grokfast filter's alpha,
    lambda, window and warmup. Read from `transform` (the run's wrapper) where given, else as `args` builds it; recorded
    in each checkpoint's `neuralgrok_state.json` and compared on resume ([`resume_option_mismatches`])."""
    kind = args.gradient_transform
    out = {}
    if kind in CLIPPING_TRANSFORMS:
        clip = getattr(transform, "clip_norm", None) if transform is not None else (args.amplifier_clip_norm or None)
        out["amplifier_clip_norm"] = float(clip or 0.0)
    if kind == "neuralgrok":
        out["outer_every"] = int(args.outer_every)
    if kind in ("grokfast_ema", "grokfast_ma"):
        if transform is not None and hasattr(transform, "lamb"):
            alpha, lamb, window, warmup = transform.alpha, transform.lamb, transform.window, transform.warmup
        else:
            default_lamb = 2.0 if kind == "grokfast_ema" else 5.0
            lamb = args.grokfast_lamb if args.grokfast_lamb is not None else default_lamb
            alpha, window, warmup = args.grokfast_alpha, args.grokfast_window, args.grokfast_warmup
        out["grokfast_lamb"] = float(lamb)
        if kind == "grokfast_ema":
            out["grokfast_alpha"] = float(alpha)
        else:
            out.update(grokfast_window=int(window), grokfast_warmup=bool(warmup))
    return out


BASE_OPTIMIZER_OPTIONS = ("adam_beta1", "adam_beta2", "adam_epsilon")


def base_optimizer_options(args, optimizer, read_flags=None) -> dict:
    """The Adam options (`adam_beta1`, `adam_beta2`, `adam_epsilon`) that the base optimizer's first param group took
    from `args` (its `betas` / `eps` equal to them), as `{flag: value}`; recorded in each checkpoint's
    `neuralgrok_state.json`, for every gradient transform, and compared on resume ([`resume_option_mismatches`]): the
    param groups bring the checkpoint's values back, so a resume with other flags would silently train with the old
    ones. An optimizer without them (SGD, Adafactor's pair of `eps`, a default it did not take from the flags) records
    nothing, so a resume is not refused over flags that optimizer never read.

    `read_flags` (the flags the optimizer was built from, when known; `NeuralGrokTrainer` knows it for the optimizers
    it builds, and for one passed to it, which read none) limits the record to them: RMSprop's own default `eps`
    (1e-8) equals `--adam_epsilon`'s, but transformers builds RMSprop from `--learning_rate` alone."""
    groups = getattr(optimizer, "param_groups", None) or []
    if not groups:
        return {}
    read = set(BASE_OPTIMIZER_OPTIONS if read_flags is None else read_flags)
    group, out = groups[0], {}
    betas = group.get("betas")
    if {"adam_beta1", "adam_beta2"} <= read and isinstance(betas, (tuple, list)) and len(betas) == 2:
        if all(_is_real(b) for b in betas) and (float(betas[0]), float(betas[1])) == (
            float(args.adam_beta1),
            float(args.adam_beta2),
        ):
            out.update(adam_beta1=float(betas[0]), adam_beta2=float(betas[1]))
    eps = group.get("eps")
    if "adam_epsilon" in read and _is_real(eps) and float(eps) == float(args.adam_epsilon):
        out["adam_epsilon"] = float(eps)
    return out


def _adam_flags_read(args, model) -> set[str]:
    """The Adam flags transformers' `Trainer` reads when it builds the optimizer `args.optim` names (the `betas` /
    `eps` of its optimizer kwargs)."""
    try:
        _, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    except (ImportError, ValueError):  # an optimizer whose package is missing fails in create_optimizer itself
        return set(BASE_OPTIMIZER_OPTIONS)
    read = set()
    if "betas" in kwargs:
        read |= {"adam_beta1", "adam_beta2"}
    if "eps" in kwargs:
        read.add("adam_epsilon")
    return read


def resume_option_mismatches(
    info: dict,
    meta_state: dict | None,
    args,
    amplifier_c: float | None = None,
    options: dict | None = None,
    amplifier_hidden_dims=None,
) -> list:
    """Options of `args` that a resume from a `NeuralGrokTrainer` checkpoint would not apply, as
    `(option, checkpoint's value, args' value)` triples (empty: none differ). The one comparison behind
    `NeuralGrokTrainer`'s resume and the neuralgrok recipe's check of `--resume_from_checkpoint`.

    - `weight_decay` and `adam_beta1`/`adam_beta2`/`adam_epsilon` (the base optimizer's, as `info` records them,
      [`base_optimizer_options`]; every gradient transform): its param groups bring the checkpoint's back;
    - `coupled_weight_decay` (the base optimizer's class, where the trainer built it): torch Adam's single param
      group and `args.optim`'s decay / no-decay groups do not load into each other;
    - `outer_gradient` (neuralgrok): where the checkpoint's amplifier took its outer steps' gradient (and whether an
      outer step is pending in it);
    - `meta_learning_rate`, `meta_weight_decay`, `adam_beta1`/`adam_beta2` against the meta-Adam's restored param
      group (`meta_state`, the saved `state_dict()`; `gradient_transform="neuralgrok"`);
    - `amplifier_c` (neuralgrok, normalize) against `info`'s record: an attribute, not in any state dict, so a resume
      used to take the new value silently. `amplifier_c` overrides `args.amplifier_c` (a trainer given its own
      amplifier uses that amplifier's `c`);
    - the wrapper's other options ([`transform_options`]: `amplifier_clip_norm`, `outer_every`, `grokfast_alpha`,
      `grokfast_lamb`, `grokfast_window`, `grokfast_warmup`) against `info`'s record, likewise; `options` (the run's
      own, from its wrapper) overrides the values `args` gives;
    - `amplifier_hidden_dims` (neuralgrok) against `info`'s record, as lists: the amplifier's shape, so that other
      widths are refused by name before anything is loaded (loading the checkpoint's amplifier into them failed with
      torch's size mismatch, after the model weights and the base optimizer had been restored).
      `amplifier_hidden_dims` overrides `args.amplifier_hidden_dims` (a trainer given its own amplifier uses its
      widths).

    Values a checkpoint does not record (older checkpoints) are not compared.

    Args:
        info (`dict`): the checkpoint's `neuralgrok_state.json`.
        meta_state (`dict`, *optional*): the checkpoint's meta-optimizer state (`neuralgrok_meta_optimizer.*`).
        args ([`NeuralGrokConfig`]): the arguments of the resumed run.
    """
    out = []

    def compare(name, saved, new):
        if saved is not None and float(saved) != float(new) and name not in {n for n, _, _ in out}:
            out.append((name, saved, new))

    compare("weight_decay", info.get("weight_decay"), args.weight_decay)
    saved_coupled = info.get("coupled_weight_decay")
    if saved_coupled is not None and bool(saved_coupled) != bool(args.coupled_weight_decay):
        out.append(("coupled_weight_decay", bool(saved_coupled), bool(args.coupled_weight_decay)))
    # a neuralgrok checkpoint written before the mode was recorded took its outer gradient by recomputation, as
    # train() reads it: both checks must agree (the recipe's early one let such a checkpoint through to train())
    saved_outer = info.get("outer_gradient", "recompute") if info.get("gradient_transform") == "neuralgrok" else None
    if args.gradient_transform == "neuralgrok" and saved_outer is not None and saved_outer != args.outer_gradient:
        out.append(("outer_gradient", saved_outer, args.outer_gradient))
    for name in BASE_OPTIMIZER_OPTIONS:
        compare(name, info.get(name), getattr(args, name))
    for name, value in (transform_options(args) if options is None else options).items():
        compare(name, info.get(name), value)
    if args.gradient_transform in CLIPPING_TRANSFORMS:
        compare("amplifier_c", info.get("amplifier_c"), args.amplifier_c if amplifier_c is None else amplifier_c)
    saved_dims = info.get("amplifier_hidden_dims")
    if args.gradient_transform == "neuralgrok" and saved_dims is not None:
        dims = args.amplifier_hidden_dims if amplifier_hidden_dims is None else amplifier_hidden_dims
        if [int(h) for h in saved_dims] != [int(h) for h in dims]:
            out.append(("amplifier_hidden_dims", [int(h) for h in saved_dims], [int(h) for h in dims]))
    groups = (meta_state or {}).get("param_groups") or []
    if args.gradient_transform == "neuralgrok" and groups:
        group = groups[0]
        compare("meta_learning_rate", group.get("lr"), args.meta_learning_rate)
        compare("meta_weight_decay", group.get("weight_decay"), args.meta_weight_decay)
        betas = group.get("betas")
        if betas is not None:
            compare("adam_beta1", betas[0], args.adam_beta1)
            compare("adam_beta2", betas[1], args.adam_beta2)
    return out


class _OuterStepCallback(TrainerCallback):
    """Runs the amplifier update after the optimizer step of every T-th step (and drops stored batches)."""

    def __init__(self, trainer: NeuralGrokTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # after a resume has loaded the checkpoint, before the first step
        self.trainer._broadcast_amplifier()
        every, first, last = self.trainer.args.outer_every, state.global_step, state.max_steps
        if self.trainer.args.outer_gradient == "next_step":
            # an outer step runs at the step after a multiple of outer_every (one at `last` waits for a step this run
            # does not take), and at the first step when the resumed checkpoint left one pending
            falls = self.trainer._outer_due or first // every < (last - 1) // every
        else:
            falls = first // every < last // every
        if first < last and not falls:
            logger.warning(
                "outer_every=%d: no amplifier (outer) update falls in steps %d..%d of this run, so the amplifier "
                "stays as it is and the run is a fixed gradient transform; lower outer_every "
                "or train for more steps.",
                every, state.global_step + 1, state.max_steps,
            )  # fmt: skip

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._after_optimizer_step(state.global_step)


def _find_transform(optimizer) -> GradientTransformOptimizer | None:
    """The `GradientTransformOptimizer` in `optimizer`'s chain of wrappers (accelerate's `AcceleratedOptimizer` keeps
    the wrapped one as `.optimizer`), or `None`."""
    seen = 0
    while optimizer is not None and seen < 16:
        if isinstance(optimizer, GradientTransformOptimizer):
            return optimizer
        optimizer, seen = getattr(optimizer, "optimizer", None), seen + 1
    return None


def _transform_kind(transform: GradientTransformOptimizer) -> str:
    """The `gradient_transform` a wrapper implements (a subclass counts as its built-in base; a custom transform on
    `GradientTransformOptimizer` as `"none"`, no built-in transform)."""
    if isinstance(transform, NeuralGrokOptimizer):
        return "neuralgrok"
    if isinstance(transform, GradNormOptimizer):
        return "normalize"
    if isinstance(transform, GradFilterOptimizer):
        return f"grokfast_{transform.mode}"
    return "none"


def _given_transform(optimizers, args, amplifier) -> GradientTransformOptimizer | None:
    """The gradient-transform wrapper in the optimizer passed as `optimizers=(optimizer, scheduler)`, or `None`;
    refuses one that `args.gradient_transform` or `amplifier=` contradict (the trainer would train, log or checkpoint
    another transform than the one the optimizer applies)."""
    optimizer = optimizers[0] if isinstance(optimizers, (tuple, list)) and optimizers else None
    given = _find_transform(optimizer)
    if given is None:
        return None
    kind = _transform_kind(given)
    if kind != args.gradient_transform:
        raise ValueError(
            f"optimizers= holds a {type(given).__name__} (gradient_transform={kind!r}) but "
            f"args.gradient_transform={args.gradient_transform!r}: set gradient_transform={kind!r}, or pass the plain "
            "base optimizer (the trainer wraps it in the transform args name)."
        )
    if isinstance(given, NeuralGrokOptimizer) and amplifier is not None and amplifier is not given.amplifier:
        raise ValueError(
            "amplifier= is not the amplifier of the NeuralGrokOptimizer passed as optimizers= (that one transforms "
            "the gradients, and the trainer trains and checkpoints it): drop amplifier=, or pass the same object."
        )
    if given.before_transform is not None:
        raise ValueError(
            f"the {type(given).__name__} passed as optimizers= already has a before_transform hook (another "
            "NeuralGrokTrainer's next_step outer step?): pass a fresh wrapper, or the plain base optimizer."
        )
    return given


# torch dtype -> safetensors' dtype name (what `safe_open(...).get_slice(key).get_dtype()` returns)
_SAFETENSORS_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
}


def _seeded_amplifier(args) -> NeuralAmplifier:
    """The amplifier `NeuralGrokTrainer` builds from `args` (seed `args.seed`; the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        return NeuralAmplifier(tuple(int(h) for h in args.amplifier_hidden_dims), c=args.amplifier_c)


def reentrant_checkpointing_message(reentrant: str) -> str:
    """The refusal of `gradient_transform="neuralgrok"` under reentrant activation checkpointing (trainer and recipe)."""
    return (
        "gradient_transform='neuralgrok' differentiates through the model in its outer step (the amplifier's update), "
        f"which reentrant activation checkpointing does not support ({reentrant}): outer_gradient='recompute' fails "
        "at the first outer step, 'next_step' trains on wrong gradients. Set "
        "gradient_checkpointing_kwargs={'use_reentrant': False} (transformers 5's default, also when the key is left "
        "out) or turn gradient checkpointing off."
    )


@contextlib.contextmanager
def _keep_last_batch(args):
    """`args.dataloader_drop_last` off while an evaluation dataloader is built (see `NeuralGrokTrainer`)."""
    drop = args.dataloader_drop_last
    args.dataloader_drop_last = False
    try:
        yield
    finally:
        args.dataloader_drop_last = drop


class NeuralGrokTrainer(ModelDecayNamesMixin, EvalRowsOnceMixin, LossWindowResumeMixin, WholeModelSaveMixin, Trainer):
    r"""
    [`Trainer`] whose optimizer step transforms the gradient first, once per optimizer step (never per
    micro-batch): NeuralGrok's learned amplifier (then a global clip), a Grokfast EMA/MA filter, or nothing.

    With `args.gradient_transform="neuralgrok"`, every `args.outer_every` steps and after the real update, the
    amplifier takes one Adam step on the outer loss (see [`amplifier_outer_step`]): the gradient of the last inner
    batch's loss (as the step computed it, `compute_loss`) at the new parameters is transformed, a virtual SGD step is
    taken through `torch.func.functional_call`, and the loss on `outer_dataset` is backpropagated into the amplifier
    only. Recomputing that gradient is a full forward and backward of the model every T steps; with
    `args.outer_gradient="next_step"` the outer step instead runs inside the next optimizer step, before its transform,
    on the gradient that step has just computed (the same parameters, the next batch), which removes that cost (see
    docs/neuralgrok.md, "Cost").

    The amplifier, its meta-optimizer, the filter buffers and counters (and a pending `next_step` outer step) are
    written into every checkpoint as safetensors + JSON and restored by `train(resume_from_checkpoint=...)`. A resume
    with options that the checkpoint would override or records otherwise (`weight_decay`, `coupled_weight_decay`,
    `meta_learning_rate`, `meta_weight_decay`, `adam_beta1`/`adam_beta2`/`adam_epsilon`, `amplifier_c`,
    `amplifier_hidden_dims`:
    [`resume_option_mismatches`]) is refused before anything is restored (before the model's weights are loaded).

    With `"normalize"` every gradient tensor is rescaled to norm `amplifier_c` and clipped like NeuralGrok: the
    control with the amplifier's output fixed to uniform.

    Logged on top of the usual metrics: `train_accuracy` (labelled tokens of the training batches), `age_raw`,
    `age_transformed`, `grad_norm_raw`, `grad_norm_transformed`, `awe`, `weight_norm`, `outer_loss`.

    `args.dataloader_drop_last` drops the last partial batch of each training epoch only: an evaluation always covers
    every example of the eval set (transformers' `Trainer` drops the last partial eval batch too, which left a test
    accuracy over a subset that changes with the batch size, or no evaluation at all when the set is smaller than one
    eval batch).

    With `coupled_weight_decay=False` the AdamW that `Trainer` builds (`args.optim`) decays the parameters a model
    lists in its own `decay_parameter_names()` (FOG: trainable matrices only), as the other hf_ext trainers do
    (`hf_ext.utils.decay.ModelDecayNamesMixin`); other models keep `Trainer`'s name patterns. Until 2026-12-07 a FOG
    model got `Trainer`'s patterns here too (its xIELU scalars decayed): such a checkpoint resumes with its own groups.
    The reference optimizer (`coupled_weight_decay=True`) decays every parameter.

    Args:
        model: any model whose forward returns a `loss` from `labels` (e.g. [`GrokDecoderForCausalLM`] or a
            transformers causal LM built from a config).
        args ([`NeuralGrokConfig`]): training arguments.
        outer_dataset (`datasets.Dataset`, *optional*): D_outer, required for `gradient_transform="neuralgrok"`.
            Train on D_inner (`train_dataset`) and keep D_outer out of it. Its batches need the labels the outer loss
            (the model's own) is computed from: rows without them are refused here, unless the data collator adds
            them.
        amplifier ([`NeuralAmplifier`], *optional*): a ready amplifier; default: the amplifier of a
            [`NeuralGrokOptimizer`] passed as `optimizers=`, else built from `args` with seed `args.seed`. Under
            several processes rank 0's is broadcast to every rank at the start of `train()`. With `model_init`
            (e.g. `hyperparameter_search`), every `train()` re-creates the model and restarts the amplifier with it:
            rebuilt from the current `args` (a trial's `meta_learning_rate`, `amplifier_hidden_dims`, ... apply), or a
            given one reset to its state at construction, with a fresh meta-Adam; a resume then loads the
            checkpoint's.
        **kwargs: forwarded to [`Trainer`]. A gradient-transform wrapper passed as `optimizers=(wrapper, scheduler)`
            is the run's transform (logged, checkpointed); it must be of the kind `args.gradient_transform` names.
    """

    def __init__(self, model=None, args: NeuralGrokConfig | None = None, outer_dataset=None, amplifier=None, **kwargs):
        if args is None:
            args = NeuralGrokConfig(output_dir="trainer_output")
        if not isinstance(args, NeuralGrokConfig):
            raise TypeError(f"args must be a NeuralGrokConfig, got {type(args).__name__}.")
        given = _given_transform(kwargs.get("optimizers"), args, amplifier)
        built = False  # the amplifier is built here from `args` (not given)
        if isinstance(given, NeuralGrokOptimizer):
            amplifier = given.amplifier  # the amplifier that transforms the gradients is the one the outer step trains
        if args.gradient_transform == "neuralgrok":
            if outer_dataset is None:
                raise ValueError(
                    "gradient_transform='neuralgrok' needs outer_dataset (D_outer), e.g. "
                    "split_arithmetic_dataset(...)['outer']; or use gradient_transform='none'."
                )
            if not hasattr(outer_dataset, "__len__") or not hasattr(outer_dataset, "__getitem__"):
                # an IterableDataset failed here with "object of type 'IterableDataset' has no len()"
                raise TypeError(
                    f"outer_dataset must be a map-style dataset with a length (a `datasets.Dataset` or a list of rows), "
                    f"got {type(outer_dataset).__name__}: the outer loss is taken over the whole outer set (or a fixed "
                    "sample of it) at every outer step. Materialise a streamed one first, e.g. "
                    "`Dataset.from_list(list(outer_dataset.take(n)))`."
                )
            if len(outer_dataset) == 0:
                raise ValueError("outer_dataset is empty; give it at least one example.")
            if amplifier is not None and not isinstance(amplifier, NeuralAmplifier):
                raise TypeError(f"amplifier must be a NeuralAmplifier, got {type(amplifier).__name__}.")
            if amplifier is None:
                amplifier = _seeded_amplifier(args)
                built = True
        elif amplifier is not None:
            raise ValueError(
                f"amplifier is only used with gradient_transform='neuralgrok', not {args.gradient_transform!r}."
            )
        callbacks = list(kwargs.pop("callbacks", None) or [])
        super().__init__(model=model, args=args, callbacks=callbacks, **kwargs)
        if args.gradient_transform == "neuralgrok" and self.is_fsdp_enabled:
            # transformers builds the optimizer before FSDP2 shards the model, so the DTensor check in
            # `create_optimizer` cannot see it: refuse here, before any step (as GrapeTrainer does)
            raise ValueError(
                "gradient_transform='neuralgrok' does not run under FSDP (the outer step evaluates the model at "
                "virtual parameters through torch.func.functional_call, which FSDP's own all-gather bypasses). Train "
                "with DDP or one process, or use gradient_transform='normalize', 'grokfast_ema', 'grokfast_ma' or "
                "'none' under FSDP."
            )
        if args.gradient_transform == "neuralgrok":
            gc_kwargs = args.activation_checkpointing_kwargs if args.activation_checkpointing else None
            reentrant = reentrant_checkpointing(gc_kwargs, self.model)
            if reentrant:
                # refused here, not at the first outer step (after `outer_every` steps and their checkpoints)
                raise ValueError(reentrant_checkpointing_message(reentrant))
        self.outer_dataset = outer_dataset
        if args.gradient_transform == "neuralgrok":
            self._check_outer_labels()  # refused here, not at the first outer step (after T steps and checkpoints)
            self._check_outer_token_ids()  # likewise: an id out of the vocabulary failed deep in the embedding
        # a `train()` with `model_init` restarts the amplifier (`_hp_search_setup`): one built here from `args`, one
        # given (`amplifier=`) from its state now
        self._initial_amplifier_state = None
        if amplifier is not None and not built and self.model_init is not None:
            self._initial_amplifier_state = {k: v.detach().clone() for k, v in amplifier.state_dict().items()}
        self.amplifier = amplifier
        self.meta_optimizer = None
        if amplifier is not None:
            self._build_meta_optimizer()
            # First in line, so that callbacks timing a step (GrokkingCallback) include the outer step.
            self.callback_handler.callbacks.insert(0, _OuterStepCallback(self))
        # a wrapper passed as `optimizers=` is the run's transform (logged, checkpointed; next_step's hook set)
        self.transform_optimizer: GradientTransformOptimizer | None = None
        if given is not None:
            self._adopt_transform(given)
        self.num_outer_steps = 0
        self.last_outer_loss: float | None = None
        self._pending_batches: list[dict] = []
        self._pending_num_items = None  # the `num_items_in_batch` the pending batches' step got (None: none)
        self._outer_due = False  # outer_gradient="next_step": an outer step waits for the next step's gradient
        # lr of the last completed real step (`virtual_lr=None`): the next_step outer step runs inside the following
        # step's `optimizer.step()`, whose `last_lr` is already that step's
        self._last_step_lr: float | None = None
        # the Adam flags the base optimizer was built from (recorded in checkpoints); set in `create_optimizer`
        self._adam_flags_read: set[str] | None = None
        # whether the base optimizer was built from `args.coupled_weight_decay` (not the caller's); set in
        # `create_optimizer`
        self._coupled_flag_read = False
        self._outer_batches: list[dict] | None = None
        # `train_accuracy`: rows answered right and rows, of this rank's micro-batches not yet summed over the ranks
        # (`_acc_correct`, `_acc_rows`) and of the global batches already summed (`_acc_window`, the same on every
        # rank); both since the last log
        self._acc_correct, self._acc_rows = 0, 0
        self._acc_window = [0, 0]
        self._at_logging_step = False
        self._in_outer_step = False

    # ----------------------------------------------------------------- optimizer
    def _build_meta_optimizer(self) -> None:
        """The amplifier's Adam (fresh state), from the current `args`; the amplifier moved to the device first."""
        a = self.args
        self.amplifier.to(a.device)
        self.meta_optimizer = torch.optim.Adam(
            self.amplifier.parameters(),
            lr=a.meta_learning_rate,
            betas=(a.adam_beta1, a.adam_beta2),
            weight_decay=a.meta_weight_decay,
        )

    def _hp_search_setup(self, trial) -> None:
        # Trainer.train() calls this after `model_init` has re-created the model (and the optimizers are dropped), once
        # a hyperparameter-search trial's values are set on `args`, before a resume is loaded: with `model_init`
        # every `train()` (each trial) starts the amplifier as a new trainer would, from the current `args` (its seed,
        # widths, `amplifier_c`, `meta_learning_rate`, `meta_weight_decay`, betas), not from the previous call's
        # trained amplifier and meta-Adam state. A resume then loads the checkpoint's into them.
        super()._hp_search_setup(trial)
        if self.model_init is None or self.amplifier is None:
            return
        self.args._check_amplifier_arguments()  # a trial's values are set on `args` unchecked
        if self._initial_amplifier_state is None:
            self.amplifier = _seeded_amplifier(self.args)
        else:  # the caller's amplifier (`amplifier=`): its state when the trainer was built, in place
            self.amplifier.load_state_dict(self._initial_amplifier_state)
        self._build_meta_optimizer()
        self.transform_optimizer = None  # `create_optimizer` wraps the new base optimizer around this amplifier
        self.num_outer_steps = 0
        self.last_outer_loss = None
        self._outer_batches = None  # a trial may change outer_batch_size / outer_max_samples / seed

    def _adopt_transform(self, transform: GradientTransformOptimizer) -> None:
        """Make `transform` (built by `create_optimizer`, or passed ready as `optimizers=`) the run's wrapper."""
        self.transform_optimizer = transform
        if self.amplifier is not None and self.args.outer_gradient == "next_step":
            transform.before_transform = self._outer_step_on_current_gradient

    def create_optimizer(self, model=None):
        found = _find_transform(self.optimizer)
        if found is not None:
            # already built: this object's optimizer, also behind accelerate's `AcceleratedOptimizer` after a first
            # `train()` (wrapping it again would transform every gradient twice), or a wrapper passed as `optimizers=`
            # (adopted in `__init__`)
            if found is not self.transform_optimizer:
                self._adopt_transform(found)
            if self._adam_flags_read is None:
                self._adam_flags_read = set()  # a wrapper passed as optimizers=: its base read no flag of args
            return self.optimizer
        opt_model = self.model if model is None else model
        if self.args.gradient_transform == "neuralgrok" and any(is_dtensor(p) for p in opt_model.parameters()):
            raise ValueError(
                "gradient_transform='neuralgrok' does not run under FSDP2 (the model's parameters are sharded "
                "DTensors): the outer step evaluates the model at virtual parameters through "
                "torch.func.functional_call, which FSDP2's own all-gather bypasses. Train with DDP or one process, or "
                "use gradient_transform='normalize', 'grokfast_ema', 'grokfast_ma' or 'none' under FSDP2."
            )
        # built here from `coupled_weight_decay` (torch Adam with L2, or `args.optim`): recorded in checkpoints
        self._coupled_flag_read = self.optimizer is None and self.optimizer_cls_and_kwargs is None
        if self.optimizer is not None or self.optimizer_cls_and_kwargs is not None:
            self._adam_flags_read = set()  # the caller's optimizer: built from no flag of args
        elif self.args.coupled_weight_decay:
            self._adam_flags_read = set(BASE_OPTIMIZER_OPTIONS)
        else:
            self._adam_flags_read = _adam_flags_read(self.args, opt_model)
        if self.args.coupled_weight_decay and self.optimizer is None and self.optimizer_cls_and_kwargs is None:
            # The reference code: torch.optim.Adam, L2 term added to the (transformed) gradient, on every parameter.
            opt_model = self.model if model is None else model
            self.optimizer = torch.optim.Adam(
                [p for p in opt_model.parameters() if p.requires_grad],
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
                weight_decay=self.args.weight_decay,
            )
        base = super().create_optimizer(model)
        found = _find_transform(base)
        if found is not None:
            self._adopt_transform(found)
            return base
        a = self.args
        if a.gradient_transform == "neuralgrok":
            wrapped = NeuralGrokOptimizer(
                base, self.amplifier, clip_norm=a.amplifier_clip_norm or None, track_entropy=a.track_entropy
            )
        elif a.gradient_transform == "normalize":
            wrapped = GradNormOptimizer(
                base, c=a.amplifier_c, clip_norm=a.amplifier_clip_norm or None, track_entropy=a.track_entropy
            )
        elif a.gradient_transform in ("grokfast_ema", "grokfast_ma"):
            wrapped = GradFilterOptimizer(
                base,
                mode=a.gradient_transform.split("_")[1],
                alpha=a.grokfast_alpha,
                lamb=a.grokfast_lamb
                if a.grokfast_lamb is not None
                else (2.0 if a.gradient_transform.endswith("ema") else 5.0),
                window=a.grokfast_window,
                warmup=a.grokfast_warmup,
                track_entropy=a.track_entropy,
            )
        else:
            wrapped = GradientTransformOptimizer(base, track_entropy=a.track_entropy)
        self.optimizer = wrapped
        self._adopt_transform(wrapped)
        return wrapped

    # ------------------------------------------------------------------- data
    def get_eval_dataloader(self, eval_dataset=None):
        with _keep_last_batch(self.args):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with _keep_last_batch(self.args):
            return super().get_test_dataloader(test_dataset)

    # ------------------------------------------------------------- inner step
    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.amplifier is not None and self.args.outer_gradient == "recompute":
            # Keep the micro-batches of this optimizer step for the outer step (gradient at the new parameters).
            self._pending_batches.append({k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)})
            # g_hat's loss is normalised as the real step's: by the step's `num_items_in_batch` (labelled tokens, the
            # same for all its micro-batches; None for a model without loss kwargs: each micro-batch's mean).
            self._pending_num_items = num_items_in_batch
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        track = self.args.track_train_accuracy and model.training and not self._in_outer_step and "labels" in inputs
        labels = inputs["labels"] if track else None
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if track:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1]
            if logits is not None and logits.dim() == 3 and logits.shape[:2] == labels.shape:
                # counts, not the micro-batch's ratio: rows weigh the same in batches of any size and on any rank;
                # counted as integers (a float32 ratio times the rows is not always the count: 29/100 gives 28.99...)
                with torch.no_grad():
                    self._acc_correct += int(_answer_correct_rows(logits.detach(), labels).sum())
                self._acc_rows += labels.shape[0]
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------- outer step
    def _outer_rows(self):
        """`outer_dataset` as the outer batches are built from it (unused columns removed where `args` says so)."""
        dataset = self.outer_dataset
        if self.args.remove_unused_columns and hasattr(dataset, "column_names"):
            dataset = self._remove_unused_columns(dataset, description="outer")
        return dataset

    def _check_outer_labels(self) -> None:
        """The outer loss is the model's own `loss`, which needs the labels (`self.label_names`, `["labels"]` for a
        causal LM) in every outer batch: an outer set whose rows lack them, and whose data collator does not add them,
        is refused by name. Its first row is collated only when the row lacks a label (a collator that builds them,
        e.g. `DataCollatorForLanguageModeling`), with every random generator put back as it was."""
        from collections.abc import Mapping

        required = list(self.label_names or [])
        if not required:  # a model whose forward takes no labels: its loss comes from other inputs
            return
        dataset = self._outer_rows()
        row = dataset[0]
        if not isinstance(row, Mapping):
            return  # rows the collator alone understands
        missing = [name for name in required if name not in row]
        if not missing:
            return
        import random

        import numpy as np

        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                batch = self.data_collator([row])
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        missing = [name for name in required if not isinstance(batch.get(name), torch.Tensor)]
        if missing:
            columns = list(getattr(self.outer_dataset, "column_names", None) or row.keys())
            raise ValueError(
                f"outer_dataset has no {', '.join(repr(m) for m in missing)} (its columns: {columns}), and the data "
                "collator does not add them: the outer loss is the model's own loss, which needs them. Give the outer "
                "set the same columns as the training set (e.g. split_arithmetic_dataset(...)['outer']), or a "
                "data_collator that builds the labels."
            )

    def _check_outer_token_ids(self) -> None:
        """Every token id of the outer set's `input_ids` (the model's `main_input_name`) must index the model's input
        embedding: an id outside [0, vocabulary size) (an outer set tokenized for another vocabulary or task) used to
        fail only at the first outer step, `outer_every` steps (and their checkpoints) into the run, with a raw
        `IndexError: index out of range in self` from the embedding. A model without an `nn.Embedding` input, or rows
        without that column, are left to the model."""
        from collections.abc import Mapping

        try:
            embedding = self.accelerator.unwrap_model(self.model).get_input_embeddings()
        except (AttributeError, NotImplementedError):
            return
        if not isinstance(embedding, torch.nn.Embedding):
            return
        vocab = embedding.num_embeddings
        name = getattr(self.model, "main_input_name", None) or "input_ids"
        dataset = self._outer_rows()
        if name in (getattr(dataset, "column_names", None) or ()) and hasattr(dataset, "with_format"):
            import pyarrow as pa
            import pyarrow.compute as pc

            ids = dataset.with_format("arrow")[name]  # the rows of this dataset (a selection too), as one column
            is_list = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
            while any(check(ids.type) for check in is_list):
                ids = pc.list_flatten(ids)
            if not (pa.types.is_integer(ids.type) or pa.types.is_floating(ids.type)):
                return
            low, high = (value.as_py() for value in pc.min_max(ids).values())
            if low is None or (low >= 0 and high < vocab):
                return
            bad_index = None
            for index in range(len(dataset)):  # only to name the first offending row
                row_ids = torch.as_tensor(dataset[index][name])
                if row_ids.numel() and (int(row_ids.min()) < 0 or int(row_ids.max()) >= vocab):
                    bad_index = index
                    break
        else:
            low = high = bad_index = None
            for index in range(len(dataset)):
                row = dataset[index]
                if not isinstance(row, Mapping) or name not in row:
                    return  # rows the collator alone understands
                try:
                    row_ids = torch.as_tensor(row[name])
                except (TypeError, ValueError, RuntimeError):
                    return
                if row_ids.numel() == 0 or row_ids.is_floating_point() or row_ids.is_complex():
                    continue
                row_low, row_high = int(row_ids.min()), int(row_ids.max())
                if row_low < 0 or row_high >= vocab:
                    low, high, bad_index = row_low, row_high, index
                    break
            if bad_index is None:
                return
        raise ValueError(
            f"outer_dataset has {name} outside the model's vocabulary [0, {vocab}) (ids from {low} to {high}"
            + (f"; first in row {bad_index}" if bad_index is not None else "")
            + "): the outer loss runs the model on them. Tokenize the outer set with the training set's tokenizer / "
            "task and modulus (e.g. split_arithmetic_dataset(...)['outer']), or give the model a vocabulary that "
            "covers them (e.g. vocab_size=arithmetic_vocab_size(task, p))."
        )

    def _build_outer_batches(self) -> list[dict]:
        dataset = self._outer_rows()
        n = len(dataset)
        indices = list(range(n))
        if self.args.outer_max_samples is not None and self.args.outer_max_samples < n:
            gen = torch.Generator().manual_seed(self.args.seed)
            indices = torch.randperm(n, generator=gen)[: self.args.outer_max_samples].tolist()
        size = self.args.outer_batch_size or self.args.per_device_train_batch_size
        batches = []
        for start in range(0, len(indices), size):
            features = [dataset[i] for i in indices[start : start + size]]
            batch = self.data_collator(features)
            batches.append({k: v.to(self.args.device) for k, v in batch.items() if isinstance(v, torch.Tensor)})
        return batches

    def _inner_training_loop(self, *args, **kwargs):
        # Every run of the loop (each `train()` call, and each retry of `auto_find_batch_size` after an out-of-memory
        # error) starts with no step in progress: an interrupted one (Ctrl-C, an error in a forward, backward or
        # optimizer step) left its micro-batches, which the first recompute outer step would take into g_hat, and a
        # next_step outer step pending. A resume restores the latter (`_load_optimizer_and_scheduler`).
        self._pending_batches, self._pending_num_items = [], None
        self._outer_due = False
        self._last_step_lr = None
        # `train_accuracy` is the accuracy on the rows of the training batches since the last log: a run starts with
        # none (an interrupted call's or a failed attempt's would leak into the first log), and a resumed one takes
        # its checkpoint's (`_load_optimizer_and_scheduler`), as `LossWindowResumeMixin` does for the logged loss.
        self._acc_correct, self._acc_rows = 0, 0
        self._acc_window = [0, 0]
        return super()._inner_training_loop(*args, **kwargs)

    def _broadcast_amplifier(self) -> None:
        """Under several processes, copy rank 0's amplifier (parameters and buffers) to every rank, as DDP does for
        the model when it wraps it: an amplifier built differently per rank (e.g. after a rank-dependent seed) would
        transform the same all-reduced gradient differently on each rank and the replicas would drift apart. Run at
        the start of every `train()`, after a resume has loaded the checkpoint (rank 0's amplifier), before any step.
        The meta-optimizer's state needs no copy: empty at the start, loaded from the same checkpoint on resume, and
        updated from all-reduced gradients."""
        if self.amplifier is None or self.accelerator.num_processes <= 1:
            return
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            return
        with torch.no_grad():
            for tensor in self.amplifier.state_dict().values():
                dist.broadcast(tensor, src=0)

    def _after_optimizer_step(self, global_step: int) -> None:
        batches, self._pending_batches = self._pending_batches, []
        if self.amplifier is None or global_step % self.args.outer_every != 0:
            return
        # `virtual_lr=None`: the lr of this step, the last real one before the outer step (in both modes)
        self._last_step_lr = self.transform_optimizer.last_lr if self.transform_optimizer is not None else None
        if self.args.outer_gradient == "next_step":
            self._outer_due = True  # run by the next optimizer step, on its gradient (`before_transform`)
            return
        if batches:
            self._run_outer_step(batches=batches, num_items_in_batch=self._pending_num_items)

    def _outer_step_on_current_gradient(self, params: list[torch.Tensor]) -> None:
        """`before_transform` hook (outer_gradient="next_step"): the outer step on this step's raw gradient."""
        if not self._outer_due:
            return
        model = self.accelerator.unwrap_model(self.model)
        g_hat = [p.grad for p in model.parameters() if p.requires_grad]
        self._run_outer_step(g_hat=g_hat)
        self._outer_due = False

    def _base_learning_rate(self) -> float:
        """The schedule's base learning rate: the `initial_lr` the lr scheduler recorded in the optimizer's first param
        group (an optimizer passed as `optimizers=` keeps its own lr there), else `args.learning_rate`."""
        groups = getattr(self.optimizer, "param_groups", None) or []
        initial = groups[0].get("initial_lr") if groups else None
        return float(initial) if isinstance(initial, int | float) and initial > 0 else self.args.learning_rate

    def _run_outer_step(self, batches: list[dict] | None = None, g_hat: list | None = None, num_items_in_batch=None):
        if self._outer_batches is None:
            self._outer_batches = self._build_outer_batches()
        lr = self.args.virtual_lr
        if lr is None:
            lr = self._last_step_lr
            if lr is None:  # a next_step outer step pending in a checkpoint older than this record
                lr = self.transform_optimizer.last_lr if self.transform_optimizer is not None else None
            if lr is None:
                lr = self.args.learning_rate
            if not lr > 0:  # the first step of a warm-up from 0 (outer_every=1): the reference's fixed base lr
                lr = self._base_learning_rate()
        reducer = None
        if self.accelerator.num_processes > 1:

            def reducer(grad):
                return self.accelerator.reduce(grad, reduction="mean")

        # recompute: g_hat is the gradient of the real step's own loss, `compute_loss` (the model's loss, label
        # smoothing or `compute_loss_func`, normalised by the step's `num_items_in_batch`), its micro-batches' losses
        # summed as `training_step`'s backward sums them (divided by the accumulation steps where Trainer divides
        # them: their mean below)
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:  # as `Trainer.training_step` decides it
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )
        factor = len(batches) if batches and scaled else 1

        def loss_fn(m, batch):
            return factor * self.compute_loss(m, dict(batch), num_items_in_batch=num_items_in_batch)

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        self._in_outer_step = True
        try:
            self.last_outer_loss = amplifier_outer_step(
                self.amplifier,
                self.meta_optimizer,
                model,
                batches or [],
                self._outer_batches,
                virtual_lr=lr,
                grad_reducer=reducer,
                g_hat=g_hat,
                # recompute: every rank's g_hat from its own batch, averaged -> the global batch's gradient, as in
                # one process (next_step's g_hat is the already all-reduced gradient of the real step)
                g_hat_reducer=reducer if g_hat is None else None,
                loss_fn=loss_fn,
                weight_by_tokens=False,  # the mean of the micro-batches' `loss_fn`: the real step's loss
            )
        finally:
            self._in_outer_step = False
            model.train(was_training)
        self.num_outer_steps += 1

    # ---------------------------------------------------------------- logging
    def _sum_train_accuracy_over_ranks(self) -> None:
        """Add this rank's `train_accuracy` counts, summed over the ranks, to `_acc_window`: the global batches'
        counts, the same on every rank (as Trainer all-gathers the logged loss). A collective under DDP: every rank
        calls it, at a logging step and at a checkpoint's save, never per micro-batch."""
        counts = [self._acc_correct, self._acc_rows]
        if self.accelerator.num_processes > 1:
            total = torch.tensor(counts, dtype=torch.int64, device=self.args.device)
            counts = self.accelerator.reduce(total, reduction="sum").tolist()
        self._acc_window = [self._acc_window[0] + int(counts[0]), self._acc_window[1] + int(counts[1])]
        self._acc_correct, self._acc_rows = 0, 0

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        # every rank runs Trainer's logging step (it all-gathers the loss there): the only place `log` may sum the
        # accuracy counts over the ranks; a `log` call elsewhere (e.g. on one rank) must not start a collective
        self._at_logging_step = True
        try:
            return super()._maybe_log_save_evaluate(*args, **kwargs)
        finally:
            self._at_logging_step = False

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            if self._at_logging_step or self.accelerator.num_processes == 1:
                self._sum_train_accuracy_over_ranks()
            correct, rows = self._acc_window
            if rows:
                logs["train_accuracy"] = round(correct / rows, 4)
                self._acc_window = [0, 0]
            if self.transform_optimizer is not None:
                logs.update({k: round(v, 6) for k, v in self.transform_optimizer.last_metrics.items()})
            if self.args.track_entropy:
                logs["awe"] = round(absolute_weight_entropy(self.model), 4)
            logs["weight_norm"] = round(weight_norm(self.model), 4)
            if self.last_outer_loss is not None:
                logs["outer_loss"] = round(self.last_outer_loss, 6)
        super().log(logs, start_time)

    # ------------------------------------------------------------ checkpoints
    def _load_callback_state(self) -> None:
        # Restore every GrokkingCallback (and subclass) in place, whatever `restore_callback_states_from_checkpoint`
        # says: the caller keeps its reference and reads the run's figures from it. Other callbacks follow the flag as
        # in Trainer, whose restore (with the flag on) would replace each stored callback by a new instance built from
        # the checkpoint's JSON: the caller's GrokkingCallback would leave the trainer and stop recording. Its
        # entries are hidden from that restore.
        stateful = self.state.stateful_callbacks
        mine: dict[str, list[GrokkingCallback]] = {}
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, GrokkingCallback):
                mine.setdefault(type(callback).__name__, []).append(callback)
        for name, callbacks in mine.items():
            stored = stateful.get(name)
            if stored is not None:
                for callback, data in zip(callbacks, stored if isinstance(stored, list) else [stored]):
                    callback.load_state(data)
        self.state.stateful_callbacks = {k: v for k, v in stateful.items() if k not in mine}
        try:
            super()._load_callback_state()
        finally:
            self.state.stateful_callbacks = stateful

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        self._sum_train_accuracy_over_ranks()  # on every rank (Trainer saves a checkpoint on all of them)
        # on every rank as well under FSDP2: the Grokfast buffers are shards of their parameters (DTensors), gathered
        # here into whole tensors (a collective), so that rank 0 writes the whole state, which any world size reads
        transform_state = None
        if self.transform_optimizer is not None and (
            self.args.should_save
            or any(is_dtensor(p) for group in self.transform_optimizer.param_groups for p in group["params"])
        ):
            transform_state = self.transform_optimizer.extra_state_dict()
        if not self.args.should_save:
            return
        from safetensors.torch import save

        if transform_state is not None:
            save_state(transform_state, os.path.join(output_dir, TRANSFORM_STATE_PREFIX))
        info = {
            "gradient_transform": self.args.gradient_transform,
            # restored with the optimizer's param groups on resume: compared with the resumed run's
            "weight_decay": float(self.args.weight_decay),
            # the base optimizer's betas / eps where they came from the flags: likewise
            **base_optimizer_options(self.args, self.optimizer, self._adam_flags_read),
            # the base optimizer's class (torch Adam with coupled L2, or `args.optim`): its state and param groups
            # load only into the same kind, so a resume with the other one is refused by name
            **({"coupled_weight_decay": bool(self.args.coupled_weight_decay)} if self._coupled_flag_read else {}),
            "num_outer_steps": self.num_outer_steps,
            "outer_gradient": self.args.outer_gradient,
            "outer_step_due": self._outer_due,
            # the lr of the step before that pending outer step (its virtual step size with `virtual_lr=None`)
            "outer_step_lr": self._last_step_lr if self._outer_due else None,
            # rows answered right and rows since the last log, over all ranks, for the first `train_accuracy` after
            # a resume
            "train_accuracy_counts": list(self._acc_window),
            # options on the transform's wrapper only: compared on resume
            **transform_options(self.args, self.transform_optimizer),
        }
        if self.amplifier is not None:
            with atomic_open(os.path.join(output_dir, AMPLIFIER_NAME), "wb") as fh:
                fh.write(save({k: v.detach().cpu().contiguous() for k, v in self.amplifier.state_dict().items()}))
            save_state(self.meta_optimizer.state_dict(), os.path.join(output_dir, META_OPTIMIZER_PREFIX))
            info.update(
                amplifier_hidden_dims=list(self.amplifier.hidden_dims),
                amplifier_c=self.amplifier.c,
                last_outer_loss=self.last_outer_loss,
            )
        elif self.args.gradient_transform == "normalize":
            # compared on resume (an attribute of the wrapper: a GradNormOptimizer passed as `optimizers=` has its own)
            info["amplifier_c"] = float(self._amplifier_c())
        atomic_write_json(os.path.join(output_dir, TRAINER_STATE_NAME), info)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model; with an amplifier, also the trained amplifier into `<output_dir>/neuralgrok_amplifier`
        (`NeuralAmplifier.save_pretrained`; reload with `NeuralAmplifier.from_pretrained`). A checkpoint
        (`_internal_call`) holds it already, with its meta-optimizer (`neuralgrok_amplifier.safetensors`)."""
        # before the model: with --push_to_hub, Trainer.save_model uploads the folder at its end
        if not _internal_call:
            self._save_amplifier(output_dir or self.args.output_dir)
        super().save_model(output_dir, _internal_call=_internal_call)

    def push_to_hub(self, *args, **kwargs):
        """`Trainer.push_to_hub`, with the trained amplifier written into `<output_dir>/neuralgrok_amplifier` first
        (the folder it uploads)."""
        self._save_amplifier(self.args.output_dir)
        return super().push_to_hub(*args, **kwargs)

    def _save_amplifier(self, output_dir: str) -> None:
        if self.amplifier is not None and self.args.should_save:
            self.amplifier.save_pretrained(os.path.join(output_dir, AMPLIFIER_FOLDER))

    def _amplifier_c(self) -> float:
        """The `c` the run's transform uses: its amplifier's, a normalize wrapper's, else `args.amplifier_c`."""
        if self.amplifier is not None:
            return self.amplifier.c
        return float(getattr(self.transform_optimizer, "c", self.args.amplifier_c))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from ..utils.resume import refuse_weights_only_checkpoint

        refuse_weights_only_checkpoint(resume_from_checkpoint, "resume_from_checkpoint")  # before anything is restored
        # the checkpoint's options, before its model weights are loaded (Trainer loads them here, before the optimizer
        # state and the amplifier): a refused resume leaves the model as it was
        self._checked_resume_info(resume_from_checkpoint)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _checked_resume_info(self, checkpoint: str) -> tuple[dict, dict | None]:
        """The checkpoint's `neuralgrok_state.json` and meta-optimizer state, once it is checked that a resume would
        train the run these arguments name: the same gradient transform and `outer_gradient`, no option a resume would
        not apply ([`resume_option_mismatches`]) and an amplifier of the same shape. Raises `ValueError` naming what
        differs; loads nothing into the trainer."""
        info_path = os.path.join(checkpoint, TRAINER_STATE_NAME)
        if not os.path.isfile(info_path):
            raise ValueError(
                f"{checkpoint} has no {TRAINER_STATE_NAME} (written with the optimizer state): it was not written by "
                "NeuralGrokTrainer, or was saved with save_only_model=True (weights only), so the gradient transform "
                "state cannot be restored. Resume from a full NeuralGrokTrainer checkpoint (save_only_model=False), or "
                "start a new run from these weights."
            )
        with open(info_path, encoding="utf-8") as fh:
            info = json.load(fh)
        if info.get("gradient_transform") != self.args.gradient_transform:
            raise ValueError(
                f"Checkpoint used gradient_transform={info.get('gradient_transform')!r} but args say "
                f"{self.args.gradient_transform!r}; resume with the same gradient_transform."
            )
        meta_state = None
        if self.amplifier is not None:
            saved_mode = info.get("outer_gradient", "recompute")
            if saved_mode != self.args.outer_gradient:
                raise ValueError(
                    f"Checkpoint used outer_gradient={saved_mode!r} but args say {self.args.outer_gradient!r}; resume "
                    "with the same outer_gradient."
                )
            meta_state = load_state(os.path.join(checkpoint, META_OPTIMIZER_PREFIX), device=self.args.device)
        # before anything is restored: the optimizers' param groups would bring the checkpoint's values back
        changed = resume_option_mismatches(
            info,
            meta_state,
            self.args,
            self._amplifier_c(),
            transform_options(self.args, self.transform_optimizer),
            list(self.amplifier.hidden_dims) if self.amplifier is not None else None,
        )
        if changed:
            listed = "; ".join(f"{name}={saved!r} in the checkpoint, {new!r} now" for name, saved, new in changed)
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r} was trained with other options: {listed}. A resume restores "
                "the checkpoint's optimizer param groups and its amplifier (trained with its amplifier_c and of its "
                "amplifier_hidden_dims), so the run would not be the one its arguments name. Resume with the "
                "checkpoint's values, or start a new run (from the checkpoint's weights, without "
                "resume_from_checkpoint) to use the new ones."
            )
        if self.amplifier is not None:
            self._check_amplifier_file(checkpoint)
        return info, meta_state

    def _check_amplifier_file(self, checkpoint: str) -> None:
        """The checkpoint's amplifier must have this run's parameter names and shapes (an `amplifier=` built with
        another `dropout`, which shifts the MLP's layer indices, or a checkpoint that records no widths)."""
        from safetensors import safe_open

        path = os.path.join(checkpoint, AMPLIFIER_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"{checkpoint} has no {AMPLIFIER_NAME}: it holds no NeuralGrok amplifier to resume; pass a checkpoint "
                "of a gradient_transform='neuralgrok' run."
            )
        with safe_open(path, framework="pt") as fh:
            saved = {key: list(fh.get_slice(key).get_shape()) for key in fh.keys()}
            saved_dtypes = {fh.get_slice(key).get_dtype() for key in fh.keys()}
        mine = {key: list(value.shape) for key, value in self.amplifier.state_dict().items()}
        if saved != mine:
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r}: its amplifier's parameters {saved} differ from this run's "
                f"{mine} (amplifier_hidden_dims={list(self.amplifier.hidden_dims)}): resume with an amplifier of the "
                "checkpoint's shape (its amplifier_hidden_dims, and dropout for a given amplifier=)."
            )
        # loading copies into this run's parameters: a float64 amplifier's checkpoint resumed into the default float32
        # one went on in float32, silently
        mine_dtypes = {_SAFETENSORS_DTYPE_NAMES.get(v.dtype, str(v.dtype)) for v in self.amplifier.state_dict().values()}
        if saved_dtypes != mine_dtypes:
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r}: its amplifier was saved in {sorted(saved_dtypes)}, this run's "
                f"is {sorted(mine_dtypes)}; resuming would change the amplifier's precision. Pass an amplifier of the "
                "checkpoint's dtype, e.g. amplifier=NeuralAmplifier(hidden_dims, c=...).to(torch.float64) for F64."
            )

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        # checked again: under DeepSpeed / FSDP, Trainer loads the model here rather than in `_load_from_checkpoint`
        info, meta_state = self._checked_resume_info(checkpoint)
        super()._load_optimizer_and_scheduler(checkpoint)
        # the same on every rank (summed over the ranks before the save); none in older checkpoints (their
        # `train_accuracy_window` summed micro-batch ratios, which the row counts cannot be recovered from)
        self._acc_window = [int(v) for v in info.get("train_accuracy_counts", [0, 0])]
        self._acc_correct, self._acc_rows = 0, 0
        prefix = os.path.join(checkpoint, TRANSFORM_STATE_PREFIX)
        if self.transform_optimizer is not None and state_exists(prefix):
            self.transform_optimizer.load_extra_state_dict(load_state(prefix, device=self.args.device))
        if self.amplifier is not None:
            from safetensors.torch import load_file

            self.amplifier.load_state_dict(load_file(os.path.join(checkpoint, AMPLIFIER_NAME), device="cpu"))
            self.amplifier.to(self.args.device)
            self.meta_optimizer.load_state_dict(meta_state)
            self.num_outer_steps = int(info.get("num_outer_steps", 0))
            self.last_outer_loss = info.get("last_outer_loss")
            self._outer_due = bool(info.get("outer_step_due", False))
            saved_lr = info.get("outer_step_lr")
            self._last_step_lr = float(saved_lr) if self._outer_due and saved_lr is not None else None


class GrokkingCallback(TrainerCallback, ExportableState):
    """
    Records when an evaluation metric (default: `eval_accuracy`) first reaches `target`, and what it cost:

    - `steps_to_target`: the optimizer step of that evaluation;
    - `step_seconds`: wall-clock time of every optimizer step (forward, backward, transform, clip, optimizer step and,
      every T steps, NeuralGrok's outer step; evaluation, logging and checkpointing excluded);
    - `seconds_to_target`: the sum of `step_seconds` up to `steps_to_target` (training time to the target);
    - `wall_seconds_to_target`: elapsed time from the start of training to the end of that evaluation (everything
      included: evaluations, logging, checkpoints);
    - `step_cpu_seconds`, `cpu_seconds_to_target`: the same as `step_seconds` / `seconds_to_target` in CPU time of
      this process (`time.process_time`), which other jobs on a shared machine do not inflate (with one torch
      thread it is the compute the step needs).

    Its state is saved in every checkpoint (`trainer_state.json`) and [`NeuralGrokTrainer`] restores it in place on
    `resume_from_checkpoint`, so a resumed run reports the same figures as an uninterrupted one (up to timing noise).
    The caller's object stays the trainer's also with `restore_callback_states_from_checkpoint=True` (transformers'
    restore, which would put a new instance in its place, is applied to the other callbacks only).

    Args:
        target (`float`, *optional*, defaults to 0.95): accuracy to reach.
        metric_key (`str`, *optional*, defaults to `"eval_accuracy"`): metric name as logged by `evaluate()`; a
            name without the `eval_` prefix (`"accuracy"`, the key `compute_metrics` returns) also finds the prefixed
            one, as transformers' `metric_for_best_model` does. The first evaluation whose metrics have neither logs a
            warning.
        stop_on_target (`bool`, *optional*, defaults to `False`): stop training once the target is reached.
    """

    def __init__(self, target: float = 0.95, metric_key: str = "eval_accuracy", stop_on_target: bool = False):
        if not _is_real(target) or not 0.0 < target <= 1.0:
            raise ValueError(f"target={target!r} must be a number in (0, 1] (the accuracy to reach).")
        if not isinstance(metric_key, str) or not metric_key:
            raise ValueError(f"metric_key={metric_key!r} must be a metric name, e.g. 'eval_accuracy'.")
        if not _is_bool(stop_on_target):
            raise ValueError(
                f"stop_on_target={stop_on_target!r} must be a bool (True or False); a string such as 'false' would "
                "count as True."
            )
        # stored as Python float / bool: they go into every checkpoint's trainer_state.json, and a numpy float32 target
        # (or numpy bool) made the first checkpoint fail with "Object of type float32 is not JSON serializable"
        self.target = float(target)
        self.metric_key = metric_key
        self.stop_on_target = bool(stop_on_target)
        self._warned_missing = False
        self.steps_to_target: int | None = None
        self.seconds_to_target: float | None = None
        self.wall_seconds_to_target: float | None = None
        self.step_seconds: list[float] = []
        self.step_cpu_seconds: list[float] = []
        self.cpu_seconds_to_target: float | None = None
        self.elapsed_offset = 0.0
        self._t0: float | None = None
        self._c0: float | None = None
        self._train_start: float | None = None

    def elapsed(self) -> float:
        """Seconds since training started (including the time before a resume)."""
        if self._train_start is None:
            return self.elapsed_offset
        return self.elapsed_offset + time.perf_counter() - self._train_start

    def on_train_begin(self, args, state, control, **kwargs):
        self._train_start = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            self.step_seconds.append(time.perf_counter() - self._t0)
            self.step_cpu_seconds.append(time.process_time() - self._c0)
            self._t0 = self._c0 = None

    def _metric(self, metrics: dict):
        """The tracked metric's value in `metrics`: `metric_key` itself, else with the `eval_` prefix; None if
        neither is there (warned once)."""
        for key in (self.metric_key, f"eval_{self.metric_key}"):
            if key in metrics:
                return metrics[key]
            if key.startswith("eval_"):
                break
        if not self._warned_missing:
            self._warned_missing = True
            logger.warning(
                f"GrokkingCallback: the evaluation's metrics have no {self.metric_key!r} (keys: {sorted(metrics)}), "
                "so steps_to_target cannot be recorded; pass metric_key= one of them (e.g. 'eval_accuracy', with "
                "compute_metrics=arithmetic_accuracy)."
            )
        return None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = self._metric(metrics or {})
        if value is not None and self.steps_to_target is None and value >= self.target:
            self.steps_to_target = state.global_step
            self.seconds_to_target = float(sum(self.step_seconds))
            self.cpu_seconds_to_target = float(sum(self.step_cpu_seconds))
            self.wall_seconds_to_target = self.elapsed()
            if self.stop_on_target:
                control.should_training_stop = True

    @property
    def seconds_per_step(self) -> float | None:
        """Mean wall-clock seconds of one optimizer step, outer steps included (see `step_seconds`)."""
        if not self.step_seconds:
            return None
        return float(sum(self.step_seconds) / len(self.step_seconds))

    @property
    def cpu_seconds_per_step(self) -> float | None:
        """Mean CPU seconds of one optimizer step (see `step_cpu_seconds`)."""
        if not self.step_cpu_seconds:
            return None
        return float(sum(self.step_cpu_seconds) / len(self.step_cpu_seconds))

    @property
    def median_seconds_per_step(self) -> float | None:
        """Median step time: with NeuralGrok and T > 2 this is a step *without* the outer step (an understatement)."""
        if not self.step_seconds:
            return None
        ordered = sorted(self.step_seconds)
        return ordered[len(ordered) // 2]

    # ExportableState: written into trainer_state.json with every checkpoint.
    def state(self) -> dict:
        return {
            "args": {"target": self.target, "metric_key": self.metric_key, "stop_on_target": self.stop_on_target},
            "attributes": {
                "steps_to_target": self.steps_to_target,
                "seconds_to_target": self.seconds_to_target,
                "wall_seconds_to_target": self.wall_seconds_to_target,
                "step_seconds": list(self.step_seconds),
                "step_cpu_seconds": list(self.step_cpu_seconds),
                "cpu_seconds_to_target": self.cpu_seconds_to_target,
                "elapsed_offset": self.elapsed(),
            },
        }

    def load_state(self, state: dict) -> None:
        """Restore the attributes saved by `state()` (used by [`NeuralGrokTrainer`] on resume)."""
        attrs = state.get("attributes", {})
        self.steps_to_target = attrs.get("steps_to_target")
        self.seconds_to_target = attrs.get("seconds_to_target")
        self.wall_seconds_to_target = attrs.get("wall_seconds_to_target")
        self.step_seconds = [float(x) for x in attrs.get("step_seconds", [])]
        self.step_cpu_seconds = [float(x) for x in attrs.get("step_cpu_seconds", [])]
        self.cpu_seconds_to_target = attrs.get("cpu_seconds_to_target")
        self.elapsed_offset = float(attrs.get("elapsed_offset", 0.0))
        self._train_start = None
