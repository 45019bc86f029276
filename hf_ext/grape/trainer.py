"""`GrapeTrainer`: a `Trainer` that samples its training data from a source-domain mixture and reweights it.

Every `reweight_tasks_every` optimizer steps the task weights take a group-DRO step on the tasks' estimated rate of
improvement; every `reweight_domains_every` steps the domain weights move towards the domains whose gradient is
aligned with the task-weighted target gradient (GRAPE). DoGE, DoReMi, uniform and fixed mixtures use the same
machinery. Gradients for the updates are taken on small minibatches of the unwrapped model with
`torch.autograd.grad` (the Trainer's `.grad` buffers are untouched), clipped to `max_grad_norm` as in the GRAPE code,
and under DDP the mixture/target gradients and all dot products are averaged across ranks before the update, so every
rank computes the same weights (rank 0's result is also broadcast).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import time

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME

from ..fp8.emulation import fp8_auxiliary_pass
from ..utils.checks import reentrant_checkpointing
from ..utils.decay import ModelDecayNamesMixin
from ..utils.fsdp_save import WholeModelSaveMixin
from ..utils.io import atomic_open
from ..utils.resume import LossWindowResumeMixin
from .configuration_grape import GrapeConfig
from .data import (
    MODEL_COLUMNS,
    check_labelled_domains,
    check_no_empty_rows,
    check_row_lengths,
    check_token_ids,
    check_token_types,
    domain_rows,
    ensure_lm_columns,
    ensure_lm_stream,
    has_labelled_token,
    pack_by_domain,
    pad_target_features,
    prepare_target,
    reweighting_rows,
)
from .rules import (
    GRAPE_VARIANTS,
    doremi_domain_weights,
    ema_update,
    grape_domain_weights,
    grape_task_weights,
    resolve_step_size,
    task_objective,
)
from .sampler import MixtureSampler, StreamingMixture
from .state import (
    MixtureState,
    check_weight_vector,
    export_mixture,
    is_weight_number,
    load_mixture,
    saved_options,
    saved_reweight_method,
)

logger = logging.getLogger(__name__)

_PURPOSE = {"mixture": 1, "task": 2, "target": 3, "domain": 4}
#: Per process, the positions of the streaming path's reweighting streams in a checkpoint (`_load_stream_reads`).
_STREAM_READS = "grape_streams_{}.json"


def _reentrant_checkpointing_message(method: str, reentrant: str) -> str:
    """The refusal of a gradient-based `method` under reentrant activation checkpointing (trainer and recipe)."""
    return (
        f"reweight_method={method!r} takes per-domain and per-task gradients with torch.autograd.grad, which "
        f"reentrant activation checkpointing does not support ({reentrant}); set "
        "gradient_checkpointing_kwargs={'use_reentrant': False} (transformers 5's default, also when the key is "
        "left out) or turn gradient checkpointing off."
    )


class _GrapeCallback(TrainerCallback):
    """Runs the reweighting after each optimizer step and exports the mixture at the end (checkpoints: `save_model`)."""

    def __init__(self, trainer: GrapeTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._mixture_run_started = True
        self.trainer._record_trajectory(initial=True)
        self.trainer._warn_if_never_reweighted(state.global_step, state.max_steps)

    def on_epoch_begin(self, args, state, control, **kwargs):
        # The Trainer's own `set_epoch` on the loader does not reach the sampler under every wrapping: a resume inside
        # an epoch on 2+ ranks iterates SkipBatchSampler(BatchSamplerShard(BatchSampler(sampler))), where the sampler
        # kept epoch 0 and replayed epoch 0's draws. The epoch begins before its loader is iterated; `state.epoch` is
        # the epoch index here (a whole number at an epoch's start, the checkpoint's fraction inside it on resume).
        sampler = self.trainer._mixture_sampler
        if sampler is not None:
            sampler.set_epoch(math.floor(state.epoch or 0))

    def on_step_end(self, args, state, control, **kwargs):
        # The reweighting logs its metrics with `Trainer.log`, whose `on_log` clears `control.should_log`: keep the
        # step's scheduled log (training loss, grad norm, learning rate), which runs after this event.
        should_log = control.should_log
        self.trainer._maybe_reweight()
        control.should_log = control.should_log or should_log

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.trainer.save_mixture(args.output_dir, plot=self.trainer.plot_at_train_end)


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32, or in its own dtype where that is wider (a float64 model's reweighting stays in float64): the
    gradient dot products and excess losses of a bf16/fp16 model are upcast, never those of a float64 one cut down."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _causal_lm_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean next-token cross-entropy of `logits` for `labels` as transformers' causal LM loss (`ForCausalLMLoss`)
    computes it (the label at t + 1 scored at t, -100 ignored, the mean over the scored tokens), in the logits' own
    dtype: transformers casts them to float32 first, which cuts a float64 model's loss and gradient down."""
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].to(logits.device)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100
    )


def _data_seed(args) -> int:
    """Seed of every data draw of the run (training sampler or stream, reweighting minibatches): `args.data_seed` when
    set, else `args.seed`, as `transformers.Trainer` seeds its samplers (`data_seed` used to be ignored: runs with
    different data seeds drew the same sequences)."""
    return args.seed if args.data_seed is None else args.data_seed


def _vocab_size(model) -> int | None:
    """Rows of `model`'s output embedding (its logits' width), or `None` when it has none."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return None if weight is None else int(weight.shape[0])


def _token_id_limit(model) -> int | None:
    """How many token ids `model` can take: the rows of its input embedding (and of its output embedding, which the
    labels index), or `None` when it exposes neither."""
    sizes = []
    try:
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except NotImplementedError:
        embedding = None
    weight = getattr(embedding, "weight", None)
    if weight is not None:
        sizes.append(int(weight.shape[0]))
    head = _vocab_size(model)
    if head is not None:
        sizes.append(head)
    sizes = [n for n in sizes if n > 0]  # a parameter partitioned away (DeepSpeed ZeRO-3) has no rows here
    return min(sizes) if sizes else None


def _check_names_sort(named: dict, arg: str) -> None:
    """Domains and tasks are kept in sorted name order: names of kinds that do not compare (`{1: ..., "a": ...}`)
    failed with a raw `TypeError` from `sorted`; refused naming `arg`."""
    try:
        sorted(named)
    except TypeError:
        kinds = sorted({type(name).__name__ for name in named})
        raise TypeError(
            f"{arg} names must be of one kind that sorts (e.g. all str), got {list(named)!r} ({', '.join(kinds)}); "
            "name every entry with a str."
        ) from None


#: `GrapeConfig` settings that shape the mixture trajectory (with the data seed): a resume must keep them.
#: `max_grad_norm` clips every reweighting gradient, so it scales each dot product as a step size does; only the
#: methods that compute reweighting gradients read it there (`_PER_METHOD_OPTIONS`): uniform, fixed and doremi (losses
#: only) resume with another clip, as with another learning rate.
_TRAJECTORY_OPTIONS = (
    "reweight_domains_every", "reweight_tasks_every", "reweight_batch_size", "reweight_mini_batch_size",
    "domain_step_size", "task_step_size", "step_size_convention", "task_smoothing", "domain_smoothing", "ema_beta",
    "doremi_eta", "doremi_smoothing", "samples_per_epoch", "block_size", "max_grad_norm",
    "per_device_train_batch_size", "gradient_accumulation_steps", "world_size",
)  # fmt: skip
#: The batch split (`per_device_train_batch_size`, `gradient_accumulation_steps`, the number of processes
#: `world_size`): the Trainer skips `global_step * gradient_accumulation_steps` batches of the *new* split on resume,
#: while the checkpoint's sampler schedule holds its updates at positions of the old one, so another split re-trained
#: positions the run had trained, drawn with the weights in force there (a 2-rank checkpoint resumed on 1 rank trained
#: its 4 resumed steps on the weights of before the checkpoint's last update, then dropped that update from the
#: schedule); the grape variants and doge also take their reweighting batches at the per-device size and average them
#: over ranks. Compared only where the mixture changes during the run: uniform and fixed resume with another split,
#: as a plain Trainer does.
_RESCHEDULING_METHODS = (*GRAPE_VARIANTS, "doge", "doremi")
_PER_METHOD_OPTIONS = {
    "max_grad_norm": (*GRAPE_VARIANTS, "doge"),
    "per_device_train_batch_size": _RESCHEDULING_METHODS,
    "gradient_accumulation_steps": _RESCHEDULING_METHODS,
    "world_size": _RESCHEDULING_METHODS,
}

#: Recorded beside the options to name a change, not compared: which argument gave the data seed ("seed" when
#: `data_seed` is unset, else "data_seed"; absent in checkpoints written before it was recorded).
_DATA_SEED_FROM = "data_seed_from"


def _data_seed_change(saved: dict, current: dict) -> tuple[str, str]:
    """The data seed's change between a checkpoint's `saved` options and the `current` ones, named by the arguments
    the user set (`seed` when `data_seed` is unset: it seeds the data draws then), and the fix that keeps the
    checkpoint's data order: `(change, fix)`."""
    old, new = saved["data_seed"], current["data_seed"]
    was, now = saved.get(_DATA_SEED_FROM), current[_DATA_SEED_FROM]
    draws = "the data order and the reweighting draws"
    if was == now == "seed":
        change = f"seed={old!r} -> {new!r} (data_seed is unset in both runs, so seed seeds {draws})"
    elif was == now == "data_seed":
        change = f"data_seed={old!r} -> {new!r}"
    elif was == "seed":
        change = f"data_seed=None -> {new!r} (the checkpoint's run left it unset, so seed={old!r} seeded {draws})"
    elif was == "data_seed":
        change = f"data_seed={old!r} -> None (unset, so seed={new!r} seeds {draws})"
    else:  # a checkpoint that recorded the data seed only
        change = f"data seed (data_seed when set, else seed)={old!r} -> {new!r} (this run's {now}={new!r})"
    fix = f"data_seed={old!r}, which keeps the checkpoint's data order whatever seed is"
    if now == "seed":
        fix += f", or seed={old!r}"
    return change, fix


