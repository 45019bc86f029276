"""Grokking on modular arithmetic: NeuralGrok and Grokfast against Adam baselines and a normalisation-only control.

Adam baseline (also with strong weight decay) vs the normalisation-only control vs Grokfast vs NeuralGrok. Steps,
mean step time and training time to 95% test accuracy; gradient entropy, weight norm and stability after grokking;
curves as PNG, tables as Markdown and JSON.

Run as `python scripts/neuralgrok.py`, `accelerate launch scripts/neuralgrok.py` or `hf-ext run neuralgrok`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from dataclasses import dataclass, field

from ..neuralgrok.trainer import GRADIENT_TRANSFORMS, NeuralGrokConfig
from ..utils.resume import train_or_restore_finished

# Recipe methods: every gradient transform, plus the baseline with strong weight decay (`--strong_weight_decay`).
STRONG_WD = "none_strong_wd"
METHODS = (*GRADIENT_TRANSFORMS, STRONG_WD)
# Methods trained on D_inner (the training split minus D_outer): NeuralGrok and its control, which must see the same
# data so that their difference is the learned amplifier alone. The others train on the whole training split.
INNER_METHODS = ("neuralgrok", "normalize")
METHOD_LABELS = {
    "none": "Adam (baseline)",
    STRONG_WD: "Adam, strong weight decay",
    "normalize": "normalisation only (control)",
    "grokfast_ema": "Grokfast-EMA",
    "grokfast_ma": "Grokfast-MA",
    "neuralgrok": "NeuralGrok",
}
COLORS = {
    "none": "tab:blue",
    STRONG_WD: "tab:purple",
    "normalize": "tab:gray",
    "grokfast_ema": "tab:orange",
    "grokfast_ma": "tab:green",
    "neuralgrok": "tab:red",
}


@dataclass
class GrokTaskArguments:
    task: str = field(default="a+b", metadata={"help": "a+b, a-b, a*b, a*a-b or a*c+b*d-e."})
    layout: str = field(
        default="interleaved",
        metadata={
            "help": "Token layout of the equations: reference (the official NeuralGrok code's, operands then "
            "operators: [a, b, op, =, r]) or interleaved ([a, op, b, =, r]; the default, that of the registered "
            "reproduction; docs/neuralgrok.md gives numbers for both)."
        },
    )
    p: int = field(
        default=97,
        metadata={
            "help": "Prime modulus (97; pass 7 for a*c+b*d-e: a --p whose task has more than 2,000,000 equations, "
            "e.g. 97 for a*c+b*d-e, is refused)."
        },
    )
    train_fraction: float = field(default=0.5, metadata={"help": "Fraction of all equations used for training."})
    outer_fraction: float = field(
        default=0.02,
        metadata={
            "help": "Fraction of the training split held out as NeuralGrok's outer set (49:1); read by neuralgrok and "
            "normalize (trained on the rest) only: the other methods train on the whole training split."
        },
    )
    methods: str = field(
        default="none,normalize,grokfast_ema,neuralgrok",
        metadata={
            "help": "Comma-separated methods: none, none_strong_wd (baseline with --strong_weight_decay), normalize "
            "(control: NeuralGrok's scale and clip with a uniform amplifier), grokfast_ema, grokfast_ma, neuralgrok."
        },
    )
    seeds: str = field(default="0,1,2", metadata={"help": "Comma-separated seeds (split, init and data order)."})
    target_accuracy: float = field(default=0.95, metadata={"help": "Test accuracy that counts as grokked."})
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Evaluate on this many test equations (a fixed random subset; default: the whole split)."},
    )
    stop_at_target: bool = field(
        default=False,
        metadata={
            "help": "Stop a run once it reaches target_accuracy (saves compute, but then no stability after grokking)."
        },
    )
    strong_weight_decay: float = field(
        default=1e-2, metadata={"help": "Weight decay of the none_strong_wd baseline (paper: 1e-2, 10x the default)."}
    )
    torch_threads: int | None = field(
        default=None, metadata={"help": "torch.set_num_threads for the runs (1 is fastest on busy shared CPUs)."}
    )


@dataclass
class GrokModelArguments:
    model_type: str = field(
        default="grok_decoder",
        metadata={
            "help": "grok_decoder (the papers' model) or any transformers model type built from config, e.g. llama."
        },
    )
    hidden_size: int = field(default=128, metadata={"help": "Model width."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Decoder layers (4 for a*c+b*d-e)."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads."})


@dataclass
class GrokTrainingArguments(NeuralGrokConfig):
    # not a field: tells the shared --max_steps / --num_train_epochs checks that this recipe has no epoch-based runs
    epoch_based_runs = False
    output_dir: str = field(default="outputs/neuralgrok", metadata={"help": "Where results and curves are written."})
    max_steps: int = field(default=1200, metadata={"help": "Step budget per run."})
    coupled_weight_decay: bool = field(
        default=True,
        metadata={
            "help": "Reference optimizer: torch.optim.Adam with L2 weight decay on every parameter (false: AdamW)."
        },
    )
    learning_rate: float = field(
        default=3e-3, metadata={"help": "Base lr (the papers use 1e-3; 3e-3 groks within the CPU budget)."}
    )
    weight_decay: float = field(
        default=1e-3, metadata={"help": "Weight decay, the same for every method but none_strong_wd (papers: 1e-3)."}
    )
    eval_strategy: str = field(default="steps", metadata={"help": "Evaluate test accuracy every eval_steps."})
    eval_steps: float = field(
        default=20, metadata={"help": "Steps between test-accuracy evaluations (one eval costs ~3 train steps)."}
    )
    logging_steps: float = field(default=20, metadata={"help": "Log loss, AGE and weight norm every N steps."})
    gradient_transform: str = field(
        default="none",
        metadata={
            "help": "Not a flag of this recipe: each run's transform is set from --methods (passing it is an error)."
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Continue interrupted runs: no value (or last) resumes every run from the newest complete "
            "checkpoint in its folder <output_dir>/<method>-seed<seed>; a checkpoint-N folder (anywhere) resumes the "
            "one run of a single --methods and --seeds. Needs --save_strategy steps in the interrupted command."
        },
    )


def _parse_list(text: str, name: str, cast=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{name} is empty; give a comma-separated list.")
    try:
        out = [cast(t) for t in items]
    except ValueError as err:
        raise ValueError(f"--{name}={text!r} could not be parsed as a list of {cast.__name__}.") from err
    if len(set(out)) != len(out):
        raise ValueError(f"--{name}={text!r} repeats an entry; list each once.")
    return out


def run_dir(output_dir: str, method: str, seed: int) -> str:
    """Folder of one (method, seed) run: its checkpoints live there."""
    return os.path.join(output_dir, f"{method}-seed{seed}")


#: Written into each (method, seed) run folder when the run starts afresh: the flags that define its equations, their
#: split and evaluation, and its model (`_run_record`), compared on resume by `check_run_record`.
RUN_RECORD_NAME = "neuralgrok_run.json"


def _run_record(task_args, model_args, method: str, seed: int) -> dict:
    """The resolved flags a resume of the (method, seed) run must keep: another --layout, --task of the same vocabulary
    or --num_attention_heads of the same width would load the checkpoint and go on training silently on other
    equations, or another model."""
    record = {
        "task": task_args.task,
        "p": task_args.p,
        "layout": task_args.layout,
        "train_fraction": task_args.train_fraction,
        "seeds": seed,
        "max_eval_samples": task_args.max_eval_samples,
        "target_accuracy": task_args.target_accuracy,
        **{f.name: getattr(model_args, f.name) for f in dataclasses.fields(model_args)},
    }
    if method in INNER_METHODS:  # the others train on the whole training split, whatever the outer fraction
        record["outer_fraction"] = task_args.outer_fraction
    return record


def _resume_plan(
    value,
    output_dir: str,
    methods: list[str],
    seeds: list[int],
    method_args: dict | None = None,
    max_steps: int | None = None,
) -> dict:
    """Checkpoint (or None) for every run, from `--resume_from_checkpoint`; raises ValueError before any work.
    `method_args`: each method's training arguments (`method_training_args`), which every checkpoint of the plan is
    checked against (`_check_checkpoint_method`); `max_steps`: a checkpoint saved beyond it (another, longer run's)
    is refused, and so is one saved with --save_only_model."""
    plan = _resume_plan_checkpoints(value, output_dir, methods, seeds)
    from ..utils.resume import refuse_checkpoint_past_max_steps, refuse_weights_only_checkpoint

    for (method, _), checkpoint in plan.items():
        refuse_weights_only_checkpoint(checkpoint)
        refuse_checkpoint_past_max_steps(checkpoint, max_steps)
        if checkpoint is not None and method_args is not None:
            _check_checkpoint_method(checkpoint, method, method_args[method])
    return plan


def _resume_plan_checkpoints(value, output_dir: str, methods: list[str], seeds: list[int]) -> dict:
    from ..utils.resume import last_complete_checkpoint, resolve_resume_checkpoint

    runs = [(m, s) for s in seeds for m in methods]
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "false", "none", "no", "0")):
        for method, seed in runs:
            found = last_complete_checkpoint(run_dir(output_dir, method, seed))
            if found is not None:
                raise ValueError(
                    f"{found} exists: this --output_dir holds checkpoints of an earlier run, which a fresh run would "
                    "overwrite. Pass --resume_from_checkpoint to continue it, or choose another --output_dir or delete "
                    "those checkpoint-N folders."
                )
        return dict.fromkeys(runs)
    if isinstance(value, str) and value.strip().lower() in ("true", "last", "latest", "yes", "1"):
        plan = {run: last_complete_checkpoint(run_dir(output_dir, *run)) for run in runs}
        if all(ckpt is None for ckpt in plan.values()):
            # No run has a checkpoint: let the shared helper raise its error (naming the flag and the folder).
            resolve_resume_checkpoint(value, run_dir(output_dir, *runs[0]))
        return plan
    if len(runs) != 1:
        raise ValueError(
            f"--resume_from_checkpoint={value!r} names one checkpoint folder, but this command trains {len(runs)} "
            "runs (methods x seeds). Pass --resume_from_checkpoint without a value (each run continues from its "
            "newest checkpoint), or a single --methods and --seeds."
        )
    checkpoint = resolve_resume_checkpoint(value, run_dir(output_dir, *runs[0]))
    method = runs[0][0]
    _check_checkpoint_method(checkpoint, method)  # its options: with every planned checkpoint in `_resume_plan`
    return {runs[0]: checkpoint}


def method_training_args(training_args, task_args, method: str, seed: int | None = None):
    """The `NeuralGrokConfig` that the run of `method` (and `seed`: its seed and output folder) trains with."""
    changes = dict(
        gradient_transform="none" if method == STRONG_WD else method,
        weight_decay=task_args.strong_weight_decay if method == STRONG_WD else training_args.weight_decay,
        resume_from_checkpoint=None,
    )
    if seed is not None:
        changes.update(seed=seed, output_dir=run_dir(training_args.output_dir, method, seed))
    return dataclasses.replace(training_args, **changes)


def _check_checkpoint_method(checkpoint: str, method: str, args=None) -> None:
    """A checkpoint to resume must come from a NeuralGrokTrainer run of the same gradient transform and, where the
    checkpoint records them, the same options that a resume would not apply (`resume_option_mismatches`: the weight
    decay, the base optimizer's betas / epsilon and the meta-Adam's options, which the optimizers' param groups bring
    back, so `none` and `none_strong_wd` checkpoints must not be swapped; `amplifier_c`; the amplifier's
    `amplifier_hidden_dims`, its shape). `args`: the method's training arguments (None: the transform only)."""
    import json

    from ..neuralgrok.state import load_state, state_exists
    from ..neuralgrok.trainer import META_OPTIMIZER_PREFIX, TRAINER_STATE_NAME, resume_option_mismatches

    path = os.path.join(checkpoint, TRAINER_STATE_NAME)
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
        saved = info.get("gradient_transform")
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--resume_from_checkpoint={checkpoint!r} has no readable {TRAINER_STATE_NAME} ({err}): it was not "
            "written by this recipe; pass a checkpoint-N folder of one of its runs."
        ) from err
    transform = "none" if method == STRONG_WD else method
    if saved != transform:
        raise ValueError(
            f"--resume_from_checkpoint={checkpoint!r} is a checkpoint of a {saved!r} run, but --methods is "
            f"{method!r}; pass --methods {saved} (or none_strong_wd for a none checkpoint of that baseline), or a "
            f"checkpoint of a {method} run."
        )
    if args is None:
        return
    prefix = os.path.join(checkpoint, META_OPTIMIZER_PREFIX)
    meta_state = load_state(prefix) if transform == "neuralgrok" and state_exists(prefix) else None
    changed = resume_option_mismatches(info, meta_state, args)
    if not changed:
        return
    decay_flag = "--strong_weight_decay" if method == STRONG_WD else "--weight_decay"

    def flag_value(value) -> str:  # as on the command line: a list as its space-separated entries
        return " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)

    listed = "; ".join(
        f"weight decay {old}, but --methods {method} trains with {new} ({decay_flag})"
        if name == "weight_decay"
        else f"--{name} {flag_value(old)}, but this command gives {flag_value(new)}"
        for name, old, new in changed
    )
    other = "none_strong_wd" if method == "none" else ("none" if method == STRONG_WD else None)
    hint = (
        f"pass --methods {other} if it is a checkpoint of that baseline, or "
        if other and any(name == "weight_decay" for name, _, _ in changed)
        else ""
    )
    raise ValueError(
        f"--resume_from_checkpoint={checkpoint!r} was trained with {listed} (a resume restores the optimizers' "
        "param groups and the amplifier from the checkpoint, so it would not train with the values this command "
        f"names); {hint}pass the values of that run."
    )


