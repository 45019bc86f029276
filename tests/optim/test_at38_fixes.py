"""Pass-34 audit (at38): `save_optimizer_state` into a folder holding an earlier save, killed at any step, never leaves
files that load as a state no save wrote."""

import functools
import os

import pytest
import torch


class _Killed(BaseException):
    """Stands for SIGKILL: raised at one file operation, and at every later one (no cleanup runs)."""


def _build():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


def _train(model, opt, sched, steps):
    for _ in range(steps):
        model(torch.ones(2, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def _summary(opt, sched):
    state = opt.state[opt.param_groups[0]["params"][0]]
    return float(state["step"]), opt.param_groups[0]["lr"], sched.last_epoch


def _save_killed_at(k, save, monkeypatch) -> bool:
    """Run `save()` with its k-th file operation (a write-open, os.replace, os.remove, safetensors' save_file)
    'killed'; False when it has fewer operations (it finished)."""
    import builtins

    import safetensors.torch as st

    count, dead = [0], [False]

    def hook(fn, counts=lambda *a, **kw: True):
        def hooked(*args, **kwargs):
            if counts(*args, **kwargs):
                if dead[0] or count[0] == k:
                    dead[0] = True
                    raise _Killed
                count[0] += 1
            return fn(*args, **kwargs)

        return hooked

    def writes(file, mode="r", *args, **kwargs):
        return "w" in mode

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", hook(builtins.open, writes))
        m.setattr(os, "fdopen", hook(os.fdopen, writes))
        m.setattr(os, "replace", hook(os.replace))
        m.setattr(os, "remove", hook(os.remove))
        m.setattr(st, "save_file", hook(st.save_file))
        try:
            save()
        except _Killed:
            return True
    return False


def test_a_killed_optimizer_save_loads_as_the_earlier_save_or_is_refused_never_a_mix(tmp_path, monkeypatch):
    from hf_ext.optim import load_optimizer_state, save_optimizer_state

    outcomes = set()
    for k in range(30):
        folder = str(tmp_path / f"k{k}")
        model, opt, sched = _build()
        _train(model, opt, sched, 1)
        save_optimizer_state(opt, folder, sched)
        old = _summary(opt, sched)
        _train(model, opt, sched, 4)
        new = _summary(opt, sched)
        killed = _save_killed_at(k, functools.partial(save_optimizer_state, opt, folder, sched), monkeypatch)
        _, opt2, sched2 = _build()
        if not killed:
            load_optimizer_state(opt2, folder, sched2)
            assert _summary(opt2, sched2) == new
            break
        try:
            load_optimizer_state(opt2, folder, sched2)
        except ValueError as err:
            assert "incomplete optimizer state" in str(err) and "interrupted" in str(err)
            outcomes.add("refused")
            continue
        # loaded: exactly the earlier save (the Adam step and moments with the lr and scheduler position of step 1)
        assert _summary(opt2, sched2) == old, f"killed at file operation {k}: a mix of two saves was loaded"
        outcomes.add("old")
    else:
        pytest.fail("the save never finished")
    assert outcomes == {"old", "refused"}


def test_trainer_resume_refuses_an_interrupted_optimizer_save(tmp_path):
    """The Trainer mixin sends a checkpoint with hf_ext's optimizer files but no optimizer_state.json to
    `load_optimizer_state` (refused by name), not to transformers, which would go on with a fresh optimizer."""
    from hf_ext.optim.serialization import OPTIMIZER_JSON, SafetensorsOptimizerStateMixin, save_optimizer_state

    model, opt, sched = _build()
    _train(model, opt, sched, 1)
    save_optimizer_state(opt, str(tmp_path), sched)
    os.remove(tmp_path / OPTIMIZER_JSON)

    class Fake(SafetensorsOptimizerStateMixin):
        optimizer, lr_scheduler = opt, sched

    with pytest.raises(ValueError, match="incomplete optimizer state"):
        Fake()._load_optimizer_and_scheduler(str(tmp_path))
