"""Audit fe42: steps trained without DP-SGD were invisible to the privacy accounting.

A `PrivateTrainer` without `dp_clip_norm` reported `privacy_spent()["epsilon"] == 0.0` after training (its docstring
said inf without noise), and a checkpoint of such a run resumed with DP-SGD reported the epsilon of the DP-SGD steps
only (4 plain steps + 4 DP-SGD steps at q = 4/538, sigma 1: epsilon 0.212 at delta 1e-5, where the data had already
been trained on without clipping or noise). `FederatedSimulation.load_state` did the same for rounds saved without
DP-SGD."""

import json
import math
import os

import pytest
from transformers import default_data_collator

from hf_ext.federated import (
    FederatedArguments,
    FederatedSimulation,
    PrivateTrainer,
    PrivateTrainingArguments,
    apply_lora,
)

from .conftest import tiny_llama


def _args(out, dp: bool, max_steps: int, **kw) -> PrivateTrainingArguments:
    extra = dict(dp_clip_norm=0.5, dp_noise_multiplier=1.0, max_grad_norm=0, dp_noise_seed=5) if dp else {}
    return PrivateTrainingArguments(
        output_dir=out,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_steps=max_steps,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        **extra,
        **kw,
    )


def _trainer(small_tokenizer, ds, args) -> PrivateTrainer:
    model = apply_lora(tiny_llama(len(small_tokenizer), hidden=16), FederatedArguments(lora_r=2), seed=0)
    return PrivateTrainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator)


def test_a_trainer_without_dp_sgd_reports_an_infinite_epsilon(tmp_path, small_tokenizer, client_datasets):
    trainer = _trainer(small_tokenizer, client_datasets[0].select(range(8)), _args(str(tmp_path), False, 2))
    assert trainer.privacy_spent()["epsilon"] == 0.0  # nothing trained yet
    trainer.train()
    assert trainer.non_private_steps() == 2
    assert trainer.privacy_spent()["epsilon"] == math.inf  # was 0.0: "perfect privacy" for plain training


def _plain_checkpoint(tmp_path, small_tokenizer, ds) -> str:
    plain = _trainer(
        small_tokenizer, ds, _args(str(tmp_path / "plain"), False, 2, save_strategy="steps", save_steps=2)
    )
    plain.train()
    ckpt = str(tmp_path / "plain" / "checkpoint-2")
    with open(os.path.join(ckpt, "privacy_accountant.json")) as fh:
        assert json.load(fh)["history"] == []  # the plain steps left no trace in the accountant
    return ckpt


def _drop_saved_count(path: str, key: str) -> None:
    """Drop `key` from the JSON file `path`, as a file written before the non-private count was saved."""
    with open(path) as fh:
        state = json.load(fh)
    state.pop(key)
    with open(path, "w") as fh:
        json.dump(state, fh)


def _as_written_before_the_count(ckpt: str) -> None:
    _drop_saved_count(os.path.join(ckpt, "privacy_accountant.json"), "non_private_steps")


@pytest.mark.parametrize("old_file", [False, True])  # with the saved count, and a file written before it
def test_resuming_a_checkpoint_trained_without_dp_sgd_with_dp_sgd_is_refused(
    tmp_path, small_tokenizer, client_datasets, old_file
):
    ds = client_datasets[0].select(range(8))
    ckpt = _plain_checkpoint(tmp_path, small_tokenizer, ds)
    if old_file:
        _as_written_before_the_count(ckpt)
    dp = _trainer(small_tokenizer, ds, _args(str(tmp_path / "dp"), True, 4))
    with pytest.raises(ValueError, match=r"trained 2 of its 2 steps without DP-SGD .* no finite\s+epsilon"):
        dp.train(resume_from_checkpoint=ckpt)
    assert dp.accountant.steps == 0  # refused before any DP-SGD step reported an epsilon


def test_plain_resume_keeps_counting_and_dp_resume_of_a_dp_checkpoint_is_unchanged(
    tmp_path, small_tokenizer, client_datasets
):
    ds = client_datasets[0].select(range(8))
    ckpt = _plain_checkpoint(tmp_path, small_tokenizer, ds)
    plain = _trainer(small_tokenizer, ds, _args(str(tmp_path / "plain2"), False, 3))
    plain.train(resume_from_checkpoint=ckpt)
    assert plain.non_private_steps() == 3 and plain.privacy_spent()["epsilon"] == math.inf

    kw = dict(save_strategy="steps", save_steps=2)
    full = _trainer(small_tokenizer, ds, _args(str(tmp_path / "a"), True, 4, **kw))
    full.train()
    resumed = _trainer(small_tokenizer, ds, _args(str(tmp_path / "b"), True, 4, **kw))
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert resumed.non_private_steps() == 0 and resumed.accountant.steps == 4
    eps = full.privacy_spent()["epsilon"]
    assert 0 < eps < math.inf and resumed.privacy_spent()["epsilon"] == pytest.approx(eps)


