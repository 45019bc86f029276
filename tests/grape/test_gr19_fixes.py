"""GRAPE fixes of audit pass 19: a target row longer than the model's learned position table (GPT-2's n_positions, OPT's
max_position_embeddings) is refused at construction, naming the target and the row; it used to pass construction and
fail with a bare `IndexError` in the position embedding at the first task update, `reweight_tasks_every` steps later.
Models without a position table (Llama's RoPE) take long rows as before. And ragged targets are padded with an id
inside the vocabulary: a small GPT-2 config keeps EOS 50256 (no pad token), which the padding used and the embedding
could not index (IndexError at the first task update)."""

import json
import os
import re

import pytest
import torch
from datasets import Dataset
from grape_synthetic import checkpointed_run, quick_grape_args, synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeTrainer


def _gpt2(n_positions=32):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=n_positions, n_embd=16, n_layer=1, n_head=2))


def _opt(max_positions=32):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(
        vocab_size=64,
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=max_positions,
        word_embed_proj_dim=16,
    )
    return OPTForCausalLM(cfg)


def _targets_with_row(length):
    train, targets = synthetic_mixture()
    rows = [[3 + (i % 50) for i in range(16)]] * 3 + [[3 + (i % 50) for i in range(length)]]
    targets["t_b"] = Dataset.from_dict({"input_ids": rows})
    return train, targets


@pytest.mark.parametrize("make", [_gpt2, _opt])
def test_target_row_longer_than_the_position_table_is_refused(tmp_path, make):
    train, targets = _targets_with_row(33)
    with pytest.raises(ValueError, match=r"target_datasets\['t_b'\] has a row of 33 tokens \(row 3\).*holds 32 pos"):
        GrapeTrainer(model=make(), args=quick_grape_args(tmp_path), train_dataset=train, target_datasets=targets)


@pytest.mark.parametrize("make", [_gpt2, _opt])
def test_target_rows_at_the_position_limit_train_through_a_task_update(tmp_path, make):
    train, targets = _targets_with_row(32)
    args = quick_grape_args(tmp_path, max_steps=3, reweight_domains_every=2, reweight_tasks_every=2)
    trainer = GrapeTrainer(model=make(), args=args, train_dataset=train, target_datasets=targets)
    trainer.train()
    assert trainer.state.global_step == 3
    assert not torch.equal(trainer.mixture_state.task_weights, torch.full((2,), 0.5, dtype=torch.float64))


def test_models_without_a_position_table_take_long_target_rows(tmp_path):
    train, targets = _targets_with_row(200)
    model = tiny_llama()
    assert model.config.max_position_embeddings < 200
    args = quick_grape_args(tmp_path, max_steps=2, reweight_domains_every=2, reweight_tasks_every=2)
    GrapeTrainer(model=model, args=args, train_dataset=train, target_datasets=targets).train()


def test_ragged_targets_pad_inside_the_vocabulary(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    assert model.config.eos_token_id == 50256 and model.config.pad_token_id is None
    train, targets = _targets_with_row(20)  # rows of 16 and 20 tokens: padded
    args = quick_grape_args(tmp_path, max_steps=2, reweight_domains_every=2, reweight_tasks_every=2)
    trainer = GrapeTrainer(model=model, args=args, train_dataset=train, target_datasets=targets)
    assert trainer._target_pad_token_id() == 0
    trainer.train()
    assert trainer.state.global_step == 2


# ---- resume with other mixture settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(reweight_domains_every=3), "reweight_domains_every=2 -> 3"),
        (dict(domain_step_size=0.5), "domain_step_size=1.5 -> 0.5"),
        (dict(data_seed=7), "data_seed=None -> 7 (the checkpoint's run left it unset, so seed=0 seeded"),
        (dict(samples_per_epoch=40), "samples_per_epoch=None -> 40"),
    ],
)
def test_resume_with_other_mixture_settings_is_refused(tmp_path, change, named):
    """A resume took any GRAPE settings and went on from the checkpoint's mixture state with a different sampler
    schedule, reweighting draws or updates, as if it continued the run; now it names what changed."""
    train, targets, ckpt = checkpointed_run(tmp_path)
    settings = {"reweight_domains_every": 2, "reweight_tasks_every": 2, **change}
    args = quick_grape_args(tmp_path, max_steps=4, save_strategy="no", **settings)
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    with pytest.raises(ValueError, match=r"was written by a run with other mixture settings: " + re.escape(named)):
        trainer.train(resume_from_checkpoint=ckpt)


def test_resume_with_the_same_settings_and_of_an_older_checkpoint(tmp_path):
    train, targets, ckpt = checkpointed_run(tmp_path)
    args = quick_grape_args(tmp_path / "again", max_steps=4, save_strategy="no", reweight_domains_every=2,
                            reweight_tasks_every=2)  # fmt: skip
    GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets).train(
        resume_from_checkpoint=ckpt
    )
    # a checkpoint written before the settings were recorded resumes as before, unchecked
    state = os.path.join(ckpt, "grape_state.json")
    meta = json.loads(open(state).read())
    assert meta["options"]["reweight_domains_every"] == 2
    del meta["options"]
    with open(state, "w") as fh:
        json.dump(meta, fh)
    args = quick_grape_args(tmp_path / "old", max_steps=4, save_strategy="no", reweight_domains_every=3,
                            reweight_tasks_every=2)  # fmt: skip
    GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets).train(
        resume_from_checkpoint=ckpt
    )