def trajectory_options(args, train_batch_size: int | None = None) -> dict:
    """The settings of `args` that shape the mixture trajectory, as a checkpoint's mixture state records them
    (`train_batch_size`: the batch over the local devices the run trains with, default `args.train_batch_size`)."""
    options = {name: getattr(args, name) for name in _TRAJECTORY_OPTIONS}
    batch = args.train_batch_size if train_batch_size is None else train_batch_size
    options["per_device_train_batch_size"] = batch // max(1, args.n_gpu)
    options["data_seed"] = _data_seed(args)
    options[_DATA_SEED_FROM] = "seed" if args.data_seed is None else "data_seed"
    return options


def check_resume_options(checkpoint: str, args, current: dict | None = None, arg: str = "resume_from_checkpoint") -> None:
    """Refuse to resume `checkpoint` with mixture settings other than those its mixture state records (the resumed run
    would not continue its mixture trajectory). `current`: this run's `trajectory_options` (default: from `args`, as
    before training starts); `arg` names the argument in the message. A checkpoint that records no options passes.
    `GrapeTrainer` checks this when it restores a checkpoint; a script can call it before any data work."""
    saved_opts = saved_options(checkpoint)
    if saved_opts is None:
        return
    current = dict(trajectory_options(args) if current is None else current)
    if args.auto_find_batch_size:  # the Trainer goes on at the checkpoint's batch size (its last retry's)
        state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        if state.train_batch_size is not None:
            current["per_device_train_batch_size"] = state.train_batch_size // max(1, args.n_gpu)
    changed, fix = [], ""
    for k in current:
        if k == _DATA_SEED_FROM or k not in saved_opts or saved_opts[k] == current[k]:
            continue
        if k in _PER_METHOD_OPTIONS and args.reweight_method not in _PER_METHOD_OPTIONS[k]:
            continue  # the option does not shape this method's mixture (e.g. the clip: no reweighting gradient)
        if k == "data_seed":  # named by what the user set: seed, when data_seed is unset
            change, seed_fix = _data_seed_change(saved_opts, current)
            changed.append(change)
            fix = f" (for the data seed: {seed_fix})"
        elif k == "world_size":
            changed.append(f"world_size (the number of processes)={saved_opts[k]!r} -> {current[k]!r}")
        else:
            changed.append(f"{k}={saved_opts[k]!r} -> {current[k]!r}")
    if changed:
        raise ValueError(
            f"{arg}={checkpoint!r} was written by a run with other mixture settings: {', '.join(changed)}. The resumed "
            "run would not continue that run's mixture trajectory (its sampler schedule, reweighting draws and "
            f"updates); resume with the checkpoint's values{fix}, or start a new run without {arg.lstrip('-')}."
        )


_POSITION_TABLE_NAMES = ("wpe", "position_embeddings", "embed_positions")


def _position_limit(model) -> int | None:
    """How many positions `model`'s learned position table holds (GPT-2's `wpe`, `position_embeddings`, OPT's
    `embed_positions` less its offset), or `None` for a model without one (RoPE, ALiBi: longer rows run)."""
    from torch import nn

    input_embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    limits = []
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.Embedding)
            and module is not input_embedding
            and name.rsplit(".", 1)[-1] in _POSITION_TABLE_NAMES
            and module.num_embeddings > 0  # partitioned away (DeepSpeed ZeRO-3) has no rows here
        ):
            limits.append(module.num_embeddings - int(getattr(module, "offset", 0)))
    return min(limits) if limits else None