# Flags only some methods read: name -> the methods that read it. --outer_fraction carves D_outer out of the
# training split of neuralgrok and normalize (trained on D_inner); the amplifier's own options are neuralgrok's;
# normalize shares the per-tensor norm c and the clip after the transform.
_TASK_FLAG_READERS = {
    "strong_weight_decay": (STRONG_WD,),
    "outer_fraction": INNER_METHODS,
}
_TRAINING_FLAG_READERS = {
    "amplifier_c": ("neuralgrok", "normalize"),
    "amplifier_clip_norm": ("neuralgrok", "normalize"),
    "amplifier_hidden_dims": ("neuralgrok",),
    "outer_every": ("neuralgrok",),
    "outer_gradient": ("neuralgrok",),
    "meta_learning_rate": ("neuralgrok",),
    "meta_weight_decay": ("neuralgrok",),
    "virtual_lr": ("neuralgrok",),
    "outer_batch_size": ("neuralgrok",),
    "outer_max_samples": ("neuralgrok",),
    "grokfast_alpha": ("grokfast_ema",),
    "grokfast_lamb": ("grokfast_ema", "grokfast_ma"),
    "grokfast_window": ("grokfast_ma",),
    "grokfast_warmup": ("grokfast_ma",),
}


def flag_readers(flag: str) -> tuple[str, ...] | None:
    """The --methods that read the recipe flag `flag` (its field name, `outer_every` or `--outer-every` alike) when
    only some do (`--methods` without one of them refuses it, set away from its default); `None` when every method
    reads it (the model, data, step-budget and base-optimizer flags)."""
    name = flag.lstrip("-").split("=", 1)[0].replace("-", "_")
    return _TASK_FLAG_READERS.get(name) or _TRAINING_FLAG_READERS.get(name)


