"""Audit fd45 (pass 38): public aggregation / DP / memorization helpers with inputs their siblings already refuse.

- `merge_then_average` returned a NaN global update for a client state with a NaN entry (and `dp_fedavg_mean` a NaN
  mean), where `fedavg` and `aggregate_round` refuse such a state naming the client and the tensor.
- `lora_delta` took any `scaling`: NaN gave a NaN update, `None` and a string raised raw `TypeError`s from the tensor
  product.
- `fedavg` (and every function built on `check_compatible_states`) raised a raw `KeyError: 0` for a mapping of states
  and an `AttributeError` for a state holding a non-tensor.
- `clip_per_sample` raised a raw reshape `RuntimeError` for an empty batch (a Poisson batch can be empty).
- `matching_prefix_tokens` accepted `window <= 0`: `window=-1` counted 2 matching tokens for two identical 3-token
  sequences.
"""

import math

import pytest
import torch

from hf_ext.federated import (
    clip_per_sample,
    dp_fedavg_mean,
    fedavg,
    lora_delta,
    matching_prefix_tokens,
    merge_then_average,
    noisy_sum,
)

from .conftest import tiny_simulation


def _state(seed: int, fill: float | None = None) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(2, 4, generator=gen)
    if fill is not None:
        a[0, 1] = fill
    return {"m.lora_A.weight": a, "m.lora_B.weight": torch.randn(3, 2, generator=gen)}


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_merge_then_average_refuses_a_non_finite_client_state(bad):
    with pytest.raises(ValueError, match=r"client_states\[1\].*'m.lora_A.weight'.*NaN or inf"):
        merge_then_average([_state(0), _state(1, bad)], [1, 1], 2.0)


def test_merge_then_average_refuses_a_client_whose_product_overflows():
    huge = {"m.lora_A.weight": torch.full((2, 4), 1e200, dtype=torch.float64)}
    huge["m.lora_B.weight"] = torch.full((3, 2), 1e200, dtype=torch.float64)
    fine = {k: v.to(torch.float64) for k, v in _state(0).items()}
    with pytest.raises(ValueError, match=r"client_states\[1\].*'m'.*not finite"):
        merge_then_average([fine, huge], [1, 1], 1.0)


def test_merge_then_average_of_finite_states_is_the_weighted_product_average():
    states, weights, scaling = [_state(0), _state(1), _state(2)], [70, 141, 293], 0.5
    out = merge_then_average(states, weights, scaling)["m"]
    ref = sum(
        w * scaling * s["m.lora_B.weight"].double() @ s["m.lora_A.weight"].double() for w, s in zip(weights, states)
    )
    assert torch.allclose(out, ref / sum(weights), rtol=0, atol=1e-15)


def test_dp_fedavg_mean_refuses_a_non_finite_update():
    with pytest.raises(ValueError, match=r"updates\[1\].*NaN or inf"):
        dp_fedavg_mean([_state(0), _state(1, math.nan)], 3)


@pytest.mark.parametrize("scaling", [math.nan, math.inf, None, "2", 0.0, -1.0, True])
def test_lora_delta_refuses_a_scaling_that_is_not_a_finite_positive_number(scaling):
    with pytest.raises(ValueError, match="scaling"):
        lora_delta(_state(0), scaling)


def test_lora_delta_still_takes_ints_and_floats():
    s = _state(0)
    ref = s["m.lora_B.weight"].double() @ s["m.lora_A.weight"].double()
    assert torch.equal(lora_delta(s, 2)["m"], ref * 2)
    assert torch.equal(lora_delta(s, 0.5)["m"], ref * 0.5)


def test_fedavg_refuses_a_mapping_of_states_by_name():
    with pytest.raises(TypeError, match="`client_states` must be a sequence"):
        fedavg({"a": _state(0), "b": _state(1)}, [1, 1])


def test_fedavg_refuses_a_state_with_a_non_tensor_entry():
    with pytest.raises(TypeError, match=r"`client_states\[1\]`'s entry 'x' is a float"):
        fedavg([{"x": torch.ones(2)}, {"x": 2.0}], [1, 1])
    with pytest.raises(TypeError, match=r"`client_states\[0\]` must be a state dict"):
        fedavg([[torch.ones(2)], [torch.ones(2)]], [1, 1])


def test_fedavg_of_tuples_of_states_still_works():
    out = fedavg((_state(0), _state(1)), [1, 3])
    ref = (_state(0)["m.lora_A.weight"].double() + 3 * _state(1)["m.lora_A.weight"].double()) / 4
    assert torch.equal(out["m.lora_A.weight"], ref.float())


def test_clip_per_sample_and_noisy_sum_take_an_empty_batch():
    grads = {"w": torch.zeros(0, 3, 2), "b": torch.zeros(0)}
    clipped, norms = clip_per_sample(grads, 1.0)
    assert clipped["w"].shape == (0, 3, 2) and clipped["b"].shape == (0,) and norms.shape == (0,)
    summed = noisy_sum(clipped, 1.0, 0.0)
    assert torch.equal(summed["w"], torch.zeros(3, 2)) and torch.equal(summed["b"], torch.zeros(()))


def test_clip_per_sample_clips_scalar_parameters_per_sample():
    grads = {"w": torch.tensor([[3.0, 0.0], [0.0, 0.1]]), "s": torch.tensor([4.0, 0.0])}
    clipped, norms = clip_per_sample(grads, 1.0)
    assert torch.allclose(norms, torch.tensor([5.0, 0.1]))
    assert torch.allclose(clipped["w"][0], torch.tensor([0.6, 0.0]), atol=1e-6)
    assert torch.allclose(clipped["s"], torch.tensor([0.8, 0.0]), atol=1e-6)
    assert torch.equal(clipped["w"][1], grads["w"][1])


@pytest.mark.parametrize("window", [0, -1, 2.0, "3", None])
def test_matching_prefix_tokens_refuses_a_window_that_is_not_a_positive_integer(window):
    with pytest.raises(ValueError, match="`window` must be an integer >= 1"):
        matching_prefix_tokens([1, 2, 3], [1, 2, 3], window)


def test_matching_prefix_tokens_counts_within_the_window():
    assert matching_prefix_tokens([1, 2, 3, 4], [1, 2, 3, 4], 3) == 3
    assert matching_prefix_tokens([1, 2, 3, 4], [1, 2, 9, 4], 50) == 2


def test_load_state_refuses_a_round_saved_in_another_dtype_before_training(tmp_path):
    """Full fine-tuning (the exchanged tensors are the model's own weights): a round saved from a float32 model and
    loaded into a bfloat16 one used to load (the tensors were cast into the model, the global state kept float32), and
    the next round trained every client before the aggregation refused each upload's dtype; it is refused at load
    time, and the simulation is left as it was. (LoRA adapters are float32 in both, as PEFT keeps them.)"""
    saved = tiny_simulation(tmp_path, use_lora=False)
    saved.save_state(str(tmp_path / "round-0"))
    resumed = tiny_simulation(tmp_path, torch.bfloat16, use_lora=False)
    start = {k: v.clone() for k, v in resumed.global_state.items()}
    with pytest.raises(ValueError, match=r"is torch.float32, this model's torch.bfloat16.*dtype=torch.float32"):
        resumed.load_state(str(tmp_path / "round-0"))
    assert resumed.round == 0
    assert all(torch.equal(resumed.global_state[k], v) for k, v in start.items())
    same = tiny_simulation(tmp_path, use_lora=False)
    same.load_state(str(tmp_path / "round-0"))  # the saved dtype still loads
    assert all(torch.equal(same.global_state[k], v) for k, v in saved.global_state.items())
