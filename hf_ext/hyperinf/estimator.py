"""`InfluenceEstimator`: influence of training examples on a peft LoRA model's validation loss."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

from .gradients import (
    PaddingCollator,
    PerExampleGradients,
    check_adapter_in_forward,
    check_dataset,
    model_input_names,
    tracked_lora_parameters,
)
from .influence import METHODS, InfluenceConfig, InfluenceEngine

#: The `InfluenceConfig` options that only some methods read (the others: every method, or every method that inverts a
#: curvature; `tracin` ignores the damping, which the recipe passes to every method alike).
_METHOD_OPTIONS = {
    **dict.fromkeys(
        (
            "schulz_iterations",
            "schulz_init",
            "schulz_alpha",
            "schulz_tol",
            "schulz_order",
            "schulz_extra_damping",
            "schulz_dtype",
        ),
        ("hyperinf",),
    ),
    **dict.fromkeys(("lissa_iterations", "lissa_scale"), ("lissa",)),
    **dict.fromkeys(("exact_curvature", "max_exact_dim"), ("exact",)),
}


class InfluenceEstimator:
    """Data influence for peft LoRA models with HyperINF (Schulz's iteration on the generalized Fisher) or a baseline.

    Per-example gradients are taken over the LoRA matrices only (plus, by default, the output-projection weight of the
    adapter's `modules_to_save` copies, e.g. a classification head's) with `torch.func`, and streamed: only per-layer `d x d` (HyperINF) or `r x d` state is kept,
    never an `n x P` matrix. `fit` makes one pass over the training set; `scores` one pass over the evaluation set and
    one over the training set (DataInf: two, LiSSA: `lissa_iterations + 1`).

    Positive scores mean that up-weighting the training example *raises* the evaluation loss (harmful: sort
    descending to find mislabeled data); negative scores mean it helps (sort ascending to select data).

    Args:
        model (`torch.nn.Module`): a peft model with LoRA layers (e.g. from `peft.get_peft_model`), fine-tuned.
        method (`str`, *optional*, defaults to `"hyperinf"`): `"hyperinf"`, `"datainf"`, `"lissa"`, `"tracin"` or
            `"exact"`; see `InfluenceConfig`.
        batch_size (`int`, *optional*, defaults to 8): examples per vmapped per-example-gradient call.
        per_example_gradients (`str`, *optional*, defaults to `"vmap"`): `"vmap"` (`torch.func`) or `"loop"` (one
            backward per example, for models whose forward cannot be vmapped). `"vmap"` runs the model with eager
            attention, whose softmax transformers computes in float32 even in a float64 model: float64 scores then
            agree with a float64 reference to about 1e-7; `"loop"` keeps the model's attention (about 1e-14).
        modules_to_save (`str`, *optional*, defaults to `"output"`): which parameters of the adapter's
            `modules_to_save` copies are tracked: `"output"` only the weight of each copy's last linear layer (the
            head's output projection: `score.weight`, `classifier.weight`, RoBERTa's `out_proj.weight`; what the
            reference tracks), `"all"` every parameter (hidden `dense` layer and biases too), `"none"` none.
        adapter_name (`str`, *optional*): the adapter to attribute; defaults to the active one. It must be active
            (the forward pass must use it): call `model.set_adapter(adapter_name)` first. With several active
            adapters it must be given (a `ValueError` otherwise); the other active adapters' parameters are then held
            fixed, as the base model's.
        data_collator (`Callable`, *optional*): list of examples -> batch of tensors; default pads on the right
            (`labels` with -100) and gives a causal-LM example without `labels` its own `input_ids` as labels.
        device (`str` or `torch.device`, *optional*): where the curvature state lives; defaults to the model's device.
        progress (`bool`, *optional*, defaults to `False`): show tqdm bars for the passes over the data.
        distributed (`bool`, *optional*): data-parallel over torch.distributed's default group (a launch with
            `torchrun --nproc_per_node N` or `accelerate launch`). `None` (default): when torch.distributed is
            initialized with more than one process, with a warning that every process must then call `fit` and
            `scores` (a call on one rank only, e.g. scoring on the main process after DDP training, would wait in
            the first collective until the group's timeout: pass `False` there; `True` confirms, without it). Each process then computes the gradients of its own contiguous
            part of the training set (`Dataset.shard(world_size, rank, contiguous=True)`: rank 0 the first examples)
            and of the evaluation set; the example counts and the per-layer sums are all-reduced in float64 (every
            process fits the same solvers) and `scores` returns every training example's score, in dataset order, on
            every process (see `InfluenceEngine`'s `process_group`). Every process must pass the same datasets and
            hold the same model (checked: lengths, a digest of the examples' model inputs in order, and one of the
            tracked and trainable parameters). `False`: each process computes everything alone.
        **options: `InfluenceConfig` fields (`damping_scale`, `damping`, `schulz_iterations`, `schulz_init`,
            `schulz_alpha`, `schulz_tol`, `schulz_order`, `schulz_extra_damping`, `lissa_iterations`, `lissa_scale`,
            `exact_curvature`, `max_exact_dim`, `dtype`). An option that `method` does not read (`schulz_*` but for
            `"hyperinf"`, `lissa_*` but for `"lissa"`, `exact_curvature`/`max_exact_dim` but for `"exact"`) is a
            `ValueError` naming it, unless it has its default value.

    Example:

    ```python
    >>> estimator = InfluenceEstimator(peft_model, method="hyperinf").fit(train_dataset)
    >>> scores = estimator.scores(eval_dataset)  # np.ndarray, one score per training example
    >>> train_dataset = add_influence_column(train_dataset, scores)
    ```
    """

    def __init__(
        self,
        model: torch.nn.Module,
        method: str = "hyperinf",
        *,
        batch_size: int = 8,
        per_example_gradients: str = "vmap",
        modules_to_save: str = "output",
        adapter_name: str | None = None,
        data_collator: Callable | None = None,
        device: str | torch.device | None = None,
        progress: bool = False,
        distributed: bool | None = None,
        **options,
    ):
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        if data_collator is not None and not callable(data_collator):
            raise TypeError(
                f"`data_collator` must be a callable (list of examples -> batch of tensors) or None, got "
                f"{type(data_collator).__name__}."
            )
        unknown = set(options) - set(InfluenceConfig.__dataclass_fields__) - {"method"}
        if unknown or "method" in options:
            raise TypeError(
                f"Unknown option(s) {sorted(unknown or {'method'})}; valid ones are the fields of InfluenceConfig: "
                f"{sorted(set(InfluenceConfig.__dataclass_fields__) - {'method'})}."
            )
        unread = [
            name
            for name, value in options.items()
            if name in _METHOD_OPTIONS
            and method not in _METHOD_OPTIONS[name]
            and value != InfluenceConfig.__dataclass_fields__[name].default
        ]
        if unread:
            readers = "; ".join(f"`{name}` only by {' and '.join(_METHOD_OPTIONS[name])}" for name in unread)
            raise ValueError(
                f"method={method!r} does not read {', '.join(f'`{name}`' for name in unread)} (read {readers}): it "
                "would be ignored without a word. Drop it, or pass it with the method that reads it."
            )
        if distributed not in (None, True, False):
            raise TypeError(f"`distributed` must be None (automatic), True or False, got {distributed!r}.")
        initialized = dist.is_available() and dist.is_initialized()
        if distributed and not initialized:
            raise ValueError(
                "distributed=True but torch.distributed is not initialized: launch with `torchrun --nproc_per_node N` "
                "or `accelerate launch` and call `torch.distributed.init_process_group()` (or "
                "`accelerate.PartialState()`) before building the estimator, or leave `distributed=None`."
            )
        if distributed is None:
            distributed = initialized and dist.get_world_size() > 1
            if distributed:  # a call on one rank only (scoring on the main process after DDP training) would hang
                warnings.warn(
                    f"InfluenceEstimator runs data-parallel over the {dist.get_world_size()} processes of "
                    "torch.distributed's default group (distributed=None): every process must call fit and scores "
                    "with the same model and datasets; a call on one rank only waits in the first collective until "
                    "the group's timeout. Pass distributed=True to confirm (no warning), or distributed=False to "
                    "compute everything in this process.",
                    UserWarning,
                    stacklevel=2,
                )
        self.config = InfluenceConfig(method=method, **options)
        self.config.validate()
        self.model = model
        self.tracked = tracked_lora_parameters(model, adapter_name, modules_to_save)
        self.gradients = PerExampleGradients(
            model,
            self.tracked,
            batch_size=batch_size,
            method=per_example_gradients,
            data_collator=data_collator,
            dtype=self.config.dtype,
        )
        self.device = torch.device(device) if device is not None else self.gradients._device()
        self.progress = progress
        self.engine = InfluenceEngine(
            self.config,
            {m.name: m.shape for m in self.tracked},
            device=self.device,
            process_group=dist.group.WORLD if distributed else None,
        )
        self.train_dataset = None
        self._train_part = None
        self.train_shard = range(0)  # the indices of the training set this process computes gradients for
        self._num_train = 0
        self._fit_fingerprint: dict[str, str | None] = {}

    @property
    def distributed(self) -> bool:
        """Whether `fit` and `scores` run data-parallel over torch.distributed's default group."""
        return self.engine.process_group is not None

    def _shard(self, dataset):
        """This process's contiguous part of `dataset` and its indices (the whole of it when not distributed)."""
        n, world, rank = len(dataset), self.engine.world_size, self.engine.rank
        if world == 1:
            return dataset, range(n)
        size, extra = divmod(n, world)
        start = rank * size + min(rank, extra)
        indices = range(start, start + size + (1 if rank < extra else 0))
        if len(indices) and hasattr(dataset, "shard") and hasattr(dataset, "column_names"):  # a datasets.Dataset
            part = dataset.shard(num_shards=world, index=rank, contiguous=True)
            if len(part) != len(indices):  # the contiguous split documented by datasets
                raise RuntimeError(f"Dataset.shard gave {len(part)} examples to rank {rank}, expected {len(indices)}.")
        else:
            part = _Rows(dataset, indices)
        return part, indices

    def _agree(self, what: str, values: list[int]) -> None:
        """Refuse, on every process, when the processes passed different `values` (dataset lengths, model digest)."""
        engine = self.engine
        mine = torch.tensor(values, dtype=torch.int64, device=engine.device)
        every = [torch.empty_like(mine) for _ in range(engine.world_size)]
        dist.all_gather(every, mine, group=engine.process_group)
        if any(not torch.equal(other, every[0]) for other in every):
            raise ValueError(
                f"The {engine.world_size} processes passed different {what} (per rank: "
                f"{[other.tolist() for other in every]}): data-parallel influence splits one training set between "
                "them, so every process must load the same model (same fine-tuned weights; a LoRA initialised "
                "without a common seed differs) and pass the same datasets, in the same order. Pass "
                "distributed=False to compute everything in each process instead."
            )

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def num_tracked_parameters(self) -> int:
        """Number of gradient entries per example (the `P` of an `n x P` matrix that is never built)."""
        return sum(m.numel for m in self.tracked)

    @property
    def layer_info(self) -> dict[str, dict]:
        """Per tracked matrix: damping, and for HyperINF the Schulz scale, iterations, final residual, convergence;
        `{"skipped": True}` for a matrix left out (zero gradient for every training example, see `skipped_layers`)."""
        return {name: dict(layer.info) for name, layer in self.engine.layers.items()}

    @property
    def skipped_layers(self) -> list[str]:
        """Tracked matrices the last `fit` left out: their gradient is zero for every training example (a module whose
        output does not reach the loss), so they add exactly 0 to every score; `fit` warns naming them."""
        return self.engine.skipped_layers

    @property
    def timings(self) -> dict[str, float]:
        """Wall-clock seconds of the last `fit` (`fit_s`) and `scores` (`scores_s`) calls."""
        return dict(self.engine.timings)

    def state_nbytes(self) -> int:
        """Bytes of fitted per-layer state (inverses, Cholesky factors): constant in the number of examples."""
        total = 0
        for layer in self.engine.layers.values():
            if layer.solver is not None:
                total += layer.solver.numel() * layer.solver.element_size()
        return total

    def _source(self, dataset, desc: str, offset: int = 0, first=None):
        def source():
            return self.gradients.iterate(dataset, progress=self.progress, desc=desc, offset=offset, first=first)

        return source

    def fit(self, train_dataset) -> InfluenceEstimator:
        """Accumulate the per-layer damping statistics and curvature over `train_dataset` and invert it.

        Args:
            train_dataset (`datasets.Dataset` or `list[dict]`): tokenized training examples (`input_ids`, and the
                `labels` the model was fine-tuned on; optional for causal LMs), in the order of the returned scores.
                It is kept by reference and read again by `scores`, so it must not change in between (a list whose
                length changed is refused by `scores`; `fit` again after changing it). The model's tracked and
                trainable parameters must not change either until `scores` (`scores` refuses them; see there).

        Returns:
            `InfluenceEstimator`: `self`.
        """

        def check():
            check_dataset(train_dataset, "train_dataset", self.model)
            tracked = {m.name for m in self.tracked}
            names = [name for name, param in self.model.named_parameters() if name in tracked or param.requires_grad]
            return self._fingerprint(names), self._dataset_digest(train_dataset) if self.distributed else 0

        fingerprint, data_digest = self.engine.run_collectively(check, "Checking `train_dataset` and the model")
        if self.distributed:
            digest = hashlib.blake2b(repr(sorted(fingerprint.items())).encode(), digest_size=7).digest()
            self._agree(
                "training sets (lengths, or the model inputs of the examples in order) or models (digest)",
                [len(train_dataset), data_digest, int.from_bytes(digest, "big")],
            )
        part, indices = self.engine.run_collectively(lambda: self._shard(train_dataset), "Sharding `train_dataset`")
        self.engine.fit(self._source(part, "fit: train gradients", indices.start, train_dataset[0]))
        self.train_dataset = train_dataset
        self.train_shard = indices
        self._train_part = (part, indices.start, train_dataset[0])
        self._num_train = len(train_dataset)
        self._fit_fingerprint = fingerprint
        return self

    def _fingerprint(self, names: list[str]) -> dict[str, str | None]:
        """Per parameter of `names`: a digest of its shape, dtype and bytes, `None` for a name the model no longer
        has. `fit` takes it of the tracked and trainable parameters only (LoRA matrices, `modules_to_save` copies):
        one hash over each, small next to a pass of per-example gradients."""
        params = dict(self.model.named_parameters())
        out: dict[str, str | None] = {}
        for name in names:
            param = params.get(name)
            if param is None:
                out[name] = None
                continue
            data = param.detach()
            digest = hashlib.blake2b(f"{tuple(data.shape)}|{data.dtype}".encode(), digest_size=16)
            digest.update(data.contiguous().reshape(-1).view(torch.uint8).cpu().numpy())
            out[name] = digest.hexdigest()
        return out

    def _check_model_unchanged(self) -> None:
        """Refuse `scores` when the model no longer is the one `fit` saw: the adapter `fit` tracked is no longer
        active, or a tracked or trainable parameter changed value, shape or dtype (further fine-tuning, a checkpoint
        loaded into the same model): the scores would mix the fitted curvature and damping with new gradients."""
        check_adapter_in_forward(self.model, self.tracked)
        now = self._fingerprint(list(self._fit_fingerprint))
        changed = [name for name, digest in self._fit_fingerprint.items() if now.get(name) != digest]
        if changed:
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            raise ValueError(
                f"`model`'s parameters changed since `fit` ({changed[0]!r}{more}: value, shape or dtype, e.g. further "
                "fine-tuning or another checkpoint loaded into the same model): the fitted curvature and damping "
                "belong to the weights `fit` saw, while `scores` takes the gradients from the current ones, so the "
                "scores would mix the two and match neither. Call `fit(train_dataset)` again on the current model "
                "(or restore the weights `fit` saw)."
            )

    def scores(self, eval_dataset) -> np.ndarray:
        """Influence of each training example on the mean loss over `eval_dataset`.

        Args:
            eval_dataset (`datasets.Dataset` or `list[dict]`): tokenized evaluation examples.

        Returns:
            `np.ndarray`: float64 array of shape `(len(train_dataset),)`; positive = harmful.

        Raises:
            `ValueError`: the training set passed to `fit` changed length since (e.g. a list appended to): the fitted
                curvature and damping belong to the old set; call `fit` again. Likewise when the model changed since
                `fit`: a tracked or trainable parameter (LoRA matrices, `modules_to_save` copies) has other values,
                shape or dtype (more fine-tuning, a checkpoint loaded into the model; `fit` again), or the fitted
                adapter is no longer active (`model.set_adapter` back to it, or a new estimator for the other).
        """
        if self.train_dataset is None:
            raise RuntimeError("Call `fit(train_dataset)` before `scores(eval_dataset)`.")
        data_digest = self.engine.run_collectively(
            lambda: self._check_scores(eval_dataset), "Checking `eval_dataset` and the model"
        )
        if self.distributed:
            self._agree(
                "evaluation sets (lengths, or the model inputs of the examples in order)",
                [len(eval_dataset), data_digest],
            )
        engine = self.engine
        engine.train_source = self._source(
            self._train_part[0], f"{self.method}: train gradients", *self._train_part[1:]
        )
        part, indices = self.engine.run_collectively(lambda: self._shard(eval_dataset), "Sharding `eval_dataset`")
        values = engine.scores(self._source(part, "eval gradients", indices.start, eval_dataset[0]))
        return values.detach().to("cpu", torch.float64).numpy()

    def _check_scores(self, eval_dataset) -> None:
        train = self.train_dataset
        if len(train) != self._num_train:
            raise ValueError(
                f"`train_dataset` passed to `fit` had {self._num_train} examples but has {len(train)} now: it changed "
                "after `fit` (it is kept by reference), so the fitted curvature and damping belong to another set and "
                "the scores to neither. Call `fit(train_dataset)` again on the current set (or pass `fit` a copy, "
                "e.g. `list(train_dataset)`, to keep the fitted one)."
            )
        self._check_model_unchanged()
        check_dataset(eval_dataset, "eval_dataset", self.model)
        return self._dataset_digest(eval_dataset) if self.distributed else 0

    def _dataset_digest(self, dataset) -> int:
        """A 56-bit digest of the model inputs of every example of `dataset`, in order (data-parallel runs compare it
        across the ranks: each rank differentiates its contiguous part of *its* dataset, so a set shuffled or sampled
        differently on each rank, e.g. `Dataset.shuffle()` without a seed, scored some examples twice, others never,
        and put scores at the wrong indices, with lengths that agree). It reads every example once (no forward pass),
        over the columns the model's forward takes (`input_ids`, `labels`, ...): numbers and arrays by value, strings
        by text, other objects by type only."""
        collator = self.gradients.data_collator
        names = sorted(
            collator.input_names if isinstance(collator, PaddingCollator) else model_input_names(self.model)
        )
        digest = hashlib.blake2b(digest_size=7)
        for i in range(len(dataset)):
            example = dataset[i]
            for key in names:
                digest.update(f"|{key}=".encode())
                digest.update(_value_bytes(example.get(key)))
        return int.from_bytes(digest.digest(), "big")


def _value_bytes(value) -> bytes:
    """`value` (a dataset cell) as bytes that do not depend on the process: numbers and arrays by value (int64 or
    float64, so a list and a tensor of the same ids agree), strings by text, other objects by type only."""
    if value is None or isinstance(value, (str, bytes)):
        return repr(value).encode()
    try:
        if isinstance(value, torch.Tensor):  # bfloat16 has no numpy dtype
            value = value.detach().cpu()
            value = value.double() if value.is_floating_point() else value
        array = np.asarray(value)
    except (TypeError, ValueError):  # ragged nested lists
        return repr(type(value)).encode()
    if array.dtype.kind not in "biuf":
        return repr(type(value)).encode()
    array = np.ascontiguousarray(array, dtype=np.float64 if array.dtype.kind == "f" else np.int64)
    return f"{array.dtype.kind}{array.shape}".encode() + array.tobytes()


class _Rows:
    """The examples `indices` of a sequence of examples (a list of dicts): a process's part, read lazily."""

    def __init__(self, dataset, indices: range):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


def add_influence_column(dataset, scores, column_name: str = "influence"):
    """Return `dataset` with the influence scores as a new column.

    Args:
        dataset (`datasets.Dataset`): the training set the scores were computed for (same order).
        scores (`np.ndarray` or `Sequence[float]`): one score per row.
        column_name (`str`, *optional*, defaults to `"influence"`): name of the new column.
    """
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        raise TypeError(f"`dataset` must be a datasets.Dataset, got {type(dataset).__name__}.")
    if not isinstance(column_name, str) or not column_name:
        # None became a column named "None"; an int or a tuple failed inside pyarrow ("expected bytes, int found")
        raise TypeError(f"`column_name` must be a non-empty str (e.g. 'influence'), got {column_name!r}.")
    values = np.asarray(scores, dtype=np.float64)
    if sum(size != 1 for size in values.shape) > 1:  # e.g. one row of scores per evaluation example
        raise ValueError(
            f"`scores` must hold one score per row of `dataset` (1-D), got shape {values.shape}; for scores against "
            "several evaluation sets, add one column per set (or their mean, `scores.mean(axis=0)`)."
        )
    values = values.reshape(-1)
    if values.shape[0] != len(dataset):
        raise ValueError(
            f"`scores` has {values.shape[0]} values but `dataset` has {len(dataset)} rows; pass the scores returned by "
            "`InfluenceEstimator.scores` for this training set."
        )
    if column_name in dataset.column_names:
        raise ValueError(f"`dataset` already has a column {column_name!r}; pass another `column_name`.")
    return dataset.add_column(column_name, values.tolist())
