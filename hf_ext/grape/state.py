"""Mixture state (weights, running averages, EMA losses, update counts, sampler schedule) and its files.

Checkpoints hold `grape_state.safetensors` (tensors) and `grape_state.json` (names, counts, schedule, trajectory and
the `reweight_method` of the run that wrote them, which a resume checks: `saved_reweight_method`).
The final mixture is exported as a small JSON file that `load_mixture` reads back for a fixed-weight run.
"""

from __future__ import annotations

import itertools
import json
import numbers
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..utils.io import atomic_open

#: Source of `MixtureState.schedule_version` tokens: unique over the process, so a state loaded from a checkpoint (or
#: any other state object) never reuses the token a sampler has cached.
_SCHEDULE_VERSIONS = itertools.count()

STATE_TENSORS = "grape_state.safetensors"
STATE_JSON = "grape_state.json"
MIXTURE_FORMAT = "hf_ext.grape.mixture"
#: The tensors `MixtureState.save` writes into `STATE_TENSORS`.
STATE_TENSOR_NAMES = (
    "domain_weights",
    "task_weights",
    "domain_weight_sum",
    "task_weight_sum",
    "domain_ema_loss",
    "task_ema_loss",
    "schedule_weights",
)


def is_weight_number(value) -> bool:
    """Whether `value` is a real number usable as a weight: an int or float (also a numpy or 0-d torch number), not a
    bool (`True` would be read as 1) and not a string (`"0.5"` would be parsed)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0:
        dtype = value.dtype
        if isinstance(value, torch.Tensor):
            return dtype != torch.bool and not dtype.is_complex
        return dtype.kind in "iuf"
    return False


def check_weight_vector(weights, n: int, arg: str) -> torch.Tensor:
    """`weights` as a float64 vector of `n` entries (not normalised), refused with a `ValueError` naming `arg` unless
    they are numbers (no bools or strings), finite and non-negative with a positive sum (an empty vector for `n=0`).

    A NaN, negative or all-zero weight vector used to be taken as is: the sampler then drew the first domain only (NaN,
    all zero) or never drew a domain with a negative weight, and the NaN was exported.
    """
    if isinstance(weights, torch.Tensor):
        if weights.dtype == torch.bool or weights.dtype.is_complex:
            raise ValueError(f"{arg} must hold real numbers, got a {weights.dtype} tensor.")
        w = weights.detach().to("cpu", torch.float64).clone()
    elif isinstance(weights, np.ndarray):
        if weights.dtype.kind not in "iuf":
            raise ValueError(f"{arg} must hold real numbers, got an array of dtype {weights.dtype}.")
        w = torch.from_numpy(weights.astype(np.float64)).clone()
    else:
        if isinstance(weights, (str, bytes, dict)) or not hasattr(weights, "__iter__"):
            raise ValueError(f"{arg} must be a sequence of {n} numbers (one per name), got {weights!r}.")
        values = list(weights)
        bad = [v for v in values if not is_weight_number(v)]
        if bad:
            raise ValueError(f"{arg} must hold numbers (not bools or strings), got {bad[0]!r} in {values}.")
        w = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if w.shape != (n,):
        raise ValueError(f"{arg} has shape {tuple(w.shape)} but there are {n} names; give one weight per name.")
    if n and (not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0):
        raise ValueError(f"{arg} must hold finite non-negative weights with a positive sum, got {w.tolist()}.")
    return w


@dataclass
class MixtureState:
    """Everything the reweighting needs to continue exactly where it stopped.

    Attributes:
        domain_names / task_names: Names in weight order.
        domain_weights / task_weights: Current weights (float64).
        domain_weight_sum / task_weight_sum: Sum of the weights after each update (for time averages).
        domain_updates / task_updates: Number of updates so far.
        domain_ema_loss / task_ema_loss: EMA of the per-domain / per-task losses seen at updates (NaN before any).
        schedule: `(start_position, weights)` pairs: from the sampler position `start_position` on (counted over the
            whole run), training sequences are drawn with `weights`. Makes the index stream reproducible on resume.
        trajectory: One record per update event (`step`, `domain_weights`, `task_weights`), for plots and logs.
        schedule_version: A token (not saved) that changes whenever `set_domain_weights` changes the schedule, also
            when it replaces the last entry in place; `MixtureSampler` rebuilds its cached CDFs when it changes.
    """

    domain_names: list[str]
    task_names: list[str]
    domain_weights: torch.Tensor
    task_weights: torch.Tensor
    domain_weight_sum: torch.Tensor | None = None
    task_weight_sum: torch.Tensor | None = None
    domain_updates: int = 0
    task_updates: int = 0
    domain_ema_loss: torch.Tensor | None = None
    task_ema_loss: torch.Tensor | None = None
    schedule: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    trajectory: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        for arg in ("domain_names", "task_names"):
            names = list(getattr(self, arg))
            repeated = sorted({str(x) for x in names if names.count(x) > 1})
            if repeated:  # the exported mixture (a dict by name) kept one weight of each and dropped the others
                raise ValueError(f"{arg} repeats {repeated} ({names}); give each weight its own name.")
        k, n = len(self.domain_names), len(self.task_names)
        self.domain_weights = check_weight_vector(
            self.domain_weights, k, f"domain_weights (domains {self.domain_names})"
        )
        self.task_weights = check_weight_vector(self.task_weights, n, f"task_weights (tasks {self.task_names})")
        for i, (start, w) in enumerate(self.schedule):
            check_weight_vector(w, k, f"schedule entry {i} (from sampler position {start})")
        if self.domain_weight_sum is None:
            self.domain_weight_sum = torch.zeros(k, dtype=torch.float64)
        if self.task_weight_sum is None:
            self.task_weight_sum = torch.zeros(n, dtype=torch.float64)
        if self.domain_ema_loss is None:
            self.domain_ema_loss = torch.full((k,), float("nan"), dtype=torch.float64)
        if self.task_ema_loss is None:
            self.task_ema_loss = torch.full((n,), float("nan"), dtype=torch.float64)
        # one entry per name: a vector of another length used to be accepted and failed at the next update with a
        # bare "size of tensor a (3) must match the size of tensor b (2)"
        for arg, names in (
            ("domain_weight_sum", self.domain_names),
            ("task_weight_sum", self.task_names),
            ("domain_ema_loss", self.domain_names),
            ("task_ema_loss", self.task_names),
        ):
            value = getattr(self, arg)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (len(names),):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"{arg} must be a tensor of shape ({len(names)},), one entry per name in {names}, got {shape}; "
                    "leave it None to start from zero (sums) or NaN (EMA losses)."
                )
        if not self.schedule:
            self.schedule = [(0, self.domain_weights.clone())]
        self.schedule_version = next(_SCHEDULE_VERSIONS)

    # ----------------------------------------------------------------------------------------------------------------
    def set_domain_weights(self, weights: torch.Tensor, position: int) -> None:
        """Record new domain weights that apply to sampler positions `>= position`."""
        self.domain_weights = check_weight_vector(
            weights, len(self.domain_names), f"set_domain_weights: weights (domains {self.domain_names})"
        )
        self.domain_weight_sum += self.domain_weights
        self.domain_updates += 1
        position = max(int(position), self.schedule[-1][0])
        if self.schedule[-1][0] == position:
            self.schedule[-1] = (position, self.domain_weights.clone())
        else:
            self.schedule.append((position, self.domain_weights.clone()))
        self.schedule_version = next(_SCHEDULE_VERSIONS)

    def start_segment(self, position: int) -> None:
        """Draw sampler positions `>= position` with the current domain weights from now on.

        Schedule entries that start after `position` are dropped (those positions are drawn again) and the current
        weights are recorded at `position`. `GrapeTrainer` calls this when a resumed run restarts its epoch from the
        first batch instead of skipping the batches already trained on (`ignore_data_skip=True`): without it, the
        re-drawn positions followed the schedule of the interrupted run (its initial weights) and an update after the
        resume only replaced the schedule's last entry, reaching no sequence before the checkpoint's position.
        """
        position = int(position)
        last_start, last_weights = self.schedule[-1]
        if last_start <= position and torch.equal(last_weights, self.domain_weights):
            return  # positions >= `position` are drawn with the current weights already
        kept = [(start, w) for start, w in self.schedule if start < position]
        self.schedule = [*kept, (position, self.domain_weights.clone())]
        self.schedule_version = next(_SCHEDULE_VERSIONS)

    def set_task_weights(self, weights: torch.Tensor) -> None:
        self.task_weights = check_weight_vector(
            weights, len(self.task_names), f"set_task_weights: weights (tasks {self.task_names})"
        )
        self.task_weight_sum += self.task_weights
        self.task_updates += 1

    def weights_at(self, position: int) -> torch.Tensor:
        """Domain weights in force at sampler position `position`."""
        current = self.schedule[0][1]
        for start, weights in self.schedule:
            if start > position:
                break
            current = weights
        return current

    def average_domain_weights(self) -> torch.Tensor:
        """Time average of the domain weights over the updates (the current weights before any update)."""
        if self.domain_updates == 0:
            return self.domain_weights.clone()
        return self.domain_weight_sum / self.domain_updates

    def average_task_weights(self) -> torch.Tensor:
        if self.task_updates == 0:
            return self.task_weights.clone()
        return self.task_weight_sum / self.task_updates

    def copy(self) -> MixtureState:
        """A deep copy (its own tensors, schedule and trajectory) with a schedule version of its own."""
        import copy

        twin = copy.deepcopy(self)
        twin.schedule_version = next(_SCHEDULE_VERSIONS)
        return twin

    # ----------------------------------------------------------------------------------------------------------------
    def save(self, directory: str, reweight_method: str | None = None, options: dict | None = None) -> None:
        """Write `grape_state.safetensors` and `grape_state.json` into `directory` (the JSON also records
        `reweight_method`, the method of the run, when given: a resume refuses a checkpoint of another method; and
        `options`, the run's settings that shape the mixture trajectory, which a resume must not change)."""
        from safetensors.torch import save

        os.makedirs(directory, exist_ok=True)
        tensors = {
            "domain_weights": self.domain_weights,
            "task_weights": self.task_weights,
            "domain_weight_sum": self.domain_weight_sum,
            "task_weight_sum": self.task_weight_sum,
            "domain_ema_loss": self.domain_ema_loss,
            "task_ema_loss": self.task_ema_loss,
            "schedule_weights": torch.stack([w for _, w in self.schedule]),
        }
        # atomic: never a half-written state, and no temporary file left behind when the write fails (a fixed-name
        # `.tmp` written by `save_file` used to stay in the folder)
        with atomic_open(os.path.join(directory, STATE_TENSORS), "wb") as fh:
            fh.write(save({k: v.contiguous() for k, v in tensors.items()}))
        meta = {
            "domain_names": self.domain_names,
            "task_names": self.task_names,
            "domain_updates": self.domain_updates,
            "task_updates": self.task_updates,
            "schedule_positions": [int(p) for p, _ in self.schedule],
            "trajectory": self.trajectory,
        }
        if reweight_method is not None:
            meta["reweight_method"] = reweight_method
        if options is not None:
            meta["options"] = options
        with atomic_open(os.path.join(directory, STATE_JSON), "w") as fh:
            json.dump(meta, fh, indent=1)

    @classmethod
    def load(cls, directory: str) -> MixtureState:
        """Read a state written by `save`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        tensor_path, json_path = os.path.join(directory, STATE_TENSORS), os.path.join(directory, STATE_JSON)
        if not (os.path.isfile(tensor_path) and os.path.isfile(json_path)):
            raise ValueError(
                f"{directory!r} holds no mixture state ({STATE_TENSORS} + {STATE_JSON}); pass a checkpoint folder "
                "written by GrapeTrainer."
            )
        try:
            t = load_file(tensor_path)
            with open(json_path, encoding="utf-8") as fh:
                meta = json.load(fh)
            fields = ("domain_names", "task_names", "domain_updates", "task_updates", "schedule_positions")
            missing = [k for k in (*fields, "trajectory") if k not in meta]
            if missing:
                raise ValueError(f"fields {missing} are missing")
            missing = [k for k in STATE_TENSOR_NAMES if k not in t]
            if missing:  # a bare KeyError naming the tensor used to escape
                raise ValueError(f"tensors {missing} are missing")
        except (OSError, ValueError, KeyError, SafetensorError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(
                f"The mixture state in {directory!r} ({STATE_TENSORS} / {STATE_JSON}) is corrupt or truncated ({err}); "
                "resume from an earlier checkpoint or start the run again."
            ) from err
        positions, rows = meta["schedule_positions"], t["schedule_weights"]
        if not isinstance(positions, list) or len(positions) != len(rows):
            # `zip` used to drop the unmatched entries: the resumed sampler then drew with a shortened schedule
            raise ValueError(
                f"The mixture state in {directory!r} is inconsistent: {STATE_JSON} lists "
                f"{len(positions) if isinstance(positions, list) else positions!r} schedule positions but "
                f"{STATE_TENSORS} holds {len(rows)} schedule weight rows (files of two different saves?); resume from "
                "an earlier checkpoint or start the run again."
            )
        schedule = [(int(p), w.clone()) for p, w in zip(positions, rows)]
        return cls(
            domain_names=list(meta["domain_names"]),
            task_names=list(meta["task_names"]),
            domain_weights=t["domain_weights"],
            task_weights=t["task_weights"],
            domain_weight_sum=t["domain_weight_sum"],
            task_weight_sum=t["task_weight_sum"],
            domain_updates=int(meta["domain_updates"]),
            task_updates=int(meta["task_updates"]),
            domain_ema_loss=t["domain_ema_loss"],
            task_ema_loss=t["task_ema_loss"],
            schedule=schedule,
            trajectory=list(meta["trajectory"]),
        )

    # ----------------------------------------------------------------------------------------------------------------
    def to_mixture_dict(self, method: str, global_step: int | None = None) -> dict:
        """The exportable mixture (final and time-averaged weights)."""

        def named(names, w):
            return {n: float(v) for n, v in zip(names, w.tolist())}

        return {
            "format": MIXTURE_FORMAT,
            "version": 1,
            "method": method,
            "global_step": global_step,
            "domains": named(self.domain_names, self.domain_weights),
            "average_domains": named(self.domain_names, self.average_domain_weights()),
            "tasks": named(self.task_names, self.task_weights),
            "average_tasks": named(self.task_names, self.average_task_weights()),
            "domain_updates": self.domain_updates,
            "task_updates": self.task_updates,
        }


def saved_options(directory: str) -> dict | None:
    """The trajectory `options` recorded in the mixture state of the checkpoint folder `directory`, or `None` (a state
    written before hf_ext recorded them, or no readable `grape_state.json`)."""
    try:
        with open(os.path.join(directory, STATE_JSON), encoding="utf-8") as fh:
            options = json.load(fh).get("options")
    except (OSError, ValueError, AttributeError):
        return None
    return options if isinstance(options, dict) else None


def saved_reweight_method(directory: str) -> str | None:
    """The `reweight_method` recorded in the mixture state of the checkpoint folder `directory`, or `None` when it
    records none (a state written before hf_ext recorded it) or holds no readable `grape_state.json` (then
    `MixtureState.load` says what is wrong)."""
    try:
        with open(os.path.join(directory, STATE_JSON), encoding="utf-8") as fh:
            method = json.load(fh).get("reweight_method")
    except (OSError, ValueError, AttributeError):
        return None
    return method if isinstance(method, str) else None


def export_mixture(state: MixtureState, path: str, method: str, global_step: int | None = None) -> dict:
    """Write the final mixture of `state` as JSON to `path` atomically; returns the written dict."""
    data = state.to_mixture_dict(method, global_step)
    # Atomic (temporary file, then rename): a failed write leaves the previous mixture file as it was.
    with atomic_open(path, "w") as fh:
        json.dump(data, fh, indent=2)
    return data


def load_mixture(path: str, which: str = "final") -> dict[str, float]:
    """Read domain weights from a mixture JSON written by `export_mixture` (or a plain `{"domain": weight}` map).

    Args:
        path (`str`): The JSON file.
        which (`str`, *optional*, defaults to `"final"`): `"final"` (last weights) or `"average"` (time average over
            the updates, what DoGE and DoReMi recommend for a second-stage run).

    Returns:
        `dict[str, float]` domain -> weight, normalised to sum to 1.
    """
    if which not in ("final", "average"):
        raise ValueError(f"which must be 'final' or 'average', got {which!r}.")
    if not os.path.isfile(path):
        raise ValueError(f"mixture file {path!r} does not exist; pass a JSON file written by GrapeTrainer.")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"mixture file {path!r} is not valid JSON ({err}).") from err
    if isinstance(data, dict) and data.get("format") == MIXTURE_FORMAT:
        key = "domains" if which == "final" else "average_domains"
        if key not in data:
            raise ValueError(
                f"mixture file {path!r} (format {MIXTURE_FORMAT!r}) has no {key!r} entry, read by which={which!r} "
                f"(mixture_key / --mixture_key {which}); it holds {sorted(data)}. Export it again with "
                "GrapeTrainer.save_mixture / export_mixture, or pass a plain {domain: weight} map."
            )
        weights = data[key]
    else:
        weights = data
        if which == "average" and isinstance(data, dict):
            raise ValueError(
                f"mixture file {path!r} is a plain {{domain: weight}} map: it holds one set of weights and no time "
                "average, so which='average' (mixture_key / --mixture_key average) cannot be read from it; pass "
                "'final' to use its weights, or a mixture file written by GrapeTrainer / export_mixture."
            )
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"mixture file {path!r} must map domain names to weights.")
    bad = {str(k): v for k, v in weights.items() if not is_weight_number(v)}
    if bad:
        name, value = next(iter(bad.items()))
        raise ValueError(
            f"mixture file {path!r} has a non-numeric weight: domain {name!r} is {value!r} (JSON true/false and "
            'strings such as "0.5" are not weights); write each weight as a JSON number.'
        )
    names = [str(k) for k in weights]
    w = check_weight_vector(list(weights.values()), len(names), f"mixture file {path!r} (domains {names})")
    return {name: float(v) for name, v in zip(names, w / w.sum())}
