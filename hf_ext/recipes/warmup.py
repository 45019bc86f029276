"""Warmup study: AdamW and LionAR (and LionA), each with and without LR warmup, with update-size metrics.

Run as `python scripts/warmup.py`, `accelerate launch scripts/warmup.py` or `hf-ext run warmup`. Every arm trains a fresh
copy of the same small GPT-style model (built from a config: `--architecture` llama, gpt2 or the post-LayerNorm
openai-gpt) on the embedded corpus with the trapezoid schedule (transformers' `warmup_stable_decay` with linear decay
over the last half), logs the update metrics of
`hf_ext.optim.UpdateMetricsCallback`, and the recipe writes `warmup_results.json` (per arm, plus each optimizer's
warmup gap = eval loss without warmup minus eval loss with warmup) and `warmup.png` (loss curves + update metrics) to
`--output_dir`, each arm's Trainer output to `--output_dir/<arm>`.

`--resume_from_checkpoint` (bare, `true`/`last`, or a folder): with `last` every arm continues from the newest complete
`checkpoint-N` in its own folder (arms without one start from scratch; at least one arm must have one); a checkpoint
folder can only be named when a single arm is trained. Save checkpoints with `--save_strategy steps --save_steps N`.
Every checkpoint records its arm (`warmup_arm.json`: arm, optimizer, warmup fraction); a resume refuses, before any
work, a checkpoint of another arm (or optimizer), one trained with another `--warmup_fraction`, and one trained with
other optimizer or schedule options (`--lion_beta1`, `--nesterov`, `--cooldown_fraction`, ...: see `WarmupFreeTrainer`).
A checkpoint written before hf_ext recorded the arm is resumed with a warning (it cannot be checked).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field

from ..optim.warmup_trainer import WarmupFreeTrainer, WarmupFreeTrainingArguments
from ..utils.io import atomic_savefig, atomic_write_json, atomic_write_results
from ..utils.resume import train_or_restore_finished
from ._common import validation_split_seed_field

logger = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "gpt2", "openai-gpt")
ARMS = ("adamw_warmup", "adamw_no_warmup", "lion_ar_warmup", "lion_ar_no_warmup", "lion_a_warmup", "lion_a_no_warmup")
#: Written into every checkpoint of an arm: `{"arm", "optimizer", "warmup_fraction"}`, checked by a resume.
ARM_RECORD_NAME = "warmup_arm.json"
#: Written into each arm's folder when the arm starts afresh: the flags that define its data and model
#: (`RUN_RECORD_FLAGS`), compared on resume (`check_run_record`).
RUN_RECORD_NAME = "warmup_run.json"
RUN_RECORD_FLAGS = (
    "architecture", "hidden_act", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "vocab_size", "block_size", "max_eval_blocks", "train_file", "validation_split_seed",
)  # fmt: skip


@dataclass
class WarmupRecipeArguments:
    arms: str = field(
        default="adamw_warmup,adamw_no_warmup,lion_ar_warmup,lion_ar_no_warmup",
        metadata={"help": f"Comma-separated arms to train, from {', '.join(ARMS)}."},
    )
    warmup_fraction: float = field(default=0.05, metadata={"help": "Warmup length of the *_warmup arms (fraction)."})
    lion_lr_ratio: float = field(
        default=0.1,
        metadata={
            "help": "Lion-family LR = ratio x --learning_rate (weight decay divided by it: same lr*wd product)."
        },
    )
    architecture: str = field(
        default="llama",
        metadata={
            "help": "Model built from a config: llama (pre-RMSNorm), gpt2 (pre-LayerNorm, Conv1D weights) or "
            "openai-gpt (GPT-1: post-LayerNorm, Conv1D weights, MLP width fixed at 4 x hidden); no dropout."
        },
    )
    hidden_act: str | None = field(
        default=None,
        metadata={
            "help": "MLP activation (a transformers activation name, e.g. relu); default: the architecture's own "
            "(silu for llama, gelu_new for gpt2, gelu for openai-gpt). With relu, large early updates leave dead "
            "units for good, the mechanism of the paper's ResNet appendix."
        },
    )
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of the model."})
    intermediate_size: int = field(default=256, metadata={"help": "MLP width."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads."})
    vocab_size: int = field(default=1024, metadata={"help": "Vocabulary of the on-the-fly tokenizer."})
    block_size: int = field(default=64, metadata={"help": "Tokens per training block."})
    max_eval_blocks: int = field(default=128, metadata={"help": "Evaluate on at most this many held-out blocks."})
    metrics_every: int = field(default=5, metadata={"help": "Measure update metrics every N steps."})
    train_file: str | None = field(default=None, metadata={"help": "Local text/json file instead of the corpus."})
    validation_split_seed: int = validation_split_seed_field(validation_file=False)


@dataclass
class WarmupTrainingArguments(WarmupFreeTrainingArguments):
    # not a field: tells the shared --max_steps / --num_train_epochs checks that this recipe has no epoch-based runs
    epoch_based_runs = False
    output_dir: str = field(default="outputs/warmup", metadata={"help": "Where results and plots are written."})
    max_steps: int = field(default=300, metadata={"help": "Optimizer steps per arm."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Blocks per step and process."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Blocks per eval step and process."})
    learning_rate: float = field(default=1e-2, metadata={"help": "AdamW peak LR (high, to expose the warmup gap)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (same for every arm)."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing strategy."})
    report_to: str = field(default="none", metadata={"help": "Logging integrations."})


def validate(recipe: WarmupRecipeArguments, args: WarmupTrainingArguments) -> list[str]:
    from ..utils.io import ensure_writable_dir
    from ._common import check_vocab_size, refuse_undistributed_launch

    refuse_undistributed_launch(args, "warmup")  # N ranks that would each train alone
    arms = [a.strip() for a in recipe.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if not arms or bad or len(set(arms)) != len(arms):
        raise ValueError(f"--arms must name distinct arms from {ARMS}, got {recipe.arms!r}.")
    if not 0.0 <= recipe.warmup_fraction < 0.5:
        raise ValueError(f"--warmup_fraction must lie in [0, 0.5), got {recipe.warmup_fraction}.")
    if not 0 < recipe.lion_lr_ratio < math.inf:
        raise ValueError(f"--lion_lr_ratio must be a finite number > 0, got {recipe.lion_lr_ratio}.")
    if recipe.metrics_every < 1:
        raise ValueError(f"--metrics_every must be a positive integer, got {recipe.metrics_every}.")
    if recipe.hidden_act is not None:
        from transformers.activations import ACT2CLS

        if recipe.hidden_act not in ACT2CLS:
            raise ValueError(
                f"--hidden_act={recipe.hidden_act!r} is not a transformers activation; pick one of {sorted(ACT2CLS)}."
            )
    if recipe.architecture not in ARCHITECTURES:
        raise ValueError(f"--architecture must be one of {ARCHITECTURES}, got {recipe.architecture!r}.")
    if recipe.architecture == "openai-gpt" and recipe.intermediate_size != 4 * recipe.hidden_size:
        raise ValueError(
            f"--architecture openai-gpt fixes the MLP width at 4 x --hidden_size ({4 * recipe.hidden_size}); pass "
            f"--intermediate_size {4 * recipe.hidden_size} (got {recipe.intermediate_size})."
        )
    if recipe.hidden_size % recipe.num_attention_heads:
        raise ValueError("--hidden_size must be divisible by --num_attention_heads.")
    if recipe.block_size < 2:
        # the causal-LM loss predicts each token from the ones before it: a 1-token block has no target, its loss is
        # a mean over no tokens (NaN), so every arm trained on NaN losses and reported eval loss NaN
        raise ValueError(
            f"--block_size must be >= 2 (got {recipe.block_size}): a block of one token has no next token to "
            "predict, so the training and eval losses would be NaN."
        )
    if args.max_steps <= 0:
        raise ValueError("--max_steps must be > 0.")
    if recipe.train_file is not None and not os.path.isfile(recipe.train_file):
        raise ValueError(f"--train_file {recipe.train_file!r} does not exist.")
    _check_arm_options(arms, recipe, args)
    # before the folder is made
    resume = resume_checkpoints(args.resume_from_checkpoint, arms, args.output_dir, args.max_steps)
    from ..optim.warmup_trainer import check_checkpoint_options
    from ._common import check_run_record, checkpoint_run_folder, refuse_checkpoints_of_another_run

    for arm, checkpoint in resume.items():
        check_checkpoint_arm(checkpoint, arm, recipe)
        if checkpoint is not None:  # the data and model of the run that wrote it (its own folder's record)
            run_folder = checkpoint_run_folder(checkpoint, os.path.join(args.output_dir, arm), RUN_RECORD_NAME)
            check_run_record(
                run_folder,
                RUN_RECORD_NAME,
                {name: getattr(recipe, name) for name in RUN_RECORD_FLAGS},
                "the data and model",
            )
            # not beside the checkpoints of yet another run in the arm's folder (`write_run_record`)
            refuse_checkpoints_of_another_run(checkpoint, run_folder, os.path.join(args.output_dir, arm))
        try:  # the arm's optimizer and schedule options (betas, nesterov, angle, --cooldown_fraction, ...)
            check_checkpoint_options(checkpoint, arm_arguments(arm, recipe, args), args.max_steps)
        except ValueError as err:
            raise ValueError(f"arm {arm}: {err}") from None
    check_vocab_size(recipe.vocab_size, None)  # (the tokenizer is built once the arms' checks passed)
    ensure_writable_dir(args.output_dir, "--output_dir")
    return arms


_FIXED_BY_ARMS = {
    "normalized_optimizer": "--arms (each arm names its optimizer)",
    "warmup_steps": "--warmup_fraction (the *_warmup arms warm up, the others do not)",
}

# transformers' `get_scheduler` builds these without the warmup steps it is given
_SCHEDULES_WITHOUT_WARMUP = ("constant", "reduce_lr_on_plateau", "greedy")


# Options that only some arms read: name -> the optimizers (arm prefixes) whose arms read it. The Lion family gets
# its LR ratio, betas, Nesterov, bias and SNR corrections; only LionAR rotates (angle, zero mean, per-neuron norms,
# update-norm EMA); only AdamW reads --adam_epsilon; no arm uses rotational_sgdm's --sgd_momentum.
_ARM_OPTION_USERS = {
    "lion_lr_ratio": ("lion_ar", "lion_a"),
    "lion_beta1": ("lion_ar", "lion_a"),
    "lion_beta2": ("lion_ar", "lion_a"),
    "nesterov": ("lion_ar", "lion_a"),
    "inverse_bias_correction": ("lion_ar", "lion_a"),
    "snr_correction": ("lion_ar", "lion_a"),
    "rotation_angle": ("lion_ar",),
    "zero_mean": ("lion_ar",),
    "per_neuron": ("lion_ar",),
    "update_norm_decay": ("lion_ar",),
    "adam_epsilon": ("adamw",),
    "sgd_momentum": (),
}


def _arm_optimizer(arm: str) -> str:
    return "adamw" if arm.startswith("adamw") else "lion_ar" if arm.startswith("lion_ar") else "lion_a"


def _refuse_unread_options(arms: list[str], recipe: WarmupRecipeArguments, args: WarmupTrainingArguments) -> None:
    """A flag that none of the selected arms reads, set away from its default, is an error naming it (README: a flag
    the run would ignore is refused by name)."""
    from ._common import changed_from_default

    optimizers = {_arm_optimizer(arm) for arm in arms}
    unread = []
    for name, users in _ARM_OPTION_USERS.items():
        holder = recipe if name in WarmupRecipeArguments.__dataclass_fields__ else args
        if not optimizers & set(users) and changed_from_default(holder, [name]):
            readers = f"only the {'/'.join(users)} arms read it" if users else "no arm of this recipe reads it"
            unread.append(f"--{name} ({readers})")
    # AdamW's betas: the adamw arms; --adam_beta1 also sets the LionAR arms' rotation angle when --rotation_angle is
    # not given (the AdamW equilibrium angle depends on beta1 only)
    if "adamw" not in optimizers:
        angle_reads_beta1 = "lion_ar" in optimizers and args.rotation_angle is None
        for name in changed_from_default(args, ["adam_beta2"] if angle_reads_beta1 else ["adam_beta1", "adam_beta2"]):
            readers = (
                "read by the adamw arms, and by the lion_ar arms' rotation angle without --rotation_angle"
                if name == "adam_beta1"
                else "read by the adamw arms only"
            )
            unread.append(f"--{name} ({readers})")
    if not any(not arm.endswith("no_warmup") for arm in arms) and changed_from_default(recipe, ["warmup_fraction"]):
        unread.append("--warmup_fraction (only the *_warmup arms warm up)")
    if unread:
        raise ValueError(
            f"--arms {','.join(arms)} would ignore {'; '.join(unread)}: drop "
            f"{'it' if len(unread) == 1 else 'them'} or add an arm that uses {'it' if len(unread) == 1 else 'them'}."
        )


def _check_arm_options(arms: list[str], recipe: WarmupRecipeArguments, args: WarmupTrainingArguments) -> None:
    """Everything each arm's optimizer and schedule will need, checked before any work (a bad value used to
    surface only when its arm started, after the earlier arms had trained)."""
    import torch
    from transformers.trainer_utils import SchedulerType

    from ..optim.warmup_trainer import build_normalized_optimizer, ignored_schedule_options, wsd_schedule_arguments
    from ._common import changed_from_default

    for name in changed_from_default(args, _FIXED_BY_ARMS):
        raise ValueError(
            f"--{name} is set by the recipe per arm and would be ignored (got {getattr(args, name)!r}); "
            f"use {_FIXED_BY_ARMS[name]}."
        )
    _refuse_unread_options(arms, recipe, args)
    for message in ignored_schedule_options(args):  # --cooldown_fraction beside a schedule that does not read it
        raise ValueError(f"{message}.")
    schedule = SchedulerType(args.lr_scheduler_type).value
    if schedule in _SCHEDULES_WITHOUT_WARMUP and recipe.warmup_fraction > 0:
        warm = [arm for arm in arms if not arm.endswith("no_warmup")]
        if warm:  # the *_warmup arms would train as the *_no_warmup ones: a warmup gap of 0 that measures nothing
            raise ValueError(
                f"--lr_scheduler_type {schedule} has no warmup (transformers builds it without warmup steps), so the "
                f"arms {', '.join(warm)} would not warm up and every warmup gap would be 0; use a schedule with "
                "warmup (the default warmup_stable_decay, or e.g. linear, cosine, constant_with_warmup)."
            )
    if not 0 < args.learning_rate < math.inf:
        raise ValueError(f"--learning_rate must be a finite number > 0, got {args.learning_rate}.")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise ValueError(f"--{name} must lie in [0, 1), got {getattr(args, name)}.")
    if not 0.0 <= args.adam_epsilon < math.inf:
        raise ValueError(f"--adam_epsilon must be a finite number >= 0, got {args.adam_epsilon}.")
    # only LionAR rotates (LionA controls the update's l2 size and needs no angle, so it runs with --weight_decay 0)
    if any(a.startswith("lion_ar") for a in arms) and args.rotation_angle is None and not args.weight_decay > 0:
        raise ValueError(
            "The lion_ar arms rotate at the AdamW equilibrium angle of --learning_rate and --weight_decay, "
            f"which needs --weight_decay > 0 (got {args.weight_decay}); raise it or pass --rotation_angle."
        )
    probe = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))  # a stand-in to build each optimizer
    for arm in arms:
        try:
            arm_args = arm_arguments(arm, recipe, args)
            if SchedulerType(arm_args.lr_scheduler_type) == SchedulerType.WARMUP_STABLE_DECAY:
                wsd_schedule_arguments(arm_args, args.max_steps)
            build_normalized_optimizer(probe, arm_args)
        except ValueError as err:
            raise ValueError(f"arm {arm}: {err}") from err


def resume_checkpoints(value, arms: list[str], output_dir: str, max_steps: int | None = None) -> dict[str, str | None]:
    """The checkpoint each arm resumes from (`None`: from scratch), from a `--resume_from_checkpoint` value; raises
    `ValueError` before any work when the value cannot be honoured: a fresh run into arm folders that hold an earlier
    run's checkpoints, or a checkpoint saved beyond `max_steps`."""
    from ..utils.resume import (
        check_checkpoint_folders,
        last_complete_checkpoint,
        resolve_resume_checkpoint,
        wants_last,
        wants_resume,
    )

    folders = [os.path.join(output_dir, arm) for arm in arms]
    if not wants_resume(value):
        check_checkpoint_folders(value, folders)  # a fresh run into arm folders holding an earlier run's checkpoints
        return dict.fromkeys(arms)
    if wants_last(value):
        found = {arm: last_complete_checkpoint(os.path.join(output_dir, arm)) for arm in arms}
        if not any(found.values()):
            raise ValueError(
                f"--resume_from_checkpoint asks for the last checkpoints, but no arm folder in --output_dir="
                f"{output_dir!r} holds a complete checkpoint-N; drop the flag to start from scratch."
            )
        check_checkpoint_folders(value, folders, max_steps, checkpoints=list(found.values()))
        return found
    if len(arms) != 1:
        raise ValueError(
            f"--resume_from_checkpoint={value!r} names one checkpoint folder but {len(arms)} arms are trained; pass "
            "--arms with a single arm, or --resume_from_checkpoint last to resume every arm from its own folder."
        )
    checkpoint = resolve_resume_checkpoint(value, os.path.join(output_dir, arms[0]))
    check_checkpoint_folders(value, folders, max_steps, checkpoints=[checkpoint])
    return {arms[0]: checkpoint}