def recipe_outer_fraction(task_args: GrokTaskArguments, methods: list[str]) -> float:
    """The `outer_fraction` the runs split with: `--outer_fraction` when a method trains on D_inner (neuralgrok,
    normalize), else 0. The other methods train on the whole training split (the same rows whatever the outer
    fraction), so an outer set none of them uses is neither carved out nor checked: `--methods none` at a small --p
    used to be refused for an empty outer set, and --outer_fraction, its suggested fix, as a flag it does not read."""
    return task_args.outer_fraction if any(m in INNER_METHODS for m in methods) else 0.0


def _refuse_unread_flags(task_args: GrokTaskArguments, training_args, methods: list[str]) -> None:
    """A flag that none of the selected --methods reads, set away from its default, is an error naming it."""
    from ._common import changed_from_default

    unread = []
    for holder, readers in ((task_args, _TASK_FLAG_READERS), (training_args, _TRAINING_FLAG_READERS)):
        names = [n for n in readers if n in {f.name for f in dataclasses.fields(holder)}]
        for name in changed_from_default(holder, names):
            if not set(readers[name]) & set(methods):
                unread.append(f"--{name} (read only by {', '.join(readers[name])})")
    if unread:
        raise ValueError(
            f"--methods {','.join(methods)} would ignore {'; '.join(unread)}: drop "
            f"{'it' if len(unread) == 1 else 'them'} or add a method that reads {'it' if len(unread) == 1 else 'them'}."
        )


