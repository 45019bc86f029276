"""Audit pass 27 fixes of the layer-parallel recipe."""

import pytest

TINY = [
    "--num_hidden_layers", "4", "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2",
    "--num_key_value_heads", "1", "--vocab_size", "512", "--pretrain_steps", "2", "--max_eval_blocks", "8",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--disable_tqdm", "true",
    "--report_to", "none", "--use_cpu", "true", "--max_steps", "1",
]  # fmt: skip


def test_recipe_refuses_blocks_without_a_token_to_predict_before_any_work(tmp_path):
    # Before: --block_size 1 passed the early checks; the source model was pre-trained and saved into --output_dir
    # (with the run record), then the sweep refused the eval blocks by a name the user never gave ("eval_dataset").
    from hf_ext.recipes.layer_parallel import main

    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--block_size must be at least 2"):
        main([*TINY, "--block_size", "1", "--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("pairs", ["0", "-1"])
def test_bench_refuses_a_non_positive_pair_count_by_name(bench, pairs):
    # Before: "--num_pairs 0 from --lp_start 7 does not fit 8 layers; give a smaller --num_pairs", the wrong fix.
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(bench.BenchArguments).parse_args_into_dataclasses(args=["--tiny", "--num_pairs", pairs])
    with pytest.raises(ValueError, match=r"--num_pairs must be >= 1"):
        bench._resolve(args)