def arm_record(arm: str, recipe: WarmupRecipeArguments) -> dict:
    """What a checkpoint of `arm` records about the run that wrote it (`ARM_RECORD_NAME`)."""
    fraction = 0.0 if arm.endswith("no_warmup") else float(recipe.warmup_fraction)
    return {"arm": arm, "optimizer": _arm_optimizer(arm), "warmup_fraction": fraction}


def check_checkpoint_arm(checkpoint: str | None, arm: str, recipe: WarmupRecipeArguments) -> None:
    """Refuse, before any work, to resume `arm` from a checkpoint another arm wrote (it would continue that arm's run,
    with its warmup or its optimizer, and report it as `arm`; another optimizer's state used to fail late with torch's
    "parameter group that doesn't match") or one trained with another `--warmup_fraction` (the schedule would change
    mid-run). A checkpoint without the record (written before hf_ext recorded it) is resumed with a warning."""
    if checkpoint is None:
        return
    path = os.path.join(checkpoint, ARM_RECORD_NAME)
    if not os.path.isfile(path):
        logger.warning(
            "--resume_from_checkpoint: %s records no warmup arm (no %s: written before hf_ext recorded it), so it "
            "is resumed as arm %s unchecked; make sure it is a checkpoint of that arm.",
            checkpoint,
            ARM_RECORD_NAME,
            arm,
        )
        return
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
        saved_arm, saved_fraction = saved["arm"], float(saved["warmup_fraction"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"--resume_from_checkpoint: {path} cannot be read ({err!r}); resume from an earlier checkpoint of arm "
            f"{arm}."
        ) from None
    fraction = arm_record(arm, recipe)["warmup_fraction"]
    if saved_arm != arm:
        saved_optimizer, optimizer = saved.get("optimizer") or _arm_optimizer(str(saved_arm)), _arm_optimizer(arm)
        differs = (
            f"optimizer {saved_optimizer}, not {optimizer}"
            if saved_optimizer != optimizer
            else f"warmup fraction {saved_fraction}, not {fraction}"
        )
        raise ValueError(
            f"--resume_from_checkpoint: {checkpoint} is a checkpoint of arm {saved_arm!r} ({differs}), but it would "
            f"resume arm {arm!r}: the run would continue {saved_arm} and report it as {arm}. Pass --arms {saved_arm} "
            f"to continue that arm, or a checkpoint of arm {arm}."
        )
    if saved_fraction != fraction:
        raise ValueError(
            f"--resume_from_checkpoint: {checkpoint} is a checkpoint of arm {arm} trained with --warmup_fraction "
            f"{saved_fraction}, but this run has --warmup_fraction {fraction} (the schedule would change mid-run); "
            f"pass --warmup_fraction {saved_fraction} to continue it, or a checkpoint of a run with {fraction}."
        )


class _ArmTrainer(WarmupFreeTrainer):
    """`WarmupFreeTrainer` that writes the arm's record into each checkpoint, before `trainer_state.json` (the file
    that marks a checkpoint complete), so a complete checkpoint always has it."""

    def __init__(self, *args, arm_record: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.arm_record = arm_record

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        from ..utils.resume import checkpoint_being_saved

        super().save_model(output_dir, _internal_call=_internal_call)
        folder = checkpoint_being_saved(self, output_dir, _internal_call)
        if folder is not None:
            atomic_write_json(os.path.join(folder, ARM_RECORD_NAME), self.arm_record)


def warmup_gaps(results: dict) -> dict[str, float]:
    """Per optimizer: eval loss without warmup minus eval loss with warmup (arms present in `results`)."""
    gaps = {}
    for opt in ("adamw", "lion_ar", "lion_a"):
        if f"{opt}_warmup" in results and f"{opt}_no_warmup" in results:
            gaps[opt] = results[f"{opt}_no_warmup"]["eval_loss"] - results[f"{opt}_warmup"]["eval_loss"]
    return gaps


def warmup_claim_holds(adamw_gaps, lion_ar_gaps) -> bool:
    """The paper's claim, per optimizer, over seeds (one warmup gap per seed and optimizer): AdamW's gap is clearly
    positive (mean minus sample standard deviation > 0) and LionAR's is near zero and smaller than AdamW's (its
    absolute mean at most half of AdamW's mean)."""
    import statistics

    adamw, lion = [float(g) for g in adamw_gaps], [float(g) for g in lion_ar_gaps]
    if len(adamw) < 2 or len(adamw) != len(lion):
        raise ValueError(
            f"need the gaps of the same >= 2 seeds for both optimizers, got {len(adamw)} and {len(lion)}."
        )
    if not all(math.isfinite(g) for g in adamw + lion):  # a diverged seed (NaN / inf loss): the claim is not shown
        return False  # (statistics.stdev raises on a NaN or inf, which ended the reproduction with no report)
    mean = statistics.fmean(adamw)
    return mean - statistics.stdev(adamw) > 0 and abs(statistics.fmean(lion)) <= 0.5 * mean


def arm_arguments(arm: str, recipe: WarmupRecipeArguments, args: WarmupTrainingArguments) -> WarmupTrainingArguments:
    """Training arguments of one arm (all arms share data, model init, clipping, steps and the trapezoid)."""
    from ..optim.normalized import equilibrium_angle
    from ..optim.warmup_trainer import _OPTION_USERS

    warm = 0 if arm.endswith("no_warmup") else recipe.warmup_fraction
    optimizer = _arm_optimizer(arm)
    # the arms share one argument set: an arm gets the other optimizers' options at the library defaults (AdamW's
    # betas are already in the Lion arms' rotation angle), so the trainer's "option ignored" warning stays quiet
    fields = WarmupFreeTrainingArguments.__dataclass_fields__
    others = {name: fields[name].default for name, users in _OPTION_USERS.items() if optimizer not in users}
    common = dict(output_dir=os.path.join(args.output_dir, arm), warmup_steps=warm)
    if optimizer == "adamw":
        return dataclasses.replace(args, normalized_optimizer="adamw", **others, **common)
    ratio = recipe.lion_lr_ratio
    angle = args.rotation_angle  # default: the AdamW baseline's equilibrium angle at the same lr/wd
    if angle is None and "rotation_angle" not in others:  # lion_a does not rotate (it runs with --weight_decay 0 too)
        angle = equilibrium_angle("adamw", args.learning_rate, args.weight_decay, (args.adam_beta1, args.adam_beta2))
    # betas, Nesterov and inverse bias correction: --lion_beta1/--lion_beta2/--nesterov/--inverse_bias_correction,
    # whose defaults are the paper's warmup-free recipe (0.98, 0.98, on, on)
    return dataclasses.replace(
        args,
        normalized_optimizer=optimizer,
        learning_rate=args.learning_rate * ratio,
        weight_decay=args.weight_decay / ratio,
        **others,
        **({} if "rotation_angle" in others else {"rotation_angle": angle}),  # lion_a does not rotate
        **common,
    )


def model_config(recipe: WarmupRecipeArguments, tokenizer):
    """The config of `--architecture` at the recipe's size (tied embeddings, no dropout)."""
    from transformers import AutoConfig

    special = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    if recipe.architecture == "llama":
        return AutoConfig.for_model(
            "llama",
            vocab_size=len(tokenizer),
            hidden_size=recipe.hidden_size,
            intermediate_size=recipe.intermediate_size,
            num_hidden_layers=recipe.num_hidden_layers,
            num_attention_heads=recipe.num_attention_heads,
            num_key_value_heads=recipe.num_attention_heads,
            max_position_embeddings=recipe.block_size * 2,
            tie_word_embeddings=True,
            **({"hidden_act": recipe.hidden_act} if recipe.hidden_act else {}),
            **special,
        )
    gpt = dict(
        vocab_size=len(tokenizer),
        n_embd=recipe.hidden_size,
        n_layer=recipe.num_hidden_layers,
        n_head=recipe.num_attention_heads,
        n_positions=recipe.block_size * 2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        **special,
    )
    if recipe.architecture == "gpt2":
        act = {"activation_function": recipe.hidden_act} if recipe.hidden_act else {}
        return AutoConfig.for_model("gpt2", n_inner=recipe.intermediate_size, **act, **gpt)
    return AutoConfig.for_model("openai-gpt", **({"afn": recipe.hidden_act} if recipe.hidden_act else {}), **gpt)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..optim.metrics import METRIC_KEYS

    fig, axes = plt.subplots(1, 5, figsize=(22, 3.8))
    for arm, res in results.items():
        steps, losses = zip(*res["train_loss"]) if res["train_loss"] else ((), ())
        axes[0].plot(steps, losses, label=f"{arm} (eval {res['eval_loss']:.3f})", lw=1)
        for ax, key in zip(axes[1:], METRIC_KEYS):
            rows = [r for r in res["update_metrics"] if not math.isnan(r[key])]
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=arm, lw=1)
    axes[0].set_title("train loss")
    for ax, key in zip(axes[1:], METRIC_KEYS):
        ax.set_title(key)
        if key != "update/grad_momentum_cos":
            ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def run(recipe: WarmupRecipeArguments, args: WarmupTrainingArguments) -> dict:
    """Train every arm and return `{arm: {eval_loss, train_loss, update_metrics}}`."""
    import torch
    from transformers import AutoModelForCausalLM, default_data_collator, set_seed

    from ..data import build_tokenizer, load_text_datasets, pack_dataset
    from ..optim.metrics import UpdateMetricsCallback
    arms = validate(recipe, args)
    resume = resume_checkpoints(args.resume_from_checkpoint, arms, args.output_dir, args.max_steps)
    from ._common import warn_embedded_corpus_tokenizer

    warn_embedded_corpus_tokenizer({"--train_file": recipe.train_file}, recipe.vocab_size, fix=None)
    tokenizer = build_tokenizer(recipe.vocab_size)
    train_text, eval_text = load_text_datasets(
        None, None, recipe.train_file, None, "text", seed=recipe.validation_split_seed, text_column_flag=None,
        validation_file_flag=None,
    )
    train_ds = pack_dataset(train_text, tokenizer, recipe.block_size, "text")
    eval_ds = pack_dataset(eval_text, tokenizer, recipe.block_size, "text")
    for split, ds in (("training", train_ds), ("held-out", eval_ds)):
        if len(ds) == 0:  # checked before anything is written (an empty split used to fail with KeyError 'input_ids')
            raise ValueError(
                f"--block_size {recipe.block_size} is longer than the whole {split} split: it packs into 0 blocks of "
                f"{recipe.block_size} tokens; lower --block_size (e.g. the default 64)."
            )
    eval_ds = eval_ds.select(range(min(len(eval_ds), recipe.max_eval_blocks)))
    if args.should_save:
        from ._common import clear_previous_results

        clear_previous_results(args.output_dir, ("warmup_results.json", "warmup.png"), any(resume.values()))
    probe = {"input_ids": torch.tensor(eval_ds[:4]["input_ids"])}
    config = model_config(recipe, tokenizer)
    results: dict = {}
    for arm in arms:
        arm_args = arm_arguments(arm, recipe, args)
        set_seed(args.seed)
        model = AutoModelForCausalLM.from_config(config)
        metrics_cb = UpdateMetricsCallback(probe_batch=probe, every_n_steps=recipe.metrics_every, plot_path=None)
        trainer = _ArmTrainer(
            model=model,
            args=arm_args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            data_collator=default_data_collator,
            callbacks=[metrics_cb],
            arm_record=arm_record(arm, recipe),
        )
        if args.should_save:  # what a resume of this arm must keep (checked in `validate`)
            from ._common import write_run_record

            record = {name: getattr(recipe, name) for name in RUN_RECORD_FLAGS}
            write_run_record(arm_args.output_dir, RUN_RECORD_NAME, record, resumed_from=resume[arm])
        # a finished arm is restored, not trained a step past --max_steps
        train_or_restore_finished(trainer, resume[arm])
        # every held-out block once, whatever the number of processes (DDP, FSDP): WarmupFreeTrainer's evaluate()
        # drops the repeats accelerate pads the last rank's share with (hf_ext.utils.evaluation.EvalRowsOnceMixin)
        eval_loss = trainer.evaluate()["eval_loss"]
        results[arm] = {
            "eval_loss": eval_loss,
            "optimizer": arm_args.normalized_optimizer,
            "learning_rate": arm_args.learning_rate,
            "warmup_steps": arm_args.warmup_steps,
            "resumed_from": resume[arm],
            "train_loss": [(r["step"], r["loss"]) for r in trainer.state.log_history if "loss" in r],
            "update_metrics": metrics_cb.history,
        }
        print(f"[warmup] {arm}: eval loss {eval_loss:.4f}")
    gaps = warmup_gaps(results)
    if args.should_save:
        atomic_write_results(os.path.join(args.output_dir, "warmup_results.json"), {**results, "warmup_gap": gaps}, 1)
        plot(results, os.path.join(args.output_dir, "warmup.png"))
        summary = {arm: round(res["eval_loss"], 4) for arm, res in results.items()}
        print(f"[warmup] final eval losses: {summary}")
        print(f"[warmup] warmup gaps (no warmup - warmup): { {k: round(v, 4) for k, v in gaps.items()} }")
    return results


def main(argv: list[str] | None = None) -> dict:
    from ._common import finish, parse_recipe_args

    # resume="keep": every arm resolves `last` in its own folder (see `resume_checkpoints`)
    recipe, args = parse_recipe_args((WarmupRecipeArguments, WarmupTrainingArguments), argv, resume="keep")
    return finish(run(recipe, args))


if __name__ == "__main__":
    main()
