"""`Trainer` glue for the privacy defenses: Goldfish loss and per-sample DP-SGD on the trainable (LoRA) parameters."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import partial

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import seed_worker

from ..utils.checks import is_int, is_real, store_python_scalars
from ..utils.decay import ModelDecayNamesMixin
from ..utils.evaluation import EvalRowsOnceMixin
from ..utils.fsdp_save import WholeModelSaveMixin
from ..utils.resume import LossWindowResumeMixin
from .goldfish import GoldfishCollator
from .privacy import (
    ACCOUNTANTS,
    PoissonBatchSampler,
    PrivacyAccountant,
    derive_seed,
    dp_gradient,
    poisson_sample_rate,
    secret_noise_generator,
)

ACCOUNTANT_FILE = "privacy_accountant.json"
#: the batch entries a DP-SGD step passes to the model (per sample); any other tensor in a batch is refused
DP_SGD_INPUTS = ("input_ids", "labels", "attention_mask", "position_ids")


@dataclass
class PrivateTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus Goldfish loss and example-level DP-SGD options (a train-dataset row is the unit)."""

    goldfish_k: int | None = field(
        default=None, metadata={"help": "Goldfish loss: drop about 1/k of the target tokens (>= 2); None disables."}
    )
    goldfish_context_width: int = field(
        default=13, metadata={"help": "Goldfish loss: number of tokens hashed to decide each drop (h)."}
    )
    dp_clip_norm: float | None = field(
        default=None,
        metadata={"help": "DP-SGD: per-sample gradient L2 clip norm C on the trainable parameters; None disables."},
    )
    dp_noise_multiplier: float = field(
        default=0.0, metadata={"help": "DP-SGD: Gaussian noise std in units of the clip norm (sigma)."}
    )
    dp_delta: float = field(default=1e-5, metadata={"help": "DP-SGD: delta at which epsilon is reported."})
    dp_noise_seed: int | None = field(
        default=None,
        metadata={
            "help": "DP-SGD: seed of the Gaussian noise and of the Poisson sampling, for bit-identical runs and "
            "resumes (tests). Default None: both come from secret seeds drawn from the OS randomness for every "
            "Trainer. Setting it VOIDS the DP guarantee against anyone who knows the seed: they can regenerate and "
            "subtract the noise, and rebuild which steps used each record."
        },
    )
    dp_accountant: str = field(
        default="pld",
        metadata={"help": "DP-SGD accountant from Google's dp-accounting: 'pld' (tighter) or 'rdp' (Renyi DP)."},
    )

    def __post_init__(self):
        store_python_scalars(self, base=TrainingArguments)  # numpy numbers as Python ones: to_json_string() works
        super().__post_init__()
        if self.goldfish_k is not None:
            if not is_int(self.goldfish_k) or self.goldfish_k < 2:
                raise ValueError(
                    f"--goldfish_k must be an integer >= 2 (drop 1/k of the tokens), got {self.goldfish_k!r}."
                )
            self.goldfish_k = int(self.goldfish_k)  # a numpy integer as the Python int the collator takes
        if not is_int(self.goldfish_context_width) or self.goldfish_context_width < 1:
            raise ValueError(f"--goldfish_context_width must be an integer >= 1, got {self.goldfish_context_width!r}.")
        self.goldfish_context_width = int(self.goldfish_context_width)
        if not (is_real(self.dp_noise_multiplier) and math.isfinite(self.dp_noise_multiplier)):
            raise ValueError(f"--dp_noise_multiplier must be a finite number >= 0, got {self.dp_noise_multiplier!r}.")
        if self.dp_noise_multiplier < 0:
            raise ValueError(f"--dp_noise_multiplier must be >= 0, got {self.dp_noise_multiplier}.")
        if self.dp_noise_multiplier > 0 and self.dp_clip_norm is None:
            raise ValueError(
                "--dp_noise_multiplier > 0 needs --dp_clip_norm: without a per-sample clip norm the noise has no "
                "calibrated sensitivity and DP-SGD would be off. Set --dp_clip_norm (e.g. 1.0)."
            )
        if self.dp_accountant not in ACCOUNTANTS:
            raise ValueError(f"--dp_accountant must be one of {ACCOUNTANTS}, got {self.dp_accountant!r}.")
        if self.dp_clip_norm is not None:
            if not (is_real(self.dp_clip_norm) and math.isfinite(self.dp_clip_norm)):
                raise ValueError(
                    f"--dp_clip_norm must be a finite number > 0 or None (DP-SGD off), got {self.dp_clip_norm!r}."
                )
            if not self.dp_clip_norm > 0:
                raise ValueError(f"--dp_clip_norm must be > 0, got {self.dp_clip_norm}.")
            if self.gradient_accumulation_steps != 1:
                raise ValueError(
                    "DP-SGD adds noise once per optimizer step: set --gradient_accumulation_steps 1 and raise "
                    "--per_device_train_batch_size instead."
                )
            if self.max_grad_norm:
                raise ValueError(
                    "--dp_clip_norm clips each sample's gradient; set --max_grad_norm 0 so that the Trainer does not "
                    "clip the noised batch gradient again."
                )
            if self.label_smoothing_factor:
                raise ValueError(
                    f"--label_smoothing_factor {self.label_smoothing_factor} would be ignored in training: DP-SGD clips "
                    "each sample's gradient of the model's own loss (evaluate() would still smooth). Leave it at 0."
                )
            if self.auto_find_batch_size:
                raise ValueError(
                    "--auto_find_batch_size does not work with DP-SGD (--dp_clip_norm): after an out-of-memory error "
                    "the Trainer retries with a smaller batch, which would change the Poisson sampling rate q (and "
                    "the noise divisor) mid-run on an event that depends on the sampled batch, while the failed "
                    "attempt's steps stay in the model and in the accounting, so the privacy spent is not the one the "
                    "run planned. Turn --auto_find_batch_size off and set --per_device_train_batch_size explicitly "
                    "(the expected Poisson batch; real batches vary around it, so leave memory headroom)."
                )
            strategy = getattr(self, "train_sampling_strategy", "random")
            if strategy != "random":
                raise ValueError(
                    f"--train_sampling_strategy {strategy} would be ignored under DP-SGD (--dp_clip_norm): batches are "
                    "drawn by Poisson sampling (each example joins each batch independently), the sampling the privacy "
                    "accountant assumes, and a length-grouped or sequential order would break it. Leave "
                    "--train_sampling_strategy at 'random'."
                )
            if self.activation_checkpointing:  # transformers mirrors its old name, --gradient_checkpointing, here
                raise ValueError(
                    "--activation_checkpointing (--gradient_checkpointing) does not work with DP-SGD: per-sample "
                    "gradients come from torch.func (vmap over grad), which does not support activation "
                    "checkpointing's saved-tensor hooks. Leave it off, and lower --per_device_train_batch_size if "
                    "memory is short."
                )
        if not is_real(self.dp_delta) or not 0 < self.dp_delta < 1:
            raise ValueError(f"--dp_delta must be a number in (0, 1), got {self.dp_delta!r}.")
        if self.dp_noise_seed is not None and (
            isinstance(self.dp_noise_seed, bool) or not isinstance(self.dp_noise_seed, int)
        ):
            raise TypeError(f"--dp_noise_seed must be an integer or None (secret noise), got {self.dp_noise_seed!r}.")


