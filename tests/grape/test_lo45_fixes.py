"""Audit pass 38 (lo45): GRAPE weights given as 0-d numpy arrays, direct `MixtureState` use (vector lengths, schedule
files of two saves, no temporary file left behind by a failed save)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from hf_ext.grape.rules import exponentiated_step, grape_domain_weights
from hf_ext.grape.state import STATE_JSON, MixtureState


def test_weights_as_a_list_of_0d_numpy_arrays_are_numbers():
    # used to fail with a bare "TypeError: len() of unsized object" from torch.as_tensor
    as_arrays = grape_domain_weights([np.array(0.25), np.array(0.75)], [np.array(1.0), np.array(0)], 0.5)
    as_floats = grape_domain_weights([0.25, 0.75], [1.0, 0.0], 0.5)
    torch.testing.assert_close(as_arrays, as_floats, rtol=0, atol=0)
    mixed = exponentiated_step([np.array(1), torch.tensor(1.0, requires_grad=True)], [np.float32(0.5), 0.0], 1.0)
    torch.testing.assert_close(mixed, exponentiated_step([1.0, 1.0], [0.5, 0.0], 1.0), rtol=0, atol=0)


@pytest.mark.parametrize(
    "weights", [[np.array(0.5), np.array([0.5])], [[0.5, 0.5], [0.5]], [torch.tensor([1.0, 2.0]), torch.tensor([1.0])]]
)
def test_ragged_weights_are_refused_by_name(weights):
    with pytest.raises(ValueError, match=r"^weights must be a 1-D vector of real numbers, got ragged"):
        grape_domain_weights(weights, [1.0, 0.0], 0.5)


@pytest.mark.parametrize(
    "arg, value",
    [
        ("domain_weight_sum", torch.zeros(3)),
        ("task_weight_sum", torch.zeros(2)),
        ("domain_ema_loss", torch.zeros(1)),
        ("task_ema_loss", [0.0]),
    ],
)
def test_state_vectors_of_another_length_are_refused(arg, value):
    # used to be accepted; the next update failed with "size of tensor a (3) must match the size of tensor b (2)"
    with pytest.raises(ValueError, match=rf"{arg} must be a tensor of shape \((2|1),\)"):
        MixtureState(["a", "b"], ["t"], [1.0, 1.0], [1.0], **{arg: value})


def _saved(tmp_path):
    state = MixtureState(["a", "b"], ["t"], [1.0, 1.0], [1.0])
    state.set_domain_weights(torch.tensor([0.25, 0.75], dtype=torch.float64), 5)
    state.set_domain_weights(torch.tensor([0.5, 0.5], dtype=torch.float64), 9)
    state.save(str(tmp_path))
    return state


def test_load_refuses_a_schedule_of_two_saves(tmp_path):
    _saved(tmp_path)
    path = tmp_path / STATE_JSON
    meta = json.loads(path.read_text())
    meta["schedule_positions"] = meta["schedule_positions"][:2]  # the JSON of an earlier save: 2 of the 3 entries
    path.write_text(json.dumps(meta))
    # the schedule used to be cut to 2 entries silently: positions >= 9 were drawn with [0.25, 0.75]
    with pytest.raises(ValueError, match=r"lists 2 schedule positions but .* holds 3 schedule weight rows"):
        MixtureState.load(str(tmp_path))


def test_load_names_a_missing_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    _saved(tmp_path)
    path = str(tmp_path / "grape_state.safetensors")
    tensors = load_file(path)
    del tensors["task_ema_loss"]
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"corrupt or truncated \(tensors \['task_ema_loss'\] are missing\)"):
        MixtureState.load(str(tmp_path))


def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    state = _saved(tmp_path)
    before = sorted(os.listdir(tmp_path))
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if str(dst).endswith(".safetensors"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        state.save(str(tmp_path))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before  # the old `.grape_state.safetensors.tmp` stayed behind
    loaded = MixtureState.load(str(tmp_path))
    assert [p for p, _ in loaded.schedule] == [0, 5, 9]
