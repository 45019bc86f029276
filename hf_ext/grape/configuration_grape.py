"""`GrapeConfig`: `TrainingArguments` plus the data-mixture reweighting settings."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..utils.checks import store_python_scalars
from .rules import GRAPE_VARIANTS, STEP_SIZE_CONVENTIONS

REWEIGHT_METHODS = (*GRAPE_VARIANTS, "doge", "doremi", "uniform", "fixed")


@dataclass
class GrapeConfig(TrainingArguments):
    """Training arguments for [`GrapeTrainer`].

    Defaults follow the GRAPE code's ClimbLab configuration where it is specific (step sizes 1.5 / 5, task smoothing
    1e-3, no domain smoothing, EMA beta 0.9, reweighting every 100 steps, minibatches of 8) and its dataclass default
    for the reweighting batch (`reweight_batch_size=16`, `reweight_mini_batch_size=8`).

    As in the GRAPE code (`tgt_reweight_step` / `domain_reweight_step`), the mixture and target gradients (`g_alpha`,
    `g_tgt`) are each the mean of `reweight_batch_size // reweight_mini_batch_size` gradients, each over a batch of
    `per_device_train_batch_size` sequences drawn from the training (target) mixture and clipped to `max_grad_norm`
    before the mean (defaults with 16 sequences per device: 2 x 16 = 32 sequences; the ClimbLab config, 32 // 8 with 16
    per device: 4 x 16 = 64). Each per-domain gradient `g_k` and per-task gradient `h_n` is over one minibatch of
    `reweight_mini_batch_size` sequences. (Before 2026-12-04 `g_alpha` / `g_tgt` used batches of
    `reweight_mini_batch_size` sequences instead: a noisier estimate, which changed how far the same step sizes move
    the weights; see docs/grape.md.)
    """

    domain_column: str = field(
        default="domain", metadata={"help": "Column of the training dataset naming each example's source domain."}
    )
    text_column: str = field(
        default="text", metadata={"help": "Raw-text column used when a dataset has no `input_ids` yet (it is packed)."}
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per block when packing raw-text datasets."})
    reweight_method: str = field(
        default="grape",
        metadata={
            "help": "How the mixture is chosen: grape | grape_ema | grape_gap (GRAPE variants), doge (the GRAPE "
            "repository's DoGE baseline: GRAPE's domain step towards the fixed task mixture), doremi (needs a "
            "reference model), uniform, or fixed (weights from --mixture_file)."
        },
    )
    reweight_domains_every: int = field(
        default=100, metadata={"help": "Update the domain weights after every N optimizer steps (0 = never)."}
    )
    reweight_tasks_every: int = field(
        default=100, metadata={"help": "Update the task weights after every N optimizer steps (0 = never)."}
    )
    reweight_batch_size: int = field(
        default=16,
        metadata={
            "help": "Sets how many gradients the training-mixture and target-mixture gradients average at each update: "
            "reweight_batch_size // reweight_mini_batch_size, each over a batch of --per_device_train_batch_size "
            "sequences (as the GRAPE code; see docs/grape.md)."
        },
    )
    reweight_mini_batch_size: int = field(
        default=8,
        metadata={
            "help": "Sequences in each per-domain and per-task minibatch at an update; also the divisor of "
            "--reweight_batch_size."
        },
    )
    domain_step_size: float = field(
        default=1.5,
        metadata={
            "help": "mu_train: step of the domain-weight update of grape* and doge (see --step_size_convention)."
        },
    )
    task_step_size: float = field(
        default=5.0, metadata={"help": "mu_tgt: step of the task-weight update (see --step_size_convention)."}
    )
    step_size_convention: str = field(
        default="absolute",
        metadata={
            "help": "absolute: the step is mu (GRAPE code); lr_scaled: the step is learning_rate / mu (older MAP code)."
        },
    )
    task_smoothing: float = field(default=1e-3, metadata={"help": "Smoothing of task weights towards uniform."})
    domain_smoothing: float = field(default=0.0, metadata={"help": "Smoothing of domain weights towards uniform."})
    ema_beta: float = field(default=0.9, metadata={"help": "EMA coefficient of the task/domain losses (grape_ema)."})
    doremi_eta: float = field(default=1.0, metadata={"help": "DoReMi step size on the excess losses."})
    doremi_smoothing: float = field(default=1e-4, metadata={"help": "DoReMi smoothing of the domain weights."})
    reference_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reference model for DoReMi's excess loss (folder or hub id)."}
    )
    mixture_file: str | None = field(
        default=None,
        metadata={
            "help": "JSON mixture (as exported by GrapeTrainer) giving the fixed weights (reweight_method=fixed) or "
            "the initial weights (other methods)."
        },
    )
    mixture_key: str = field(
        default="final", metadata={"help": "Which weights of --mixture_file to use: final or average."}
    )
    samples_per_epoch: int | None = field(
        default=None, metadata={"help": "Sequences drawn per sampler epoch; default: the training set size."}
    )
    export_mixture_file: str = field(
        default="mixture.json", metadata={"help": "Where the final mixture JSON goes (relative to output_dir)."}
    )
    plot_file: str | None = field(
        default="mixture_weights.png",
        metadata={
            "help": "Figure of the weight trajectories (relative to output_dir; format from the extension: png, pdf, "
            "svg, ... as matplotlib writes them); empty to skip."
        },
    )

    def __post_init__(self):
        store_python_scalars(self, base=TrainingArguments)  # numpy numbers as Python ones: to_json_string() works
        self._validate_mixture_args()
        super().__post_init__()
        strategy = getattr(self, "train_sampling_strategy", "random")
        if strategy != "random":
            raise ValueError(
                f"train_sampling_strategy={strategy!r} would be ignored: GrapeTrainer draws every training sequence "
                "from its domain mixture (MixtureSampler, or the streaming mixture), which a length-grouped or "
                "sequential order would break. Leave train_sampling_strategy at 'random' (the mixture's draw is "
                "seeded by data_seed, else seed)."
            )

    def _validate_mixture_args(self) -> None:
        # the column names are read only when the trainer is built: an empty one used to pass the config
        if not isinstance(self.domain_column, str) or not self.domain_column:
            raise ValueError(
                f"domain_column must name the training dataset's domain column (e.g. the default 'domain'), got "
                f"{self.domain_column!r}."
            )
        if self.text_column is not None and (not isinstance(self.text_column, str) or not self.text_column):
            raise ValueError(
                f"text_column must name the raw-text column (e.g. the default 'text'; None with tokenized datasets "
                f"only), got {self.text_column!r}."
            )
        if self.reweight_method not in REWEIGHT_METHODS:
            raise ValueError(f"reweight_method must be one of {REWEIGHT_METHODS}, got {self.reweight_method!r}.")
        if self.step_size_convention not in STEP_SIZE_CONVENTIONS:
            raise ValueError(
                f"step_size_convention must be one of {STEP_SIZE_CONVENTIONS}, got {self.step_size_convention!r}."
            )
        for name in (
            "domain_step_size", "task_step_size", "doremi_eta", "task_smoothing", "domain_smoothing", "ema_beta",
            "doremi_smoothing",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {value!r}.")
        for name in ("reweight_domains_every", "reweight_tasks_every", "reweight_batch_size",
                     "reweight_mini_batch_size", "block_size"):  # fmt: skip
            if isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be an int, got {getattr(self, name)!r}.")
        for name in ("reweight_domains_every", "reweight_tasks_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int (0 disables the update), got {value!r}.")
        for name in ("reweight_batch_size", "reweight_mini_batch_size", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if self.block_size < 2:
            # a packed block of one token has no next token: GrapeTrainer refused the packed sources only after packing
            # (blaming their labels), and the recipe had already cleared the earlier run's results by then
            raise ValueError(
                f"block_size must be at least 2 tokens (one to read, one to predict) for packing raw text, got "
                f"{self.block_size}."
            )
        if self.reweight_batch_size % self.reweight_mini_batch_size:
            raise ValueError(
                f"reweight_batch_size ({self.reweight_batch_size}) must be a multiple of reweight_mini_batch_size "
                f"({self.reweight_mini_batch_size})."
            )
        for name in ("domain_step_size", "task_step_size", "doremi_eta"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value}.")
        if self.step_size_convention == "lr_scaled" and self.reweight_method in (*GRAPE_VARIANTS, "doge"):
            for name in ("domain_step_size", "task_step_size"):
                if getattr(self, name) == 0:
                    raise ValueError(f"step_size_convention='lr_scaled' divides the lr by {name}; set it > 0.")
        for name in ("task_smoothing", "domain_smoothing", "doremi_smoothing", "ema_beta"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}.")
        if self.mixture_key not in ("final", "average"):
            raise ValueError(f"mixture_key must be 'final' or 'average', got {self.mixture_key!r}.")
        if self.samples_per_epoch is not None and (
            isinstance(self.samples_per_epoch, bool)
            or not isinstance(self.samples_per_epoch, int)
            or self.samples_per_epoch <= 0
        ):
            raise ValueError(f"samples_per_epoch must be a positive int (or None), got {self.samples_per_epoch!r}.")
        # file names as `str` (os.PathLike too): the arguments are saved as JSON
        if isinstance(self.export_mixture_file, os.PathLike):
            self.export_mixture_file = os.fspath(self.export_mixture_file)
        if isinstance(self.plot_file, os.PathLike):
            self.plot_file = os.fspath(self.plot_file)
        if not isinstance(self.export_mixture_file, str) or not self.export_mixture_file:
            raise ValueError(
                f"export_mixture_file must be a file name, e.g. mixture.json, got {self.export_mixture_file!r}."
            )
        for name in ("export_mixture_file", "plot_file"):
            value = getattr(self, name)
            # joined with the output folder of each run (one per method in a comparison): an absolute path, or one
            # leaving that folder, made every run write the same file, each overwriting the previous one's
            if (
                isinstance(value, str)
                and value
                and (os.path.isabs(value) or os.path.normpath(value).split(os.sep)[0] == "..")
            ):
                raise ValueError(
                    f"{name}={value!r} must be a file name relative to output_dir (e.g. "
                    f"{os.path.basename(value) or 'mixture.json'!r}, or a sub-folder such as 'weights/"
                    f"{os.path.basename(value) or 'mixture.json'}'): it is written inside each run's output_dir."
                )
            # the file is written to output_dir joined with the value as given: a folder ("weights/", ".") or a path
            # through a folder and back ("sub/../mixture.json", when sub does not exist) failed only after training
            parts = value.replace(os.sep, "/").split("/") if isinstance(value, str) and value else []
            if parts and (".." in parts or parts[-1] in ("", ".")):
                raise ValueError(
                    f"{name}={value!r} must name a file inside output_dir, without '..' and not a folder (e.g. "
                    f"'{'mixture.json' if name == 'export_mixture_file' else 'mixture_weights.png'}' or "
                    f"'weights/{'mixture.json' if name == 'export_mixture_file' else 'mixture_weights.png'}')."
                )
        if self.plot_file is not None and not isinstance(self.plot_file, str):
            raise ValueError(
                f"plot_file must be a file name (e.g. mixture_weights.png), or empty / None to skip the plot, got "
                f"{self.plot_file!r}."
            )
        if self.plot_file:
            check_plot_format(self.plot_file, "plot_file")
            if os.path.normpath(self.plot_file) == os.path.normpath(self.export_mixture_file):
                raise ValueError(
                    f"plot_file and export_mixture_file both name {self.plot_file!r}: the plot would overwrite the "
                    "exported mixture; give them different names (e.g. mixture_weights.png and mixture.json)."
                )


def check_plot_format(path: str, arg: str) -> None:
    """Refuse a figure file whose extension matplotlib cannot write (no extension = png), and a pgf figure when the TeX
    system matplotlib's pgf backend needs (`rcParams["pgf.texsystem"]`) is not on PATH: the plot is saved at the end of
    training, where `Format 'txt' is not supported` (and `'xelatex' not found`) used to lose the run's final model and
    results."""
    ext = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    if ext == "png":
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    supported = FigureCanvasAgg.get_supported_filetypes()
    if ext not in supported:
        raise ValueError(
            f"{arg}={path!r}: matplotlib cannot write {ext!r} figures; use one of the extensions {sorted(supported)} "
            "(e.g. mixture_weights.png), or an empty value to skip the plot."
        )
    if ext == "pgf":
        # matplotlib's pgf backend measures text with a TeX system: without it the save fails at the end of training
        import shutil

        import matplotlib

        texsystem = matplotlib.rcParams["pgf.texsystem"]
        if shutil.which(texsystem) is None:
            raise ValueError(
                f"{arg}={path!r}: matplotlib writes pgf figures with a TeX system (rcParams['pgf.texsystem'] = "
                f"{texsystem!r}), and {texsystem!r} is not on PATH; install it (or set rcParams['pgf.texsystem'] to an "
                "installed one), or use another extension (e.g. mixture_weights.pdf or .svg), or an empty value to "
                "skip the plot."
            )
