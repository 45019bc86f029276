"""Pass-34 mutation run (mu39): pins for `save_optimizer_state`'s temporary file and stale scheduler state."""

import os

import pytest
import torch


def _opt_and_sched():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    model(torch.ones(2, 4)).pow(2).sum().backward()
    opt.step()
    sched.step()
    return opt, sched


def test_the_tensor_file_gets_ordinary_permissions_and_its_temporary_is_in_the_folder(tmp_path, monkeypatch):
    """The tensors are written to a `tempfile` (mode 0600) in the output folder itself (a rename from another file
    system fails) and then given the mode an ordinary `open` would (as the JSON files have)."""
    import safetensors.torch as st

    from hf_ext.optim import save_optimizer_state

    opt, sched = _opt_and_sched()
    folder = tmp_path / "ckpt"
    written = []
    real = st.save_file
    monkeypatch.setattr(
        st, "save_file", lambda tensors, path, *a, **kw: (written.append(path), real(tensors, path))[1]
    )
    save_optimizer_state(opt, str(folder), sched)
    assert written and os.path.dirname(os.path.abspath(written[0])) == str(folder)
    mode = os.stat(folder / "optimizer_state.safetensors").st_mode & 0o777
    assert mode == os.stat(folder / "optimizer_state.json").st_mode & 0o777
    assert mode != 0o600 or (0o666 & ~os.umask(os.umask(0))) == 0o600


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_tensor_write_leaves_the_earlier_save_and_no_temporary(tmp_path, monkeypatch, error):
    import safetensors.torch as st

    from hf_ext.optim import load_optimizer_state, save_optimizer_state

    opt, sched = _opt_and_sched()
    folder = tmp_path / "ckpt"
    save_optimizer_state(opt, str(folder), sched)
    before = sorted(os.listdir(folder))

    def fail(tensors, path, *a, **kw):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise error

    monkeypatch.setattr(st, "save_file", fail)
    with pytest.raises(type(error)):
        save_optimizer_state(opt, str(folder), sched)
    monkeypatch.undo()
    assert sorted(os.listdir(folder)) == before  # no hidden .tmp left behind
    fresh, fresh_sched = _opt_and_sched()
    load_optimizer_state(fresh, str(folder), fresh_sched)


def test_a_save_without_a_scheduler_removes_an_earlier_scheduler_state(tmp_path):
    """A save without a scheduler into a folder holding one with a scheduler: loading with a scheduler must not pick
    up the earlier save's scheduler position next to the new optimizer state."""
    from hf_ext.optim import load_optimizer_state, save_optimizer_state

    opt, sched = _opt_and_sched()
    for _ in range(3):
        sched.step()
    folder = str(tmp_path / "ckpt")
    save_optimizer_state(opt, folder, sched)
    save_optimizer_state(opt, folder)
    assert not os.path.exists(os.path.join(folder, "scheduler_state.json"))
    fresh, fresh_sched = _opt_and_sched()
    load_optimizer_state(fresh, folder, fresh_sched)
    assert fresh_sched.last_epoch == 1  # untouched, not the earlier save's 4