class PrivateTrainer(ModelDecayNamesMixin, EvalRowsOnceMixin, LossWindowResumeMixin, WholeModelSaveMixin, Trainer):
    """A `Trainer` with Goldfish loss (via [`GoldfishCollator`]) and DP-SGD (per-sample clipping + Gaussian noise).

    With `args.dp_clip_norm` set, batches are drawn by Poisson sampling ([`PoissonBatchSampler`]: each example joins
    each batch independently with probability `q = per_device_train_batch_size / len(train_dataset)`), which is the
    sampling the accountant assumes; every step is a fresh draw (the sampler is seeded by [`sampling_seed`] and the
    epoch, which the `Trainer` sets every epoch), so batches are not replayed across epochs, nor by a second `train()`
    call that does not resume (each such call draws with its own key; a resume continues its checkpoint's key). Like the noise, the
    sampling is secret by default (a seed from the OS randomness, not the public `seed` / `data_seed`): whoever could
    rebuild the batches would know which steps used a record, and the accountant's amplification by subsampling
    would not hold against them. Each optimizer step computes per-sample gradients of the trainable parameters
    with `torch.func` (respecting the batch's `attention_mask` and `position_ids`; any other model input in a batch,
    e.g. `token_type_ids`, is refused), clips each to `dp_clip_norm`, sums, adds
    `N(0, (dp_noise_multiplier * dp_clip_norm)^2)` and divides by the expected batch size. The noise comes from a
    generator seeded with a secret drawn from the OS randomness ([`secret_noise_generator`]), so knowing the training
    seeds does not reveal it; with `dp_noise_seed` set it is seeded per step from `(dp_noise_seed, global_step)`
    instead, and the sampling from `dp_noise_seed` too (reproducible, resumes exactly, but no privacy against whoever
    knows the seed). With the secret default a resumed run draws fresh batches and noise: still Poisson sampling and
    Gaussian noise as accounted, not the uninterrupted run's. Goldfish (`goldfish_k`) drops tokens in training only;
    `evaluate()` reports the loss over every token, as the Goldfish reference does. A
    [`PrivacyAccountant`] (Google's `dp-accounting`, PLD by default) tracks epsilon at `dp_delta`; it is saved as
    JSON in every checkpoint (before `trainer_state.json` marks it complete) and restored by `resume_from_checkpoint`;
    with DP-SGD on, a checkpoint without it is refused, and so is one whose run trained steps without DP-SGD
    ([`non_private_steps`]; `privacy_spent()` reports epsilon inf for such a run). With DP-SGD on, `auto_find_batch_size` and a
    `train_sampling_strategy` other than `"random"` are refused (the Poisson sampling replaces the latter; an
    out-of-memory retry would change the sampling rate mid-run), and so is a data collator that does not return one
    row per example (e.g. the padding-free `DataCollatorWithFlattening`: the per-row clipping would bound the whole
    batch); `dataloader_num_workers` is honoured (the batches are
    still drawn in the main process, the workers only read and collate them).

    Args:
        accountant ([`PrivacyAccountant`], *optional*): an accountant to continue (e.g. a client's across rounds).
        All other arguments are those of `Trainer`; `args` must be [`PrivateTrainingArguments`].
    """

    def __init__(self, *args, accountant: PrivacyAccountant | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, PrivateTrainingArguments):
            raise TypeError("PrivateTrainer needs `args` to be a PrivateTrainingArguments instance.")
        self.accountant = accountant if accountant is not None else PrivacyAccountant(self.args.dp_accountant)
        self._secret_noise: torch.Generator | None = None
        self._secret_sampling_seed: int | None = None
        # Each train() call that does not resume draws its own Poisson batches and noise (key 0 for the first); a
        # resumed call continues the key of the checkpoint it resumes from (stored next to the accountant).
        self._sampling_call = 0
        self._next_sampling_call = 0
        # optimizer steps trained without DP-SGD on this trainer's run before the current train() call (restored from
        # a checkpoint on resume), and the global step the current call started from: no finite epsilon covers them
        self._non_private_steps = 0
        self._call_start_step = 0
        if self.args.dp_clip_norm is not None:
            if self.compute_loss_func is not None or type(self).compute_loss is not Trainer.compute_loss:
                raise ValueError(
                    "DP-SGD in PrivateTrainer differentiates each sample's own model loss (`outputs.loss`); a "
                    "`compute_loss_func` or a `compute_loss` override would be bypassed in training. Remove it, or "
                    "train without --dp_clip_norm."
                )
            if self.args.world_size > 1:
                raise ValueError("DP-SGD in PrivateTrainer runs on one process; launch without multiple processes.")
            if getattr(self.accelerator, "scaler", None) is not None:  # fp16 on a GPU: accelerate's GradScaler
                raise ValueError(
                    "--fp16 on this device trains with a loss scaler (torch.amp.GradScaler), which scales the loss "
                    "that backward() sees; DP-SGD computes each sample's gradient itself (torch.func), so the scaler "
                    "never scales a loss and its first step fails ('_scale is None'). Train with --bf16 true, or in "
                    "float32 (drop --fp16)."
                )
            if self.train_dataset is None or not hasattr(self.train_dataset, "__len__") or not len(self.train_dataset):
                raise ValueError("DP-SGD needs a sized, non-empty `train_dataset` to compute the sampling rate.")

    def describe_train_batch_change(self, old: int, new: int, now: dict) -> tuple[str, str] | None:
        """For the resume warning at another total train batch (`hf_ext.utils.resume.warn_changed_train_batch`): under
        DP-SGD the batches are Poisson draws, not a fixed order of the data that the resume skips by a count, so no
        sample is trained again or skipped; what changes is the sampling rate (and the steps per epoch). Gradient
        accumulation is 1 under DP-SGD, so the per-device batch alone keeps the checkpoint's. `None` without DP-SGD."""
        if self.args.dp_clip_norm is None:
            return None
        n = len(self.train_dataset)
        happens = (
            "Under DP-SGD (--dp_clip_norm) each batch is a Poisson draw (every example joins it independently), so the "
            "resume neither trains samples again nor skips any; the expected batch, and with it the sampling rate, "
            f"changes (q = {old}/{n} -> {new}/{n} on these {n} examples; the privacy accountant records each step's q), "
            "and an epoch has another number of steps."
        )
        processes = now["processes"]
        hint = (
            f"keep the expected batch at {old}: --per_device_train_batch_size {old // processes} on these processes "
            "(DP-SGD takes --gradient_accumulation_steps 1)"
            if old % processes == 0
            else f"keep the expected batch at {old}: the checkpoint's --per_device_train_batch_size on its processes"
        )
        return happens, hint

    @property
    def sample_rate(self) -> float:
        """Poisson sampling rate `q = expected batch size / dataset size`."""
        return poisson_sample_rate(self.args.per_device_train_batch_size * self.args.world_size, len(self.train_dataset))

    @property
    def expected_batch_size(self) -> int:
        """The expected Poisson batch size `q N` DP-SGD divides the noisy gradient sum by: the batch size, or the
        dataset size when the dataset is smaller (then `q = 1`: every example is in every batch)."""
        return min(self.args.per_device_train_batch_size * self.args.world_size, len(self.train_dataset))

    def _train_collator(self):
        """The training collator: the user's, behind Goldfish's token dropping when `goldfish_k` is set. Evaluation
        keeps the user's collator: as in the Goldfish reference, the reported validation loss counts every token."""
        if self.args.goldfish_k is None:
            return self.data_collator
        return GoldfishCollator(self.data_collator, self.args.goldfish_k, self.args.goldfish_context_width)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # A call that does not resume continues training the current weights: its batches and noise must be fresh
        # draws (the accountant composes its steps with the earlier ones as independent), not a replay of the first
        # call's. A resumed call takes the key of its checkpoint in `_load_from_checkpoint`.
        if not resume_from_checkpoint:
            self._sampling_call = self._next_sampling_call
            self._call_start_step = 0  # the Trainer restarts its step count (a resume sets it from the checkpoint)
        self._next_sampling_call = max(self._next_sampling_call, self._sampling_call) + 1
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._non_private_steps = self.non_private_steps()
            self._call_start_step = self.state.global_step

    def non_private_steps(self) -> int:
        """Optimizer steps this run trained without DP-SGD (`dp_clip_norm` unset), over its train() calls and the
        checkpoints it resumed from: the training data took part in them without clipping or noise, so no finite
        epsilon holds for it ([`privacy_spent`] then reports inf)."""
        current = 0
        if self.args.dp_clip_norm is None:
            current = max(0, self.state.global_step - self._call_start_step)
        return self._non_private_steps + current

    def sampling_seed(self) -> int:
        """Seed of the DP-SGD Poisson sampling. By default a secret drawn once per Trainer from the OS randomness: the
        accountant's amplification by subsampling assumes nobody knows which steps used a record, and the training
        seeds are public (configuration, Flower run config). With `dp_noise_seed` set (reproducible runs, no privacy
        against whoever knows it) it is derived from that seed, so runs and resumes are bit-identical."""
        if self.args.dp_noise_seed is not None:
            base = derive_seed("dp-sgd-sampling", self.args.dp_noise_seed) % 2**63
        else:
            if self._secret_sampling_seed is None:
                import secrets

                self._secret_sampling_seed = secrets.randbits(63)
            base = self._secret_sampling_seed
        # a later train() call on the same object (key > 0) draws other batches than the first
        return base if self._sampling_call == 0 else derive_seed("dp-sgd-sampling-call", base, self._sampling_call) % 2**63

    def get_train_dataloader(self):
        if self.args.dp_clip_norm is None:
            user_collator = self.data_collator
            self.data_collator = self._train_collator()
            try:
                return super().get_train_dataloader()
            finally:
                self.data_collator = user_collator
        import datasets

        dataset = self.train_dataset
        collator = self._train_collator()
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="Training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="Training")
        collate = _EmptyBatchCollator(collator, dataset)
        if len(dataset) >= 2:  # a collator that merges examples into fewer rows is refused before any step
            collate([dataset[0], dataset[1]])
        sampler = PoissonBatchSampler(len(dataset), self.sample_rate, seed=self.sampling_seed())
        # The batches are drawn in this process (the sampler); workers only read and collate them, seeded as the
        # Trainer seeds its own loader's workers, so the batches and a resume are the same with or without workers.
        args = self.args
        workers = {}
        if args.dataloader_num_workers > 0:
            workers = {
                "prefetch_factor": args.dataloader_prefetch_factor,
                "persistent_workers": args.dataloader_persistent_workers,
                "multiprocessing_context": args.dataloader_multiprocessing_context,
            }
        return _PoissonDataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=args.dataloader_num_workers,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
            **workers,
        )

    def noise_generator(self, device: torch.device) -> torch.Generator:
        """The generator of this step's DP noise: secret by default, or derived from `(dp_noise_seed, global_step)`."""
        if self.args.dp_noise_seed is not None:
            gen = torch.Generator(device=device)
            if self._sampling_call == 0:
                seed = derive_seed("dp-sgd-noise", self.args.dp_noise_seed, self.state.global_step)
            else:  # a later train() call: noise independent of the first call's at the same global step
                seed = derive_seed("dp-sgd-noise", self.args.dp_noise_seed, self.state.global_step, self._sampling_call)
            return gen.manual_seed(seed)
        if self._secret_noise is None or self._secret_noise.device != torch.device(device):
            self._secret_noise = secret_noise_generator(device)
        return self._secret_noise

    def _epsilon(self) -> float:
        if self.non_private_steps():  # the data was trained on without DP-SGD: no finite epsilon holds
            return math.inf
        return self.accountant.get_epsilon(self.args.dp_delta)

    def privacy_spent(self) -> dict[str, float]:
        """`{"epsilon", "delta", "dp_steps"}` for the steps taken so far: epsilon is inf without noise, and when any
        step of the run trained without DP-SGD ([`non_private_steps`], e.g. `dp_clip_norm` unset); 0.0 before any
        step."""
        return {
            "epsilon": self._epsilon(),
            "delta": self.args.dp_delta,
            "dp_steps": self.accountant.steps,
        }

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.dp_clip_norm is None:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        unused = sorted(k for k, v in inputs.items() if k not in DP_SGD_INPUTS and isinstance(v, torch.Tensor))
        if unused:  # the model would take them in a plain step; the per-sample step would train without them
            raise ValueError(
                f"DP-SGD (--dp_clip_norm): the training batch has model input(s) {unused} that the per-sample step "
                f"does not pass to the model (it takes {list(DP_SGD_INPUTS)}): each sample's gradient would be that of "
                "another forward than the model's own. Drop those columns from the train dataset (or the collator), "
                "or train without --dp_clip_norm."
            )
        unwrapped = self.accelerator.unwrap_model(model)
        grads, losses = dp_gradient(
            unwrapped,
            inputs["input_ids"],
            inputs["labels"],
            self.args.dp_clip_norm,
            self.args.dp_noise_multiplier,
            expected_batch_size=self.expected_batch_size,
            attention_mask=inputs.get("attention_mask"),
            generator=self.noise_generator(inputs["input_ids"].device),
            position_ids=inputs.get("position_ids"),
        )
        params = dict(unwrapped.named_parameters())
        for name, g in grads.items():
            p = params[name]
            p.grad = g.to(p.dtype) if p.grad is None else p.grad + g.to(p.dtype)
        self.accountant.step(self.sample_rate, self.args.dp_noise_multiplier, 1)
        if losses.numel() == 0:
            return torch.zeros((), device=inputs["input_ids"].device)
        return losses.mean().detach()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.args.dp_clip_norm is not None and "loss" in logs:
            eps = self._epsilon()
            logs = {**logs, "dp_epsilon": eps if math.isfinite(eps) else float("inf")}
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        # The accountant is written with a checkpoint's model, before `trainer_state.json` (the file that marks a
        # checkpoint complete, see hf_ext.utils.resume): a save killed in between leaves a folder resume skips, never a
        # complete-looking checkpoint without its privacy accounting.
        from ..utils.io import atomic_write_json
        from ..utils.resume import checkpoint_being_saved

        folder = checkpoint_being_saved(self, output_dir, _internal_call)
        if folder is None:
            return

        atomic_write_json(
            os.path.join(folder, ACCOUNTANT_FILE),
            {
                **self.accountant.state_dict(),
                "sampling_call": self._sampling_call,
                "non_private_steps": self.non_private_steps(),
            },
        )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from ..utils.resume import refuse_weights_only_checkpoint

        refuse_weights_only_checkpoint(resume_from_checkpoint, "resume_from_checkpoint")  # before anything is restored
        path = os.path.join(resume_from_checkpoint, ACCOUNTANT_FILE)
        saved_step = _checkpoint_global_step(resume_from_checkpoint)
        if self.args.dp_clip_norm is not None and os.path.isfile(path):
            _refuse_non_private_checkpoint(resume_from_checkpoint, path, saved_step)  # before anything is restored
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._call_start_step = saved_step
        if not os.path.isfile(path):
            if self.args.dp_clip_norm is not None:
                raise ValueError(
                    f"{resume_from_checkpoint} has no {ACCOUNTANT_FILE}: resuming DP-SGD from it would restart the "
                    "privacy accounting at 0 steps and under-report epsilon. Resume from a checkpoint PrivateTrainer "
                    "wrote (it holds the file), or start a fresh run."
                )
            return
        with open(path) as fh:
            state = json.load(fh)
        self.accountant.load_state_dict(state)
        saved = state.get("non_private_steps")
        if is_int(saved) and saved >= 0:
            self._non_private_steps = int(saved)
        else:  # a checkpoint from before the count: steps the accountant does not hold were not DP-SGD steps
            self._non_private_steps = max(0, saved_step - self.accountant.steps)
        call = state.get("sampling_call", 0)
        self._sampling_call = call if isinstance(call, int) and not isinstance(call, bool) and call >= 0 else 0
        self._next_sampling_call = max(self._next_sampling_call, self._sampling_call + 1)


