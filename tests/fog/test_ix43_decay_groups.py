"""hf_ext's Trainers other than Fp8Trainer built FOG's AdamW groups from transformers' name patterns, which decay the
xIELU scalars (`act_fn.alpha_p`, `act_fn.alpha_n`): FOG's reference (and `model.decay_parameter_names()`, which
Fp8Trainer and the pretrain recipe follow) decays trainable matrices only. So `metadata_pretrain` (default FOG),
GrapeTrainer and PrivateTrainer on a FOG model trained with another weight decay grouping than `pretrain`."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from datasets import Dataset
from transformers import default_data_collator

from ..fog_decay_helpers import VOCAB, decay_groups, tiny_fog, token_dataset


def metadata_trainer(model, out):
    from transformers import TrainingArguments

    from hf_ext.data import build_tokenizer
    from hf_ext.metadata import MetadataCollator, MetadataTrainer, add_context_tokens, metadata_template

    tok = build_tokenizer(512)
    add_context_tokens(tok)
    collator = MetadataCollator(tok, metadata_template("url"), max_length=32)
    docs = Dataset.from_dict({"text": ["a b c"] * 4, "url": ["https://a.org/x"] * 4})
    args = TrainingArguments(
        str(out), weight_decay=0.1, use_cpu=True, report_to=[], max_steps=1, remove_unused_columns=False
    )
    return MetadataTrainer(model=model, args=args, train_dataset=docs, data_collator=collator)


def grape_trainer(model, out):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "grape", "scripts"))
    from grape_synthetic import synthetic_mixture

    from hf_ext.grape import GrapeConfig, GrapeTrainer

    train, targets = synthetic_mixture()
    args = GrapeConfig(
        output_dir=str(out),
        weight_decay=0.1,
        max_steps=1,
        per_device_train_batch_size=4,
        reweight_batch_size=4,
        reweight_mini_batch_size=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
    )
    return GrapeTrainer(model=model, args=args, train_dataset=train, target_datasets=targets)


def private_trainer(model, out):
    from hf_ext.federated import PrivateTrainer, PrivateTrainingArguments

    args = PrivateTrainingArguments(str(out), weight_decay=0.1, use_cpu=True, report_to=[], max_steps=1)
    return PrivateTrainer(model=model, args=args, train_dataset=token_dataset(), data_collator=default_data_collator)


@pytest.mark.parametrize("build", [metadata_trainer, grape_trainer, private_trainer])
def test_hf_ext_trainers_decay_what_fog_names(build, tmp_path):
    model = tiny_fog()
    groups = decay_groups(build(model, tmp_path))
    decayed, free = groups[0.1], groups[0.0]
    assert decayed == set(model.decay_parameter_names())
    alphas = {n for n, _ in model.named_parameters() if n.endswith(("act_fn.alpha_p", "act_fn.alpha_n"))}
    assert len(alphas) == 4 and alphas <= free  # the old code decayed all four


def test_peft_wrapped_fog_keeps_the_grouping(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = tiny_fog()
    for p in model.parameters():
        p.requires_grad_(True)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["act_fn"]))
    groups = decay_groups(private_trainer(peft_model, tmp_path))
    assert not any("alpha_" in n for n in groups.get(0.1, set()))
    assert any("alpha_p" in n for n in groups[0.0])  # the trainable copies of the xIELU scalars: no decay


def test_a_model_without_its_own_names_keeps_transformers_patterns(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    plain = Trainer(model=llama, args=TrainingArguments(str(tmp_path / "a"), use_cpu=True, report_to=[]))
    ours = private_trainer(llama, tmp_path / "b")
    assert ours.get_decay_parameter_names(llama) == plain.get_decay_parameter_names(llama)


def _private_args(folder, max_steps):
    from hf_ext.federated import PrivateTrainingArguments

    return PrivateTrainingArguments(
        str(folder),
        weight_decay=0.1,
        learning_rate=1e-2,
        lr_scheduler_type="constant",  # the same schedule for a 2-step run and the first 2 of 4 steps
        use_cpu=True,
        report_to=[],
        max_steps=max_steps,
        save_steps=1,
        per_device_train_batch_size=4,
        disable_tqdm=True,
    )


def _grouped(decay_names):
    """A PrivateTrainer whose groups come from `decay_names(trainer, model)` (an earlier version's grouping)."""
    from hf_ext.federated import PrivateTrainer

    class Grouped(PrivateTrainer):
        def get_decay_parameter_names(self, model):
            return decay_names(self, model)

    return Grouped


def test_a_checkpoint_grouped_the_old_way_resumes_exactly_with_its_groups(tmp_path, caplog):
    """A FOG checkpoint written with transformers' grouping (hf_ext's PrivateTrainer / GrapeTrainer / MetadataTrainer
    before this fix) has other group sizes: torch's load_state_dict failed with "loaded state dict contains a parameter
    group that doesn't match the size of optimizer's group". It now resumes with the groups it was trained with (a
    warning says so): the same weights as the old grouping's uninterrupted run."""
    from transformers import Trainer

    from hf_ext.federated import PrivateTrainer

    old = _grouped(lambda trainer, model: Trainer.get_decay_parameter_names(trainer, model))
    uninterrupted = old(
        model=tiny_fog(), args=_private_args(tmp_path / "a", 4), train_dataset=token_dataset(),
        data_collator=default_data_collator,
    )  # fmt: skip
    uninterrupted.train()
    old(
        model=tiny_fog(), args=_private_args(tmp_path / "b", 2), train_dataset=token_dataset(),
        data_collator=default_data_collator,
    ).train()  # fmt: skip
    resumed = PrivateTrainer(
        model=tiny_fog(), args=_private_args(tmp_path / "b", 4), train_dataset=token_dataset(),
        data_collator=default_data_collator,
    )  # fmt: skip
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    assert "keeps those groups" in caplog.text
    want = uninterrupted.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in resumed.model.state_dict().items())
    alphas = [p for n, p in resumed.model.named_parameters() if "alpha_" in n]
    decayed = resumed.optimizer.param_groups[0]["params"]
    assert len(alphas) == 4 and all(any(p is q for q in decayed) for p in alphas)  # the old run's groups


def test_a_checkpoint_of_another_grouping_is_refused_by_name(tmp_path):
    """Groups that are neither the model's names nor transformers' patterns: refused naming the cause and the fix,
    not torch's raw size mismatch."""
    from hf_ext.federated import PrivateTrainer

    other = _grouped(lambda trainer, model: [n for n, _ in model.named_parameters() if "embed" in n])
    other(
        model=tiny_fog(), args=_private_args(tmp_path, 1), train_dataset=token_dataset(),
        data_collator=default_data_collator,
    ).train()  # fmt: skip
    trainer = PrivateTrainer(
        model=tiny_fog(), args=_private_args(tmp_path, 2), train_dataset=token_dataset(),
        data_collator=default_data_collator,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"match neither .*decay_parameter_names\(\).*new run from the checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
