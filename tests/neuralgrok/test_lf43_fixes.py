"""lf43: an outer set (D_outer) with token ids outside the model's vocabulary is refused by name when the
NeuralGrokTrainer is built; it used to fail only at the first outer step, `outer_every` steps into the run, with a raw
`IndexError: index out of range in self` from the embedding."""

import pytest
import torch

from hf_ext.neuralgrok import (
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    NeuralAmplifier,
    NeuralGrokConfig,
    NeuralGrokTrainer,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
)


def _trainer(folder, outer):
    splits = split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(
        GrokDecoderConfig(vocab_size=13, hidden_size=16, num_attention_heads=2, num_hidden_layers=1)
    )
    args = NeuralGrokConfig(
        output_dir=str(folder / "out"),
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        max_steps=2,
        per_device_train_batch_size=8,
        outer_every=1,
        amplifier_hidden_dims=[4],
    )
    return NeuralGrokTrainer(
        model=model, args=args, train_dataset=splits["inner"], outer_dataset=outer, amplifier=NeuralAmplifier((4,))
    )


def _other_task_rows():
    # a+b mod 23: ids up to 24, a model of the mod-11 vocabulary (13) cannot embed them
    return build_arithmetic_dataset("a+b", 23).select(range(40, 45))


@pytest.mark.parametrize("form", ["dataset", "list"])
def test_outer_ids_outside_the_vocabulary_are_refused_at_construction(tmp_path, form):
    outer = _other_task_rows()
    if form == "list":
        outer = [dict(row) for row in outer]
    with pytest.raises(ValueError, match=r"outer_dataset has input_ids outside the model's vocabulary \[0, 13\)"):
        _trainer(tmp_path, outer)


def test_a_negative_outer_id_is_refused(tmp_path):
    rows = [
        dict(row) for row in split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)["outer"]
    ]
    rows[1]["input_ids"] = [-1, *rows[1]["input_ids"][1:]]
    with pytest.raises(ValueError, match="ids from -1 .*first in row 1"):
        _trainer(tmp_path, rows)


def test_only_the_rows_of_a_selection_are_checked_and_a_valid_outer_set_trains(tmp_path):
    from datasets import concatenate_datasets

    good = split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)["outer"]
    mixed = concatenate_datasets([good, _other_task_rows().cast(good.features)])
    with pytest.raises(ValueError, match=f"first in row {len(good)}"):
        _trainer(tmp_path, mixed)
    trainer = _trainer(tmp_path, mixed.select(range(len(good))))  # the out-of-vocabulary rows are not selected
    trainer.train()
    assert trainer.num_outer_steps == 2