@pytest.mark.parametrize("old_file", [False, True])
def test_simulation_refuses_to_continue_rounds_saved_without_dp_sgd_with_dp_sgd(
    tmp_path, small_tokenizer, client_datasets, old_file
):
    clients = [d.select(range(6)) for d in client_datasets[:2]]
    fed = FederatedArguments(num_rounds=1, local_steps=1, lora_r=2)
    plain = FederatedSimulation(
        tiny_llama(len(small_tokenizer), hidden=16), clients, fed, _args(str(tmp_path / "p"), False, 1)
    )
    plain.run(save_dir=str(tmp_path / "save"))
    saved = str(tmp_path / "save" / "round-1")
    if old_file:
        _drop_saved_count(os.path.join(saved, "federated_state.json"), "non_private_rounds")
    fed2 = FederatedArguments(num_rounds=2, local_steps=1, lora_r=2)
    dp = FederatedSimulation(
        tiny_llama(len(small_tokenizer), hidden=16), clients, fed2, _args(str(tmp_path / "d"), True, 1)
    )
    with pytest.raises(ValueError, match=r"trained 1 of its 1 rounds without DP-SGD"):
        dp.load_state(saved)
    assert dp.round == 0
    # continuing without DP-SGD is not refused, and the count travels on
    again = FederatedSimulation(
        tiny_llama(len(small_tokenizer), hidden=16), clients, fed2, _args(str(tmp_path / "q"), False, 1)
    )
    again.load_state(saved)
    assert again.round == 1 and again.non_private_rounds == 1


# Bad inputs to public entry points: each used to fail late with a raw error that named no argument (or, for
# float Goldfish targets and a fractional prompt length, to compute something else silently).


def _bad_input_cases():
    import torch

    from hf_ext.federated import PrivacyAccountant, apply_goldfish, clip_per_sample, noisy_sum
    from hf_ext.federated.aggregation import clip_update
    from hf_ext.federated.goldfish import goldfish_drop_mask
    from hf_ext.federated.memorization import FrequencyPenaltyLogitsProcessor, assign_canaries, make_canaries

    grads = {"a": torch.ones(2, 3)}
    return {
        "pld_discretization": lambda: PrivacyAccountant("pld", "x"),  # was TypeError: '<' not supported
        "delta": lambda: PrivacyAccountant().get_epsilon("1e-5"),
        "history": lambda: PrivacyAccountant().load_state_dict({"history": None}),  # was 'NoneType' not iterable
        "max_norm": lambda: clip_per_sample(grads, "1"),
        "sensitivity": lambda: noisy_sum(grads, None, 1.0),
        "max_norm`": lambda: clip_update({"a": torch.ones(2)}, "1"),
        "`targets` must hold integer token ids": lambda: goldfish_drop_mask(torch.rand(2, 20), 4, 3),  # was silent
        "`labels` must be a tensor of shape": lambda: apply_goldfish(torch.arange(20), 4, 3),  # was IndexError
        "prompt_length": lambda: FrequencyPenaltyLogitsProcessor(1.0, 2.5),  # was silently int(2.5)
        "`penalty`": lambda: FrequencyPenaltyLogitsProcessor("1", 3),
        "client_sizes` must be finite": lambda: assign_canaries(make_canaries(3), [float("nan"), 2]),
        "client_sizes` must be a sequence": lambda: assign_canaries(make_canaries(3), 5),
        "`canaries` must be Canary objects": lambda: assign_canaries(["abc"], [1, 2]),  # was AttributeError
        "--lora_target_modules": lambda: FederatedArguments(lora_target_modules=None),  # was AttributeError later
        "--lora_target_modules ": lambda: FederatedArguments(lora_target_modules=" , "),  # was a peft error later
    }


@pytest.mark.parametrize("name", list(_bad_input_cases()))
def test_bad_inputs_raise_a_value_error_naming_the_argument(name):
    with pytest.raises(ValueError, match=__import__("re").escape(name.strip())):
        _bad_input_cases()[name]()


def test_lora_target_modules_are_checked_only_when_lora_is_on():
    with pytest.raises(ValueError, match="--lora_target_modules must be 'all-linear' or a comma-separated list"):
        FederatedArguments(use_lora=True, lora_target_modules="")
    assert FederatedArguments(use_lora=False, lora_target_modules="").target_modules() == []  # never read
    assert FederatedArguments(lora_target_modules=" q_proj , v_proj ").target_modules() == ["q_proj", "v_proj"]


# mu42: kills of mutants of the count that the tests above let survive
def test_two_fresh_train_calls_without_dp_sgd_count_both(tmp_path, small_tokenizer, client_datasets):
    # the Trainer restarts global_step at 0 on a fresh train(): the count of the second call starts there too
    trainer = _trainer(small_tokenizer, client_datasets[0].select(range(8)), _args(str(tmp_path), False, 2))
    trainer.train()
    assert trainer.non_private_steps() == 2
    trainer.train()
    assert trainer.non_private_steps() == 4
    assert trainer.privacy_spent()["epsilon"] == math.inf


def test_plain_resume_of_a_checkpoint_saved_before_the_count_counts_its_steps(
    tmp_path, small_tokenizer, client_datasets
):
    # a privacy_accountant.json without "non_private_steps" (written before the count): the steps its accountant does
    # not hold were plain steps, and a plain resume keeps counting from them (2 saved + 1 new), not from 0
    ds = client_datasets[0].select(range(8))
    ckpt = _plain_checkpoint(tmp_path, small_tokenizer, ds)
    _as_written_before_the_count(ckpt)
    resumed = _trainer(small_tokenizer, ds, _args(str(tmp_path / "resumed"), False, 3))
    resumed.train(resume_from_checkpoint=ckpt)
    assert resumed.non_private_steps() == 3
