"""Pass-30 fix: the byte-level BPE tokenizer built on the fly had no upper bound on its size. The tokenizers trainer
reserves memory in proportion to the requested size and aborts the whole process (a Rust panic, no Python error)
when that fails: `--vocab_size 4000000000` killed a recipe after its arguments were accepted. Every entry point that
builds that tokenizer now refuses sizes above 2**20 by name."""

import pytest

from hf_ext.data.tokenizer import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE, build_tokenizer, vocab_size_problem


@pytest.mark.parametrize("value", [MAX_VOCAB_SIZE + 1, 4_000_000_000, MIN_VOCAB_SIZE - 1, True, 4096.0])
def test_build_tokenizer_refuses_sizes_out_of_range(value):
    with pytest.raises(ValueError, match=r"vocab_size must be an int in \[259, 1048576\]"):
        build_tokenizer(vocab_size=value, texts=["a b c"])


def test_bounds_are_inclusive():
    assert vocab_size_problem(MIN_VOCAB_SIZE) is None and vocab_size_problem(MAX_VOCAB_SIZE) is None


@pytest.mark.parametrize(
    "recipe", ["pretrain", "grape", "compliance", "warmup", "layer_parallel", "metadata_pretrain"]
)
def test_recipes_refuse_a_huge_vocab_size_before_any_output(tmp_path, recipe):
    import importlib

    main = importlib.import_module(f"hf_ext.recipes.{recipe}").main
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"^--vocab_size must be an int in \[259, 1048576\]"):
        main(["--vocab_size", "4000000000", "--output_dir", str(out)])
    assert not out.exists()


def test_cubic_newton_refuses_a_huge_corpus_vocab(tmp_path):
    from hf_ext.recipes.cubic_newton import main

    with pytest.raises(ValueError, match=r"^--corpus_vocab must be an int in \[259, 1048576\]"):
        main(["--problems", "corpus", "--corpus_vocab", "4000000000", "--output_dir", str(tmp_path / "never")])


def test_flower_run_config_refuses_a_huge_vocab_size():
    from hf_ext.federated.flower_task import RUN_CONFIG_DEFAULTS, check_run_config

    cfg = {key: default for key, (_, default) in RUN_CONFIG_DEFAULTS.items()}
    cfg["vocab-size"] = 4_000_000_000
    with pytest.raises(ValueError, match=r"vocab-size.*in \[259, 1048576\]"):
        check_run_config(cfg)
