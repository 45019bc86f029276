"""`--resume_from_checkpoint` as transformers' example scripts use it, checked before any work starts.

Accepted forms on the command line:

- `--resume_from_checkpoint` (no value), `--resume_from_checkpoint true` / `True` / `last`: the newest complete
  `checkpoint-N` folder in `--output_dir`;
- `--resume_from_checkpoint <folder>`: that checkpoint folder;
- absent, `false`, `none` or an empty value: start from scratch.

The dashed spelling `--resume-from-checkpoint` (the alias `HfArgumentParser` shows in `--help`) is accepted in every
form and rewritten to the underscore one.

A checkpoint folder counts as complete when it holds `trainer_state.json`, which `Trainer` writes last; a folder
left half-written by a killed save is skipped with a warning when picking the newest one, and refused with a clear
error when named explicitly. hf_ext's Trainers ([`LossWindowResumeMixin`]) and [`train_or_restore_finished`] take
`resume_from_checkpoint=True` and a named folder the same way ([`trainer_resume_checkpoint`]; transformers' own lookup
takes the newest folder, complete or not).

`check_checkpoint_folders` is what the recipes check before any work: a fresh run refuses a run folder that already
holds complete checkpoints of an earlier run (a later bare `--resume_from_checkpoint` would resume that other run),
and a resume refuses a checkpoint whose `global_step` is beyond the run's `--max_steps`.

A checkpoint written with `save_only_model=True` holds the weights but not the optimizer, LR scheduler and RNG states
(transformers' `Trainer` skips them): resuming from it would go on with a fresh optimizer and a restarted learning-rate
schedule, so a resume from it is refused ([`refuse_weights_only_checkpoint`]; the recipes and hf_ext's Trainers).

A resume goes on only where the learning-rate schedule the new flags build is the one the checkpoint's run followed up
to it ([`refuse_changed_schedule`], in [`train_or_restore_finished`]); hf_ext's Trainers record the schedule's flags
with every checkpoint (`lr_schedule.json`, [`LossWindowResumeMixin`]).

The same file records the run's total train batch and its factors (per-device batch, GPUs per process, gradient
accumulation, processes): transformers skips the checkpoint's data by a count of batches, so a resume at another total
repeats or skips samples; hf_ext's Trainers warn about it, once, and go on ([`warn_changed_train_batch`]).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_LAST = {"true", "last", "latest", "yes", "1"}
_NONE = {"", "false", "none", "no", "0"}
TRAINER_STATE_NAME = "trainer_state.json"


_DASHED = "--resume-from-checkpoint"
_FLAG = "--resume_from_checkpoint"


def normalize_resume_argv(argv: list[str]) -> list[str]:
    """Rewrite the dashed spelling `--resume-from-checkpoint[=VALUE]` to `--resume_from_checkpoint[=VALUE]`, then give
    a bare `--resume_from_checkpoint` (last argument, or followed by another flag) the value `last`."""
    out = []
    for tok in argv:
        if tok == _DASHED:
            tok = _FLAG
        elif tok.startswith(_DASHED + "="):
            tok = _FLAG + tok[len(_DASHED) :]
        out.append(tok)
    for i, tok in enumerate(out):
        if tok == _FLAG and (i + 1 == len(out) or out[i + 1].startswith("--")):
            out[i] = f"{_FLAG}=last"
    return out


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a usable Trainer checkpoint, or `None` if it is."""
    if not os.path.isdir(path):
        return "it is not a folder"
    state = os.path.join(path, TRAINER_STATE_NAME)
    if not os.path.isfile(state):
        return f"it has no {TRAINER_STATE_NAME} (a save that was interrupted)"
    try:
        with open(state, encoding="utf-8") as fh:
            json.load(fh)
    except (OSError, ValueError) as err:
        return f"its {TRAINER_STATE_NAME} cannot be read ({err})"
    return None


# what transformers' Trainer writes into a checkpoint besides the weights unless `save_only_model=True`: the optimizer
# (`optimizer.pt`/`.bin`, FSDP's `optimizer_0/`, hf_ext's `optimizer_state.*`), the LR scheduler (`scheduler.pt`,
# hf_ext's `scheduler_state.json`), DeepSpeed's `global_stepN/`, and the RNG states (`rng_state.pth`, one per process)
_RESUME_STATE_PREFIXES = ("optimizer", "scheduler", "global_step", "rng_state")
# the weights `save_model` writes (a full model, sharded or not, or a PEFT adapter)
_WEIGHTS_NAMES = {
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
}


