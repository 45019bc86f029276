"""Audit lf41: a NeuralGrok amplifier keeps its dtype across save/load and resume."""

import pytest
import torch

from hf_ext.neuralgrok import NeuralAmplifier, build_arithmetic_dataset, split_arithmetic_dataset

from .test_trainer import _train_state, make_args, make_model, make_trainer


@pytest.fixture(scope="module")
def splits():
    return split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float32])
def test_from_pretrained_keeps_the_saved_dtype(tmp_path, dtype):
    torch.manual_seed(0)
    amp = NeuralAmplifier((8, 8), c=0.5).to(dtype)
    amp.save_pretrained(tmp_path)
    back = NeuralAmplifier.from_pretrained(tmp_path)
    assert {p.dtype for p in back.parameters()} == {dtype}
    for a, b in zip(amp.parameters(), back.parameters()):
        assert torch.equal(a, b)
    grads = [torch.randn(5, 7, dtype=dtype)]
    assert torch.equal(amp.transform_many(grads)[0], back.transform_many(grads)[0])


def _amplifier(dtype):
    torch.manual_seed(0)
    return NeuralAmplifier((8, 8)).to(dtype)


def test_resume_of_a_float64_amplifier_into_a_float32_one_is_refused(splits, tmp_path):
    run = make_trainer(
        make_args(tmp_path / "run", save_strategy="steps", save_steps=4, max_steps=4),
        splits,
        amplifier=_amplifier(torch.float64),
    )
    run.train()
    resumed = make_trainer(make_args(tmp_path / "resumed", max_steps=8), splits, model=make_model(seed=5))
    with pytest.raises(ValueError, match=r"saved in \['F64'\], this run's is \['F32'\]"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))


def test_resume_of_a_float64_amplifier_matches_the_uninterrupted_run(splits, tmp_path):
    full = make_trainer(
        make_args(tmp_path / "run", save_strategy="steps", save_steps=4, max_steps=8),
        splits,
        amplifier=_amplifier(torch.float64),
    )
    full.train()
    expected = _train_state(full)
    resumed = make_trainer(
        make_args(tmp_path / "resumed", max_steps=8),
        splits,
        model=make_model(seed=5),
        amplifier=_amplifier(torch.float64),
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    got = _train_state(resumed)
    assert {v.dtype for k, v in got.items() if k.startswith("amp.")} == {torch.float64}
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)
