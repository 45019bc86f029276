"""`Fp8HealthCallback`: kurtosis monitoring inside a `transformers.Trainer`, early warning, stop or rollback."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re

from transformers import TrainerCallback

from .monitor import KurtosisMonitor

logger = logging.getLogger(__name__)
STATE_FILE = "fp8_health.json"
# Key of this callback's state inside `TrainerState.stateful_callbacks` (saved in every checkpoint's
# trainer_state.json and loaded by Trainer from the checkpoint it resumes from, wherever that folder is). Not a class
# name, so `restore_callback_states_from_checkpoint=True` does not re-instantiate the callback from it.
STATE_KEY = "hf_ext.fp8.Fp8HealthCallback"
ACTIONS = ("warn", "stop", "rollback")


class Fp8HealthCallback(TrainerCallback):
    """Watch activation kurtosis during training and act before an FP8 run diverges.

    Every `every_n_steps` optimizer steps, a [`KurtosisMonitor`] measures the eight sites of every layer during that
    step's forward passes. The per-site averages (and per-layer values with `log_per_layer=True`) are added to the
    Trainer's logs under `fp8/...`. Each (site, layer) gets a baseline: the mean kurtosis over its first
    `baseline_steps` monitored steps. An alert fires when a value exceeds `relative_threshold` x its baseline, exceeds
    `absolute_threshold`, or is not finite, for `patience` monitored steps in a row. Then, by `action`:

    - "warn": log a warning and continue;
    - "stop": log and stop training (`control.should_training_stop`);
    - "rollback": log, stop, and ask [`train_with_rollback`] to resume from the last checkpoint saved before the
      first alert of the streak (with `patience` > 1, checkpoints saved while alerting already hold the diverging
      state) with the learning rate multiplied by `rollback_lr_factor` (at most `max_rollbacks` times). No checkpoint
      is written at the alert step nor while an alert streak runs, whatever the callback order (the save is skipped
      by `Fp8Trainer` and `train_with_rollback`), so `save_total_limit` can never rotate the rollback target away.

    Monitor state (history, baselines, alerts, learning-rate scale, previous amaxes) is saved with every checkpoint
    (in its `trainer_state.json`, and as `fp8_health.json` for reading) and restored from the checkpoint training
    actually resumes from, wherever that folder is. A retry of `auto_find_batch_size` after an out-of-memory error
    (Trainer reruns its loop from step 0, or from the resumed checkpoint, with a smaller batch) starts from the state
    the callback had when that `train()` call began, then restores the checkpoint's as the first attempt did: the
    failed attempt's records and baseline values are dropped, and the monitor it may have left measuring is stopped. Under DDP / FSDP the statistics are pooled over ranks before any
    decision, so all ranks warn, stop or roll back together.

    The thresholds are a project heuristic (the paper gives none): kurtosis is ~3 for Gaussian activations and grows by
    orders of magnitude with outlier features.

    Args:
        every_n_steps (`int`, defaults to 10): Monitoring period in optimizer steps.
        sites (`list[str]`, *optional*): Sites to monitor (default all seven + `activation`).
        alert_sites (`list[str]`, *optional*): Sites whose kurtosis can raise alerts (default: all monitored); each
            must be a known site, and among `sites` when those are given.
        baseline_steps (`int`, defaults to 3): Monitored steps averaged into each baseline.
        relative_threshold (`float`, defaults to 10.0): Alert when kurtosis > this x baseline.
        absolute_threshold (`float`, defaults to 100.0): Alert when kurtosis > this.
        absolute_exempt_sites (`tuple[str]`, defaults to `("mlp_post_act",)`): Sites judged by the relative
            threshold only. Post-activation MLP outputs are sparse by construction (xIELU / SwiGLU suppress most
            inputs), so their kurtosis sits in the tens from the start and exceeds 100 in healthy runs.
        patience (`int`, defaults to 1): Consecutive alerting monitored steps needed.
        action (`str`, defaults to `"warn"`): "warn", "stop" or "rollback".
        rollback_lr_factor (`float`, defaults to 0.5): Learning-rate multiplier applied at each rollback.
        max_rollbacks (`int`, defaults to 2): Rollbacks before the callback falls back to stopping.
        log_per_layer (`bool`, defaults to `False`): Also log per-layer values.
        log_stats (`tuple[str]`, defaults to `("kurtosis",)`): Statistics added to the Trainer logs (any of
            "kurtosis", "rms", "max_abs", "underflow", "saturation"); all are kept in `history`.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        sites: list[str] | None = None,
        alert_sites: list[str] | None = None,
        baseline_steps: int = 3,
        relative_threshold: float = 10.0,
        absolute_threshold: float = 100.0,
        absolute_exempt_sites: tuple[str, ...] = ("mlp_post_act",),
        patience: int = 1,
        action: str = "warn",
        rollback_lr_factor: float = 0.5,
        max_rollbacks: int = 2,
        log_per_layer: bool = False,
        log_stats: tuple[str, ...] = ("kurtosis",),
    ):
        from ..utils.checks import is_bool, is_int, is_real

        for name, value, low in (
            ("every_n_steps", every_n_steps, 1), ("baseline_steps", baseline_steps, 1), ("patience", patience, 1),
            ("max_rollbacks", max_rollbacks, 0),
        ):  # fmt: skip
            if not is_int(value) or value < low:  # 2.5 steps would silently mean 3, patience=inf never stop
                raise ValueError(f"Fp8HealthCallback: {name} must be an int >= {low}, got {value!r}.")
        for name, value in (
            ("relative_threshold", relative_threshold), ("absolute_threshold", absolute_threshold),
            ("rollback_lr_factor", rollback_lr_factor),
        ):  # fmt: skip
            if not is_real(value) or math.isnan(value):  # inf is allowed for a threshold: that test never alerts
                raise ValueError(f"Fp8HealthCallback: {name} must be a number, got {value!r}.")
        if not is_bool(log_per_layer):
            raise ValueError(f"Fp8HealthCallback: log_per_layer must be True or False, got {log_per_layer!r}.")
        if not relative_threshold > 1:
            raise ValueError(f"Fp8HealthCallback: relative_threshold must be > 1, got {relative_threshold}.")
        if not absolute_threshold > 0:
            raise ValueError(f"Fp8HealthCallback: absolute_threshold must be > 0, got {absolute_threshold}.")
        if action not in ACTIONS:
            raise ValueError(f"Fp8HealthCallback: action={action!r}; choose one of {ACTIONS}.")
        if not 0 < rollback_lr_factor < 1:
            raise ValueError(f"Fp8HealthCallback: rollback_lr_factor must be in (0, 1), got {rollback_lr_factor}.")
        from .monitor import SITES, STATS

        for name, value in (("log_stats", log_stats), ("absolute_exempt_sites", absolute_exempt_sites)):
            if isinstance(value, str):  # would be read one character per entry
                raise ValueError(f"Fp8HealthCallback: {name} must be a tuple of names, e.g. {name}=({value!r},).")
        if set(log_stats) - set(STATS):
            raise ValueError(f"Fp8HealthCallback: log_stats must be among {STATS}, got {log_stats}.")
        for name, value in (("sites", sites), ("alert_sites", alert_sites)):
            if value is None:
                continue
            if isinstance(value, str):
                raise ValueError(f"Fp8HealthCallback: {name} must be a list of site names, e.g. {name}=[{value!r}].")
            if name == "sites" and not value:  # (an empty alert_sites monitors without alerting)
                raise ValueError(f"Fp8HealthCallback: {name} is empty; leave it unset for every site the model has.")
            unknown = sorted(set(value) - set(SITES))
            if unknown:
                raise ValueError(f"Fp8HealthCallback: unknown {name} {unknown}; choose from {sorted(SITES)}.")
        if alert_sites is not None and sites is not None and set(alert_sites) - set(sites):
            raise ValueError(
                f"Fp8HealthCallback: alert_sites {sorted(set(alert_sites) - set(sites))} are not monitored (sites="
                f"{list(sites)}); add them to sites or leave sites unset."
            )
        unknown = sorted(set(absolute_exempt_sites) - set(SITES))
        if unknown:
            raise ValueError(
                f"Fp8HealthCallback: absolute_exempt_sites has unknown sites {unknown}; choose from {sorted(SITES)}."
            )
        self.every_n_steps = every_n_steps
        self.sites = sites
        self.alert_sites = alert_sites
        self.absolute_exempt_sites = tuple(absolute_exempt_sites)
        self.baseline_steps = baseline_steps
        self.relative_threshold = float(relative_threshold)
        self.absolute_threshold = float(absolute_threshold)
        self.patience = patience
        self.action = action
        self.rollback_lr_factor = float(rollback_lr_factor)
        self.max_rollbacks = max_rollbacks
        self.log_per_layer = log_per_layer
        self.log_stats = tuple(log_stats)

        self.monitor: KurtosisMonitor | None = None
        self.history: list[dict] = []
        self.baseline_obs: dict[str, list[float]] = {}
        self.alerts: list[dict] = []
        self.actions_taken: list[str] = []
        self.lr_scale = 1.0
        self.rollbacks = 0
        self.rollback_request: dict | None = None
        self.resume_checkpoint: str | None = None
        self._rolling_back = False  # set by `train_with_rollback` for the train() call of a rollback
        self._streak = 0
        self._streak_start: int | None = None  # step of the first alert of the current streak
        self._pending_logs: dict[str, float] = {}
        # the state at the start of the running train() call, until its on_train_end: what a retry of
        # `auto_find_batch_size` (a new on_train_begin without on_train_end) starts from again
        self._call_start: dict | None = None

    # --------------------------------------------------------------------------------------------------------- state
    @property
    def baselines(self) -> dict[str, float]:
        """Baseline kurtosis per `"<site>/layer_<i>"` (only complete ones)."""
        return {k: sum(v) / len(v) for k, v in self.baseline_obs.items() if len(v) >= self.baseline_steps}

    def state_dict(self) -> dict:
        """JSON-serialisable state saved with every checkpoint."""
        return {
            "history": self.history,
            "baseline_obs": self.baseline_obs,
            "alerts": self.alerts,
            "actions_taken": self.actions_taken,
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "streak": self._streak,
            "streak_start": self._streak_start,
            "monitor": self.monitor.state_dict() if self.monitor is not None else {},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the state [`state_dict`] returned (the checkpoint's, on resume), replacing the current one; only the
        rollback count and the learning-rate scale never go back (a rollback resumes from a checkpoint saved before
        it, see [`train_with_rollback`])."""
        self.history = list(state.get("history", []))
        self.baseline_obs = {k: list(v) for k, v in state.get("baseline_obs", {}).items()}
        self.alerts = list(state.get("alerts", []))
        self.actions_taken = list(state.get("actions_taken", []))
        self._streak = int(state.get("streak", 0))
        self._streak_start = state.get("streak_start")
        self._saved_lr_scale = float(state.get("lr_scale", 1.0))
        self.rollbacks = max(self.rollbacks, int(state.get("rollbacks", 0)))
        self.lr_scale = min(self.lr_scale, self._saved_lr_scale)
        if self.monitor is not None:
            self.monitor.load_state_dict(state.get("monitor", {}))
        self._monitor_state = state.get("monitor", {})

    _CALL_STATE = (
        "history", "baseline_obs", "alerts", "actions_taken", "lr_scale", "rollbacks", "rollback_request",
        "resume_checkpoint", "_rolling_back", "_streak", "_streak_start", "_pending_logs",
    )  # fmt: skip

    def _capture_call_start(self) -> dict:
        state = {name: copy.deepcopy(getattr(self, name)) for name in self._CALL_STATE}
        state["monitor"] = self.monitor.state_dict() if self.monitor is not None else {}
        return state

    def _restore_call_start(self) -> None:
        start = self._call_start
        for name in self._CALL_STATE:
            setattr(self, name, copy.deepcopy(start[name]))
        if self.monitor is not None:
            self.monitor.load_state_dict(start["monitor"])

    def vetoes_save(self) -> bool:
        """Whether a checkpoint taken now must be skipped: a rollback is pending, or (with `action="rollback"`) an
        alert streak is running. Such a checkpoint would hold the diverging state, could never be a rollback target,
        and its rotation (`save_total_limit`) could delete the checkpoint the rollback needs."""
        return self.rollback_request is not None or (self.action == "rollback" and self._streak > 0)

    def _veto(self, control) -> None:
        if self.vetoes_save():
            control.should_save = False

    # --------------------------------------------------------------------------------------------------------- hooks
    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if model is None:
            raise ValueError("Fp8HealthCallback needs the Trainer's model (it is passed to callbacks by Trainer).")
        # A second on_train_begin before on_train_end in the same train() call is `auto_find_batch_size` rerunning
        # the loop after an out-of-memory error: start from the state of the call's start again (a failed attempt's
        # history and baseline values are of steps the retry redoes), then restore as the first attempt did.
        retry = self._call_start is not None and getattr(args, "auto_find_batch_size", False)
        if retry:
            self._restore_call_start()
            logger.info("Fp8HealthCallback: new training attempt, the failed attempt's records are dropped")
        else:
            self._call_start = self._capture_call_start()
        if self.monitor is None or self.monitor.model is not model:
            if self.monitor is not None:
                self.monitor.remove()
            self.monitor = KurtosisMonitor(_unwrap(model), sites=self.sites)
            if retry:
                self.monitor.load_state_dict(self._call_start["monitor"])
        # an error inside a monitored step (e.g. out of memory) skips its on_step_end: the monitor would still be
        # measuring, and hold that step's partial forward, when the next run starts
        self.monitor.disable()
        self.monitor.reset()
        if self.alert_sites is not None and set(self.alert_sites) - set(self.monitor.sites):
            raise ValueError(
                f"Fp8HealthCallback: alert_sites {sorted(set(self.alert_sites) - set(self.monitor.sites))} exist in "
                f"none of the model's blocks (monitored: {self.monitor.sites}); they could never raise an alert. "
                "Remove them from alert_sites."
            )
        self._saved_lr_scale = 1.0
        # A rollback (`train_with_rollback`) keeps this run's own alerts and actions, which include the rollback itself;
        # any other resume (also on this object, e.g. after an interrupt) restores the checkpoint's, as a fresh trainer
        # would.
        rolling_back, self._rolling_back = self._rolling_back, False
        own = (self.alerts, self.actions_taken)
        # Trainer has loaded `state` from the checkpoint it resumes from (if any): our state travels inside it.
        stored = (state.stateful_callbacks or {}).get(STATE_KEY) if state.global_step > 0 else None
        if stored is not None:
            self.load_state_dict(stored)
            logger.info(
                "Fp8HealthCallback: restored monitor state of step %d from the resumed checkpoint", state.global_step
            )
        else:  # checkpoints written before the state was kept in trainer_state.json
            ckpt = self.resume_checkpoint
            if ckpt is None and state.global_step > 0:
                ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if ckpt is not None and os.path.isfile(os.path.join(ckpt, STATE_FILE)):
                with open(os.path.join(ckpt, STATE_FILE)) as fh:
                    self.load_state_dict(json.load(fh))
                logger.info("Fp8HealthCallback: restored monitor state from %s", ckpt)
        self.resume_checkpoint = None
        if rolling_back:
            self.alerts, self.actions_taken = own
        state.stateful_callbacks[STATE_KEY] = self.state_dict()
        factor = self.lr_scale / self._saved_lr_scale
        if factor != 1.0 and optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] *= factor
                if "initial_lr" in group:
                    group["initial_lr"] *= factor
            if lr_scheduler is not None and hasattr(lr_scheduler, "base_lrs"):
                lr_scheduler.base_lrs = [lr * factor for lr in lr_scheduler.base_lrs]
            if lr_scheduler is not None and hasattr(lr_scheduler, "_last_lr"):
                # what Trainer logs as the first resumed step's learning rate (restored from the checkpoint unscaled)
                lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
            msg = f"Fp8HealthCallback: learning rate scaled by {factor:g} (total scale {self.lr_scale:g})."
            logger.warning(msg)
            self.actions_taken.append(msg)

    def on_train_end(self, args, state, control, **kwargs):
        self._call_start = None
        if self.monitor is not None:
            # the trained model is the user's again: no hook of ours stays on it (they hold closures that pickling,
            # e.g. `torch.save(model)`, cannot serialise); a next train() reinstalls them when monitoring starts
            self.monitor.remove()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.monitor is not None and (state.global_step + 1) % self.every_n_steps == 0:
            self.monitor.enable()

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        self.monitor.disable()
        if not self.monitor.has_data():
            self._veto(control)
            return
        stats = self.monitor.collect()
        step = state.global_step
        record = {"step": step, **{k: v for k, v in stats.items() if "/kurtosis/" in k or k.endswith("/avg")}}
        self.history.append(record)
        logs = {
            f"fp8/{k.replace('/avg', '')}": v
            for k, v in stats.items()
            if k.split("/")[1] in self.log_stats and (k.endswith("/avg") or self.log_per_layer)
        }
        self._pending_logs = logs
        control.should_log = True
        self._check(stats, step, args, state, control)
        self._veto(control)
        state.stateful_callbacks[STATE_KEY] = self.state_dict()  # written with the next checkpoint

    # The save decision: callbacks after this one (DefaultFlowCallback when this one is moved first) set
    # `should_save` again in their own on_step_end / on_epoch_end, so the veto is repeated at the last events before
    # Trainer saves (on_log, on_evaluate); `Fp8Trainer` and `train_with_rollback` also skip the save itself.
    def on_epoch_end(self, args, state, control, **kwargs):
        self._veto(control)

    def on_evaluate(self, args, state, control, **kwargs):
        self._veto(control)

    def take_pending_logs(self) -> dict[str, float]:
        """The values measured at the last monitored step and not logged yet (then none are pending).
        `Fp8Trainer.log` adds them to the row before `Trainer.log`, so the reporting integrations get them too."""
        logs, self._pending_logs = self._pending_logs, {}
        return logs

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._veto(control)
        if not self._pending_logs:
            return
        if logs is not None:
            logs.update(self._pending_logs)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending_logs)
        else:
            state.log_history.append({**self._pending_logs, "step": state.global_step})
        self._pending_logs = {}

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.vetoes_save():  # the checkpoint was skipped
            return
        ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(ckpt):
            from ..utils.io import atomic_write_json

            atomic_write_json(os.path.join(ckpt, STATE_FILE), self.state_dict(), None)

    # ------------------------------------------------------------------------------------------------------- alerts
    def _check(self, stats: dict[str, float], step: int, args, state, control) -> None:
        fired = []
        for key, value in stats.items():
            site, stat, where = key.split("/")
            if stat != "kurtosis" or where == "avg":
                continue
            if self.alert_sites is not None and site not in self.alert_sites:
                continue
            bkey = f"{site}/{where}"
            obs = self.baseline_obs.setdefault(bkey, [])
            base = sum(obs) / len(obs) if len(obs) >= self.baseline_steps else None
            reason = None
            if not math.isfinite(value):
                reason = "is not finite"
            elif value > self.absolute_threshold and site not in self.absolute_exempt_sites:
                reason = f"> absolute threshold {self.absolute_threshold:g}"
            elif base is not None and value > self.relative_threshold * base:
                reason = f"= {value / base:.1f}x its baseline {base:.2f} (threshold {self.relative_threshold:g}x)"
            if reason is None and base is None and math.isfinite(value):
                obs.append(value)
            if reason is not None:
                fired.append({"step": step, "site": site, "layer": where, "kurtosis": value, "reason": reason})
        if not fired:
            self._streak, self._streak_start = 0, None
            return
        self._streak += 1
        if self._streak == 1 or self._streak_start is None:
            self._streak_start = step
        worst = max(fired, key=lambda a: a["kurtosis"] if math.isfinite(a["kurtosis"]) else float("inf"))
        self.alerts.extend(fired)
        msg = (
            f"FP8 health alert at step {step}: {worst['site']} {worst['layer']} kurtosis {worst['kurtosis']:.3g} "
            f"{worst['reason']} ({len(fired)} site/layer pairs alerting, streak {self._streak}/{self.patience})."
        )
        logger.warning(msg)
        if self._streak < self.patience or self.action == "warn":
            return
        if self.action == "rollback" and self.rollbacks < self.max_rollbacks:
            # a checkpoint saved before the first alert of the streak: later ones already hold the diverging state
            ckpt = _last_checkpoint_before(args.output_dir, self._streak_start)
            if ckpt is not None:
                self.rollbacks += 1
                self.lr_scale *= self.rollback_lr_factor
                self.rollback_request = {"checkpoint": ckpt, "alert_step": step, "lr_scale": self.lr_scale}
                done = (
                    f"Fp8HealthCallback: rolling back to {ckpt} with learning rate x{self.lr_scale:g} "
                    f"(rollback {self.rollbacks}/{self.max_rollbacks}); stopping this run."
                )
                logger.warning(done)
                self.actions_taken.append(done)
                control.should_training_stop = True
                control.should_save = False
                self._streak, self._streak_start = 0, None
                return
            reason = "no checkpoint saved before the alert" if ckpt is None else ""
        else:
            reason = "rollback limit reached" if self.action == "rollback" else ""
        done = f"Fp8HealthCallback: stopping training at step {step}{f' ({reason})' if reason else ''}."
        logger.warning(done)
        self.actions_taken.append(done)
        control.should_training_stop = True


def _unwrap(model):
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model


def _last_checkpoint_before(output_dir: str, step: int) -> str | None:
    """The newest complete `checkpoint-N` with N < `step`: a folder a killed save left without `trainer_state.json`
    (e.g. of an earlier, interrupted launch whose step this run's vetoed save did not write again) is no rollback
    target."""
    from ..utils.resume import checkpoint_problem

    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        m = re.fullmatch(r"checkpoint-(\d+)", name)
        if m and int(m.group(1)) < step:
            found.append(int(m.group(1)))
    for best in sorted(found, reverse=True):
        path = os.path.join(output_dir, f"checkpoint-{best}")
        if checkpoint_problem(path) is None:
            return path
        logger.warning(
            "Fp8HealthCallback: %s is incomplete (a save that was interrupted); not a rollback target.", path
        )
    return None


def train_with_rollback(trainer, callback: Fp8HealthCallback | None = None, resume_from_checkpoint=None):
    """`trainer.train()`, resumed from the last good checkpoint (with a lower learning rate) each time the
    [`Fp8HealthCallback`] with `action="rollback"` requests it.

    Args:
        trainer (`transformers.Trainer`): Trainer whose callbacks include the [`Fp8HealthCallback`].
        callback ([`Fp8HealthCallback`], *optional*): Found among the trainer's callbacks when omitted.
        resume_from_checkpoint (`str | bool`, *optional*): Passed to the first `train()` call. A checkpoint saved at
            `max_steps` (of a run stopped after its last checkpoint) is restored without a step past `max_steps`
            ([`hf_ext.utils.resume.train_or_restore_finished`]).

    Returns:
        The `TrainOutput` of the last `train()` call (`None` for a restored finished run).
    """
    if callback is None:
        found = [c for c in trainer.callback_handler.callbacks if isinstance(c, Fp8HealthCallback)]
        if not found:
            raise ValueError("train_with_rollback: the trainer has no Fp8HealthCallback; add one to callbacks=[...].")
        callback = found[0]
    if trainer.args.save_strategy == "no":
        raise ValueError("train_with_rollback: rollback needs checkpoints; set save_strategy='steps' and save_steps.")
    if trainer.args.save_only_model:
        raise ValueError(
            "train_with_rollback: rollback resumes from a checkpoint, and save_only_model=True checkpoints hold only the "
            "weights (no optimizer, scheduler or RNG state to resume); set save_only_model=False."
        )
    # Whatever the callback order (a later callback may set `should_save` again), no checkpoint is written while the
    # callback vetoes it: `Fp8Trainer` checks in `_save_checkpoint`; any other Trainer gets the same guard here.
    guarded = not getattr(trainer, "_fp8_health_save_guard", False)
    own = vars(trainer).get("_save_checkpoint")  # a patch of the user's on this instance, put back afterwards
    if guarded:
        trainer._save_checkpoint = _save_guard(trainer, trainer._save_checkpoint, [callback])
    # an optimizer / scheduler the user passed (`optimizers=(...)`) is the one every rollback resumes with; the Trainer
    # builds its own (from `args`, `optimizer_cls_and_kwargs`) only where none was given. Either way its state is then
    # loaded from the checkpoint.
    given_optimizer, given_scheduler = trainer.optimizer, trainer.lr_scheduler
    # Trainer pops `model` (and `params`) from the kwargs of `optimizer_cls_and_kwargs` when it builds the optimizer:
    # each train() gets its own copy, so a rollback builds the same optimizer again (LionAR needs `model`)
    cls_and_kwargs = getattr(trainer, "optimizer_cls_and_kwargs", None)

    from ..utils.resume import train_or_restore_finished

    def train(checkpoint):
        if cls_and_kwargs is not None:
            trainer.optimizer_cls_and_kwargs = (cls_and_kwargs[0], dict(cls_and_kwargs[1]))
        return train_or_restore_finished(trainer, checkpoint)

    try:
        result = train(resume_from_checkpoint)
        while callback.rollback_request is not None:
            request, callback.rollback_request = callback.rollback_request, None
            callback.resume_checkpoint = request["checkpoint"]
            callback._rolling_back = True
            trainer.optimizer, trainer.lr_scheduler = given_optimizer, given_scheduler
            result = train(request["checkpoint"])
    finally:
        callback._rolling_back = False  # a rollback's train() that failed before on_train_begin
        callback._call_start = None  # or failed later: a next train() is no retry of it
        if cls_and_kwargs is not None:
            trainer.optimizer_cls_and_kwargs = cls_and_kwargs
        if guarded:
            if own is not None:
                trainer._save_checkpoint = own
            else:
                del trainer._save_checkpoint
    return result


def skip_vetoed_save(trainer, callbacks) -> bool:
    """True (and a log line) when one of `callbacks` ([`Fp8HealthCallback`]) vetoes the checkpoint `trainer` is about
    to write (see [`Fp8HealthCallback.vetoes_save`])."""
    for cb in callbacks:
        if isinstance(cb, Fp8HealthCallback) and cb.vetoes_save():
            why = "a rollback is pending" if cb.rollback_request is not None else "an FP8 alert streak is running"
            logger.warning(
                "Fp8HealthCallback: not saving checkpoint-%d (%s: it would hold the diverging state).",
                trainer.state.global_step,
                why,
            )
            return True
    return False


def _save_guard(trainer, save_checkpoint, callbacks):
    def guarded(model, trial, *args, **kwargs):
        if skip_vetoed_save(trainer, callbacks):
            return None
        return save_checkpoint(model, trial, *args, **kwargs)

    return guarded
