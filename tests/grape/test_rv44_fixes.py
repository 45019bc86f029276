"""rv44: a float `attention_mask` column (1.0 / 0.0, as transformers' models take it) trained with GrapeTrainer before
gr43's token-type check, which refused it as if it were token ids ("attention_mask of type double, but token ids are
integers"); only masks of another type (strings, ...) are refused now, with a message about masks."""

from __future__ import annotations

import pytest


def _args(tmp_path):
    from hf_ext.grape import GrapeConfig

    return GrapeConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, reweight_domains_every=1,
        reweight_tasks_every=1, reweight_batch_size=4, reweight_mini_batch_size=2, report_to="none", use_cpu=True,
        disable_tqdm=True, plot_file="",
    )  # fmt: skip


def _with_mask(dataset, value, columns):
    from datasets import Dataset

    mask = [[value] * len(row) for row in dataset["input_ids"]]
    return Dataset.from_dict({**{c: dataset[c] for c in columns}, "attention_mask": mask})


def test_a_float_attention_mask_trains(tmp_path, grape_helpers):
    from hf_ext.grape import GrapeTrainer

    train, targets = grape_helpers["synthetic_mixture"]()
    train = _with_mask(train, 1.0, ["input_ids", "domain"])
    targets = {**targets, "t_a": _with_mask(targets["t_a"], 1.0, ["input_ids"])}
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](), args=_args(tmp_path), train_dataset=train, target_datasets=targets
    )
    assert trainer.train().training_loss > 0


@pytest.mark.parametrize("where", ["train_dataset", "target_datasets['t_a']"])
def test_a_string_attention_mask_is_refused_as_a_mask(tmp_path, grape_helpers, where):
    from hf_ext.grape import GrapeTrainer

    train, targets = grape_helpers["synthetic_mixture"]()
    if where == "train_dataset":
        train = _with_mask(train, "1", ["input_ids", "domain"])
    else:
        targets = {**targets, "t_a": _with_mask(targets["t_a"], "1", ["input_ids"])}
    with pytest.raises(ValueError, match=r"has attention_mask of type string, but an attention mask holds 1"):
        GrapeTrainer(
            model=grape_helpers["tiny_llama"](), args=_args(tmp_path), train_dataset=train, target_datasets=targets
        )
