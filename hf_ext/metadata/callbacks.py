"""Trainer callback that switches metadata conditioning off for the final fraction of training (MeCo cooldown)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import MutableMapping

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import has_length

from ..utils.checks import is_real
from ..utils.decay import ModelDecayNamesMixin
from ..utils.evaluation import EvalRowsOnceMixin
from ..utils.fsdp_save import WholeModelSaveMixin
from ..utils.resume import LossWindowResumeMixin, checkpoint_max_steps
from .collator import MetadataCollator

STATE_FILE = "metadata_conditioning.json"

logger = logging.getLogger(__name__)


class MetadataCooldownCallback(TrainerCallback):
    """Train the last `cooldown_fraction` of the optimizer steps without metadata.

    MeCo trains 90% of the steps with URL context and the final 10% on plain text, so the model also works
    without metadata. The callback tells the collator the batch index at which conditioning stops
    (`switch_step * gradient_accumulation_steps`, times the number of ranks where accelerate dispatches batches: an
    `IterableDataset` on several ranks by default, whose main process collates every rank's micro-batch); the collator
    counts the batches it builds, so the switch lands on exactly the first batch of optimizer step `switch_step + 1`
    even though data loaders prepare batches ahead.
    On resume the counter is set from `state.global_step`, less the batches of the resumed epoch that the Trainer
    fast-forwards through the collator (iterable datasets: accelerate's `skip_first_batches` collates and discards
    them; map-style datasets skip indices without collating), so a resumed run switches at the same micro-batch as an
    uninterrupted one. The switch point is logged as
    `metadata_conditioning` (1 or 0; always 0 when the collator has `conditioning=False`, whose batches never carry
    metadata, so a no-metadata control run can keep the callback and logs what it trains) and written to `metadata_conditioning.json` in every checkpoint, with
    `cooldown_fraction` and the collator's `metadata_dropout` and `seed`. On resume these are compared with the live
    values before the first step: a difference (or a `max_steps` that moves the switch across the steps the checkpoint
    trained) raises a `ValueError` naming each option with both values; a file without them resumes with a warning.

    `metadata_invalid` is logged too: the number of training examples, in the micro-batches of the optimizer steps
    done so far (`state.global_step`), whose metadata value was invalid (trained without metadata). A document met in
    several epochs counts once per epoch; evaluation batches, batches prepared ahead for the next step and the batches
    a resumed run fast-forwards through do not count. The value is stored in `metadata_conditioning.json` and read
    back from the checkpoint a run resumes from, so a resumed run logs what the uninterrupted one does. Under data
    parallelism it is the total over the ranks (summed at each step's end); with DataLoader workers (no cooldown)
    nothing is counted. Both values reach `state.log_history` (and so `trainer_state.json`); the reporting
    integrations (TensorBoard, W&B, ...) run before user callbacks, so they get them under `MetadataTrainer`, which
    adds them before `Trainer.log` and tells the callback which checkpoint it resumes from (with a plain `Trainer` the
    callback reads `args.resume_from_checkpoint` or `output_dir/checkpoint-<global_step>`).
    Under `MetadataTrainer` the file is written with the checkpoint's model, before `trainer_state.json` (the file
    that marks a checkpoint complete), so a save killed half-way never leaves a complete-looking checkpoint without
    it; a plain `Trainer` has no hook there, and the callback then writes it in `on_save`, after `trainer_state.json`.

    Evaluation with the training collator: under `MetadataTrainer`, `evaluate` and `predict` build their batches in
    the collator's `evaluating(conditioning_at(state.global_step))` mode, so every evaluation batch has the
    conditioning of the phase the model is in (what the evaluation row logs as `metadata_conditioning`) and none
    reads or moves the training batch counter. A plain `Trainer` has no hook before evaluation: its evaluation
    batches take their conditioning from the training counter (which already counts the batch prepared for the next
    step, so an evaluation near the switch is partly or wholly built without metadata); the callback then puts the
    counter back, so the switch itself stays exact, and warns. Use `MetadataTrainer`, a separate collator for
    evaluation, or wrap the call in `collator.evaluating(callback.conditioning_at(trainer.state.global_step))`.
    The switch is driven
    from the main process, so the callback needs `dataloader_num_workers=0` (the default): worker processes hold
    their own copy of the collator, which the callback cannot reach, and `train()` refuses to start with workers
    rather than silently training every step with metadata. (The collator itself refuses to apply a cooldown inside
    a worker process.) `train()` also refuses, before the first step, a model whose input embeddings have no row
    for the collator's BOS, EOS, pad or context tokens (`MetadataCollator.check_model`: a model left at its old size
    after `add_context_tokens(tokenizer)` without the model), which would fail there with a raw `IndexError`.

    Args:
        collator (`MetadataCollator`): The collator used by the Trainer: its `data_collator`, the same object.
            `train()` raises a `ValueError` when the train dataloader collates with another `MetadataCollator` (one
            rebuilt with the same arguments, say), which would train every step with metadata while
            `metadata_conditioning` logs the cooldown; where the loader's collator is hidden in a wrapper of your
            own, the first step's end raises it when this collator built none of the step's batches.
        cooldown_fraction (`float`, *optional*, defaults to 0.1): Final share of `max_steps` without metadata.
    """

    def __init__(self, collator: MetadataCollator, cooldown_fraction: float = 0.1):
        if not isinstance(collator, MetadataCollator):
            raise TypeError(f"collator must be a MetadataCollator, got {type(collator).__name__}.")
        if not is_real(cooldown_fraction) or not 0.0 <= cooldown_fraction < 1.0:  # numpy scalars too; NaN refused
            raise ValueError(f"cooldown_fraction must be in [0, 1), got {cooldown_fraction!r}.")
        self.collator = collator
        self.cooldown_fraction = float(cooldown_fraction)  # stored in metadata_conditioning.json
        self.switch_step: int | None = None
        self._grad_accum = 1
        # Batches the collator builds per micro-step (one micro-batch on every rank): see _collations_per_micro_step.
        self._per_micro_step = 1
        self._count_at_step_end: int | None = None
        self._skipped_by_collation = 0
        self._saved: tuple[str, int] | None = None  # (checkpoint folder, step) save_state last wrote
        #: Invalid training examples in the optimizer steps up to `state.global_step` (logged as `metadata_invalid`).
        self.invalid_total = 0
        self._count_from = 0  # batch index from which collated batches are counted (skipped on resume: below)
        self._resume_checkpoint: str | None = None  # set by MetadataTrainer when train() resumes
        self._loader_collator_unknown = True  # the train loader's collate_fn was not found to be self.collator
        self._check_first_step = False  # check at the next step's end that self.collator built that step's batches
        self._synced_count = 0  # collator.batches_seen as the last _sync set it

    def _batches_for(self, steps: int) -> int:
        """Training batches the collator builds for `steps` optimizer steps."""
        return steps * self._grad_accum * self._per_micro_step

    def _sync(self, args, state) -> None:
        self.collator.batches_seen = self._batches_for(state.global_step) - self._skipped_by_collation
        self._synced_count = self.collator.batches_seen
        # Batches entered before a (re)sync were not training batches of the steps to come (evaluation on start, a
        # previous train() call): the training batches of the steps done are all counted by now. With DataLoader
        # workers the batches are built in the workers' copies, which would only grow their own dicts: keep none.
        self.collator.invalid_by_batch = None if getattr(args, "dataloader_num_workers", 0) else {}

    def _fold_invalid(self, state) -> None:
        """Add the invalid examples of the training batches of the optimizer steps up to `state.global_step`."""
        pending = self.collator.invalid_by_batch
        if not pending:
            return
        limit = self._batches_for(state.global_step)
        for index in [i for i in pending if i < limit]:
            n = pending.pop(index)
            if index >= self._count_from:
                self.invalid_total += n

    def _saved_state(self, args, state) -> tuple[str, dict] | None:
        """`(path, contents)` of the `metadata_conditioning.json` of the checkpoint resumed from at `state.global_step`
        (`None` for a fresh run, or when no readable file of that step is found)."""
        if not state.global_step:
            return None
        candidates = [self._resume_checkpoint, getattr(args, "resume_from_checkpoint", None)]
        candidates.append(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))
        for folder in candidates:
            if not isinstance(folder, str):
                continue
            path = os.path.join(folder, STATE_FILE)
            try:
                with open(path) as f:
                    saved = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(saved, dict) and saved.get("global_step") == state.global_step:
                return path, saved
        return None

    def _restored_invalid(self, saved: tuple[str, dict] | None, state) -> int:
        """`metadata_invalid` at `state.global_step`, from the checkpoint's state file (0 for a fresh run)."""
        if not state.global_step:
            return 0
        if saved is None:
            logger.warning(
                "resuming at step %d without the checkpoint's %s (not found): the logged metadata_invalid counts from "
                "0 again, and cooldown_fraction, metadata_dropout and seed are resumed unchecked; make sure they are "
                "the interrupted run's.",
                state.global_step,
                STATE_FILE,
            )
            return 0
        if isinstance(saved[1].get("metadata_invalid"), int):
            return saved[1]["metadata_invalid"]
        logger.warning(
            "resuming at step %d without a %s that holds metadata_invalid (a checkpoint written before it was "
            "stored, or not found): the logged metadata_invalid counts from 0 again.",
            state.global_step,
            STATE_FILE,
        )
        return 0

    def _check_resumed_options(self, saved: tuple[str, dict], state) -> None:
        """Refuse a resume whose cooldown or dropout options differ from the ones the checkpoint's state file records.

        Compared: `cooldown_fraction`, the collator's `metadata_dropout` and `seed` (numbers equal up to float32
        rounding: `0` and `0.0`, `numpy.float32(0.1)` and `0.1` are the same value), and the switch step where a
        changed `max_steps` moves it across the steps already trained (a later switch would turn metadata back on
        after the checkpoint's cooldown; an earlier one would have cooled down steps the checkpoint trained with
        metadata). A `max_steps` change that leaves every trained step on the same side of the switch is a resume as
        any other. A file without some of these values is resumed unchecked for them, with a warning (without the file,
        `_restored_invalid` warns). The collator's data-defining settings ([`collator_record`]: `conditioning`, the
        template, `layout`, the row shape, ...) are compared as recorded, exactly; a file written before they were
        recorded has none and is not compared on them.
        """
        path, record = saved
        live = {
            "cooldown_fraction": self.cooldown_fraction,
            "metadata_dropout": self.collator.metadata_dropout,
            "seed": self.collator.seed,
        }
        unchecked = [name for name in live if not _is_number(record.get(name))]
        if unchecked:
            logger.warning(
                "%s records no %s (written before hf_ext recorded it): resumed unchecked; make sure the value is the "
                "interrupted run's.",
                path,
                " / ".join(unchecked),
            )
        changed = []  # (option, checkpoint's value, value now, description)
        for name, new in live.items():
            old = record.get(name)
            if name in unchecked:
                continue
            same = old == new if name == "seed" else math.isclose(old, new, rel_tol=1e-6, abs_tol=0.0)
            if not same:
                changed.append((name, old, f"{name}={old!r} in the checkpoint, {new!r} now"))
        saved_collator = record.get("collator")
        if isinstance(saved_collator, dict):  # files before 2026-12-05 hold no collator settings: not compared
            now = collator_record(self.collator)
            for name, value in now.items():
                if name in saved_collator and saved_collator[name] != value:
                    changed.append(
                        (f"MetadataCollator.{name}", saved_collator[name],
                         f"MetadataCollator {name}={saved_collator[name]!r} in the checkpoint, {value!r} now")
                    )  # fmt: skip
        old_switch = record.get("switch_step")
        if (
            not changed
            and not unchecked
            and self.cooldown_fraction > 0
            and _is_number(old_switch)
            and old_switch != self.switch_step
            and min(old_switch, self.switch_step) < state.global_step
        ):
            # the same fraction of another max_steps: the switch moves across the steps the checkpoint has trained
            old_max = checkpoint_max_steps(os.path.dirname(path))
            changed.append(
                (
                    "max_steps",
                    old_max if old_max is not None else "the interrupted run's",
                    f"max_steps={old_max if old_max is not None else '?'} in the checkpoint, {state.max_steps} now, "
                    f"which moves the cooldown's start (switch_step) from after step {old_switch} to after step "
                    f"{self.switch_step}, across the {state.global_step} steps the checkpoint has trained",
                )
            )
        if not changed:
            return
        listed = "; ".join(text for _, _, text in changed)
        fix = ", ".join(f"{name}={old!r}" if name != "max_steps" else f"max_steps={old}" for name, old, _ in changed)
        raise ValueError(
            f"resume_from_checkpoint={os.path.dirname(path)!r} was trained with other metadata options: {listed} "
            f"(recorded in its {STATE_FILE}). The remaining steps would keep metadata on other documents "
            "(metadata_dropout, seed) or switch it off at another step (cooldown_fraction, max_steps) than the run "
            f"the checkpoint belongs to. Resume with the checkpoint's values ({fix}; metadata_dropout and seed are "
            "MetadataCollator's, cooldown_fraction MetadataCooldownCallback's), or start a new run (from the "
            "checkpoint's weights, without resume_from_checkpoint) to use the new ones."
            + (
                " The MetadataCollator settings define what the remaining steps train on (with or without metadata, "
                "which template, which layout and rows)."
                if any(name.startswith("MetadataCollator.") for name, _, _ in changed)
                else ""
            )
        )

    def _check_training_collator(self, train_dataloader) -> None:
        """Refuse a train dataloader whose `collate_fn` is (or wraps) another `MetadataCollator` than `self.collator`.

        The loader's `collate_fn` is unwrapped through transformers' `RemoveColumnsCollator` (`data_collator`),
        `functools.partial` (`func`) and `__wrapped__`. Where this ends in something else than a `MetadataCollator`
        (a user's own wrapper), `_loader_collator_unknown` is set and the first step's end checks the batch counter.
        """
        import functools

        self._loader_collator_unknown = True
        collate = getattr(train_dataloader, "collate_fn", None)
        seen = set()
        while collate is not None and id(collate) not in seen:
            seen.add(id(collate))
            if collate is self.collator:
                self._loader_collator_unknown = False
                return
            if isinstance(collate, MetadataCollator):
                raise ValueError(
                    "MetadataCooldownCallback(collator=...) got another MetadataCollator than the one the Trainer "
                    "trains with (its data_collator): the cooldown would switch a collator that builds no training "
                    "batch, every step would train with metadata, and metadata_conditioning would still log the "
                    "switch. Pass the Trainer's data_collator itself: MetadataCooldownCallback(collator=collator) "
                    "with Trainer(..., data_collator=collator), the same object (not one rebuilt with the same "
                    "arguments)."
                )
            if isinstance(collate, functools.partial):
                collate = collate.func
            else:
                collate = getattr(collate, "data_collator", None) or getattr(collate, "__wrapped__", None)

    @staticmethod
    def _batches_collated_while_skipping(args, state, train_dataloader, per_micro_step: int = 1) -> int:
        """Batches of the resumed epoch the Trainer fast-forwards through the collator (0 for a fresh run).

        The Trainer skips `(global_step % update_steps_per_epoch) * gradient_accumulation_steps` batches of the
        resumed epoch with accelerate's `skip_first_batches`: for a map-style dataset it skips sampler indices (the
        collator never sees them); for an `IterableDataset` it collates the batches and drops them, each of them
        `per_micro_step` collations (see `_collations_per_micro_step`).
        """
        import torch

        if state.global_step == 0 or args.ignore_data_skip or train_dataloader is None:
            return 0
        if not isinstance(getattr(train_dataloader, "dataset", None), torch.utils.data.IterableDataset):
            return 0
        ga = args.gradient_accumulation_steps
        if has_length(train_dataloader):  # as Trainer.set_initial_training_values
            batches = len(train_dataloader)
            per_epoch = max(batches // ga + int(batches % ga > 0), 1)
        else:
            per_epoch = state.max_steps
        return (state.global_step % per_epoch) * ga * per_micro_step

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps is None or state.max_steps <= 0:
            raise ValueError(
                "MetadataCooldownCallback needs a known number of steps; set max_steps or num_train_epochs."
            )
        if self.cooldown_fraction > 0 and args.dataloader_num_workers:
            raise ValueError(
                f"MetadataCooldownCallback needs dataloader_num_workers=0 (got {args.dataloader_num_workers}): the "
                "cooldown is switched in the main process's collator, and worker processes collate with their own "
                "copies, so the switch would never reach them. Set dataloader_num_workers=0 (tokenization then runs "
                "in the main process) or cooldown_fraction=0."
            )
        if kwargs.get("model") is not None:  # before the first forward, which would fail with a raw IndexError
            self.collator.check_model(kwargs["model"])
        self.switch_step = state.max_steps - int(round(self.cooldown_fraction * state.max_steps))
        if self.cooldown_fraction > 0 and self.switch_step >= state.max_steps:
            # round() gives 0 cooldown steps below half a step (0.1 of max_steps <= 5): say so, not a silent no-op
            logger.warning(
                "MetadataCooldownCallback: cooldown_fraction=%g of max_steps=%d rounds to 0 cooldown steps "
                "(max_steps - round(cooldown_fraction * max_steps) = %d), so every step trains with metadata. For a "
                "cooldown pass a cooldown_fraction above %g (0.5 / max_steps) or more max_steps; cooldown_fraction=0 "
                "disables it without this warning.",
                self.cooldown_fraction, state.max_steps, self.switch_step, 0.5 / state.max_steps,
            )  # fmt: skip
        saved = self._saved_state(args, state)
        if saved is not None:  # a resume: refuse other options than the checkpoint's before the collator is touched
            self._check_resumed_options(saved, state)
        self._grad_accum = args.gradient_accumulation_steps
        train_dataloader = kwargs.get("train_dataloader")
        self._check_training_collator(train_dataloader)
        self._per_micro_step = _collations_per_micro_step(train_dataloader)
        # cooldown_fraction=0 never switches: leave the collator without a switch point (it may then run in workers).
        self.collator.cooldown_start_batch = (
            self._batches_for(self.switch_step) if self.cooldown_fraction > 0 else None
        )
        self._skipped_by_collation = self._batches_collated_while_skipping(
            args, state, train_dataloader, self._per_micro_step
        )
        self._sync(args, state)
        self._count_at_step_end = self.collator.batches_seen  # an evaluation on start puts the counter back here
        # Where the loader's collator could not be identified, the first step's end checks that this collator built
        # the step's batches; not with DataLoader workers (their copies collate) nor on a rank whose batches the main
        # process collates (accelerate's dispatcher), nor with an unknown loader on several ranks.
        self._check_first_step = (
            self._loader_collator_unknown
            and not args.dataloader_num_workers
            and (
                getattr(args, "world_size", 1) == 1
                or (train_dataloader is not None and (self._per_micro_step == 1 or getattr(args, "process_index", 0) == 0))
            )
        )
        # the batches a resumed run fast-forwards through the collator (below this index) were counted before
        self._count_from = self._batches_for(state.global_step)
        self.invalid_total = self._restored_invalid(saved, state)
        self._resume_checkpoint = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._sync(args, state)
        self._skipped_by_collation = 0  # only the resumed epoch is fast-forwarded

    def on_step_end(self, args, state, control, **kwargs):
        if self._check_first_step:
            self._check_first_step = False
            if self.collator.batches_seen == self._synced_count:
                raise ValueError(
                    "MetadataCooldownCallback(collator=...) is not the collator that builds the training batches: "
                    f"it built no batch in optimizer step {state.global_step}, so the cooldown (and the "
                    "metadata_invalid count) would never reach the batches the model trains on while "
                    "metadata_conditioning logged the switch. Pass the Trainer's data_collator itself: "
                    "MetadataCooldownCallback(collator=trainer_collator), not another MetadataCollator built with the "
                    "same arguments."
                )
        self._count_at_step_end = self.collator.batches_seen
        before = self.invalid_total
        self._fold_invalid(state)
        self.invalid_total = before + _sum_over_ranks(self.invalid_total - before, args)

    def on_evaluate(self, args, state, control, **kwargs):
        # Under MetadataTrainer the evaluation batches were built in the collator's evaluation mode and touched
        # nothing. A plain Trainer evaluates with the training collator as is: its batches advanced the training batch
        # counter and were entered as training batches (at or above the step end's count); undo both.
        if self._count_at_step_end is not None:
            self._warn_if_counter_conditioned(state)
            self.collator.batches_seen = self._count_at_step_end
        pending = self.collator.invalid_by_batch
        if pending:
            start = self._count_at_step_end or 0
            for index in [i for i in pending if i >= start]:
                del pending[index]

    on_predict = on_evaluate

    def _warn_if_counter_conditioned(self, state) -> None:
        """Warn when batches built by the training counter since the step's end (a plain Trainer's evaluation) got
        another conditioning than the step the model is at."""
        start, end = self._count_at_step_end, self.collator.batches_seen
        switch = self.collator.cooldown_start_batch
        if end <= start or switch is None or not self.collator.conditioning:
            return
        expected = self.conditioning_at(state.global_step)
        wrong = end - max(start, switch) if expected else min(end, switch) - start
        if wrong <= 0:
            return
        logger.warning(
            "%d of %d evaluation batches were built %s metadata at step %d, where the model trains %s it: the "
            "evaluation was collated by the training MetadataCollator outside its evaluation mode (a plain Trainer), "
            "so its batches took their conditioning from the training batch counter, which runs ahead of the step "
            "(the training switch itself is unaffected). Use MetadataTrainer (it evaluates in "
            "collator.evaluating(...)), a separate collator for evaluation, or wrap the call in "
            "`with collator.evaluating(callback.conditioning_at(trainer.state.global_step)):`.",
            wrong, end - start, "without" if expected else "with", state.global_step,
            "with" if expected else "without",
        )  # fmt: skip

    def conditioning_at(self, step: int) -> bool:
        """Whether optimizer step `step` (1-based) trains with metadata: never with `conditioning=False` on the
        collator (a no-metadata control run that keeps the callback logs `metadata_conditioning: 0` throughout),
        otherwise up to and including `switch_step`."""
        if not self.collator.conditioning:
            return False
        return self.switch_step is None or step <= self.switch_step

    def log_values(self, step: int) -> dict[str, int]:
        """The values this callback logs at optimizer step `step`."""
        return {
            "metadata_conditioning": int(self.conditioning_at(step)),
            "metadata_invalid": self.invalid_total,
        }

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Trainer.log stores the row in log_history before callbacks run: add the values there too, so they reach
        # trainer_state.json (MetadataTrainer adds them before Trainer.log, so the reporting integrations see them).
        values = self.log_values(state.global_step)
        if logs is not None:
            logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def save_state(self, checkpoint_dir: str, state) -> None:
        """Write `metadata_conditioning.json` into `checkpoint_dir` (the checkpoint of `state.global_step`).

        `MetadataTrainer` calls this while it saves a checkpoint, before `trainer_state.json`; `on_save` writes the
        file only where that did not happen (a plain `Trainer`).
        """
        from ..utils.io import atomic_write_json

        atomic_write_json(
            os.path.join(checkpoint_dir, STATE_FILE),
            {
                "cooldown_fraction": self.cooldown_fraction,
                "switch_step": self.switch_step,
                "global_step": state.global_step,
                "conditioning_next_step": self.conditioning_at(state.global_step + 1),
                "metadata_dropout": self.collator.metadata_dropout,
                "seed": self.collator.seed,
                "metadata_invalid": self.invalid_total,
                "collator": collator_record(self.collator),
            },
        )
        self._saved = (os.path.abspath(checkpoint_dir), state.global_step)

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if self._saved == (os.path.abspath(folder), state.global_step):
            return  # written by MetadataTrainer with the checkpoint, before trainer_state.json
        if state.is_world_process_zero and os.path.isdir(folder):
            self.save_state(folder, state)


def _collations_per_micro_step(train_dataloader) -> int:
    """How many batches the main process's collator builds per micro-step (one micro-batch on every rank).

    1 for a loader where each rank collates its own micro-batch (accelerate's `DataLoaderShard`: map-style datasets by
    default, and any dataset with `accelerator_config={"dispatch_batches": False}`) and in one process. Where
    accelerate dispatches batches (`DataLoaderDispatcher`: the default for an `IterableDataset`, or
    `dispatch_batches=True`), only the main process iterates the loader: it collates `num_processes` micro-batches per
    micro-step and sends each rank its slice (the other ranks' collators build none), or, with `split_batches=True`,
    one batch that it splits. The callback counts in these units on every rank, so the switch lands on the same
    micro-step in every configuration.
    """
    try:
        from accelerate.data_loader import DataLoaderDispatcher
    except ImportError:  # pragma: no cover - accelerate is a dependency of Trainer
        return 1
    if not isinstance(train_dataloader, DataLoaderDispatcher) or train_dataloader.split_batches:
        return 1
    return max(int(train_dataloader.state.num_processes), 1)


#: the `MetadataCollator` settings a checkpoint's `metadata_conditioning.json` records and a resume must keep: they
#: decide what the remaining steps train on (metadata or none, its template and layout, the rows' shape)
COLLATOR_RECORD_FIELDS = (
    "conditioning", "layout", "text_column", "block_size", "max_length", "max_document_tokens", "repeat_context",
    "add_eos", "max_metadata_tokens", "document_attention",
)  # fmt: skip


def collator_record(collator: MetadataCollator) -> dict:
    """The JSON record of `collator`'s data-defining settings ([`COLLATOR_RECORD_FIELDS`] and its template)."""
    import dataclasses

    record = {name: getattr(collator, name) for name in COLLATOR_RECORD_FIELDS}
    template = dataclasses.asdict(collator.template)
    template["columns"] = list(template["columns"])
    record["template"] = template
    return json.loads(json.dumps(record))  # as read back from the file (tuples as lists)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _sum_over_ranks(count: int, args) -> int:
    """`count` summed over the data-parallel ranks (itself in a single process): every rank collates its own
    micro-batches, or, where accelerate dispatches batches, the main process collates them all and the others count 0.
    Called by every rank at every optimizer step's end."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return count
    device = args.device if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total.item())


class _CollateWithoutCacheFlag:
    """A `MetadataCollator` whose batches leave out their `use_cache=False` (what `MetadataTrainer`'s loaders collate
    with; the trainer passes `use_cache=False` to the model itself, in `_prepare_inputs`).

    A packed batch with `document_attention` carries `use_cache=False`, a Python bool: accelerate's batch dispatching
    (the default for an `IterableDataset` on several processes) concatenates the main process's batches and can only
    concatenate tensors, so training failed at the first step with `TypeError: Can only concatenate tensors but got
    <class 'bool'>`. `data_collator` is the wrapped collator (how `MetadataCooldownCallback` and transformers'
    `RemoveColumnsCollator` name theirs)."""

    def __init__(self, data_collator: MetadataCollator):
        self.data_collator = data_collator

    def __call__(self, examples):
        batch = self.data_collator(examples)
        if batch.get("use_cache", True) is False:
            del batch["use_cache"]
        return batch


class MetadataTrainer(ModelDecayNamesMixin, EvalRowsOnceMixin, LossWindowResumeMixin, WholeModelSaveMixin, Trainer):
    """`Trainer` that writes each `MetadataCooldownCallback`'s `metadata_conditioning.json` as part of a checkpoint.

    Trainer writes a checkpoint's model first and its `trainer_state.json` last (the file that marks the checkpoint
    complete, see `hf_ext.utils.resume`); callbacks only hear of a save in `on_save`, after that file. This subclass
    writes the callback's state while the model is saved, so a save killed half-way leaves a folder that resume skips,
    never one that looks complete without its metadata state. It also adds the callback's logged values
    (`metadata_conditioning`, `metadata_invalid`) before `Trainer.log`, so every reporting integration gets them.
    `evaluate` and `predict` collate in each callback's collator's `evaluating` mode: evaluation batches built by the
    training collator get the conditioning of the step the model is at and leave the cooldown's batch counter alone.
    With a `MetadataCollator` as `data_collator`, `train` first checks that the model can embed its tokens
    (`MetadataCollator.check_model`). Its data loaders collate a `MetadataCollator`'s packed (`document_attention`)
    batches without their `use_cache=False` (a Python bool, which accelerate's batch dispatching cannot concatenate: an
    `IterableDataset` on several processes failed at the first step) and pass `use_cache=False` to the model with the
    batch instead. Otherwise identical to `Trainer`.
    """

    def _metadata_callbacks(self) -> list[MetadataCooldownCallback]:
        return [cb for cb in self.callback_handler.callbacks if isinstance(cb, MetadataCooldownCallback)]

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # a model left at its old size after add_context_tokens(tokenizer) would fail in the first forward with a raw
        # IndexError: refuse it before any work (model_init builds the model inside train(); the callback checks it)
        # (a cooldown callback on this collator checks it at on_train_begin, before the first step: not twice, the
        # document-attention probe is two forward passes)
        checked_by_callback = any(cb.collator is self.data_collator for cb in self._metadata_callbacks())
        if isinstance(self.data_collator, MetadataCollator) and self.model is not None and not checked_by_callback:
            self.data_collator.check_model(self.model)
        for callback in self._metadata_callbacks():
            callback._resume_checkpoint = None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _document_attention(self) -> bool:
        return isinstance(self.data_collator, MetadataCollator) and bool(self.data_collator.document_attention)

    @contextlib.contextmanager
    def _loader_collator(self):
        """While a loader is built: a `MetadataCollator` with `document_attention` as `_CollateWithoutCacheFlag`."""
        collator = self.data_collator
        if not self._document_attention():
            yield
            return
        self.data_collator = _CollateWithoutCacheFlag(collator)
        try:
            yield
        finally:
            self.data_collator = collator

    def get_train_dataloader(self):
        with self._loader_collator():
            return super().get_train_dataloader()

    def get_eval_dataloader(self, *args, **kwargs):
        with self._loader_collator():
            return super().get_eval_dataloader(*args, **kwargs)

    def get_test_dataloader(self, *args, **kwargs):
        with self._loader_collator():
            return super().get_test_dataloader(*args, **kwargs)

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        if self._document_attention() and isinstance(inputs, MutableMapping) and "input_ids" in inputs:
            # the loaders left it out of the batch (see _CollateWithoutCacheFlag); without it a model whose config has
            # use_cache=True (TrainingArguments(use_cache=True)) would build a cache, and transformers derives the
            # per-document masks from the restarting position_ids only without one
            inputs.setdefault("use_cache", False)
        return inputs

    @contextlib.contextmanager
    def _collating_for_evaluation(self):
        """Each cooldown callback's collator in evaluation mode, with the conditioning of the step the model is at."""
        with contextlib.ExitStack() as stack:
            for callback in self._metadata_callbacks():
                stack.enter_context(callback.collator.evaluating(callback.conditioning_at(self.state.global_step)))
            yield

    def evaluate(self, *args, **kwargs):
        # Evaluation batches built by the training collator get the conditioning of the current step and leave the
        # training batch counter (which already counts the batch prepared for the next step) alone.
        with self._collating_for_evaluation():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        with self._collating_for_evaluation():
            return super().predict(*args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from ..utils.resume import refuse_weights_only_checkpoint

        refuse_weights_only_checkpoint(resume_from_checkpoint, "resume_from_checkpoint")  # before anything is restored
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        # called with the checkpoint train() resumes from (after resolving `True`), before on_train_begin
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            for callback in self._metadata_callbacks():
                callback._resume_checkpoint = checkpoint

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # before Trainer.log, so log_history and the reporting integrations (TensorBoard, W&B, ...) get the values too
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, MetadataCooldownCallback):
                logs.update(callback.log_values(self.state.global_step))
        super().log(logs, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        from ..utils.resume import checkpoint_being_saved

        folder = checkpoint_being_saved(self, output_dir, _internal_call)  # not the final save_model, nor push_to_hub's
        if folder is None:
            return
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, MetadataCooldownCallback):
                callback.save_state(folder, self.state)
