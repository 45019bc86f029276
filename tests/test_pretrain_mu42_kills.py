"""mu42: a test that kills a mutant of the pretrain --block_size bound which its own test lets survive: 2 is the
smallest block with a next token to predict, so it passes validation (only 1 and below are refused)."""

import pytest


@pytest.mark.parametrize("block_size", [2, 3])
def test_pretrain_validation_accepts_a_two_token_block(tmp_path, block_size):
    from hf_ext.recipes.pretrain import DataArguments, ModelArguments, PretrainTrainingArguments, validate_args

    model_args = ModelArguments(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, model_type="llama"
    )
    data_args = DataArguments(block_size=block_size)
    training_args = PretrainTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, use_cpu=True, report_to=[]
    )
    validate_args(model_args, data_args, training_args)  # no refusal
    data_args.block_size = 1
    with pytest.raises(ValueError, match=r"--block_size must be at least 2 tokens .*got 1"):
        validate_args(model_args, data_args, training_args)