def validate_args(task_args: GrokTaskArguments, model_args: GrokModelArguments, training_args) -> tuple:
    """Check every argument before any data is built or anything is written. Returns methods, seeds, resume plan."""
    from ..neuralgrok.data import check_layout, resolve_task
    from ..utils.io import ensure_writable_dir
    from ._common import refuse_undistributed_launch

    refuse_undistributed_launch(training_args, "neuralgrok")  # N ranks that would each train alone
    resolve_task(task_args.task)
    try:
        check_layout(task_args.layout)
    except (TypeError, ValueError) as err:
        raise type(err)(f"--{err}") from err
    methods = _parse_list(task_args.methods, "methods")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"--methods has unknown entries {bad}; choose from {list(METHODS)}.")
    seeds = _parse_list(task_args.seeds, "seeds", int)
    if not all(0 <= s < 2**32 for s in seeds):
        raise ValueError(f"--seeds={task_args.seeds!r}: every seed must be an integer in [0, 2**32).")
    if not 0.0 < task_args.target_accuracy <= 1.0:
        raise ValueError(f"--target_accuracy={task_args.target_accuracy} must be in (0, 1].")
    if model_args.hidden_size % model_args.num_attention_heads:
        raise ValueError("--hidden_size must be divisible by --num_attention_heads.")
    if model_args.model_type != "grok_decoder":
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if model_args.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ValueError(
                f"--model_type={model_args.model_type!r} is not a transformers causal-LM model type; use "
                "grok_decoder (the papers' model) or one such as llama, gpt2 or qwen2."
            )
    if training_args.gradient_transform != "none":
        raise ValueError(
            f"--gradient_transform={training_args.gradient_transform!r} is not used by this recipe: every run's "
            "transform comes from --methods (e.g. --methods neuralgrok). Drop --gradient_transform."
        )
    if task_args.stop_at_target and training_args.eval_strategy == "no":
        raise ValueError(
            "--stop_at_target needs test-accuracy evaluations to see the target; set --eval_strategy steps (the "
            "default) or drop --stop_at_target."
        )
    if training_args.max_steps <= 0:
        raise ValueError("--max_steps must be positive: the runs are compared on a step budget.")
    if task_args.max_eval_samples is not None and task_args.max_eval_samples < 1:
        raise ValueError(f"--max_eval_samples={task_args.max_eval_samples} must be a positive int (or unset).")
    if task_args.torch_threads is not None and task_args.torch_threads < 1:
        raise ValueError("--torch_threads must be >= 1.")
    if not 0 <= task_args.strong_weight_decay < math.inf:  # inf reached NeuralGrokConfig, refused as --weight_decay
        raise ValueError(
            f"--strong_weight_decay={task_args.strong_weight_decay} must be a finite number >= 0 (the none_strong_wd "
            "baseline's weight decay)."
        )
    _refuse_unread_flags(task_args, training_args, methods)
    if training_args.activation_checkpointing and model_args.model_type == "grok_decoder":
        # the papers' decoder has no activation checkpointing: transformers refused it only when the first Trainer
        # was built, after the output folder was prepared
        raise ValueError(
            "--gradient_checkpointing / --activation_checkpointing: the grok_decoder model (the papers' decoder) does "
            "not support activation checkpointing (it is small enough not to need it); drop the flag, or use a "
            "transformers --model_type that supports it."
        )
    if "neuralgrok" in methods:  # NeuralGrokTrainer refuses it too, but only once the earlier methods have trained
        from ..neuralgrok.trainer import reentrant_checkpointing_message
        from ..utils.checks import reentrant_checkpointing

        on = training_args.activation_checkpointing
        reentrant = reentrant_checkpointing(training_args.activation_checkpointing_kwargs if on else None, None)
        if reentrant:
            raise ValueError(f"--methods neuralgrok: {reentrant_checkpointing_message(reentrant)}")
        # likewise FSDP: refused by NeuralGrokTrainer when it is built, after the methods before it have trained
        if training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
            raise ValueError(
                "--methods neuralgrok does not run under FSDP (--fsdp, or an accelerate config with FSDP): its outer "
                "step evaluates the model at virtual parameters through torch.func.functional_call, which FSDP's own "
                "all-gather bypasses. Train it with DDP (torchrun --nproc_per_node N ... --use_cpu true on CPUs) or "
                "in one process, or drop neuralgrok from --methods under FSDP."
            )
    # `not 0 < x < 1` also refuses NaN and inf (inf failed later with a bare OverflowError, naming no flag)
    if any(m in INNER_METHODS for m in methods) and not 0 < task_args.outer_fraction < 1:
        raise ValueError(
            f"--outer_fraction must be in (0, 1) when --methods includes neuralgrok or normalize (they train on "
            f"D_inner, the rest of the training split), got {task_args.outer_fraction}; pass e.g. --outer_fraction 0.02."
        )
    if any(m in INNER_METHODS for m in methods) and training_args.max_grad_norm > 0:
        raise ValueError(
            f"--max_grad_norm={training_args.max_grad_norm} would clip the raw gradient before the NeuralGrok / "
            "normalize transform; use --max_grad_norm 0 (they clip after the transform: --amplifier_clip_norm)."
        )
    # The task's equations are cheap to build: --p, --train_fraction and --outer_fraction are checked on the real
    # split sizes here, before anything is written (an outer set that rounds to 0 rows would otherwise fail only
    # after the earlier methods have trained).
    from ..neuralgrok.data import (
        MAX_EQUATIONS,
        build_arithmetic_dataset,
        num_arithmetic_equations,
        split_arithmetic_dataset,
    )

    if isinstance(task_args.p, int) and task_args.p >= 2:
        rows = num_arithmetic_equations(task_args.task, task_args.p)
        if rows > MAX_EQUATIONS:
            raise ValueError(
                f"--task {task_args.task} with --p {task_args.p} has {rows:,} equations (more than {MAX_EQUATIONS:,}: "
                "it would not fit in memory); pass a smaller prime, e.g. --p 7 (the papers' modulus for "
                "a*c+b*d-e, 12,348 equations)."
            )
    try:
        dataset = build_arithmetic_dataset(task_args.task, task_args.p, task_args.layout)
        splits = split_arithmetic_dataset(dataset, task_args.train_fraction, 0.0)
    except (TypeError, ValueError) as err:
        raise type(err)(f"--p / --train_fraction: {err}") from err
    outer_fraction = recipe_outer_fraction(task_args, methods)
    train_rows = len(splits["train"])
    if outer_fraction > 0 and int(outer_fraction * train_rows) == 0:  # split_arithmetic_dataset's outer size
        from ..neuralgrok.data import min_outer_fraction

        inner = ", ".join(m for m in methods if m in INNER_METHODS)
        raise ValueError(
            f"--outer_fraction {outer_fraction} of the {train_rows} training rows (--p {task_args.p}, --train_fraction "
            f"{task_args.train_fraction}) rounds to an empty outer set, which --methods {inner} needs (D_outer); pass "
            f"--outer_fraction {min_outer_fraction(train_rows)} or more, or a larger --p / --train_fraction."
        )
    splits = split_arithmetic_dataset(dataset, task_args.train_fraction, outer_fraction)
    if training_args.dataloader_drop_last:
        global_batch = training_args.per_device_train_batch_size * training_args.world_size
        for method in methods:
            rows = len(splits["inner" if method in INNER_METHODS else "train"])
            if rows < global_batch:
                raise ValueError(
                    f"--dataloader_drop_last true drops each epoch's last partial batch, but --methods {method} trains "
                    f"on {rows} rows, fewer than one batch (--per_device_train_batch_size "
                    f"{training_args.per_device_train_batch_size} x {training_args.world_size} process(es) = "
                    f"{global_batch}): no step would train. Lower --per_device_train_batch_size or drop "
                    "--dataloader_drop_last."
                )
    if model_args.model_type != "grok_decoder":
        from ..neuralgrok.data import arithmetic_vocab_size

        _check_causal(model_args, arithmetic_vocab_size(task_args.task, task_args.p), dataset[0]["input_ids"])
    plan = _resume_plan(
        training_args.resume_from_checkpoint,
        training_args.output_dir,
        methods,
        seeds,
        {m: method_training_args(training_args, task_args, m) for m in methods},
        training_args.max_steps,
    )
    from ._common import check_run_record, checkpoint_run_folder, refuse_checkpoints_of_another_run

    for (method, seed), checkpoint in plan.items():
        if checkpoint is not None:  # the folder of the run that wrote it (a named checkpoint may be another run's)
            run_folder = checkpoint_run_folder(
                checkpoint, run_dir(training_args.output_dir, method, seed), RUN_RECORD_NAME
            )
            check_run_record(
                run_folder,
                RUN_RECORD_NAME,
                _run_record(task_args, model_args, method, seed),
                "the equations, split, evaluation and model",
            )
            # not beside the checkpoints of yet another run in this run's folder (`write_run_record`)
            refuse_checkpoints_of_another_run(checkpoint, run_folder, run_dir(training_args.output_dir, method, seed))
    ensure_writable_dir(training_args.output_dir, "--output_dir")
    return methods, seeds, plan


def _check_causal(model_args: GrokModelArguments, vocab_size: int, example) -> None:
    """A transformers `--model_type` must build and must not see the answer: the input holds the whole equation, so
    a model whose logits before the last token depend on that token (a bidirectional encoder) would read the answer
    off its input and "grok" at once."""
    import torch

    ids = torch.as_tensor(example).reshape(1, -1)
    other = ids.clone()
    other[0, -1] = (int(ids[0, -1]) + 1) % vocab_size
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(model_args, vocab_size, ids.shape[1]).eval()
            with torch.no_grad():
                a, b = (model(input_ids=x).logits[0, :-1] for x in (ids, other))
    except Exception as err:  # noqa: BLE001  (any construction or forward failure of that architecture)
        raise ValueError(
            f"--model_type={model_args.model_type!r} could not be built and run as a causal LM from config "
            f"({type(err).__name__}: {err}); use grok_decoder or a decoder type such as llama, gpt2 or qwen2."
        ) from err
    if not torch.allclose(a, b):
        raise ValueError(
            f"--model_type={model_args.model_type!r} is not causal here (its predictions depend on later tokens, so "
            "it would read the answer off the input); use grok_decoder or a decoder type such as llama, gpt2 or qwen2."
        )