def saved_only_model(path: str) -> bool:
    """Whether the checkpoint folder `path` was written with `save_only_model=True`: it holds the model's weights but
    none of the optimizer, LR scheduler and RNG states `Trainer` writes with every other checkpoint."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return any(name in _WEIGHTS_NAMES for name in names) and not any(
        name.startswith(_RESUME_STATE_PREFIXES) for name in names
    )


def refuse_weights_only_checkpoint(checkpoint: str | None, flag: str = "--resume_from_checkpoint") -> None:
    """For a resume: raise `ValueError` when `checkpoint` was saved with `save_only_model=True` ([`saved_only_model`]):
    transformers' `Trainer` would silently go on from it with a fresh optimizer and a restarted learning-rate schedule
    (and fresh RNG streams), not continue the run. `flag` names the argument in the message."""
    if checkpoint is None or not saved_only_model(checkpoint):
        return
    raise ValueError(
        f"{flag}: {checkpoint} was saved with save_only_model=True: it holds only the model weights, not the "
        "optimizer, learning-rate scheduler and RNG states a resume continues from (training would restart the "
        "optimizer and the LR schedule). Resume from a full checkpoint (one saved with save_only_model=False), or start "
        f"a new run from these weights (--model_name_or_path {checkpoint}, or from_pretrained) without {flag}."
    )


def last_complete_checkpoint(output_dir: str) -> str | None:
    """Newest complete `checkpoint-N` in `output_dir`; incomplete ones are skipped with a warning."""
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping %s on resume: %s. Delete it or resume from an earlier checkpoint.", path, problem)
    return None


def trainer_resume_checkpoint(resume_from_checkpoint, output_dir: str):
    """What `Trainer.train(resume_from_checkpoint=...)` of an hf_ext Trainer resumes from: for `True`, the newest
    complete `checkpoint-N` in `output_dir` ([`last_complete_checkpoint`]; transformers' `get_last_checkpoint` takes the
    newest folder, also one a killed save left without `trainer_state.json`, and then fails with a raw
    `FileNotFoundError` instead of resuming the checkpoint before it); a folder that a killed save left incomplete is
    refused with a `ValueError` saying so. Other values are returned as they are (an `os.PathLike` as a `str`)."""
    if resume_from_checkpoint is True:
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise ValueError(
                f"No valid checkpoint found in output directory ({output_dir}): resume_from_checkpoint=True needs a "
                f"complete checkpoint-N folder (one with {TRAINER_STATE_NAME}, which Trainer writes last)."
            )
        return checkpoint
    if isinstance(resume_from_checkpoint, os.PathLike):
        resume_from_checkpoint = os.fspath(resume_from_checkpoint)
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint and os.path.isdir(resume_from_checkpoint):
        problem = checkpoint_problem(resume_from_checkpoint)
        if problem is not None:
            raise ValueError(
                f"resume_from_checkpoint={resume_from_checkpoint!r} cannot be used: {problem}. Resume from a complete "
                "checkpoint-N folder, or pass True for the newest complete one in output_dir."
            )
    return resume_from_checkpoint


def wants_resume(value: str | bool | None) -> bool:
    """Whether a `--resume_from_checkpoint` value asks to resume at all."""
    if value is None or value is False:
        return False
    return not (isinstance(value, str) and value.strip().lower() in _NONE)


def wants_last(value: str | bool | None) -> bool:
    """Whether a `--resume_from_checkpoint` value asks for the newest checkpoint rather than a named folder."""
    return value is True or (isinstance(value, str) and value.strip().lower() in _LAST)


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str) -> str | None:
    """Turn a `--resume_from_checkpoint` value into a checkpoint folder (or `None`), raising `ValueError` early.

    Args:
        value: the flag's value (`None`/`False` for a fresh run, `True`/`"last"` for the newest checkpoint in
            `output_dir`, or a folder).
        output_dir: the run's `--output_dir`.
    """
    if value is None or value is False:
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in _LAST):
        path = last_complete_checkpoint(output_dir)
        if path is None:
            raise ValueError(
                f"--resume_from_checkpoint asks for the last checkpoint, but --output_dir={output_dir!r} holds no "
                "complete checkpoint-N folder; drop the flag to start from scratch or pass a checkpoint folder."
            )
        refuse_weights_only_checkpoint(path)
        return path
    if isinstance(value, str) and value.strip().lower() in _NONE:
        return None
    if not isinstance(value, str):
        raise TypeError(f"--resume_from_checkpoint must be a folder, 'last' or a boolean, got {type(value).__name__}.")
    problem = checkpoint_problem(value)
    if problem is not None:
        raise ValueError(
            f"--resume_from_checkpoint={value!r} cannot be used: {problem}. Pass a complete checkpoint-N folder, "
            "or 'last' for the newest complete one in --output_dir."
        )
    refuse_weights_only_checkpoint(value)
    return value


def _trainer_state_value(path: str, key: str):
    """`key` of `path/trainer_state.json` (`None` when the file or the key cannot be read)."""
    try:
        with open(os.path.join(path, TRAINER_STATE_NAME), encoding="utf-8") as fh:
            return json.load(fh).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def checkpoint_global_step(path: str) -> int | None:
    """The `global_step` recorded in `path/trainer_state.json` (`None` when it cannot be read)."""
    step = _trainer_state_value(path, "global_step")
    return int(step) if isinstance(step, int | float) and not isinstance(step, bool) else None


def checkpoint_max_steps(path: str) -> int | None:
    """The `max_steps` recorded in `path/trainer_state.json` (`None` when it cannot be read or is not > 0)."""
    value = _trainer_state_value(path, "max_steps")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def refuse_leftover_checkpoints(folders) -> None:
    """For a fresh run: raise `ValueError` when one of the run folders `folders` already holds a complete
    `checkpoint-N` (an earlier run's; a later bare `--resume_from_checkpoint` would resume that run, not this one)."""
    for folder in folders:
        found = last_complete_checkpoint(folder)
        if found is not None:
            raise ValueError(
                f"{found} exists: {folder!r} holds checkpoints of an earlier run, which a fresh run would mix with "
                "its own (a later --resume_from_checkpoint would continue the earlier run). Resume it with "
                "--resume_from_checkpoint, or choose another --output_dir or delete those checkpoint-N folders."
            )


def refuse_checkpoint_past_max_steps(checkpoint: str | None, max_steps: int | None, finished: bool = False) -> None:
    """For a resume: raise `ValueError` when `checkpoint` was saved at a `global_step` beyond `max_steps` (it belongs
    to a longer run; resuming it would train past --max_steps or not at all), or, with `finished`, at `max_steps`.

    A checkpoint at `max_steps` is of a run that has trained all its steps, and transformers' `Trainer` resumed from
    it trains one step more before it checks `max_steps` (a step past the schedule, another loss in the curve, moved
    optimizer and FP8 scaling state): a single-run recipe refuses it (`finished=True`). Skipped when `max_steps` is
    not a positive step count (epoch-based runs) or the step cannot be read."""
    if checkpoint is None or max_steps is None or max_steps <= 0:
        return
    step = checkpoint_global_step(checkpoint)
    if step is not None and step > max_steps:
        raise ValueError(
            f"--resume_from_checkpoint: {checkpoint} was saved at global_step {step}, beyond this run's --max_steps "
            f"{max_steps}: it is a checkpoint of another (longer) run. Pass a checkpoint of this run, raise "
            f"--max_steps to at least {step}, or drop the flag to start from scratch in another --output_dir."
        )
    if finished and step is not None and step == max_steps:
        raise ValueError(
            f"--resume_from_checkpoint: {checkpoint} was saved at global_step {step} = --max_steps: its run has "
            "trained all its steps, and resuming it would train one step more (transformers' Trainer steps before it "
            "checks --max_steps). Its weights are in that folder (load them with from_pretrained); raise --max_steps "
            "to train on, or pass an earlier checkpoint to redo the last steps."
        )


def check_checkpoint_folders(
    value, folders, max_steps: int | None = None, checkpoints=None, finished: bool = False
) -> None:
    """The checks every checkpointing recipe runs before any work (for a resume: no checkpoint saved with
    `save_only_model=True`, see [`refuse_weights_only_checkpoint`], and none beyond `max_steps`).

    Args:
        value: the `--resume_from_checkpoint` value (`None`/`False`/`"false"` for a fresh run).
        folders: the folders the run's Trainer(s) write their `checkpoint-N` folders into.
        max_steps: the run's `--max_steps` (each run's, for several runs).
        checkpoints: the checkpoint folders the run resumes from (default: resolved from `value` and `folders`: the
            newest complete one in each folder for `last`, or the named folder).
        finished: also refuse a checkpoint at `max_steps` (see [`refuse_checkpoint_past_max_steps`]); for a recipe
            that trains one run.
    """
    folders = list(folders)
    if not wants_resume(value):
        refuse_leftover_checkpoints(folders)
        return
    if checkpoints is None:
        if wants_last(value):
            checkpoints = [last_complete_checkpoint(folder) for folder in folders]
        else:
            checkpoints = [value] if isinstance(value, str) else []
    for checkpoint in checkpoints:
        refuse_weights_only_checkpoint(checkpoint)
        refuse_checkpoint_past_max_steps(checkpoint, max_steps, finished=finished)


def checkpoint_being_saved(trainer, output_dir: str | None, internal_call: bool) -> str | None:
    """In a `Trainer.save_model` override: the checkpoint folder this call writes the model of (the `checkpoint-N`
    of `trainer.state.global_step`, on the process that saves), or `None` for the final `save_model`, a
    `push_to_hub` save into `output_dir`, and other processes. State written there then lands before
    `trainer_state.json`, the file that marks the checkpoint complete."""
    folder = output_dir if output_dir is not None else trainer.args.output_dir
    if not (internal_call and trainer.args.should_save):
        return None
    if os.path.basename(os.path.normpath(folder)) != f"checkpoint-{trainer.state.global_step}":
        return None
    return folder


class _RunFinished(Exception):
    """Raised by `_StopBeforeTheNextStep` to leave `Trainer.train` before a step the finished run never took."""


def _stop_before_next_step_callback():
    from transformers import TrainerCallback

    class _StopBeforeTheNextStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            raise _RunFinished  # added for a finished run only: every step would be one too many

    return _StopBeforeTheNextStep()


def checkpoint_stopped(path: str) -> bool:
    """Whether a callback stopped the run at the step of checkpoint `path` before its `max_steps` (it set
    `should_training_stop`, e.g. NeuralGrok's `--stop_at_target`), as its `trainer_state.json` records.

    transformers' `DefaultFlowCallback` sets the same flag at every run's last step (`global_step >= max_steps`),
    before that step's checkpoint is saved: a checkpoint counts as stopped only when its `global_step` is below the
    `max_steps` recorded with it, so the last checkpoint of a run that trained all its steps is not (a resume with a
    larger `--max_steps` trains on from it). A flagged checkpoint that records no step count counts as stopped."""
    try:
        with open(os.path.join(path, TRAINER_STATE_NAME), encoding="utf-8") as fh:
            state = json.load(fh)
        control = state.get("stateful_callbacks", {}).get("TrainerControl", {})
    except (OSError, ValueError, AttributeError):
        return False
    args = control.get("args", {}) if isinstance(control, dict) else {}
    if not (isinstance(args, dict) and args.get("should_training_stop") is True):
        return False
    step, max_steps = checkpoint_global_step(path), checkpoint_max_steps(path)
    return step is None or max_steps is None or step < max_steps


#: the file every checkpoint of an hf_ext Trainer ([`LossWindowResumeMixin`]) holds with the arguments its
#: learning-rate schedule was built from, compared on a resume ([`refuse_changed_schedule`])
SCHEDULE_RECORD_NAME = "lr_schedule.json"
_SCHEDULE_RECORD_FORMAT = 1
#: the `TrainingArguments` a Trainer's `create_scheduler` builds the schedule from besides the step count
#: (transformers' and hf_ext's Trainers: `cooldown_fraction` is `WarmupFreeTrainingArguments`'; an arguments class
#: without one of them records the others)
SCHEDULE_ARG_NAMES = (
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
    "cooldown_fraction",
)
#: what sets the run's step count (recorded to name it in a refusal; the count itself is `trainer_state.json`'s)
_LENGTH_ARG_NAMES = ("max_steps", "num_train_epochs", "gradient_accumulation_steps")
_NOT_JSON = object()


def _as_json(value):
    """`value` as it reads back from JSON, or `_NOT_JSON` where it would read back as something else (a tuple, an
    object): such a value is not recorded, and not compared."""
    try:
        back = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return _NOT_JSON
    return back if back == value else _NOT_JSON


def schedule_arguments(args) -> dict:
    """The [`SCHEDULE_ARG_NAMES`] and `max_steps`, `num_train_epochs`, `gradient_accumulation_steps` of `args` that
    `args` has and that JSON holds as they are (an enum as its value), as [`write_schedule_record`] records them."""
    values = {}
    for name in SCHEDULE_ARG_NAMES + _LENGTH_ARG_NAMES:
        if hasattr(args, name):
            value = _as_json(getattr(args, name))
            if value is not _NOT_JSON:
                values[name] = value
    return values


def write_schedule_record(
    folder: str, args, num_training_steps: int | None = None, train_batch: dict | None = None
) -> str:
    """Write into checkpoint `folder` atomically what its learning-rate schedule was built from
    ([`SCHEDULE_RECORD_NAME`]: the [`schedule_arguments`] of `args`, and the run's step count), and `train_batch`, the
    run's total train batch and its factors ([`run_train_batch`], compared on a resume by
    [`warn_changed_train_batch`]) when given. Returns the path."""
    from .io import atomic_write_json

    record = {"format": _SCHEDULE_RECORD_FORMAT, "args": schedule_arguments(args)}
    if num_training_steps is not None:
        record["num_training_steps"] = int(num_training_steps)
    if train_batch is not None:
        record[TRAIN_BATCH_KEY] = {name: int(train_batch[name]) for name in _TRAIN_BATCH_FIELDS}
        if train_batch.get("split_batches") is True:
            record[TRAIN_BATCH_KEY]["split_batches"] = True
    path = os.path.join(folder, SCHEDULE_RECORD_NAME)
    atomic_write_json(path, record)
    return path


def read_schedule_record(checkpoint: str) -> dict | None:
    """The arguments checkpoint `checkpoint`'s learning-rate schedule was built from, as [`write_schedule_record`]
    recorded them; `None` for a checkpoint without the file (written before hf_ext recorded it, or by another Trainer).
    Raises `ValueError` naming the file when it cannot be read."""
    path = os.path.join(checkpoint, SCHEDULE_RECORD_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
        problem = None if isinstance(record, dict) and isinstance(record.get("args"), dict) else "no 'args' object"
    except (OSError, ValueError) as err:
        problem = f"it cannot be read ({err})"
    if problem is not None:
        raise ValueError(
            f"--resume_from_checkpoint: {path} cannot be used: {problem}. It records the flags the checkpoint's "
            "learning-rate schedule was built from; delete it to resume without that check (only a changed "
            "--max_steps is then checked), or resume from another checkpoint."
        )
    return record["args"]


#: the entry of [`SCHEDULE_RECORD_NAME`] with the run's total train batch and its factors ([`run_train_batch`])
TRAIN_BATCH_KEY = "train_batch"
_TRAIN_BATCH_FIELDS = (
    "total_train_batch_size", "per_device_train_batch_size", "n_gpu", "gradient_accumulation_steps", "processes",
)  # fmt: skip


def run_train_batch(trainer) -> dict:
    """The samples one optimizer step of `trainer` trains on over all processes (`total_train_batch_size`, as
    transformers' `Trainer` logs it: per-device batch x GPUs of a process x gradient accumulation x data-parallel
    processes) and its factors: `per_device_train_batch_size` (the batch the run trains with, which an
    `auto_find_batch_size` retry lowers below the argument), `n_gpu` (the GPUs one process drives with
    `DataParallel`; 0 or 1 for one device), `gradient_accumulation_steps` and `processes` (the data-parallel
    processes: the world size over the tensor / context / sequence parallel sizes); and `split_batches: True` where
    accelerate splits each batch over the processes (`accelerator_config`'s `split_batches`: the total is then the
    per-device batch x accumulation, whatever the number of processes)."""
    args = trainer.args
    local = int(getattr(trainer, "_train_batch_size", None) or args.train_batch_size)  # over this process's GPUs
    accumulation = int(args.gradient_accumulation_steps)
    if hasattr(trainer, "get_total_train_batch_size"):
        total = int(trainer.get_total_train_batch_size(args))
    else:
        total = local * accumulation * int(args.world_size)
    batch = {
        "total_train_batch_size": total,
        "per_device_train_batch_size": local // max(1, int(args.n_gpu)),
        "n_gpu": int(args.n_gpu),
        "gradient_accumulation_steps": accumulation,
        "processes": max(1, total // max(1, local * accumulation)),
    }
    if getattr(getattr(args, "accelerator_config", None), "split_batches", False) is True:
        batch["total_train_batch_size"] = local * accumulation  # one batch of the loader, split over the processes
        batch["split_batches"] = True
    return batch


def read_train_batch_record(checkpoint: str) -> dict | None:
    """The total train batch and its factors checkpoint `checkpoint`'s run trained with, as [`write_schedule_record`]
    recorded them ([`run_train_batch`]); `None` for a checkpoint that records none (saved before hf_ext recorded it, or
    by another Trainer). Raises `ValueError` naming the file when it cannot be read or the entry is malformed."""
    if read_schedule_record(checkpoint) is None:  # raises for a damaged file
        return None
    path = os.path.join(checkpoint, SCHEDULE_RECORD_NAME)
    with open(path, encoding="utf-8") as fh:
        entry = json.load(fh).get(TRAIN_BATCH_KEY)
    if entry is None:
        return None
    problem = None if isinstance(entry, dict) else f"{TRAIN_BATCH_KEY!r} is {entry!r}, not an object"
    for name in _TRAIN_BATCH_FIELDS:
        value = entry.get(name) if problem is None else 0
        least = 0 if name == "n_gpu" else 1
        if problem is None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            problem = f"{TRAIN_BATCH_KEY}[{name!r}] is {value!r}, not an integer >= {least}"
    if problem is None and not isinstance(entry.get("split_batches", False), bool):
        problem = f"{TRAIN_BATCH_KEY}['split_batches'] is {entry['split_batches']!r}, not a boolean"
    if problem is not None:
        raise ValueError(
            f"--resume_from_checkpoint: {path} cannot be used: {problem}. Its {TRAIN_BATCH_KEY!r} entry records the "
            "checkpoint's total train batch, compared on a resume; delete that entry to resume without that check, or "
            "resume from another checkpoint."
        )
    batch = {name: entry[name] for name in _TRAIN_BATCH_FIELDS}
    if entry.get("split_batches") is True:
        batch["split_batches"] = True
    return batch


def _batch_factors(batch: dict) -> str:
    processes = batch["processes"]
    gpus = f" x {batch['n_gpu']} GPUs per process" if batch["n_gpu"] > 1 else ""
    flags = (
        f"--per_device_train_batch_size {batch['per_device_train_batch_size']}{gpus} x "
        f"--gradient_accumulation_steps {batch['gradient_accumulation_steps']}"
    )
    if batch.get("split_batches"):
        return f"{flags}, each batch split over {processes} process{'es' if processes != 1 else ''} (split_batches)"
    return f"{flags} x {processes} process{'es' if processes != 1 else ''}"


def _same_batch_hint(old: int, now: dict) -> str:
    """A change of this run's flags that trains `old` samples per optimizer step, keeping its number of processes."""
    per_process = max(1, now["n_gpu"]) * (1 if now.get("split_batches") else now["processes"])
    accumulation, per_device = now["gradient_accumulation_steps"], now["per_device_train_batch_size"]
    if old % (per_device * per_process) == 0:
        return f"--gradient_accumulation_steps {old // (per_device * per_process)} on these processes"
    if old % (accumulation * per_process) == 0:
        return f"--per_device_train_batch_size {old // (accumulation * per_process)} on these processes"
    return "the checkpoint's flags on its number of processes"


#: (checkpoint, recorded batch, run's batch) already warned about in this process (once per launch)
_WARNED_TRAIN_BATCH: set = set()


def warn_changed_train_batch(trainer, checkpoint: str) -> str | None:
    """For a resume of `trainer` from `checkpoint`: warn (once per launch, on global rank 0) when the run's total train
    batch ([`run_train_batch`]) is not the one the checkpoint records; returns the warning (on every process), or
    `None` when the totals are equal or the checkpoint records none ([`read_train_batch_record`]).

    transformers' `Trainer` resumes by skipping the first `global_step % steps per epoch x gradient_accumulation_steps`
    batches of the new dataloader, a count: at another total it takes the checkpoint's steps as another number of
    samples, so the resumed run trains again samples the checkpoint's run had trained (a smaller batch) or never trains
    samples it had not reached (a larger one), and the epochs end at other steps (an epoch-based run trains another
    number of steps). At the same total on another split (e.g. twice the accumulation on half the processes) it
    continues the run, and nothing is said. Not refused: a run may change its batch on purpose."""
    recorded = read_train_batch_record(checkpoint)
    if recorded is None:
        return None
    now = run_train_batch(trainer)
    old, new = recorded["total_train_batch_size"], now["total_train_batch_size"]
    if old == new:
        return None
    args = trainer.args
    step = checkpoint_global_step(checkpoint) or 0
    epoch_based = not (args.max_steps is not None and args.max_steps > 0)
    rest = max(0, int(args.max_steps) - step) if not epoch_based else 0
    length = "an epoch now has another number of optimizer steps, so " + (
        "this epoch-based run (--num_train_epochs) trains another number of steps than the checkpoint's run would"
        if epoch_based
        else f"the epochs end at other steps, and the {rest} steps left to --max_steps {args.max_steps} train "
        f"{rest * new} samples, not {rest * old}"
    )
    # a Trainer whose batches are not a fixed order of the data (PrivateTrainer's DP-SGD Poisson batches) says itself
    # what another batch changes, and which flags keep the checkpoint's (`describe_train_batch_change(old, new, now)`:
    # `(what happens, the flags)`, or None for the generic text)
    describe = getattr(trainer, "describe_train_batch_change", None)
    own = describe(old, new, now) if callable(describe) else None
    if own is not None:
        happens, hint = own
    elif getattr(args, "ignore_data_skip", False):
        happens = (
            "With ignore_data_skip=True no batches are skipped (the resumed run starts the data of its epoch from the "
            f"beginning, whatever the batch), but {length} (and the epoch the resume starts in, global_step // "
            "steps per epoch, may be another)."
        )
    else:
        repeated = (
            f"trains again {step * (old - new)} samples the checkpoint's run had trained"
            if new < old
            else f"never trains {step * (new - old)} samples the checkpoint's run had not reached yet"
        )
        happens = (
            "transformers' Trainer resumes by skipping the first global_step % steps per epoch x "
            "gradient_accumulation_steps batches of the new dataloader, a count of batches: it takes the "
            f"checkpoint's {step} steps as {step} x {new} = {step * new} samples where that run trained "
            f"{step} x {old} = {step * old}, so the resumed run {repeated} (for a checkpoint in the first "
            f"epoch); and {length}."
        )
    if own is None:
        hint = f"keep per-device batch x gradient accumulation x processes at {old}, e.g. {_same_batch_hint(old, now)}"
    message = (
        f"resume_from_checkpoint={checkpoint!r} was trained at a total train batch of {old} samples per optimizer "
        f"step ({_batch_factors(recorded)}); this run's is {new} ({_batch_factors(now)}). {happens} The resume goes "
        f"on (a batch may be changed on purpose); to continue the checkpoint's run, {hint}."
    )
    key = (os.path.realpath(checkpoint), tuple(recorded.values()), tuple(now.values()))
    if getattr(args, "process_index", 0) == 0 and key not in _WARNED_TRAIN_BATCH:
        _WARNED_TRAIN_BATCH.add(key)
        logger.warning(message)
    return message


def _warn_changed_train_batch_callback(trainer, checkpoint: str):
    from transformers import TrainerCallback

    class _WarnChangedTrainBatch(TrainerCallback):
        """Compares the batch when the training loop starts: the one it trains with (an `auto_find_batch_size` retry
        included), after every refusal of the resume (changed optimizer options, a GRAPE batch split) has passed."""

        def on_train_begin(self, args, state, control, **kwargs):
            if not getattr(trainer, "_hf_ext_restores_finished_run", False):  # no step is trained: nothing to say
                warn_changed_train_batch(trainer, checkpoint)

    return _WarnChangedTrainBatch()


def run_max_steps(trainer) -> int | None:
    """The optimizer steps `trainer.train()` runs in all: `args.max_steps` when it is positive, else the count
    transformers' `Trainer` derives from `--num_train_epochs`, the length of the training dataloader and the gradient
    accumulation (`Trainer.set_initial_training_values`, with the trainer's own dataloader). `None` where it cannot be
    known before training (no training data, a dataloader without a length)."""
    args = trainer.args
    if args.max_steps is not None and args.max_steps > 0:
        return int(args.max_steps)
    if getattr(trainer, "train_dataset", None) is None:
        return None
    from transformers.trainer_utils import has_length

    dataloader = trainer.get_train_dataloader()
    if not has_length(dataloader):
        return None
    if hasattr(trainer, "set_initial_training_values"):
        steps = trainer.set_initial_training_values(args, dataloader)[-1]
    else:  # transformers before set_initial_training_values: the same arithmetic
        per_epoch = max(math.ceil(len(dataloader) / args.gradient_accumulation_steps), 1)
        steps = math.ceil(args.num_train_epochs * per_epoch)
    return int(steps) if steps and steps > 0 else None


def _flag(name: str, value) -> str:
    if name == "lr_scheduler_kwargs":
        return f"--lr_scheduler_kwargs '{json.dumps(value if value is not None else {})}'"
    return f"--{name} {value}"


#: relative tolerance of [`refuse_changed_schedule`]'s comparison of two learning rates
SCHEDULE_RTOL = 1e-9


def _schedule_lrs(
    trainer, num_training_steps: int, last_step: int, overrides: dict | None = None
) -> list[float] | None:
    """The learning rates of scheduler steps `0..last_step` of the schedule `trainer.create_scheduler` builds for
    `num_training_steps` (on a one-parameter stand-in optimizer with `args.learning_rate`; the trainer's own method,
    so a Trainer that overrides it keeps its rules). Scheduler step `k` holds the rate of training step `k + 1`.
    `overrides`: argument values (e.g. a checkpoint's [`read_schedule_record`]) the schedule is built with instead of
    `trainer.args`' (on a copy of them). `None` for `ReduceLROnPlateau`, which follows the metrics, not the step
    count. The trainer is left as it was (`create_scheduler` sets `lr_scheduler`, and may set more)."""
    import copy

    import torch
    from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

    args = trainer.args
    if overrides:
        args = copy.copy(args)  # not dataclasses.replace: __post_init__ would set up the devices again
        for name, value in overrides.items():
            setattr(args, name, value)
    lr = float(args.learning_rate)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    saved = dict(vars(trainer))
    try:
        trainer.lr_scheduler = None
        trainer.args = args
        scheduler = trainer.create_scheduler(num_training_steps, optimizer=optimizer)
    finally:
        vars(trainer).clear()
        vars(trainer).update(saved)
    if isinstance(scheduler, ReduceLROnPlateau):
        return None
    if isinstance(scheduler, LambdaLR):  # transformers' schedules: the rate of each step without stepping
        base = scheduler.base_lrs[0]
        return [base * float(scheduler.lr_lambdas[0](k)) for k in range(last_step + 1)]
    lrs = [float(optimizer.param_groups[0]["lr"])]
    for _ in range(last_step):
        optimizer.step()  # no gradient: nothing changes; keeps torch from warning about the order of the calls
        scheduler.step()
        lrs.append(float(optimizer.param_groups[0]["lr"]))
    return lrs


def refuse_changed_schedule(
    trainer, checkpoint: str, last_step: int | None = None, max_steps: int | None = None
) -> None:
    """For a resume of `trainer` from `checkpoint`: raise `ValueError` before any step unless the learning-rate
    schedule the resumed run builds is the one the checkpoint's run followed at every scheduler step `0..last_step`
    (default: the checkpoint's `global_step`, inclusive: its optimizer already holds the rate of the next step).

    The checkpoint's schedule is built from the flags it records ([`SCHEDULE_RECORD_NAME`], see
    [`write_schedule_record`]) and its `max_steps`; the new one from `trainer.args` and `max_steps` (default: the
    run's step count, [`run_max_steps`], for an epoch-based run the count transformers derives from
    `--num_train_epochs`). A resume restores the scheduler's position and base learning rates and rebuilds the
    schedule's shape from the new flags, so where the two differ the run would follow the old schedule up to the
    checkpoint and the new one after it (a linear or cosine decay jumps back up, a warmup moves or restarts, a new
    `--learning_rate` is ignored), which neither run launched at once would do. A constant schedule, or
    `warmup_stable_decay` with absolute warmup and decay steps whose decay had not started, extends as the longer run
    would have been trained.

    A checkpoint without the record (saved before hf_ext wrote it, or by another Trainer) is compared only where the
    step count changed (the new flags at both counts). Skipped where no comparison applies: a checkpoint that records
    no step counts, a run whose step count cannot be known before training, a scheduler given to the Trainer, and
    `ReduceLROnPlateau`."""
    old = checkpoint_max_steps(checkpoint)
    step = checkpoint_global_step(checkpoint)
    if old is None or step is None or trainer.lr_scheduler is not None:
        return
    new = run_max_steps(trainer) if max_steps is None or max_steps <= 0 else int(max_steps)
    if new is None or new <= 0:
        return
    recorded = read_schedule_record(checkpoint)
    current = schedule_arguments(trainer.args)
    overrides = {k: v for k, v in (recorded or {}).items() if k in SCHEDULE_ARG_NAMES and k in current}
    changed = [name for name, value in overrides.items() if value != current[name]]
    if old == new and not changed:
        return
    last_step = step if last_step is None else last_step
    if last_step < 0:
        return

    # what changed, as the new flags (`lead`) and as the checkpoint's (`back`: the flags to resume with)
    epoch_based = not (trainer.args.max_steps is not None and trainer.args.max_steps > 0)
    lead, back, was = [], [], []
    if old != new:
        epochs = getattr(trainer.args, "num_train_epochs", None)
        lead.append(f"--num_train_epochs {epochs} ({new} optimizer steps)" if epoch_based else f"--max_steps {new}")
        was.append(f"max_steps {old}")
        old_epochs, old_max = (recorded or {}).get("num_train_epochs"), (recorded or {}).get("max_steps")
        by_epochs = epoch_based and old_epochs is not None and isinstance(old_max, int) and old_max <= 0
        if by_epochs and old_epochs == epochs:
            # the same epochs, another step count: the batch per optimizer step changed (per-device batch size,
            # accumulation, number of processes), which the flags to resume with must restore
            accumulation = (recorded or {}).get("gradient_accumulation_steps")
            was[-1] = f"the same --num_train_epochs {old_epochs} in {old} optimizer steps"
            back.append(
                "the checkpoint's batch per optimizer step (its --per_device_train_batch_size, "
                + (f"--gradient_accumulation_steps {accumulation}" if accumulation is not None else "accumulation")
                + " and number of processes)"
            )
        else:
            back.append(f"--num_train_epochs {old_epochs}" if by_epochs else f"--max_steps {old}")
    for name in changed:
        lead.append(_flag(name, current[name]))
        was.append(_flag(name, overrides[name])[2:])
        back.append(_flag(name, overrides[name]))
    lead_text = ", ".join(lead) if lead else "--resume_from_checkpoint"
    fixes = f"Resume with {' '.join(back)}" if back else "Resume with the checkpoint's flags"
    if old != new:
        fixes += (
            "; or use a schedule whose earlier steps do not depend on --max_steps (e.g. --lr_scheduler_type "
            "warmup_stable_decay with an absolute num_decay_steps in --lr_scheduler_kwargs and an absolute "
            "--warmup_steps, or a constant schedule) for a run to be extended"
        )
    fixes += (
        f"; or start a new run from the checkpoint's weights (--model_name_or_path {checkpoint}, or from_pretrained, "
        "without --resume_from_checkpoint)."
    )
    try:
        before = _schedule_lrs(trainer, old, last_step, overrides)
    except (ValueError, TypeError) as err:
        source = f"its recorded flags ({SCHEDULE_RECORD_NAME})" if overrides else "the current schedule flags"
        raise ValueError(
            f"{lead_text}: {checkpoint} is of a run with {', '.join(was)}, whose learning-rate schedule cannot be "
            f"rebuilt from {source} to check that the resume continues it ({err}). {fixes}"
        ) from None
    after = _schedule_lrs(trainer, new, last_step)
    if before is None or after is None:
        return
    lrs = [float(trainer.args.learning_rate), float(overrides.get("learning_rate", 0.0))]
    scale = max(max(map(abs, lrs)), max(map(abs, before + after), default=0.0))
    for k, (a, b) in enumerate(zip(before, after, strict=True)):
        if not math.isclose(a, b, rel_tol=SCHEDULE_RTOL, abs_tol=SCHEDULE_RTOL * scale):
            ignored = (
                " (a resume restores the scheduler's base learning rates: the new --learning_rate would be ignored)"
                if "learning_rate" in changed
                else ""
            )
            raise ValueError(
                f"{lead_text}: {checkpoint} (global_step {step}) is of a run with {', '.join(was)}, and the "
                f"learning-rate schedule differs: the learning rate of step {k + 1} is {a:.10g} in the checkpoint's "
                f"run and {b:.10g} with {lead_text} ({abs(a - b) / max(abs(a), abs(b)):.2g} relative apart). The "
                f"resumed run would follow the old schedule up to step {step} and the new one after it{ignored}, "
                f"which neither run would do. {fixes}"
            )


def check_resume_schedule(trainer, resume_from_checkpoint: str | bool | None) -> tuple[str | None, bool]:
    """The checks [`train_or_restore_finished`] makes before it trains, for a recipe to make before it writes anything
    (its run record, the removal of older results): `resume_from_checkpoint=True` resolved to the last complete
    checkpoint in `args.output_dir` ([`trainer_resume_checkpoint`]; a `ValueError` where there is none), and
    [`refuse_changed_schedule`] for the checkpoint. Returns the checkpoint (`None` for no resume) and whether it is of a
    finished run (saved at `max_steps`, or stopped by a callback)."""
    if not resume_from_checkpoint:
        return None, False
    # the newest complete checkpoint for True; a folder a killed save left incomplete is refused
    resume_from_checkpoint = trainer_resume_checkpoint(resume_from_checkpoint, trainer.args.output_dir)
    step = checkpoint_global_step(resume_from_checkpoint) if isinstance(resume_from_checkpoint, str) else None
    max_steps = trainer.args.max_steps
    if step is not None and (max_steps is None or max_steps <= 0):
        # an epoch-based run: the step count transformers derives from --num_train_epochs (a larger one trains on
        # from the last checkpoint of a finished run); the checkpoint's own where it cannot be known before training
        max_steps = run_max_steps(trainer) or checkpoint_max_steps(resume_from_checkpoint)
    at_max_steps = step is not None and max_steps is not None and max_steps > 0 and step >= max_steps
    finished = at_max_steps or (step is not None and checkpoint_stopped(resume_from_checkpoint))
    if step is not None:
        # another step count or schedule than the checkpoint's run: only where the new schedule is the one the run
        # followed (up to the rate of its next step; for a finished run, of the steps it trained)
        refuse_changed_schedule(trainer, resume_from_checkpoint, step - 1 if finished else step, max_steps)
    return resume_from_checkpoint, finished


def train_or_restore_finished(trainer, resume_from_checkpoint: str | None):
    """`trainer.train(resume_from_checkpoint=...)`, except for a checkpoint of a finished run: saved at `max_steps`,
    or where a callback stopped the run ([`checkpoint_stopped`]). transformers' `Trainer` would train on from it (one
    step past `max_steps`; after a stop, to `max_steps`, as `on_train_begin` clears the stop). Here the run is restored
    as a resume restores it (weights, optimizer, scheduler, `TrainerState`, callback and custom states, RNG) and left
    before that step; then, as at the end of the uninterrupted run, the best checkpoint is loaded
    (`load_best_model_at_end`) and the callbacks get `on_train_end`. The recipes resume every run through it: a run
    stopped after its last checkpoint (before its results were written) is rerun with `--resume_from_checkpoint`, and a
    recipe of several runs resumes the finished ones with the interrupted one. `resume_from_checkpoint=True` means the
    last complete checkpoint in `args.output_dir`, as for hf_ext's Trainers' `train()`. Returns `train()`'s output, or `None` for a restored
    finished run.

    A checkpoint is resumed only where the learning-rate schedule the new flags build is the one its run followed up
    to it ([`refuse_changed_schedule`], checked before any step: another `--max_steps` or `--num_train_epochs`, or
    schedule flags other than the checkpoint records): then the last checkpoint of a finished run, resumed with a
    larger `max_steps`, trains on to it, as `Trainer` does. The run's end is `args.max_steps`, or for an epoch-based
    run (`args.max_steps <= 0`) the step count `Trainer` derives from `--num_train_epochs` ([`run_max_steps`]; the
    checkpoint's own where it cannot be known before training)."""
    resume_from_checkpoint, finished = check_resume_schedule(trainer, resume_from_checkpoint)
    if not finished:
        return trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    guard = _stop_before_next_step_callback()
    trainer.add_callback(guard)
    trainer._hf_ext_restores_finished_run = True  # no step is trained: another batch changes nothing
    try:
        return trainer.train(resume_from_checkpoint=resume_from_checkpoint)  # an epoch boundary: no step is run
    except _RunFinished:
        # what the end of the uninterrupted run did after its last step (transformers' `_finalize_training`), but
        # its speed/loss summary log: the best checkpoint's weights, the callbacks' `on_train_end`
        if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint is not None:
            trainer._load_best_model()
        trainer.is_in_train = False
        trainer.control = trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
        return None
    finally:
        trainer.remove_callback(guard)
        trainer._hf_ext_restores_finished_run = False


# --------------------------------------------------------------------------------------------------------------------
# The training-loss window across a resume
#
# transformers' `Trainer` logs `loss` as the mean over the steps since the previous log: the losses are summed in
# `_tr_loss` (on the device, this process's own) and `_globalstep_last_logged` marks where the window started. A
# checkpoint does not record them, and `train(resume_from_checkpoint=...)` restarts the window at the checkpoint's
# step, so after a resume from a checkpoint saved between two logs the first logged `loss` averages only the steps
# since the resume. `LossWindowResumeMixin` saves the window with every checkpoint (one file per process) and
# restores it, so the resumed run logs the uninterrupted run's losses.

#: the file a checkpoint holds per process (`process_index`) with that process's part of the loss window
LOSS_WINDOW_NAME = "loss_window_{}.json"
_LOSS_WINDOW_FORMAT = 1
_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _float_to_json(value: float):
    value = float(value)
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _refuse_constant(token: str):
    raise ValueError(f"bare {token} is not strict JSON (non-finite numbers are written as strings)")


def write_loss_window(folder: str, process_index: int, window: dict) -> str:
    """Write one process's loss window (see [`LossWindowResumeMixin`]) into checkpoint `folder` atomically, as strict
    JSON (non-finite losses as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`). Returns the file's path."""
    from .io import atomic_open

    record = {
        "format": _LOSS_WINDOW_FORMAT,
        "global_step": int(window["global_step"]),
        "last_logged_step": int(window["last_logged_step"]),
        "tr_loss": _float_to_json(window["tr_loss"]),
        "tr_loss_mean": _float_to_json(window["tr_loss_mean"]),
        "process_index": int(process_index),
        "world_size": int(window["world_size"]),
    }
    path = os.path.join(folder, LOSS_WINDOW_NAME.format(int(process_index)))
    with atomic_open(path, "w") as fh:
        json.dump(record, fh, indent=2, allow_nan=False)
        fh.write("\n")
    return path


def _window_problem(path: str):
    """(record, None) for a valid loss-window file, or (None, what is wrong with it)."""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.loads(fh.read(), parse_constant=_refuse_constant)
    except (OSError, ValueError) as err:
        return None, f"it cannot be read ({err})"
    if not isinstance(record, dict):
        return None, "it does not hold a JSON object"
    for key in ("global_step", "last_logged_step", "process_index", "world_size"):
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return None, f"{key!r} is {value!r}, not a non-negative integer"
    if record["world_size"] < 1 or record["process_index"] >= record["world_size"]:
        return None, f"process_index {record['process_index']} does not fit world_size {record['world_size']}"
    if record["last_logged_step"] > record["global_step"]:
        return None, f"last_logged_step {record['last_logged_step']} is after global_step {record['global_step']}"
    for key in ("tr_loss", "tr_loss_mean"):
        value = record.get(key)
        if isinstance(value, str) and value in _NON_FINITE:
            record[key] = _NON_FINITE[value]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            record[key] = float(value)
        else:
            return None, f"{key!r} is {value!r}, not a number (or 'NaN', 'Infinity', '-Infinity')"
    return record, None


def read_loss_window(checkpoint: str, process_index: int = 0, world_size: int = 1) -> dict | None:
    """The loss window saved in `checkpoint` for process `process_index` of `world_size`, as restored by
    [`LossWindowResumeMixin`]: a dict with `global_step`, `last_logged_step` (where the window started), `tr_loss`
    (the sum of the losses since then this process restores into `Trainer._tr_loss`) and `tr_loss_mean` (that sum
    averaged over the processes, as the logged loss averages it). `None` for a checkpoint without loss-window files
    (written before hf_ext saved them, or by another Trainer): the resume then restarts the window, as transformers
    does.

    When the checkpoint was saved by another number of processes, every process restores the mean over the saving
    processes (the sum each process saved is of its own batches). Raises `ValueError` naming the file for a malformed
    file or one that does not belong to the checkpoint's step."""
    own = os.path.join(checkpoint, LOSS_WINDOW_NAME.format(int(process_index)))
    first = os.path.join(checkpoint, LOSS_WINDOW_NAME.format(0))
    path = own if os.path.isfile(own) else first
    if not os.path.isfile(path):
        return None
    record, problem = _window_problem(path)
    step = checkpoint_global_step(checkpoint)
    if problem is None and step is not None and record["global_step"] != step:
        problem = f"it was saved at global_step {record['global_step']}, the checkpoint at {step}"
    if problem is not None:
        raise ValueError(
            f"--resume_from_checkpoint: {path} cannot be used: {problem}. It holds the training losses summed since "
            "the last log; delete the checkpoint's loss_window_*.json files to resume without them (the first loss "
            "logged after the resume then averages only the steps since the resume), or resume from another "
            "checkpoint."
        )
    if path != own or record["world_size"] != world_size:
        record["tr_loss"] = record["tr_loss_mean"]
    return record


def restored_loss_window(trainer) -> tuple[int, float] | None:
    """For a `train()` call of a [`LossWindowResumeMixin`] Trainer that resumed with a saved loss window: the step
    the window started at (the last log before the checkpoint) and the sum of the losses of the steps from there to
    the checkpoint, averaged over the processes. `None` for a fresh run, a resume without a saved window, and other
    Trainers. `train()`'s `training_loss` stays the mean over the steps of that call (the restored sum is not in it)."""
    return getattr(trainer, "_hf_ext_restored_loss_window", None)


def _restore_loss_window_callback(trainer, window: dict):
    from transformers import TrainerCallback

    class _RestoreLossWindow(TrainerCallback):
        """Puts the checkpoint's loss window back right after `Trainer._inner_training_loop` has reset it (it calls
        `on_train_begin` next), on each attempt of `auto_find_batch_size` too."""

        def on_train_begin(self, args, state, control, **kwargs):
            if int(state.global_step) != window["global_step"]:
                logger.warning(
                    "Not restoring the loss window: the checkpoint's is of step %d, the run resumes at step %d.",
                    window["global_step"],
                    state.global_step,
                )
                return
            import torch

            with torch.no_grad():
                trainer._tr_loss.fill_(window["tr_loss"])  # the tensor Trainer made: its device and dtype
            trainer._globalstep_last_logged = window["last_logged_step"]
            # `train()` reports the mean over its own steps: the restored sum of earlier steps is taken out again
            # when it is drained into `_total_loss_scalar` at the next log
            carried = window["tr_loss_mean"]
            trainer._total_loss_scalar = -carried if math.isfinite(carried) else 0.0
            trainer._hf_ext_restored_loss_window = (window["last_logged_step"], carried)
            # what this process restored, for a train() that ends before any log drains it (`_finalize_training`)
            trainer._hf_ext_restored_own_loss = window["tr_loss"]

    return _RestoreLossWindow()


# --------------------------------------------------------------------------------------------------------------------
# The optimizer's options across a resume
#
# torch's `Optimizer.load_state_dict` restores every param-group value of the checkpoint (weight decay, betas, eps,
# momentum, ...): a resume with other optimizer flags would silently train with the checkpoint's values while its
# arguments (and every later checkpoint's `training_args.bin`) name the new ones.

#: the param-group options compared on resume: the update rule's hyperparameters of torch's and transformers'
#: optimizers (not the learning rate, which the scheduler sets every step, nor the counters some optimizers keep in
#: their groups, e.g. schedule-free's `k`, nor kernel switches such as `foreach` / `fused`)
COMPARED_GROUP_OPTIONS = (
    "weight_decay", "betas", "eps", "momentum", "dampening", "nesterov", "amsgrad", "maximize", "alpha", "centered",
    "rho", "beta1", "decay_rate", "clip_threshold",
)  # fmt: skip
#: the `TrainingArguments` flags transformers' `Trainer` builds these param-group values from
_GROUP_KEY_FLAGS = {"weight_decay": "--weight_decay", "eps": "--adam_epsilon"}


def _group_value(value):
    if isinstance(value, (tuple, list)):
        return tuple(_group_value(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    return _NOT_JSON  # a tensor or an object: not compared


def optimizer_group_options(optimizer) -> list[dict] | None:
    """For each param group of `optimizer`: its keys (`"keys"`, the options the optimizer reads) and the values of its
    [`COMPARED_GROUP_OPTIONS`] that are plain numbers, booleans or tuples of them (`"values"`), as
    [`refuse_changed_optimizer_options`] compares them; `None` for an object without param groups."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list | tuple):
        return None
    out = []
    for group in groups:
        values = {}
        for key in COMPARED_GROUP_OPTIONS:
            value = _group_value(group[key]) if key in group else _NOT_JSON
            if value is not _NOT_JSON and not (isinstance(value, tuple) and _NOT_JSON in value):
                values[key] = value
        out.append({"keys": set(group) - {"params"}, "values": values})
    return out


def _option_flags(key: str, value) -> str:
    if key == "betas" and isinstance(value, tuple) and len(value) == 2:
        if value[0] is None:  # the first follows a momentum-cycling scheduler ([`_without_momentum`])
            return f"--adam_beta2 {value[1]:g}"
        return f"--adam_beta1 {value[0]:g} --adam_beta2 {value[1]:g}"
    if key in _GROUP_KEY_FLAGS and isinstance(value, float):
        return f"{_GROUP_KEY_FLAGS[key]} {value:g}"
    return f"{key}={value!r}"


def scheduler_cycles_momentum(lr_scheduler) -> bool:
    """Whether `lr_scheduler` sets the momentum of the optimizer's param groups every step, as torch's `OneCycleLR`
    and `CyclicLR` do with `cycle_momentum=True` (their default): SGD's `momentum`, or the first of Adam's `betas`.
    Those values then follow the schedule, so a checkpoint holds the value of its step, not the one the run set."""
    for scheduler in (lr_scheduler, getattr(lr_scheduler, "scheduler", None)):  # accelerate's AcceleratedScheduler
        if scheduler is not None and getattr(scheduler, "cycle_momentum", False) is True:
            return True
    return False


def _without_momentum(options: list[dict]) -> list[dict]:
    """`options` ([`optimizer_group_options`]) without the values a momentum-cycling scheduler sets: `momentum` and
    the first of `betas` (the second, `--adam_beta2`, is still compared)."""
    out = []
    for group in options:
        values = {k: v for k, v in group["values"].items() if k != "momentum"}
        if isinstance(values.get("betas"), tuple) and values["betas"]:
            values["betas"] = (None, *values["betas"][1:])
        out.append({"keys": group["keys"], "values": values})
    return out


def refuse_changed_optimizer_options(
    asked: list[dict] | None, restored: list[dict] | None, checkpoint: str, momentum_scheduled: bool = False
) -> None:
    """For a resume from `checkpoint`: raise `ValueError`, before any step, when the optimizer's param groups as this
    run built them (`asked`, [`optimizer_group_options`] before the checkpoint's optimizer state was loaded) differ
    from what the checkpoint restored (`restored`, after): torch's `load_state_dict` brings the checkpoint's values
    back, so the new ones (e.g. `--weight_decay`, `--adam_beta2`, `--adam_epsilon`, another `--optim`) would be
    silently ignored. The message names each flag with the checkpoint's and the new value. `momentum_scheduled`: the
    run's scheduler sets the momentum every step ([`scheduler_cycles_momentum`]), which is then not compared (the
    checkpoint holds its step's value)."""
    if not asked or not restored or len(asked) != len(restored):
        return  # nothing to compare (a different group count is torch's own error in load_state_dict)
    if momentum_scheduled:
        asked, restored = _without_momentum(asked), _without_momentum(restored)
    changed, back = [], []
    for new, old in zip(asked, restored, strict=True):
        missing = new["keys"] - old["keys"]  # options this run's optimizer reads that the restored groups lack
        if missing:
            what = (
                f"another optimizer (the checkpoint's param groups have no {', '.join(sorted(missing))}, which this "
                "run's optimizer reads: --optim or --optim_args changed)"
            )
            if what not in changed:
                changed.append(what)
                back.append("the checkpoint's --optim / --optim_args")
            continue
        new, old = new["values"], old["values"]
        for key in sorted(set(new) & set(old)):
            if new[key] != old[key]:
                what = f"{_option_flags(key, new[key])} now, {_option_flags(key, old[key])} in the checkpoint"
                if what not in changed:
                    changed.append(what)
                    back.append(_option_flags(key, old[key]))
    if changed:
        raise ValueError(
            f"resume_from_checkpoint={checkpoint!r} was trained with other optimizer options: {'; '.join(changed)}. "
            "A resume restores the checkpoint's optimizer param groups (torch's load_state_dict), so the new values "
            f"would be silently ignored. Resume with {' '.join(dict.fromkeys(back))}, or start a new run from the "
            f"checkpoint's weights (--model_name_or_path {checkpoint}, or from_pretrained, without "
            "resume_from_checkpoint) to use the new ones."
        )


class LossWindowResumeMixin:
    """Mixin for a `transformers.Trainer` (subclass) whose resumed runs log the uninterrupted run's training losses.

    `Trainer` logs `loss` as the mean over the steps since the previous log, and a resume restarts that window at the
    checkpoint's step: after a checkpoint saved between two logs (`save_steps` not a multiple of `logging_steps`) the
    first loss logged after the resume would average only the steps since the resume. With this mixin every
    checkpoint holds each process's open window (`loss_window_<process_index>.json`: the losses summed since the
    last log, the step of that log, and their mean over the processes), written before Trainer writes the
    checkpoint's `trainer_state.json`, and `train(resume_from_checkpoint=...)` restores it, so the logged losses equal
    the uninterrupted run's. A checkpoint without these files (saved before hf_ext wrote them) resumes as
    transformers does. `train()`'s `training_loss` stays the mean over the steps of that call; see
    [`restored_loss_window`] for the whole run's.

    The process that saves also writes the flags the learning-rate schedule was built from into every checkpoint
    ([`SCHEDULE_RECORD_NAME`], [`write_schedule_record`]), before `trainer_state.json`: a resume through
    [`train_or_restore_finished`] compares the schedule the new flags build with that one ([`refuse_changed_schedule`]).
    The record holds the run's total train batch and its factors too ([`run_train_batch`]): a resume at another total
    (which transformers' count of skipped batches makes repeat or skip samples) is warned about when the training loop
    starts, once per launch on global rank 0, and goes on ([`warn_changed_train_batch`]); not for a finished run that
    [`train_or_restore_finished`] restores without a step.

    A resume whose optimizer options differ from the checkpoint's (its param groups, which torch's `load_state_dict`
    restores whole: `--weight_decay`, `--adam_beta1/2`, `--adam_epsilon`, another `--optim`) is refused before any
    step ([`refuse_changed_optimizer_options`]); a Trainer that compares them itself, flag by flag, sets
    `compares_optimizer_options_on_resume = True`.

    Put it before `Trainer` in the bases: `class MyTrainer(LossWindowResumeMixin, Trainer)`, or
    [`with_loss_window`]`(Trainer)`.
    """

    #: a subclass that compares the restored optimizer options with its arguments itself sets this
    compares_optimizer_options_on_resume = False

    def _load_optimizer_and_scheduler(self, checkpoint, *args, **kwargs):
        check = checkpoint is not None and not self.compares_optimizer_options_on_resume
        asked = optimizer_group_options(self.optimizer) if check else None
        out = super()._load_optimizer_and_scheduler(checkpoint, *args, **kwargs)
        if check:
            refuse_changed_optimizer_options(
                asked,
                optimizer_group_options(self.optimizer),
                checkpoint,
                momentum_scheduled=scheduler_cycles_momentum(self.lr_scheduler),
            )
        return out

    def _finalize_training(self, *args, **kwargs):
        # The restore took the carried window's mean over the processes out of `_total_loss_scalar`, which cancels
        # when a log drains `_tr_loss` (transformers adds the mean over the processes there). A train() that ends
        # before any log since the restore has transformers add this process's own leftover instead: take out its own
        # carried sum, so `training_loss` stays the mean over the call's steps on every process (it was off by
        # (own - mean) / steps on a process whose window differed from the mean).
        restored = getattr(self, "_hf_ext_restored_loss_window", None)
        own = getattr(self, "_hf_ext_restored_own_loss", None)
        if restored is not None and own is not None and self._globalstep_last_logged == restored[0]:
            carried = restored[1]
            self._total_loss_scalar += (carried if math.isfinite(carried) else 0.0) - own
        return super()._finalize_training(*args, **kwargs)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._hf_ext_restored_loss_window = None
        self._hf_ext_restored_own_loss = None
        # True: the newest complete checkpoint (not one a killed save left half-written); an incomplete folder named
        # explicitly is refused. Passed on resolved, so Trainer does not look up the newest folder again.
        checkpoint = resume_from_checkpoint = trainer_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        callbacks = []
        if isinstance(checkpoint, str) and checkpoint:
            # read (and checked) before any work; applied when the training loop starts
            window = read_loss_window(checkpoint, self.args.process_index, self.args.world_size)
            if window is not None:
                callbacks.append(_restore_loss_window_callback(self, window))
            if read_train_batch_record(checkpoint) is not None:  # compared with the batch the loop trains with
                callbacks.append(_warn_changed_train_batch_callback(self, checkpoint))
        for callback in callbacks:
            self.add_callback(callback)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            for callback in callbacks:
                self.remove_callback(callback)

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        from transformers.trainer_pt_utils import nested_gather
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            # A save into a complete checkpoint of the same step (a run redoing its last steps from an earlier
            # checkpoint) overwrites its files in place: its old trainer_state.json would mark the folder complete
            # while they are half-written, so a kill then left a folder the next resume picked. Incomplete until the
            # new trainer_state.json is written, as a first save is.
            stale = os.path.join(folder, TRAINER_STATE_NAME)
            if os.path.isfile(stale):
                os.remove(stale)
            # the flags the LR schedule was built from, compared on a resume
            os.makedirs(folder, exist_ok=True)
            # before trainer_state.json; with the total train batch a resume compares (`warn_changed_train_batch`)
            write_schedule_record(folder, self.args, self.state.max_steps, run_train_batch(self))
        tr_loss = getattr(self, "_tr_loss", None)
        if tr_loss is not None:  # saved within a training loop (the only place Trainer saves checkpoints)
            # every process takes part: the mean over the processes is the gather the logged loss uses
            mean = nested_gather(tr_loss.detach(), self.args.parallel_mode).mean().item()
            os.makedirs(folder, exist_ok=True)
            window = {
                "global_step": self.state.global_step,
                "last_logged_step": self._globalstep_last_logged,
                "tr_loss": tr_loss.item(),
                "tr_loss_mean": mean,
                "world_size": self.args.world_size,
            }
            write_loss_window(folder, self.args.process_index, window)  # before trainer_state.json marks it complete
        return super()._save_checkpoint(model, trial, *args, **kwargs)


_WITH_LOSS_WINDOW: dict = {}


def with_loss_window(trainer_cls):
    """`trainer_cls` (a `transformers.Trainer` subclass, e.g. `Trainer` itself) with [`LossWindowResumeMixin`]: a
    subclass of the same name, made once per class; `trainer_cls` itself if it already has the mixin."""
    if issubclass(trainer_cls, LossWindowResumeMixin):
        return trainer_cls
    if trainer_cls not in _WITH_LOSS_WINDOW:
        _WITH_LOSS_WINDOW[trainer_cls] = type(
            trainer_cls.__name__,
            (LossWindowResumeMixin, trainer_cls),
            {"__module__": __name__, "__doc__": trainer_cls.__doc__, "__qualname__": trainer_cls.__qualname__},
        )
    return _WITH_LOSS_WINDOW[trainer_cls]
