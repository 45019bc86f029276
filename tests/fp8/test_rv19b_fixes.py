"""Fixes of the rv19b review, fp8 side.

F2 Under fp8 mixed precision (`accelerate launch --mixed_precision fp8`, ACCELERATE_MIXED_PRECISION=fp8),
   `Fp8Trainer.__init__` hands accelerate `ao_recipe_kwargs(model)`, which splits a layer-paired model's merged block
   pairs' stacked branch-wise weights into new per-branch parameters. An optimizer passed as `optimizers=` (built,
   as Trainer requires, before the trainer) kept the old stacked parameters, so o_proj / gate / up of every pair
   silently stopped training. `Fp8Trainer` now refuses such an optimizer with a ValueError before the model changes.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments, default_data_collator

import hf_ext  # noqa: F401
from hf_ext.fp8 import Fp8Trainer, ao_recipe_kwargs
from hf_ext.models.layer_parallel import convert_to_layer_parallel

pytest.importorskip("torchao")

_SHAPE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2)  # fmt: skip


def _paired():
    torch.manual_seed(0)
    return convert_to_layer_parallel(LlamaForCausalLM(LlamaConfig(**_SHAPE)), start=1, end=3, mode="block")


def _data():
    ids = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": row, "labels": row} for row in ids]


def _trainer(model, tmp_path, **kwargs):
    args = TrainingArguments(
        str(tmp_path), max_steps=2, per_device_train_batch_size=4, use_cpu=True, report_to=[], save_strategy="no",
        learning_rate=1e-2, disable_tqdm=True,
    )  # fmt: skip
    return Fp8Trainer(model=model, args=args, train_dataset=_data(), data_collator=default_data_collator, **kwargs)


def test_an_optimizer_of_the_stacked_branch_weights_is_refused_before_the_split(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    model = _paired()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match=r"optimizers.*model\.layers\.1\.self_attn\.o_proj\.weight.*optimizer_cls"):
        _trainer(model, tmp_path, optimizers=(optimizer, None))
    pair = model.model.layers[1]
    assert pair.mlp.gate_weight is not None and pair.self_attn.o_proj.weight is not None  # nothing split


def test_an_optimizer_built_after_the_split_trains_every_weight(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    model = _paired()
    recipe = ao_recipe_kwargs(model)  # splits the branch-wise weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(model, tmp_path, optimizers=(optimizer, None), fp8_recipe_kwargs=recipe)
    trainer.train()
    after = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    unchanged = [k for k in before if "weight" in k and torch.equal(before[k], after[k])]
    assert unchanged == []
    # without fp8 mixed precision nothing is split, so a given optimizer is fine
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    plain = _paired()
    _trainer(plain, tmp_path, optimizers=(torch.optim.AdamW(plain.parameters()), None))