def epoch_end_note(rows: int, per_device_batch: int, world_size: int, drop_last: bool) -> str | None:
    """What a data-parallel run does at the end of each epoch where one process at the same global batch would not
    (`None` when they agree): accelerate's `even_batches` fills the last step's batch of every rank with rows from the
    start of the epoch's order."""
    global_batch = per_device_batch * world_size
    rest = rows % global_batch
    if world_size <= 1 or drop_last or rest == 0:
        return None
    return (
        f"note: {rows} training rows are not a multiple of the global batch ({per_device_batch} x {world_size} ranks = "
        f"{global_batch}). On {world_size} ranks the last step of each epoch trains on its last {rest} rows plus "
        f"{global_batch - rest} rows repeated from the start of the epoch's order (accelerate's even_batches fills "
        f"every rank's batch), where one process at batch {global_batch} trains on those {rest} alone: from the end of "
        "the first epoch on the run differs from one process. Pass --dataloader_drop_last true (to the one-process "
        "run too) to drop each epoch's last partial batch in both."
    )


def build_model(model_args: GrokModelArguments, vocab_size: int, seq_len: int):
    """The papers' decoder, or a transformers causal LM of `model_type` built from config."""
    if model_args.model_type == "grok_decoder":
        from ..neuralgrok.modeling import GrokDecoderConfig, GrokDecoderForCausalLM

        config = GrokDecoderConfig(
            vocab_size=vocab_size,
            hidden_size=model_args.hidden_size,
            num_hidden_layers=model_args.num_hidden_layers,
            num_attention_heads=model_args.num_attention_heads,
            max_position_embeddings=seq_len,
        )
        return GrokDecoderForCausalLM(config)
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_args.model_type,
        vocab_size=vocab_size,
        hidden_size=model_args.hidden_size,
        intermediate_size=4 * model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        num_key_value_heads=model_args.num_attention_heads,
        max_position_embeddings=max(seq_len, 16),
        is_decoder=True,  # models that are also encoders (bert, roberta) attend causally only with it
    )
    return AutoModelForCausalLM.from_config(config)


_CURVE_KEYS = ("loss", "train_accuracy", "age_raw", "age_transformed", "weight_norm", "awe")


def _curves(log_history: list[dict]) -> dict:
    out = {"train_step": [], **{k: [] for k in _CURVE_KEYS}, "eval_step": [], "test": [], "eval_loss": []}
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            out["train_step"].append(entry["step"])
            for key in _CURVE_KEYS:
                out[key].append(entry.get(key))
        if "eval_accuracy" in entry:
            out["eval_step"].append(entry["step"])
            out["test"].append(entry["eval_accuracy"])
            out["eval_loss"].append(entry.get("eval_loss"))
    return out