class GrapeTrainer(ModelDecayNamesMixin, LossWindowResumeMixin, WholeModelSaveMixin, Trainer):
    """Trainer for multi-source, multi-target data-mixture optimisation (GRAPE) and its baselines.

    Args:
        model (`PreTrainedModel`): Causal LM to train (its forward must return `.loss` given `labels`).
        args (`GrapeConfig`): Training and reweighting arguments.
        train_dataset (`datasets.Dataset` or `dict[str, datasets.IterableDataset]`): Source data. A map-style
            dataset needs `args.domain_column`; if it has no `input_ids`, its `args.text_column` is packed per domain
            with `processing_class`. A dict of per-domain tokenized streams (with `input_ids`; raw text is refused)
            selects the streaming path (`StreamingMixture`, needs `max_steps`; `samples_per_epoch` is refused).
        target_datasets (`dict[str, datasets.Dataset]`): Target tasks, raw text (`args.text_column`) or tokenized.
            Not used by `doremi`, `uniform` and `fixed`, which may pass `None`.
        reference_model (`PreTrainedModel`, *optional*): DoReMi's reference model (else loaded from
            `args.reference_model_name_or_path`).
        domain_weights (`dict[str, float]`, *optional*): Initial (or, for `fixed`, constant) domain weights; default
            from `args.mixture_file`, else uniform. Refused together with `args.mixture_file`.
        task_weights (`dict[str, float]`, *optional*): Initial task weights (for `doge`, the fixed ones); default
            uniform. A mixture file's `tasks` are not read: `args.mixture_file` gives domain weights only. Refused
            with `doremi`, `uniform` and `fixed`, which never read task weights.
        **kwargs: Passed to `transformers.Trainer` (`data_collator`, `processing_class`, `callbacks`, ...).
    """

    def __init__(
        self,
        model=None,
        args: GrapeConfig | None = None,
        train_dataset=None,
        target_datasets: dict | None = None,
        reference_model=None,
        domain_weights: dict[str, float] | None = None,
        task_weights: dict[str, float] | None = None,
        **kwargs,
    ):
        from datasets import Dataset, IterableDataset

        if not isinstance(args, GrapeConfig):
            raise TypeError(f"args must be a GrapeConfig, got {type(args).__name__}; build one with GrapeConfig(...).")
        method = args.reweight_method
        needs_targets = method in GRAPE_VARIANTS or method == "doge"
        tokenizer = kwargs.get("processing_class")
        for name in ("export_mixture_file", "plot_file"):
            value = getattr(args, name)
            if value and args.output_dir and os.path.isdir(os.path.join(args.output_dir, value)):
                # replacing a folder fails at the end of training (the mixture export: before the model is saved)
                raise ValueError(
                    f"{name}={value!r} is a folder in output_dir {args.output_dir!r}; the file is written there at the "
                    f"end of training and cannot replace a folder. Give another file name (or remove the folder)."
                )

        # ---- validate everything before any work -------------------------------------------------------------------
        streaming = isinstance(train_dataset, dict)
        if streaming:
            if not train_dataset or not all(isinstance(v, IterableDataset) for v in train_dataset.values()):
                raise TypeError(
                    "a dict train_dataset must map domain names to tokenized datasets.IterableDataset streams."
                )
            _check_names_sort(train_dataset, "train_dataset")
            if args.max_steps is None or args.max_steps <= 0:
                raise ValueError("the streaming path (dict of IterableDatasets) needs --max_steps > 0.")
            if args.dataloader_num_workers:
                raise ValueError("the streaming path needs --dataloader_num_workers 0 so weight updates reach it.")
            if args.samples_per_epoch is not None:
                raise ValueError(
                    f"samples_per_epoch={args.samples_per_epoch} sets the epoch of the map-style sampler, but this run "
                    "streams (a dict of IterableDatasets: an endless mixture, with max_steps as its length) and never "
                    "reads it; drop samples_per_epoch (set max_steps), or pass a map-style datasets.Dataset."
                )
        elif not isinstance(train_dataset, Dataset):
            raise TypeError(
                "train_dataset must be a datasets.Dataset with a domain column, or a dict of per-domain "
                f"datasets.IterableDataset streams; got {type(train_dataset).__name__}."
            )
        else:
            if len(train_dataset) == 0:
                raise ValueError(
                    "train_dataset has no rows (an empty datasets.Dataset); pass source data with at least one row per "
                    "domain (check the filters or the file that built it)."
                )
            if args.domain_column not in train_dataset.column_names:
                domain_rows(train_dataset, args.domain_column)  # raises the explanatory ValueError
            if "input_ids" in train_dataset.column_names:
                check_token_types(train_dataset, "train_dataset")
            if "input_ids" not in train_dataset.column_names:
                if args.text_column not in train_dataset.column_names:
                    raise ValueError(
                        f"train_dataset has neither input_ids nor the text column {args.text_column!r} "
                        f"(columns: {train_dataset.column_names}); pass --text_column or a tokenized dataset."
                    )
                if tokenizer is None:
                    raise ValueError("train_dataset is raw text; pass processing_class=<tokenizer> to pack it.")
        if needs_targets:
            if not isinstance(target_datasets, dict) or not target_datasets:
                raise ValueError(
                    f"reweight_method={method!r} needs target_datasets: a non-empty dict task name -> datasets.Dataset."
                )
        if target_datasets is not None:
            if not isinstance(target_datasets, dict):
                raise TypeError("target_datasets must be a dict mapping task name -> datasets.Dataset.")
            _check_names_sort(target_datasets, "target_datasets")
            for name, ds in target_datasets.items():
                if not isinstance(ds, Dataset):
                    raise TypeError(f"target_datasets[{name!r}] must be a datasets.Dataset, got {type(ds).__name__}.")
                if "input_ids" not in ds.column_names and args.text_column not in ds.column_names:
                    raise ValueError(
                        f"target_datasets[{name!r}] has no text column {args.text_column!r} and no input_ids "
                        f"(columns: {ds.column_names}); give each target task a text column (or pass --text_column)."
                    )
                if "input_ids" not in ds.column_names and tokenizer is None:
                    raise ValueError(f"target_datasets[{name!r}] is raw text; pass processing_class=<tokenizer>.")
                if "input_ids" in ds.column_names:
                    check_token_types(ds, f"target_datasets[{name!r}]")
        if method == "doremi" and reference_model is None and not args.reference_model_name_or_path:
            raise ValueError(
                "reweight_method='doremi' needs a reference model: pass reference_model=... or "
                "--reference_model_name_or_path (train one first with reweight_method=uniform)."
            )
        if reference_model is not None and not isinstance(reference_model, torch.nn.Module):
            raise TypeError(
                f"reference_model must be a model (a torch.nn.Module such as a PreTrainedModel), got "
                f"{type(reference_model).__name__} {reference_model!r:.80}; to load it from a folder or hub id, pass "
                "that as reference_model_name_or_path=... in GrapeConfig instead."
            )
        if reference_model is not None and method != "doremi":
            raise ValueError(
                f"reference_model=... is read only by reweight_method='doremi' (the reference of its excess loss); "
                f"reweight_method={method!r} never reads it. Drop reference_model, or use reweight_method='doremi'."
            )
        if method == "fixed" and domain_weights is None and not args.mixture_file:
            raise ValueError("reweight_method='fixed' needs --mixture_file (a mixture JSON) or domain_weights=...")
        if domain_weights is not None and args.mixture_file:
            raise ValueError(
                f"domain_weights=... and mixture_file={args.mixture_file!r} both give the domain weights; the file was "
                "dropped without a word while the run's arguments still named it. Pass one of them: drop "
                "domain_weights or set mixture_file=None."
            )
        if method == "uniform" and (domain_weights is not None or args.mixture_file):
            flag = "domain_weights" if domain_weights is not None else "--mixture_file"
            given = "domain_weights=..." if domain_weights is not None else f"--mixture_file {args.mixture_file!r}"
            raise ValueError(
                f"reweight_method='uniform' trains on uniform domain weights, but {given} gives initial weights: the "
                "run would train on those and export them as 'uniform'. Use reweight_method='fixed' to train on given "
                f"weights, or drop {flag}."
            )
        if task_weights is not None and not needs_targets:
            raise ValueError(
                f"task_weights=... are read only by reweight_method grape, grape_ema, grape_gap (initial task weights) "
                f"and doge (fixed task weights); reweight_method={method!r} never reads them, and the run would export "
                "them as its task weights. Drop task_weights, or choose one of those methods."
            )
        gc_kwargs = args.activation_checkpointing_kwargs if args.activation_checkpointing else None
        reentrant = reentrant_checkpointing(gc_kwargs, model)
        if needs_targets and reentrant:
            raise ValueError(_reentrant_checkpointing_message(method, reentrant))
        # Weights are checked against the domain / task names before any packing (the names do not depend on it).
        if streaming:
            early_domains = sorted(train_dataset)
        else:
            early_domains = domain_rows(train_dataset, args.domain_column)[0]  # refuses a null domain
        if domain_weights is not None:
            init_domains = self._weights_from(domain_weights, early_domains, "domain_weights")
        elif args.mixture_file:
            init_domains = self._weights_from(
                load_mixture(args.mixture_file, args.mixture_key),
                early_domains,
                f"--mixture_file {args.mixture_file!r} (mixture_key={args.mixture_key!r})",
            )
        else:
            init_domains = self._weights_from(None, early_domains, "domain_weights")
        init_tasks = self._weights_from(task_weights, sorted(target_datasets or {}), "task_weights")

        # ---- data ----------------------------------------------------------------------------------------------------
        self.streaming = streaming
        if streaming:
            domain_names = sorted(train_dataset)
            self._domain_indices = self._reweight_indices = None
            self._domain_streams = {n: ensure_lm_stream(train_dataset[n], n) for n in domain_names}
            self._domain_iters: dict = {}
            #: Per domain, the shuffle seed of its current reweighting pass and the examples read from that pass:
            #: saved with each checkpoint (per process), so a resume continues every reweighting stream where it was.
            self._domain_stream_reads: dict[str, list[int]] = {}
            source = None
        else:
            source_packed = "input_ids" not in train_dataset.column_names
            if source_packed:
                with args.main_process_first(desc="pack training data by domain"):
                    train_dataset = pack_by_domain(
                        train_dataset, tokenizer, args.block_size, args.domain_column, args.text_column
                    )
            check_no_empty_rows(train_dataset, "train_dataset")
            from transformers import DataCollatorForLanguageModeling

            # that collator builds (and pads) the labels itself: an unpadded copy would break its padding
            builds_labels = isinstance(kwargs.get("data_collator"), DataCollatorForLanguageModeling)
            train_dataset = ensure_lm_columns(train_dataset, add_labels=not builds_labels)
            domain_names, self._domain_indices = domain_rows(train_dataset, args.domain_column)
            if "labels" in train_dataset.column_names:  # else the collator builds them from every input_ids row
                check_labelled_domains(train_dataset, domain_names, self._domain_indices)
            #: Per domain, the rows its reweighting minibatches are drawn from: those with a labelled next token (a
            #: minibatch of unlabelled rows only had a NaN loss and a zero gradient, scored 0 at that update).
            self._reweight_indices = reweighting_rows(train_dataset, self._domain_indices)
            source = train_dataset.remove_columns([args.domain_column])
            self._domain_source = source.select_columns([c for c in MODEL_COLUMNS if c in source.column_names])
        self.target_datasets = {}
        if target_datasets:
            with args.main_process_first(desc="prepare target datasets"):
                for name in sorted(target_datasets):
                    self.target_datasets[name] = prepare_target(
                        name, target_datasets[name], tokenizer, args.block_size, args.text_column
                    )
        task_names = sorted(self.target_datasets)

        self.mixture_state = MixtureState(
            domain_names=domain_names, task_names=task_names, domain_weights=init_domains, task_weights=init_tasks
        )
        self._initial_weights = (init_domains.clone(), init_tasks.clone())
        #: Set once a `train()` has begun: a later `train()` without resume starts a new mixture run.
        self._mixture_run_started = False
        if streaming:
            source = StreamingMixture(self._domain_streams, self.mixture_state, seed=_data_seed(args))

        super().__init__(model=model, args=args, train_dataset=source, **kwargs)
        self._warn_training_loss_not_reweighted()
        if not streaming:
            self._check_source_collation()
        # The source rows too (map-style; a stream is read only in training): one the model cannot index used to pass
        # construction and fail with a bare `IndexError` at the first training step, while a target was refused here.
        checked = {f"target_datasets[{name!r}]": ds for name, ds in self.target_datasets.items()}
        if not streaming:
            packed = f" (its text packed into block_size={args.block_size} blocks)" if source_packed else ""
            checked = {f"train_dataset{packed}": self._domain_source, **checked}
        limit = _token_id_limit(self.model)
        if limit is not None:
            for what, ds in checked.items():
                check_token_ids(ds, limit, what)
        positions = _position_limit(self.model)
        if positions is not None:
            for what, ds in checked.items():
                check_row_lengths(ds, positions, what)
        if method not in ("uniform", "fixed") and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise ValueError(
                f"reweight_method={method!r} takes per-domain gradients of the full model, which needs DDP (or one "
                "process); FSDP and DeepSpeed are supported only with reweight_method=uniform or fixed."
            )

        self.reference_model = None
        if method == "doremi":
            if reference_model is None:
                from transformers import AutoModelForCausalLM

                reference_model = AutoModelForCausalLM.from_pretrained(args.reference_model_name_or_path)
            ours, theirs = _vocab_size(self.model), _vocab_size(reference_model)
            if ours is not None and theirs is not None and ours != theirs:
                source = args.reference_model_name_or_path or "reference_model"
                raise ValueError(
                    f"The DoReMi reference model ({source}) has a vocabulary of {theirs} tokens, the model trained here "
                    f"{ours}: the excess loss compares the two models' losses on the same token ids, so both need the "
                    "same tokenizer. Train the reference with this run's tokenizer (reweight_method=uniform) and pass "
                    "it as --reference_model_name_or_path."
                    + (
                        " (One row fewer: a reference the grape recipe trained before 2026-12-07 with a tokenizer "
                        "without a pad token padded with EOS; a fresh model now gets a <|pad|> token of its own.)"
                        if theirs == ours - 1
                        else ""
                    )
                )
            ref_positions = _position_limit(reference_model)
            if ref_positions is not None and not streaming:
                # the reference reads the same source minibatches as the model: a row longer than its learned position
                # table passed construction and failed with a bare IndexError at the first domain update
                ref_name = args.reference_model_name_or_path or "reference_model"
                packed = f" (its text packed into block_size={args.block_size} blocks)" if source_packed else ""
                check_row_lengths(
                    self._domain_source,
                    ref_positions,
                    f"train_dataset{packed}, read by the DoReMi reference ({ref_name}),",
                )
            self.reference_model = reference_model.to(self.args.device).eval()
            self.reference_model.requires_grad_(False)
        self._mixture_sampler: MixtureSampler | None = None
        #: This rank's dot products / norms / losses of the last update, before averaging over ranks.
        self.last_local_stats: dict[str, torch.Tensor] = {}
        #: The same statistics after averaging over ranks (what the update used).
        self.last_mean_stats: dict[str, torch.Tensor] = {}
        #: The weights this rank computed at the last update, before rank 0's broadcast guard (equal on every rank).
        self.last_unbroadcast_weights: dict[str, torch.Tensor] = {}
        #: Wall-clock seconds spent in reweighting so far.
        self.reweight_seconds = 0.0
        #: Whether the end of `train()` also writes the figure of `args.plot_file` (the mixture JSON is always written).
        #: Set it to `False` to save the model and results first and call `save_mixture_plot()` afterwards, so a plot
        #: that fails cannot stop them from being written (the GRAPE recipe does).
        self.plot_at_train_end = True
        self.add_callback(_GrapeCallback(self))

    # ------------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _weights_from(weights: dict | None, names: list[str], arg: str) -> torch.Tensor:
        if not names:
            if weights:  # e.g. task_weights without target_datasets: they would be dropped without a word
                raise ValueError(f"{arg} names {sorted(weights)}, but there is nothing to weight (no names); drop it.")
            return torch.zeros(0, dtype=torch.float64)
        if weights is None:
            return torch.full((len(names),), 1.0 / len(names), dtype=torch.float64)
        if not isinstance(weights, dict):
            raise TypeError(f"{arg} must be a dict name -> weight, got {type(weights).__name__}.")
        unknown, missing = sorted(set(weights) - set(names)), sorted(set(names) - set(weights))
        if unknown or missing:
            raise ValueError(f"{arg} must name exactly {names}; unknown {unknown}, missing {missing}.")
        bad = [n for n in names if not is_weight_number(weights[n])]
        if bad:  # float(True) and float("0.5") used to be taken as weights
            raise ValueError(
                f"{arg} must map each name to a number (not a bool or a string): {bad[0]!r} is {weights[bad[0]]!r}."
            )
        w = check_weight_vector([weights[n] for n in names], len(names), f"{arg} (in the order {names})")
        return w / w.sum()

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`; calling it again on the same trainer (without `resume_from_checkpoint`) starts a new run.

        Like `Trainer`, which then continues from the current model with a fresh `TrainerState` (step 0, empty log
        history), the new run continues from the current domain and task weights (and the EMA losses used by
        `grape_ema`) and starts its own bookkeeping: the sampler weight schedule restarts at position 0 with the
        current weights (the new run's sampler starts at position 0), the update counts and time averages restart,
        and the trajectory restarts with a step-0 record; `mixture.json` then describes the new run. With `model_init`
        (the model is re-created, e.g. in `hyperparameter_search`) the new run starts from the initial weights
        instead. `resume_from_checkpoint` restores the checkpoint's state as always; with `ignore_data_skip=True` (the
        resumed epoch restarts from its first batch) the re-drawn positions use the checkpoint's current domain
        weights, as a new segment of the sampler's weight schedule, so updates after the resume apply at once.
        """
        if resume_from_checkpoint is False:
            resume_from_checkpoint = None
        # `ignore_data_skip=True` restarts the resumed epoch from its first batch: its sampler then starts a new
        # schedule segment holding the checkpoint's current weights (see `_get_train_sampler`)
        self._restart_schedule_on_resume = resume_from_checkpoint is not None and bool(self.args.ignore_data_skip)
        if self._mixture_run_started and resume_from_checkpoint is None:
            self._start_new_mixture_run(from_initial=self.model_init is not None)
        # taken by the first attempt of the training loop (after a resume has restored the checkpoint's state)
        self._attempt_start_state = None
        try:
            return super().train(
                resume_from_checkpoint=resume_from_checkpoint,
                trial=trial,
                ignore_keys_for_eval=ignore_keys_for_eval,
                **kwargs,
            )
        finally:
            self._attempt_start_state = None

    def _inner_training_loop(self, *args, **kwargs):
        # `auto_find_batch_size` runs the loop again from step 0 with a smaller batch after an out-of-memory error.
        # Every attempt starts from the mixture state the call started with (a resume: the checkpoint's, restored
        # before the first attempt): the failed attempt's updates, schedule entries (at its sampler positions, in
        # units of its batch size), trajectory records and counts would otherwise carry over into the retry.
        if getattr(self, "_attempt_start_state", None) is None:
            self._attempt_start_state = self.mixture_state.copy()
            self._attempt_stream_reads = copy.deepcopy(getattr(self, "_domain_stream_reads", None))
        else:
            # in place: the streaming mixture (and any other holder) keeps a reference to this object
            self.mixture_state.__dict__.update(self._attempt_start_state.copy().__dict__)
            self._mixture_sampler = None
            if self.streaming:  # the reweighting streams go back to where they were when the call started
                self._domain_stream_reads = copy.deepcopy(self._attempt_stream_reads)
                self._domain_iters = {}
        if self.streaming:
            # as for the map-style sampler (`_get_train_sampler`, which transformers does not call for an iterable
            # dataset): a resume with `ignore_data_skip=True` draws the stream again from its first example
            self.train_dataset.restart_schedule_on_iter = getattr(self, "_restart_schedule_on_resume", False)
        return super()._inner_training_loop(*args, **kwargs)

    def _start_new_mixture_run(self, from_initial: bool) -> None:
        """Reset the per-run mixture bookkeeping (schedule, counts, sums, trajectory), keeping the current weights
        and EMA losses (`from_initial=False`) or going back to the initial weights (`from_initial=True`)."""
        st = self.mixture_state
        if from_initial:
            domain_weights, task_weights = self._initial_weights
            ema = {}
        else:
            domain_weights, task_weights = st.domain_weights, st.task_weights
            ema = {"domain_ema_loss": st.domain_ema_loss.clone(), "task_ema_loss": st.task_ema_loss.clone()}
        fresh = MixtureState(
            domain_names=list(st.domain_names),
            task_names=list(st.task_names),
            domain_weights=domain_weights,
            task_weights=task_weights,
            **ema,
        )
        # In place: the streaming mixture (and any other holder) keeps a reference to this object.
        st.__dict__.update(fresh.__dict__)
        self._mixture_sampler = None

    def _get_train_sampler(self, train_dataset=None):
        if self.streaming:
            return None
        self._mixture_sampler = MixtureSampler(
            self._domain_indices,
            self.mixture_state,
            num_samples=self.args.samples_per_epoch,
            seed=_data_seed(self.args),
        )
        # A resume with `ignore_data_skip=True` draws the resumed epoch again from its first position. Those positions
        # are re-drawn with the checkpoint's current weights (a new schedule segment from there), not with the
        # weights the interrupted run had there (its initial ones), and later updates apply at once. The segment is
        # started when the sampler is first iterated, after the checkpoint's state is restored.
        self._mixture_sampler.restart_schedule_on_iter = getattr(self, "_restart_schedule_on_resume", False)
        return self._mixture_sampler

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model; a checkpoint save (`_internal_call`) also writes the mixture state into its folder.

        Trainer writes a checkpoint's model first and its `trainer_state.json` last, so the mixture state lands
        before the file that marks the checkpoint complete: a save killed half-way leaves a folder that resume skips
        (or refuses by name), never one that looks complete without its mixture state.
        """
        super().save_model(output_dir, _internal_call=_internal_call)
        folder = output_dir if output_dir is not None else self.args.output_dir
        if _internal_call and self.streaming:  # every process: each draws its own reweighting minibatches
            os.makedirs(folder, exist_ok=True)
            with atomic_open(os.path.join(folder, _STREAM_READS.format(self.args.process_index)), "w") as fh:
                json.dump(self._domain_stream_reads, fh)
        if _internal_call and self.args.should_save:
            self.mixture_state.save(
                folder, reweight_method=self.args.reweight_method, options=self._trajectory_options()
            )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from ..utils.resume import refuse_weights_only_checkpoint

        refuse_weights_only_checkpoint(resume_from_checkpoint, "resume_from_checkpoint")  # before anything is restored
        # a checkpoint of another method would go on as a hybrid (its weights, this method's rule) labelled as this one
        saved = saved_reweight_method(resume_from_checkpoint)
        if saved is not None and saved != self.args.reweight_method:
            raise ValueError(
                f"resume_from_checkpoint={resume_from_checkpoint!r} is a checkpoint of a {saved!r} run, but "
                f"reweight_method is {self.args.reweight_method!r}; resume it with reweight_method={saved!r}, or pass "
                f"a checkpoint of a {self.args.reweight_method} run."
            )
        check_resume_options(resume_from_checkpoint, self.args, self._trajectory_options())
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.load_mixture_state(resume_from_checkpoint)
        if self.streaming:
            self._load_stream_reads(resume_from_checkpoint)

    def _load_stream_reads(self, checkpoint: str) -> None:
        """Continue each per-domain reweighting stream of a streaming run where this process left it at `checkpoint`
        (`grape_streams_<process>.json`); a checkpoint without that file restarts them, with a warning."""
        path = os.path.join(checkpoint, _STREAM_READS.format(self.args.process_index))
        self._domain_iters = {}
        try:
            with open(path, encoding="utf-8") as fh:
                reads = json.load(fh)
            if not isinstance(reads, dict) or set(reads) - set(self.mixture_state.domain_names):
                raise ValueError(f"it does not map this run's domains {self.mixture_state.domain_names} to positions")
            self._domain_stream_reads = {str(k): [int(v[0]), int(v[1])] for k, v in reads.items()}
        except (OSError, ValueError, TypeError, IndexError) as err:
            self._domain_stream_reads = {}
            logger.warning(
                "resume_from_checkpoint=%r holds no readable record of this process's reweighting streams (%s: %s; a "
                "checkpoint of an older hf_ext, or of a run with fewer processes): they restart from their first "
                "examples, so the resumed run draws other reweighting minibatches than an uninterrupted run.",
                checkpoint,
                _STREAM_READS.format(self.args.process_index),
                err,
            )

    def _trajectory_options(self) -> dict:
        """The settings that shape the mixture trajectory (the sampler schedule, the reweighting draws and updates),
        recorded with each checkpoint's mixture state; a resume refuses other values (`_load_from_checkpoint`). Also
        records which argument gave the data seed (`data_seed_from`, not compared), to name a change by it."""
        # the per-device batch the run trains with: what an auto_find_batch_size retry lowered it to, not the argument
        return trajectory_options(self.args, getattr(self, "_train_batch_size", None))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # a multi-process evaluate() counts every evaluation row once (accelerate's padded repeats entered eval_loss)
        from ..utils.evaluation import eval_rows_once_prediction_step

        return eval_rows_once_prediction_step(
            self, super().prediction_step, model, inputs, prediction_loss_only, ignore_keys
        )

    def load_mixture_state(self, checkpoint: str) -> None:
        """Restore the mixture state saved in `checkpoint` (done automatically by `train(resume_from_checkpoint=)`)."""
        loaded = MixtureState.load(checkpoint)
        if (
            loaded.domain_names != self.mixture_state.domain_names
            or loaded.task_names != self.mixture_state.task_names
        ):
            raise ValueError(
                f"checkpoint {checkpoint!r} was written for domains {loaded.domain_names} and tasks "
                f"{loaded.task_names}, but this run has {self.mixture_state.domain_names} and "
                f"{self.mixture_state.task_names}."
            )
        self.mixture_state.__dict__.update(loaded.__dict__)

    # ---- minibatches -------------------------------------------------------------------------------------------------
    def _rng(self, purpose: str, key: int = 0) -> np.random.Generator:
        # the reweighting minibatches are data draws: seeded like the sampler (data_seed, else seed)
        seq = np.random.SeedSequence(
            [_data_seed(self.args), self.args.process_index, self.state.global_step, _PURPOSE[purpose], key]
        )
        return np.random.Generator(np.random.PCG64(seq))

    @staticmethod
    def _features(dataset, rows) -> list[dict]:
        """Rows of a map-style dataset as a list of example dicts (model columns only), read in one batch."""
        columns = [c for c in MODEL_COLUMNS if c in dataset.column_names]
        batch = dataset.select_columns(columns)[[int(r) for r in rows]]
        return [{c: batch[c][i] for c in columns} for i in range(len(rows))]

    def _check_source_collation(self) -> None:
        """Tokenized source rows of different lengths need a collator that pads them (with their labels): try the
        shortest and the longest row together now, rather than fail at the first step or reweighting."""
        import pyarrow.compute as pc

        lengths = pc.list_value_length(self._domain_source.with_format("arrow")["input_ids"])
        low, high = pc.min_max(lengths).values()
        if low.as_py() == high.as_py():
            return
        rows = [pc.index(lengths, low).as_py(), pc.index(lengths, high).as_py()]
        try:
            self.data_collator([self._domain_source[i] for i in rows])
        except Exception as err:
            name = getattr(self.data_collator, "__name__", type(self.data_collator).__name__)
            raise ValueError(
                f"train_dataset rows have {low.as_py()} to {high.as_py()} tokens, and data_collator ({name}) "
                f"cannot batch rows of different lengths ({type(err).__name__}: {err}). Pass a padding collator, e.g. "
                "data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False) or DataCollatorForSeq2Seq("
                "tokenizer), or give the text untokenized to pack it into block_size blocks."
            ) from None

    def _collate(self, features: list[dict]) -> dict:
        return self._prepare_inputs(self.data_collator(features))

    def _domain_features(self, k: int, rng: np.random.Generator, size: int) -> list[dict]:
        if self.streaming:
            name = self.mixture_state.domain_names[k]
            features, reads = [], self._domain_stream_reads
            # passes of the stream begun in this call since its last labelled example: a whole pass without one means
            # the domain has none (it would be restarted forever)
            bare_passes = 0
            while len(features) < size:
                it = self._domain_iters.get(name)
                if it is None and name in reads:  # resumed: the checkpoint's pass, after the examples it read
                    seed, done = reads[name]
                    stream = self._domain_streams[name].shuffle(seed=seed, buffer_size=256)
                    it = self._domain_iters[name] = itertools.islice(iter(stream), done, None)
                try:
                    example = next(it) if it is not None else None
                except StopIteration:
                    example = None
                if example is None:
                    if bare_passes:
                        raise ValueError(
                            f"the streamed source domain {name!r} has no example with a labelled next token (its labels "
                            "are -100 or masked after the first token, or its rows hold one token), so it has no loss to "
                            "reweight by; fix its labels (e.g. labels = input_ids for plain text) or drop the domain."
                        )
                    bare_passes += 1
                    seed = int(rng.integers(2**31))
                    reads[name] = [seed, 0]
                    self._domain_iters[name] = iter(self._domain_streams[name].shuffle(seed=seed, buffer_size=256))
                    continue
                reads[name][1] += 1
                if not has_labelled_token(example):  # no loss: a minibatch of such rows had a NaN loss, scored 0
                    continue
                bare_passes = 0
                features.append({c: example[c] for c in MODEL_COLUMNS if c in example})
            return features
        rows = self._reweight_indices[k]
        return self._features(self._domain_source, [rows[i] for i in rng.integers(len(rows), size=size)])

    def _task_features(self, n: int, rng: np.random.Generator, size: int) -> list[dict]:
        ds = self.target_datasets[self.mixture_state.task_names[n]]
        return self._features(ds, rng.integers(len(ds), size=size))

    def _domain_batch(self, k: int, rng: np.random.Generator, size: int) -> dict:
        return self._collate(self._domain_features(k, rng, size))

    def _task_batch(self, n: int, rng: np.random.Generator, size: int) -> dict:
        return self._collate_targets(self._task_features(n, rng, size))

    def _collate_targets(self, features: list[dict]) -> dict:
        """Target examples are padded here, not by `data_collator` (which collates the source batches): rows of any
        length, padding never counted in the loss (see `pad_target_features`)."""
        return self._prepare_inputs(pad_target_features(features, self._target_pad_token_id()))

    def _target_pad_token_id(self) -> int:
        """Padding id of the target batches: the tokenizer's (or processor's) pad token, else the model config's, else
        the EOS of either, else 0, skipping ids outside the model's vocabulary (a small config keeps GPT-2's EOS
        50256, which the embedding cannot index). Any id in the vocabulary is correct: right padding comes after every
        real token, has attention mask 0 and label -100, so it changes neither the logits nor the loss of the real
        tokens."""
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        config = getattr(self.model, "config", None)
        limit = _token_id_limit(self.model)
        for owner, attr in (
            (tokenizer, "pad_token_id"),
            (config, "pad_token_id"),
            (tokenizer, "eos_token_id"),
            (config, "eos_token_id"),
        ):
            value = getattr(owner, attr, None) if owner is not None else None
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (limit or value + 1):
                return value
        return 0

    def _mixture_batch(self, weights: torch.Tensor, rng: np.random.Generator, size: int, kind: str) -> dict:
        """`size` sequences drawn from a mixture: of source domains (`kind="domain"`) or of target tasks."""
        w = weights.double().numpy()
        picks = rng.choice(len(w), size=size, p=w / w.sum())
        fetch = self._domain_features if kind == "domain" else self._task_features
        features = []
        for j, count in zip(*np.unique(picks, return_counts=True)):
            features.extend(fetch(int(j), rng, int(count)))
        return self._collate(features) if kind == "domain" else self._collate_targets(features)

    # ---- gradients ---------------------------------------------------------------------------------------------------
    def _warn_training_loss_not_reweighted(self) -> None:
        """Warn when training minimises another loss than the model's own (an overridden `compute_loss`,
        `compute_loss_func=`, `label_smoothing_factor`): the reweighting gradients (doremi: losses) stay those of the
        model's loss (`model(**batch).loss`, as in the GRAPE code), so the mixture is fitted to another objective than
        the one trained."""
        reasons = []
        if getattr(type(self).compute_loss, "__code__", None) is not Trainer.compute_loss.__code__:
            reasons.append(f"{type(self).__name__} overrides compute_loss")
        if getattr(self, "compute_loss_func", None) is not None:
            reasons.append("compute_loss_func is given")
        if self.args.label_smoothing_factor:
            reasons.append(f"label_smoothing_factor={self.args.label_smoothing_factor}")
        if reasons and self.args.reweight_method not in ("uniform", "fixed"):
            # an override alone may keep the model's loss (one that only logs or records, then calls super()): the
            # warning cannot tell, so it says so instead of stating another loss is trained
            overridden_only = len(reasons) == 1 and reasons[0].endswith("overrides compute_loss")
            logger.warning(
                "GrapeTrainer: %s, so training %s another loss than the model's own, while the %s reweighting reads the "
                "model's loss (model(**batch).loss, as in the GRAPE code): the mixture is fitted to the model's loss, "
                "not to the trained one%s.",
                " and ".join(reasons),
                "may minimise" if overridden_only else "minimises",
                self.args.reweight_method,
                " (an override that returns the model's loss unchanged, e.g. one that only logs, is not affected)"
                if overridden_only
                else "",
            )

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _flat_grad(self, batch: dict, transform=None) -> tuple[torch.Tensor, float]:
        """Clipped flattened gradient of `transform(loss)` on `batch` (and the loss value)."""
        params = self._params()
        with self.compute_loss_context_manager():
            loss = self._reweighting_loss(self.model(**batch), batch.get("labels"))
        objective = loss if transform is None else transform(loss)
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        flat = torch.cat(
            [_at_least_float32(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
        )
        max_norm = self.args.max_grad_norm
        if max_norm is not None and max_norm > 0:
            flat.mul_((max_norm / (flat.norm() + 1e-6)).clamp(max=1.0))
        return flat, float(loss.detach())

    def _reweighting_loss(self, outputs, labels: torch.Tensor | None) -> torch.Tensor:
        """The loss of a reweighting pass: the model's `loss` in at least float32 ([`_at_least_float32`]); for logits
        wider than float32 (a float64 model) the next-token cross-entropy computed on them in their dtype
        ([`_causal_lm_cross_entropy`]), as transformers computes the model's loss in float32 whatever the logits.

        That replacement is made only where the model's loss is that cross-entropy: where it agrees within
        `1e-6 * max(1, |loss|)` (about 8 float32 ulps) with the same cross-entropy computed as transformers does, on
        the logits cast to float32, or with the float64 one (a model that computes its loss in float64). It is not
        compared with the float64 cross-entropy alone: transformers' float32 loss of a float64 Llama is up to 2.7e-6
        relative off that one (vocab 32000, 256 tokens; ~1e-7 on the tests' 64-token vocab), while its float32
        recomputation is the same computation (0 apart on CPU). A model whose loss is not that cross-entropy (an
        auxiliary loss, even at 1e-5 relative, as a MoE router loss with a small coefficient; label smoothing) keeps
        its own loss, with a warning; a term below 1e-6 relative is within float32 rounding of the model's loss and
        not told apart."""
        logits = getattr(outputs, "logits", None)
        wide = logits is not None and torch.promote_types(logits.dtype, torch.float32) != torch.float32
        if not wide or labels is None:
            return _at_least_float32(outputs.loss)
        own = _causal_lm_cross_entropy(logits, labels)
        with torch.no_grad():
            as_transformers = float(_causal_lm_cross_entropy(logits.detach().float(), labels))
        model_loss = float(outputs.loss.detach())
        gap = min(abs(model_loss - as_transformers), abs(model_loss - float(own.detach())))
        if gap <= 1e-6 * max(1.0, abs(model_loss)):
            return own
        if not getattr(self, "_warned_model_loss", False):
            self._warned_model_loss = True
            logger.warning(
                "GRAPE reweighting: the %s model's loss (%.9g) is not the next-token cross-entropy of its logits "
                "(%.9g; %.2g relative apart), so its reweighting uses the model's loss as the model computes it "
                "(transformers: in float32).",
                logits.dtype,
                model_loss,
                float(own.detach()),
                gap / max(1.0, abs(model_loss)),
            )
        return _at_least_float32(outputs.loss)

    def _mean_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            t = tensor.to(self.args.device).clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            return (t / self.args.world_size).to(tensor.device)
        return tensor

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            t = tensor.to(self.args.device).clone()
            dist.broadcast(t, src=0)
            return t.to(tensor.device)
        return tensor

    def _averaged_gradient(self, weights: torch.Tensor, kind: str, transform=None) -> torch.Tensor:
        """Mean of `reweight_batch_size // reweight_mini_batch_size` clipped gradients, each over a batch of
        `per_device_train_batch_size` sequences drawn from a mixture (as the GRAPE code's `tgt_reweight_step` /
        `domain_reweight_step`, which draw them from its training / target loaders), averaged over ranks. After an
        `auto_find_batch_size` retry that is the smaller batch the training runs with, as in its loader."""
        rng = self._rng("mixture" if kind == "domain" else "target")
        n_batches = self.args.reweight_batch_size // self.args.reweight_mini_batch_size
        # the per-device training batch in use: `per_device_train_batch_size`, or what auto_find_batch_size lowered
        # it to (`_train_batch_size` counts every GPU of a single-process DataParallel run)
        size = max(1, self._train_batch_size // max(1, self.args.n_gpu))
        total = None
        for _ in range(n_batches):
            batch = self._mixture_batch(weights, rng, size, kind)
            g, _ = self._flat_grad(batch, transform)
            total = g if total is None else total.add_(g)
        return self._mean_over_ranks(total / n_batches)

    def _current_lr(self) -> float:
        if self.lr_scheduler is not None:
            return float(self.lr_scheduler.get_last_lr()[0])
        return float(self.args.learning_rate)

    # ---- updates -----------------------------------------------------------------------------------------------------
    def _task_step(self, logs: dict) -> None:
        st, args = self.mixture_state, self.args
        variant = args.reweight_method
        g_mix = self._averaged_gradient(st.domain_weights, "domain")
        rng = self._rng("task")
        dots, losses = [], []
        transform = (lambda loss: task_objective(loss, "grape")) if variant == "grape" else None
        for n in range(len(st.task_names)):
            h, loss = self._flat_grad(self._task_batch(n, rng, args.reweight_mini_batch_size), transform)
            dots.append(float(h @ g_mix))
            losses.append(loss)
        del g_mix
        self.last_local_stats["task"] = torch.tensor(dots + losses, dtype=torch.float64)
        stats = self.last_mean_stats["task"] = self._mean_over_ranks(self.last_local_stats["task"])
        n_tasks = len(st.task_names)
        dots_t, losses_t = stats[:n_tasks].clone(), stats[n_tasks:]
        for n in range(n_tasks):
            st.task_ema_loss[n] = ema_update(float(st.task_ema_loss[n]), float(losses_t[n]), args.ema_beta)
        if variant == "grape_ema":
            dots_t = dots_t / st.task_ema_loss
        step = resolve_step_size(args.task_step_size, args.step_size_convention, self._current_lr())
        new = grape_task_weights(st.task_weights, dots_t, step, args.task_smoothing)
        self.last_unbroadcast_weights["task"] = new.clone()
        st.set_task_weights(self._broadcast(new))
        for n, name in enumerate(st.task_names):
            logs[f"grape/task_improvement/{name}"] = float(dots_t[n])
            logs[f"grape/task_loss/{name}"] = float(losses_t[n])

    def _domain_step(self, logs: dict) -> None:
        st, args = self.mixture_state, self.args
        method = args.reweight_method
        rng = self._rng("domain")
        k_domains = len(st.domain_names)
        if method == "doremi":
            excess, losses = [], []
            for k in range(k_domains):
                e, loss = self._excess_loss(self._domain_batch(k, rng, args.reweight_mini_batch_size))
                excess.append(e)
                losses.append(loss)
            self.last_local_stats["domain"] = torch.tensor(excess + losses, dtype=torch.float64)
            stats = self.last_mean_stats["domain"] = self._mean_over_ranks(self.last_local_stats["domain"])
            scores, losses_t = stats[:k_domains], stats[k_domains:]
            new = doremi_domain_weights(st.domain_weights, scores, args.doremi_eta, args.doremi_smoothing)
        else:
            # GRAPE and its repository's DoGE baseline both use the log-loss target gradient (`reweight_tgt="grape"`
            # in the GRAPE repository's doge configs); grape_gap uses the plain loss.
            use_log = method in ("grape", "grape_ema", "doge")
            g_tgt = self._averaged_gradient(st.task_weights, "task", torch.log if use_log else None)
            dots, norms, losses = [], [], []
            for k in range(k_domains):
                g, loss = self._flat_grad(self._domain_batch(k, rng, args.reweight_mini_batch_size))
                dots.append(float(g @ g_tgt))
                norms.append(float(g.norm()))
                losses.append(loss)
            del g_tgt
            self.last_local_stats["domain"] = torch.tensor(dots + norms + losses, dtype=torch.float64)
            stats = self.last_mean_stats["domain"] = self._mean_over_ranks(self.last_local_stats["domain"])
            scores = stats[:k_domains]
            norms_t, losses_t = stats[k_domains : 2 * k_domains], stats[2 * k_domains :]
            # grape* and doge share the domain step; doge keeps the task weights fixed (no task step is scheduled).
            step = resolve_step_size(args.domain_step_size, args.step_size_convention, self._current_lr())
            new = grape_domain_weights(st.domain_weights, scores, step, args.domain_smoothing)
        for k in range(k_domains):
            st.domain_ema_loss[k] = ema_update(float(st.domain_ema_loss[k]), float(losses_t[k]), args.ema_beta)
        self.last_unbroadcast_weights["domain"] = new.clone()
        new = self._broadcast(new)
        if self.streaming:  # the examples drawn from the stream so far (with the prefetched ones)
            position = self.train_dataset.examples_drawn
        else:
            position = self._mixture_sampler.position if self._mixture_sampler is not None else 0
        st.set_domain_weights(new, position)
        for k, name in enumerate(st.domain_names):
            logs[f"grape/domain_score/{name}"] = float(scores[k])
            logs[f"grape/domain_loss/{name}"] = float(losses_t[k])
            if method != "doremi":
                logs[f"grape/domain_grad_norm/{name}"] = float(norms_t[k])

    def _excess_loss(self, batch: dict) -> tuple[float, float]:
        """DoReMi excess loss of the model over the reference model on `batch` (and the model's loss)."""
        from .rules import doremi_excess_loss

        with torch.no_grad(), self.compute_loss_context_manager():
            labels = batch["labels"][:, 1:]
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            proxy = _at_least_float32(self.model(**inputs).logits[:, :-1])
            # the reference runs in the model's mixed precision (`bf16` / `fp16`), as DoReMi's reference runs inside
            # its proxy's forward: accelerate autocasts the prepared model's forward only, and a float32 reference
            # beside a bf16 proxy left the proxy's rounding in every token's excess, which the clip at 0 turns into a
            # positive bias (3e-4 nats per domain for a reference identical to the model)
            with self.accelerator.autocast():
                ref = _at_least_float32(self.reference_model(**inputs).logits[:, :-1])
        mask = labels != -100
        safe = labels.clamp(min=0)
        lp = torch.nn.functional.cross_entropy(proxy.transpose(1, 2), safe, reduction="none")
        lr = torch.nn.functional.cross_entropy(ref.transpose(1, 2), safe, reduction="none")
        excess = doremi_excess_loss(lp.cpu(), lr.cpu(), mask.cpu())
        return float(excess), float((lp * mask).sum() / mask.sum().clamp(min=1))

    def _maybe_reweight(self) -> None:
        args, step = self.args, self.state.global_step
        method = args.reweight_method
        do_tasks = method in GRAPE_VARIANTS and args.reweight_tasks_every > 0 and step % args.reweight_tasks_every == 0
        do_tasks = do_tasks and len(self.mixture_state.task_names) > 0
        do_domains = (
            method in (*GRAPE_VARIANTS, "doge", "doremi")
            and args.reweight_domains_every > 0
            and step % args.reweight_domains_every == 0
        )
        if not (do_tasks or do_domains):
            return
        start = time.perf_counter()
        logs: dict[str, float] = {}
        was_training = self.model.training
        self.model.train()
        # the reweighting passes are not training steps: emulated delayed-scaling FP8 layers quantise them with the
        # current scales and record nothing, so the FP8 state evolves with the training steps alone (as without GRAPE)
        with fp8_auxiliary_pass():
            if do_tasks:
                self._task_step(logs)
            if do_domains:
                self._domain_step(logs)
        self.model.train(was_training)
        st = self.mixture_state
        for name, w, a in zip(st.domain_names, st.domain_weights, st.average_domain_weights()):
            logs[f"grape/domain_weight/{name}"] = float(w)
            logs[f"grape/avg_domain_weight/{name}"] = float(a)
        for name, w, a in zip(st.task_names, st.task_weights, st.average_task_weights()):
            logs[f"grape/task_weight/{name}"] = float(w)
            logs[f"grape/avg_task_weight/{name}"] = float(a)
        logs["grape/domain_updates"] = st.domain_updates
        logs["grape/task_updates"] = st.task_updates
        self._record_trajectory()
        self.reweight_seconds += time.perf_counter() - start
        logs["grape/reweight_seconds"] = time.perf_counter() - start
        self.log(logs)

    def _warn_if_never_reweighted(self, start_step: int, max_steps: int) -> None:
        """Warn, naming the period and `max_steps`, for a weight update this method makes that no step of the run
        reaches (e.g. the default period of 100 in a 50-step run): the run trained on its initial weights and exported
        them under the method's name without a word. A resume at `start_step` past the first update is not warned
        about (the weights were updated before it, whatever the steps left)."""
        args, method = self.args, self.args.reweight_method
        updates = []
        if method in GRAPE_VARIANTS and self.mixture_state.task_names:
            updates.append(("reweight_tasks_every", "task"))
        if method in (*GRAPE_VARIANTS, "doge", "doremi"):
            updates.append(("reweight_domains_every", "domain"))
        for name, kind in updates:
            every = getattr(args, name)
            if every > 0 and max_steps and start_step < every and every > max_steps:
                logger.warning(
                    "%s=%d but this run ends at step %d: reweight_method=%r never updates the %s weights in it (they "
                    "stay at their initial values, and are exported as the %s mixture); lower %s or raise max_steps.",
                    name,
                    every,
                    max_steps,
                    method,
                    kind,
                    method,
                    name,
                )

    def _record_trajectory(self, initial: bool = False) -> None:
        st = self.mixture_state
        if initial and st.trajectory:
            return
        st.trajectory.append(
            {
                "step": int(self.state.global_step),
                "domain_weights": [float(x) for x in st.domain_weights],
                "task_weights": [float(x) for x in st.task_weights],
            }
        )

    # ---- outputs -----------------------------------------------------------------------------------------------------
    def save_mixture(self, output_dir: str | None = None, plot: bool = True) -> dict:
        """Export the mixture JSON (and, with `plot`, the figure of the weight trajectories: `save_mixture_plot`) into
        `output_dir`; returns the JSON dict. The JSON is written first, so a failing plot never loses it.

        Train a fresh model on the result with `GrapeConfig(reweight_method="fixed", mixture_file=<the JSON>)`.
        """
        output_dir = output_dir or self.args.output_dir
        path = os.path.join(output_dir, self.args.export_mixture_file)
        data = export_mixture(self.mixture_state, path, self.args.reweight_method, int(self.state.global_step))
        if plot:
            self.save_mixture_plot(output_dir)
        return data

    def save_mixture_plot(self, output_dir: str | None = None) -> str | None:
        """Write the figure of the weight trajectories to `args.plot_file` in `output_dir` (default
        `args.output_dir`); returns its path, or `None` when `plot_file` is empty or nothing was recorded yet."""
        from .plotting import plot_mixture_trajectory

        st = self.mixture_state
        if not (self.args.plot_file and st.trajectory):
            return None
        return plot_mixture_trajectory(
            st.trajectory,
            st.domain_names,
            st.task_names,
            os.path.join(output_dir or self.args.output_dir, self.args.plot_file),
            title=f"{self.args.reweight_method} mixture weights",
        )