def _checkpoint_global_step(checkpoint: str) -> int:
    """The `global_step` of `checkpoint`'s `trainer_state.json` (0 when it cannot be read)."""
    try:
        with open(os.path.join(checkpoint, "trainer_state.json")) as fh:
            step = json.load(fh).get("global_step", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return int(step) if is_int(step) and step > 0 else 0


def _refuse_non_private_checkpoint(checkpoint: str, accountant_path: str, saved_step: int) -> None:
    """Refuse (`ValueError`) to continue DP-SGD from `checkpoint` when some of its steps trained without DP-SGD (its
    `non_private_steps`, or, in a file written before that count, steps its accountant does not hold): the data was
    used without clipping or noise, no finite epsilon holds, and the accountant would report one for the DP steps
    only."""
    with open(accountant_path) as fh:
        state = json.load(fh)
    count = state.get("non_private_steps") if isinstance(state, dict) else None
    if not (is_int(count) and count >= 0):
        history = state.get("history", []) if isinstance(state, dict) else []
        accounted = sum(int(h[2]) for h in history if isinstance(h, list | tuple) and len(h) == 3 and is_int(h[2]))
        count = max(0, saved_step - accounted)
    if count:
        raise ValueError(
            f"resume_from_checkpoint: {checkpoint} trained {count} of its {saved_step} steps without DP-SGD "
            "(dp_clip_norm unset): the training data took part in them without clipping or noise, so no finite "
            "epsilon holds for it, and resuming with --dp_clip_norm would report an epsilon for the DP-SGD steps "
            "only. Start a fresh DP-SGD run (from a model that has not been trained on this data without DP), or "
            "resume without --dp_clip_norm."
        )


class _PoissonDataLoader(DataLoader):
    """A `DataLoader` over a [`PoissonBatchSampler`] that forwards the `Trainer`'s `set_epoch` to the sampler."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def _collator_name(collator) -> str:
    """The user's collator behind hf_ext's and transformers' wrappers (Goldfish, removed columns), by name."""
    for _ in range(4):
        inner = getattr(collator, "base_collator", None) or getattr(collator, "data_collator", None)
        if inner is None:
            break
        collator = inner
    return getattr(collator, "__name__", type(collator).__name__)


class _EmptyBatchCollator:
    """Collates like `collator`, and turns an empty Poisson batch into zero-row tensors of the right width.

    A batch without a `labels` tensor is refused (`ValueError`, naming the collator): DP-SGD differentiates each
    row's loss over its labels (it used to fail at the first step with a bare `KeyError: 'labels'`).
    A batch whose `input_ids` do not have one row per example is refused (`ValueError`): DP-SGD clips per row, and
    the accountant's sensitivity (one example moves the sum by at most the clip norm) holds only for one example per
    row (a padding-free collator that packs the batch into one row doubles it and more)."""

    def __init__(self, collator, dataset):
        self.collator = collator
        self.dataset = dataset
        self._template = None

    def __call__(self, features):
        if len(features):
            batch = self.collator(features)
            ids = batch.get("input_ids") if hasattr(batch, "get") else None
            rows = ids.shape[0] if isinstance(ids, torch.Tensor) and ids.dim() >= 1 else None
            if rows != len(features):
                got = "no `input_ids` tensor" if rows is None else f"{rows} row(s) of `input_ids`"
                raise ValueError(
                    f"DP-SGD (--dp_clip_norm): the data collator {_collator_name(self.collator)} turned a Poisson batch "
                    f"of {len(features)} examples into {got}. DP-SGD clips each row's gradient as one example's, and "
                    "the accountant's epsilon holds only when every row is one training example: a padding-free "
                    "collator such as DataCollatorWithFlattening packs the batch into one row, so one example could "
                    "move the clipped gradient by twice the clip norm and the reported epsilon would be too small. "
                    "Use a collator that returns one row per example (default_data_collator, "
                    "DataCollatorWithPadding, DataCollatorForLanguageModeling), or train without --dp_clip_norm."
                )
            labels = batch.get("labels")
            if not isinstance(labels, torch.Tensor):
                raise ValueError(
                    f"DP-SGD (--dp_clip_norm): the data collator {_collator_name(self.collator)} returned a batch "
                    f"without a `labels` tensor (keys: {sorted(batch.keys())}). DP-SGD differentiates each example's "
                    "next-token loss over its `labels` (-100 where no loss is taken): add a `labels` column to the "
                    "train dataset, or use a collator that sets them (e.g. DataCollatorForLanguageModeling(tokenizer, "
                    "mlm=False))."
                )
            return batch
        if self._template is None:
            one = self.collator([self.dataset[0]])
            self._template = {k: v[:0] for k, v in one.items() if isinstance(v, torch.Tensor)}
        return {k: v.clone() for k, v in self._template.items()}