def _complexity(curves: dict, window: int | None = None) -> dict:
    """Summaries of AGE (raw gradient) and weight norm over the run's logged steps up to `window` (default: all)."""
    keep = [window is None or step <= window for step in curves["train_step"]]
    age = [v for v, k in zip(curves["age_raw"], keep) if k and v is not None]
    norms = [v for v, k in zip(curves["weight_norm"], keep) if k and v is not None]
    tests = [a for step, a in zip(curves["eval_step"], curves["test"]) if window is None or step <= window]
    tail = max(1, len(age) // 10)
    return {
        "test_accuracy_at_window": tests[-1] if tests else None,
        "mean_age_raw": statistics.fmean(age) if age else None,
        "peak_age_raw": max(age) if age else None,
        "final_age_raw": statistics.fmean(age[-tail:]) if age else None,
        "peak_weight_norm": max(norms) if norms else None,
        "final_weight_norm": norms[-1] if norms else None,
    }


def _mean_std(values: list) -> tuple[float | None, float | None]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    if not all(math.isfinite(v) for v in values):  # a diverged seed: statistics.stdev raises on NaN / inf
        return statistics.fmean(values), math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per method: mean and spread over seeds of every figure; ratios to the baseline `none` where it ran.

    A run that never reaches the target enters `steps_to_target_mean` as the steps it ran (its budget; so the mean is
    a lower bound; `reached` says how many seeds got there), the training-time means with its whole training time
    (also a lower bound) and is left out of the wall-clock mean. AGE and
    weight-norm summaries cover the steps every run has (`complexity_window`, the shortest run), so that runs with
    different budgets are compared over the same steps.
    """
    window = min(r["steps_run"] for method_runs in runs.values() for r in method_runs)
    out: dict = {}
    for method, method_runs in runs.items():
        steps = [r["steps_to_target"] for r in method_runs]
        censored = [s if s is not None else r["steps_run"] for s, r in zip(steps, method_runs)]
        ranked = [s if s is not None else float("inf") for s in steps]
        median = statistics.median(ranked)
        res: dict = {
            "runs": method_runs,
            "reached": sum(s is not None for s in steps),
            "seeds": len(method_runs),
            "median_steps_to_target": None if median == float("inf") else median,
        }
        res["steps_to_target_mean"], res["steps_to_target_std"] = _mean_std(censored)
        for key in ("seconds_per_step", "wall_seconds_to_target", "cpu_seconds_per_step"):
            res[f"{key}_mean"], res[f"{key}_std"] = _mean_std([r[key] for r in method_runs])
        # training time to the target; a run that never reached it counts with its whole training time (lower bound)
        for key, per_step in (
            ("seconds_to_target", "seconds_per_step"),
            ("cpu_seconds_to_target", "cpu_seconds_per_step"),
        ):
            values = [
                r[key] if r[key] is not None else (r[per_step] * r["steps_run"] if r[per_step] is not None else None)
                for r in method_runs
            ]
            res[f"{key}_mean"], res[f"{key}_std"] = _mean_std(values)
        res["median_seconds_per_step"] = statistics.median(r["median_seconds_per_step"] for r in method_runs)
        for key in ("accuracy_drops", "loss_spikes", "min_test_accuracy_after_target"):
            res[f"{key}_mean"], _ = _mean_std([r["stability"][key] for r in method_runs])
        res["complexity_window"] = window
        complexity = [_complexity(r["curves"], window) for r in method_runs]
        for key in (
            "mean_age_raw",
            "final_age_raw",
            "peak_age_raw",
            "peak_weight_norm",
            "final_weight_norm",
            "test_accuracy_at_window",
        ):
            res[f"{key}_mean"], res[f"{key}_std"] = _mean_std([c[key] for c in complexity])
        out[method] = res
    base = out.get("none")
    for res in out.values():
        res["cost_per_step_vs_none"] = (
            res["seconds_per_step_mean"] / base["seconds_per_step_mean"]
            if base and base["seconds_per_step_mean"]
            else None
        )
        for key, name in (
            ("seconds_to_target_mean", "time_to_target_vs_none"),
            ("cpu_seconds_to_target_mean", "cpu_time_to_target_vs_none"),
            ("cpu_seconds_per_step_mean", "cpu_cost_per_step_vs_none"),
        ):
            both = base and res[key] is not None and base[key]
            res[name] = res[key] / base[key] if both else None
        res["steps_to_target_vs_none"] = (
            res["steps_to_target_mean"] / base["steps_to_target_mean"]
            if base and base["steps_to_target_mean"]
            else None
        )
    return out


def amplifier_share(methods: dict) -> dict | None:
    """How much of NeuralGrok's step reduction over the baseline the normalisation-only control already gives.

    Only defined when the three methods reached the target on every seed (otherwise the means are censored lower
    bounds and a share would be meaningless): then `None`.
    """
    names = ("none", "normalize", "neuralgrok")
    if not all(m in methods and methods[m]["reached"] == methods[m]["seeds"] for m in names):
        return None
    base, norm, ng = (methods[m]["steps_to_target_mean"] for m in ("none", "normalize", "neuralgrok"))
    gain = base - ng
    return {
        "baseline_minus_neuralgrok_steps": gain,
        "baseline_minus_normalize_steps": base - norm,
        "normalize_minus_neuralgrok_steps": norm - ng,
        "share_from_normalisation": (base - norm) / gain if gain > 0 else None,
        "share_from_learned_amplifier": (norm - ng) / gain if gain > 0 else None,
    }


def _fmt(mean, std=None, digits=0, suffix="") -> str:
    if mean is None:
        return "-"
    text = f"{mean:.{digits}f}"
    if std is not None:
        text += f" ± {std:.{digits}f}"
    return text + suffix


def markdown_tables(results: dict) -> str:
    """The two result tables (speed and cost; complexity and stability) as Markdown."""
    target = results["target_accuracy"]
    window = next(iter(results["methods"].values()))["complexity_window"]
    lines = [
        f"## {results['task']} mod {results['p']} ({results.get('layout', 'interleaved')} token layout), seeds "
        f"{results['seeds']}, target {target:.0%} test accuracy",
        "",
        "Mean ± standard deviation over seeds. A seed that never reaches the target counts as its step budget "
        f"(max {results['max_steps']}) in the steps mean and with its whole training time in the training-time means "
        "(both lower bounds), and is left out of the wall-clock mean. Step time: mean over all "
        "optimizer steps, outer steps included. Training time: sum of step times up to the target step (evaluation "
        "excluded); wall-clock: elapsed time to that evaluation (evaluations included). CPU: the same in CPU time of the "
        "process (one torch thread), which the load of other jobs does not inflate.",
        "",
        "| method | reached | steps to target | per seed | mean s/step | × baseline | training s to target | "
        "× baseline | wall-clock s to target | mean CPU s/step | × baseline | CPU s to target | × baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, res in results["methods"].items():
        per_seed = ", ".join(str(r["steps_to_target"]) for r in res["runs"])
        lines.append(
            f"| {METHOD_LABELS.get(method, method)} | {res['reached']}/{res['seeds']} "
            f"| {_fmt(res['steps_to_target_mean'], res['steps_to_target_std'])} | {per_seed} "
            f"| {_fmt(res['seconds_per_step_mean'], res['seconds_per_step_std'], 3)} "
            f"| {_fmt(res['cost_per_step_vs_none'], digits=2)} "
            f"| {_fmt(res['seconds_to_target_mean'], res['seconds_to_target_std'], 1)} "
            f"| {_fmt(res['time_to_target_vs_none'], digits=2)} "
            f"| {_fmt(res['wall_seconds_to_target_mean'], res['wall_seconds_to_target_std'], 1)} "
            f"| {_fmt(res['cpu_seconds_per_step_mean'], res['cpu_seconds_per_step_std'], 4)} "
            f"| {_fmt(res['cpu_cost_per_step_vs_none'], digits=2)} "
            f"| {_fmt(res['cpu_seconds_to_target_mean'], res['cpu_seconds_to_target_std'], 1)} "
            f"| {_fmt(res['cpu_time_to_target_vs_none'], digits=2)} |"
        )
    share = results.get("amplifier_share")
    if share and share["share_from_learned_amplifier"] is not None:
        lines += [
            "",
            f"Of NeuralGrok's {share['baseline_minus_neuralgrok_steps']:.0f}-step reduction, normalisation alone "
            f"gives {share['baseline_minus_normalize_steps']:.0f} steps "
            f"({share['share_from_normalisation']:.0%}); the learned amplifier adds "
            f"{share['normalize_minus_neuralgrok_steps']:.0f} ({share['share_from_learned_amplifier']:.0%}).",
        ]
    lines += [
        "",
        f"| method | test acc at step {window} | mean AGE (raw grad) | final AGE | peak weight norm | final weight norm "
        "| accuracy drops after target | loss spikes after target | min test acc after target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, res in results["methods"].items():
        lines.append(
            f"| {METHOD_LABELS.get(method, method)} "
            f"| {_fmt(res['test_accuracy_at_window_mean'], res['test_accuracy_at_window_std'], 3)} "
            f"| {_fmt(res['mean_age_raw_mean'], res['mean_age_raw_std'], 1)} "
            f"| {_fmt(res['final_age_raw_mean'], res['final_age_raw_std'], 1)} "
            f"| {_fmt(res['peak_weight_norm_mean'], res['peak_weight_norm_std'], 1)} "
            f"| {_fmt(res['final_weight_norm_mean'], res['final_weight_norm_std'], 1)} "
            f"| {_fmt(res['accuracy_drops_mean'], digits=2)} | {_fmt(res['loss_spikes_mean'], digits=2)} "
            f"| {_fmt(res['min_test_accuracy_after_target_mean'], digits=3)} |"
        )
    lines += [
        "",
        "AGE = -Σ|g| ln|g| of the raw gradient (as computed by backward, before any transform), averaged over the "
        f"logged steps 1..{window} (the steps every run has); "
        "final = mean of the last 10% of those logs; weight norms over the same steps. Stability after first reaching the "
        "target (seeds that reached it): accuracy drops = falls of test accuracy below target - 0.1; loss spikes = "
        "rises of the training loss above max(10 × its running minimum, 0.05).",
    ]
    return "\n".join(lines) + "\n"


def plot_curves(results: dict, path: str, target: float) -> None:
    """Train (dashed) and test (solid) accuracy per method, and the AGE of raw / transformed gradients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.io import atomic_savefig

    fig, (ax_acc, ax_age) = plt.subplots(1, 2, figsize=(13, 4.5))
    for method, res in results["methods"].items():
        color = COLORS.get(method)
        for i, run in enumerate(res["runs"]):
            c = run["curves"]
            label = METHOD_LABELS.get(method, method) if i == 0 else None
            alpha = 1.0 if i == 0 else 0.35
            ax_acc.plot(c["eval_step"], c["test"], color=color, alpha=alpha, label=f"{label} test" if label else None)
            ax_acc.plot(
                c["train_step"],
                c["train_accuracy"],
                "--",
                color=color,
                alpha=alpha,
                label=f"{label} train" if label else None,
            )
            if i == 0 and any(v is not None for v in c["age_raw"]):
                ax_age.plot(c["train_step"], c["age_raw"], color=color, label=f"{label} raw")
                if any(v is not None for v in c["age_transformed"]):
                    ax_age.plot(c["train_step"], c["age_transformed"], ":", color=color, label=f"{label} transformed")
    ax_acc.axhline(target, color="gray", lw=0.8, ls=":")
    ax_acc.set(
        xlabel="optimizer step", ylabel="accuracy", title=f"{results['task']} mod {results['p']}", ylim=(0, 1.02)
    )
    ax_acc.legend(fontsize=7)
    ax_age.set(xlabel="optimizer step", ylabel="absolute gradient entropy", title="AGE (first seed)", yscale="symlog")
    if ax_age.get_legend_handles_labels()[0]:  # no AGE was logged in runs shorter than logging_steps
        ax_age.legend(fontsize=7)
    else:
        ax_age.text(0.5, 0.5, "no AGE logged", ha="center", va="center", transform=ax_age.transAxes)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def plot_complexity(results: dict, path: str, target: float) -> None:
    """AGE of the raw gradient, weight norm and test accuracy over training, every seed (first seed opaque)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.io import atomic_savefig

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for method, res in results["methods"].items():
        color = COLORS.get(method)
        for i, run in enumerate(res["runs"]):
            c = run["curves"]
            kw = dict(color=color, alpha=1.0 if i == 0 else 0.3, lw=1.2 if i == 0 else 0.8)
            kw["label"] = METHOD_LABELS.get(method, method) if i == 0 else None
            steps = c["train_step"]
            age = [v if v is not None else float("nan") for v in c["age_raw"]]
            axes[0].plot(steps, age, **kw)
            axes[1].plot(steps, [v if v is not None else float("nan") for v in c["weight_norm"]], **kw)
            axes[2].plot(c["eval_step"], c["test"], **kw)
    axes[0].set(xlabel="optimizer step", ylabel="AGE of the raw gradient", title="Absolute gradient entropy")
    axes[0].set_yscale("symlog")
    axes[1].set(xlabel="optimizer step", ylabel="l2 norm of all weights", title="Weight norm")
    axes[2].axhline(target, color="gray", lw=0.8, ls=":")
    axes[2].set(xlabel="optimizer step", ylabel="test accuracy", title="Stability after grokking", ylim=(0, 1.02))
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"{results['task']} mod {results['p']}, seeds {results['seeds']}")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


# The report files a run writes into --output_dir (a fresh run removes an earlier run's before it starts).
RESULT_FILES = ("neuralgrok_results.json", "neuralgrok_results.md", "grokking_curves.png", "complexity_stability.png")


def run(
    task_args: GrokTaskArguments,
    model_args: GrokModelArguments,
    training_args: GrokTrainingArguments,
    plots: bool = True,
) -> dict:
    """Train every method on every seed; return and write steps and time to target, cost, complexity, stability
    (`plots=False`: without the two PNGs, see `write_outputs`).

    Under a multi-process launch (DDP) every rank trains and returns the results; the result files and the printed
    tables are the main process's."""
    methods, seeds, plan = validate_args(task_args, model_args, training_args)
    main = training_args.process_index == 0
    if main:  # an older run's results must not look current if this run stops early
        from ._common import clear_previous_results

        clear_previous_results(training_args.output_dir, RESULT_FILES, any(plan.values()))
    import torch
    from transformers import set_seed

    from ..neuralgrok.data import arithmetic_vocab_size, build_arithmetic_dataset, split_arithmetic_dataset
    from ..neuralgrok.metrics import arithmetic_accuracy, preprocess_logits_for_accuracy, stability_after_target
    from ..neuralgrok.trainer import GrokkingCallback, NeuralGrokTrainer

    if task_args.torch_threads is not None:
        torch.set_num_threads(task_args.torch_threads)
    dataset = build_arithmetic_dataset(task_args.task, task_args.p, task_args.layout)
    vocab = arithmetic_vocab_size(task_args.task, task_args.p)
    seq_len = len(dataset[0]["input_ids"])
    target = task_args.target_accuracy
    results: dict = {
        "task": task_args.task,
        "p": task_args.p,
        "layout": task_args.layout,
        "seeds": seeds,
        "target_accuracy": target,
        "max_steps": training_args.max_steps,
        "strong_weight_decay": task_args.strong_weight_decay,
    }
    runs: dict[str, list[dict]] = {method: [] for method in methods}
    noted: set[int] = set()
    # Seed-major order: every method is done on a seed before the next seed starts (similar machine load per seed).
    for seed in seeds:
        splits = split_arithmetic_dataset(
            dataset, task_args.train_fraction, recipe_outer_fraction(task_args, methods), seed
        )
        test = splits["test"]
        if task_args.max_eval_samples is not None and task_args.max_eval_samples < len(test):
            test = test.select(range(task_args.max_eval_samples))  # the split is already a random permutation
        for method in methods:
            set_seed(seed)
            model = build_model(model_args, vocab, seq_len)
            args = method_training_args(training_args, task_args, method, seed)
            transform = args.gradient_transform
            callback = GrokkingCallback(target, stop_on_target=task_args.stop_at_target)
            train = splits["inner"] if method in INNER_METHODS else splits["train"]
            note = epoch_end_note(
                len(train), args.per_device_train_batch_size, args.world_size, args.dataloader_drop_last
            )
            if main and note and len(train) not in noted:
                noted.add(len(train))
                print(f"[{method}] {note}", flush=True)
            trainer = NeuralGrokTrainer(
                model=model,
                args=args,
                train_dataset=train,
                eval_dataset=test,
                outer_dataset=splits["outer"] if transform == "neuralgrok" else None,
                compute_metrics=arithmetic_accuracy,
                preprocess_logits_for_metrics=preprocess_logits_for_accuracy,
                callbacks=[callback],
            )
            checkpoint = plan[(method, seed)]
            if main:  # what a resume of this run must keep (checked in validate_args)
                from ._common import write_run_record

                record = _run_record(task_args, model_args, method, seed)
                write_run_record(args.output_dir, RUN_RECORD_NAME, record, resumed_from=checkpoint)
            start_step = 0
            if checkpoint is not None and main:
                print(f"[{method} seed {seed}] resuming from {checkpoint}", flush=True)
            train_or_restore_finished(trainer, checkpoint)  # a finished run: restored, no step past max_steps
            if checkpoint is not None:
                start_step = trainer._initial_global_step
            curves = _curves(trainer.state.log_history)
            record = {
                "seed": seed,
                "steps_to_target": callback.steps_to_target,
                "steps_run": trainer.state.global_step,
                "resumed_from": os.path.basename(checkpoint) if checkpoint else None,
                "steps_run_in_this_process": trainer.state.global_step - start_step,
                "seconds_per_step": callback.seconds_per_step,
                "median_seconds_per_step": callback.median_seconds_per_step,
                "seconds_to_target": callback.seconds_to_target,
                "cpu_seconds_per_step": callback.cpu_seconds_per_step,
                "cpu_seconds_to_target": callback.cpu_seconds_to_target,
                "wall_seconds_to_target": callback.wall_seconds_to_target,
                "final_test_accuracy": curves["test"][-1] if curves["test"] else None,
                "stability": stability_after_target(
                    curves["eval_step"], curves["test"], curves["train_step"], curves["loss"], target
                ),
                "complexity": _complexity(curves),
                "curves": curves,
            }
            runs[method].append(record)
            spt = record["seconds_per_step"]
            if main:
                print(
                    f"[{method} seed {seed}] steps to {target:.0%} test accuracy: {callback.steps_to_target} "
                    f"(ran {trainer.state.global_step} steps, mean {spt if spt is None else round(spt, 4)} s/step, "
                    f"{record['seconds_to_target']} s of training to target)",
                    flush=True,
                )
            if transform == "neuralgrok":
                n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
                results["amplifier"] = {
                    "hidden_dims": list(trainer.amplifier.hidden_dims),
                    "macs_per_entry": trainer.amplifier.macs_per_entry,
                    "model_parameters": n_params,
                    "transform_macs_per_step": trainer.amplifier.macs_per_entry * n_params,
                }
    results["methods"] = summarize(runs)
    results["amplifier_share"] = amplifier_share(results["methods"])
    if main:  # one writer: every rank's files would be the same run's, with that rank's own timings
        write_outputs(results, training_args.output_dir, plots=plots)
    return results


def merge_results(parts: list[dict]) -> dict:
    """Combine results of the same setting run as separate processes (e.g. one per seed, or one per method and seed).

    Every (method, seed) run may appear once; the merged methods keep the order in which they first appear.
    """
    if not parts:
        raise ValueError("merge_results needs at least one results dict.")
    keys = ("task", "p", "layout", "target_accuracy", "strong_weight_decay")
    # results written before --layout existed hold no "layout": they were all built with the interleaved one
    parts = [part if "layout" in part else {**part, "layout": "interleaved"} for part in parts]
    first = parts[0]
    for other in parts[1:]:
        if any(other[k] != first[k] for k in keys):
            raise ValueError(f"Results to merge must share {keys}; got {[{k: o[k] for k in keys} for o in parts]}.")
    runs: dict[str, list[dict]] = {}
    seen = set()
    for part in parts:
        for method, res in part["methods"].items():
            for run in res["runs"]:
                if (method, run["seed"]) in seen:
                    raise ValueError(f"Results to merge repeat seeds: {method} seed {run['seed']} appears twice.")
                seen.add((method, run["seed"]))
                runs.setdefault(method, []).append(run)
    for method_runs in runs.values():
        method_runs.sort(key=lambda r: r["seed"])
    merged = {k: first[k] for k in keys}
    merged["seeds"] = sorted({seed for _, seed in seen})
    merged["max_steps"] = max(part["max_steps"] for part in parts)
    for part in parts:
        if "amplifier" in part:
            merged["amplifier"] = part["amplifier"]
    merged["methods"] = summarize(runs)
    merged["amplifier_share"] = amplifier_share(merged["methods"])
    return merged


def write_outputs(results: dict, out: str, plots: bool = True) -> None:
    """Write the PNGs, the Markdown tables and the JSON of `results` into `out` (atomically) and print the tables.
    `plots=False` draws no PNG (for a caller that reads only the results, e.g. scripts/bench_neuralgrok.py: drawing
    them costs more CPU than a short run's training)."""
    from ..utils.io import atomic_write_results, atomic_write_text

    target = results["target_accuracy"]
    png = os.path.join(out, "grokking_curves.png")
    png_complexity = os.path.join(out, "complexity_stability.png")
    if plots:
        plot_curves(results, png, target)
        plot_complexity(results, png_complexity, target)
    table = markdown_tables(results)
    atomic_write_text(os.path.join(out, "neuralgrok_results.md"), table)
    atomic_write_results(os.path.join(out, "neuralgrok_results.json"), results)
    print()
    print(table)
    if "amplifier" in results:
        amp = results["amplifier"]
        print(
            f"amplifier {amp['hidden_dims']}: {amp['macs_per_entry']} MACs per gradient entry x "
            f"{amp['model_parameters']} parameters = {amp['transform_macs_per_step'] / 1e6:.0f} MMAC per transform as a "
            "direct MLP (the transform evaluates its exact piecewise-linear form instead)"
        )
    if plots:
        print(f"curves: {png}, {png_complexity}")


def _split_resume_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take `--resume_from_checkpoint [VALUE]` (or its dashed alias `--resume-from-checkpoint`) out of `argv`: this
    recipe resolves it per run folder (`<output_dir>/<method>-seed<seed>`), not in `--output_dir` itself."""
    value, rest, i = None, [], 0
    spellings = ("--resume_from_checkpoint", "--resume-from-checkpoint")  # the dashed alias is listed in --help
    while i < len(argv):
        tok = argv[i]
        if tok.startswith(tuple(f"{flag}=" for flag in spellings)):
            value = tok.split("=", 1)[1]
        elif tok in spellings and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            value = "last"  # bare flag: every run's newest checkpoint
        elif tok in spellings:
            value = argv[i + 1]
            i += 1
        else:
            rest.append(tok)
        i += 1
    return value, rest


def main(argv: list[str] | None = None, plots: bool = True) -> dict:
    """The recipe on `argv` (default: the command line); `plots=False` writes every result file but the two PNGs."""
    import sys

    from ..utils.resume import normalize_resume_argv
    from ._common import finish, parse_recipe_args

    argv = normalize_resume_argv(list(sys.argv[1:] if argv is None else argv))
    resume, argv = _split_resume_flag(argv)
    task_args, model_args, training_args = parse_recipe_args(
        (GrokTaskArguments, GrokModelArguments, GrokTrainingArguments), argv
    )
    training_args.resume_from_checkpoint = resume
    return finish(run(task_args, model_args, training_args, plots=plots))


if __name__ == "__main__":
    main()
